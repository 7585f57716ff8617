"""The frozen teacher: any timm ViT, run on the full image, returning the requested block outputs and the
masking importance from the last block's CLS-query attention row (never the attention maps). It runs in two
calls so that the method can draw its mask in between and hand back the rows it reads, at which alone the
last block is then finished (teacher_last_block.py):

    part = teacher.begin(images, levels, importance=True)   # every block but the last; K and the importance
    mask = draw from part.importance                         # the method's code, not the teacher's
    out = teacher.finish(part, rows)                          # TeacherOutput: levels [L, B, 1+N, D], importance

`teacher(images, levels, rows=rows)` does both when the rows are known before the teacher runs.

Known aliases: clip_b16, clip_l14, dino_b16 (DESIGN §1); any other timm VisionTransformer name works by the
same rule: its input is resized so that its patch grid equals the student's.
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.activations import QuickGELU
from timm.models.vision_transformer import VisionTransformer as TimmViT

from fastmim.constants import IMAGENET_MEAN, IMAGENET_STD

from .teacher_last_block import cls_importance, keys, rows_output
from .teacher_hub import create_from_hub
from .teacher_weights import load_teacher_weights

# OpenAI CLIP was trained with QuickGELU: the timm names without `quickgelu` give wrong features.
TEACHER_ALIASES = {
    "clip_b16": "vit_base_patch16_clip_quickgelu_224.openai",
    "clip_l14": "vit_large_patch14_clip_quickgelu_224.openai",
    "dino_b16": "vit_base_patch16_224.dino",
}


@dataclass
class TeacherOutput:
    levels: torch.Tensor                 # [L, B, 1+N, D]: CLS row then patch rows, register tokens dropped
    importance: torch.Tensor | None      # [B, N]: CLS→patch attention, softmax over all keys, head mean


@dataclass
class TeacherPass:
    """A forward stopped before the last block (`Teacher.begin`), for `Teacher.finish` to complete."""
    levels: list[int]                    # the levels asked for
    outputs: dict[int, torch.Tensor]     # those computed so far, [B, 1+N, D] each
    x: torch.Tensor | None               # the last block's input [B, T, D]; None when it need not run
    y: torch.Tensor | None               # its first norm's output
    k: torch.Tensor | None               # its keys [B, H, T, head_dim]
    importance: torch.Tensor | None      # [B, N] when asked for


def resolve_teacher_name(name: str) -> str:
    model_name = TEACHER_ALIASES.get(name, name)
    if timm.is_model(model_name.split(".")[0]):
        return model_name
    raise ValueError(
        f"unknown teacher {name!r}; known teachers: {', '.join(sorted(TEACHER_ALIASES))} "
        "(or any timm ViT model name, e.g. vit_base_patch14_dinov2.lvd142m)"
    )


def renormalization(model: TimmViT, data_mean, data_std) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), float64 per channel: images normalized with the data's statistics times scale plus
    shift are normalized with the teacher's own (CLIP's, for a CLIP teacher)."""
    teacher_mean = torch.tensor(model.pretrained_cfg.get("mean", IMAGENET_MEAN), dtype=torch.float64)
    teacher_std = torch.tensor(model.pretrained_cfg.get("std", IMAGENET_STD), dtype=torch.float64)
    data_mean = torch.tensor(data_mean, dtype=torch.float64)
    data_std = torch.tensor(data_std, dtype=torch.float64)
    return data_std / teacher_std, (data_mean - teacher_mean) / teacher_std


def fold_input_normalization(model: TimmViT, data_mean, data_std) -> None:
    """Make the patch embedding take images normalized with (data_mean, data_std) instead of the teacher's
    own statistics. The re-normalization is a per-channel affine map x·a + c and the patch embedding is
    linear, so it folds into the weights (×a) and bias (+Σ W·c): no extra pass over the image."""
    scale, shift = renormalization(model, data_mean, data_std)
    old = model.patch_embed.proj
    weight = old.weight.detach().double()
    bias = old.bias.detach().double() if old.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    new = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, bias=True)
    with torch.no_grad():
        new.weight.copy_(weight * scale[None, :, None, None])
        new.bias.copy_(bias + (weight * shift[None, :, None, None]).sum(dim=(1, 2, 3)))
    model.patch_embed.proj = new.to(old.weight.device)


class FoldedQuickGELU(nn.SiLU):
    """What QuickGELU becomes once its 1.702 is folded into the surrounding linears (see fold_quick_gelu)."""
    scale = 1.702


def fold_quick_gelu(model: TimmViT) -> None:
    """QuickGELU(h) = h·σ(1.702h) = SiLU(1.702h) / 1.702, so fc2(QuickGELU(fc1(x))) equals
    (fc2 / 1.702)(SiLU((1.702 · fc1)(x))): one fused SiLU pass over the 4D-wide hidden activations instead of
    three elementwise passes (mul, sigmoid, mul) — ~10 % of a CLIP teacher's forward on the CPU. Exact in real
    arithmetic; the teacher is frozen, so the weights are rescaled once."""
    for block in model.blocks:
        mlp = block.mlp
        if not isinstance(getattr(mlp, "act", None), QuickGELU) or not isinstance(mlp.norm, nn.Identity):
            continue
        with torch.no_grad():
            mlp.fc1.weight.mul_(FoldedQuickGELU.scale)
            if mlp.fc1.bias is not None:
                mlp.fc1.bias.mul_(FoldedQuickGELU.scale)
            mlp.fc2.weight.div_(FoldedQuickGELU.scale)
        mlp.act = FoldedQuickGELU(inplace=True)


class Teacher(nn.Module):
    def __init__(self, name: str, student_grid: int, weights: str = "random",
                 data_mean=IMAGENET_MEAN, data_std=IMAGENET_STD, **timm_kwargs):
        """weights: 'hub' (timm's pretrained download; only when the user asks for it), 'random', or the path
        of a local .safetensors/.pth file. timm_kwargs override the architecture (tests and the demo use them
        for tiny teachers)."""
        super().__init__()
        self.model_name = resolve_teacher_name(name)
        self.model = self._build(student_grid, weights, timm_kwargs)
        self.data_mean, self.data_std = tuple(data_mean), tuple(data_std)
        fold_input_normalization(self.model, data_mean, data_std)
        fold_quick_gelu(self.model)
        self.num_prefix = self.model.num_prefix_tokens
        self.depth = len(self.model.blocks)
        self.embed_dim = self.model.embed_dim
        self.requires_grad_(False)
        self.eval()
        last_attn = self.model.blocks[-1].attn
        if getattr(last_attn, "gate", None) is not None or not hasattr(last_attn, "qkv"):
            raise ValueError(f"teacher {self.model_name!r}: its last block's attention is not timm's standard "
                             "fused-qkv Attention, which the CLS-row importance needs")

    def _build(self, grid: int, weights: str, timm_kwargs: dict) -> TimmViT:
        try:
            with torch.device("meta"):  # only to read the patch size; allocates nothing
                architecture = timm.create_model(self.model_name.split(".")[0], pretrained=False, **timm_kwargs)
        except TypeError as error:  # e.g. a ViT option given to a CNN
            raise ValueError(f"teacher {self.model_name!r}: timm cannot build it with {timm_kwargs} ({error}); the "
                             "teacher must be a timm VisionTransformer, e.g. clip_b16") from error
        if not isinstance(architecture, TimmViT):
            raise ValueError(f"teacher {self.model_name!r} is not a timm VisionTransformer (a ViT is needed: its "
                             "tokens are the targets), e.g. vit_base_patch16_clip_224.openai or clip_b16")
        patch = architecture.patch_embed.patch_size[0]
        self.img_size = grid * patch  # the teacher's grid must equal the student's
        kwargs = dict(num_classes=0, img_size=self.img_size, **timm_kwargs)
        if weights == "hub":
            model = create_from_hub(self.model_name, f"teacher {self.model_name!r}", **kwargs)
        else:
            model = timm.create_model(self.model_name, pretrained=False, **kwargs)
        if not isinstance(model, TimmViT) or not model.has_class_token:
            raise ValueError(f"teacher {self.model_name!r} is not a timm VisionTransformer with a CLS token")
        if weights not in ("hub", "random"):
            load_teacher_weights(model, weights)
        self.weights = weights
        self.architecture = ", ".join(f"{k}={v}" for k, v in timm_kwargs.items())
        return model

    def describe(self) -> str:
        """One line: the model, what of its architecture was overridden, and where its weights came from."""
        source = {"hub": "timm's pretrained weights (hub cache)", "random": "RANDOM weights"}.get(
            self.weights, f"weights from {self.weights}")
        changed = f" ({self.architecture})" if self.architecture else ""
        return f"{self.model_name}{changed}, {source}"

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in eval mode (no dropout, no drop path)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.img_size or images.shape[-2] != self.img_size:
            # e.g. CLIP ViT-L/14 at 196 px so its 14×14 grid matches a /16 student at 224 px
            images = F.interpolate(images, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False)
        return images.to(self.model.patch_embed.proj.weight.dtype)

    def select_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """CLS token and patch tokens; register tokens are dropped."""
        if self.num_prefix == 1:
            return x
        return torch.cat([x[:, :1], x[:, self.num_prefix:]], dim=1)

    def last_level(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The last level in the CLS + patches layout [B, 1+N, D] from its computed rows: zeros where the block
        was not run (rows the method never reads)."""
        if rows is None:
            return self.select_tokens(x)
        b, _, d = x.shape
        level = x.new_zeros(b, 1 + self.model.patch_embed.num_patches, d)
        return level.scatter_(1, rows[..., None].expand(-1, -1, d), x)

    @torch.inference_mode()
    def begin(self, images: torch.Tensor, levels: list[int], importance: bool = True) -> TeacherPass:
        """Every block but the last (or only up to the deepest level asked for, when the last block is needed
        for neither a level nor the importance), then the last block's keys and, when asked, the importance.
        levels: 1-based block indices whose outputs are wanted."""
        bad = [level for level in levels if not 1 <= level <= self.depth]
        if bad:
            raise ValueError(f"teacher levels must be in 1..{self.depth}, got {bad}")
        m = self.model
        x = m.norm_pre(m._pos_embed(m.patch_embed(self.prepare(images))))
        run_last = importance or self.depth in levels
        outputs = {}
        for index, block in enumerate(m.blocks[: self.depth - 1 if run_last else max(levels)], start=1):
            x = block(x)
            if index in levels:
                outputs[index] = self.select_tokens(x)
        if not run_last:
            return TeacherPass(list(levels), outputs, None, None, None, None)
        y, k = keys(m.blocks[-1], x)
        weights = cls_importance(m.blocks[-1], y, k, self.num_prefix) if importance else None
        return TeacherPass(list(levels), outputs, x, y, k, weights)

    @torch.inference_mode()
    def finish(self, part: TeacherPass, rows: torch.Tensor | None = None) -> TeacherOutput:
        """The levels asked for [L, B, 1+N, D]; the last one (when asked for) computed at level rows `rows` [B, R]
        only (CLS = 0, patch n = 1 + n; zeros elsewhere), or at every row when rows is None."""
        outputs = dict(part.outputs)
        if self.depth in part.levels:
            x = rows_output(self.model.blocks[-1], part.x, part.y, part.k, rows, self.num_prefix)
            outputs[self.depth] = self.last_level(x, rows)
        return TeacherOutput(torch.stack([outputs[level] for level in part.levels]), part.importance)

    def forward(self, images: torch.Tensor, levels: list[int], importance: bool = True,
                rows: torch.Tensor | None = None) -> TeacherOutput:
        """`begin` and `finish` in one call, for rows known before the teacher runs (or every row)."""
        return self.finish(self.begin(images, levels, importance), rows)
