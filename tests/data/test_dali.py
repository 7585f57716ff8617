"""The DALI loader on the CPU (device_id=None, CPU decoder). GPU-only checks are marked cuda."""
import re
import warnings

import pytest
import torch

pytest.importorskip("nvidia.dali")

from fastmim.data import DataConfig, build_loader  # noqa: E402
from fastmim.data.dali import DaliLoader, mim_pipeline  # noqa: E402
from fastmim.data.folder import ImageFiles, find_images  # noqa: E402
from fastmim.data.torchvision import TorchvisionLoader, UnreadableImageWarning  # noqa: E402
from tests.data.helpers import write_garbage_jpeg, write_jpegs, write_tar_shards, write_truncated_jpeg  # noqa: E402

SIZE = (60, 45)  # width, height of the test JPEGs (aspect 4:3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali") / "data"
    write_jpegs(root, 32, size=SIZE, classes=2)
    return root


def config(path, **overrides) -> DataConfig:
    params = dict(path=str(path), backend="dali", img_size=32, batch_size=4, workers=2, seed=3, pin_memory=False)
    params.update(overrides)
    return DataConfig(**params)


def epoch(loader, e=0):
    loader.set_epoch(e)
    return list(loader.batches_with_ids())


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and i == j for (x, i), (y, j) in zip(a, b))


def test_shapes_dtype_layout_and_order(folder):
    loader = build_loader(config(folder))
    assert isinstance(loader, DaliLoader) and len(loader) == 8
    batches = epoch(loader)
    assert len(batches) == 8
    for images, _ in batches:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert images.device.type == "cpu" and images.is_contiguous()
    # the same order as the torchvision loader: DistributedSampler's, cut into full batches
    assert [i for _, ids in batches for i in ids] == loader.sampler.rank_indices(0)


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_whole_image_crops_equal_torchvision_per_image(folder, hflip):
    """Area 1 and the images' own aspect: both pipelines take the whole image, so the same file must give the
    same normalized tensor up to decoder and resampling differences (a wrong mean/std, channel order, layout or
    flip gives differences of 0.3 and more). Tolerance: mean absolute difference below 0.02 per image."""
    cfg = config(folder, scale=(1.0, 1.0), ratio=(SIZE[0] / SIZE[1],) * 2, hflip=hflip, img_size=40)
    dali = {i: x for images, ids in epoch(DaliLoader(cfg)) for i, x in zip(ids, images)}
    tv_loader = TorchvisionLoader(ImageFiles(find_images(folder)), cfg)
    tv = torch.cat(list(tv_loader))
    order = tv_loader.batches.rank_indices(0)[:len(tv)]
    assert sorted(dali) == sorted(order)
    diffs = torch.stack([(dali[i] - tv[k]).abs().mean() for k, i in enumerate(order)])
    assert diffs.max() < 0.02, diffs.max()
    flipped = (dali[order[0]] - tv[0].flip(-1)).abs().mean()
    assert flipped > 0.1  # the test can tell a flipped image from an unflipped one


def test_random_crop_statistics_agree_with_torchvision(folder):
    """Official augmentation in both: per-channel mean and std over 12 epochs of the same 32 images agree within
    0.05 absolute (normalized units). Measured over 6 seeds: the DALI − torchvision difference of these
    statistics averages below 0.001 (no bias) with a seed-to-seed spread (std) of at most 0.015, so 0.05 is
    over 3 spreads; a normalization or colour error moves them by 0.2 and more."""
    cfg = config(folder, batch_size=8)
    dali_loader, tv_loader = DaliLoader(cfg), TorchvisionLoader(ImageFiles(find_images(folder)), cfg)
    dali = torch.cat([x for e in range(12) for x, _ in epoch(dali_loader, e)])
    tv = torch.cat([x for e in range(12) for x in (tv_loader.set_epoch(e), list(tv_loader))[1]])
    assert dali.shape == tv.shape == (384, 3, 32, 32)
    assert (dali.mean((0, 2, 3)) - tv.mean((0, 2, 3))).abs().max() < 0.05
    assert (dali.std((0, 2, 3)) - tv.std((0, 2, 3))).abs().max() < 0.05


def test_crop_windows_within_area_and_aspect_ranges(folder):
    """The loader's pipeline with resize=False returns the decoded crop windows themselves."""
    files = find_images(folder)

    def windows(scale, ratio):
        pipe = mim_pipeline(files=files, labels=list(range(len(files))), scale=scale, ratio=ratio, resize=False,
                            batch_size=32, num_threads=2, device_id=None, seed=1)
        pipe.build()
        images, _ = pipe.run()
        return [images[i].shape() for i in range(len(files))]

    for scale, ratio in [((0.3, 0.5), (0.8, 1.25)), ((0.2, 1.0), (3 / 4, 4 / 3))]:
        shapes = windows(scale, ratio)
        areas = [h * w / (SIZE[0] * SIZE[1]) for h, w, _ in shapes]
        aspects = [w / h for h, w, _ in shapes]
        assert all(c == 3 for _, _, c in shapes)
        assert scale[0] * 0.95 <= min(areas) and max(areas) <= scale[1] * 1.05, (scale, areas)
        assert ratio[0] * 0.95 <= min(aspects) and max(aspects) <= ratio[1] * 1.05, (ratio, aspects)
        assert max(areas) - min(areas) > 0.1  # random windows, not one fixed crop
    # No square of 90 % of a 4:3 image exists: like torchvision, the fallback is the largest centred square.
    assert {tuple(s) for s in windows((0.9, 1.0), (1.0, 1.0))} == {(SIZE[1], SIZE[1], 3)}


def test_two_ranks_cover_the_epoch_once(folder):
    ranks = [DaliLoader(config(folder), rank, 2) for rank in range(2)]
    seen = [[i for _, ids in epoch(r, 1) for i in ids] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 16
    assert sorted(seen[0] + seen[1]) == list(range(32))


def test_same_batches_with_any_thread_count(folder):
    assert same(epoch(DaliLoader(config(folder, workers=1))), epoch(DaliLoader(config(folder, workers=3))))


def test_resume_mid_epoch_and_at_an_epoch_boundary(folder):
    straight = DaliLoader(config(folder))
    first, second = epoch(straight, 0), epoch(straight, 1)
    assert not same(first, second)
    loader = DaliLoader(config(folder))
    loader.set_epoch(1)
    it = loader.batches_with_ids()
    head = [next(it) for _ in range(3)]
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 3 and state["dali_checkpoint"]
    resumed = DaliLoader(config(folder))
    resumed.set_epoch(1)
    resumed.load_state_dict(state)
    assert same(head + list(resumed.batches_with_ids()), second)
    assert same(epoch(DaliLoader(config(folder)), 1), second)  # epoch 1 straight away, no checkpoint needed


@pytest.fixture
def corrupt_folder(tmp_path):
    root = tmp_path / "data"
    write_jpegs(root, 14, size=SIZE, classes=2)
    truncated = write_truncated_jpeg(root / "class_0" / "truncated.jpg", size=SIZE)  # DALI names this one
    garbage = write_garbage_jpeg(root / "class_1" / "garbage.jpg")  # DALI's message does not name this one
    return root, truncated, garbage


def test_corrupt_files_are_skipped_named_and_counted(corrupt_folder, monkeypatch):
    root, truncated, garbage = corrupt_folder
    searched = []  # the files DALI's message did not name are found by decoding the batch's files one by one
    original = DaliLoader._undecodable
    monkeypatch.setattr(DaliLoader, "_undecodable", lambda self, paths: searched.append(paths) or original(self, paths))
    loader = DaliLoader(config(root))
    order = loader.sampler.rank_indices(0)
    batch_of = {f: order.index(loader.files.index(str(f))) // 4 for f in (truncated, garbage)}
    assert batch_of[truncated] != batch_of[garbage]  # so each failure is handled on its own
    with pytest.warns(UnreadableImageWarning) as caught:
        batches = epoch(loader)
    assert searched and all(str(truncated) not in paths for paths in searched)  # the truncated one was named
    messages = " ".join(str(w.message) for w in caught)
    assert str(truncated) in messages and str(garbage) in messages
    assert loader.skipped == 2 and len(batches) == 4
    assert sum(len(images) for images, _ in batches) == 14
    bad = {loader.files.index(str(truncated)), loader.files.index(str(garbage))}
    assert set(loader.state_dict()["bad_files"]) == bad
    assert all(len(images) == len(ids) and not bad & set(ids) for images, ids in batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(epoch(loader, 1)) == 4 and loader.skipped == 4  # counted again when met again


def test_resume_reproduces_the_skipping_run(corrupt_folder):
    root, _, _ = corrupt_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        straight = epoch(DaliLoader(config(root)))
        for n in (1, 3):
            loader = DaliLoader(config(root))
            it = loader.batches_with_ids()
            head = [next(it) for _ in range(n)]
            resumed = DaliLoader(config(root))
            resumed.load_state_dict(loader.state_dict())
            assert same(head + list(resumed.batches_with_ids()), straight), n


def test_only_corrupt_files_in_a_batch_raises_naming_them(tmp_path):
    for i in range(2):
        write_garbage_jpeg(tmp_path / "data" / f"bad_{i}.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="bad_0.jpg"):
            epoch(DaliLoader(config(tmp_path / "data", batch_size=2)))


def test_bad_paths_fail_when_built(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        build_loader(config(tmp_path / "missing_dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        build_loader(config(tmp_path / "empty"))
    (tmp_path / "list.txt").write_text("")
    with pytest.raises(ValueError, match="list.txt"):
        build_loader(config(tmp_path / "list.txt"))
    with pytest.raises(ValueError, match="dali_dtype"):
        build_loader(config(tmp_path / "list.txt", dali_dtype="bfloat16"))


def test_list_file_input(folder, tmp_path):
    files = find_images(folder)
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"{f} {k % 2}\n" for k, f in enumerate(files)))
    assert same(epoch(DaliLoader(config(listing))), epoch(DaliLoader(config(folder))))


def test_webdataset_shards_two_ranks_and_resume(folder, tmp_path):
    images = [p for p in map(__import__("pathlib").Path, find_images(folder))][:24]
    write_tar_shards(tmp_path / "shards", images, shards=3)
    ranks = [DaliLoader(config(tmp_path / "shards"), rank, 2) for rank in range(2)]
    assert [len(r) for r in ranks] == [3, 3]
    seen = [[s for _, ids in r.batches_with_ids(sources=True) for s in ids] for r in ranks]
    names = [re.search(r"sample_(\d+)\.jpg", s).group(1) for part in seen for s in part]
    assert len(names) == 24 and sorted(int(n) for n in names) == list(range(24))
    for images_, _ in epoch(ranks[0], 1):
        assert images_.shape == (4, 3, 32, 32)
    straight = epoch(DaliLoader(config(tmp_path / "shards")), 1)
    loader = DaliLoader(config(tmp_path / "shards"))
    loader.set_epoch(1)
    it = iter(loader)
    head = [next(it) for _ in range(2)]
    resumed = DaliLoader(config(tmp_path / "shards"))
    resumed.load_state_dict(loader.state_dict())
    rest = list(resumed)
    assert all(torch.equal(a, b) for a, (b, _) in zip(head + rest, straight, strict=True))
    single_tar = DaliLoader(config(tmp_path / "shards" / "shard_00.tar"))
    assert len(single_tar) == 2


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_webdataset_corrupt_sample_raises_naming_it(folder, tmp_path, kind):
    images = [p for p in map(__import__("pathlib").Path, find_images(folder))][:8]
    bad = write_truncated_jpeg(tmp_path / "t.jpg", size=SIZE) if kind == "truncated" \
        else write_garbage_jpeg(tmp_path / "g.jpg")
    write_tar_shards(tmp_path / "shards", images, shards=1, extra={"zz_broken.jpg": bad.read_bytes()})
    loader = DaliLoader(config(tmp_path / "shards", batch_size=9))
    with pytest.raises(RuntimeError, match="zz_broken.jpg" if kind == "truncated" else "shard_00.tar"):
        list(loader)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_mixed_decode(folder, dtype):
    """On a GPU: batches on the device in the asked dtype, whole-image crops close to the CPU pipeline's, and
    the GPU pipeline resumes exactly too."""
    device = torch.device("cuda", 0)
    cfg = config(folder, scale=(1.0, 1.0), ratio=(SIZE[0] / SIZE[1],) * 2, hflip=0.0, dali_dtype=dtype)
    gpu = epoch(DaliLoader(cfg, device=device))
    cpu = {i: x for images, ids in epoch(DaliLoader(cfg)) for i, x in zip(ids, images)}
    for images, ids in gpu:
        assert images.device == device and images.dtype == getattr(torch, dtype)
        assert images.shape == (4, 3, 32, 32)
        for i, x in zip(ids, images.float().cpu()):
            assert (x - cpu[i]).abs().mean() < 0.05
    loader = DaliLoader(config(folder, dali_dtype=dtype), device=device)
    straight = epoch(loader)
    loader = DaliLoader(config(folder, dali_dtype=dtype), device=device)
    it = loader.batches_with_ids()
    head = [next(it) for _ in range(3)]
    resumed = DaliLoader(config(folder, dali_dtype=dtype), device=device)
    resumed.load_state_dict(loader.state_dict())
    assert same(head + list(resumed.batches_with_ids()), straight)


def test_color_jitter_changes_colours_within_its_range(folder):
    """The same crops with and without jitter (one seed): jittered images differ, by a factor in range."""
    def mean_levels(jitter):
        pipe = mim_pipeline(files=find_images(folder), labels=list(range(32)), img_size=32, batch_size=32,
                            num_threads=2, device_id=None, seed=1, jitter=jitter, mean=(0, 0, 0), std=(1, 1, 1),
                            hflip=0.0)
        pipe.build()
        images, _ = pipe.run()
        return torch.tensor([float(images.as_array()[i].mean()) for i in range(32)])

    plain, jittered = mean_levels(0.0), mean_levels(0.4)
    ratio = jittered / plain
    assert (ratio - 1).abs().max() > 0.1 and ratio.min() > 0.2 and ratio.max() < 2.5, ratio
