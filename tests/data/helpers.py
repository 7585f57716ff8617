"""Tiny image folders for the data tests: structured synthetic pictures saved as JPEG, and broken files."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from fastmim.data.synthetic import render

GARBAGE = b"\xff\xd8\xff\xe0 this is not a jpeg at all " * 4


def write_jpegs(folder: Path, count: int, size=(48, 40), classes: int = 1, start: int = 0) -> list[Path]:
    """`count` JPEGs of width×height `size` spread over `classes` subfolders (flat when classes == 0)."""
    paths = []
    for i in range(start, start + count):
        sub = folder / f"class_{i % classes}" if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i:04d}.jpg"
        picture = Image.fromarray(render(7, i, max(size))).resize(size, Image.BILINEAR)
        picture.save(path, quality=90)
        paths.append(path)
    return paths


def write_truncated_jpeg(path: Path, size=(48, 40)) -> Path:
    """A real JPEG cut in half: the header parses, the decode fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(3, 0, max(size))).resize(size).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_garbage_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE)
    return path


def write_tar_shards(folder: Path, images: list[Path], shards: int, extra: dict[str, bytes] | None = None) -> list[Path]:
    """Webdataset shards: image k goes to shard k % shards as sample_{k:04d}.jpg with a .cls component."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    tars = [folder / f"shard_{s:02d}.tar" for s in range(shards)]
    members = [[] for _ in range(shards)]
    for k, image in enumerate(images):
        members[k % shards].append((f"sample_{k:04d}.jpg", image.read_bytes()))
        members[k % shards].append((f"sample_{k:04d}.cls", str(k).encode()))
    for name, data in (extra or {}).items():
        members[0].append((name, data))
    for tar_path, entries in zip(tars, members):
        with tarfile.open(tar_path, "w") as tar:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return tars
