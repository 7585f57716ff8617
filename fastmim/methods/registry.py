"""The methods by name: the trainer builds whichever one the configuration's `method` section describes. Each
method class registers itself (fastmim.methods.base.METHODS); importing the built-in ones here fills the
registry."""
from __future__ import annotations

from fastmim.data_config import ImageSpec

from . import finetune, mae, maskalign, maskdistill, mrmae  # noqa: F401  (each registers its method on import)
from .base import METHODS, Method
from .configs import method_name


def build_method(cfg, image: ImageSpec) -> Method:
    """The method whose configuration dataclass `cfg` is (fastmim.methods.configs), for images of `image`."""
    return METHODS[method_name(cfg)](cfg, image)
