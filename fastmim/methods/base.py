"""The interface every pretraining method offers the trainer (MaskAlign, MAE, MR-MAE, …).

The trainer, the step, the metrics, checkpoints, export and the benchmarks only ever do:

    method = build_method(cfg.method, cfg.data.image)  # fastmim.methods.registry: the config's class names the method
    method.prepare(device, precision, compile)  # move, pick attention, bf16 teachers, torch.compile blocks
    groups = method.param_groups(weight_decay)  # the optimizer's parameter groups
    out = method(images)                        # MethodOutput: out.loss (scalar), out.terms {name: scalar}
    method.flops_per_image()                    # matrix-product FLOPs of one training step per image (MFU)
    method.student                              # the ViT that is exported and evaluated
    method.name                                 # recorded in config.yaml and checkpoints

and, for the benchmarks' stage breakdown, `method.trained_pass(images, method.frozen_pass(images))`, which is
what `method(images)` computes; for pictures (fastmim.pictures), `method.picture(images, generator)`, None for a
method that draws none. Subclasses supply the two passes and what differs; frozen teachers are held
here, outside the module tree: never trained, saved or synced by DDP, but moved and cast with the method.

A method registers itself: a subclass that sets `config_class` (a fastmim.methods.configs dataclass, which
carries the method's name) is added to `METHODS` under that name. Adding a method is its file, its
configuration class and its recipe; nothing else lists methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from fastmim.config_values import check_fields
from fastmim.data_config import ImageSpec

from .configs import method_name
from .flops import StepFlops
from .masks import Mask
from .pictures import PictureData

METHODS: dict[str, type["Method"]] = {}  # method name → class, filled as the classes are defined


@dataclass
class MethodOutput:
    loss: torch.Tensor                                # scalar: what is minimized
    terms: dict[str, torch.Tensor]                    # named scalar tensors the metrics log (loss terms)
    mask: Mask | None = None                          # the mask the step used
    extras: dict[str, Any] = field(default_factory=dict)  # anything a test or benchmark may inspect


class Method(nn.Module):
    config_class: ClassVar[type]  # its configuration dataclass, which names it
    name: ClassVar[str]           # derived from config_class

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            cls.name = method_name(cls.config_class)
            METHODS[cls.name] = cls

    def __init__(self, cfg, image: ImageSpec):
        """cfg: an instance of `config_class`; image: the data's image spec (size, mean, std)."""
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(cfg).__name__}")
        check_fields(cfg, "method")  # choices and types, for configurations built in code
        self.cfg, self.image = cfg, image
        object.__setattr__(self, "teachers", [])  # not submodules: see the module docstring
        self.student: nn.Module

    # --- validation (fine-tuning) ----------------------------------------------------------------------------
    supports_validation: ClassVar[bool] = False  # whether validation_sums is implemented (data.val)

    def validation_sums(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over a batch of labelled images, in eval mode: {'loss', 'top1', 'top5', 'images'} (scalars)."""
        raise NotImplementedError

    # --- the objective ------------------------------------------------------------------------------------
    def frozen_pass(self, images: torch.Tensor) -> Any:
        """The part of the step that trains nothing: the teachers' forward and the mask draw."""
        raise NotImplementedError

    def trained_pass(self, images: torch.Tensor, frozen: Any) -> MethodOutput:
        """The part that trains: the student (and decoder or heads) on the mask, and the loss."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> MethodOutput:
        return self.trained_pass(images, self.frozen_pass(images))

    # --- pictures (python -m fastmim.visualize, train.picture_every) ----------------------------------------
    def picture(self, images: torch.Tensor, generator: torch.Generator) -> PictureData | None:
        """What a picture of `images` shows of the method (fastmim.methods.pictures.PictureData): the mask it
        draws — every random number from `generator`, on the images' device, never from torch's global streams,
        so a run that draws pictures trains exactly like one without —, the teacher's importance where the mask
        comes from it, reconstructions, the similarity to the teacher's targets, each image's loss. The caller
        puts the method in eval mode without gradients. None (this default): the method draws no pictures."""
        return None

    # --- what it is made of --------------------------------------------------------------------------------
    def student_timm(self) -> tuple[str, dict]:
        """The timm model (name, keyword arguments) the student is, recorded in checkpoints for export,
        evaluation and fine-tuning: its size's ViT for the pretraining students."""
        from fastmim.checkpoint import timm_student

        return timm_student(self.cfg, self.image.size)

    def describe(self) -> list[str]:
        """Lines for the start of a run: each frozen model the method learns from and where its weights came
        from."""
        return [f"teacher {i + 1} of {len(self.teachers)}: {t.describe()}" if len(self.teachers) > 1
                else f"teacher: {t.describe()}" for i, t in enumerate(self.teachers)]

    def warnings(self, on_real_images: bool) -> list[str]:
        """What the start of a run should warn about: a teacher with random weights is what the demos and tests
        use on synthetic images, and a mistake on real ones."""
        random = [t.model_name for t in self.teachers if t.weights == "random"]
        if not random or not on_real_images:
            return []
        return [f"warning: the teacher {', '.join(random)} has RANDOM weights: on your images that trains the "
                "student to copy noise; name its weights with --teacher-weights FILE (or hub)"]

    # --- set-up -------------------------------------------------------------------------------------------
    def set_teachers(self, teachers: list[nn.Module]) -> None:
        object.__setattr__(self, "teachers", list(teachers))

    def _apply(self, fn, recurse=True):
        for teacher in self.teachers:  # .to()/.cuda()/.double() move the unregistered teachers too
            teacher._apply(fn)
        return super()._apply(fn, recurse)

    def set_attention_backend(self, name: str, device) -> str:
        """The attention of every trained block (the student's, and a decoder's where there is one)."""
        return self.student.set_attention_backend(name, device)

    def compile_blocks(self) -> None:
        """torch.compile every trained block and every teacher block but the last (written out for the
        importance and the kept rows): fuses the norms, activations and residual adds around the GEMMs.
        Identical blocks share one compiled graph, so compiling costs seconds, not minutes."""
        for block in self.trained_blocks():
            block.compile()
        for teacher in self.teachers:
            for block in teacher.model.blocks[:-1]:
                block.compile()

    def trained_blocks(self) -> list[nn.Module]:
        return list(self.student.blocks)

    def prepare(self, device: torch.device, precision: str, compile: bool) -> "Method":
        """Move to `device`, choose the attention backend for it, keep the frozen teachers in bf16 when training
        in bf16 (half the memory traffic), and torch.compile the blocks when asked."""
        self.to(device)
        self.attention = self.set_attention_backend(self.cfg.attn_backend, device)  # the backend chosen
        if precision == "bf16":
            for teacher in self.teachers:
                teacher.to(torch.bfloat16)
        if compile:
            self.compile_blocks()
        return self

    # --- optimisation -------------------------------------------------------------------------------------
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """MAE's rule (its optim_factory): no decay on biases and 1-D tensors. Methods add their own."""
        return param.ndim <= 1 or name.endswith("bias")

    def param_groups(self, weight_decay: float) -> list[dict]:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if self.no_weight_decay(name, param) else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def step_flops(self) -> StepFlops:
        """Matrix-product FLOPs (2 per multiply-add) of one training step per image, by part (fastmim.methods.flops
        has the counting helpers)."""
        raise NotImplementedError

    def flops_per_image(self) -> float:
        """Matrix-product FLOPs of one training step, forward and backward, per image (for MFU)."""
        return self.step_flops().total
