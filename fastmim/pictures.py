"""Pictures of what a method does (DESIGN §1c), drawn by `python -m fastmim.visualize` and, every
`train.picture_every` steps, by the trainer (fastmim.train.pictures). One PNG, a row per image:

- `input`: the image, un-normalized with the data's mean and std;
- `mask`: the same with the patches the method masks greyed (RGB 128, 128, 128), drawn by the method's own code;
- `teacher attention`: where the mask comes from the teacher's CLS attention, that importance over the image in
  grey;
- `reconstruction` (MAE, MR-MAE): the decoder's prediction at the masked patches (un-normalized with each target
  patch's own mean and variance when norm_pix), the visible patches greyed; `+ visible`: the same with the
  visible patches of the input pasted back;
- `cosine to teacher` (MaskAlign, MR-MAE, MaskDistill): per supervised patch, the cosine similarity between the
  prediction and the teacher's target, from -1 to 1, over the image in dark grey (where nothing is supervised);
- above each row the image's name and loss, above all the method and the step.

The method computes the numbers (`Method.picture`, in eval mode, without gradients, every random number from
a generator seeded here); this module lays them out with matplotlib. Every panel is drawn at a whole multiple of
the image's size at whole pixel positions, so that the PNG holds each pixel of the image exactly (enlarged,
nearest neighbour); `numbers` records each panel's box in the PNG beside the numbers behind the picture.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastmim.checkpoint import atomic_write
from fastmim.data_config import ImageSpec
from fastmim.methods.pictures import PictureData

GREY = 128                 # a masked patch's value in every channel
PANEL = 128                # panels are the image enlarged to at least this many pixels a side
DPI = 100
GAP, MARGIN, BAR = 10, 8, 46  # pixels between columns, around the picture, for a colour bar and its labels
TITLE, ROW_TITLE, HEADER = 34, 16, 14  # pixels of the picture's title, a row's title, the column names


@dataclass
class Sheet:
    """What a picture shows besides the method's numbers."""
    method: str
    step: int | None
    names: list[str]        # one per image
    image: ImageSpec        # size, mean and std of the (normalized) images
    patch_size: int


def draw(method, images: torch.Tensor, seed: int) -> PictureData | None:
    """The method's picture of `images` in eval mode without gradients, its random numbers drawn from a generator
    on the images' device seeded with `seed` (so the same seed gives the same masks); the method's mode is
    restored. None when the method draws no pictures."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            return method.picture(images, generator)
    finally:
        method.train(was_training)


def draws_pictures(method_class) -> bool:
    """Whether a method class implements `Method.picture` (the base's draws none)."""
    from fastmim.methods.base import Method

    return method_class.picture is not Method.picture


def load_images(source, order, count: int, transform) -> tuple[torch.Tensor | None, list[str]]:
    """(images [K, 3, H, W], their names): the first `count` images of `source` (fastmim.data's ImageFiles or
    SyntheticImages: `load(i)`, `describe(i)`) in `order` that can be read, through `transform`; an image that
    cannot be read is skipped with a warning. (None, []) when none can."""
    images, names = [], []
    for index in order:
        if len(images) == count:
            break
        try:
            picture = source.load(index)
        except Exception as error:  # truncated, not an image, unreadable: every reader's failure means the same
            from PIL import UnidentifiedImageError

            why = "not an image file PIL can decode" if isinstance(error, UnidentifiedImageError) else error
            warnings.warn(f"cannot read {source.describe(index)} ({why}): skipped", stacklevel=2)
            continue
        images.append(transform(picture))
        names.append(source.describe(index))
    return (torch.stack(images) if images else None), names


# --- patch bookkeeping ---------------------------------------------------------------------------------------

def paste(images: torch.Tensor, patches: torch.Tensor, ids: torch.Tensor, p: int) -> torch.Tensor:
    """`images` [B, C, H, W] with the patches `ids` [B, M] replaced by `patches` [B, M, p²·C] ((p, q, c) order, the
    inverse of ops.masked_pixel_loss's patchify)."""
    b, c, h, w = images.shape
    flat = images.float().reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
    flat = flat.scatter(1, ids[..., None].expand(-1, -1, p * p * c), patches.float())
    return flat.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def to_pixels(images: torch.Tensor, image: ImageSpec) -> np.ndarray:
    """[B, H, W, 3] uint8: normalized images [B, 3, H, W] back to pixels (× std + mean, clipped to [0, 1])."""
    mean = torch.tensor(image.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(image.std, dtype=torch.float32)[:, None, None]
    pixels = (images.detach().float().cpu() * std + mean).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def patch_grid(values: torch.Tensor, grid: int) -> np.ndarray:
    """[B, grid, grid] float64 of per-patch values [B, N] (row-major patches)."""
    return values.detach().double().cpu().reshape(-1, grid, grid).numpy()


def greyed(pixels: np.ndarray, ids: torch.Tensor, grid: int, p: int) -> np.ndarray:
    """`pixels` [B, H, W, 3] with the patches `ids` [B, K] set to GREY."""
    hit = torch.zeros(ids.shape[0], grid * grid, dtype=torch.bool).scatter(1, ids.cpu(), True)
    hit = hit.reshape(-1, grid, 1, grid, 1).expand(-1, grid, p, grid, p).reshape(-1, grid * p, grid * p).numpy()
    out = pixels.copy()
    out[hit] = GREY
    return out


# --- the picture ---------------------------------------------------------------------------------------------

def columns(data: PictureData) -> list[str]:
    names = ["input", "mask"]
    if data.importance is not None:
        names.append("teacher attention")
    if data.reconstruction is not None:
        names += ["reconstruction", "+ visible"]
    if data.similarity is not None:
        names.append("cosine to teacher")
    return names


HEAT_MAPS = {"teacher attention": dict(cmap="viridis"), "cosine to teacher": dict(cmap="coolwarm", vmin=-1, vmax=1)}


def panels(data: PictureData, images: torch.Tensor, sheet: Sheet) -> dict[str, np.ndarray]:
    """Each column's array for every image: RGB uint8 [B, H, W, 3], or for heat maps float [B, grid, grid]."""
    p, grid = sheet.patch_size, sheet.image.size // sheet.patch_size
    pixels = to_pixels(images, sheet.image)
    out = {"input": pixels, "mask": greyed(pixels, data.mask.ids_masked, grid, p)}
    if data.importance is not None:
        out["teacher attention"] = patch_grid(data.importance, grid)
    if data.reconstruction is not None:
        pasted = to_pixels(paste(images, data.reconstruction, data.mask.ids_masked, p), sheet.image)
        out["reconstruction"] = greyed(pasted, data.mask.ids_keep, grid, p)
        out["+ visible"] = pasted
    if data.similarity is not None:
        out["cosine to teacher"] = patch_grid(data.similarity, grid)
    return out


def layout(names: list[str], rows: int, size: int) -> tuple[int, int, int, dict[str, int]]:
    """(scale, width, height, each column's left edge) in pixels."""
    scale = max(1, math.ceil(PANEL / size))
    side, left, x = size * scale, {}, MARGIN
    for name in names:
        left[name] = x
        x += side + (BAR if name in HEAT_MAPS else 0) + GAP
    return scale, x - GAP + MARGIN, TITLE + HEADER + rows * (ROW_TITLE + side + GAP) - GAP + MARGIN, left


def figure(data: PictureData, images: torch.Tensor, sheet: Sheet):
    """(the matplotlib Figure, each image's panel boxes {column: [x0, y0, x1, y1]} in the PNG's pixels)."""
    from matplotlib.figure import Figure

    names, arrays = columns(data), panels(data, images, sheet)
    size, count = sheet.image.size, images.shape[0]
    scale, width, height, left = layout(names, count, size)
    side = size * scale
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.patch.set_facecolor("white")

    def axes_at(x, y, w, h):  # a box given in pixels from the top left
        return fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))

    step = "" if sheet.step is None else f" at step {sheet.step}"
    fig.text(MARGIN / width, 1 - 4 / height, f"{sheet.method}{step}", ha="left", va="top", fontsize=10,
             weight="bold")
    if data.similarity_of:
        fig.text(MARGIN / width, 1 - 20 / height, f"cosine to teacher: prediction vs {data.similarity_of}",
                 ha="left", va="top", fontsize=7)
    for name in names:
        fig.text((left[name] + side / 2) / width, 1 - (TITLE + HEADER - 2) / height, name, ha="center",
                 va="bottom", fontsize=7)
    boxes = []
    for b in range(count):
        top = TITLE + HEADER + b * (ROW_TITLE + side + GAP)
        label = sheet.names[b] if len(sheet.names[b]) <= 60 else "…" + sheet.names[b][-59:]
        fig.text(MARGIN / width, 1 - (top + ROW_TITLE - 3) / height, f"{label}   loss {float(data.loss[b]):.4f}",
                 ha="left", va="bottom", fontsize=7)
        y, row = top + ROW_TITLE, {}
        for name in names:
            ax = axes_at(left[name], y, side, side)
            ax.set_axis_off()
            if name in HEAT_MAPS:
                # the image in grey at half brightness under the map: the patches without a value stay dark
                ax.imshow(arrays["input"][b].mean(axis=-1), cmap="gray", vmin=0, vmax=510, interpolation="nearest")
                heat = ax.imshow(arrays[name][b], interpolation="nearest", alpha=0.75,
                                 extent=(-0.5, size - 0.5, size - 0.5, -0.5), **HEAT_MAPS[name])
                bar = fig.colorbar(heat, cax=axes_at(left[name] + side + 4, y, 8, side))
                bar.ax.tick_params(labelsize=6, length=2)
            else:
                ax.imshow(arrays[name][b], interpolation="nearest")
            row[name] = [left[name], y, left[name] + side, y + side]
        boxes.append(row)
    return fig, boxes


def rounded(values) -> list:
    """Floats to 6 significant digits (NaN → null) for the JSON."""
    return [None if not math.isfinite(v) else float(f"{v:.6g}") for v in values]


def numbers(data: PictureData, images: torch.Tensor, sheet: Sheet, boxes: list[dict], seed: int) -> dict:
    """The numbers behind the picture: per image its loss, the mask, the importance, the similarity, the
    reconstruction's mean squared error per masked patch (in the normalized images' units), and where each
    panel is in the PNG."""
    p, grid = sheet.patch_size, sheet.image.size // sheet.patch_size
    rows = []
    for b, name in enumerate(sheet.names):
        row = {"name": name, "loss": rounded([float(data.loss[b])])[0],
               "ids_keep": data.mask.ids_keep[b].tolist(), "ids_masked": data.mask.ids_masked[b].tolist()}
        if data.importance is not None:
            row["importance"] = rounded(data.importance[b].double().tolist())
        if data.similarity is not None:
            row["similarity"] = rounded(data.similarity[b].double().tolist())
        if data.reconstruction is not None:
            from fastmim.ops.masked_pixel_loss import patch_targets

            target = patch_targets(images[b:b + 1].float(), data.mask.ids_masked[b:b + 1], p)[0]
            error = (data.reconstruction[b].float() - target).square().mean(dim=-1)
            row["reconstruction_mse"] = rounded(error.double().tolist())
        row["panels"] = boxes[b]
        rows.append(row)
    return {"method": sheet.method, "step": sheet.step, "seed": seed, "image_size": sheet.image.size,
            "patch_size": p, "grid": grid, "columns": columns(data), "similarity_of": data.similarity_of or None,
            "scale": (boxes[0]["input"][2] - boxes[0]["input"][0]) // sheet.image.size,
            "images": rows}


def write_png(fig, path: Path) -> None:
    """The figure as a PNG (written beside, then renamed: never half a file)."""
    atomic_write(lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), Path(path))


def to_json(value, indent: str = "") -> str:
    """JSON with one line per field: lists of numbers (masks, maps) on one line each."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        fields = [f"{inner}{json.dumps(key)}: {to_json(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(fields) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return "[\n" + ",\n".join(inner + to_json(item, inner) for item in value) + f"\n{indent}]"
    return json.dumps(value, allow_nan=False)


def write_json(data: dict, path: Path) -> None:
    atomic_write(lambda tmp: Path(tmp).write_text(to_json(data) + "\n"), Path(path))
