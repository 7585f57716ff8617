"""The k-NN monitor: DINO's weighted k-NN of the student's features on a fixed, class-balanced subset of two
labelled folders (the bank: eval.train, the queries: eval.val), every eval.every steps and at the end.

Only rank 0 evaluates, on its share of the subset (every class split evenly across the processes), so the
other processes wait for a fraction of what the whole subset would cost; with one process the share is all of
it. The subset is the same at every evaluation and after a resume (a fixed shuffle of each class), and the
evaluation draws nothing from the training's random streams, so a run with the monitor trains exactly as one
without it."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from fastmim.config import EvalConfig
from fastmim.data import usable_workers
from fastmim.data_config import ImageSpec
from fastmim.eval.data import image_folder
from fastmim.eval.features import POOLING_WORDS, eval_transform, extract
from fastmim.eval.knn import knn_accuracy

SUBSET_SEED = 0  # the fixed shuffle each class's images are taken from


def check_folders(cfg: EvalConfig) -> None:
    """On every process, before any work: the folders exist (rank 0 reads them)."""
    for name in ("train", "val"):
        path = getattr(cfg, name)
        if path is not None and not Path(path).is_dir():
            raise ValueError(f"eval.{name} {path!r} is not a folder (a labelled ImageFolder tree is needed)")


def balanced_share(labels: list[int], per_class: int, rank: int, world_size: int) -> list[int]:
    """Indices of the first `per_class` images of every class after a fixed shuffle, then this rank's share of
    each class (every world_size-th of them), so each process's share is class-balanced too."""
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    order = torch.randperm(len(labels), generator=generator).tolist()
    chosen: dict[int, list[int]] = {}
    for index in order:
        members = chosen.setdefault(labels[index], [])
        if len(members) < per_class:
            members.append(index)
    return sorted(i for label in sorted(chosen) for i in chosen[label][rank::world_size])


class KnnMonitor:
    def __init__(self, cfg: EvalConfig, image: ImageSpec, rank: int, world_size: int, pooling: str | None = None):
        """pooling: the feature (cls or mean); None: cfg.pooling."""
        from torch.utils.data import Subset

        self.cfg, self.pooling = cfg, pooling or cfg.pooling
        transform = eval_transform(image.size, image.mean, image.std)
        bank = image_folder(cfg.train, transform)
        queries = image_folder(cfg.val, transform, bank.classes)
        self.bank = Subset(bank, balanced_share(bank.targets, cfg.per_class, rank, world_size))
        self.queries = Subset(queries, balanced_share(queries.targets, cfg.val_per_class, rank, world_size))
        if not len(self.bank) or not len(self.queries):
            raise ValueError(f"the k-NN monitor's share on rank 0 is empty (eval.per_class={cfg.per_class}, "
                             f"eval.val_per_class={cfg.val_per_class} over {world_size} processes): raise them")

    def describe(self) -> str:
        return (f"k-NN monitor: {len(self.bank)} bank and {len(self.queries)} query images on rank 0 "
                f"(k {self.cfg.k}, T {self.cfg.temperature}, {POOLING_WORDS[self.pooling]}), every "
                f"{self.cfg.every} steps and at the end")

    def _loader(self, data):
        from torch.utils.data import DataLoader

        # Its own generator: making the iterator draws a seed, which must not come from the training's stream.
        return DataLoader(data, batch_size=self.cfg.batch_size, shuffle=False,
                          num_workers=usable_workers(self.cfg.workers),
                          generator=torch.Generator().manual_seed(SUBSET_SEED))

    def evaluate(self, model: torch.nn.Module, device: torch.device, autocast) -> dict:
        """{'knn_top1', 'knn_top5', 'knn_seconds'} of `model` (left in the mode it was in)."""
        start = time.perf_counter()
        with autocast:
            bank_features, bank_labels = extract(model, self._loader(self.bank), self.pooling, device)
            query_features, query_labels = extract(model, self._loader(self.queries), self.pooling, device)
        top1, top5 = knn_accuracy(bank_features, bank_labels, query_features, query_labels, self.cfg.k,
                                  self.cfg.temperature)
        return {"knn_top1": top1, "knn_top5": top5, "knn_seconds": time.perf_counter() - start}


class MonitorEvaluator:
    """The monitor as the training loop's evaluator (metrics.Evaluator): due every eval.every steps and at the
    last; rank 0 evaluates `model()`, the other processes wait for it at the logging step's collective."""

    def __init__(self, monitor: KnnMonitor | None, every: int, stop_step: int, model, device, autocast):
        self.monitor, self.every, self.stop_step = monitor, every, stop_step
        self.model, self.device, self.autocast = model, device, autocast

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.stop_step

    def evaluate(self, step: int) -> dict:
        return {} if self.monitor is None else self.monitor.evaluate(self.model(), self.device, self.autocast)

    def describe(self, step: int, result: dict) -> str:
        return (f"k-NN at step {step}: top-1 {result['knn_top1']:.2f} %, top-5 {result['knn_top5']:.2f} % "
                f"({result['knn_seconds']:.1f} s)")
