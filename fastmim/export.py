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

from fastmim.constants import IMAGENET_MEAN, IMAGENET_STD


PRETRAINING_ONLY = ("mask_token",)  # the dense student's token for masked patches: timm's ViT has none


def student_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    if "method" not in checkpoint:
        raise ValueError("not a fastmim checkpoint: it has no 'method' entry")
    prefix = "student."
    return {k[len(prefix):]: v.contiguous() for k, v in checkpoint["method"].items()
            if k.startswith(prefix) and k[len(prefix):] not in PRETRAINING_ONLY}


def timm_arguments(checkpoint: dict) -> tuple[str, dict]:
    """(timm model name, keyword arguments) that rebuild this student: its size's timm name; img_size when it is
    not 224, init_values when it has layer scale."""
    method = checkpoint.get("config", {}).get("method", {})
    size, patch, img = method.get("student", "base"), method.get("patch_size", 16), method.get("img_size", 224)
    kwargs = dict(method.get("student_kwargs", {}))
    if method.get("init_values"):
        kwargs["init_values"] = method["init_values"]
    if img != 224:
        kwargs["img_size"] = img
    return f"vit_{size}_patch{patch}_224", kwargs


def timm_call(checkpoint: dict, path: str) -> str:
    """The timm call that rebuilds this student."""
    name, kwargs = timm_arguments(checkpoint)
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return f"timm.create_model({name!r}{extra}, checkpoint_path={path!r})"


def export(checkpoint_path: str | Path, out: str | Path, head_classes: int = 1000) -> str:
    from safetensors.torch import save_file

    from fastmim.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(Path(checkpoint_path))
    state = student_state_dict(checkpoint)
    if head_classes > 0:
        dim = state["cls_token"].shape[-1]
        state["head.weight"] = torch.zeros(head_classes, dim)
        state["head.bias"] = torch.zeros(head_classes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    name, kwargs = timm_arguments(checkpoint)
    data = checkpoint.get("config", {}).get("data", {})
    metadata = {"format": "pt", "source": "fastmim", "timm_model": name, "timm_kwargs": json.dumps(kwargs),
                "mean": json.dumps(list(data.get("mean", IMAGENET_MEAN))),
                "std": json.dumps(list(data.get("std", IMAGENET_STD)))}  # what fastmim.evaluate rebuilds it from
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(out)
    return timm_call(checkpoint, str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmim.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a fastmim checkpoint, e.g. runs/demo/checkpoints/last.pt")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors", help="where to write the student")
    parser.add_argument("--head-classes", type=int, default=1000, metavar="N",
                        help="add a zero-initialized N-class head (default 1000); 0 leaves it out")
    args = parser.parse_args(argv)
    try:
        call = export(args.checkpoint, args.out, args.head_classes)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        parser.error(str(error))
    print(f"wrote {args.out}; load it with {call}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
