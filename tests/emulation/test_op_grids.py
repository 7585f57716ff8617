"""CI runs every CUDA kernel body on the op test grids: tests/ops' grids (fp32, bf16, fp16; D not a multiple
of 8, K = 1, B = 1, H ≠ W, non-contiguous inputs, views at odd storage offsets, bad inputs) and the review's
findings (tests/emulation/emulated), in a child pytest against the CUDA kernels compiled for the CPU with
ASan and UBSan. Any failure, any sanitizer report or a suspiciously small number of tests fails this test."""
from __future__ import annotations

import re
import subprocess
import sys

from .helpers import ROOT, environment, library, sanitizer_report

GRIDS = ["tests/ops/test_align_loss.py", "tests/ops/test_masked_patch_embed.py", "tests/ops/test_dynamic_align.py",
         "tests/ops/test_masked_pixel_loss.py", "tests/ops/test_block_mask.py",
         "tests/emulation/emulated"]
MINIMUM = 300  # tests the grids hold today; fewer means something stopped being collected


def test_cuda_kernel_bodies_pass_the_op_grids_under_asan_and_ubsan():
    path = library()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not cpu_kernels and not cuda",
               *GRIDS]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800,
                            env=environment(FASTMIM_TEST_KERNELS="emulated", FASTMIM_EMULATED_LIBRARY=str(path)))
    tail = (result.stdout + result.stderr)[-6000:]
    assert sanitizer_report(result) is None, tail
    assert result.returncode == 0, tail
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= MINIMUM, tail
    print(result.stdout.strip().splitlines()[-1])
