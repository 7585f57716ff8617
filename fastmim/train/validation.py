"""Validation during training (fine-tuning's): top-1, top-5 and loss of the method — and of its EMA copy when
the run keeps one — on a labelled set, every train.val_every_epochs epochs (1) and at the last step. Every
process scores its share of the images (rank r takes images r, r + world, …: no padding, so no image counts
twice) and one all-reduce sums them. A metrics.Evaluator; `best_key` is what best.pt is kept by."""
from __future__ import annotations

import time

import torch
import torch.distributed as dist


class Validation:
    best_key = "val_top1"

    def __init__(self, loader, images: int, method, ema, every: int, stop_step: int, device, autocast):
        self.loader, self.images, self.method, self.ema = loader, images, method, ema
        self.every, self.stop_step, self.device, self.autocast = every, stop_step, device, autocast  # every: steps

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.stop_step

    def evaluate(self, step: int) -> dict:
        start = time.perf_counter()
        result = self.score(self.method, "val")
        if self.ema is not None:
            result.update(self.score(self.ema.module, "val_ema"))
        return {**result, "val_seconds": time.perf_counter() - start}

    def describe(self, step: int, result: dict) -> str:
        line = (f"validation at step {step}: top-1 {result['val_top1']:.2f} %, top-5 {result['val_top5']:.2f} %, "
                f"loss {result['val_loss']:.4f} ({result['val_images']} images, {result['val_seconds']:.1f} s)")
        if "val_ema_top1" in result:
            line += f"; EMA top-1 {result['val_ema_top1']:.2f} %"
        return line

    @torch.no_grad()
    def score(self, model, prefix: str) -> dict:
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, device=self.device, dtype=torch.float64)
        try:
            for images, labels in self.loader:
                with self.autocast:
                    batch = model.validation_sums(images.to(self.device), labels.to(self.device))
                sums += torch.stack([batch[key].double() for key in ("loss", "top1", "top5", "images")])
        finally:
            model.train(was_training)
        if dist.is_initialized():
            dist.all_reduce(sums)
        loss, top1, top5, images = sums.cpu().tolist()
        if int(images) != self.images:  # every image exactly once, whatever the number of processes
            raise RuntimeError(f"validation scored {int(images)} images of {self.images}")
        return {f"{prefix}_loss": loss / images, f"{prefix}_top1": 100 * top1 / images,
                f"{prefix}_top5": 100 * top5 / images, f"{prefix}_images": int(images)}
