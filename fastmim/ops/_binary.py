"""What GPU code the compiled library holds, read with cuobjdump (from the CUDA toolkit, or the copy that
ships with Triton, which CUDA builds of torch depend on)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def library_path() -> Path | None:
    """The file of fastmim._C that is loaded (or that Python would load), None when it is not built: with several
    builds beside each other (another Python's, an old one) it is the one in use that counts."""
    module = sys.modules.get("fastmim._C")
    if module is not None and getattr(module, "__file__", None):
        return Path(module.__file__)
    try:
        spec = importlib.util.find_spec("fastmim._C")
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def cuobjdump() -> str | None:
    candidates = [shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", "cuobjdump"))
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def architectures(library: Path) -> tuple[list[int], list[int]]:
    """(SASS architectures, PTX architectures) in `library`, e.g. ([80, 90, 100, 120], [120])."""
    tool = cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (CUDA toolkit, or Triton's bundled copy)")

    def listed(flag: str) -> list[int]:
        out = subprocess.run([tool, flag, str(library)], capture_output=True, text=True, timeout=120).stdout
        return sorted({int(m) for m in re.findall(r"\.sm_(\d+)[a-z]?\.(?:cubin|ptx)", out)})

    return listed("--list-elf"), listed("--list-ptx")


def sass(library: Path, arch: int) -> str:
    """The SASS of every kernel in `library` for `arch`."""
    tool = cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (CUDA toolkit, or Triton's bundled copy)")
    return subprocess.run([tool, "-sass", "-arch", f"sm_{arch}", str(library)], capture_output=True, text=True,
                          timeout=300).stdout
