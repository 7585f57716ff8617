"""Running code against the SIMT-emulation library: it is built once per session (tests/emulation/build.py) and
loaded only in child processes that preload the ASan runtime, so a sanitizer report fails the child, not the
test session."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from . import build

ROOT = Path(__file__).resolve().parents[2]


def library() -> Path:
    """The built library (built now if needed); skips with the reason when this machine cannot build it."""
    why = build.available()
    if why:
        pytest.skip(f"the SIMT emulation needs g++ with ASan and UBSan: {why}")
    return build.build()


def environment(**extra) -> dict:
    return {**os.environ, **build.sanitizer_environment(), **extra}


def run_python(code: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """`code` in a child interpreter with the emulation library loaded (as `torch.ops.fastmim_emulated` and
    `torch.ops.fastmim_simt_selftest`)."""
    library()
    prelude = "import torch, os\ntorch.ops.load_library(os.environ['FASTMIM_EMULATED_LIBRARY'])\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment(**env), cwd=ROOT, timeout=timeout)


SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "UndefinedBehaviorSanitizer")


def sanitizer_report(result: subprocess.CompletedProcess) -> str | None:
    text = result.stdout + result.stderr
    return next((line for line in text.splitlines() if any(r in line for r in SANITIZER_REPORTS)), None)
