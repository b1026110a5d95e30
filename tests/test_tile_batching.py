"""Tile batching: running (window, tile) chunks several per model call gives the one-at-a-time result.

A tiny model with random weights (its zero-initialised output layers perturbed too, so every chunk's
velocity matters) upscales real cityCC0 and bikes crops. The clips are 9 frames (3 latent frames, windows
of 2 sharing 1) of 16x24 LR pixels, a 32x48 HR latent in tiles of 12 sharing 4: 2 windows x 4 x 6 tiles =
48 chunks per Euler step. Batches of 5 leave a ragged last batch of 3.

Tolerance: batching only regroups float32 sums inside the model's matrix products (measured differences
up to 4e-7 on outputs in [0, 1]), so float outputs agree to 1e-5 and uint8 outputs to one level (a value
at a rounding boundary may land either side).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import real_crop

from cascadevsr.cli import main as cli_main
from cascadevsr.errors import UserError
from cascadevsr.latent import make_codec
from cascadevsr.train.inference import (
    InferenceConfig,
    load_upscaler,
    model_evaluations,
    to_float_frames,
    upscale_frames,
    upscale_latent,
    upscale_stream,
)
from cascadevsr.train.model import build_model, model_config, save_checkpoint
from cascadevsr.video import read_frames, write_video

TILING = {"steps": 2, "window": 2, "window_overlap": 1, "tile": 12, "tile_overlap": 4}
CHUNKS = 2 * 4 * 6  # windows x tile rows x tile columns per Euler step
ATOL = 1e-5


def random_model(**overrides):
    """The ``tiny`` model, randomly initialised, then every weight perturbed (seeded)."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny", **overrides)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def lr_city() -> np.ndarray:
    """9 frames of cityCC0, 16x24 crop, uint8 (T, H, W, 3)."""
    return real_crop("cityCC0.mpg", 40, 9, 140, 300, (16, 24))


@pytest.fixture(scope="module")
def lr_bikes() -> np.ndarray:
    """9 frames of bikes, 16x24 crop, uint8 (T, H, W, 3)."""
    return real_crop("bikes.mp4", 10, 9, 72, 200, (16, 24))


@pytest.mark.parametrize("attention", ["full", "swin", "sparse_local"])
def test_batched_chunks_reproduce_one_chunk_per_call_on_a_real_clip(lr_city, attention):
    model = random_model(attention=attention)
    codec = make_codec(model.cfg.codec)
    one = upscale_frames(model, codec, lr_city, InferenceConfig(**TILING, tile_batch=1))
    assert one.shape == (9, 3, 64, 96) and one.std() > 0.05
    for batch in (5, CHUNKS):  # a ragged last batch (48 = 9 x 5 + 3), and every chunk in one call
        many = upscale_frames(model, codec, lr_city, InferenceConfig(**TILING, tile_batch=batch))
        torch.testing.assert_close(many, one, atol=ATOL, rtol=0)


def test_batches_keep_each_clip_with_its_own_text(lr_city, lr_bikes):
    """Two clips in one call (B = 2) with different text: chunks of both clips stack without mixing."""
    model = random_model(text_dim=16, text_len=3)
    codec = make_codec(model.cfg.codec)
    lr = codec.encode(torch.stack([to_float_frames(lr_city), to_float_frames(lr_bikes)]))  # (2, C, 3, 8, 12)
    text = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(2))
    one = upscale_latent(model, lr, (32, 48), InferenceConfig(**TILING, tile_batch=1), text=text)
    many = upscale_latent(model, lr, (32, 48), InferenceConfig(**TILING, tile_batch=5), text=text)
    torch.testing.assert_close(many, one, atol=ATOL, rtol=0)
    swapped = upscale_latent(model, lr, (32, 48), InferenceConfig(**TILING, tile_batch=5), text=text.flip(0))
    assert (swapped - one).abs().max() > 100 * ATOL  # the text matters, so a mix-up would show


def test_progress_counts_chunks_and_one_call_per_batch(lr_city):
    model = random_model()
    codec = make_codec(model.cfg.codec)
    icfg = InferenceConfig(**TILING, tile_batch=5)
    calls: list[int] = []
    upscale_frames(model, codec, lr_city, icfg, progress=calls.append)
    assert calls == ([5] * 9 + [3]) * icfg.steps
    assert sum(calls) == model_evaluations(3, (32, 48), icfg) == CHUNKS * icfg.steps


def test_streamed_segments_are_unchanged_by_batching(lr_city):
    model = random_model()
    codec = make_codec(model.cfg.codec)
    read = lambda a, b: lr_city[a:b]  # noqa: E731
    segments = {"segment": 2, "segment_overlap": 1}  # frames 0-4 and 4-8, blended at frame 4
    one = np.concatenate(list(upscale_stream(model, codec, read, 9, InferenceConfig(**TILING, **segments,
                                                                                    tile_batch=1))))
    many = np.concatenate(list(upscale_stream(model, codec, read, 9, InferenceConfig(**TILING, **segments,
                                                                                     tile_batch=7))))
    assert one.shape == (9, 64, 96, 3)
    assert np.abs(many.astype(int) - one.astype(int)).max() <= 1


def test_checkpoint_method_batches_tiles_with_the_same_result(lr_city, tmp_path):
    """``evaluate --checkpoint``'s method: tiles of the training crop (6 LR px -> 12 latent px), batched."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, random_model(), config={"data": {"crop_size": 6}})
    default = load_upscaler(path, steps=2)
    single = load_upscaler(path, steps=2, tile_batch=1)
    assert default.icfg.tile == 12 and default.icfg.tile_batch == InferenceConfig().tile_batch > 1
    batched, one = default(lr_city, (64, 96)), single(lr_city, (64, 96))
    assert one.shape == (9, 64, 96, 3)
    assert np.abs(batched.astype(int) - one.astype(int)).max() <= 1


def test_upscale_command_takes_tile_batch_and_records_it(lr_city, tmp_path):
    path, lr_video = tmp_path / "checkpoint.pt", tmp_path / "lr.mkv"
    save_checkpoint(path, random_model())
    write_video(lr_video, lr_city, fps=25, codec="ffv1")
    tiling = ["--steps", "2", "--window", "2", "--window-overlap", "1", "--tile", "12", "--tile-overlap", "4",
              "--codec", "ffv1"]
    outs = {}
    for batch in ("1", "5"):
        out = tmp_path / f"hr-{batch}.mkv"
        assert cli_main(["upscale", str(lr_video), "--checkpoint", str(path), "--out", str(out), *tiling,
                         "--tile-batch", batch]) == 0
        assert json.loads(out.with_name(out.stem + ".config.json").read_text())["inference"]["tile_batch"] == int(batch)
        outs[batch] = read_frames(out)
    assert outs["1"].shape == (9, 64, 96, 3)
    assert np.abs(outs["5"].astype(int) - outs["1"].astype(int)).max() <= 1


def test_tile_batch_must_be_positive():
    with pytest.raises(UserError, match="tile_batch"):
        InferenceConfig(tile_batch=0)
