import warnings

import pytest
import torch

from fastmim.data import DataConfig, build_loader, resolve_backend
from fastmim.data.torchvision import TorchvisionLoader, UnreadableImageWarning
from tests.data.helpers import write_garbage_jpeg, write_jpegs, write_truncated_jpeg


def config(**overrides) -> DataConfig:
    params = dict(backend="synthetic", img_size=32, batch_size=4, workers=0, synthetic_images=24, seed=5,
                  synthetic_size=64, pin_memory=False)
    params.update(overrides)
    return DataConfig(**params)


def epoch(loader, e=0):
    loader.set_epoch(e)
    return list(loader)


def test_shapes_dtype_and_normalization():
    loader = build_loader(config(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0)))
    batches = epoch(loader)
    assert len(loader) == len(batches) == 6
    for b in batches:
        assert b.shape == (4, 3, 32, 32) and b.dtype == torch.float32 and not b.is_pinned()
    pixels = torch.cat(batches) * torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1) \
        + torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # un-normalized back into [0, 1]
    assert pixels.std() > 0.1


def test_same_batches_with_any_worker_count_and_new_ones_next_epoch():
    single = epoch(build_loader(config(workers=0)))
    loader = build_loader(config(workers=2))
    assert all(torch.equal(a, b) for a, b in zip(single, epoch(loader), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(single, epoch(loader), strict=True))  # persistent workers
    assert not torch.equal(epoch(loader, 1)[0], single[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_yields_the_remaining_batches(workers):
    straight = epoch(build_loader(config(workers=workers)), 3)
    loader = build_loader(config(workers=workers))
    loader.set_epoch(3)
    it = iter(loader)
    first = [next(it), next(it)]
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_done": 2}
    assert all(torch.equal(a, b) for a, b in zip(first, straight))

    resumed = build_loader(config(workers=workers))
    resumed.set_epoch(3)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    rest = list(resumed)
    assert len(rest) == len(straight) - 2
    assert all(torch.equal(a, b) for a, b in zip(rest, straight[2:], strict=True))
    assert resumed.state_dict() == {"epoch": 3, "batches_done": len(straight)}
    assert len(epoch(resumed, 3)) == len(straight)  # the resume offset is used once
    assert epoch(resumed, 4) and resumed.state_dict() == {"epoch": 4, "batches_done": len(straight)}


def test_two_ranks_cover_the_epoch_once_and_disjoint():
    """Per-sample seeds make an image's augmentation independent of the rank that loads it: the union of the
    ranks' batches equals the single-process epoch's batches as a set of images."""
    whole = torch.cat(epoch(build_loader(config(batch_size=2)), 1))
    parts = [torch.cat(epoch(build_loader(config(batch_size=2), rank, 2), 1)) for rank in range(2)]
    assert all(len(p) == 12 for p in parts)
    key = lambda x: tuple(x.flatten()[::97].tolist())  # noqa: E731
    seen = [key(x) for p in parts for x in p]
    assert len(set(seen)) == 24 and set(seen) == {key(x) for x in whole}


def test_global_rng_is_not_touched():
    loader = build_loader(config(workers=2))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    epoch(loader)
    assert torch.equal(torch.rand(3), expected)


def test_folder_and_list_file_input(tmp_path):
    paths = write_jpegs(tmp_path / "data", 10, classes=2)
    by_folder = epoch(build_loader(config(backend="torchvision", path=str(tmp_path / "data"))))
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("".join(f"{p.relative_to(tmp_path / 'data')} {i % 2}\n" for i, p in enumerate(sorted(paths))))
    by_list = epoch(build_loader(config(backend="torchvision", path=str(listing))))
    assert len(by_folder) == 2
    assert all(torch.equal(a, b) for a, b in zip(by_folder, by_list, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_files_are_skipped_counted_and_named(tmp_path, workers):
    write_jpegs(tmp_path / "data", 14, classes=2)
    truncated = write_truncated_jpeg(tmp_path / "data" / "class_0" / "truncated.jpg")
    garbage = write_garbage_jpeg(tmp_path / "data" / "class_1" / "garbage.jpg")
    loader = build_loader(config(backend="torchvision", path=str(tmp_path / "data"), workers=workers))
    with pytest.warns(UnreadableImageWarning) as caught:
        batches = epoch(loader)
    messages = " ".join(str(w.message) for w in caught)
    assert str(truncated) in messages and str(garbage) in messages
    assert loader.skipped == 2
    assert len(batches) == 4 and sum(len(b) for b in batches) == 14
    assert sorted(len(b) for b in batches)[:2] in ([3, 3], [2, 4])


def test_a_batch_of_only_corrupt_files_raises_naming_them(tmp_path):
    bad = [write_garbage_jpeg(tmp_path / "data" / f"bad_{i}.jpg") for i in range(2)]
    loader = build_loader(config(backend="torchvision", path=str(tmp_path / "data"), batch_size=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="bad_0.jpg"):
            epoch(loader)
    assert loader.skipped == 2 and len(bad) == 2


@pytest.mark.parametrize("backend", ["torchvision", "auto", "dali"])
def test_missing_path_fails_when_built_naming_it(tmp_path, backend, monkeypatch):
    monkeypatch.setattr("fastmim.data.dali_available", lambda: True)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        build_loader(config(backend=backend, path=str(tmp_path / "no_such_folder")))


def test_empty_folder_and_empty_list_fail_when_built(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        build_loader(config(backend="torchvision", path=str(tmp_path / "empty")))
    (tmp_path / "list.txt").write_text("\n")
    with pytest.raises(ValueError, match="list.txt"):
        build_loader(config(backend="torchvision", path=str(tmp_path / "list.txt")))


def test_backend_resolution(monkeypatch):
    monkeypatch.setattr("fastmim.data.dali_available", lambda: True)
    assert resolve_backend(config(backend="auto", path="x")) == "dali"
    assert resolve_backend(config(backend="auto", path=None)) == "synthetic"
    assert resolve_backend(config(backend="torchvision", path=None)) == "synthetic"
    assert resolve_backend(config(backend="synthetic", path="x")) == "synthetic"
    monkeypatch.setattr("fastmim.data.dali_available", lambda: False)
    assert resolve_backend(config(backend="auto", path="x")) == "torchvision"
    with pytest.raises(ImportError, match="nvidia-dali-cuda130"):
        resolve_backend(config(backend="dali", path="x"))
    with pytest.raises(ValueError, match="auto, dali, torchvision, synthetic"):
        resolve_backend(config(backend="tfrecord", path="x"))


def test_synthetic_backend_builds_a_torchvision_loader_and_len_counts_full_batches():
    loader = build_loader(config(synthetic_images=27, batch_size=4), rank=1, world_size=2)
    assert isinstance(loader, TorchvisionLoader) and len(loader) == 3  # 13 images per rank → 3 full batches
    assert loader.skipped == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for pinned memory")
@pytest.mark.cuda
def test_batches_are_pinned_for_cuda():
    batch = next(iter(build_loader(config(pin_memory=True), device=torch.device("cuda"))))
    assert batch.is_pinned()
