"""Each method's configuration: the `method` section of a run's config, one dataclass per method.

Dataclasses only, so that reading a configuration (the command line, `--print-config`, a checkpoint's config)
imports neither torch models nor timm. A configuration class names its method (`method_name`) and so registers
itself in `METHOD_CONFIGS`; the method class names its configuration class (fastmim.methods.base), so the name
is written once. Fields with a fixed set of values are `Literal` types: `--set` and `--config` refuse anything
else, naming the allowed values.

The image (size, mean, std) is not here: it belongs to the `data` section, and the method receives it when it
is built (fastmim.data_config.ImageSpec).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from fastmim.config_values import Floats, Matches, Strings

Loss = Literal["smooth_l1", "l2", "l1", "cosine"]
TargetNorm = Literal["layernorm", "l2", "batchnorm", "none"]
Fusion = Literal["linear", "sum", "simple"]
Head = Literal["linear", "norm_linear", "mlp", "mlp2"]
StudentSize = Literal["tiny", "small", "base", "large", "huge"]
AttentionBackend = Literal["auto", "sdpa", "flash", "xformers", "math"]
LevelWeights = Annotated[str, Matches(r"mean|out|linear_decay|top[0-9]+|mid[0-9]+",
                                      "mean, out, linear_decay, topK or midK (e.g. top5, mid8)")]

METHOD_CONFIGS: dict[str, type] = {}  # method name → its configuration class, filled as the classes are defined


@dataclass
class MethodConfig:
    """The base of every method's configuration: a subclass that sets `method_name` registers itself.
    `feature_pooling` is the student feature the method trains, which evaluation reads unless told otherwise."""
    method_name: ClassVar[str]
    feature_pooling: ClassVar[str] = "cls"
    task: ClassVar[str] = "pretrain"   # or "finetune": which command runs it

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("method_name")
        if name is None:
            return
        if name in METHOD_CONFIGS and METHOD_CONFIGS[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"two method configurations are named {name!r}: {METHOD_CONFIGS[name].__qualname__} "
                             f"and {cls.__qualname__}")
        METHOD_CONFIGS[name] = cls


@dataclass
class StudentConfig(MethodConfig):
    """The student ViT every method trains (MAE-style: fixed sin-cos position embedding, pre-norm blocks)."""
    student: StudentSize = "base"
    student_kwargs: dict = field(default_factory=dict)  # overrides (embed_dim, depth, num_heads, …)
    patch_size: int = 16
    drop_path: float = 0.1
    attn_backend: AttentionBackend = "auto"


@dataclass
class MaskAlignConfig(StudentConfig):
    """MaskAlign (CVPR 2023): visible-token features aligned to a frozen teacher's, through Dynamic Alignment."""
    method_name: ClassVar[str] = "maskalign"
    teacher: str = "clip_b16"              # clip_b16/clip_l14/dino_b16 or any timm ViT name
    teacher_weights: str = "hub"           # hub (timm download), random, or a local file
    teacher_kwargs: dict = field(default_factory=dict)
    mask_ratio: float = 0.7
    mask_mode: Literal["attention", "random"] = "attention"
    fusion: Fusion = "linear"
    head: Head = "linear"
    target_norm: TargetNorm = "layernorm"
    loss: Loss = "smooth_l1"
    level_weights: LevelWeights = "top5"


@dataclass
class MAEConfig(StudentConfig):
    """MAE (facebookresearch/mae): reconstruct the normalized pixels of the masked patches through a decoder."""
    method_name: ClassVar[str] = "mae"
    drop_path: float = 0.0
    mask_ratio: float = 0.75
    norm_pix: bool = True                  # targets: each patch normalized by its mean and (unbiased) variance
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16


@dataclass
class MRMAEConfig(MAEConfig):
    """MR-MAE (interpretation): MAE plus a mimic loss of CLIP/DINO features at the visible tokens."""
    method_name: ClassVar[str] = "mrmae"
    teachers: Annotated[tuple, Strings()] = ("clip_b16",)  # one or two teachers (e.g. clip_b16, dino_b16)
    teacher_weights: Annotated[tuple, Strings()] = ("hub",)  # per teacher (or one for all): hub, random or a file
    teacher_kwargs: dict = field(default_factory=dict)  # architecture overrides for every teacher (tests, demos)
    mimic_weights: Annotated[tuple, Floats()] = (1.0,)  # per teacher (or one for all): its mimic loss's weight
    mimic_loss: Loss = "l2"                # against the LayerNorm-normalized targets
    # random, or attention ("focused mimicking": from the first teacher's CLS); block masks are MaskDistill's
    mask_mode: Literal["random", "attention"] = "random"


@dataclass
class MaskDistillConfig(StudentConfig):
    """MaskDistill (interpretation): a dense student with mask tokens predicts a teacher's normalized features at
    the masked positions of BEiT v2's block masks."""
    method_name: ClassVar[str] = "maskdistill"
    feature_pooling: ClassVar[str] = "mean"  # its loss reads the patch tokens only
    init_values: float = 0.1               # layer scale (timm's ls1/ls2.gamma); 0 or None: none
    mask_ratio: float = 0.4                # block masks: M = int(N · mask_ratio) masked patches (78 of 196)
    teacher: str = "clip_b16"              # clip_b16, or clip_l14 (at 196 px), or any timm ViT
    teacher_weights: str = "hub"
    teacher_kwargs: dict = field(default_factory=dict)
    beta: float = 1.0                      # smooth-L1's beta (2.0 is the other published choice)
    loss: Loss = "smooth_l1"               # against the LayerNorm-normalized targets


def method_name(cfg) -> str:
    """The registered name of a method configuration (an instance or its class)."""
    cls = cfg if isinstance(cfg, type) else type(cfg)
    name = cls.__dict__.get("method_name")
    if name is None or METHOD_CONFIGS.get(name) is not cls:
        raise TypeError(f"{cls.__name__} is not a method configuration; known: {', '.join(METHOD_CONFIGS)}")
    return name


@dataclass
class FinetuneConfig(MethodConfig):
    """Supervised fine-tuning by MAE's protocol (main_finetune.py): a timm ViT classifier from a pretrained
    student (or from random weights), layer-wise lr decay, Mixup/CutMix with label smoothing."""
    method_name: ClassVar[str] = "finetune"
    task: ClassVar[str] = "finetune"
    init: str | None = None                # the student: a fastmim checkpoint, an export, or a timm name (+ weights)
    weights: str | None = None             # a timm-name init's weights: a local file or hub
    model: str = "vit_base_patch16_224"    # the timm ViT built when init is None (random initialization)
    model_kwargs: dict = field(default_factory=dict)  # its overrides (the demo's small ViT)
    global_pool: Literal["avg", "token"] = "avg"  # avg: mean of the patch tokens + fc_norm (MAE's); token: CLS
    drop_path: float = 0.1
    layer_decay: float = 0.65              # lr × layer_decay^(L − layer) (MAE's param_groups_lrd)
    smoothing: float = 0.1                 # label smoothing
    mixup: float = 0.8                     # Mixup alpha (0: none)
    cutmix: float = 1.0                    # CutMix alpha (0: none)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    attn_backend: Literal["auto", "math"] = "auto"  # math: attention as explicit products (FLOP counting)

    @property
    def feature_pooling(self) -> str:  # what evaluation reads: what the classifier's head reads
        return "mean" if self.global_pool == "avg" else "cls"
