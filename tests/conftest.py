import os

import pytest
import torch

from fastmim.data_config import ImageSpec
from fastmim.methods.maskalign import MaskAlignConfig

TINY_IMAGE = ImageSpec(64)  # the tiny configurations' images: 64 px, ImageNet normalization


# The review findings' tests run only against the emulated CUDA kernels, in the child session of
# tests/emulation/test_op_grids.py.
collect_ignore_glob = [] if os.environ.get("FASTMIM_TEST_KERNELS") == "emulated" else ["emulation/emulated/*"]


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core), each worker and the processes it starts get
    their share of the cores: torch's default of one thread per core in every worker would oversubscribe the
    machine, and OpenMP threads spinning at barriers would slow every worker down."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# The test files that take minutes on a 2-core CPU, longest first. They run before the others, so that under
# pytest-xdist (with --dist loadfile --no-loadscope-reorder, as `make test` runs it) no worker is left with one
# of them at the end while the others have finished.
LONGEST_FIRST = ("emulation/test_op_grids.py", "eval/test_real_data.py", "finetune/test_runs.py",
                 "train/test_methods.py", "ops/test_cmake_build.py", "train/test_demo.py")


def start_rank(item) -> int:
    path = item.path.as_posix()
    return next((rank for rank, name in enumerate(LONGEST_FIRST) if path.endswith("tests/" + name)),
                len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    items.sort(key=start_rank)  # stable: the order within a file and among the other files stays
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def tiny_config(**overrides) -> MaskAlignConfig:
    """A MaskAlign small enough for many CPU tests: 64 px images, 16 patches, depth-4 student and teacher."""
    params = dict(
        student="tiny", student_kwargs=dict(embed_dim=64, depth=4, num_heads=2), drop_path=0.0,
        teacher="vit_tiny_patch16_224", teacher_weights="random", teacher_kwargs=dict(depth=4),
        level_weights="top2",
    )
    params.update(overrides)
    return MaskAlignConfig(**params)


@pytest.fixture
def tiny_cfg():
    return tiny_config()
