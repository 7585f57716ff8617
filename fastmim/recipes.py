"""Named recipes, one spelled-out function each, registered by the `@recipe_function` decorator (a new method's
recipe registers itself the same way); the first line of its docstring is what --list-recipes shows. The
official ones follow the papers' settings (MaskAlign, MAE) or fastmim's reading of them (MR-MAE, MaskDistill)."""
from __future__ import annotations

from typing import Callable

from fastmim.config import Config
from fastmim.data_config import DataConfig
from fastmim.methods.configs import FinetuneConfig, MAEConfig, MaskAlignConfig, MaskDistillConfig, MRMAEConfig

RECIPES: dict[str, Callable[[], Config]] = {}  # name → the function that makes it, in definition order


def recipe_function(fn: Callable[[], Config]) -> Callable[[], Config]:
    """Register `fn` as the recipe named after it."""
    RECIPES[fn.__name__] = fn
    return fn


def maskalign(student: str, teacher: str, drop_path: float, **method) -> Config:
    cfg = Config()
    cfg.method = MaskAlignConfig(student=student, teacher=teacher, drop_path=drop_path, teacher_weights="hub", **method)
    cfg.data = DataConfig(batch_size=128, img_size=224)
    cfg.train.output = f"runs/maskalign_vit_{student}_{teacher}"
    return cfg


@recipe_function
def maskalign_vit_base_clip_b16() -> Config:
    """MaskAlign, ViT-B/16 student, CLIP ViT-B/16 teacher: the paper's recipe (200 epochs, 85.4 fine-tune)."""
    return maskalign("base", "clip_b16", 0.1)


@recipe_function
def maskalign_vit_large_clip_b16() -> Config:
    """MaskAlign, ViT-L/16 student, CLIP ViT-B/16 teacher, `sum` fusion (24 student levels → 12)."""
    return maskalign("large", "clip_b16", 0.2, fusion="sum")


@recipe_function
def maskalign_vit_large_clip_l14() -> Config:
    """MaskAlign, ViT-L/16 student, CLIP ViT-L/14 teacher at 196 px (its 14×14 grid matches the student's)."""
    return maskalign("large", "clip_l14", 0.2)


@recipe_function
def maskalign_vit_base_dino_b16() -> Config:
    """MaskAlign, ViT-B/16 student, DINO ViT-B/16 teacher."""
    return maskalign("base", "dino_b16", 0.1)


def mae(student: str) -> Config:
    """MAE's ViT recipe: effective batch 4096 (128 per GPU × 8 GPUs × 4 accumulation steps), base lr 1.5e-4 ×
    batch/256, min lr 0, 40 warmup epochs of 1600, AdamW (0.9, 0.95), wd 0.05, no drop path, mask 0.75."""
    cfg = Config()
    cfg.method = MAEConfig(student=student)
    cfg.data = DataConfig(batch_size=128, img_size=224)
    cfg.optim.accum_steps = 4
    cfg.optim.min_lr = 0.0
    cfg.optim.warmup_epochs = 40
    cfg.train.epochs = 1600
    cfg.train.output = f"runs/mae_vit_{student}"
    return cfg


@recipe_function
def mae_vit_base() -> Config:
    """MAE, ViT-B/16: the paper's recipe (1600 epochs, 83.6 fine-tune, 68.0 linear probe)."""
    return mae("base")


@recipe_function
def mae_vit_large() -> Config:
    """MAE, ViT-L/16: the paper's recipe (1600 epochs, 85.9 fine-tune)."""
    return mae("large")


def mrmae(teachers: tuple[str, ...]) -> Config:
    """MR-MAE (interpretation): batch 1024 (128 × 8 GPUs), base lr 1.5e-4 × batch/256, min lr 0, 20 warmup
    epochs of 200, AdamW (0.9, 0.95), wd 0.05, mask 0.75 random, l2 mimic of each teacher's last block."""
    cfg = Config()
    cfg.method = MRMAEConfig(teachers=teachers, teacher_weights=("hub",) * len(teachers),
                             mimic_weights=(1.0,) * len(teachers))
    cfg.data = DataConfig(batch_size=128, img_size=224)
    cfg.optim.min_lr = 0.0
    cfg.optim.warmup_epochs = 20
    cfg.train.epochs = 200
    cfg.train.output = "runs/mrmae_vit_base_" + "_".join(teachers)
    return cfg


@recipe_function
def mrmae_vit_base_clip_b16() -> Config:
    """MR-MAE (interpretation), ViT-B/16 student mimicking CLIP ViT-B/16 (paper: 85.0 fine-tune at 200 epochs)."""
    return mrmae(("clip_b16",))


@recipe_function
def mrmae_vit_base_clip_dino_b16() -> Config:
    """MR-MAE (interpretation), ViT-B/16 student mimicking CLIP ViT-B/16 and DINO ViT-B/16."""
    return mrmae(("clip_b16", "dino_b16"))


def maskdistill(student: str, teacher: str) -> Config:
    """MaskDistill (interpretation, on BEiT v2's recipe): 300 epochs, batch 2048 (128 per GPU × 8 GPUs × 2
    accumulation steps), lr 1.5e-3 at that batch (base 1.875e-4 × batch/256), min lr 1e-5, 10 warmup epochs,
    AdamW (0.9, 0.999), wd 0.05, gradient clip 3.0, drop path 0.1, layer scale 0.1, block masks 40 %."""
    cfg = Config()
    cfg.method = MaskDistillConfig(student=student, teacher=teacher)
    cfg.data = DataConfig(batch_size=128, img_size=224)
    cfg.optim.accum_steps = 2
    cfg.optim.base_lr = 1.875e-4
    cfg.optim.betas = (0.9, 0.999)
    cfg.optim.warmup_epochs = 10
    cfg.optim.clip_grad = 3.0
    cfg.train.epochs = 300
    cfg.train.output = f"runs/maskdistill_vit_{student}_{teacher}"
    return cfg


@recipe_function
def maskdistill_vit_base_clip_b16() -> Config:
    """MaskDistill (interpretation), ViT-B/16 student, CLIP ViT-B/16 teacher (quoted: 85.3 fine-tune)."""
    return maskdistill("base", "clip_b16")


@recipe_function
def maskdistill_vit_large_clip_l14() -> Config:
    """MaskDistill (interpretation), ViT-L/16 student, CLIP ViT-L/14 teacher at 196 px."""
    return maskdistill("large", "clip_l14")


def tiny_student() -> dict:
    return dict(student="tiny", student_kwargs=dict(embed_dim=96, depth=4, num_heads=3), drop_path=0.0)


def tiny_teacher() -> dict:
    return dict(teacher_kwargs=dict(depth=4))


def demo_setup(cfg: Config, output: str) -> Config:
    """The CPU demos' data, schedule and output: 1,024 synthetic 64-px images, 8 epochs of 32."""
    cfg.data = DataConfig(backend="synthetic", img_size=64, batch_size=32, workers=1, synthetic_images=1024,
                          pin_memory=False)
    cfg.optim.base_lr = 1.5e-3
    cfg.optim.min_lr = 1e-4
    cfg.optim.warmup_epochs = 1
    cfg.train.epochs = 8
    cfg.train.device = "cpu"
    cfg.train.log_every = 5
    cfg.train.checkpoint_every = 100
    cfg.train.picture_every = 50  # a multiple of log_every: the logged steps stay those of a run without pictures
    cfg.train.output = output
    return cfg


@recipe_function
def demo() -> Config:
    """MaskAlign on the CPU in about a minute: a 4-block, 96-wide student, a random 4-block teacher, synthetic
    images."""
    cfg = Config()
    cfg.method = MaskAlignConfig(**tiny_student(), teacher="vit_tiny_patch16_224", teacher_weights="random",
                                 **tiny_teacher(), level_weights="top2")
    return demo_setup(cfg, "runs/demo")


@recipe_function
def demo_mae() -> Config:
    """MAE on the CPU in about a minute: the demo's student on 8-px patches, a 2-block 64-wide decoder, synthetic
    images."""
    cfg = Config()
    cfg.method = MAEConfig(**{**tiny_student(), "patch_size": 8}, decoder_dim=64, decoder_depth=2, decoder_heads=2)
    return demo_setup(cfg, "runs/demo_mae")


@recipe_function
def demo_mrmae() -> Config:
    """MR-MAE on the CPU in about a minute: the MAE demo plus the mimic of a random 4-block teacher."""
    cfg = Config()
    cfg.method = MRMAEConfig(**tiny_student(), decoder_dim=64, decoder_depth=2, decoder_heads=2,
                             teachers=("vit_tiny_patch16_224",), teacher_weights=("random",), **tiny_teacher())
    return demo_setup(cfg, "runs/demo_mrmae")


@recipe_function
def demo_maskdistill() -> Config:
    """MaskDistill on the CPU in about a minute: the demo's student with layer scale and mask tokens, a random 4-block
    teacher, block masks, synthetic images."""
    cfg = Config()
    cfg.method = MaskDistillConfig(**tiny_student(), teacher="vit_tiny_patch16_224", teacher_weights="random",
                                   **tiny_teacher())
    return demo_setup(cfg, "runs/demo_maskdistill")


# --- fine-tuning (python -m fastmim.finetune) --------------------------------------------------------------------

def finetune(student: str, epochs: int, base_lr: float, layer_decay: float, drop_path: float) -> Config:
    """MAE's fine-tuning protocol (main_finetune.py): effective batch 1024 (128 per GPU × 8 GPUs), lr = base lr ×
    batch/256, 5 warmup epochs then half-cosine to 1e-6, AdamW (0.9, 0.999), wd 0.05 (none on 1-D tensors,
    cls_token, pos_embed), layer-wise lr decay, no gradient clipping, RandAugment rand-m9-mstd0.5-inc1, random
    erasing 0.25, Mixup 0.8 / CutMix 1.0 with label smoothing 0.1, avg pooling + fc_norm."""
    cfg = Config()
    cfg.method = FinetuneConfig(model=f"vit_{student}_patch16_224", layer_decay=layer_decay, drop_path=drop_path)
    cfg.data = DataConfig(backend="torchvision", labels=True, augmentation="finetune", batch_size=128, img_size=224,
                          scale=(0.08, 1.0))  # timm's crop area, as MAE's create_transform call gets it
    cfg.optim.base_lr, cfg.optim.min_lr, cfg.optim.warmup_epochs = base_lr, 1e-6, 5
    cfg.optim.betas = (0.9, 0.999)
    cfg.train.epochs = epochs
    cfg.train.output = f"runs/finetune_vit_{student}"
    return cfg


@recipe_function
def finetune_mae_vit_base() -> Config:
    """Fine-tuning an MAE ViT-B/16 (MAE's recipe): 100 epochs, base lr 5e-4, layer decay 0.65, drop path 0.1
    (MAE reports 83.6)."""
    return finetune("base", 100, 5e-4, 0.65, 0.1)


@recipe_function
def finetune_mae_vit_large() -> Config:
    """Fine-tuning an MAE ViT-L/16 (MAE's recipe): 50 epochs, base lr 1e-3, layer decay 0.75, drop path 0.2
    (MAE reports 85.9)."""
    return finetune("large", 50, 1e-3, 0.75, 0.2)


@recipe_function
def finetune_maskalign_vit_base() -> Config:
    """Fine-tuning a MaskAlign ViT-B/16 (MaskAlign's recipe): 100 epochs, base lr 3e-4, layer decay 0.55, drop
    path 0.2 (MaskAlign reports 85.4)."""
    return finetune("base", 100, 3e-4, 0.55, 0.2)


@recipe_function
def finetune_maskalign_vit_large() -> Config:
    """Fine-tuning a MaskAlign ViT-L/16 (MaskAlign's recipe): 50 epochs, base lr 3e-4, layer decay 0.75, drop
    path 0.4."""
    return finetune("large", 50, 3e-4, 0.75, 0.4)


@recipe_function
def finetune_mrmae_vit_base() -> Config:
    """Fine-tuning an MR-MAE ViT-B/16 (interpretation: no official script; MAE's ViT-B settings; MR-MAE reports
    85.0 at 200 epochs)."""
    return finetune("base", 100, 5e-4, 0.65, 0.1)


@recipe_function
def finetune_maskdistill_vit_base() -> Config:
    """Fine-tuning a MaskDistill ViT-B/16 (interpretation: no official script; MAE's ViT-B settings, layer scale
    from the export; 85.3 is quoted)."""
    return finetune("base", 100, 5e-4, 0.65, 0.1)


@recipe_function
def demo_finetune() -> Config:
    """Fine-tuning on the CPU in about two minutes: the pretraining demo's student size (random weights unless
    --init names a checkpoint, e.g. the pretraining demo's) on the built-in labelled synthetic set (3 classes).

    From random weights on 1,024 images, layer decay and Mixup/CutMix only slow what two minutes can show: the
    demo leaves them off (layer_decay 1.0, mixup 0, cutmix 0); the rest is MAE's protocol."""
    cfg = finetune("tiny", 12, 8e-3, 1.0, 0.0)
    cfg.method.model_kwargs = dict(embed_dim=96, depth=4, num_heads=3)
    cfg.method.mixup = cfg.method.cutmix = 0.0
    cfg.data = DataConfig(backend="synthetic", labels=True, augmentation="finetune", img_size=64, batch_size=32,
                          scale=(0.08, 1.0),
                          workers=1, synthetic_images=1024, synthetic_classes=3, val="synthetic",
                          synthetic_val_images=256, pin_memory=False)
    cfg.optim.warmup_epochs, cfg.optim.min_lr = 1, 1e-5
    cfg.train.device, cfg.train.log_every, cfg.train.checkpoint_every = "cpu", 5, 100
    cfg.train.output = "runs/demo_finetune"
    return cfg


def recipe(name: str) -> Config:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]()


def describe(name: str) -> str:
    """The recipe's description: the first paragraph of its docstring, on one line."""
    return " ".join((RECIPES[name].__doc__ or "").strip().split("\n\n")[0].split())
