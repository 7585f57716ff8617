"""The SIMT emulation's own checks, each shown firing on a small deliberately wrong kernel
(tests/emulation/wrong_kernels.cpp), and not firing on a correct one. A check that cannot fail is not a check."""
from __future__ import annotations

import pytest

from .helpers import run_python, sanitizer_report

CALL = """
x = torch.arange(64, dtype=torch.float32){prepare}
try:
    out = torch.ops.fastmim_simt_selftest.run({case!r}, x)
    print("RESULT", out.tolist())
except RuntimeError as error:
    print("RAISED", str(error).splitlines()[0])
"""


def run_case(case: str, prepare: str = ""):
    result = run_python(CALL.format(case=case, prepare=prepare), timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("RESULT", "RAISED"))]
    return result, lines[0] if lines else ""


def test_correct_warp_and_block_sums_pass_every_check():
    result, line = run_case("sums")
    assert result.returncode == 0 and sanitizer_report(result) is None, result.stderr[-3000:]
    values = eval(line.split(" ", 1)[1])  # noqa: S307 (our own child's output)
    assert values[0] == sum(range(64)) and values[1] == sum(range(32, 64))


CAUGHT = {  # case: words of the fault the emulation raises (as a catchable RuntimeError)
    "misaligned_load": "misaligned address: a 16-byte vector load",
    "exited_lane": "__shfl_xor_sync: the mask 0xffffffff names lane 31",
    "barrier": "__syncthreads() is not reached by every thread of the block",
    "grid_y": "invalid configuration, grid (1, 65536, 1) exceeds the limits",
    "block_size": "invalid configuration, block (2048, 1, 1) exceeds the limits",
    "shared_limit": "65536 bytes of dynamic shared memory exceed the kernel's limit of 49152",
}


@pytest.mark.parametrize("case", CAUGHT)
def test_wrong_kernel_raises_a_fault(case):
    result, line = run_case(case)
    assert result.returncode == 0 and sanitizer_report(result) is None, result.stderr[-3000:]
    assert line.startswith("RAISED") and CAUGHT[case] in line, line


def test_device_assertion_becomes_an_exception_only_when_it_fails():
    result, line = run_case("assert")
    assert line.startswith("RESULT"), line
    result, line = run_case("assert", prepare="\nx[7] = -1.0")
    assert line.startswith("RAISED") and "device-side assertion" in line and "x must be non-negative" in line, line


def test_unwritten_shared_memory_reads_nan():
    result, line = run_case("unwritten_shared")
    assert line == "RESULT " + str([float("nan")] * 64), line


def test_blocks_run_in_a_random_order_that_the_seed_sets():
    orders = []
    for seed in (0, 0, 1):
        code = f"torch.ops.fastmim_emulated.configure(65535, {seed})\n" + CALL.format(case="block_order", prepare="")
        result = run_python(code, timeout=120)
        orders.append([line for line in result.stdout.splitlines() if line.startswith("RESULT")][0])
    assert orders[0] == orders[1] != orders[2]
    assert orders[0] != "RESULT " + str([float(i) for i in range(64)])


@pytest.mark.parametrize("case,report", [("out_of_bounds", "heap-buffer-overflow"),
                                         ("misaligned_raw", "misaligned address")])
def test_sanitizers_stop_the_process(case, report):
    result, _ = run_case(case)
    assert result.returncode != 0, result.stdout
    assert report in result.stderr and sanitizer_report(result), result.stderr[-3000:]
