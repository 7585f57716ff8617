"""Which samples each rank sees, batch by batch, and the seed of each sample's augmentation.

The order is DistributedSampler's (shuffle with seed + epoch, drop the tail so every rank gets equally many
samples, rank r takes every world_size-th one), then the rank's samples are cut into full batches. A sample's
augmentation seed depends only on (seed, epoch, index), never on the worker that loads it or on where a run
was resumed, which is what makes resume exact.
"""
from __future__ import annotations

import torch

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(x: int) -> int:
    """splitmix64's finalizer: a bijection on 64-bit integers that scatters nearby inputs."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    x = 0
    for part in (seed, epoch, index):
        x = _mix(((x ^ (part & _MASK)) + _GOLDEN) & _MASK)
    return x >> 1  # torch.Generator.manual_seed takes up to 2^63 - 1 without complaint on every version


class ShardedBatchSampler:
    """Batches of (epoch, index) keys for one rank; `epoch` and `start` (the first batch) are read at iter()."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.per_rank = num_samples // world_size
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.per_rank // self.batch_size

    def rank_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        return order[self.rank:self.per_rank * self.world_size:self.world_size]

    def __iter__(self):
        epoch, indices, b = self.epoch, self.rank_indices(self.epoch), self.batch_size
        for k in range(self.start, len(self)):
            yield [(epoch, i) for i in indices[k * b:(k + 1) * b]]
