"""The k-NN monitor: every `eval.every` steps (and at the end) rank 0 scores the student's features with
fastmim.eval's k-NN — the bank from `eval.train`, the queries from `eval.val`, each a fixed class-balanced
subset (`eval.per_class` images of every class), rank 0's share of it under torchrun — and the trainer logs
`knn_top1`, `knn_top5` and the seconds it took."""
from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Subset

from fastmim.eval import eval_transform, extract, knn_accuracy
from fastmim.eval.data import balanced_subset, image_folder


class KnnMonitor:
    def __init__(self, cfg, img_size: int, mean, std, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        transform = eval_transform(img_size, mean, std)
        bank = image_folder(cfg.train, transform)
        queries = image_folder(cfg.val, transform, bank.classes)
        self.bank = Subset(bank, balanced_subset(bank, cfg.per_class, rank, world_size))
        self.queries = Subset(queries, balanced_subset(queries, cfg.per_class, rank, world_size))

    def due(self, step: int, last_step: int) -> bool:
        return step % self.cfg.every == 0 or step == last_step

    def _features(self, student, data, device):
        loader = DataLoader(data, batch_size=self.cfg.batch_size, num_workers=0)
        return extract(student, loader, self.cfg.pooling, device)

    def __call__(self, student, device: torch.device) -> dict:
        start = time.perf_counter()
        bank_f, bank_y = self._features(student, self.bank, device)
        query_f, query_y = self._features(student, self.queries, device)
        top1, top5 = knn_accuracy(bank_f, bank_y, query_f, query_y, self.cfg.k, self.cfg.temperature)
        return {"knn_top1": top1, "knn_top5": top5, "knn_seconds": time.perf_counter() - start}
