"""fastmim.finetune.param_groups against a direct transcription of MAE's util/lr_decay.py (param_groups_lrd and
get_layer_id_for_vit, DESIGN §1c), for ViT-B/16 and ViT-L/16 with avg and token pooling: every parameter's group,
lr scale and weight decay, and the lr every parameter gets at three iterations (warmup, peak, cosine) through the
trainer's schedule."""
from __future__ import annotations

import math

import pytest
import timm
import torch

from fastmim.finetune import param_groups
from fastmim.train.optim import set_lr
from fastmim.train.schedule import learning_rate


def mae_layer_id(name: str, num_layers: int) -> int:
    """get_layer_id_for_vit: cls_token, pos_embed, patch_embed → 0; blocks.i → i + 1; the rest → num_layers."""
    if name in ["cls_token", "pos_embed"]:
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    else:
        return num_layers


def mae_param_groups(model, weight_decay, no_weight_decay_list, layer_decay):
    """param_groups_lrd, transcribed: groups keyed layer_<id>_<decay|no_decay> in first-seen order."""
    groups = {}
    num_layers = len(model.blocks) + 1
    layer_scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay, this_decay = "no_decay", 0.0
        else:
            g_decay, this_decay = "decay", weight_decay
        layer_id = mae_layer_id(n, num_layers)
        name = f"layer_{layer_id}_{g_decay}"
        if name not in groups:
            groups[name] = {"lr_scale": layer_scales[layer_id], "weight_decay": this_decay, "params": []}
        groups[name]["params"].append(p)
    return list(groups.values())


def model(size: str, pool: str):
    with torch.device("meta"):  # the shapes and names only
        return timm.create_model(f"vit_{size}_patch16_224", num_classes=1000, global_pool=pool)


def by_parameter(groups) -> dict[int, tuple[float, float, int]]:
    """id(parameter) → (lr_scale, weight_decay, group position)."""
    return {id(p): (g["lr_scale"], g["weight_decay"], i) for i, g in enumerate(groups) for p in g["params"]}


@pytest.mark.parametrize("size, decay", [("base", 0.65), ("large", 0.75)])
@pytest.mark.parametrize("pool", ["avg", "token"])
def test_every_parameter_in_maes_group_with_maes_scale_and_decay(size, decay, pool):
    vit = model(size, pool)
    ours = param_groups(vit, 0.05, decay)
    theirs = mae_param_groups(vit, 0.05, vit.no_weight_decay(), decay)
    assert len(ours) == len(theirs) == 2 * (len(vit.blocks) + 2)
    assert by_parameter(ours) == by_parameter(theirs)
    named = dict(vit.named_parameters())
    scales = {name: by_parameter(ours)[id(p)] for name, p in named.items()}
    depth = len(vit.blocks)
    assert scales["cls_token"] == (decay ** (depth + 1), 0.0, scales["cls_token"][2])
    assert scales["blocks.0.attn.qkv.weight"][:2] == (decay ** depth, 0.05)
    assert scales["head.weight"][:2] == (1.0, 0.05) and scales["head.bias"][:2] == (1.0, 0.0)
    norm = "fc_norm.weight" if pool == "avg" else "norm.weight"
    assert scales[norm][:2] == (1.0, 0.0)


def test_every_parameter_gets_its_scaled_lr_at_warmup_peak_and_cosine():
    vit = model("base", "avg")
    groups = param_groups(vit, 0.05, 0.65)
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1)], **{k: v for k, v in g.items() if k != "params"}}
                                 for g in groups], lr=1.0)
    peak, warmup, total = 4e-3, 10, 100
    for step, expected in ((5, peak * 5 / 10), (10, peak),
                           (55, 1e-6 + (peak - 1e-6) * 0.5 * (1 + math.cos(math.pi * 45 / 90)))):
        set_lr(optimizer, learning_rate(step, peak, 1e-6, warmup, total))
        theirs = mae_param_groups(vit, 0.05, vit.no_weight_decay(), 0.65)
        for ours, mae in zip(optimizer.param_groups, theirs):
            assert ours["lr"] == pytest.approx(expected * mae["lr_scale"], rel=1e-12)
