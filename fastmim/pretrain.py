"""Entry point: `torchrun --nproc_per_node=8 -m fastmim.pretrain --recipe NAME --data PATH`.

The recipe names the method (MaskAlign, MAE, MR-MAE, MaskDistill). With no arguments it runs the `demo`
recipe: a tiny MaskAlign student and teacher on built-in synthetic images, on the CPU, in a couple of minutes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from fastmim.config import Config, check_config, choice_fields, from_dict, parse_assignment, set_field, to_yaml
from fastmim.console import one_line_warnings
from fastmim.methods.configs import method_name
from fastmim.recipes import RECIPES, describe, recipe

INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # the shells' 128 + signal number

EPILOG = """examples:
  python -m fastmim.pretrain                                   # the CPU demo on synthetic images
  python -m fastmim.pretrain --recipe demo_mae                 # MAE's CPU demo (demo_mrmae, demo_maskdistill)
  torchrun --nproc_per_node=8 -m fastmim.pretrain --recipe maskalign_vit_base_clip_b16 \\
      --data /data/imagenet/train --output runs/vitb
  python -m fastmim.pretrain --recipe demo --set method.mask_ratio=0.75 --set optim.clip_grad=3.0
  python -m fastmim.pretrain --recipe maskalign_vit_base_clip_b16 --print-config
  python -m fastmim.pretrain --config runs/demo/config.yaml --max-steps 500   # a run's settings, changed
"""


def choices_epilog() -> str:
    lines = [f"  {name:24} {allowed}" for name, allowed in choice_fields().items()]
    return "fields with a fixed set of values (--set FIELD=VALUE):\n" + "\n".join(lines) + "\n"


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
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps; the learning-rate "
                   "schedule still follows --epochs, so a later --resume continues the same run")
    p.add_argument("--epochs", type=int, metavar="N", help="length of the run and of its schedule, in epochs")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per process per micro-batch; the learning "
                   "rate is base_lr × global batch / 256")
    p.add_argument("--resume", metavar="auto|never|PATH", help="auto (default): continue from DIR/checkpoints/last.pt "
                   "if present (its configuration must match, but for max_steps, logging and checkpoint cadence); "
                   "never: start from scratch, refused where DIR holds a run unless --set train.overwrite=true, "
                   "which clears it first; PATH: that checkpoint")
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
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (auto: CUDA when available)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the student's and the teacher's blocks (the first steps are slow while it compiles)")
    p.add_argument("--eval-train", metavar="DIR", help="labelled ImageFolder for the k-NN monitor's bank; with "
                   "--eval-val the student is evaluated every eval.every steps (default 1000) and at the end")
    p.add_argument("--eval-val", metavar="DIR", help="labelled ImageFolder of the k-NN monitor's queries "
                   "(knn_top1/knn_top5 in metrics.jsonl; see the eval section of --print-config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set any config field (checked "
                   "against its type; dict fields by dotted path), e.g. "
                   "method.mask_ratio=0.75, optim.base_lr=1e-4, train.log_every=50 (repeatable; see --print-config)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML (each field "
                   "with a fixed set of values says which) and exit")
    p.add_argument("--list-recipes", action="store_true", help="list the recipes with their method and exit")
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


def starting_config(args: argparse.Namespace) -> Config:
    """The recipe, or the --config file."""
    if args.config is None:
        return recipe(args.recipe or "demo")
    if args.recipe is not None:
        raise ValueError("--config and --recipe both name a starting configuration: give one")
    path = Path(args.config)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f"--config {args.config!r}: cannot read it ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise ValueError(f"--config {args.config!r}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"--config {args.config!r}: expected a mapping of sections (method, data, optim, train, eval)")
    try:
        return from_dict(data)
    except ValueError as error:
        raise ValueError(f"--config {args.config!r}: {error}") from error


def resolve_config(args: argparse.Namespace) -> Config:
    cfg = starting_config(args)
    teachers = teacher_names(cfg.method)
    for flag, dotted in FLAG_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            set_field(cfg, dotted, value)
    explicit = set_teacher_flags(cfg, args.teacher, args.teacher_weights)
    if args.data is not None and args.data_backend is None and cfg.data.backend == "synthetic":
        cfg.data.backend = "auto"  # --data given to a synthetic recipe: read it
    for assignment in args.set:
        key, value = parse_assignment(assignment)
        set_field(cfg, key, value)
        explicit.add(key)
    take_named_teacher(cfg, teachers, explicit)
    check_config(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    one_line_warnings()
    if args.list_recipes:
        for name in RECIPES:
            print(f"{name:32} {method_name(recipe(name).method):12} {describe(name)}")
        return 0
    try:
        cfg = resolve_config(args)
    except (KeyError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {str(error).strip(chr(34))}\n")
    if args.print_config:
        sys.stdout.write(to_yaml(cfg, annotate=True))
        return 0
    from fastmim.train.signals import StopSignals

    try:
        with StopSignals() as signals:  # Ctrl-C recorded from here on, through the heavy imports and the build
            return train(cfg, parser, signals)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        parser.exit(INTERRUPTED["SIGINT"], f"{parser.prog}: error: interrupted\n")


def train(cfg: Config, parser: argparse.ArgumentParser, signals) -> int:
    from fastmim.ops.selfcheck import KernelMismatchError
    from fastmim.train.trainer import Interrupted, NonFiniteLossError, Trainer  # heavy imports only when training

    try:
        trainer = Trainer(cfg)  # everything that can be wrong with the input is found here, before any work
    except (FileNotFoundError, ValueError, KernelMismatchError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    try:
        trainer.run(signals)
    except Interrupted as stop:
        if stop.before_start:
            parser.exit(INTERRUPTED[stop.signal_name], f"{parser.prog}: error: interrupted by {stop.signal_name} "
                        "before training started; nothing was written\n")
        return INTERRUPTED[stop.signal_name]
    except NonFiniteLossError as error:  # the run failed (exit 1), the input was not wrong
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
