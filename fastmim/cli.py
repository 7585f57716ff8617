"""What `python -m fastmim.pretrain` and `python -m fastmim.finetune` share: the starting configuration (a recipe
of the command's kind, or a --config file), flags and --set applied over it, --list-recipes, --print-config, and
the run itself with its exit codes — 0 done, 2 bad input (one `error:` line, before anything is written), 1 a
run that failed, 130/143 stopped by SIGINT/SIGTERM. Light: no torch until a run starts."""
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
COMMANDS = {"pretrain": "python -m fastmim.pretrain", "finetune": "python -m fastmim.finetune"}


def choices_epilog() -> str:
    lines = [f"  {name:24} {allowed}" for name, allowed in choice_fields().items()]
    return "fields with a fixed set of values (--set FIELD=VALUE):\n" + "\n".join(lines) + "\n"


def add_run_flags(p: argparse.ArgumentParser, compile_help: str, set_examples: str) -> None:
    """The flags every training command has: length, batch, resume, device, compile, --set, --print-config."""
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps; the learning-rate "
                   "schedule still follows --epochs, so a later --resume continues the same run")
    p.add_argument("--epochs", type=int, metavar="N", help="length of the run and of its schedule, in epochs")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per process per micro-batch; the learning "
                   "rate is base_lr × global batch / 256")
    p.add_argument("--resume", metavar="auto|never|PATH", help="auto (default): continue from DIR/checkpoints/last.pt "
                   "if present (its configuration must match, but for max_steps, logging and checkpoint cadence); "
                   "never: start from scratch, refused where DIR holds a run unless --set train.overwrite=true, "
                   "which clears it first; PATH: that checkpoint")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (auto: CUDA when available)")
    p.add_argument("--compile", action="store_true", default=None, help=compile_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set any config field (checked "
                   f"against its type; dict fields by dotted path), e.g. {set_examples} (repeatable; see "
                   "--print-config)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML (each field "
                   "with a fixed set of values says which) and exit")


def recipes_of(task: str) -> list[str]:
    """The recipes a command runs: those whose method is of its kind (pretraining or fine-tuning)."""
    return [name for name in RECIPES if recipe(name).method.task == task]


def check_task(cfg: Config, task: str, what: str) -> Config:
    if cfg.method.task != task:
        raise ValueError(f"{what} is a {cfg.method.task} configuration ({method_name(cfg.method)}): run it with "
                         f"{COMMANDS[cfg.method.task]}")
    return cfg


def starting_config(args: argparse.Namespace, task: str, default_recipe: str) -> Config:
    """The recipe (one of the command's kind), or the --config file."""
    if args.config is None:
        name = args.recipe or default_recipe
        return check_task(recipe(name), task, f"recipe {name!r}")
    if args.recipe is not None:
        raise ValueError("--config and --recipe both name a starting configuration: give one")
    try:
        data = yaml.safe_load(Path(args.config).read_text())
    except OSError as error:
        raise ValueError(f"--config {args.config!r}: cannot read it ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise ValueError(f"--config {args.config!r}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"--config {args.config!r}: expected a mapping of sections (method, data, optim, train, eval)")
    try:
        cfg = from_dict(data)
    except ValueError as error:
        raise ValueError(f"--config {args.config!r}: {error}") from error
    return check_task(cfg, task, f"--config {args.config!r}")


def apply_flags(cfg: Config, args: argparse.Namespace, flag_fields: dict[str, str]) -> None:
    for flag, dotted in flag_fields.items():
        value = getattr(args, flag)
        if value is not None:
            set_field(cfg, dotted, value)
    if args.data is not None and getattr(args, "data_backend", None) is None and cfg.data.backend == "synthetic":
        cfg.data.backend = "auto"  # --data given to a synthetic recipe: read it


def apply_sets(cfg: Config, args: argparse.Namespace) -> set[str]:
    """--set assignments, in order; the keys set."""
    keys = set()
    for assignment in args.set:
        key, value = parse_assignment(assignment)
        set_field(cfg, key, value)
        keys.add(key)
    return keys


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, task: str, resolve) -> int:
    """--list-recipes, --print-config or the run of the configuration `resolve(args)` makes."""
    one_line_warnings()
    if args.list_recipes:
        for name in recipes_of(task):
            print(f"{name:32} {method_name(recipe(name).method):12} {describe(name)}")
        return 0
    try:
        cfg = resolve(args)
        check_config(cfg)
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
