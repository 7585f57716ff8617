"""Entry point: `torchrun --nproc_per_node=8 -m fastmim.pretrain --recipe NAME --data PATH`.

The recipe names the method (MaskAlign, MAE, MR-MAE, MaskDistill). With no arguments it runs the `demo`
recipe: a tiny MaskAlign student and teacher on built-in synthetic images, on the CPU, in a couple of minutes.
"""
from __future__ import annotations

import argparse
import sys

from fastmim.cli import add_run_flags, INTERRUPTED, apply_flags, apply_sets, choices_epilog, run, starting_config  # noqa: F401
from fastmim.config import Config, set_field
from fastmim.methods.configs import method_name
from fastmim.recipes import RECIPES

EPILOG = """examples:
  python -m fastmim.pretrain                                   # the CPU demo on synthetic images
  python -m fastmim.pretrain --recipe demo_mae                 # MAE's CPU demo (demo_mrmae, demo_maskdistill)
  torchrun --nproc_per_node=8 -m fastmim.pretrain --recipe maskalign_vit_base_clip_b16 \\
      --data /data/imagenet/train --output runs/vitb
  python -m fastmim.pretrain --recipe demo --set method.mask_ratio=0.75 --set optim.clip_grad=3.0
  python -m fastmim.pretrain --recipe maskalign_vit_base_clip_b16 --print-config
  python -m fastmim.pretrain --config runs/demo/config.yaml --max-steps 500   # a run's settings, changed
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastmim.pretrain",
        description="Masked image modeling pretraining: MaskAlign, MAE, MR-MAE, MaskDistill. "
        "The recipe names the method and its settings; flags override the recipe; --set overrides any config field.",
        epilog=EPILOG + "\n" + choices_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False)
    p.add_argument("--recipe", choices=list(RECIPES), metavar="NAME",
                   help="named configuration to start from, which also names the method (default: demo; "
                   "--list-recipes shows them all)")
    p.add_argument("--config", metavar="FILE", help="start from this YAML configuration instead of a recipe: a "
                   "config.yaml a run wrote, or one of your own (fields it leaves out keep their defaults)")
    p.add_argument("--data", metavar="PATH", help="ImageFolder root (class subfolders of images), a flat image "
                   "folder, or a text file listing one image path per line; omit for the built-in synthetic set")
    p.add_argument("--output", metavar="DIR", help="folder for config.yaml, metrics.jsonl, checkpoints/, "
                   "summary.json and loss_curve.png (default: the recipe's, e.g. runs/demo)")
    p.add_argument("--init", metavar="CHECKPOINT", help="start a new run from another run's weights (its "
                   "checkpoint's student, heads, decoder: same method and model), with a fresh optimizer and "
                   "schedule; e.g. to train a finished run longer under a new schedule")
    p.add_argument("--kernels", choices=["auto", "fused", "reference"], help="fastmim's fused kernels (fused), the "
                   "plain-PyTorch references (reference) or the kernels when built (auto, default)")
    p.add_argument("--data-backend", choices=["auto", "dali", "torchvision", "synthetic"], help="input pipeline: "
                   "auto picks DALI when installed, else torchvision; synthetic ignores --data")
    p.add_argument("--teacher", metavar="NAME", help="clip_b16, clip_l14, dino_b16 or any timm ViT name "
                   "(e.g. vit_base_patch14_dinov2.lvd142m); for MR-MAE a comma-separated list of one or two")
    p.add_argument("--teacher-weights", metavar="FILE|hub|random", help="a local .safetensors/.pth (timm, OpenAI "
                   "CLIP or open_clip layout); hub downloads timm's pretrained weights; random is for tests "
                   "(MR-MAE: one per teacher, comma-separated)")
    p.add_argument("--eval-train", metavar="DIR", help="labelled ImageFolder for the k-NN monitor's bank; with "
                   "--eval-val the student is evaluated every eval.every steps (default 1000) and at the end")
    p.add_argument("--eval-val", metavar="DIR", help="labelled ImageFolder of the k-NN monitor's queries "
                   "(knn_top1/knn_top5 in metrics.jsonl; see the eval section of --print-config)")
    p.add_argument("--list-recipes", action="store_true", help="list the recipes with their method and exit")
    add_run_flags(p, "torch.compile the student's and the teacher's blocks (the first steps are slow while it "
                  "compiles)", "method.mask_ratio=0.75, optim.base_lr=1e-4, train.log_every=50")
    return p


FLAG_FIELDS = {
    "data": "data.path", "output": "train.output", "max_steps": "train.max_steps", "epochs": "train.epochs",
    "batch_size": "data.batch_size", "resume": "train.resume", "kernels": "train.kernels",
    "data_backend": "data.backend", "device": "train.device", "compile": "train.compile", "init": "train.init",
    "eval_train": "eval.train", "eval_val": "eval.val",
}


def set_teacher_flags(cfg: Config, teacher: str | None, weights: str | None) -> set[str]:
    """--teacher/--teacher-weights: one teacher (method.teacher), a list of them (method.teachers), or an
    error for a method without one. Returns the fields set."""
    changed = set()
    for flag, value, single, several in (("--teacher", teacher, "teacher", "teachers"),
                                         ("--teacher-weights", weights, "teacher_weights", "teacher_weights")):
        if value is None:
            continue
        current = getattr(cfg.method, several if hasattr(cfg.method, several) else single, None)
        if current is None:
            raise ValueError(f"{flag}: method {method_name(cfg.method)!r} has no teacher")
        if isinstance(current, tuple):
            name, value = several, tuple(part.strip() for part in value.split(","))
        else:
            name = single
        set_field(cfg, f"method.{name}", value)
        changed.add(f"method.{name}")
    return changed


def teacher_names(method) -> tuple:
    return tuple(getattr(method, "teachers", None) or [getattr(method, "teacher", None)])


def take_named_teacher(cfg: Config, before: tuple, explicit: set[str]) -> None:
    """Naming another teacher than the starting configuration's (--teacher, --set method.teacher…) means that
    teacher as it is: its real architecture and its hub weights, not the recipe's settings for its own teacher
    (the demos' random, 4-block one). What was set explicitly is kept."""
    if teacher_names(cfg.method) == before:
        return
    defaults = type(cfg.method)()
    for name in ("teacher_weights", "teacher_kwargs"):
        if hasattr(defaults, name) and not any(key.startswith(f"method.{name}") for key in explicit):
            setattr(cfg.method, name, getattr(defaults, name))


def resolve_config(args: argparse.Namespace) -> Config:
    """The recipe (or --config file), the flags and --set over it; a newly named teacher as it is."""
    cfg = starting_config(args, "pretrain", "demo")
    teachers = teacher_names(cfg.method)
    apply_flags(cfg, args, FLAG_FIELDS)
    explicit = set_teacher_flags(cfg, args.teacher, args.teacher_weights) | apply_sets(cfg, args)
    take_named_teacher(cfg, teachers, explicit)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run(parser, parser.parse_args(argv), "pretrain", resolve_config)


if __name__ == "__main__":
    sys.exit(main())
