import os

import pytest
import torch

from fastmim.data_config import ImageSpec
from fastmim.methods.maskalign import MaskAlignConfig

TINY_IMAGE = ImageSpec(64)  # the tiny configurations' images: 64 px, ImageNet normalization


# The review findings' tests run only against the emulated CUDA kernels, in the child session of
# tests/emulation/test_op_grids.py.
collect_ignore_glob = [] if os.environ.get("FASTMIM_TEST_KERNELS") == "emulated" else ["emulation/emulated/*"]


def pytest_collection_modifyitems(config, items):
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
