"""The loader's public hooks on a real corpus: a ``pairs`` stage replaces decode + crop and keeps the shard
split, order and epoch reseeding; a function handler skips a bad sample (named by key and shard) or ends the
stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import clip_path, shard_with_a_broken_sample

from cascadevsr.datasets.builder import build_corpus
from cascadevsr.datasets.config import CorpusConfig
from cascadevsr.datasets.loader import Epoch, decode_pair, pair_dataset, sample_seed, worker_info
from cascadevsr.errors import UserError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """4 real pairs (2 clips each of bikes and carphone, 5 frames, HR 64x64 / LR 16x16), one per shard."""
    root = tmp_path_factory.mktemp("hooks")
    cfg = CorpusConfig(inputs=(str(clip_path("bikes.mp4")), str(clip_path("carphone_pristine.mp4"))),
                       out=str(root / "corpus"), preset="one_order", clip_frames=5, max_clips_per_video=2,
                       hr_size=(64, 64), scale=4.0, samples_per_shard=1, workers=0)
    assert build_corpus(cfg, show_progress=False, announce=None).complete
    return root / "corpus"


class MeanLuma:
    """A ``pairs`` stage: the clip's mean HR value plus a per-epoch draw, seeded the way the loader's are."""

    def __init__(self, epoch: Epoch) -> None:
        self.epoch = epoch

    def __call__(self, sample: dict) -> dict:
        pair = decode_pair(sample)
        draw = np.random.default_rng(sample_seed(0, "hook", self.epoch.current(), worker_info()[0])).random()
        return {"__key__": sample["__key__"], "mean": float(pair["hr"].mean()), "draw": draw}


def test_a_pairs_stage_sees_every_sample_in_the_default_order_and_the_set_epoch(corpus):
    plain = [s["__key__"] for s in pair_dataset(corpus, crop_size=8, shuffle_buffer=3, seed=5)]
    hooked = pair_dataset(corpus, shuffle_buffer=3, seed=5, pairs=MeanLuma)
    hooked.set_epoch(0)
    first = list(hooked)
    assert [s["__key__"] for s in first] == plain and len(plain) == 4
    assert all(0 < s["mean"] < 255 for s in first)
    hooked.set_epoch(1)
    second = list(hooked)
    assert sorted(s["__key__"] for s in second) == sorted(plain)
    assert first[0]["draw"] != second[0]["draw"]  # the hook's Epoch is the pipeline's


def test_a_pairs_stage_splits_ranks_like_the_default_pipeline(corpus):
    for rank in (0, 1):
        plain = [s["__key__"] for s in pair_dataset(corpus, crop_size=8, rank=rank, world_size=2)]
        hooked = [s["__key__"] for s in pair_dataset(corpus, rank=rank, world_size=2, pairs=MeanLuma)]
        assert hooked == plain and len(plain) == 2


def test_a_function_handler_is_told_which_sample_failed_and_decides(corpus, tmp_path):
    shard = str(shard_with_a_broken_sample(corpus, tmp_path / "mixed.tar"))
    errors: list[BaseException] = []

    def skip(err: BaseException) -> bool:
        errors.append(err)
        return True

    keys = [s["__key__"] for s in pair_dataset([shard], crop_size=8, shuffle_buffer=1, handler=skip)]
    assert len(keys) == 2 and "broken-clip" not in keys
    assert len(errors) == 1 and str(errors[0]).startswith(f"broken-clip in {shard}: ")
    stopped = [s["__key__"] for s in pair_dataset([shard], crop_size=8, shuffle_buffer=1, handler=lambda e: False)]
    assert stopped == keys[:1]  # False ends the stream at the bad sample


def test_an_unknown_handler_name_is_refused(corpus):
    with pytest.raises(UserError, match="unknown handler 'skip'"):
        pair_dataset(corpus, handler="skip")


def test_sample_seeds_are_stable_and_epoch_counts_from_zero():
    assert sample_seed(0, "augment", 1, 0, 2) == sample_seed(0, "augment", 1, 0, 2)
    assert sample_seed(0, "augment", 1, 0, 2) != sample_seed(0, "augment", 2, 0, 2)
    epoch = Epoch()
    assert epoch.current() == 0
    epoch.value = 3
    assert epoch.current() == 3
