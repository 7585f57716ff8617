"""The methods by name: the trainer builds whichever one the configuration's `method` section describes."""
from __future__ import annotations

from .base import Method
from .configs import method_name
from .mae import MAE
from .maskalign import MaskAlign
from .maskdistill import MaskDistill
from .mrmae import MRMAE

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (MaskAlign, MAE, MRMAE, MaskDistill)}


def build_method(cfg) -> Method:
    """The method whose configuration dataclass `cfg` is (fastmim.methods.configs)."""
    return METHODS[method_name(cfg)](cfg)
