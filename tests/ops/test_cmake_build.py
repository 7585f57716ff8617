"""CMakeLists.txt builds the operators into libfastmim_ops (CPU kernels; the CUDA ones are compiled by
setup.py on every run), the C++ example that links it runs and checks every op against libtorch, and
`torch.ops.load_library` loads the library into Python, where fastmim.ops uses it (with its autograd)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """The venv's tool (pip's cmake/ninja), else the one on PATH."""
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} not found: pip install 'cmake>=3.28' ninja (the test extra has them)"
    return found


@pytest.fixture(scope="module")
def cmake_build(tmp_path_factory) -> Path:
    cmake = tool("cmake")
    version = re.search(r"(\d+)\.(\d+)", subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout)
    assert version and tuple(map(int, version.groups())) >= (3, 28), f"CMake >= 3.28 needed, found {version}"
    build = tmp_path_factory.mktemp("cmake")
    configure = [cmake, "-S", str(ROOT), "-B", str(build), "-DFASTMIM_CUDA=OFF",
                 f"-DPython3_EXECUTABLE={sys.executable}"]
    ninja = (BIN / "ninja") if (BIN / "ninja").exists() else shutil.which("ninja")
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    subprocess.run(configure, check=True, capture_output=True, text=True, timeout=600)
    jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))
    result = subprocess.run([cmake, "--build", str(build), "-j", jobs], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return build


@pytest.mark.slow
def test_cpp_example_links_the_library_and_passes(cmake_build):
    result = subprocess.run([str(cmake_build / "fastmim_example")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "all ok" in result.stdout, result.stdout + result.stderr
    assert result.stdout.count(" ok") >= 12


@pytest.mark.slow
def test_load_library_serves_fastmim_ops(cmake_build):
    library = next(cmake_build.glob("libfastmim_ops*.so"))
    code = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(library)!r})
        import fastmim._C  # the same namespace twice is refused: the loaded library must be used instead
    """)
    clash = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert clash.returncode != 0  # fastmim.ops must therefore not import fastmim._C when the ops exist
    code = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(library)!r})
        import fastmim.ops as ops
        from fastmim.ops import reference
        ops.set_kernels("fused")
        g = torch.Generator().manual_seed(0)
        pred = torch.randn(2, 3, 4, 16, generator=g, dtype=torch.float64, requires_grad=True)
        target = torch.randn(2, 3, 9, 16, generator=g, dtype=torch.float64)
        ids = torch.rand(3, 8, generator=g).argsort(1)[:, :3]
        rows = ops.cls_and_kept_rows(ids)
        assert torch.autograd.gradcheck(lambda p: ops.align_loss(p, target, rows), (pred,))
        torch.testing.assert_close(ops.align_loss(pred, target, rows), reference.align_loss(pred, target, rows))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
