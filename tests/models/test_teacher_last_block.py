"""The teacher's last block at the rows a method reads gives the full computation's values at those rows: CLS
and kept patches (MaskAlign, MR-MAE), masked patches without the CLS (MaskDistill), for CLIP and a
register-token DINOv2 teacher. The mask is the caller's: drawn between `begin` and `finish` from the importance
`begin` returns."""
import pytest
import torch

from fastmim import ops
from fastmim.methods.masks import draw_mask
from fastmim.models.teacher import Teacher


def make_teacher(name="vit_base_patch16_clip_quickgelu_224", **kw):
    torch.manual_seed(0)
    return Teacher(name, student_grid=4, weights="random", depth=3, **kw)


def draw(importance, kept=5, device="cpu"):
    """What a method does between begin and finish: a mask of `kept` of the 16 patches."""
    mode = "random" if importance is None else "attention"
    return draw_mask(mode, 1 - kept / 16, 2, 16, device, importance)


def cls_and_kept(mask):
    return ops.cls_and_kept_rows(mask.ids_keep)


def masked_only(mask):
    return mask.ids_masked + 1


@pytest.mark.parametrize("rows_of", [cls_and_kept, masked_only], ids=["cls+kept", "masked"])
@pytest.mark.parametrize("name", ["vit_base_patch16_clip_quickgelu_224", "vit_small_patch14_reg4_dinov2"])
@pytest.mark.parametrize("importance", [True, False])
def test_rows_of_the_last_level_equal_the_full_forward(name, importance, rows_of):
    teacher = make_teacher(name)
    images = torch.randn(2, 3, 64, 64)
    full = teacher(images, [2, 3], importance=importance)
    part = teacher.begin(images, [2, 3], importance=importance)
    assert (part.importance is None) == (not importance)
    mask = draw(part.importance)
    assert mask.ids_keep.shape == (2, 5) and not mask.ids_keep.is_inference()  # the student saves it for backward
    rows = rows_of(mask)
    sparse = teacher.finish(part, rows)
    gathered = lambda levels: levels[:, torch.arange(2)[:, None], rows]  # noqa: E731
    torch.testing.assert_close(gathered(sparse.levels), gathered(full.levels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.levels[0], full.levels[0])  # not the last level: every row, untouched
    masked = torch.ones(2, 17, dtype=torch.bool)
    masked[torch.arange(2)[:, None], rows] = False
    assert (sparse.levels[1][masked] == 0).all()  # rows the block did not run
    if importance:
        torch.testing.assert_close(sparse.importance, full.importance)


def test_all_rows_and_unsupervised_last_level_keep_every_value():
    teacher = make_teacher()
    images = torch.randn(2, 3, 64, 64)
    full = teacher(images, [1, 3])
    dense = teacher.finish(teacher.begin(images, [1, 3]), rows=None)  # every row (batchnorm targets)
    torch.testing.assert_close(dense.levels, full.levels, rtol=1e-5, atol=1e-5)
    # last level not asked for: the last block yields only the importance, rows are not needed
    partial = teacher.begin(images, [1, 2])
    torch.testing.assert_close(partial.importance, full.importance)
    out = teacher.finish(partial, cls_and_kept(draw(partial.importance)))
    torch.testing.assert_close(out.levels[0], full.levels[0])


def test_without_importance_or_last_level_the_last_block_does_not_run():
    teacher = make_teacher()
    part = teacher.begin(torch.randn(2, 3, 64, 64), [1], importance=False)
    assert part.x is None and part.k is None and part.importance is None
    assert teacher.finish(part).levels.shape == (1, 2, 17, 768)


@pytest.mark.cuda
def test_kept_rows_on_cuda_in_bf16_equal_the_full_forward():
    """The trainer's GPU setup: bf16 teacher weights under bf16 autocast."""
    teacher = make_teacher().cuda().to(torch.bfloat16)
    images = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        full = teacher(images, [2, 3])
        part = teacher.begin(images, [2, 3])
        mask = draw(part.importance, device="cuda")
        sparse = teacher.finish(part, cls_and_kept(mask))
    ids = mask.ids_keep
    assert ids.is_cuda and not ids.is_inference()
    rows = torch.cat([torch.zeros_like(ids[:, :1]), ids + 1], dim=1)
    batch = torch.arange(2, device="cuda")[:, None]
    torch.testing.assert_close(sparse.levels[:, batch, rows].float(), full.levels[:, batch, rows].float(),
                               rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(sparse.importance, full.importance)
