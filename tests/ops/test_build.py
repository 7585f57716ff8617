"""The build (setup.py): the real CUDA toolkit is found behind a wrapper nvcc, the CUDA kernels were compiled
for the default architectures, and a kernel that spills registers fails a compile with the build's flags."""
from __future__ import annotations

import importlib.util
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from fastmim.ops import _binary

from .helpers import cuda_toolkit_present

ROOT = Path(__file__).resolve().parents[2]


def load_setup():
    spec = importlib.util.spec_from_file_location("fastmim_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, builds nothing
    return module


needs_toolkit = pytest.mark.skipif(not cuda_toolkit_present(), reason="no CUDA toolkit (nvcc) on this machine")


def test_flags_make_warnings_and_spills_errors():
    setup = load_setup()
    flags = " ".join(setup.NVCC_FLAGS)
    assert "--Werror all-warnings" in flags and "-Xptxas=-warn-spills" in flags and "-Xptxas=-Werror" in flags
    assert setup.DEFAULT_ARCHS == "8.0;9.0;10.0;12.0+PTX"


@needs_toolkit
def test_real_cuda_home_is_found_behind_a_wrapper(tmp_path, monkeypatch):
    setup = load_setup()
    real = setup.find_cuda_home()
    assert setup.is_real_nvcc(os.path.join(real, "bin", "nvcc"))
    wrapper = tmp_path / "bin" / "nvcc"  # a shell script, as /usr/local/bin/nvcc is on these machines
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))  # a wrong CUDA_HOME whose nvcc is the wrapper
    assert not setup.is_real_nvcc(str(wrapper))
    assert setup.find_cuda_home() == os.path.realpath(real)
    assert setup.nvcc_reported_home() == os.path.realpath(real)


@needs_toolkit
def test_library_holds_sass_for_every_shipped_gpu_family_and_ptx_for_the_newest():
    """Review F1: `8.0;9.0a` without PTX ran on no B200, GB200 or RTX 50."""
    sass, ptx = _binary.architectures(_binary.library_path())
    assert sass == [80, 90, 100, 120], sass
    assert ptx == [120], ptx


def stores_by_kernel(sass_text: str) -> dict[str, list[str]]:
    """Kernel name (demangled enough to match) → the widths of its global stores (e.g. 'STG.E.128')."""
    stores, kernel = {}, None
    for line in sass_text.splitlines():
        if "Function :" in line:
            kernel = line.split("Function :")[1].strip()
            stores[kernel] = []
        elif kernel and "STG" in line:
            stores[kernel].append(re.search(r"STG[.A-Z0-9]*", line).group(0))
    return stores


@needs_toolkit
def test_vectorized_kernels_store_16_bytes_at_a_time():
    """Review F8: rescale_kernel loaded 16 bytes and stored them as four 4-byte stores. Every 16-byte
    instantiation (8 halves or 4 floats) of the elementwise kernels stores only 128-bit words."""
    stores = stores_by_kernel(_binary.sass(_binary.library_path(), 90))
    wide = {name: widths for name, widths in stores.items()
            if re.search(r"(rescale|mix|scatter)_kernelI(fLi4|N3c104HalfELi8|N3c108BFloat16ELi8)E", name)}
    assert len(wide) == 9, sorted(wide)
    for name, widths in wide.items():
        assert widths and set(widths) == {"STG.E.128"}, (name, widths)


SPILLING_KERNEL = r"""
__global__ void pressure(const float* in, float* out, int n) {
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = in[threadIdx.x + i * n];
#pragma unroll
  for (int r = 0; r < 16; ++r)
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = acc[i] * acc[(i + r) % 64] + 1.0f;
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 64; ++i) s += acc[i];
  out[threadIdx.x] = s;
}
"""


@needs_toolkit
def test_a_register_spill_fails_the_build(tmp_path):
    setup = load_setup()
    nvcc = os.path.join(setup.find_cuda_home(), "bin", "nvcc")
    source = tmp_path / "pressure.cu"
    source.write_text(SPILLING_KERNEL)

    def compile_with(*extra):
        return subprocess.run([nvcc, *setup.NVCC_FLAGS, "-arch=sm_80", "-c", str(source), "-o", str(tmp_path / "p.o"),
                               *extra], capture_output=True, text=True, timeout=300)

    assert compile_with().returncode == 0  # the kernel itself is fine ...
    squeezed = compile_with("-maxrregcount=24")  # ... until it has too few registers and spills
    assert squeezed.returncode != 0 and "spill" in squeezed.stderr.lower(), squeezed.stderr
