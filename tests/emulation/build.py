"""Build the test-only SIMT-emulation library: the CUDA kernel bodies of csrc/cuda/*.cu compiled by g++ against
csrc/emulation/simt.h, with AddressSanitizer and UndefinedBehaviorSanitizer, into
build/emulation/libfastmim_emulated.so (operators `torch.ops.fastmim_emulated.*` on CPU tensors, plus the
deliberately wrong kernels of tests/emulation/wrong_kernels.cpp that show what the emulation catches).

    python tests/emulation/build.py        # what `make test` runs; incremental (ninja), files in parallel

Loading it needs the ASan runtime first in the process: see `sanitizer_environment()`.
"""
from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "emulation"
LIBRARY = OUT / "libfastmim_emulated.so"
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + [ROOT / "csrc" / "emulation" / "ops.cpp",
                                                           ROOT / "tests" / "emulation" / "wrong_kernels.cpp"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize=vptr",  # torch is not built with RTTI checks
            "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def runtime_library(name: str) -> str | None:
    """Path of a sanitizer runtime (libasan.so, libubsan.so) of the compiler, or None."""
    try:
        out = subprocess.run([compiler(), f"-print-file-name={name}"], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if os.path.isabs(out) and os.path.exists(out) else None


def available() -> str | None:
    """None when the library can be built here, else why not."""
    if shutil.which(compiler()) is None:
        return f"no C++ compiler {compiler()!r}"
    for name in ("libasan.so", "libubsan.so", "libstdc++.so"):
        if runtime_library(name) is None:
            return f"{compiler()} has no {name}"
    if shutil.which("ninja") is None and not (Path(sys.executable).parent / "ninja").exists():
        return "no ninja (pip install ninja)"
    return None


def sanitizer_environment() -> dict:
    """Environment for a process that loads the library: the ASan runtime preloaded (it must come first; and
    libstdc++, which the interpreter does not link, so that ASan finds the real __cxa_throw), leaks not
    reported (the interpreter's own), any sanitizer report fatal."""
    return {
        "LD_PRELOAD": f"{runtime_library('libasan.so')} {runtime_library('libstdc++.so')}",
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
        "FASTMIM_EMULATED_LIBRARY": str(LIBRARY),
    }


def flags() -> tuple[list[str], list[str]]:
    import torch
    from torch.utils import cpp_extension

    includes = [f"-isystem{path}" for path in cpp_extension.include_paths()]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cflags = ["-std=c++20", "-O1", "-g", "-fPIC", "-pthread", *SANITIZE, "-fvisibility=hidden",
              "-fvisibility-inlines-hidden", "-Wall", "-Werror", "-Wno-unknown-pragmas",
              "-DFASTMIM_SIMT_EMULATION", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{ROOT / 'csrc'}", *includes]
    torch_lib = Path(torch.__file__).parent / "lib"
    ldflags = ["-shared", "-pthread", *SANITIZE, f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}", "-lc10",
               "-ltorch_cpu", "-ltorch"]
    return cflags, ldflags


def ninja_file(cflags: list[str], ldflags: list[str]) -> str:
    q = lambda items: " ".join(shlex.quote(str(i)) for i in items)  # noqa: E731
    lines = [
        f"cxx = {compiler()}", f"cflags = {q(cflags)}", f"ldflags = {q(ldflags)}",
        "rule compile",
        "  command = $cxx -MMD -MF $out.d $cflags -x c++ -c $in -o $out",
        "  depfile = $out.d", "  deps = gcc", "  description = emulated $in",
        "rule link", "  command = $cxx $in -o $out $ldflags", "  description = link $out",
    ]
    objects = []
    for source in SOURCES:
        obj = OUT / f"{source.parent.name}_{source.stem}.o"
        objects.append(obj)
        lines.append(f"build {q([obj])}: compile {q([source])}")
    lines.append(f"build {q([LIBRARY])}: link {q(objects)}")
    return "\n".join(lines) + "\n"


def build(verbose: bool = False) -> Path:
    """Build (or bring up to date) the library; returns its path. Raises RuntimeError with the compiler's output."""
    why = available()
    if why:
        raise RuntimeError(f"cannot build the SIMT-emulation library: {why}")
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "build.lock", "w") as lock:  # test workers running in parallel build it one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        (OUT / "build.ninja").write_text(ninja_file(*flags()))
        ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))
        result = subprocess.run([ninja, "-C", str(OUT), "-j", jobs], capture_output=not verbose, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {LIBRARY} failed:\n{result.stdout}\n{result.stderr}")
    return LIBRARY


if __name__ == "__main__":
    why = available()
    if why:  # the emulation tests then skip, saying the same
        print(f"not building the SIMT-emulation library: {why}")
        sys.exit(0)
    print(f"built {build(verbose=True)}")
