"""Build script for the compiled operators `fastmim._C` (DESIGN §3, §6).

A CUDA extension (CPU and CUDA kernels) when torch was built with CUDA and a real nvcc is found, a CPU
extension otherwise. Environment:
  FASTMIM_CUDA=0          build the CPU kernels only
  TORCH_CUDA_ARCH_LIST    CUDA architectures, used as given (default "8.0;9.0;10.0;12.0+PTX": SASS for A100,
                          H100/H200, B200/GB200 and RTX 50, and PTX for the newest, which later GPUs JIT-compile;
                          less, with a printed line, what the nvcc found or torch cannot build: sm_100 and
                          sm_120 need CUDA >= 12.8 and a torch that knows them)
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
import sys
from collections.abc import Callable

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0;10.0;12.0+PTX"  # nothing needs sm_90a, whose code runs on no other GPU
FIRST_CUDA = {"8.0": "11.0", "9.0": "11.8", "10.0": "12.8", "12.0": "12.8"}  # the first nvcc that compiles each
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


def nvcc_archs(nvcc: str) -> set[str] | None:
    """The real architectures `nvcc` compiles for ("9.0" for sm_90), or None when it cannot say."""
    try:
        out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.findall(r"^sm_(\d+)(\d)$", out.stdout, re.MULTILINE)
    return {f"{major}.{minor}" for major, minor in found} if out.returncode == 0 and found else None


def torch_accepts(arch: str) -> bool:
    """Whether torch.utils.cpp_extension takes `arch` in TORCH_CUDA_ARCH_LIST: a torch older than the
    architecture raises "Unknown CUDA arch" when the build starts."""
    from torch.utils import cpp_extension

    arch_flags = getattr(cpp_extension, "_get_cuda_arch_flags", None)
    if arch_flags is None:
        return True  # a torch without the private helper decides at compile time
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    try:
        arch_flags()
        return True
    except ValueError:
        return False
    finally:
        if saved is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved


def choose_archs(compilable: set[str] | None, accepted: Callable[[str], bool]) -> tuple[str, list[str]]:
    """DEFAULT_ARCHS less the architectures nvcc cannot compile (`compilable`; None: it could not say, so all are
    tried) or torch does not accept, with PTX for the newest kept; and a line for each one left out."""
    kept, notes = [], []
    for arch in DEFAULT_ARCHS.replace("+PTX", "").split(";"):
        if compilable is not None and arch not in compilable:
            notes.append(f"leaving out {arch}: the nvcc found cannot compile it (it needs CUDA >= {FIRST_CUDA[arch]})")
        elif not accepted(arch):
            notes.append(f"leaving out {arch}: this torch's cpp_extension does not know it (upgrade torch for it)")
        else:
            kept.append(arch)
    if not kept:
        raise RuntimeError(f"fastmim: none of {DEFAULT_ARCHS} can be built ({'; '.join(notes)}); set "
                           "TORCH_CUDA_ARCH_LIST, or FASTMIM_CUDA=0 for the CPU kernels only")
    return ";".join(kept) + "+PTX", notes


def cuda_arch_list(nvcc: str) -> str:
    """TORCH_CUDA_ARCH_LIST as the user set it, else the default that `nvcc` and this torch can build."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    archs, notes = choose_archs(nvcc_archs(nvcc), torch_accepts)
    for note in notes:
        print(f"fastmim: {note}", file=sys.stderr)
    return archs


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
    from torch.utils import cpp_extension

    common = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    cpu_sources = sources("csrc/fastmim/*.cpp", "csrc/cpu/*.cpp")
    if not cuda_home:
        if want_cuda and torch.version.cuda:
            print("fastmim: no real nvcc found (set CUDA_HOME); building the CPU kernels only")
        return cpp_extension.CppExtension("fastmim._C", cpu_sources, extra_compile_args={"cxx": CXX_FLAGS},
                                          **common), cpp_extension
    cpp_extension.CUDA_HOME = cuda_home  # torch may have guessed another home before we set it
    os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list(os.path.join(cuda_home, "bin", "nvcc"))
    common["include_dirs"] += wheel_cuda_includes(cuda_home)
    print(f"fastmim: building CPU and CUDA kernels with {cuda_home} for {os.environ['TORCH_CUDA_ARCH_LIST']}")
    return cpp_extension.CUDAExtension(
        "fastmim._C", cpu_sources + sources("csrc/cuda/*.cu"),
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, **common), cpp_extension


if __name__ == "__main__" and sys.argv[1:2] == ["--cuda-arch-list"]:
    print(cuda_arch_list(sys.argv[2]))  # CMakeLists.txt asks: `setup.py --cuda-arch-list NVCC`
elif __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    ext, cpp_extension = extension()
    setup(ext_modules=[ext], cmdclass={"build_ext": cpp_extension.BuildExtension})
