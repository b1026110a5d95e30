"""Shared test fixtures: real clips from the data cache, cropped small."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cascadevsr.paths import clips_dir
from cascadevsr.video import read_frames

# One intra-op thread for torch here and in every subprocess a test starts: on a shared or busy
# CPU a second OpenMP thread that waits for a core makes small operations many times slower (measured 10-80x
# for tiny models and Real-ESRGAN on small frames), while the tests' tensors are too small to gain from two.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def clip_path(name: str):
    """Path of a fetched real clip; fails with the command to run when the cache lacks it."""
    path = clips_dir() / name
    if not path.exists():
        pytest.fail(f"real clip {name} is not in {clips_dir()}; run `cascadevsr fetch-data` first")
    return path


def shard_with_a_broken_sample(corpus: Path, out: Path) -> Path:
    """A shard of the first two shards' samples with, in the middle, a copy of the first sample whose HR
    video is garbage (key ``broken-clip``): what a loader must skip or report."""
    import io
    import tarfile

    from cascadevsr.datasets.builder import corpus_shards

    members: list[tuple[str, bytes]] = []
    for path in corpus_shards(corpus)[:2]:
        with tarfile.open(path) as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar]
    key = members[0][0].split(".")[0]
    broken = [(n.replace(key, "broken-clip"), b"\x00not a video" * 50 if n.endswith("hr.mp4") else data)
              for n, data in members if n.startswith(key + ".")]
    half = len(members) // 2
    with tarfile.open(out, "w") as tar:
        for name, data in members[:half] + broken + members[half:]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def real_crop(name: str, start: int, count: int, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
    """``count`` frames of clip ``name`` from ``start``, cropped to ``size = (h, w)`` at ``(top, left)``."""
    frames = read_frames(clip_path(name), start, start + count)
    h, w = size
    return np.ascontiguousarray(frames[:, top : top + h, left : left + w])


@pytest.fixture(scope="session")
def city_frames() -> np.ndarray:
    """8 frames of cityCC0 (night city pan, rich detail), 128×128 crop, uint8 (T, H, W, 3)."""
    return real_crop("cityCC0.mpg", 40, 8, 140, 300, (128, 128))


@pytest.fixture(scope="session")
def bikes_frames() -> np.ndarray:
    """8 frames of bikes (street scene with motion), 128×192 crop, uint8 (T, H, W, 3)."""
    return real_crop("bikes.mp4", 10, 8, 72, 200, (128, 192))


@pytest.fixture(scope="session")
def carphone_frames() -> np.ndarray:
    """8 frames of carphone_pristine (whole 176×144 frame), uint8 (T, H, W, 3)."""
    return real_crop("carphone_pristine.mp4", 0, 8, 0, 0, (144, 176))

