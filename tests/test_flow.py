"""The flow op on real clips: still areas untouched, blur along the motion, colours from the previous frame.

Two kinds of input: a controlled clip (a real textured patch sliding over a real still background, so the
motion and the still area are known exactly) and the walking man of ``bikes`` (frames 196-203, area-
downscaled ×2 to 136×320: legs moving up to ~18 px/frame in front of a still street).
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from conftest import clip_path, real_crop

from cascadevsr.degrade import base, flow
from cascadevsr.degrade.flow import (
    MAX_DIRECT_KERNEL_AREA,
    FlowConfig,
    FlowParams,
    _line_kernels,
    _merge_boxes,
    apply_flow,
    motion_magnitude,
    sample_flow,
)
from cascadevsr.video import read_frames

PATCH_TOP, PATCH_LEFT, PATCH_H, PATCH_W = 40, 60, 72, 96
SIZE = (160, 256)


@pytest.fixture(scope="module")
def walk_frames() -> np.ndarray:
    """8 frames of bikes' walking man, area-downscaled to 136×320, float32 (T, H, W, 3) in [0, 1]."""
    frames = read_frames(clip_path("bikes.mp4"), 196, 204)
    small = [cv2.resize(f, (320, 136), interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack(small).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    """A still 160×256 crop of cityCC0 (night street, fine texture), float32 (H, W, 3)."""
    return real_crop("cityCC0.mpg", 40, 1, 100, 200, SIZE)[0].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def patch() -> np.ndarray:
    """A 72×96 crop of bigbuckbunny (colourful texture), float32 (h, w, 3)."""
    return real_crop("bigbuckbunny.mp4", 30, 1, 300, 500, (PATCH_H, PATCH_W))[0].astype(np.float32) / 255.0


def sliding_patch(background, patch, step, num_frames=6, tint=0.0):
    """``patch`` pasted over ``background`` at PATCH_TOP/LEFT + t·step (dy, dx) in frame t.

    ``tint`` shifts the patch's colour by ``(-tint·t, 0, +tint·t)`` per channel, so that the previous
    frame's colours differ from the current ones at corresponding positions.
    """
    frames = np.repeat(background[None], num_frames, axis=0)
    for t in range(num_frames):
        y, x = PATCH_TOP + t * step[0], PATCH_LEFT + t * step[1]
        scale = np.array([1 - tint * t, 1.0, 1 + tint * t], np.float32)
        frames[t, y : y + PATCH_H, x : x + PATCH_W] = np.clip(patch * scale, 0, 1)
    return frames


def patch_box(t, step, inset=0):
    y, x = PATCH_TOP + t * step[0] + inset, PATCH_LEFT + t * step[1] + inset
    return slice(y, y + PATCH_H - 2 * inset), slice(x, x + PATCH_W - 2 * inset)


def ctx_for(frames):
    size = frames.shape[1:3]
    return base.Context(hr_size=size, lr_size=size, fps=25.0)


def params(**overrides) -> FlowParams:
    """Severe settings: large ellipses, full blend and blur; override per test."""
    values = dict(seed=7, blend=True, blur=True, ellipses=[[0.12, 0.08, 40.0]] * 6, blend_strength=0.75,
                  sample_sigma=2.0, length_scale=1.0)
    values.update(overrides)
    return FlowParams(**values)


def psnr(a, b):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def line_blur(image, length, angle_deg):
    """``image`` blurred by the op's own line kernel of ``length`` px at ``angle_deg`` (bins of 15°)."""
    out = image
    for kernel in _line_kernels(round(2 * np.log2(length)), round(angle_deg / 15) % 12, 12, 2):
        out = cv2.filter2D(out, -1, kernel, borderType=cv2.BORDER_REPLICATE)
    return out


def dis_flow(frames, t):
    """DIS FAST flow from frame t to t-1, computed here independently of the op."""
    pair = np.rint(frames[t - 1 : t + 1] * 255).astype(np.uint8)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in pair]
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST).calc(grey[1], grey[0], None)


# --- still areas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [(0, 6), (6, 0), (4, 4)])
def test_still_background_is_untouched_around_a_sliding_patch(background, patch, step):
    frames = sliding_patch(background, patch, step)
    out = apply_flow(frames, params(), ctx_for(frames))
    for t in range(1, len(frames)):
        covered = np.zeros(SIZE, np.uint8)
        covered[patch_box(t - 1, step)] = 1
        covered[patch_box(t, step)] = 1
        # One block (16 px) of cross-fade, one mask cell and DIS's 8-px patches around the moving area.
        still = cv2.dilate(covered, np.ones((49, 49), np.uint8)) == 0
        assert still.mean() > 0.4
        assert psnr(out[t][still], frames[t][still]) > 60.0


def test_still_street_behind_the_walker_is_untouched(walk_frames):
    out = apply_flow(walk_frames, params(), ctx_for(walk_frames))
    magnitude = motion_magnitude(walk_frames)
    for t in range(1, len(walk_frames)):
        calm = ((magnitude[t] < 0.5) & (magnitude[t - 1] < 0.5)).astype(np.uint8)
        still = cv2.erode(calm, np.ones((41, 41), np.uint8)).astype(bool)
        assert still.mean() > 0.2
        assert psnr(out[t][still], walk_frames[t][still]) > 40.0


# --- motion blur ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [(0, 6), (6, 0), (4, 4)])
def test_a_sliding_patch_is_blurred_along_its_motion_not_across(background, patch, step):
    frames = sliding_patch(background, patch, step)
    out = apply_flow(frames, params(blend=False), ctx_for(frames))
    length, angle = float(np.hypot(*step)), float(np.degrees(np.arctan2(step[0], step[1])))
    for t in range(1, len(frames)):
        inside = patch_box(t, step, inset=10)
        along = psnr(out[t][inside], line_blur(frames[t], length, angle)[inside])
        across = psnr(out[t][inside], line_blur(frames[t], length, angle + 90)[inside])
        untouched = psnr(out[t][inside], frames[t][inside])
        # Measured: ~44-47 dB to the along-motion blur, ~35 dB to the other two.
        assert along > across + 6.0 and along > untouched + 6.0, (along, across, untouched)


def test_walker_loses_more_gradient_energy_along_its_motion_than_across(walk_frames):
    out = apply_flow(walk_frames, params(blend=False), ctx_for(walk_frames))
    along_ratios, across_ratios = [], []
    for t in range(1, len(walk_frames)):
        flow = dis_flow(walk_frames, t)
        speed = np.hypot(flow[..., 0], flow[..., 1])
        moving = cv2.erode((speed > 3).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        u, v = flow[..., 0] / np.maximum(speed, 1e-6), flow[..., 1] / np.maximum(speed, 1e-6)

        def energies(image, moving=moving, u=u, v=v):
            grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
            return np.mean((gx * u + gy * v)[moving] ** 2), np.mean((gy * u - gx * v)[moving] ** 2)

        (along_in, across_in), (along_out, across_out) = energies(walk_frames[t]), energies(out[t])
        along_ratios.append(along_out / along_in)
        across_ratios.append(across_out / across_in)
    # Measured: along 0.41, across 0.57 (a line blur of real texture also lowers the cross gradients).
    assert np.mean(along_ratios) < 0.6
    assert np.mean(along_ratios) < 0.8 * np.mean(across_ratios)


def test_frame_zero_is_blurred_with_the_flow_to_frame_one(background, patch):
    step = (0, 6)
    frames = sliding_patch(background, patch, step)
    out = apply_flow(frames, params(blend=False), ctx_for(frames))
    inside = patch_box(0, step, inset=10)
    assert psnr(out[0][inside], line_blur(frames[0], 6.0, 0.0)[inside]) > 40.0


def test_line_kernels_are_normalised_boxes_of_the_requested_length():
    for level in range(2, 10):  # 2 .. 22.6 px
        length = 2.0 ** (level / 2)
        for angle_bin in range(12):
            kernels = _line_kernels(level, angle_bin, 12, 2)
            assert all(k.size <= MAX_DIRECT_KERNEL_AREA for k in kernels)
            assert all(abs(float(k.sum()) - 1.0) < 1e-5 for k in kernels)
            combined = np.ones((1, 1), np.float64)
            for kernel in kernels:
                combined = cv2.filter2D(np.pad(combined, 30), -1, kernel.astype(np.float64),
                                        borderType=cv2.BORDER_CONSTANT)
            ys, xs = np.nonzero(combined > 1e-12)
            weights = combined[ys, xs]
            cy, cx = np.average(ys, weights=weights), np.average(xs, weights=weights)
            theta = np.radians(angle_bin * 15)
            along = (xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta)
            across = (ys - cy) * np.cos(theta) - (xs - cx) * np.sin(theta)
            # A box of length L has variance L²/12; bilinear splatting adds up to ~1/6 px² per factor.
            slack = 0.35 * len(kernels)
            assert abs(np.average(along**2, weights=weights) - length**2 / 12) < slack
            assert np.average(across**2, weights=weights) < slack


# --- colour blending -----------------------------------------------------------------------------------


def smoothed_distance(a, b):
    """Per-pixel L1 colour distance after a σ=2 Gaussian: compares colours, not texture."""
    return np.abs(cv2.GaussianBlur(a, (0, 0), 2) - cv2.GaussianBlur(b, (0, 0), 2)).sum(axis=-1)


def test_blended_colours_move_toward_the_previous_frame_inside_a_tinted_patch(background, patch):
    step = (0, 5)
    frames = sliding_patch(background, patch, step, tint=0.12)
    for seed in range(3):
        out = apply_flow(frames, params(seed=seed, blur=False, ellipses=[[0.25, 0.15, 30.0]] * 3,
                                        sample_sigma=1.0), ctx_for(frames))
        for t in range(1, len(frames)):
            # The previous frame's colours at the true corresponding positions (the patch moved by step).
            previous = frames[t].copy()
            previous[patch_box(t, step)] = frames[t - 1][patch_box(t - 1, step)]
            interior = np.zeros(SIZE, bool)
            interior[patch_box(t, step, inset=12)] = True
            changed = (np.abs(out[t] - frames[t]).max(axis=-1) > 1e-3) & interior
            if changed.sum() < 100:
                continue
            before = smoothed_distance(frames[t], previous)[changed]
            after = smoothed_distance(out[t], previous)[changed]
            assert np.mean(after < before) > 0.95
            assert after.mean() < 0.85 * before.mean()  # measured 0.54-0.77


def test_blended_colours_move_toward_the_flow_warped_previous_frame_on_the_walker(walk_frames):
    out = apply_flow(walk_frames, params(blur=False), ctx_for(walk_frames))
    height, width = walk_frames.shape[1:3]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    ratios, shares = [], []
    for t in range(1, len(walk_frames)):
        flow = dis_flow(walk_frames, t)
        previous = cv2.remap(walk_frames[t - 1], xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        changed = np.abs(out[t] - walk_frames[t]).max(axis=-1) > 1e-3
        assert changed.sum() > 500
        before = smoothed_distance(walk_frames[t], previous)[changed]
        after = smoothed_distance(out[t], previous)[changed]
        ratios.append(after.mean() / before.mean())
        shares.append(np.mean(after < before))
    # Measured: distance ratio 0.64-0.80, 78-91% of changed pixels closer.
    assert np.mean(ratios) < 0.85 and np.mean(shares) > 0.7


def test_blending_only_touches_moving_pixels_and_never_frame_zero(walk_frames):
    out = apply_flow(walk_frames, params(blur=False), ctx_for(walk_frames))
    assert np.array_equal(out[0], walk_frames[0])
    magnitude = motion_magnitude(walk_frames)
    for t in range(1, len(walk_frames)):
        changed = np.abs(out[t] - walk_frames[t]).max(axis=-1) > 1e-4
        # The mask is on 4-px cells of mean flow, closed over 5 cells and feathered over one: it may reach
        # ~16 px past the pixels that move by more than the threshold.
        near_motion = cv2.dilate((magnitude[t] > 1.0).astype(np.uint8), np.ones((33, 33), np.uint8))
        assert changed.any() and not (changed & (near_motion == 0)).any()


# --- contract: determinism, strength, records ---------------------------------------------------------


def test_same_params_give_identical_bytes_and_another_seed_moves_the_ellipses(walk_frames):
    ctx = ctx_for(walk_frames)
    first = apply_flow(walk_frames, params(), ctx)
    assert np.array_equal(apply_flow(walk_frames, params(), ctx), first)
    assert not np.array_equal(apply_flow(walk_frames, params(seed=8), ctx), first)
    cfg = FlowConfig()
    draw = sample_flow(np.random.default_rng(11), cfg, 0.8, 8)
    assert sample_flow(np.random.default_rng(11), cfg, 0.8, 8) == draw


def test_output_does_not_depend_on_opencv_thread_count(walk_frames):
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        single = apply_flow(walk_frames, params(), ctx_for(walk_frames))
        cv2.setNumThreads(4)
        several = apply_flow(walk_frames, params(), ctx_for(walk_frames))
    finally:
        cv2.setNumThreads(threads)
    assert np.array_equal(single, several)


@pytest.mark.parametrize("blend_px, blur_px", [(0, 0), (10**9, 10**9)])
def test_how_work_is_grouped_into_boxes_does_not_change_the_result(walk_frames, monkeypatch, blend_px, blur_px):
    ctx = ctx_for(walk_frames)
    reference = apply_flow(walk_frames, params(), ctx)
    # Never merging nearby boxes, or merging all of them: one call per ellipse and group, or one per kind.
    monkeypatch.setattr(flow, "BLEND_CALL_PX", blend_px)
    monkeypatch.setattr(flow, "BLUR_CALL_PX", blur_px)
    regrouped = apply_flow(walk_frames, params(), ctx)
    # Float rounding, and cv2.blendLinear's 1e-5 in the denominator where a box holds zero weight.
    assert np.abs(regrouped - reference).max() <= 2e-5


def test_merged_boxes_of_one_kind_never_overlap_and_cover_every_input_box():
    rng = np.random.default_rng(3)
    for _ in range(50):
        boxes = []
        for _ in range(int(rng.integers(1, 12))):
            y0, x0 = (int(v) for v in rng.integers(0, 200, 2))
            h, w = (int(v) for v in rng.integers(1, 60, 2))
            boxes.append((y0, y0 + h, x0, x0 + w))
        clusters = _merge_boxes(boxes, margin=4, call_cost=int(rng.integers(0, 3000)), disjoint=True)
        assert sorted(i for members, _ in clusters for i in members) == list(range(len(boxes)))
        for members, (y0, y1, x0, x1) in clusters:
            for i in members:
                by0, by1, bx0, bx1 = boxes[i]
                assert y0 <= by0 and by1 <= y1 and x0 <= bx0 and bx1 <= x1
        for a, (_, (ay0, ay1, ax0, ax1)) in enumerate(clusters):
            for _, (by0, by1, bx0, bx1) in clusters[a + 1 :]:
                assert not (ay0 < by1 and by0 < ay1 and ax0 < bx1 and bx0 < ax1)


def test_frame_sizes_off_the_cell_and_block_grid_work_and_keep_still_areas(walk_frames):
    frames = np.ascontiguousarray(walk_frames[:, 1:134, 3:310])  # 133×307: neither a multiple of 4 nor 16
    out = apply_flow(frames, params(), ctx_for(frames))
    assert out.shape == frames.shape and out.dtype == np.float32
    assert not np.array_equal(out, frames)
    magnitude = motion_magnitude(frames)
    for t in range(1, len(frames)):
        calm = ((magnitude[t] < 0.5) & (magnitude[t - 1] < 0.5)).astype(np.uint8)
        still = cv2.erode(calm, np.ones((41, 41), np.uint8)).astype(bool)
        assert still.mean() > 0.15
        assert psnr(out[t][still], frames[t][still]) > 40.0


def test_strength_zero_is_the_identity_and_small_strength_is_close(walk_frames):
    ctx = ctx_for(walk_frames)
    rng = np.random.default_rng(0)
    mild = sample_flow(rng, FlowConfig(), 0.0, len(walk_frames))
    assert mild.blend_strength == 0.0 and mild.length_scale == 0.0
    assert np.array_equal(apply_flow(walk_frames, mild, ctx), walk_frames)
    slight = sample_flow(rng, FlowConfig(), 0.05, len(walk_frames))
    assert psnr(apply_flow(walk_frames, slight, ctx), walk_frames) > 40.0


def test_apply_leaves_its_input_alone_and_keeps_shape_and_dtype(walk_frames):
    frames = walk_frames.copy()
    out = apply_flow(frames, params(), ctx_for(frames))
    assert np.array_equal(frames, walk_frames)
    assert out.shape == frames.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_params_survive_a_json_round_trip():
    for strength in (0.0, 0.5, 1.0):
        drawn = sample_flow(np.random.default_rng(5), FlowConfig(), strength, 16)
        assert FlowParams(**json.loads(json.dumps(dataclasses.asdict(drawn)))) == drawn


def test_sampled_settings_scale_with_strength():
    cfg = FlowConfig()
    rng = np.random.default_rng(2)
    mild = [sample_flow(rng, cfg, 0.2, 8) for _ in range(200)]
    severe = [sample_flow(rng, cfg, 1.0, 8) for _ in range(200)]
    assert max(p.blend_strength for p in mild) <= 0.15 + 1e-9
    assert max(p.length_scale for p in mild) <= 0.2 + 1e-9
    assert np.mean([len(p.ellipses) for p in severe]) > np.mean([len(p.ellipses) for p in mild])
    for p in severe:
        for semi_major, semi_minor, angle in p.ellipses:
            assert 0.04 <= semi_major <= 0.12 and semi_major / 2.5 - 1e-9 <= semi_minor <= semi_major
            assert 0.0 <= angle < 180.0


def test_one_frame_is_returned_unchanged_and_tiny_frames_are_refused(walk_frames):
    one = walk_frames[:1]
    assert np.array_equal(apply_flow(one, params(), ctx_for(one)), one)
    assert np.array_equal(motion_magnitude(one), np.zeros(one.shape[:3], np.float32))
    tiny = walk_frames[:2, :8, :8]
    with pytest.raises(ValueError, match="at least"):
        apply_flow(tiny, params(), ctx_for(tiny))


def test_short_wide_frames_get_a_flow_without_crashing_dis(walk_frames):
    # OpenCV 5.0's DIS (presets ultrafast and fast) kills the process on frames under 32 rows and 80 px or
    # more wide; the op pads such frames for DIS. The pipeline accepts LR sides down to 16 px.
    frames = np.stack([cv2.resize(f, (120, 24), interpolation=cv2.INTER_AREA) for f in walk_frames])
    for preset in ("ultrafast", "fast"):
        magnitude = motion_magnitude(frames, dis_preset=preset)
        assert magnitude.shape == frames.shape[:3] and np.isfinite(magnitude).all()
    out = apply_flow(frames, params(), ctx_for(frames))
    assert out.shape == frames.shape and np.isfinite(out).all()


def test_bad_config_names_every_wrong_field():
    with pytest.raises(ValueError) as err:
        FlowConfig(dis_preset="slow", blend_strength=[0.0, 1.5], block_size=10, max_kernels=0)
    for name in ("dis_preset", "blend_strength", "block_size", "max_kernels"):
        assert name in str(err.value)


# --- motion magnitude ----------------------------------------------------------------------------------


def test_motion_magnitude_measures_the_slide_in_pixels_per_frame(background, patch):
    step = (3, 4)  # 5 px/frame
    frames = sliding_patch(background, patch, step)
    magnitude = motion_magnitude(frames)
    assert magnitude.shape == frames.shape[:3] and magnitude.dtype == np.float32
    for t in range(1, len(frames)):
        inside = patch_box(t, step, inset=12)
        assert abs(float(np.median(magnitude[t][inside])) - 5.0) < 0.5
        covered = np.zeros(SIZE, np.uint8)
        covered[patch_box(t - 1, step)] = covered[patch_box(t, step)] = 1
        far = cv2.dilate(covered, np.ones((25, 25), np.uint8)) == 0
        assert float(np.median(magnitude[t][far])) < 0.2
    assert np.array_equal(magnitude[0], magnitude[1])  # frame 0 uses the flow 1 -> 0
    as_uint8 = np.rint(frames * 255).astype(np.uint8)
    assert np.allclose(motion_magnitude(as_uint8), magnitude, atol=1e-6)
