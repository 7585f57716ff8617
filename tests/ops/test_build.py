"""The build (setup.py): the real CUDA toolkit is found behind a wrapper nvcc, the default architectures are those
the nvcc and torch found can build (CMake takes the same), the CUDA kernels were compiled for them, and a kernel
that spills registers fails a compile with the build's flags."""
from __future__ import annotations

import importlib.util
import os
import re
import stat
import subprocess
import sys
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


def fake_nvcc(folder: Path, codes: list[str]) -> str:
    """An nvcc whose `--list-gpu-code` lists `codes` (and that fails at anything else)."""
    nvcc = folder / "nvcc"
    nvcc.write_text('#!/bin/sh\n[ "$1" = --list-gpu-code ] || exit 1\nprintf "%s\\n" ' + " ".join(codes) + "\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return str(nvcc)


CUDA_12_6 = ["sm_50", "sm_52", "sm_53", "sm_60", "sm_61", "sm_62", "sm_70", "sm_72", "sm_75", "sm_80", "sm_86",
             "sm_87", "sm_89", "sm_90"]


def test_the_default_leaves_out_what_an_older_nvcc_cannot_compile(tmp_path, monkeypatch, capsys):
    """CUDA 12.6 has no sm_100 or sm_120: "8.0;9.0;10.0;12.0+PTX" failed its build; now 9.0 carries the PTX."""
    setup = load_setup()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    nvcc = fake_nvcc(tmp_path, CUDA_12_6)
    assert setup.nvcc_archs(nvcc) == {"5.0", "5.2", "5.3", "6.0", "6.1", "6.2", "7.0", "7.2", "7.5", "8.0", "8.6",
                                      "8.7", "8.9", "9.0"}
    assert setup.cuda_arch_list(nvcc) == "8.0;9.0+PTX"
    said = capsys.readouterr().err
    assert "leaving out 10.0: the nvcc found cannot compile it" in said and "leaving out 12.0" in said
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ  # the probe of torch's names leaves no trace


def test_the_default_leaves_out_what_torch_does_not_know():
    """torch 2.4 and 2.5 (pyproject.toml allows them) know neither 10.0 nor 12.0: "Unknown CUDA arch (10.0)"."""
    setup = load_setup()
    archs, notes = setup.choose_archs({"8.0", "9.0", "10.0", "12.0"}, lambda arch: arch in {"8.0", "8.6", "9.0"})
    assert archs == "8.0;9.0+PTX"
    assert len(notes) == 2 and all("torch's cpp_extension does not know it" in note for note in notes)


def test_the_default_with_a_current_toolkit_and_torch_is_every_family():
    setup = load_setup()
    everything = {"7.5", "8.0", "8.6", "9.0", "10.0", "10.3", "11.0", "12.0", "12.1"}
    assert setup.choose_archs(everything, lambda arch: True) == (setup.DEFAULT_ARCHS, [])
    assert setup.choose_archs(None, lambda arch: True) == (setup.DEFAULT_ARCHS, [])  # an nvcc that cannot list


def test_torch_accepts_what_cpp_extension_knows():
    setup = load_setup()
    before = os.environ.get("TORCH_CUDA_ARCH_LIST")
    assert setup.torch_accepts("8.0") and setup.torch_accepts("9.0")
    assert not setup.torch_accepts("13.7")
    assert os.environ.get("TORCH_CUDA_ARCH_LIST") == before


def test_nothing_buildable_is_an_error_that_says_what_to_set():
    setup = load_setup()
    with pytest.raises(RuntimeError, match=r"none of 8.0;9.0;10.0;12.0\+PTX can be built .*TORCH_CUDA_ARCH_LIST.*"
                                           r"FASTMIM_CUDA=0"):
        setup.choose_archs({"7.0", "7.5"}, lambda arch: True)


def test_a_user_arch_list_is_used_as_given(tmp_path, monkeypatch):
    setup = load_setup()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;12.0+PTX")
    assert setup.cuda_arch_list(fake_nvcc(tmp_path, CUDA_12_6)) == "8.6;12.0+PTX"


def test_cmake_takes_the_default_from_setup_py(tmp_path):
    """CMakeLists.txt asks `setup.py --cuda-arch-list NVCC` instead of keeping a list of its own."""
    environment = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    result = subprocess.run([sys.executable, str(ROOT / "setup.py"), "--cuda-arch-list",
                             fake_nvcc(tmp_path, CUDA_12_6)], capture_output=True, text=True, env=environment,
                            timeout=120)
    assert result.returncode == 0 and result.stdout == "8.0;9.0+PTX\n", result.stdout + result.stderr
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert '"${CMAKE_CURRENT_SOURCE_DIR}/setup.py" --cuda-arch-list' in cmake
    assert "10.0;12.0" not in cmake


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
