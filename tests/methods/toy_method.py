"""A method defined only here, to show that adding one takes its file, its configuration and its recipe: it
registers itself (class, configuration, recipe) and the contract sweep (test_contract.py) runs it with no other
edit. It reconstructs the pixels of the patches the student sees through a linear head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fastmim import ops
from fastmim.config import Config
from fastmim.methods.base import Method, MethodOutput
from fastmim.methods.builders import build_student
from fastmim.methods.configs import StudentConfig
from fastmim.methods.flops import StepFlops, student_flops
from fastmim.methods.masks import num_kept, random_mask
from fastmim.recipes import demo_setup, recipe_function, tiny_student


@dataclass
class ToyConfig(StudentConfig):
    method_name: ClassVar[str] = "toy"
    mask_ratio: float = 0.5


class Toy(Method):
    config_class = ToyConfig

    def __init__(self, cfg: ToyConfig, image):
        super().__init__(cfg, image)
        self.student = build_student(cfg, image)
        self.head = torch.nn.Linear(self.student.embed_dim, cfg.patch_size ** 2 * 3)

    def frozen_pass(self, images):
        return random_mask(images.shape[0], self.student.num_patches, self.cfg.mask_ratio, images.device)

    def trained_pass(self, images, mask):
        pred = self.head(self.student.encode(images, mask.ids_keep)[:, 1:])
        loss = ops.masked_pixel_loss(pred, images, mask.ids_keep, self.cfg.patch_size)
        return MethodOutput(loss, {"pixel": loss}, mask)

    def step_flops(self) -> StepFlops:
        kept = num_kept(self.student.num_patches, self.cfg.mask_ratio)
        patch, blocks = student_flops(self.student, kept, self.student.depth)
        head = 2 * kept * self.head.in_features * self.head.out_features
        return StepFlops(0.0, patch + blocks, head, 2 * (blocks + head) + patch)


@recipe_function
def demo_toy() -> Config:
    """The test-only toy method on the CPU."""
    cfg = Config()
    cfg.method = ToyConfig(**tiny_student())
    return demo_setup(cfg, "runs/demo_toy")
