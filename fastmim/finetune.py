"""`python -m fastmim.finetune --recipe NAME --init MODEL --data TRAIN_DIR --val VAL_DIR`: supervised fine-tuning
of a pretrained student by MAE's protocol (main_finetune.py), on the same trainer as pretraining (torchrun, bf16,
fused AdamW, torch.compile, exact resume, SIGINT/SIGTERM, metrics.jsonl, summary.json, loss curve).

MODEL is a fastmim pretraining checkpoint, an export (.safetensors), or a timm ViT name with --weights FILE|hub;
without --init the model starts from random weights. The classifier is a timm VisionTransformer (mean of the
patch tokens + fc_norm, or the CLS token), its head initialized as MAE does; layer-wise lr decay exactly as MAE's
param_groups_lrd (`param_groups` below); Mixup/CutMix with label smoothing and the soft-target loss from timm;
top-1, top-5 and loss on --val every epoch and at the end (each image counted once under torchrun), best.pt
kept beside last.pt.
"""
from __future__ import annotations

import argparse
import sys

from fastmim.cli import add_run_flags, apply_flags, apply_sets, choices_epilog, run, starting_config
from fastmim.config import Config
from fastmim.recipes import RECIPES

EPILOG = """examples:
  python -m fastmim.finetune                                    # the CPU demo on built-in labelled images
  python -m fastmim.finetune --init /tmp/fastmim-demo/checkpoints/last.pt   # ... from the pretraining demo
  torchrun --nproc_per_node=8 -m fastmim.finetune --recipe finetune_maskalign_vit_base \\
      --init runs/vitb_clipb/checkpoints/last.pt --data /data/imagenet/train --val /data/imagenet/val
  python -m fastmim.finetune --recipe finetune_mae_vit_base --init vit_base_patch16_224.mae --weights hub ...
"""

FLAG_FIELDS = {
    "data": "data.path", "val": "data.val", "init": "method.init", "weights": "method.weights",
    "output": "train.output", "max_steps": "train.max_steps", "epochs": "train.epochs",
    "batch_size": "data.batch_size", "resume": "train.resume", "device": "train.device", "compile": "train.compile",
}


def param_groups(model, weight_decay: float, layer_decay: float) -> list[dict]:
    """MAE's layer-wise lr decay groups of a timm ViT (util/lr_decay.py param_groups_lrd): each group's `params`,
    `weight_decay` and `lr_scale`, which the schedule applies every iteration."""
    from fastmim.methods.lr_decay import param_groups as groups

    return groups(model, weight_decay, layer_decay)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastmim.finetune", description=__doc__, epilog=EPILOG + "\n" + choices_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--recipe", choices=list(RECIPES), metavar="NAME",
                   help="named configuration to start from (default: demo_finetune; --list-recipes shows them all)")
    p.add_argument("--config", metavar="FILE", help="start from this YAML configuration instead (a fine-tuning "
                   "run's config.yaml, or your own)")
    p.add_argument("--init", metavar="MODEL", help="the pretrained student: a fastmim checkpoint (.pt), an export "
                   "(.safetensors) or a timm ViT name with --weights; omit for random weights")
    p.add_argument("--weights", metavar="FILE|hub", help="weights of a timm-name --init: a local file (timm, OpenAI "
                   "CLIP or open_clip layout) or hub (timm's download)")
    p.add_argument("--data", metavar="TRAIN_DIR", help="the labelled training images: an ImageFolder tree (one "
                   "folder per class); omit for the built-in labelled synthetic set")
    p.add_argument("--val", metavar="VAL_DIR", help="the labelled validation images (its classes among the "
                   "training ones), scored every epoch and at the end; 'synthetic' for the built-in set's")
    p.add_argument("--output", metavar="DIR", help="folder for config.yaml, metrics.jsonl, checkpoints/ (last.pt, "
                   "best.pt), summary.json and loss_curve.png")
    p.add_argument("--list-recipes", action="store_true", help="list the fine-tuning recipes and exit")
    add_run_flags(p, "torch.compile the classifier's blocks", "method.layer_decay=0.75, optim.base_lr=1e-3, "
                  "train.ema_decay=0.9999")
    return p


def resolve_config(args: argparse.Namespace) -> Config:
    cfg = starting_config(args, "finetune", "demo_finetune")
    apply_flags(cfg, args, FLAG_FIELDS)
    if args.data is not None and cfg.data.val == "synthetic" and args.val is None:
        cfg.data.val = None  # your training images: the built-in validation set has other classes
    apply_sets(cfg, args)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run(parser, parser.parse_args(argv), "finetune", resolve_config)


if __name__ == "__main__":
    sys.exit(main())
