"""`python -m fastmim.doctor`: check an install on this machine in one command.

Prints the environment (torch, CUDA runtime, GPUs and their compute capability, the architectures fastmim._C
holds code for, DALI, flash-attn, xformers, NVIDIA apex, the CPU's vector ISA and bf16 support), runs every
fused op against its reference on each device present (fp32 and bf16, forward and backward, the precision
rule), and trains the demo model for a few steps with the fused kernels and with the references from the
same start, comparing the loss at every step. Exits 1 on any mismatch, 0 otherwise.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# Relative loss difference allowed between fused and reference training, per step: the two differ only in
# summation order, which training amplifies slowly (measured on the CPU in fp32: ~1e-6 after 20 steps).
TRAINING_TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2}


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def nvidia_apex() -> str:
    """NVIDIA apex (apex.optimizers); the unrelated PyPI package named `apex` does not count."""
    if importlib.util.find_spec("apex") is None:
        return "not installed"
    try:
        return "installed" if importlib.util.find_spec("apex.optimizers") is not None else "not NVIDIA apex"
    except ModuleNotFoundError:
        return "not NVIDIA apex"


def library_architectures() -> str:
    from fastmim.ops import _binary, _extension

    path = _binary.library_path()
    if path is None or not _extension.load():
        return f"unusable: {_extension.load_error()}"
    if not _extension.has_cuda_kernels():
        return "CPU kernels only (built without nvcc)"
    try:
        sass, ptx = _binary.architectures(path)
    except (FileNotFoundError, OSError) as error:
        return f"unknown ({error})"
    return "SASS " + ", ".join(f"sm_{a}" for a in sass) + "; PTX " + (", ".join(f"compute_{a}" for a in ptx) or "none")


def cpu_description() -> str:
    from fastmim.train.precision import cpu_has_fast_bf16

    isa = torch.backends.cpu.get_cpu_capability()
    return f"{isa}, {'native' if cpu_has_fast_bf16() else 'no native'} bf16, {torch.get_num_threads()} threads"


def environment() -> list[tuple[str, str]]:
    from fastmim.ops import _extension

    from fastmim.ops import _binary

    loaded = _binary.library_path() if _extension.load() else None
    rows = [("torch", torch.__version__), ("CUDA runtime (torch)", torch.version.cuda or "none (CPU build)"),
            ("fastmim._C", str(loaded) if loaded else "not loaded"), ("fastmim._C code", library_architectures())]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(index)
        version = _extension.kernel_version(torch.device("cuda", index))
        code = f"SASS sm_{version}" if version > 0 else f"PTX compute_{-version}, JIT-compiled" if version else "none"
        rows.append((f"GPU {index}", f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor}); "
                                     f"kernels: {code}"))
    if not torch.cuda.is_available():
        rows.append(("GPU", "none visible"))
    rows += [("DALI", package_version("nvidia-dali-cuda130") if package_version("nvidia-dali-cuda130") != "not installed"
              else package_version("nvidia-dali-cuda120")),
             ("flash-attn", package_version("flash-attn")), ("xformers", package_version("xformers")),
             ("NVIDIA apex", nvidia_apex()), ("CPU", cpu_description())]
    return rows


@dataclass
class TrainingComparison:
    device: str
    precision: str
    fused: list[float]
    reference: list[float]

    @property
    def worst(self) -> float:
        return max(abs(f - r) / max(abs(r), 1e-12) for f, r in zip(self.fused, self.reference))

    @property
    def ok(self) -> bool:
        finite = all(torch.isfinite(torch.tensor(self.fused + self.reference)))
        return finite and self.worst <= TRAINING_TOLERANCE[self.precision]


def train_losses(kernels: str, device: torch.device, precision: str, steps: int) -> list[float]:
    """The demo recipe's model trained `steps` steps on fixed synthetic batches: the loss of every step."""
    from fastmim import ops
    from fastmim.methods.maskalign import MaskAlign
    from fastmim.recipes import recipe
    from fastmim.train.optim import build_optimizer
    from fastmim.train.precision import autocast_for
    from fastmim.train.step import train_step

    cfg = recipe("demo")
    previous = ops.kernels_mode()
    ops.set_kernels(kernels)
    try:
        torch.manual_seed(0)
        method = MaskAlign(cfg.method, cfg.data.image).to(device)
        if precision == "bf16":
            method.teacher.to(torch.bfloat16)
        optimizer = build_optimizer("adamw", method.param_groups(0.05), 1e-3, (0.9, 0.95))
        size = cfg.data.img_size
        images = torch.randn(steps, 8, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        losses = []
        for step in range(steps):
            result = train_step(method, optimizer, [images[step]], autocast_for(device, precision), None)
            losses.append(float(result.loss))
        return losses
    finally:
        ops.set_kernels(previous)


def compare_training(device: torch.device, steps: int) -> TrainingComparison:
    precision = "bf16" if device.type == "cuda" else "fp32"
    return TrainingComparison(str(device), precision, train_losses("fused", device, precision, steps),
                              train_losses("reference", device, precision, steps))


def devices(choice: str) -> list[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if choice == "all":
        return found
    return [d for d in found if d.type == choice] or []


def print_report(env, checks_by_device, trainings) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="environment", show_header=False)
    for name, value in env:
        table.add_row(name, value)
    console.print(table)
    for device, checks in checks_by_device.items():
        table = Table(title=f"fused ops against the references on {device}")
        for column in ("op", "dtype", "value", "kernel error", "reference error", ""):
            table.add_column(column)
        for c in checks:
            table.add_row(c.op, str(c.dtype).replace("torch.", ""), c.value, f"{c.error:.2e}",
                          f"{c.reference_error:.2e}", "ok" if c.ok else "[red]MISMATCH[/red]")
        console.print(table)
    for t in trainings:
        verdict = "ok" if t.ok else "[red]MISMATCH[/red]"
        console.print(f"training {len(t.fused)} steps on {t.device} ({t.precision}): fused {t.fused[-1]:.5f}, "
                      f"reference {t.reference[-1]:.5f} at the last step; worst relative difference "
                      f"{t.worst:.2e} (allowed {TRAINING_TOLERANCE[t.precision]:.0e}) {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmim.doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="which devices to check (default: all present)")
    parser.add_argument("--steps", type=int, default=20, metavar="N",
                        help="training steps compared between the fused kernels and the references (default 20)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.exit(2, f"{parser.prog}: error: --steps must be at least 1, got {args.steps}\n")
    chosen = devices(args.device)
    if not chosen:
        parser.exit(2, f"{parser.prog}: error: --device {args.device}: no such device here "
                       "(torch.cuda.is_available() is False)\n")
    if args.json and not Path(args.json).parent.is_dir():
        parser.exit(2, f"{parser.prog}: error: --json {args.json!r}: {str(Path(args.json).parent)!r} is not a "
                       "folder\n")
    try:
        return check(chosen, args)
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: error: interrupted\n")


def check(chosen: list[torch.device], args) -> int:
    """The report, the problems found (stderr) and the exit code: 1 on any problem."""
    from fastmim.ops import _extension, selfcheck

    env = environment()
    if not _extension.load():
        print_report(env, {}, [])
        print(f"fastmim._C cannot be used ({_extension.load_error()}): nothing to check", file=sys.stderr)
        return 1
    usable = [d for d in chosen if _extension.runs_on(d)]
    problems = [f"{d}: {_extension.why_not(d)}" for d in chosen if d not in usable]
    checks = {str(d): selfcheck.check_ops(d) for d in usable}
    trainings = [compare_training(d, args.steps) for d in usable]
    print_report(env, checks, trainings)
    problems += [f"{d}: {line}" for d, c in checks.items() for line in selfcheck.failures(c)]
    problems += [f"{t.device}: training differs by {t.worst:.2e}" for t in trainings if not t.ok]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": dict(env), "problems": problems,
                       "ops": {d: [dict(op=c.op, dtype=str(c.dtype), value=c.value, error=c.error,
                                        reference_error=c.reference_error, ok=c.ok) for c in cs]
                               for d, cs in checks.items()},
                       "training": [dict(device=t.device, precision=t.precision, fused=t.fused,
                                         reference=t.reference, worst=t.worst, ok=t.ok) for t in trainings]},
                      f, indent=2)
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    print("all checks passed" if not problems else f"{len(problems)} problem(s) found")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
