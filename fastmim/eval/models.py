"""The model an evaluation runs on, from what the user names: a fastmim checkpoint (its student, rebuilt from
the run's configuration), an exported `.safetensors` (rebuilt as the timm ViT its metadata names, or `arch`),
or a timm model name with weights from a file (timm, OpenAI CLIP or open_clip layout) or timm's hub. Returns
the model, its image size and the normalization its inputs need."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from fastmim.constants import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class EvalModel:
    model: nn.Module
    img_size: int
    mean: tuple
    std: tuple
    description: str
    pooling: str = "cls"                                  # the feature it was trained for
    pooling_reason: str = "what a timm model's head reads"


def from_checkpoint(path: Path) -> EvalModel:
    """The run's student as the timm ViT it is (without a classifier head), with the run's image settings."""
    import timm

    from fastmim.checkpoint import load_checkpoint, read_config, student_timm, student_weights

    checkpoint = load_checkpoint(path)
    cfg = read_config(checkpoint, path)
    name, kwargs = student_timm(checkpoint)
    model = timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": 0})
    state = {k: v for k, v in student_weights(checkpoint, pretraining_only=False).items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=True)
    image, method = cfg.data.image, checkpoint.get("method_name", "fastmim")
    return EvalModel(model, image.size, image.mean, image.std, f"{method} student at step {checkpoint.get('step')}",
                     cfg.method.feature_pooling, f"what {method} trains")


def from_export(path: Path, arch: str | None) -> EvalModel:
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    name = arch or meta.get("timm_model")
    if name is None:
        raise ValueError(f"{str(path)!r} does not say which timm model it is (exported before fastmim recorded "
                         "it): pass --arch NAME, e.g. --arch vit_base_patch16_224")
    kwargs = json.loads(meta.get("timm_kwargs", "{}")) if arch is None else {}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=True)
    mean = tuple(json.loads(meta["mean"])) if "mean" in meta else IMAGENET_MEAN
    std = tuple(json.loads(meta["std"])) if "std" in meta else IMAGENET_STD
    pooling, method = meta.get("pooling", "cls"), meta.get("method", "its method")
    return EvalModel(model, model.patch_embed.img_size[0], mean, std, f"{name} from {path.name}", pooling,
                     f"what {method} trains" if "pooling" in meta else "the export does not record it")


def from_timm(name: str, weights: str | None, img_size: int | None) -> EvalModel:
    import timm

    from fastmim.models.teacher import resolve_teacher_name
    from fastmim.models.teacher_hub import create_from_hub
    from fastmim.models.teacher_weights import load_teacher_weights

    model_name = resolve_teacher_name(name)
    kwargs = dict(num_classes=0, **({"img_size": img_size} if img_size else {}))
    if weights == "hub":
        model = create_from_hub(model_name, f"MODEL {name!r}", "--weights", **kwargs)
    else:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        load_teacher_weights(model, weights)
    cfg = model.pretrained_cfg
    return EvalModel(model, model.patch_embed.img_size[0], tuple(cfg.get("mean", IMAGENET_MEAN)),
                     tuple(cfg.get("std", IMAGENET_STD)), f"{model_name} ({weights})")


def check_model_spec(spec: str, weights: str | None = None) -> str:
    """What MODEL names — 'checkpoint', 'export' or 'timm' — checked without loading anything: a missing file or
    a timm name without --weights is an error at once."""
    path = Path(spec)
    if path.suffix in (".pt", ".pth") and weights is None:
        if not path.is_file():
            raise FileNotFoundError(f"MODEL {spec!r}: no such checkpoint")
        return "checkpoint"
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"MODEL {spec!r}: no such file")
        return "export"
    if weights is None:
        raise ValueError(f"MODEL {spec!r} is a timm name: give its weights with --weights FILE (or --weights hub "
                         "to download timm's)")
    return "timm"


def load_eval_model(spec: str, weights: str | None = None, arch: str | None = None,
                    img_size: int | None = None) -> EvalModel:
    kind = check_model_spec(spec, weights)
    if kind == "checkpoint":
        return from_checkpoint(Path(spec))
    if kind == "export":
        return from_export(Path(spec), arch)
    return from_timm(spec, weights, img_size)


def to_device(evaluated: EvalModel, device: torch.device) -> EvalModel:
    evaluated.model.to(device).eval().requires_grad_(False)
    return evaluated
