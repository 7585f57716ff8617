"""Pictures during pretraining (train.picture_every): every picture_every steps and at the end of the schedule,
the picture `python -m fastmim.visualize` draws (fastmim.pictures), on a fixed set of train.picture_images
images of the training data, into DIR/pictures/step_NNNNNN.png and, with train.tensorboard, TensorBoard.

- The images are a fixed draw: a permutation of the training images by a fixed seed, the first that can be read,
  through the evaluation transform (resize to size / 0.875, centre crop): the same images at every picture and
  after a resume. (Webdataset shards: the first images of the first shards.)
- The masks come from a generator seeded with train.seed at every picture, so a picture changes from step to
  step only with the weights, and a resumed run draws the uninterrupted run's pictures. Nothing is drawn from the
  training's random streams, and the method is put back in training mode: a run with pictures trains exactly
  like one without.
- Only rank 0 draws; the other processes wait for it at the logging step's collective. Its time is left out of
  images/s and logged as `picture_seconds`, with the picture's path (`picture`), in metrics.jsonl.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

IMAGES_SEED = 0  # the fixed permutation the pictured images are taken from


def picture_evaluator(cfg, method, output: Path, total_steps: int, device, autocast, is_main: bool):
    """The evaluator when train.picture_every is set and the method draws pictures (a warning when it does not),
    else None. `cfg`: the run's Config."""
    from fastmim.pictures import draws_pictures

    if not cfg.train.picture_every:
        return None
    if not draws_pictures(type(method)):
        warnings.warn(f"train.picture_every: {method.name} draws no pictures; none will be drawn", stacklevel=2)
        return None
    return PictureEvaluator(cfg, method, output, total_steps, device, autocast, is_main)


class PictureEvaluator:
    """A metrics.Evaluator: due every train.picture_every steps and at the last step of the schedule."""

    def __init__(self, cfg, method, output: Path, total_steps: int, device, autocast, is_main: bool):
        self.cfg, self.method, self.output = cfg, method, Path(output)
        self.every, self.total_steps = cfg.train.picture_every, total_steps
        self.device, self.autocast, self.is_main = device, autocast, is_main
        self.images: torch.Tensor | None = None  # read at the first picture (rank 0)
        self.names: list[str] = []

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total_steps

    def evaluate(self, step: int) -> dict:
        if not self.is_main:
            return {}
        from fastmim.pictures import Sheet, draw, figure, write_png

        start = time.perf_counter()
        if self.images is None:
            self.images, self.names = training_images(self.cfg.data, self.cfg.train.picture_images)
        images = self.images.to(self.device)
        with self.autocast:
            data = draw(self.method, images, self.cfg.train.seed)
        sheet = Sheet(self.method.name, step, self.names, self.cfg.data.image, self.cfg.method.patch_size)
        fig, _ = figure(data, images, sheet)
        relative = Path("pictures") / f"step_{step:06d}.png"
        write_png(fig, self.output / relative)
        return {"picture": str(relative), "picture_seconds": time.perf_counter() - start}

    def describe(self, step: int, result: dict) -> str:
        return f"picture at step {step}: {self.output / result['picture']} ({result['picture_seconds']:.1f} s)"


def training_images(data, count: int) -> tuple[torch.Tensor, list[str]]:
    """The pictured images of the training data `data` (a DataConfig): a fixed draw of `count` readable ones."""
    from fastmim.data.folder import ImageFiles, find_inputs
    from fastmim.data.synthetic import SyntheticImages
    from fastmim.eval.features import eval_transform
    from fastmim.pictures import load_images

    def fixed_order(size: int) -> list[int]:
        return torch.randperm(size, generator=torch.Generator().manual_seed(IMAGES_SEED)).tolist()

    if data.path is None or data.backend == "synthetic":
        source = SyntheticImages(data.synthetic_images, data.seed, data.synthetic_size)
        order = fixed_order(len(source))
    else:
        files, shards = find_inputs(data.path)
        if files:
            source, order = ImageFiles(files), fixed_order(len(files))
        else:  # webdataset shards: read in order, a tar has no random access
            source = ShardImages(shards, count)
            order = range(len(source))
    images, names = load_images(source, order, count, eval_transform(data.img_size, data.mean, data.std))
    if images is None:
        raise ValueError(f"train.picture_every: none of the training images in {data.path!r} could be read")
    return images, names


class ShardImages:
    """The first images of webdataset shards (read once, in order) as a source for fastmim.pictures.load_images."""

    def __init__(self, shards: list[str], count: int):
        import io
        import tarfile

        from PIL import Image

        from fastmim.data.folder import is_image

        self.members: list[tuple[str, bytes]] = []
        for shard in shards:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.isfile() and is_image(member.name):
                        self.members.append((f"{shard}:{member.name}", tar.extractfile(member).read()))
                    if len(self.members) >= 2 * count:  # a few spare for unreadable ones
                        break
            if len(self.members) >= 2 * count:
                break
        self._open = lambda data: Image.open(io.BytesIO(data)).convert("RGB")

    def __len__(self) -> int:
        return len(self.members)

    def describe(self, index: int) -> str:
        return self.members[index][0]

    def load(self, index: int):
        return self._open(self.members[index][1])
