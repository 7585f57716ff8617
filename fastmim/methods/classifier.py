"""The fine-tuning model: a timm VisionTransformer classifier (DESIGN of MAE's main_finetune.py) built from what
`method.init` names — a fastmim checkpoint (its student), an export, a timm name with weights (a file or hub),
or nothing (random weights) — with `global_pool` avg (mean of the patch tokens, then fc_norm) or token, drop path,
the position embedding resampled to the image size when it changes (timm's checkpoint_filter_fn), and the head
initialized as MAE does (trunc_normal std 2e-5, zero bias)."""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn


def pretrained(init: str, weights: str | None) -> tuple[str, dict, dict | None, str]:
    """(timm model name, its keyword arguments, the weights or None for the hub, what they are) of `init`."""
    path = Path(init)
    if path.suffix in (".pt", ".pth") and weights is None:
        from fastmim.checkpoint import load_checkpoint, student_timm, student_weights

        if not path.is_file():
            raise FileNotFoundError(f"--init {init!r}: no such checkpoint")
        checkpoint = load_checkpoint(path)
        name, kwargs = student_timm(checkpoint)
        return name, kwargs, student_weights(checkpoint, pretraining_only=False), f"{init} (step {checkpoint['step']})"
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"--init {init!r}: no such file")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "timm_model" not in meta:
            raise ValueError(f"--init {init!r} does not say which timm model it is (not a fastmim export)")
        return meta["timm_model"], json.loads(meta.get("timm_kwargs", "{}")), load_file(str(path)), init
    from fastmim.models.teacher import resolve_teacher_name

    name = resolve_teacher_name(init)
    with torch.device("meta"):  # is it a ViT? (allocates nothing)
        create(name, {}, hub=False, what=init)
    if weights is None:
        raise ValueError(f"--init {init!r} is a timm name: give its weights with --weights FILE (or hub)")
    if weights == "hub":
        return name, {}, None, f"{name} (timm's pretrained weights)"
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights!r}: no such file")
    from fastmim.models.teacher_weights import read_state_dict

    return name, {}, read_state_dict(weights), f"{name} ({weights})"


def build_classifier(cfg, img_size: int, num_classes: int) -> tuple[VisionTransformer, str, tuple[str, dict]]:
    """(the classifier, where its weights came from, the timm (name, kwargs) that rebuild it)."""
    if cfg.init is None:
        name, kwargs, state, source = cfg.model, dict(cfg.model_kwargs), {}, "random weights"
    else:
        name, kwargs, state, source = pretrained(cfg.init, cfg.weights)
    kwargs.update(num_classes=num_classes, global_pool=cfg.global_pool, drop_path_rate=cfg.drop_path,
                  img_size=img_size)
    model = create(name, kwargs, hub=state is None, what=cfg.init or name)
    patch = model.patch_embed.patch_size[0]
    if img_size % patch:
        raise ValueError(f"data.img_size {img_size} is not a multiple of the model's patch size {patch}: timm cannot "
                         "resample its position embedding to it")
    if state:
        load_student(model, state, cfg.init)
    nn.init.trunc_normal_(model.head.weight, std=2e-5)  # MAE initializes the head after loading
    nn.init.zeros_(model.head.bias)
    rebuild = {k: v for k, v in kwargs.items() if k != "drop_path_rate"}  # training-only
    return model, source, (name, rebuild)


def create(name: str, kwargs: dict, hub: bool, what: str) -> VisionTransformer:
    try:
        if hub:
            from fastmim.models.teacher_hub import create_from_hub

            model = create_from_hub(name, f"--init {what!r}", "--weights", **kwargs)
        else:
            model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, RuntimeError) as error:  # a model that takes no ViT arguments, or a failed build
        raise ValueError(f"--init {what!r}: timm cannot build {name!r} as a classifier ({error})") from error
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"--init {what!r}: {name!r} is not a timm VisionTransformer")
    return model


def load_student(model: VisionTransformer, state: dict, init: str) -> None:
    """The pretrained weights, converted by timm (position embedding resampled, CLIP and DINOv2 layouts) and
    loaded: only the head and fc_norm may be new, only the final norm (unused with avg pooling) left over."""
    state = checkpoint_filter_fn({k: v for k, v in state.items() if not k.startswith("head.")}, model)
    result = model.load_state_dict(state, strict=False)
    new = {k for k in result.missing_keys if not k.startswith(("head.", "fc_norm."))}
    left = {k for k in result.unexpected_keys if not (k.startswith("norm.") and isinstance(model.norm, nn.Identity))}
    if new or left:
        raise ValueError(f"--init {init!r} does not fit the classifier: missing {sorted(new)[:4]}, unexpected "
                         f"{sorted(left)[:4]} (a ViT student of the same size is needed)")


def top_k_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many rows have their label among their k largest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).sum()
