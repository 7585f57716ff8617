"""The build (setup.py): the real CUDA toolkit is found behind a wrapper nvcc, the CUDA kernels were compiled
for the default architectures, and a kernel that spills registers fails a compile with the build's flags."""
from __future__ import annotations

import importlib.util
import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest

import fastmim

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
    assert setup.DEFAULT_ARCHS == "8.0;9.0a"


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


def fatbin_cubin_archs(library: Path) -> set[int]:
    """SM versions of the cubins in a library's .nv_fatbin section (fatbin headers: magic 0xBA55ED50, then
    entries of kind 2 = ELF whose header holds the architecture at byte 28). cuobjdump is not always there."""
    data = library.read_bytes()
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = sections[shstrndx][4]
    archs = set()
    for name, _, _, _, offset, size in sections:
        if data[names + name:data.index(b"\0", names + name)] != b".nv_fatbin":
            continue
        pos, end = offset, offset + size
        while pos + 16 <= end:
            magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
            if magic != 0xBA55ED50:
                break
            entry, stop = pos + header_size, pos + header_size + fat_size
            while entry < stop:
                kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, entry)
                if kind == 2:
                    archs.add(struct.unpack_from("<I", data, entry + 28)[0])
                entry += entry_header + entry_size
            pos = stop
    return archs


@needs_toolkit
def test_extension_holds_cuda_kernels_for_both_architectures():
    library = next(Path(fastmim.__file__).parent.glob("_C*.so"))
    assert {80, 90} <= fatbin_cubin_archs(library)


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
