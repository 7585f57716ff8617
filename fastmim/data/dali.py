"""The DALI loader: JPEG decode + random-resized-crop on the GPU (`mixed` device), or on the CPU without one.

Pipeline (the official MaskAlign augmentation): fn.readers.file (image files) or fn.readers.webdataset (.tar
shards) → fn.decoders.image_random_crop (area cfg.scale, aspect cfg.ratio, 10 attempts) → fn.resize to
img_size × img_size, cubic, antialiased → fn.crop_mirror_normalize (fn.random.coin_flip(cfg.hflip) mirror,
mean/std × 255, NCHW). Output: [B, 3, S, S] float32 on the CPU without a GPU; on the GPU with one, in
cfg.dali_dtype (float32 or float16; DALI has no bfloat16).

Order and sharding. One pipeline per epoch, seeded from (seed, epoch, rank):
- Image files (ImageFolder tree, flat folder, list file): the order is the torchvision loader's, i.e.
  DistributedSampler's (global shuffle with seed + epoch, rank r takes every world_size-th sample), cut into
  full batches; the rank's files of the epoch are handed to fn.readers.file in that order. DALI's own
  random_shuffle is a 1024-sample buffer shuffle that leaves a class-sorted ImageFolder nearly sorted, and its
  contiguous shards differ in size by one, which would give ranks different batch counts (a DDP hang).
- Webdataset shards: fn.readers.webdataset with shard_id=rank, num_shards=world_size, random_shuffle (a
  1024-sample buffer: shuffle samples when writing the shards) and pad_last_batch; the tar order is
  reshuffled every epoch, identically on all ranks.
Last-batch policy, both cases: drop. Every rank yields len(loader) = (N // world_size) // batch_size full
batches per epoch; the remaining samples of the epoch are not read (webdataset: never run).

Exact resume: state_dict() holds the epoch, the batches done and DALI's checkpoint of the epoch's pipeline
(reader position and random-operator states, `enable_checkpointing=True`); load_state_dict() rebuilds that
epoch's pipeline from the checkpoint, so the next batches equal an uninterrupted run's. An epoch boundary
needs no checkpoint: epoch e's pipeline is built directly. Resuming needs the same world size and batch size.

Corrupt images. Image files: skipped. DALI fails the whole batch; the loader names the file (from DALI's
message when it names it, else by decoding that batch's files one by one), warns naming it, counts it in
`loader.skipped`, puts a valid placeholder at the file's place in the reader's list and reruns the batch from
the last checkpoint; the placeholder's row is dropped, so that batch is one image smaller (a batch with no
decodable image raises). The known-bad files are part of state_dict, so a resumed run reproduces this.
Webdataset shards: a file inside a tar cannot be replaced, so a RuntimeError names the sample (tar, offset,
name) when DALI's message names it, else the rank's shards, and asks to remove or re-pack it.
"""
from __future__ import annotations

import re
import tempfile
import warnings
import weakref
from pathlib import Path

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import feed_ndarray
from PIL import Image

from .base import DataConfig
from .folder import find_inputs
from .sampler import ShardedBatchSampler, sample_seed
from .torchvision import UnreadableImageWarning

DTYPES = {"float32": (types.FLOAT, torch.float32), "float16": (types.FLOAT16, torch.float16)}
IMAGE_EXTENSIONS = "jpg;jpeg;png;webp;bmp;tif;tiff"


@pipeline_def(enable_checkpointing=True)
def mim_pipeline(files=None, labels=None, tars=None, index_paths=None, shard_id=0, num_shards=1,
                 decoder_device="cpu", scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), img_size=224, hflip=0.5,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), dtype=types.FLOAT,
                 hw_decoder_load=0.65, resize=True, jitter=0.0):
    """Outputs (images, labels) for files, (images,) for webdataset shards. resize=False returns the raw
    decoded crops (HWC uint8), to inspect the crop windows."""
    if files is not None:
        encoded, labels = fn.readers.file(files=files, labels=labels, name="Reader")
    else:
        encoded = fn.readers.webdataset(
            paths=tars, index_paths=index_paths, ext=[IMAGE_EXTENSIONS], case_sensitive_extensions=False,
            missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards,
            random_shuffle=True, pad_last_batch=True, name="Reader")
    decoder_args = dict(hw_decoder_load=hw_decoder_load) if decoder_device == "mixed" else {}
    images = fn.decoders.image_random_crop(
        encoded, device=decoder_device, output_type=types.RGB, random_area=list(scale),
        random_aspect_ratio=list(ratio), num_attempts=10, **decoder_args)
    if resize:
        images = fn.resize(images, resize_x=img_size, resize_y=img_size, interp_type=types.INTERP_CUBIC,
                           antialias=True)
        if jitter > 0:  # brightness, contrast, saturation ~ U(1 - jitter, 1 + jitter) (DALI: in this order)
            factor = lambda: fn.random.uniform(range=[max(0.0, 1 - jitter), 1 + jitter])  # noqa: E731
            images = fn.color_twist(images, brightness=factor(), contrast=factor(), saturation=factor())
        images = fn.crop_mirror_normalize(
            images, dtype=dtype, output_layout="CHW", mean=[255 * m for m in mean], std=[255 * s for s in std],
            mirror=fn.random.coin_flip(probability=hflip))
    return (images, labels) if files is not None else (images,)


@pipeline_def
def _decode_each(files, decoder_device="cpu"):
    encoded, _ = fn.readers.file(files=files)
    return fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)


class DaliLoader:
    """An ImageLoader (fastmim.data.base) reading cfg.path with DALI, on `device`'s GPU when it is CUDA."""

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu"):
        if cfg.dali_dtype not in DTYPES:
            raise ValueError(f"data.dali_dtype must be one of {', '.join(DTYPES)}, got {cfg.dali_dtype!r}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.gpu = self.device.type == "cuda"
        if self.gpu:
            self.device = torch.device("cuda", self.device.index if self.device.index is not None
                                       else torch.cuda.current_device())
        self.files, self.tars = find_inputs(cfg.path)
        self.skipped = 0
        self.epoch, self._resume_at, self._position, self._checkpoint = 0, 0, 0, None
        self.bad: set[int] = set()  # indices of image files found undecodable (image-file input only)
        self._pipe = None
        self._placeholder_dir = None
        if self.files:
            self.sampler = ShardedBatchSampler(len(self.files), cfg.batch_size, rank, world_size, cfg.seed)
            self._len = len(self.sampler)
            self.num_images = len(self.files)
        else:  # the sample count of webdataset shards is known once DALI has indexed them
            self._pipe = (0, self._build(0, None))
            self.num_images = self._pipe[1].reader_meta("Reader")["epoch_size"]
            self._len = (self.num_images // world_size) // cfg.batch_size

    # --- ImageLoader ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._resume_at = self._position = 0
            self._checkpoint = None
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self._position, "dali_checkpoint": self._checkpoint,
                "bad_files": sorted(self.bad)}

    def load_state_dict(self, state: dict) -> None:
        done = int(state["batches_done"])
        if not 0 <= done <= len(self):
            raise ValueError(f"loader state at batch {done} is outside an epoch of {len(self)} batches")
        if done and state.get("dali_checkpoint") is None:
            raise ValueError("loader state has no DALI checkpoint (was it written by another data backend?)")
        self.epoch, self._resume_at, self._position = int(state["epoch"]), done, done
        self._checkpoint = state.get("dali_checkpoint")
        self.bad = set(state.get("bad_files", ()))

    def __iter__(self):
        return (images for images, _ in self.batches_with_ids())

    def batches_with_ids(self, sources: bool = False):
        """The epoch's batches as (images, ids): ids are the file indices of the rows for image files, and
        with sources=True DALI's source strings ("shard.tar:offset:name") for webdataset shards."""
        epoch, start, checkpoint = self.epoch, self._resume_at, self._checkpoint
        self._resume_at, self._position = 0, start
        return self._run_epoch(epoch, start, checkpoint, sources)

    # --- the epoch's pipeline ---------------------------------------------------------------------------------
    def _epoch_files(self, epoch: int) -> tuple[list[int], list[str]]:
        indices = self.sampler.rank_indices(epoch)[:len(self) * self.cfg.batch_size]
        paths = [self._placeholder() if i in self.bad else self.files[i] for i in indices]
        return indices, paths

    def _build(self, epoch: int, checkpoint):
        cfg = self.cfg
        kwargs = dict(
            decoder_device="mixed" if self.gpu else "cpu", scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
            img_size=cfg.img_size, hflip=cfg.hflip, mean=tuple(cfg.mean), std=tuple(cfg.std),
            dtype=DTYPES[cfg.dali_dtype if self.gpu else "float32"][0], hw_decoder_load=cfg.dali_hw_decoder_load,
            jitter=cfg.color_jitter)
        if self.files:
            kwargs["labels"], kwargs["files"] = self._epoch_files(epoch)
        else:
            order = torch.randperm(len(self.tars), generator=torch.Generator().manual_seed(cfg.seed + epoch))
            kwargs["tars"] = [self.tars[i] for i in order.tolist()]
            kwargs["index_paths"] = _index_files(kwargs["tars"])
            kwargs.update(shard_id=self.rank, num_shards=self.world_size)
        pipe = mim_pipeline(
            **kwargs, batch_size=cfg.batch_size, num_threads=max(1, cfg.workers),
            device_id=self.device.index if self.gpu else None,
            seed=sample_seed(cfg.seed, epoch, self.rank) & 0x7FFFFFFF,
            prefetch_queue_depth=cfg.dali_prefetch, checkpoint=checkpoint)
        pipe.build()
        return pipe

    def _take_pipe(self, epoch: int, checkpoint):
        """The pipeline for `epoch` at `checkpoint`: the one built by __init__ if it fits, else a new one."""
        ready, self._pipe = self._pipe, None
        if ready is not None and ready[0] == epoch and checkpoint is None:
            return ready[1]
        del ready
        return self._build(epoch, checkpoint)

    def _run_epoch(self, epoch: int, start: int, checkpoint, sources: bool):
        if start >= len(self):
            return
        pipe, k = self._take_pipe(epoch, checkpoint), start
        while k < len(self):
            try:
                outputs = pipe.run()
            except RuntimeError as error:
                del pipe
                self._handle_decode_error(error, epoch, k)  # raises unless it found the bad files
                pipe = self._build(epoch, checkpoint)  # rerun batch k with placeholders for them
                continue
            images, ids = self._to_torch(outputs, sources)
            checkpoint = pipe.checkpoint()
            k += 1
            self._position, self._checkpoint = k, checkpoint
            if self.files:
                images, ids = self._drop_bad_rows(images, ids, epoch, k - 1)
            yield images, ids

    def _to_torch(self, outputs, sources: bool):
        dense = outputs[0].as_tensor()
        images = torch.empty(dense.shape(), dtype=DTYPES[self.cfg.dali_dtype if self.gpu else "float32"][1],
                             device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.gpu else None
        feed_ndarray(dense, images, cuda_stream=stream)
        if self.files:
            ids = outputs[1].as_array().reshape(-1).tolist()
        elif sources:
            ids = [outputs[0][i].source_info() for i in range(len(outputs[0]))]
        else:
            ids = None
        return images, ids

    # --- corrupt images ------------------------------------------------------------------------------------------
    def _handle_decode_error(self, error: RuntimeError, epoch: int, batch: int) -> None:
        if not self.files:
            named = sorted(set(re.findall(r"\S+\.tar:\d+:\S+", str(error))))
            where = ", ".join(named) if named else f"one of the shards {', '.join(self.tars)} (rank {self.rank})"
            raise RuntimeError(f"DALI could not read or decode a sample of {where} in batch {batch} of epoch "
                               f"{epoch}; remove it from its shard or re-pack the shards.\nDALI said: "
                               f"{_last_lines(error)}") from None
        b = self.cfg.batch_size
        indices = [i for i in self.sampler.rank_indices(epoch)[batch * b:(batch + 1) * b] if i not in self.bad]
        named = [i for i in indices if self.files[i] in str(error)]
        bad = named or [indices[j] for j in self._undecodable([self.files[i] for i in indices])]
        if not bad:
            raise RuntimeError(f"DALI failed on batch {batch} of epoch {epoch}, but each of its files decodes on "
                               f"its own: {', '.join(self.files[i] for i in indices)}\nDALI said: "
                               f"{_last_lines(error)}") from error
        self.bad.update(bad)

    def _undecodable(self, paths: list[str]) -> list[int]:
        """Positions in `paths` of the files DALI cannot decode, one file per run."""
        bad, pos = [], 0
        while pos < len(paths):
            pipe = _decode_each(paths[pos:], decoder_device="mixed" if self.gpu else "cpu", batch_size=1,
                                num_threads=1, device_id=self.device.index if self.gpu else None,
                                prefetch_queue_depth=1)
            pipe.build()
            try:
                while pos < len(paths):
                    pipe.run()
                    pos += 1
            except RuntimeError:
                bad.append(pos)
                pos += 1
            del pipe
        return bad

    def _drop_bad_rows(self, images: torch.Tensor, ids: list[int], epoch: int, batch: int):
        keep = [row for row, i in enumerate(ids) if i not in self.bad]
        if len(keep) == len(ids):
            return images, ids
        for i in ids:
            if i in self.bad:
                warnings.warn(f"skipped unreadable image {self.files[i]}: DALI could not decode it",
                              UnreadableImageWarning, stacklevel=3)
        self.skipped += len(ids) - len(keep)
        if not keep:
            raise RuntimeError(f"every image of batch {batch} of epoch {epoch} failed to decode: "
                               f"{', '.join(self.files[i] for i in ids)}; remove these files or use a larger batch")
        return images[torch.tensor(keep, device=images.device)], [ids[row] for row in keep]

    def _placeholder(self) -> str:
        """A small valid JPEG that stands in for an undecodable file, so the reader's list keeps its length."""
        if self._placeholder_dir is None:
            self._placeholder_dir = tempfile.TemporaryDirectory(prefix="fastmim_dali_")
            Image.new("RGB", (32, 32), (128, 128, 128)).save(Path(self._placeholder_dir.name) / "placeholder.jpg")
            weakref.finalize(self, self._placeholder_dir.cleanup)
        return str(Path(self._placeholder_dir.name) / "placeholder.jpg")


def _index_files(tars: list[str]) -> list[str] | None:
    """DALI's index files (tools/wds2idx.py) beside the shards as NAME.idx, when every shard has one."""
    index = [str(Path(t).with_suffix(".idx")) for t in tars]
    return index if all(Path(i).is_file() for i in index) else None


def _last_lines(error: Exception, count: int = 4) -> str:
    lines = [line for line in str(error).splitlines() if line.strip() and "no longer valid" not in line]
    return "\n".join(lines[-count:])

