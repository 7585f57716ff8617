"""Labelled evaluation images: torchvision's ImageFolder with the evaluation transform, the validation set on
the training set's class indices."""
from __future__ import annotations

from pathlib import Path


def image_folder(path: str, transform, classes: list[str] | None = None):
    """ImageFolder at `path`; with `classes` (the training set's), its labels are mapped onto them."""
    from torchvision.datasets import ImageFolder

    if not Path(path).is_dir():
        raise ValueError(f"evaluation folder {str(path)!r} does not exist (an ImageFolder tree is needed)")
    try:
        data = ImageFolder(path, transform=transform)
    except FileNotFoundError as error:  # no class folder, or a class folder without images
        raise ValueError(f"evaluation folder {str(path)!r} is not a labelled ImageFolder tree (one subfolder of "
                         f"images per class): {error}") from None
    if not len(data):
        raise ValueError(f"no images found in evaluation folder {str(path)!r}")
    if classes is not None:
        unknown = sorted(set(data.classes) - set(classes))
        if unknown:
            raise ValueError(f"{str(path)!r} has classes the training set lacks: {', '.join(unknown[:5])}")
        remap = [classes.index(c) for c in data.classes]
        data.samples = [(p, remap[y]) for p, y in data.samples]
        data.targets = [y for _, y in data.samples]
    return data

