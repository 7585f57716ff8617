"""Shared benchmark helpers: the command line (parser, checked numbers and device, one `error:` line instead of a
traceback), environment record, stage timers, matmul peak, peak memory, the result table."""
from __future__ import annotations

import argparse
import platform
import sys
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from fastmim.train.peak import measure_peak_flops  # noqa: F401  (the benchmarks import it from here)


class UsageError(ValueError):
    """A bad argument or file: reported as one `error:` line, exit code 2."""


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring as the description, whole flag names only (no prefixes)."""
    return argparse.ArgumentParser(prog=f"python benchmarks/{Path(sys.argv[0]).name}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)


def whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text} is below {minimum}")
    return value


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    return whole_number(text, 1)


def non_negative(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    return whole_number(text, 0)


def chosen_device(choice: str) -> torch.device:
    """`auto` (CUDA when there is a GPU), `cpu` or `cuda`; `cuda` without a GPU is a UsageError."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible here")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def entry_point(main) -> None:
    """Run a benchmark's `main()` and exit with its code; a UsageError, a missing file or Ctrl-C is one `error:`
    line (exit 2, or 130 for Ctrl-C) instead of a traceback."""
    prog = f"python benchmarks/{Path(sys.argv[0]).name}"
    try:
        code = main()
    except (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def environment(device: torch.device) -> dict:
    import timm

    versions = {"torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda,
                "python": platform.python_version()}
    return {"device": device_name(device), "versions": versions}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its thread count, the vector ISA torch's kernels use and whether bf16
    matrix products run natively (CPUs of one name differ in both, and the figures with them)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from fastmim.train.precision import cpu_has_fast_bf16

    bf16 = "native bf16" if cpu_has_fast_bf16() else "no native bf16"
    isa = torch.backends.cpu.get_cpu_capability()
    return f"CPU: {cpu_name()} ({torch.get_num_threads()} threads, {isa}, {bf16})"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Timer:
    """Synchronized stage timers: CUDA events on a GPU, perf_counter after a synchronize on the CPU."""

    def __init__(self, device: torch.device, sync):
        self.device, self.sync = device, sync
        self.samples = defaultdict(list)

    def stage(self, name: str, fn):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            self.samples[name].append(start.elapsed_time(end) / 1000)
            return out
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.samples[name].append(time.perf_counter() - start)
        return out

    def medians(self) -> dict:
        return {name: statistics.median(values) for name, values in self.samples.items()}


def read_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory_meter(device: torch.device, step, sync) -> float:
    """Peak memory of one step in MB: CUDA max allocated on a GPU; on the CPU the growth of the process's peak
    resident set over the step (the peak is reset first through /proc/self/clear_refs)."""
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync()
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = read_status_kb("VmRSS")
    step()
    return (read_status_kb("VmHWM") - before) / 1024


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MaskAlign step on {result['device']} ({result['config']['dtype']}, "
                        f"batch {result['config']['batch_size']})")
    for column in ("path", "images/s (median)", "min–max", "MFU", "peak MB", "breakdown (ms)"):
        table.add_column(column)
    for name in ("fastmim", "reference"):
        r = result[name]
        stages = ", ".join(f"{k} {1000 * v:.0f}" for k, v in r["breakdown"].items())
        table.add_row(name, f"{r['images_per_sec']:.1f}", f"{r['images_per_sec_min']:.1f}–{r['images_per_sec_max']:.1f}",
                      f"{r['mfu']:.3f}", f"{r['peak_memory_mb']:.0f}", stages)
    Console().print(table)
    Console().print(f"speedup (fastmim / reference): [bold]{result['speedup']:.2f}×[/bold]")
