"""`python -m fastmim.export CHECKPOINT --out FILE.safetensors`: the student as a timm state dict.

The file loads with the timm call this command prints, e.g. `timm.create_model("vit_base_patch16_224",
checkpoint_path=FILE)` (the matching size; `init_values=0.1` for MaskDistill's layer-scaled student): its keys
are timm's (the pretraining-only mask token is left out), and a zero-initialized 1000-class head is included so that timm's strict loading
finds every key (fine-tuning re-initializes the head anyway; `--head-classes 0` leaves it out, for
`num_classes=0` models).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fastmim.checkpoint import atomic_write, load_checkpoint, read_config, student_timm, student_weights
from fastmim.methods.configs import method_name


def timm_call(name: str, kwargs: dict, path: str, num_classes: int) -> str:
    """The timm call that rebuilds the exported student from `path` (its head has `num_classes`)."""
    kwargs = {**kwargs, "num_classes": num_classes}
    if num_classes == 1000:  # timm's default
        kwargs.pop("num_classes")
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return f"timm.create_model({name!r}{extra}, checkpoint_path={path!r})"


def check_out(out: Path) -> None:
    """Before any work: --out names a .safetensors file whose folder can hold it."""
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; name the file, e.g. {str(out / 'student.safetensors')!r}")
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {str(out)!r}: the export is a .safetensors file; name it FILE.safetensors")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"--out {str(out)!r}: {str(out.parent)!r} is a file, not a folder")


def export(checkpoint_path: str | Path, out: str | Path, head_classes: int = 1000) -> str:
    """Write the run's student as a timm state dict to `out`, atomically; returns the timm call that loads it. A
    student without a head (pretraining) gets a zero `head_classes`-way one (none for 0); a fine-tuned student
    keeps its own."""
    from safetensors.torch import save_file

    out = Path(out)
    check_out(out)
    if head_classes < 0:
        raise ValueError(f"--head-classes must be 0 or more, got {head_classes}")
    checkpoint = load_checkpoint(Path(checkpoint_path))
    cfg = read_config(checkpoint, checkpoint_path)
    state = student_weights(checkpoint, pretraining_only=False)
    name, kwargs = student_timm(checkpoint)
    if "head.weight" in state:  # a classifier (fine-tuning): its trained head, whatever --head-classes says
        head_classes = state["head.weight"].shape[0]
    elif head_classes > 0:
        dim = state["cls_token"].shape[-1]
        state["head.weight"] = torch.zeros(head_classes, dim)
        state["head.bias"] = torch.zeros(head_classes)
    kwargs.pop("num_classes", None)
    metadata = {"format": "pt", "source": "fastmim", "timm_model": name, "timm_kwargs": json.dumps(kwargs),
                "mean": json.dumps(list(cfg.data.mean)), "std": json.dumps(list(cfg.data.std)),  # for evaluate
                "method": method_name(cfg.method), "pooling": cfg.method.feature_pooling}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(lambda path: save_file(state, str(path), metadata=metadata), out)
    return timm_call(name, kwargs, str(out), head_classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmim.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("checkpoint", help="a fastmim checkpoint, e.g. runs/demo/checkpoints/last.pt")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors", help="where to write the student")
    parser.add_argument("--head-classes", type=int, default=1000, metavar="N",
                        help="add a zero-initialized N-class head (default 1000); 0 leaves it out")
    args = parser.parse_args(argv)
    try:
        call = export(args.checkpoint, args.out, args.head_classes)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: error: interrupted; nothing was written\n")
    print(f"wrote {args.out}; load it with {call}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
