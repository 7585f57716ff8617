"""Loading teacher weights from a local file (timm, OpenAI CLIP or open_clip key layouts)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from timm.models.vision_transformer import checkpoint_filter_fn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle that is not a plain state dict, or not a checkpoint at all
        raise ValueError(f"teacher weights file {str(path)!r} is not a readable .pth/.pt state dict: {error}") from error
    if hasattr(state, "state_dict"):  # a TorchScript archive such as OpenAI's released ViT-B-16.pt
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"teacher weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def describe_keys(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_teacher_weights(model: nn.Module, path: str | Path) -> None:
    """Convert with timm's own filters (OpenAI `visual.*`, open_clip `visual.trunk.*`, DINOv2, timm) and load
    strictly; the classifier/projection head is not part of a teacher and is ignored."""
    raw = read_state_dict(path)
    converted = checkpoint_filter_fn(raw, model)
    converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    expected = {k for k in model.state_dict() if not k.startswith("head.")}
    missing, unexpected = expected - converted.keys(), converted.keys() - expected
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {describe_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {describe_keys(unexpected)}")
        raise ValueError(f"teacher weights file {str(path)!r} does not match the teacher architecture; "
                         + "; ".join(parts))
    mismatched = [k for k, v in converted.items() if v.shape != model.state_dict()[k].shape]
    if mismatched:
        k = mismatched[0]
        raise ValueError(f"teacher weights file {str(path)!r}: {k} has shape {list(converted[k].shape)}, the "
                         f"teacher expects {list(model.state_dict()[k].shape)} ({len(mismatched)} keys differ)")
    model.load_state_dict(converted, strict=False)
