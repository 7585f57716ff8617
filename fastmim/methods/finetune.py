"""Supervised fine-tuning (MAE's main_finetune.py protocol, which MaskAlign's code copies): the pretrained
student as a timm ViT classifier (classifier.py), timm's Mixup/CutMix with label smoothing and its soft-target
cross-entropy (label-smoothing cross-entropy without mixup), AdamW over MAE's layer-wise lr decay groups
(lr_decay.py). The trainer runs it as any other method: a batch is (images, labels); validation reports loss,
top-1 and top-5."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from fastmim.data_config import ImageSpec

from .base import Method, MethodOutput
from .classifier import build_classifier, top_k_hits
from .configs import FinetuneConfig
from .flops import StepFlops, block_flops
from .lr_decay import param_groups


class Finetune(Method):
    config_class = FinetuneConfig
    supports_validation = True

    def __init__(self, cfg: FinetuneConfig, image: ImageSpec):
        super().__init__(cfg, image)
        if len(image.classes) < 2:
            raise ValueError("fine-tuning needs labelled data of at least two classes (an ImageFolder tree: one "
                             "folder of images per class)")
        self.student, self.source, self.timm = build_classifier(cfg, image.size, len(image.classes))
        self.mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                            switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                            num_classes=len(image.classes)) if cfg.mixup > 0 or cfg.cutmix > 0 else None)
        self.criterion = (SoftTargetCrossEntropy() if self.mixup else
                          LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss())

    # --- the objective ------------------------------------------------------------------------------------
    def frozen_pass(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets): mixed with timm's Mixup/CutMix (soft targets) when it is on."""
        images, labels = batch
        if self.mixup is None:
            return images, labels
        even = images.shape[0] - images.shape[0] % 2  # timm mixes pairs: an odd last image (a skipped file) waits
        return self.mixup(images[:even], labels[:even])

    def trained_pass(self, batch, frozen) -> MethodOutput:
        images, targets = frozen
        loss = self.criterion(self.student(images), targets)
        return MethodOutput(loss, {"cross_entropy": loss})

    @torch.no_grad()
    def validation_sums(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.student(images).float()
        return {"loss": F.cross_entropy(logits, labels, reduction="sum"), "top1": top_k_hits(logits, labels, 1),
                "top5": top_k_hits(logits, labels, 5), "images": torch.tensor(labels.shape[0], device=labels.device)}

    # --- set-up and optimization -------------------------------------------------------------------------------
    def set_attention_backend(self, name: str, device) -> str:
        """timm's attention: fused (SDPA) unless `math` asks for the explicit products."""
        for block in self.student.blocks:
            block.attn.fused_attn = name != "math"
        return "math" if name == "math" else "sdpa"

    def param_groups(self, weight_decay: float) -> list[dict]:
        return param_groups(self.student, weight_decay, self.cfg.layer_decay)

    def describe(self) -> list[str]:
        return [f"classifier: {type(self.student).__name__} from {self.source}, {len(self.image.classes)} classes, "
                f"global_pool {self.cfg.global_pool}"]

    def student_timm(self) -> tuple[str, dict]:
        return self.timm[0], dict(self.timm[1])

    def step_flops(self) -> StepFlops:
        """The classifier on every token: the patch embedding (weight gradient only), the blocks, the head."""
        s = self.student
        patches = s.patch_embed.num_patches
        tokens, dim = s.num_prefix_tokens + patches, s.embed_dim
        patch = 2 * patches * s.patch_embed.proj.weight[0].numel() * dim
        blocks = len(s.blocks) * block_flops(tokens, dim, s.blocks[0].mlp.fc1.out_features)
        head = 2 * dim * s.num_classes
        return StepFlops(0.0, patch + blocks, head, 2 * (blocks + head) + patch)
