import pytest

from fastmim.data.sampler import ShardedBatchSampler, sample_seed


def epoch_indices(sampler, epoch, start=0):
    sampler.epoch, sampler.start = epoch, start
    return [i for batch in sampler for (e, i) in batch if e == epoch]


@pytest.mark.parametrize("n,world,batch", [(40, 2, 4), (43, 3, 5), (10, 4, 1)])
def test_ranks_are_disjoint_equal_and_full_batches(n, world, batch):
    samplers = [ShardedBatchSampler(n, batch, rank, world, seed=3) for rank in range(world)]
    per_rank = [epoch_indices(s, 1) for s in samplers]
    lengths = {len(s) for s in samplers}
    assert lengths == {(n // world) // batch}
    assert all(len(p) == len(samplers[0]) * batch for p in per_rank)
    flat = [i for p in per_rank for i in p]
    assert len(flat) == len(set(flat))
    if n % world == 0 and (n // world) % batch == 0:
        assert sorted(flat) == list(range(n))  # the whole epoch, exactly once


def test_shuffle_depends_on_seed_and_epoch_and_matches_distributed_sampler():
    from torch.utils.data import DistributedSampler

    s = ShardedBatchSampler(30, 5, rank=1, world_size=3, seed=7)
    torch_sampler = DistributedSampler(range(30), num_replicas=3, rank=1, shuffle=True, seed=7, drop_last=True)
    torch_sampler.set_epoch(2)
    assert epoch_indices(s, 2) == list(torch_sampler)
    assert epoch_indices(s, 2) != epoch_indices(s, 3)
    assert epoch_indices(s, 2, start=1) == epoch_indices(s, 2)[5:]


def test_sample_seeds_differ():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(100)}
    assert len(seeds) == 900 and all(0 <= x < 2 ** 63 for x in seeds)


def test_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(10, 2, rank=2, world_size=2)
