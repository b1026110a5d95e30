"""Training loader for corpus shards: webdataset pipeline → torch ``DataLoader`` of aligned LR/HR crops.

Pipeline, per DataLoader worker::

    shard list (split: rank, then worker; or resampled with a per-rank/worker seed)
      → tar reader → shuffle buffer → decode hr.mp4 / lr.mp4 → paired crop + flips → tensors

Splitting. Without ``resampled`` every (rank, worker) reads a disjoint slice of the shard list (shuffled
the same way on every rank each epoch, then cut ``rank::world_size`` and ``worker::num_workers``), so an
epoch sees each sample once. A slice may not be empty: a rank with no data would wait forever in the
first collective of DDP, so too few shards is an error up front. Ranks may still get unequal sample
counts; for DDP prefer ``resampled=True`` with ``samples_per_epoch``, which gives every rank the same
number of batches (webdataset's recommended setup).

Pairing. The crop is drawn on the LR grid with albumentations and replayed on the HR frames at ``scale``
times the coordinates, with the same flips, applied identically to every frame (albumentations' ``images``
target), so ``HR crop = scale × LR crop`` exactly.

Hooks. ``pair_dataset(pairs=...)`` replaces the decode + crop stage with the caller's own per-sample
function (the trainer's latent-cache lookup is one), keeping the shard split, the shuffle buffer and the
epoch reseeding; ``handler`` may be a function deciding what a bad sample does. Such a stage reseeds its own
draws from :func:`sample_seed` and the pipeline's :class:`Epoch`, as the built-in stages do.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from cascadevsr.errors import UserError

log = logging.getLogger(__name__)

HANDLERS = {"raise": wds.reraise_exception, "warn": wds.warn_and_continue, "ignore": wds.ignore_and_continue}

Handler = str | Callable[[BaseException], bool]
"""What a bad sample does: a name in ``HANDLERS`` or ``fn(error) -> bool`` (True: skip it, False: end the
stream; raising stops the loader)."""
SampleFn = Callable[[dict[str, Any]], dict[str, Any]]


def resolve_shards(shards: str | Path | list[str] | tuple[str, ...]) -> list[str]:
    """Shard paths from a corpus folder, a brace pattern (``dir/shard-{000000..000009}.tar``) or a list."""
    from cascadevsr.datasets.builder import corpus_shards

    if isinstance(shards, str | Path) and Path(shards).is_dir():
        urls = corpus_shards(shards)
        if not urls:
            raise UserError(f"{shards} holds no finished, non-empty shard; build the corpus first.")
        return urls
    single = isinstance(shards, str | Path)
    urls = list(wds.shardlists.expand_urls(str(shards))) if single else [str(s) for s in shards]
    if not urls:
        raise UserError("no shards given.")
    return urls


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: explicit values, else torch.distributed, else ``RANK``/``WORLD_SIZE``, else
    ``(0, 1)``."""
    if rank is not None and world_size is not None:
        return rank, world_size
    import os

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker_info() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker; ``(0, 1)`` in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def check_split(num_shards: int, world_size: int, num_workers: int) -> None:
    """Refuse a split that leaves some (rank, worker) without a shard (it would hang DDP, not fail)."""
    readers = world_size * max(1, num_workers)
    if num_shards < readers:
        raise UserError(
            f"{num_shards} shard(s) cannot feed {world_size} rank(s) x {max(1, num_workers)} loader "
            f"worker(s): some would get no data and distributed training would hang. Use fewer workers, "
            f"rebuild with a smaller --samples-per-shard, or pass resampled=True.")


def sample_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (e.g. ``(seed, "augment", epoch, worker, rank)``); the loader's
    stages seed every random draw this way, so a stream depends only on these parts."""
    from cascadevsr.degrade.pipeline import derive_seed

    return derive_seed(*parts)


class Epoch:
    """Epoch number shared by the stages of one pipeline: ``set_epoch`` from the training loop, as with
    ``DistributedSampler``; without it each pass over the same dataset object counts one up (which covers
    ``num_workers=0``; fresh DataLoader workers start from epoch 0 again)."""

    def __init__(self) -> None:
        self.value = -1
        self.explicit = False

    def current(self) -> int:
        """The epoch the running pass uses (0 before the first pass has started)."""
        return max(self.value, 0)


class ShardStream(IterableDataset):
    """First stage: ``{"url": path}`` for the shards this rank and worker read in this epoch."""

    def __init__(self, urls: list[str], epoch: Epoch, *, rank: int, world_size: int, resampled: bool,
                 shuffle: bool, seed: int) -> None:
        super().__init__()
        self.urls, self.epoch, self.rank, self.world_size = urls, epoch, rank, world_size
        self.resampled, self.shuffle, self.seed = resampled, shuffle, seed

    def __iter__(self) -> Iterator[dict[str, str]]:
        if not self.epoch.explicit:
            self.epoch.value += 1
        epoch = self.epoch.current()
        worker, num_workers = worker_info()
        if self.resampled:
            # Independent draws per (rank, worker): streams differ, and every rank has data forever.
            rng = random.Random(sample_seed(self.seed, "resample", epoch, self.rank, worker))
            while True:
                yield {"url": rng.choice(self.urls)}
        check_split(len(self.urls), self.world_size, num_workers)
        order = list(self.urls)
        if self.shuffle:
            # Same permutation on every rank (seed and epoch only), so the slices below stay disjoint.
            random.Random(sample_seed(self.seed, "shards", epoch)).shuffle(order)
        for url in order[self.rank :: self.world_size][worker::num_workers]:
            yield {"url": url}


class ShuffleBuffer:
    """Sample shuffle buffer seeded per (seed, epoch, rank, worker), so runs are reproducible."""

    def __init__(self, size: int, epoch: Epoch, seed: int, rank: int) -> None:
        self.size, self.epoch, self.seed, self.rank = size, epoch, seed, rank

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if self.size <= 1:
            yield from src
            return
        src = iter(src)
        first = next(src, None)
        if first is None:
            return
        # Seeded only after the first sample arrives: the shard stage counts the epoch up when it starts.
        epoch = self.epoch.current()
        rng = random.Random(sample_seed(self.seed, "samples", epoch, self.rank, worker_info()[0]))
        buf: list[dict[str, Any]] = [first]
        for sample in src:
            if len(buf) < self.size:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf


def decode_clip(data: bytes) -> np.ndarray:
    """Decode one stored clip to uint8 ``(T, H, W, 3)`` with the core reader: decord where it was checked to
    match PyAV, PyAV otherwise and wherever decord fails (it rejects some FFV1 frame widths)."""
    from cascadevsr.video import decode_video

    return decode_video(data)


def decode_pair(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw tar sample → ``{"__key__", "hr", "lr"}`` uint8 ``(T, H, W, 3)`` frames, plus ``params`` (JSON text)
    and any ``lr_latent``/``hr_latent`` arrays present."""
    missing = [k for k in ("hr.mp4", "lr.mp4") if k not in sample]
    if missing:
        raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} lacks {missing}")
    out: dict[str, Any] = {"__key__": sample["__key__"], "hr": decode_clip(sample["hr.mp4"]),
                           "lr": decode_clip(sample["lr.mp4"])}
    if "params.json" in sample:
        out["params"] = bytes(sample["params.json"]).decode()
    for name in ("lr_latent", "hr_latent"):
        if f"{name}.npy" in sample:
            out[name] = np.load(io.BytesIO(sample[f"{name}.npy"]))
    return out


class PairAugment:
    """Paired random crop (LR ``crop_size``, HR ``scale ×`` that), flips and an optional temporal window,
    identical on every frame and on both sides; frames become tensors ``(T, 3, H, W)``.

    The crop and flips are drawn by an albumentations ``Compose`` on the LR frames (``images`` target: one
    draw for the whole clip) that reports its applied parameters; the same parameters, scaled, are replayed
    on the HR frames.
    """

    def __init__(self, crop_size: tuple[int, int] | None, hflip: bool, vflip: bool, num_frames: int | None,
                 dtype: str, epoch: Epoch, seed: int, rank: int) -> None:
        self.crop_size, self.hflip, self.vflip, self.num_frames = crop_size, hflip, vflip, num_frames
        self.dtype, self.epoch, self.seed, self.rank = dtype, epoch, seed, rank
        self._compose: Any = None
        self._state: tuple[int, int] | None = None

    def _lr_compose(self) -> Any:
        import albumentations as A

        state = (self.epoch.current(), worker_info()[0])
        if self._compose is None or state != self._state:
            transforms: list[Any] = []
            if self.crop_size:
                transforms.append(A.RandomCrop(*self.crop_size))
            if self.hflip:
                transforms.append(A.HorizontalFlip(p=0.5))
            if self.vflip:
                transforms.append(A.VerticalFlip(p=0.5))
            self._compose = A.Compose(transforms, save_applied_params=True,
                                      seed=sample_seed(self.seed, "augment", *state, self.rank) % 2**32)
            self._rng = np.random.default_rng(sample_seed(self.seed, "window", *state, self.rank))
            self._state = state
        return self._compose

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        import albumentations as A

        hr, lr = sample["hr"], sample["lr"]
        compose = self._lr_compose()
        if len(hr) != len(lr):
            raise ValueError(f"sample {sample['__key__']}: {len(hr)} HR frames but {len(lr)} LR frames")
        if self.num_frames:
            if len(lr) < self.num_frames:
                raise ValueError(f"sample {sample['__key__']} has {len(lr)} frames < num_frames "
                                 f"{self.num_frames}")
            t0 = int(self._rng.integers(0, len(lr) - self.num_frames + 1))
            hr, lr = hr[t0 : t0 + self.num_frames], lr[t0 : t0 + self.num_frames]
        (H, W), (h, w) = hr.shape[1:3], lr.shape[1:3]
        scale = H // h
        if scale < 1 or (scale * h, scale * w) != (H, W):
            raise ValueError(f"sample {sample['__key__']}: HR {W}x{H} is not an integer multiple of LR "
                             f"{w}x{h}; paired crops need an integer scale")
        if self.crop_size and (h < self.crop_size[0] or w < self.crop_size[1]):
            raise ValueError(f"sample {sample['__key__']}: LR {w}x{h} is smaller than crop_size "
                             f"{self.crop_size[1]}x{self.crop_size[0]}")
        res = compose(images=lr)
        hr_transforms: list[Any] = []
        for name, params in res["applied_transforms"]:
            if name == "RandomCrop":
                x0, y0, x1, y1 = params["crop_coords"]
                hr_transforms.append(A.Crop(x0 * scale, y0 * scale, x1 * scale, y1 * scale))
            elif name == "HorizontalFlip":
                hr_transforms.append(A.HorizontalFlip(p=1.0))
            elif name == "VerticalFlip":
                hr_transforms.append(A.VerticalFlip(p=1.0))
        hr_out = A.Compose(hr_transforms)(images=hr)["images"] if hr_transforms else hr
        out = {k: v for k, v in sample.items() if k not in ("hr", "lr")}
        out["hr"], out["lr"] = self._tensor(hr_out), self._tensor(res["images"])
        return out

    def _tensor(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)
        return x.float().div_(255.0) if self.dtype == "float32" else x.contiguous()


class PairDataset(wds.DataPipeline):
    """The loader's webdataset pipeline; ``set_epoch(e)`` reseeds shard order, shuffle and augmentation."""

    def __init__(self, *stages: Any, epoch: Epoch) -> None:
        super().__init__(*stages)
        self._epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch`` for the next pass (call before iterating, as with ``DistributedSampler``)."""
        self._epoch.value, self._epoch.explicit = int(epoch), True


class GuardedMap:
    """A pipeline stage applying ``fn`` to each sample; a sample it fails on goes to ``handler`` as a
    ``ValueError`` naming the sample and its shard (skipped on True, the stream ends on False)."""

    def __init__(self, fn: SampleFn, handler: Callable[[BaseException], bool]) -> None:
        self.fn, self.handler = fn, handler

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in src:
            try:
                out = self.fn(sample)
            except Exception as err:  # the video layer reports corrupt data as UserError too
                if self.handler(ValueError(f"{sample.get('__key__')} in {sample.get('__url__')}: {err}")):
                    continue
                return
            yield out


def map_stage(fn: SampleFn, handler: Handler) -> Any:
    """``fn`` as a per-sample pipeline stage with the loader's error handling (see :data:`Handler`)."""
    if callable(handler):
        return GuardedMap(fn, handler)
    return wds.map(fn, handler=HANDLERS[handler])


def check_handler(handler: Handler) -> None:
    """Refuse a handler that is neither a known name nor a function."""
    if not callable(handler) and handler not in HANDLERS:
        raise UserError(f"unknown handler '{handler}'; choose from {list(HANDLERS)} or pass a function.")


def pair_dataset(shards: str | Path | list[str], *, crop_size: int | tuple[int, int] | None = 64,
                 num_frames: int | None = None, hflip: bool = True, vflip: bool = False,
                 shuffle_buffer: int = 32, resampled: bool = False, shuffle_shards: bool = True,
                 samples_per_epoch: int | None = None, num_workers: int = 0, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, dtype: str = "float32",
                 handler: Handler = "raise", pairs: Callable[[Epoch], SampleFn] | None = None) -> PairDataset:
    """The iterable dataset behind ``pair_loader`` (same arguments); yields one sample dict at a time.

    ``pairs`` replaces the decode + crop + flip stage (``crop_size``, ``num_frames``, the flips and
    ``dtype`` then go unused): it is called once with the pipeline's :class:`Epoch` and returns the
    function applied to every raw tar sample (``__key__``, ``__url__`` and the member bytes by extension,
    e.g. ``hr.mp4``, ``lr_latent.npy``). The returned dataset is a webdataset ``DataPipeline``: further
    stages can be appended with ``.append(stage)``.
    """
    check_handler(handler)
    if dtype not in ("float32", "uint8"):
        raise UserError(f"dtype must be 'float32' or 'uint8', got '{dtype}'.")
    urls = resolve_shards(shards)
    rank, world_size = dist_info(rank, world_size)
    if not resampled:
        check_split(len(urls), world_size, num_workers)
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    epoch = Epoch()
    stages: list[Any] = [
        ShardStream(urls, epoch, rank=rank, world_size=world_size, resampled=resampled,
                    shuffle=shuffle_shards, seed=seed),
        wds.tarfile_to_samples(handler=handler if callable(handler) else HANDLERS[handler]),
        ShuffleBuffer(shuffle_buffer, epoch, seed, rank),
    ]
    if pairs is not None:
        stages.append(map_stage(pairs(epoch), handler))
    else:
        stages += [map_stage(decode_pair, handler),
                   map_stage(PairAugment(crop_size, hflip, vflip, num_frames, dtype, epoch, seed, rank), handler)]
    dataset = PairDataset(*stages, epoch=epoch)
    if samples_per_epoch:
        dataset = dataset.with_epoch(math.ceil(samples_per_epoch / max(1, num_workers)))
    return dataset


def pair_loader(shards: str | Path | list[str], *, batch_size: int = 4, num_workers: int = 2,
                crop_size: int | tuple[int, int] | None = 64, num_frames: int | None = None,
                hflip: bool = True, vflip: bool = False, shuffle_buffer: int = 32, resampled: bool = False,
                shuffle_shards: bool = True, samples_per_epoch: int | None = None, seed: int = 0,
                rank: int | None = None, world_size: int | None = None, dtype: str = "float32",
                handler: Handler = "raise") -> DataLoader:
    """A DataLoader of aligned LR/HR training crops from corpus shards.

    Args:
        shards: corpus folder, brace pattern or list of ``.tar`` paths.
        batch_size: clips per batch; batches hold ``hr`` ``(B, T, 3, s·h, s·w)``, ``lr`` ``(B, T, 3, h, w)``
            (float32 in [0, 1], or uint8 with ``dtype="uint8"``), ``__key__`` and ``params`` (JSON text).
        num_workers: DataLoader worker processes (each reads its own shards).
        crop_size: LR crop ``h`` or ``(h, w)`` in pixels; ``None`` keeps whole frames.
        num_frames: a random window of this many consecutive frames (default all).
        hflip, vflip: random flips, each with probability 0.5.
        shuffle_buffer: samples held for shuffling within a worker (1 disables).
        resampled: draw shards with replacement forever (use with ``samples_per_epoch``); the DDP-safe mode.
        shuffle_shards: shuffle the shard order each epoch (without ``resampled``).
        samples_per_epoch: samples per rank per epoch (split over the workers); needed with ``resampled``.
        seed: base seed of shard order, shuffle buffer and augmentation.
        rank, world_size: DDP position; default from torch.distributed or ``RANK``/``WORLD_SIZE``.
        handler: what a bad sample does: ``raise`` (default), ``warn`` (log and skip), ``ignore``, or a
            function ``fn(error) -> bool`` (True skips the sample; see :data:`Handler`).
    """
    if resampled and not samples_per_epoch:
        raise UserError("resampled=True streams forever; give samples_per_epoch as well.")
    dataset = pair_dataset(shards, crop_size=crop_size, num_frames=num_frames, hflip=hflip, vflip=vflip,
                           shuffle_buffer=shuffle_buffer, resampled=resampled, shuffle_shards=shuffle_shards,
                           samples_per_epoch=samples_per_epoch, num_workers=num_workers, seed=seed, rank=rank,
                           world_size=world_size, dtype=dtype, handler=handler)
    # Not persistent: each epoch's workers get a fresh copy of the dataset, so set_epoch() reaches them.
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)


def sample_params(sample: dict[str, Any]) -> dict[str, Any]:
    """The ``params.json`` record of a decoded sample (as yielded by ``pair_dataset``)."""
    return json.loads(sample["params"])
