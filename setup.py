"""Build script for the compiled operators `fastmim._C` (DESIGN §3, §6).

A CUDA extension (CPU and CUDA kernels) when torch was built with CUDA and a real nvcc is found, a CPU
extension otherwise. Environment:
  FASTMIM_CUDA=0          build the CPU kernels only
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;9.0;10.0;12.0+PTX": SASS for A100, H100/H200,
                          B200/GB200 and RTX 50, and PTX for the newest, which later GPUs JIT-compile)
  MAX_JOBS                parallel compile jobs (ninja)
  CUDA_HOME               the CUDA toolkit, when it is not at its standard location
nvcc warnings are errors, and so is a register spill (-Xptxas -warn-spills with ptxas -Werror).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0;10.0;12.0+PTX"  # nothing needs sm_90a, whose code runs on no other GPU
# -fopenmp: at::parallel_for is inline OpenMP code; the last two let the loops with min/max vectorize.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
NVCC_FLAGS = [
    "-O3",
    "--Werror", "all-warnings",           # every nvcc warning is an error
    "-Xptxas=-warn-spills",               # ptxas reports register spills ...
    "-Xptxas=-Werror",                    # ... and they fail the build
    "-lineinfo",
]


def is_real_nvcc(path: str) -> bool:
    """The toolkit's nvcc is an ELF binary; a wrapper script on PATH says nothing about where CUDA lives."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def nvcc_reported_home() -> str | None:
    """Ask the nvcc on PATH (possibly a wrapper) where its binary directory is."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "-v", "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.dirname(match.group(1).strip()) if match else None


def find_cuda_home() -> str | None:
    """CUDA_HOME/CUDA_PATH, then the standard locations, then what the nvcc on PATH reports."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    candidates.append(nvcc_reported_home())
    for home in candidates:
        if home and is_real_nvcc(os.path.join(home, "bin", "nvcc")):
            return os.path.realpath(home)
    return None


def wheel_cuda_includes(cuda_home: str) -> list[str]:
    """The toolkit may lack the cuBLAS/cuSPARSE headers ATen's CUDA headers include; torch's nvidia wheels have them."""
    if os.path.exists(os.path.join(cuda_home, "include", "cublas_v2.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += [os.path.dirname(h) for h in glob.glob(os.path.join(base, "*", "include", "cublas_v2.h"))]
    return sorted(set(found))


def sources(*patterns: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern)))


def extension():
    import torch

    want_cuda = os.environ.get("FASTMIM_CUDA", "1") != "0"
    cuda_home = find_cuda_home() if want_cuda and torch.version.cuda else None
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read when torch.utils.cpp_extension is imported
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    from torch.utils import cpp_extension

    common = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    cpu_sources = sources("csrc/fastmim/*.cpp", "csrc/cpu/*.cpp")
    if not cuda_home:
        if want_cuda and torch.version.cuda:
            print("fastmim: no real nvcc found (set CUDA_HOME); building the CPU kernels only")
        return cpp_extension.CppExtension("fastmim._C", cpu_sources, extra_compile_args={"cxx": CXX_FLAGS},
                                          **common), cpp_extension
    cpp_extension.CUDA_HOME = cuda_home  # torch may have guessed another home before we set it
    common["include_dirs"] += wheel_cuda_includes(cuda_home)
    print(f"fastmim: building CPU and CUDA kernels with {cuda_home} for {os.environ['TORCH_CUDA_ARCH_LIST']}")
    return cpp_extension.CUDAExtension(
        "fastmim._C", cpu_sources + sources("csrc/cuda/*.cu"),
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, **common), cpp_extension


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    ext, cpp_extension = extension()
    setup(ext_modules=[ext], cmdclass={"build_ext": cpp_extension.BuildExtension})
