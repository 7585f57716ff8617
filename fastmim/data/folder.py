"""Finding the images of a data path: an ImageFolder tree, a flat folder, a list file, or webdataset tar shards.

Everything that can be wrong with the path is found here, when the loader is built, before any work starts:
a missing path, a folder without images, an empty list file, or a list naming files that do not exist.
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

# The formats torchvision's ImageFolder reads; DALI decodes the same ones.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def check_exists(path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data path {str(p)!r} does not exist (give an ImageFolder root, a folder of "
                                "images, a list file or webdataset .tar shards)")
    return p


def find_images(path) -> list[str]:
    """The image files of `path`, in a fixed order: a folder is walked recursively (ImageFolder class
    subfolders or a flat folder of images, sorted by path); any other file is a list file."""
    p = check_exists(path)
    if p.is_dir():
        files = scan_folder(p)
        if not files:
            hint = " (it holds .tar shards: those need the DALI backend)" if find_tar_shards(p) else ""
            raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in data folder {str(p)!r}{hint}")
        return files
    if p.suffix == ".tar":
        raise ValueError(f"data path {str(p)!r} is a webdataset tar shard: read it with the DALI backend")
    return read_list_file(p)


def find_inputs(path) -> tuple[list[str], list[str]]:
    """(image files, []) for a folder of images or a list file; ([], tar shards) for webdataset shards: a .tar
    file, or a folder holding .tar files and no images."""
    p = check_exists(path)
    if p.is_file() and p.suffix == ".tar":
        return [], [str(p)]
    if p.is_dir():
        files = scan_folder(p)
        if files:
            return files, []
        tars = find_tar_shards(p)
        if tars:
            return [], tars
    return find_images(p), []


def scan_folder(root: Path) -> list[str]:
    files = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        files.extend(os.path.join(folder, n) for n in sorted(names) if is_image(n))
    return files


def read_list_file(path: Path) -> list[str]:
    """One image path per line, relative paths resolved against the list file's folder. A trailing integer
    (a class label, as in `train/n01440764/x.JPEG 0`) is ignored; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"data path {str(path)!r} is neither a folder nor a text list file ({error})") from None
    files = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            line = parts[0]
        files.append(str(path.parent / line))
    if not files:
        raise ValueError(f"list file {str(path)!r} names no images")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"list file {str(path)!r} names {len(missing)} files that do not exist, e.g. "
                                + ", ".join(repr(m) for m in missing[:3]))
    return files


def find_tar_shards(path) -> list[str]:
    """Webdataset shards: `path` itself when it is a .tar file, else the .tar files directly in the folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return [str(p)] if p.suffix == ".tar" else []
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir() if f.suffix == ".tar" and f.is_file())
    return []


class ImageFiles:
    """Image files as an indexable source: `load(i)` decodes file i to RGB (raising when it cannot)."""

    def __init__(self, files: list[str]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        return self.files[index]

    def load(self, index: int) -> Image.Image:
        with open(self.files[index], "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")  # convert() decodes the whole file: truncated data raises here
