"""The student and the teachers of a method, built for the data's images: the student at the image size, each
teacher at the student's patch grid and folding the data's normalization into its patch embedding."""
from __future__ import annotations

from fastmim.data_config import ImageSpec
from fastmim.models.teacher import Teacher
from fastmim.models.vit import VisionTransformer, vit_model


def build_student(cfg, image: ImageSpec, **options) -> VisionTransformer:
    """The student a method configuration describes (size, patch, drop path, student_kwargs) for `image`;
    options: what the method adds (layer scale, a mask token)."""
    student = vit_model(cfg.student, img_size=image.size, patch_size=cfg.patch_size, drop_path=cfg.drop_path,
                        **options, **cfg.student_kwargs)
    student.set_attention_backend(cfg.attn_backend, "cpu")  # checks the backend before any work
    return student


def build_teacher(name: str, weights: str, timm_kwargs: dict, student: VisionTransformer,
                  image: ImageSpec) -> Teacher:
    return Teacher(name, student.grid, weights, image.mean, image.std, **timm_kwargs)
