"""The training loader on a real corpus: paired crops are aligned, ranks and workers split without overlap,
and a split that would starve a rank is an error rather than a hang."""

from __future__ import annotations

import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import clip_path

from cascadevsr.datasets.builder import build_corpus, corpus_shards
from cascadevsr.datasets.config import CorpusConfig
from cascadevsr.datasets.loader import decode_clip, pair_dataset, pair_loader
from cascadevsr.errors import UserError

SCALE = 4
# A preset with no random spatial step: the LR clip is exactly the area downscale of the HR clip, so a crop
# of LR must equal the downscale of the matching HR region.
AREA_PRESET = "name: area\ndescription: area downscale only\nsteps: []\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """6 samples (3 clips each of bikes and carphone, 6 frames, HR 96x64 / LR 24x16), one per shard."""
    root = tmp_path_factory.mktemp("loader")
    preset = root / "area.yaml"
    preset.write_text(AREA_PRESET)
    cfg = CorpusConfig(inputs=(str(clip_path("bikes.mp4")), str(clip_path("carphone_pristine.mp4"))),
                       out=str(root / "corpus"), preset=str(preset), clip_frames=6, max_clips_per_video=3,
                       hr_size=(64, 96), scale=float(SCALE), samples_per_shard=1, workers=0)
    report = build_corpus(cfg, show_progress=False, announce=None)
    assert report.complete and report.stats["clips"]["samples"] == 6
    return root / "corpus"


def stored(corpus: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Whole stored clips by key: ``(hr, lr)`` uint8 ``(T, H, W, 3)``."""
    out = {}
    for path in corpus_shards(corpus):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name in members:
            key, _, ext = name.partition(".")
            if ext == "hr.mp4":
                out[key] = (decode_clip(members[name]), decode_clip(members[f"{key}.lr.mp4"]))
    return out


def frames_of(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()  # (T, 3, H, W) -> (T, H, W, 3)


def locate(crop: np.ndarray, whole: np.ndarray) -> tuple[int, bool, bool, int, int]:
    """Where an augmented LR crop ``(t, h, w, 3)`` came from in the whole clip: (t0, hflip, vflip, y, x)."""
    t, h, w = crop.shape[:3]
    found = []
    for t0 in range(whole.shape[0] - t + 1):
        for hf in (False, True):
            for vf in (False, True):
                for y in range(whole.shape[1] - h + 1):
                    for x in range(whole.shape[2] - w + 1):
                        region = whole[t0 : t0 + t, y : y + h, x : x + w]
                        region = region[:, :, ::-1] if hf else region
                        region = region[:, ::-1] if vf else region
                        if np.array_equal(region, crop):
                            found.append((t0, hf, vf, y, x))
    assert len(found) == 1, f"crop found {len(found)} times"
    return found[0]


def test_paired_crops_are_aligned_and_lr_is_the_degradation_of_the_hr_region(corpus):
    whole = stored(corpus)
    ds = pair_dataset(corpus, crop_size=(8, 8), num_frames=4, hflip=True, vflip=True, dtype="uint8", seed=1)
    seen_flips = set()
    for sample in ds:
        hr, lr = frames_of(sample["hr"]), frames_of(sample["lr"])
        assert hr.shape == (4, 32, 32, 3) and lr.shape == (4, 8, 8, 3)
        full_hr, full_lr = whole[sample["__key__"]]
        t0, hf, vf, y, x = locate(lr, full_lr)
        seen_flips.add((hf, vf))
        # HR is the same frames, the same flips, at SCALE times the LR coordinates: exactly.
        region = full_hr[t0 : t0 + 4, SCALE * y : SCALE * (y + 8), SCALE * x : SCALE * (x + 8)]
        region = region[:, :, ::-1] if hf else region
        region = region[:, ::-1] if vf else region
        assert np.array_equal(hr, region)
        # And LR is the degradation (area downscale) of that HR region, up to the HR file's near-lossless
        # coding; the same comparison one LR pixel off is far worse.
        down = np.stack([cv2.resize(f, (8, 8), interpolation=cv2.INTER_AREA) for f in hr]).astype(float)
        aligned = np.abs(down - lr).mean()
        shifted = np.abs(down[:, :, 1:] - lr[:, :, :-1]).mean()
        assert aligned < 1.5 and shifted > 3 * aligned, (aligned, shifted)
    assert len(seen_flips) > 1  # flips do happen


def test_batches_are_float_tensors_in_unit_range(corpus):
    batch = next(iter(pair_loader(corpus, batch_size=2, num_workers=0, crop_size=8)))
    assert batch["hr"].shape == (2, 6, 3, 32, 32) and batch["lr"].shape == (2, 6, 3, 8, 8)
    assert batch["hr"].dtype == torch.float32 and batch["lr"].min() >= 0 and batch["lr"].max() <= 1
    assert len(batch["__key__"]) == 2 and isinstance(batch["params"][0], str)


def keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["__key__"]]


def test_each_ddp_rank_reads_disjoint_samples_that_together_cover_the_corpus(corpus):
    all_keys = set(stored(corpus))
    per_rank = [keys(pair_loader(corpus, batch_size=1, num_workers=0, crop_size=8, rank=r, world_size=2))
                for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(all_keys)


def test_dataloader_workers_split_shards_without_duplicates(corpus):
    got = keys(pair_loader(corpus, batch_size=2, num_workers=2, crop_size=8, rank=1, world_size=2))
    alone = keys(pair_loader(corpus, batch_size=2, num_workers=0, crop_size=8, rank=1, world_size=2))
    assert len(got) == len(set(got)) and sorted(got) == sorted(alone)


def test_too_few_shards_for_ranks_times_workers_is_an_error_not_a_hang(corpus):
    with pytest.raises(UserError, match="6 shard\\(s\\) cannot feed 4 rank\\(s\\) x 2 loader worker"):
        pair_loader(corpus, num_workers=2, rank=0, world_size=4)


def test_resampled_epochs_give_every_rank_the_same_count_and_different_streams(corpus):
    streams = [keys(pair_loader(corpus, batch_size=2, num_workers=0, crop_size=8, resampled=True,
                                samples_per_epoch=10, rank=r, world_size=8)) for r in (0, 5)]
    assert len(streams[0]) == len(streams[1]) == 10  # 8 ranks > 6 shards is fine when resampling
    assert streams[0] != streams[1]


def test_the_same_seed_gives_the_same_stream_and_set_epoch_reshuffles(corpus):
    def run(epoch: int | None) -> list[str]:
        loader = pair_loader(corpus, batch_size=1, num_workers=0, crop_size=8, shuffle_buffer=4, seed=7)
        if epoch is not None:
            loader.dataset.set_epoch(epoch)
        return keys(loader)

    assert run(None) == run(None) == run(0)
    assert sorted(run(1)) == sorted(run(0)) and run(1) != run(0)
