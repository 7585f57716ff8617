"""How long the command line takes before any work: `python -m fastmim.pretrain --help` and an argument error,
each the median of several fresh processes (what a user waits for), and the import time of the configuration
modules. Writes JSON with the machine and versions when asked.

    python benchmarks/startup.py --out benchmarks/results/startup_cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COMMANDS = {
    "help": ["-m", "fastmim.pretrain", "--help"],
    "bad_argument": ["-m", "fastmim.pretrain", "--set", "method.mask_ratio=abc"],
    "print_config": ["-m", "fastmim.pretrain", "--recipe", "maskalign_vit_base_clip_b16", "--print-config"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/startup.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per command (the median is reported)")
    p.add_argument("--out", type=Path, help="write the JSON result here (default: print only)")
    return p.parse_args(argv)


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *command], capture_output=True, check=False)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    timings = {}
    for name, command in COMMANDS.items():
        runs = [seconds(command) for _ in range(args.repeats)]
        timings[name] = {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs)}
        print(f"{name:>13}: {timings[name]['median_s']:.2f} s (median of {args.repeats}; "
              f"{timings[name]['min_s']:.2f}–{timings[name]['max_s']:.2f})")
    from bench_utils import cpu_name

    result = {"device": f"CPU: {cpu_name()}", "python": platform.python_version(), "timings": timings}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
