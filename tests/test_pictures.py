"""The picture read back from its PNG: the input's pixels exactly, exactly the masked patches greyed, the
reconstruction with the input at every visible patch, the panels where the numbers say they are."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastmim.pictures import GREY, Sheet, draw, figure, numbers, paste, to_json, to_pixels, write_json, write_png
from fastmim.methods.pictures import PictureData
from fastmim.methods.masks import Mask
from fastmim.ops.masked_pixel_loss import patch_targets

from .methods.test_pictures import demo_method, images


def picture(tmp_path, name: str, count: int = 3):
    """(the PNG's pixels [H, W, 3], the numbers, the method's data, the images)."""
    method, x = demo_method(name), images(count)
    data = draw(method, x, seed=0)
    sheet = Sheet(name, 7, [f"image {i}" for i in range(count)], method.image, method.cfg.patch_size)
    fig, boxes = figure(data, x, sheet)
    write_png(fig, tmp_path / "p.png")
    png = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    return png, numbers(data, x, sheet, boxes, seed=0), data, x


def panel(png: np.ndarray, box: list[int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return png[y0:y1, x0:x1]


def blocks(array: np.ndarray, grid: int) -> list[np.ndarray]:
    """The patch blocks of a panel, row-major."""
    side = array.shape[0] // grid
    return [array[r * side:(r + 1) * side, c * side:(c + 1) * side] for r in range(grid) for c in range(grid)]


@pytest.mark.parametrize("name", ["maskalign", "mae", "mrmae", "maskdistill"])
def test_the_mask_column_greys_exactly_the_masked_patches(tmp_path, name):
    png, info, data, x = picture(tmp_path, name)
    scale, grid = info["scale"], info["grid"]
    pixels = to_pixels(x, demo_method(name).image)
    for b, row in enumerate(info["images"]):
        shown = panel(png, row["panels"]["input"])
        assert np.array_equal(shown, pixels[b].repeat(scale, 0).repeat(scale, 1))  # the input, exactly
        masked = set(row["ids_masked"])
        assert masked == set(data.mask.ids_masked[b].tolist())
        for n, (block, original) in enumerate(zip(blocks(panel(png, row["panels"]["mask"]), grid),
                                                  blocks(shown, grid))):
            if n in masked:
                assert (block == GREY).all(), (b, n)
            else:
                assert np.array_equal(block, original), (b, n)
                assert not (block == GREY).all(), (b, n)


@pytest.mark.parametrize("name", ["mae", "mrmae"])
def test_the_pasted_reconstruction_is_the_input_at_every_visible_patch(tmp_path, name):
    png, info, data, x = picture(tmp_path, name)
    grid = info["grid"]
    for b, row in enumerate(info["images"]):
        shown = blocks(panel(png, row["panels"]["input"]), grid)
        pasted = blocks(panel(png, row["panels"]["+ visible"]), grid)
        alone = blocks(panel(png, row["panels"]["reconstruction"]), grid)
        for n in row["ids_keep"]:
            assert np.array_equal(pasted[n], shown[n]) and (alone[n] == GREY).all(), (b, n)
        differs = [not np.array_equal(pasted[n], shown[n]) for n in row["ids_masked"]]
        assert sum(differs) > len(differs) // 2  # a random decoder's prediction is not the input
        for n in row["ids_masked"]:
            assert np.array_equal(alone[n], pasted[n]), (b, n)


def test_the_reconstruction_panel_shows_the_predicted_pixels():
    """A prediction equal to the image's own patches is drawn as the input (paste is patchify's inverse)."""
    x = images(2)
    ids = torch.tensor([[0, 9, 63], [1, 2, 3]])
    again = paste(torch.zeros_like(x), patch_targets(x, ids, 8), ids, 8)
    for b in range(2):
        for n in ids[b].tolist():
            r, c = divmod(n, 8)
            torch.testing.assert_close(again[b, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8],
                                       x[b, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8])


def test_the_numbers_are_the_methods(tmp_path):
    _, info, data, _ = picture(tmp_path, "maskalign")
    assert info["columns"] == ["input", "mask", "teacher attention", "cosine to teacher"]
    assert info["method"] == "maskalign" and info["step"] == 7 and info["grid"] == 4 and info["scale"] == 2
    row = info["images"][1]
    assert row["loss"] == pytest.approx(data.loss[1].item(), rel=1e-5)
    assert row["importance"] == pytest.approx(data.importance[1].tolist(), rel=1e-5)
    similarity = data.similarity[1].tolist()
    assert [v is None for v in row["similarity"]] == [v != v for v in similarity]  # NaN → null
    assert [v for v in row["similarity"] if v is not None] == pytest.approx([v for v in similarity if v == v],
                                                                            rel=1e-5, abs=1e-6)


def test_the_same_picture_twice_is_the_same_bytes(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _, info, _, _ = picture(tmp_path / folder, "mrmae")
        write_json(info, tmp_path / folder / "p.json")
    for file in ("p.png", "p.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_panels_are_exact_at_every_scale(tmp_path):
    """Images of 32, 64 and 224 px (scale 4, 2, 1) are drawn pixel for pixel."""
    from fastmim.data_config import ImageSpec

    for size in (32, 64, 224):
        x = torch.rand(1, 3, size, size) * 4 - 2
        mask = Mask(torch.tensor([[0]]), torch.tensor([[1, 2, 3]]))
        data = PictureData(mask, torch.tensor([0.5]))
        sheet = Sheet("test", None, ["x"], ImageSpec(size), size // 2)
        fig, boxes = figure(data, x, sheet)
        write_png(fig, tmp_path / "p.png")
        png = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
        scale = max(1, 128 // size)
        expected = to_pixels(x, sheet.image)[0].repeat(scale, 0).repeat(scale, 1)
        assert np.array_equal(panel(png, boxes[0]["input"]), expected), size


def test_json_lists_of_numbers_stay_on_one_line():
    value = {"a": [1, 2.5, None], "b": [{"c": "x, y"}], "d": {}, "e": [[1, 2], [3]]}
    text = to_json(value)
    assert json.loads(text) == value
    assert '\n  "a": [1, 2.5, null],\n' in text and '\n    [1, 2],\n' in text
