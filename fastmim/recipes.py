"""Named recipes. The official ones follow DESIGN §1 (8 GPUs × 128 images, base lr 1.5e-4 × batch/256)."""
from __future__ import annotations

from fastmim.config import Config
from fastmim.data.base import DataConfig
from fastmim.methods.maskalign import MaskAlignConfig


def maskalign(student: str, teacher: str, drop_path: float) -> Config:
    cfg = Config()
    cfg.method = MaskAlignConfig(student=student, teacher=teacher, drop_path=drop_path, teacher_weights="hub")
    cfg.data = DataConfig(batch_size=128, img_size=224)
    cfg.train.output = f"runs/maskalign_vit_{student}_{teacher}"
    return cfg


def demo() -> Config:
    """A tiny student and a tiny random teacher on the built-in synthetic images, on the CPU, in minutes."""
    cfg = Config()
    cfg.method = MaskAlignConfig(
        student="tiny", student_kwargs=dict(embed_dim=96, depth=4, num_heads=3), img_size=64, drop_path=0.0,
        teacher="vit_tiny_patch16_224", teacher_weights="random", teacher_kwargs=dict(depth=4),
        level_weights="top2",
    )
    cfg.data = DataConfig(backend="synthetic", img_size=64, batch_size=32, workers=1, synthetic_images=1024,
                          pin_memory=False)
    cfg.optim.base_lr = 1.5e-3
    cfg.optim.min_lr = 1e-4
    cfg.optim.warmup_epochs = 1
    cfg.train.epochs = 8
    cfg.train.device = "cpu"
    cfg.train.log_every = 5
    cfg.train.checkpoint_every = 100
    cfg.train.output = "runs/demo"
    return cfg


RECIPES = {
    "maskalign_vit_base_clip_b16": lambda: maskalign("base", "clip_b16", 0.1),
    "maskalign_vit_large_clip_b16": lambda: _with(maskalign("large", "clip_b16", 0.2), fusion="sum"),
    "maskalign_vit_large_clip_l14": lambda: maskalign("large", "clip_l14", 0.2),  # 24 = 24 levels
    "maskalign_vit_base_dino_b16": lambda: maskalign("base", "dino_b16", 0.1),
    "demo": demo,
}


def _with(cfg: Config, **method_fields) -> Config:
    for key, value in method_fields.items():
        setattr(cfg.method, key, value)
    return cfg


def recipe(name: str) -> Config:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]()
