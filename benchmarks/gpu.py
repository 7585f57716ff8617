"""Everything fastmim measures on a GPU, in one command (under 10 minutes on one H100):

    python benchmarks/gpu.py --out DIR

writes DIR/gpu.json and DIR/gpu.md (the Markdown report, also printed) with, in the order they run:
1. the environment: GPU, driver, CUDA, torch, the fastmim commit;
2. `python -m fastmim.doctor --device cuda`: its table and exit code (also DIR/doctor.json);
3. the `@pytest.mark.cuda` tests: counts and the failures' names (the doctor's own test is left out: part 2 ran it);
4. for each method, benchmarks/throughput.py at ViT-B/16 (CLIP ViT-B/16 teachers with random weights: no download)
   in bf16: images/s, MFU, peak memory and the stage breakdown of its fastmim path (fused kernels) and of its
   reference path (the straightforward computation), at the largest per-GPU batch of 256, 128 and 64 that fits;
   first without --compile for every method, then
5. DALI's `mixed` decoder on a generated JPEG set: images/s with the hardware JPEG decoder (the trainer's
   hw_decoder_load) and without it (0), then
6. the same throughput runs with --compile (the fastmim path's blocks compiled; the reference path is measured
   again beside it, uncompiled).

A part that would start after --budget seconds is recorded as not run, so that the report is always written.
Exit status: 0 when every part ran and passed, 1 when the doctor or a CUDA test failed or a part raised (the
report says which), 2 without a GPU or with bad arguments (one `error:` line).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dataloader  # noqa: E402
import throughput  # noqa: E402
from bench_utils import environment  # noqa: E402

from fastmim.data import dali_available  # noqa: E402
from fastmim.train.peak import known_gpu_peak  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("doctor", "tests", "throughput", "dali", "compile")
KERNELS = ("fused", "reference")
BATCHES = (256, 128, 64)        # tried largest first: the largest that fits is measured
RESULTS_ENV = "FASTMIM_GPU_TEST_RESULTS"  # the CUDA-test run's per-test outcomes (JSON lines), see the hooks below
DOCTOR_TEST = "tests/test_doctor.py::test_doctor_passes_on_the_gpu"
STAGES = ("data", "teacher_forward", "student_forward", "backward", "optimizer")
# Sizes: the real run's, and --quick's (tiny models and images: the CPU test of every code path).
FULL = dict(doctor_steps=20, model=["--model", "base", "--teacher-size", "base", "--img-size", "224"], steps=[],
            batches=BATCHES, jpegs=dict(images=1024, width=500, height=375, img_size=224, batch_size=128, rounds=3))
QUICK = dict(doctor_steps=2, model=["--model", "tiny", "--teacher-size", "tiny", "--img-size", "32"],
             steps=["--steps", "1", "--warmup", "0"], batches=(4,),
             jpegs=dict(images=16, width=64, height=48, img_size=32, batch_size=4, rounds=1))
DOCTOR_TIMEOUT, TESTS_TIMEOUT = 180.0, 240.0   # seconds at most, within the budget
ESTIMATES = {False: 30.0, True: 120.0}       # seconds a throughput run is assumed to take before one has run


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/gpu.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--out", type=Path, required=True, help="folder for the report (created if missing)")
    p.add_argument("--budget", type=float, default=540.0,
                   help="seconds for the whole run (default 540): parts that would start later are recorded as not run")
    p.add_argument("--methods", default=",".join(throughput.REFERENCES),
                   help=f"comma-separated methods to measure (default: {','.join(throughput.REFERENCES)})")
    p.add_argument("--kernels", default="fused",
                   help="comma-separated fastmim.ops modes of the fastmim path, one throughput run each (default "
                   "fused; fused,reference also measures the trainer's step with the PyTorch references)")
    p.add_argument("--skip", default="", help=f"comma-separated parts not to run, of {', '.join(PARTS)}")
    p.add_argument("--tests", default="tests", help="where the @pytest.mark.cuda tests are collected (default tests)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)  # the CPU test's
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # tiny sizes, for the CPU test
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    lists = (("--methods", args.methods, throughput.REFERENCES), ("--kernels", args.kernels, KERNELS),
             ("--skip", args.skip, PARTS))
    for flag, value, allowed in lists:
        bad = [v for v in split(value) if v not in allowed]
        if bad or (flag != "--skip" and not split(value)):
            p.exit(2, f"{p.prog}: error: {flag} {value!r}: each must be one of {', '.join(allowed)}\n")
    if args.budget <= 0:
        p.exit(2, f"{p.prog}: error: --budget must be positive, got {args.budget:g}\n")
    if args.out.exists() and not args.out.is_dir():
        p.exit(2, f"{p.prog}: error: --out {str(args.out)!r} is a file, not a folder\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.exit(2, f"{p.prog}: error: no CUDA GPU here (torch.cuda.is_available() is False): this command measures a "
                  "GPU; on the CPU use benchmarks/throughput.py --device cpu\n")
    return args


def split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class Budget:
    """The run's seconds: what is left, and whether a part of an estimated length still fits."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, estimate: float) -> bool:
        return estimate <= self.left()


def not_run(why: str) -> dict:
    """A part or run not run, and why."""
    return {"not_run": why}


def failed(error: BaseException) -> dict:
    traceback.print_exception(error)
    return {"error": f"{type(error).__name__}: {error}".splitlines()[0]}


# --- 1. environment -----------------------------------------------------------------------------------------

def environment_record(device: torch.device) -> dict:
    env = environment(device)
    record = {"device": env["device"], "driver": driver_version(device), "cuda": torch.version.cuda,
              "torch": torch.__version__, "fastmim_commit": fastmim_commit(), "versions": env["versions"],
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(compute_capability=f"{props.major}.{props.minor}", memory_gb=props.total_memory / 2**30)
    return record


def driver_version(device: torch.device) -> str:
    if device.type != "cuda":
        return "none (CPU)"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


def fastmim_commit() -> str:
    """The checkout's commit, marked when tracked files differ from it."""
    def git(*words):
        return subprocess.run(["git", "-C", str(ROOT), *words], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + (" with local changes" if changed else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"


# --- 2. the doctor --------------------------------------------------------------------------------------------

def run_doctor(args, out: Path, sizes: dict, budget: Budget) -> dict:
    report = out / "doctor.json"
    report.unlink(missing_ok=True)  # an earlier run's must not pass for this one's
    command = [sys.executable, "-m", "fastmim.doctor", "--device", args.device, "--steps", str(sizes["doctor_steps"]),
               "--json", str(report)]
    done = run_command(command, min(DOCTOR_TIMEOUT, budget.left()))
    if report.exists():
        done["report"] = json.loads(report.read_text())
    return done


def run_command(command: list[str], timeout: float, env: dict | None = None) -> dict:
    """Exit code, output (stdout then stderr) and seconds of `command`; exit code None when it ran out of time."""
    start = time.monotonic()
    env = {**os.environ, "COLUMNS": "120", **(env or {})}  # rich's tables at a readable width in the report
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:  # what it printed so far comes as bytes
        printed = [text.decode(errors="replace") if isinstance(text, bytes) else text or ""
                   for text in (expired.stdout, expired.stderr)]
        code, output = None, "".join(printed) + f"\n(stopped after {timeout:.0f} s)"
    return {"command": " ".join(command), "exit_code": code, "output": output, "seconds": time.monotonic() - start}


# --- 3. the CUDA tests ------------------------------------------------------------------------------------------

def run_cuda_tests(args, out: Path, budget: Budget) -> dict:
    results = out / "cuda_tests.jsonl"
    results.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", args.tests, "--deselect", DOCTOR_TEST,
               "-p", "gpu", "-p", "no:cacheprovider"]
    paths = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")]))
    done = run_command(command, min(TESTS_TIMEOUT, budget.left()), {RESULTS_ENV: str(results), "PYTHONPATH": paths})
    done["output"] = done["output"][-4000:]  # the summary; every outcome is in the counts below
    return {**done, **count_outcomes(results), "deselected": [DOCTOR_TEST]}


def count_outcomes(path: Path) -> dict:
    """passed/failed/errors/skipped and the failures' names from the hooks' lines (complete or cut short)."""
    lines = [parsed(line) for line in path.read_text().splitlines()] if path.exists() else []
    counts = {"selected": next((line["collected"] for line in lines if "collected" in line), None),
              "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for line in lines:
        if "outcome" not in line:
            continue
        if line["outcome"] == "skipped":
            counts["skipped"] += 1
        elif line["outcome"] == "passed":
            counts["passed"] += 1
        elif line["when"] == "call":
            counts["failed"] += 1
            counts["failures"].append(line["test"])
        else:  # set-up or tear-down failed
            counts["errors"] += 1
            counts["failures"].append(f"{line['test']} ({line['when']})")
    return counts


def parsed(line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # the last line of a run stopped while writing it
        return {}


def pytest_collection_finish(session):
    """pytest hook (this file is loaded into the CUDA-test run with -p gpu): how many tests were selected."""
    write_outcome({"collected": len(session.items)})


def pytest_runtest_logreport(report):
    """pytest hook: one line per test outcome, written as it happens, so that a run stopped by its time limit
    still says what it did. A test counts once: its call, or the set-up or tear-down that failed or skipped."""
    if report.when == "call" or report.outcome != "passed":
        write_outcome({"test": report.nodeid, "when": report.when, "outcome": report.outcome})


def write_outcome(line: dict) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


# --- 4 and 6. the training step ------------------------------------------------------------------------------

def throughput_runs(args, device: torch.device, sizes: dict, budget: Budget, compile: bool,
                    fitted: dict) -> list[dict]:
    """One throughput.py run per method and kernel mode. `fitted` holds the batch each one ran at without
    --compile: the compiled run starts there instead of paying again for the batches that did not fit."""
    runs, estimate = [], ESTIMATES[compile]
    for method in split(args.methods):
        for kernels in split(args.kernels):
            if not budget.allows(estimate):
                runs.append({"method": method, "compile": compile, "kernels": kernels,
                             **not_run(f"time budget: {budget.left():.0f} s left, a run takes ~{estimate:.0f} s")})
                continue
            start = time.monotonic()
            batches = [b for b in sizes["batches"] if b <= (fitted.get((method, kernels)) or max(sizes["batches"]))]
            runs.append(measure(method, kernels, compile, args, device, sizes, batches))
            fitted.setdefault((method, kernels), runs[-1].get("batch_size"))
            estimate = time.monotonic() - start
            print(run_line(runs[-1]), flush=True)
    return runs


def measure(method: str, kernels: str, compile: bool, args, device: torch.device, sizes: dict, batches) -> dict:
    """throughput.py's run at the largest of `batches` that fits."""
    def run_at(batch: int) -> dict:
        return throughput.run(throughput_args(method, kernels, compile, batch, args, sizes))

    record = {"method": method, "compile": compile, "kernels": kernels}
    start = time.monotonic()
    try:
        batch, tried, result = largest_fitting(batches, run_at)
        record.update(batch_size=batch, out_of_memory_at=tried)
        if result is not None:
            record.update(summarize(result, device))
    except Exception as error:  # noqa: BLE001  (recorded; the other runs go on)
        record.update(failed(error))
    finally:
        release(compile)
    record["seconds"] = time.monotonic() - start
    return record


def throughput_args(method: str, kernels: str, compile: bool, batch: int, args, sizes: dict):
    dtype = "bf16" if args.device == "cuda" else "auto"  # auto: fp32 on CPUs that only emulate bf16
    argv = ["--method", method, *sizes["model"], "--batch-size", str(batch), "--device", args.device, "--dtype",
            dtype, "--kernels", kernels, "--workers", str(cpu_share(8)), *sizes["steps"],
            *(["--compile"] if compile else [])]
    return throughput.parse_args(argv)


def cpu_share(most: int) -> int:
    """Worker processes or threads for the input pipelines: half the cores (the step's own process needs some),
    at most `most`."""
    return max(1, min(most, len(os.sched_getaffinity(0)) // 2))


def largest_fitting(batches, run):
    """(batch, the larger batches that ran out of memory, run(batch)) for the largest batch that fits; (None,
    all of them, None) when none does."""
    too_large = []
    for batch in sorted(batches, reverse=True):
        try:
            return batch, too_large, run(batch)
        except torch.OutOfMemoryError:
            too_large.append(batch)
        free_memory()  # out of the except block: the failed attempt's frames, and their tensors, are gone
    return None, too_large, None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def release(compile: bool) -> None:
    """Between runs: memory back to the device, and (after --compile) torch.compile's caches emptied so that the
    next method's blocks do not count against the recompile limit."""
    free_memory()
    if compile:
        torch._dynamo.reset()


def summarize(result: dict, device: torch.device) -> dict:
    """Per path: images/s (median, min, max), MFU against throughput.py's measured matmul peak and against the
    vendor's dense bf16 peak where known, peak memory and the stage breakdown in ms."""
    config = result["config"]
    vendor = known_gpu_peak(result["device"]) if device.type == "cuda" else None
    paths = {}
    for name in ("fastmim", "reference"):
        r = result[name]
        paths[name] = {"images_per_sec": r["images_per_sec"], "images_per_sec_min": r["images_per_sec_min"],
                       "images_per_sec_max": r["images_per_sec_max"], "mfu": r["mfu"],
                       "mfu_vendor_peak": r["images_per_sec"] * config["flops_per_image"] / vendor if vendor else None,
                       "peak_memory_mb": r["peak_memory_mb"],
                       "breakdown_ms": {stage: 1000 * s for stage, s in r["breakdown"].items()}}
    return {"model": config["model"], "teacher_size": config["teacher_size"], "img_size": config["img_size"],
            "dtype": config["dtype"], "flops_per_image": config["flops_per_image"], "peak_flops": config["peak_flops"],
            "vendor_peak_flops": vendor, "kernels_in_use": config["kernels_in_use"], "speedup": result["speedup"],
            "paths": paths}


def run_line(run: dict) -> str:
    head = f"throughput {run['method']} ({run['kernels']}{', compiled' if run['compile'] else ''})"
    if "paths" not in run:
        return f"{head}: {run.get('error') or run.get('not_run') or 'no batch fits'}"
    rates = ", ".join(f"{name} {p['images_per_sec']:.0f} images/s" for name, p in run["paths"].items())
    return f"{head} at batch {run['batch_size']}: {rates} ({run['seconds']:.0f} s)"


# --- 5. DALI ------------------------------------------------------------------------------------------------------

def dali_decoding(args, device: torch.device, sizes: dict) -> dict:
    """DALI's `mixed` decoder (the CPU decoder when forced to the CPU) on generated JPEGs, with the hardware JPEG
    decoder at the trainer's share and without it."""
    if not dali_available():
        return not_run("DALI is not installed (pip install nvidia-dali-cuda130)")
    jpegs = sizes["jpegs"]
    threads = cpu_share(8)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastmim_gpu_jpegs_") as tmp:
        data = Path(tmp) / "jpegs"
        dataloader.generate_jpegs(data, jpegs["images"], jpegs["width"], jpegs["height"])
        for load in (dataloader.DataConfig.dali_hw_decoder_load, 0.0):
            argv = ["--img-size", str(jpegs["img_size"]), "--batch-size", str(jpegs["batch_size"]), "--rounds",
                    str(jpegs["rounds"]), "--threads", str(threads), "--hw-decoder-load", str(load), "--backends",
                    "dali-gpu" if device.type == "cuda" else "dali-cpu"]
            row = dataloader.run(dataloader.parse_args(argv), data, device)[0]
            rows.append({"decoder": "mixed" if device.type == "cuda" else "cpu", "hw_decoder_load": load, **row})
    return {"images": jpegs["images"], "source_size": f"{jpegs['width']}x{jpegs['height']}",
            "img_size": jpegs["img_size"], "threads": threads, "rows": rows}


# --- the report ---------------------------------------------------------------------------------------------------

def run_all(args, device: torch.device, budget: Budget) -> dict:
    sizes, skip = (QUICK if args.quick else FULL), set(split(args.skip))
    out = args.out
    result = {"command": " ".join(["benchmarks/gpu.py", *args.argv]), "budget_seconds": args.budget,
              "environment": environment_record(device)}
    fitted = {}  # (method, kernels) → the batch that fitted without --compile
    steps = (("doctor", lambda: run_doctor(args, out, sizes, budget)),
             ("tests", lambda: run_cuda_tests(args, out, budget)),
             ("throughput", lambda: throughput_runs(args, device, sizes, budget, False, fitted)),
             ("dali", lambda: dali_decoding(args, device, sizes)),
             ("compile", lambda: throughput_runs(args, device, sizes, budget, True, fitted)))
    for name, step in steps:
        print(f"gpu.py: {name} ({budget.elapsed():.0f} s)", flush=True)
        if name in skip:
            result[name] = not_run("--skip")
        elif budget.left() <= 0:
            result[name] = not_run("time budget")
        else:
            try:
                result[name] = step()
            except Exception as error:  # noqa: BLE001  (recorded; the report is still written)
                result[name] = failed(error)
    result["seconds"] = budget.elapsed()
    result["problems"] = problems(result)
    return result


def problems(result: dict) -> list[str]:
    found = []
    doctor, tests = result["doctor"], result["tests"]
    if "exit_code" in doctor and doctor["exit_code"] != 0:
        found.append("the doctor ran out of time" if doctor["exit_code"] is None else
                     f"the doctor exited with {doctor['exit_code']}")
    if "failures" in tests:
        found += [f"CUDA test failed: {name}" for name in tests["failures"]]
        if tests["exit_code"] is None:
            found.append("the CUDA tests ran out of time")
        elif tests["exit_code"] != 0 and not tests["failures"]:  # e.g. a collection error, or no test selected
            found.append(f"the CUDA tests exited with {tests['exit_code']}")
    for name in ("doctor", "tests", "dali"):
        if "error" in result[name]:
            found.append(f"{name}: {result[name]['error']}")
    for part in ("throughput", "compile"):
        runs = result[part] if isinstance(result[part], list) else []
        found += [f"{part} {r['method']} ({r['kernels']}): {r['error']}" for r in runs if "error" in r]
        found += [f"{part} {r['method']} ({r['kernels']}): no batch of {r['out_of_memory_at']} fits" for r in runs
                  if "batch_size" in r and r["batch_size"] is None]
        if "error" in result[part] and not runs:
            found.append(f"{part}: {result[part]['error']}")
    return found


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# fastmim on {env['device']}", "",
             f"driver {env['driver']} · CUDA {env['cuda']} · torch {env['torch']} · fastmim "
             f"{env['fastmim_commit']} · {env['date']} · {result['seconds']:.0f} s of a "
             f"{result['budget_seconds']:.0f} s budget", ""]
    lines += doctor_section(result["doctor"]) + tests_section(result["tests"])
    lines += step_section(result["throughput"], result["compile"]) + dali_section(result["dali"])
    lines += ["## Problems", ""] + ([f"- {p}" for p in result["problems"]] or ["none"]) + [""]
    return "\n".join(lines)


def table(columns: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def why_not_run(part: dict) -> str | None:
    if isinstance(part, dict) and ("not_run" in part or "error" in part):
        return f"not run: {part['not_run']}" if "not_run" in part else f"error: {part['error']}"
    return None


def doctor_section(doctor: dict) -> list[str]:
    head = ["## `python -m fastmim.doctor`", ""]
    if why_not_run(doctor):
        return head + [why_not_run(doctor), ""]
    return head + [f"exit code {doctor['exit_code']} ({doctor['seconds']:.0f} s)", "", "```text",
                   doctor["output"].rstrip(), "```", ""]


def tests_section(tests: dict) -> list[str]:
    head = ["## `@pytest.mark.cuda` tests", ""]
    if why_not_run(tests):
        return head + [why_not_run(tests), ""]
    counts = ", ".join(f"{tests[k]} {k}" for k in ("passed", "failed", "errors", "skipped"))
    stopped = " — stopped by its time limit" if tests["exit_code"] is None else ""
    lines = head + [f"{counts} of {tests['selected']} selected ({tests['seconds']:.0f} s, exit code "
                    f"{tests['exit_code']}{stopped}); not run here: {', '.join(tests['deselected'])}", ""]
    return lines + ([f"- failed: `{name}`" for name in tests["failures"]] or ["no failures"]) + [""]


def step_section(eager, compiled) -> list[str]:
    measured = [run for part in (eager, compiled) if isinstance(part, list) for run in part if "paths" in run]
    first = measured[0] if measured else None
    setting = (f" (student {first['model']}, teacher {first['teacher_size']}, {first['img_size']} px, "
               f"{first['dtype']})") if first else ""
    lines = [f"## Training step: benchmarks/throughput.py{setting}", ""]
    rows, notes = [], []
    for part in (eager, compiled):
        if why_not_run(part):
            notes.append(why_not_run(part))
            continue
        for run in part:
            rows += step_rows(run, notes)
    columns = ["method", "kernels", "--compile", "batch", "path", "images/s", "MFU (measured peak)",
               "MFU (vendor peak)", "peak memory MB", *[f"{s} ms" for s in STAGES]]
    lines += table(columns, rows) if rows else []
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    return lines + ["throughput.py compiles the fastmim path only: with --compile its reference path is the same "
                    "straightforward computation, measured again beside it.", ""]


def step_rows(run: dict, notes: list[str]) -> list[list]:
    compiled = "yes" if run["compile"] else "no"
    if "paths" not in run:
        why = run.get("error") or run.get("not_run") or f"no batch of {run['out_of_memory_at']} fits"
        notes.append(f"{run['method']} ({run['kernels']}, --compile {compiled}): {why}")
        return []
    rows = []
    for name, p in run["paths"].items():
        vendor = f"{p['mfu_vendor_peak']:.3f}" if p["mfu_vendor_peak"] is not None else "n/a"
        stages = [f"{p['breakdown_ms'].get(s, float('nan')):.1f}" for s in STAGES]
        rows.append([run["method"], run["kernels"], compiled, run["batch_size"], name, f"{p['images_per_sec']:.1f}",
                     f"{p['mfu']:.3f}", vendor, f"{p['peak_memory_mb']:.0f}", *stages])
    return rows


def dali_section(dali: dict) -> list[str]:
    head = ["## DALI decoding", ""]
    if why_not_run(dali):
        return head + [why_not_run(dali), ""]
    rows = [[r["decoder"], r["hw_decoder_load"], f"{r['images_per_sec']:.1f}", f"{r['steady_images_per_sec']:.1f}",
             f"{r['first_batch_s']:.3f}"] for r in dali["rows"]]
    return head + [f"{dali['images']} generated JPEGs of {dali['source_size']} → {dali['img_size']} px, "
                   f"DALI threads: {dali['threads']}", ""] + \
        table(["decoder", "hw_decoder_load", "images/s", "steady images/s", "first batch s"], rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    result = run_all(args, device, Budget(args.budget))
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown(result)
    (args.out / "gpu.md").write_text(report)
    print(report)
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
