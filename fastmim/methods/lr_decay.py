"""Layer-wise learning-rate decay exactly as MAE's util/lr_decay.py (param_groups_lrd, after BEiT): with
L = depth + 1, layer 0 holds cls_token, pos_embed and patch_embed.*, layer i + 1 holds blocks.i.*, layer L
everything else (fc_norm, norm, head); a parameter's lr is the schedule's lr × layer_decay^(L − layer). No
weight decay on 1-D tensors and on the model's no_weight_decay() names (timm's ViT: pos_embed, cls_token,
dist_token). timm's own param_groups_layer_decay groups the layers differently, so it is not used."""
from __future__ import annotations

import torch.nn as nn


def layer_id(name: str, num_layers: int) -> int:
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """The optimizer's groups, each with `params`, `weight_decay` and `lr_scale` (which the schedule multiplies
    the lr by every iteration), in the order MAE creates them."""
    num_layers = len(model.blocks) + 1
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim == 1 or name in skip)
        layer = layer_id(name, num_layers)
        group = groups.setdefault(f"layer_{layer}_{'decay' if decay else 'no_decay'}", {
            "lr_scale": layer_decay ** (num_layers - layer), "weight_decay": weight_decay if decay else 0.0,
            "params": []})
        group["params"].append(param)
    return list(groups.values())
