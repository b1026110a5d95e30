"""Temporal-consistency metrics and the alignment check, on real clips cropped small."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cascadevsr.evaluate import temporal
from cascadevsr.evaluate.metrics import create_metric


def _t(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)


def _flicker(frames: np.ndarray, amplitude: float, seed: int = 0) -> np.ndarray:
    """Brightness flicker: each frame scaled by 1 ± amplitude (random sign per frame)."""
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(len(frames), 1, 1, 1))
    return np.clip(frames * (1 + amplitude * signs), 0, 255).round().astype(np.uint8)


def test_warp_error_is_zero_for_a_clip_against_itself(city_frames):
    clip = _t(city_frames[:5])
    scores = create_metric("warp_error")(clip, clip)
    assert np.isnan(scores[0].item())
    assert scores[1:].tolist() == pytest.approx([0.0] * 4, abs=1e-12)
    assert create_metric("tdiff")(clip, clip)[1:].tolist() == pytest.approx([0.0] * 4, abs=1e-12)


def test_warp_errors_grow_with_injected_flicker(city_frames):
    gt = city_frames[:5]
    ref = _t(gt)
    levels = (0.0, 0.02, 0.05, 0.10)
    for name in ("warp_error", "ewarp", "tdiff"):
        m = create_metric(name)
        means = [float(np.nanmean(m(_t(_flicker(gt, a)), ref).numpy())) for a in levels]
        assert all(a < b for a, b in itertools.pairwise(means)), f"{name}: {means}"


def test_occluded_pixels_are_masked_by_the_round_trip_check():
    # A forward flow that does not invert the backward flow marks every pixel invalid.
    back = np.zeros((16, 16, 2), np.float32)
    fwd = np.full((16, 16, 2), 5.0, np.float32)
    assert not temporal.warp_and_mask(back, fwd)[2].any()
    assert temporal.warp_and_mask(back, np.zeros_like(fwd))[2].all()


def test_a_method_shifted_by_two_pixels_is_detected(city_frames):
    ref = city_frames[:4]
    moved = np.roll(ref, 2, axis=2)  # content 2 px to the right
    dx, dy = temporal.clip_shift(_t(moved), _t(ref))
    assert dx == pytest.approx(2.0, abs=0.1) and dy == pytest.approx(0.0, abs=0.1)
    dx, dy = temporal.clip_shift(_t(ref), _t(ref))
    assert abs(dx) < 0.05 and abs(dy) < 0.05


def test_sub_pixel_shifts_are_estimated_below_a_pixel(city_frames):
    import cv2

    ref = city_frames[:3]
    m = np.float32([[1, 0, 0.5], [0, 1, -0.25]])  # content 0.5 px right, 0.25 px up
    moved = np.stack([cv2.warpAffine(f, m, f.shape[1::-1], flags=cv2.INTER_CUBIC,
                                     borderMode=cv2.BORDER_REFLECT) for f in ref])
    dx, dy = temporal.clip_shift(_t(moved), _t(ref))
    assert dx == pytest.approx(0.5, abs=0.15) and dy == pytest.approx(-0.25, abs=0.15)


def test_a_frame_without_structure_gives_no_shift():
    flat = np.full((3, 64, 64, 3), 128, np.uint8)
    assert all(np.isnan(temporal.clip_shift(_t(flat), _t(flat))))
