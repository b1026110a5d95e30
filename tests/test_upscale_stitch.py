"""Long-video machinery: windows, stitch, and the per-step stitching sampler's bookkeeping."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cascadevsr.train.inference import InferenceConfig, segment_spans, stitch, upscale_latent, windows
from cascadevsr.train.model import model_config


@pytest.mark.parametrize("length,size,overlap", [(1, 5, 2), (5, 5, 2), (6, 5, 2), (7, 4, 1), (23, 5, 2),
                                                 (37, 20, 5), (100, 16, 4), (13, 3, 0)])
def test_windows_cover_the_length_with_the_asked_overlap_and_a_merged_tail(length, size, overlap):
    spans = windows(length, size, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(e - s == min(size, length) for s, e in spans)
    for (s0, e0), (s1, _) in itertools.pairwise(spans):
        assert s0 < s1 <= e0  # no gaps, strictly moving forward
        assert e0 - s1 >= overlap
    assert all(e0 - s1 == overlap for (_, e0), (s1, _) in itertools.pairwise(spans[:-1]))


def test_windows_refuse_impossible_settings():
    with pytest.raises(ValueError):
        windows(10, 4, 4)
    with pytest.raises(ValueError):
        windows(10, 0, 0)


@pytest.mark.parametrize("length", [1, 4, 5, 9, 17, 23, 38, 77])
def test_identity_model_through_windows_and_stitch_reproduces_the_input_exactly(length):
    x = torch.randn(2, 3, length, 4, generator=torch.Generator().manual_seed(length))
    spans = windows(length, 8, 3)
    chunks = [x[:, :, s:e].clone() for s, e in spans]  # what an identity model returns per window
    assert torch.equal(stitch(chunks, spans, length, dim=2), x)


def test_stitch_blends_overlaps_with_a_linear_ramp():
    a, b = torch.zeros(6), torch.ones(6)
    out = stitch([a, b], [(0, 6), (2, 8)], 8, dim=0)
    torch.testing.assert_close(out, torch.tensor([0, 0, 0.2, 0.4, 0.6, 0.8, 1, 1]))
    with pytest.raises(ValueError, match="gap"):
        stitch([a, b], [(0, 6), (7, 13)], 13, dim=0)


def test_segments_start_on_the_codec_frame_grid():
    icfg = InferenceConfig(segment=5, segment_overlap=1)  # 17 video frames per segment, 4 shared
    spans = segment_spans(50, icfg, time_factor=4)
    assert spans[0] == (0, 17) and spans[-1][1] == 50
    assert all(s % 4 == 0 for s, _ in spans[:-1])


class PointwiseModel:
    """A stand-in with the model's inference interface whose velocity is exact and pointwise.

    Its flow carries every latent element to ``target = 2·cond``; windows and tiles must not change that.
    """

    token_concat = False

    def __init__(self):
        self.cfg = model_config("tiny", lr_branch="interp", noise_level=0.0)
        self.calls = 0

    def cond_shape(self, lr_shape, size):
        return (*lr_shape[:-2], *size)

    def condition(self, lr, size, s, noise):
        frames = lr[0].transpose(0, 1)  # (T, C, h, w)
        return torch.nn.functional.interpolate(frames, size=size, mode="nearest").transpose(0, 1)[None]

    def velocity(self, z_t, t, cond, s=None, text=None):
        self.calls += 1
        return (z_t - 2 * cond) / t[0]


def test_windows_and_tiles_do_not_change_a_pointwise_model():
    lr = torch.randn(1, 4, 11, 5, 7, generator=torch.Generator().manual_seed(0))
    whole = PointwiseModel()
    one = upscale_latent(whole, lr, (20, 28), InferenceConfig(steps=4, window=100, tile=100))
    split = PointwiseModel()
    many = upscale_latent(split, lr, (20, 28), InferenceConfig(steps=4, window=4, window_overlap=1, tile=8,
                                                                tile_overlap=3))
    torch.testing.assert_close(many, one, atol=1e-5, rtol=0)
    target = 2 * whole.condition(lr, (20, 28), 0.0, None)
    torch.testing.assert_close(one, target, atol=1e-5, rtol=0)
    chunks = len(windows(11, 4, 1)) * len(windows(20, 8, 3)) * 5
    # Chunks of one step share a shape, so they go through the model tile_batch at a time.
    assert whole.calls == 4 and split.calls == 4 * math.ceil(chunks / InferenceConfig().tile_batch)
