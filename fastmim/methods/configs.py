"""Each method's configuration: the `method` section of a run's config, one dataclass per method.

Dataclasses only, so that reading a configuration (the command line, `--print-config`, a checkpoint's config)
imports neither torch models nor timm. `METHOD_CONFIGS` names them; the methods themselves are in
fastmim.methods.registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fastmim.constants import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class StudentConfig:
    """The student ViT every method trains (MAE-style: fixed sin-cos position embedding, pre-norm blocks)."""
    student: str = "base"                  # tiny/small/base/large/huge
    student_kwargs: dict = field(default_factory=dict)  # overrides (embed_dim, depth, num_heads, …)
    img_size: int = 224
    patch_size: int = 16
    drop_path: float = 0.1
    attn_backend: str = "auto"             # auto/sdpa/flash/xformers/math


@dataclass
class MaskAlignConfig(StudentConfig):
    """MaskAlign (CVPR 2023): visible-token features aligned to a frozen teacher's, through Dynamic Alignment."""
    teacher: str = "clip_b16"              # clip_b16/clip_l14/dino_b16 or any timm ViT name
    teacher_weights: str = "hub"           # hub (timm download), random, or a local file
    teacher_kwargs: dict = field(default_factory=dict)
    mask_ratio: float = 0.7
    mask_mode: str = "attention"           # attention/random
    fusion: str = "linear"                 # linear/sum/simple
    head: str = "linear"                   # linear/norm_linear/mlp/mlp2
    target_norm: str = "layernorm"         # layernorm/l2/batchnorm/none
    loss: str = "smooth_l1"                # smooth_l1/l2/l1/cosine
    level_weights: str = "top5"            # mean/out/linear_decay/topK/midK
    data_mean: tuple = IMAGENET_MEAN       # how the data is normalized (folded into the teacher's input)
    data_std: tuple = IMAGENET_STD


@dataclass
class MAEConfig(StudentConfig):
    """MAE (facebookresearch/mae): reconstruct the normalized pixels of the masked patches through a decoder."""
    drop_path: float = 0.0
    mask_ratio: float = 0.75
    norm_pix: bool = True                  # targets: each patch normalized by its mean and (unbiased) variance
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16


@dataclass
class MRMAEConfig(MAEConfig):
    """MR-MAE (interpretation): MAE plus a mimic loss of CLIP/DINO features at the visible tokens."""
    teachers: tuple = ("clip_b16",)        # one or two teachers (e.g. clip_b16, dino_b16)
    teacher_weights: tuple = ("hub",)      # per teacher: hub, random or a local file
    teacher_kwargs: dict = field(default_factory=dict)  # architecture overrides for every teacher (tests, demos)
    mimic_weights: tuple = (1.0,)          # per teacher: its mimic loss's weight in the total
    mimic_loss: str = "l2"                 # smooth_l1/l2/l1/cosine against the LayerNorm-normalized targets
    mask_mode: str = "random"              # random, or attention ("focused mimicking": the first teacher's CLS)
    data_mean: tuple = IMAGENET_MEAN
    data_std: tuple = IMAGENET_STD


@dataclass
class MaskDistillConfig(StudentConfig):
    """MaskDistill (interpretation): a dense student with mask tokens predicts a teacher's normalized features at
    the masked positions of BEiT v2's block masks."""
    init_values: float = 0.1               # layer scale (timm's ls1/ls2.gamma); 0 or None: none
    mask_ratio: float = 0.4                # block masks: M = int(N · mask_ratio) masked patches (78 of 196)
    teacher: str = "clip_b16"              # clip_b16, or clip_l14 (at 196 px), or any timm ViT
    teacher_weights: str = "hub"
    teacher_kwargs: dict = field(default_factory=dict)
    beta: float = 1.0                      # smooth-L1's beta (2.0 is the other published choice)
    loss: str = "smooth_l1"                # smooth_l1/l2/l1/cosine, against the LayerNorm-normalized targets
    data_mean: tuple = IMAGENET_MEAN
    data_std: tuple = IMAGENET_STD


METHOD_CONFIGS = {"maskalign": MaskAlignConfig, "mae": MAEConfig, "mrmae": MRMAEConfig,
                  "maskdistill": MaskDistillConfig}


def method_name(cfg) -> str:
    """The registered name of a method configuration."""
    for name, cls in METHOD_CONFIGS.items():
        if type(cfg) is cls:
            return name
    raise TypeError(f"{type(cfg).__name__} is not a method configuration; known: {', '.join(METHOD_CONFIGS)}")
