"""Classical degradation steps: the step contract, and parity with basicsr where it has a counterpart.

Parity results (real 128-px crops, float32 frames in [0, 1]):

* blur / sinc: equal to basicsr's filter2D with basicsr's own kernel for the same parameters (< 3e-6).
* resize: bilinear and bicubic equal torch ``F.interpolate(size=…)`` (< 1e-5); ``area`` equals it for
  integer factors and differs for non-integer ones (torch averages whole covered pixels, cv2 weights partial
  ones): measured max 0.29, mean 0.021 on the city crop; bounded here by 0.35 / 0.03.
* noise: Gaussian and Poisson formulas checked deterministically where possible (levels, vals, gray/colour
  structure), distributions statistically (per-level mean/variance against numpy's Poisson, std against
  basicsr's generators).
* jpeg: byte-equal to ``add_jpg_compression``; vs DiffJPEG (Real-ESRGAN's training JPEG) PSNR ≥ 30 dB
  between the two and within 2.5 dB of each other's distortion.
* USM: ``exact`` equals ``USMSharp`` (< 2e-6); the default pyramid blur within 2.5e-3 (measured max 1.8e-3,
  mean ≤ 1e-4).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

# conftest imports cascadevsr first, which installs the torchvision shim basicsr needs.
from basicsr.data import degradations as bsr
from basicsr.utils import DiffJPEG
from basicsr.utils import img_process_util as bsr_img

from cascadevsr.degrade import base, classical, kernels, sharpen
from cascadevsr.errors import UserError

CTX = base.Context(hr_size=(128, 128), lr_size=(32, 32))
PRESETS_DIR = Path(classical.__file__).parent / "presets"
PI = math.pi

# (config, sample, apply) per op; configs with RealBasicVSR's drift so per-frame lists are exercised.
DRIFT_BLUR = classical.BlurConfig(sigma_x_step=0.02, sigma_y_step=0.02, rotation_step=0.31416,
                                  beta_gaussian_step=0.05, beta_plateau_step=0.1, omega_step=0.0628,
                                  beta_split=False)
STEPS = {
    "blur": (classical.BlurConfig(), classical.sample_blur, classical.apply_blur),
    "blur_drift": (DRIFT_BLUR, classical.sample_blur, classical.apply_blur),
    "sinc": (classical.SincConfig(omega_step=0.0628), classical.sample_sinc, classical.apply_sinc),
    "resize": (classical.ResizeConfig(), classical.sample_resize, classical.apply_resize),
    "resize_to_target": (classical.ResizeToTargetConfig(), classical.sample_resize_to_target,
                         classical.apply_resize_to_target),
    "noise": (classical.NoiseConfig(gaussian_sigma_step=0.1, poisson_scale_step=0.005),
              classical.sample_noise, classical.apply_noise),
    "jpeg": (classical.JpegConfig(quality_step=3), classical.sample_jpeg, classical.apply_jpeg),
}


def as_float(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / np.float32(255.0)


def to_nchw(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))


def to_nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


# ------------------------------------------------------------------------------------- step contract


@pytest.mark.parametrize("name", list(STEPS))
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_same_seed_gives_identical_params_and_output_bytes(name, seed, city_frames):
    cfg, sample, apply = STEPS[name]
    frames = as_float(city_frames)
    first = sample(np.random.default_rng(seed), cfg, 1.0, len(frames))
    second = sample(np.random.default_rng(seed), cfg, 1.0, len(frames))
    assert first == second
    out1, out2 = apply(frames, first, CTX), apply(frames, second, CTX)
    assert out1.dtype == np.float32 and out1.shape[0] == len(frames)
    assert out1.tobytes() == out2.tobytes()


@pytest.mark.parametrize("name", list(STEPS))
def test_params_survive_a_json_round_trip(name):
    cfg, sample, _ = STEPS[name]
    for seed in range(6):
        params = sample(np.random.default_rng(seed), cfg, 0.7, 5)
        again = type(params)(**json.loads(json.dumps(dataclasses.asdict(params))))
        assert again == params
        for value in dataclasses.asdict(params).values():
            assert isinstance(value, str | int | float | bool | list)
            if isinstance(value, list):
                assert len(value) in (0, 5)


@pytest.mark.parametrize("name", list(STEPS))
def test_apply_leaves_its_input_untouched(name, bikes_frames):
    cfg, sample, apply = STEPS[name]
    frames = as_float(bikes_frames)
    before = frames.copy()
    apply(frames, sample(np.random.default_rng(5), cfg, 1.0, len(frames)), CTX)
    assert np.array_equal(frames, before)


def test_strength_zero_gives_the_mildest_values():
    rng = np.random.default_rng(0)
    for _ in range(40):
        blur = classical.sample_blur(rng, DRIFT_BLUR, 0.0, 6)
        assert all(s == 0.2 for s in blur.sigma_x + blur.sigma_y)
        assert all(w == PI for w in blur.omega)
        assert all(b in (4.0, 2.0) for b in blur.beta)
        assert classical.sample_sinc(rng, classical.SincConfig(), 0.0, 3).omega == [PI] * 3
        assert classical.sample_resize(rng, classical.ResizeConfig(), 0.0, 3).scale == 1.0
        noise = classical.sample_noise(rng, classical.NoiseConfig(), 0.0, 3)
        assert noise.sigma in ([], [1.0] * 3) and noise.scale in ([], [0.05] * 3)
        assert classical.sample_jpeg(rng, classical.JpegConfig(quality_step=3), 0.0, 3).quality == [95] * 3


def test_strength_scales_ranges_from_the_mild_end():
    rng = np.random.default_rng(1)
    sigmas = [classical.sample_blur(rng, classical.BlurConfig(kernel_prob={"iso": 1}), 0.5, 1).sigma_x[0]
              for _ in range(300)]
    assert min(sigmas) >= 0.2 and max(sigmas) <= 0.2 + 0.5 * 2.8
    qualities = [classical.sample_jpeg(rng, classical.JpegConfig(), 0.5, 1).quality[0] for _ in range(300)]
    assert min(qualities) >= 62 and max(qualities) == 95


def test_drift_varies_values_per_frame_within_the_range():
    rng = np.random.default_rng(3)
    params = [classical.sample_blur(rng, DRIFT_BLUR, 1.0, 30) for _ in range(30)]
    aniso = next(p for p in params if p.rotation)
    assert len(set(aniso.sigma_x)) > 1 and len(set(aniso.rotation)) > 1
    steps = np.abs(np.diff(aniso.rotation))
    assert steps.max() <= 0.31416 + 1e-12
    assert all(0.2 <= s <= 3.0 for s in aniso.sigma_x + aniso.sigma_y)
    still = classical.sample_blur(np.random.default_rng(3), classical.BlurConfig(), 1.0, 30)
    lists = (still.sigma_x, still.sigma_y, still.rotation, still.beta, still.omega)
    assert all(len(set(v)) <= 1 for v in lists)


def test_bad_config_values_are_all_reported_at_once():
    with pytest.raises(UserError) as err:
        bad = {"kernel_size": [8, 9], "kernel_prob": {"box": 1}}
        base.config_from_dict(classical.BlurConfig, bad, "blur")
    assert "kernel_size" in str(err.value) and "box" in str(err.value)
    with pytest.raises(UserError, match="relative_to"):
        base.config_from_dict(classical.ResizeConfig, {"relative_to": "output"}, "resize")
    with pytest.raises(UserError, match="unknown parameter"):
        base.config_from_dict(classical.JpegConfig, {"qualty": [95, 30]}, "jpeg")


@pytest.mark.parametrize("preset", ["realesrgan", "realbasicvsr", "one_order"])
def test_presets_parse_into_step_configs(preset):
    configs = {"blur": classical.BlurConfig, "sinc": classical.SincConfig, "resize": classical.ResizeConfig,
               "resize_to_target": classical.ResizeToTargetConfig, "noise": classical.NoiseConfig,
               "jpeg": classical.JpegConfig}
    seen = []

    def walk(steps):
        for step in steps:
            step = dict(step)
            op = step.pop("op")
            step.pop("prob", None)
            if op == "shuffle":
                for group in step["groups"]:
                    walk(group)
            elif op in configs:
                base.config_from_dict(configs[op], step, f"{preset}: {op}")
                seen.append(op)

    walk(yaml.safe_load((PRESETS_DIR / f"{preset}.yaml").read_text())["steps"])
    assert {"blur", "resize", "noise", "jpeg", "resize_to_target"} <= set(seen)


# ---------------------------------------------------------------------------------------------- blur


def basicsr_kernel(params: classical.BlurParams, t: int) -> np.ndarray:
    """The kernel basicsr builds for frame t's values."""
    k, kind = params.kernel_size, params.kind
    sx = params.sigma_x[t] if params.sigma_x else 0.0
    sy = params.sigma_y[t] if params.sigma_y else sx
    theta = params.rotation[t] if params.rotation else 0.0
    iso = kind in kernels.ISOTROPIC_KINDS
    if kind in kernels.GAUSSIAN_KINDS:
        return bsr.bivariate_Gaussian(k, sx, sy, theta, isotropic=iso)
    if kind in kernels.GENERALIZED_KINDS:
        return bsr.bivariate_generalized_Gaussian(k, sx, sy, theta, params.beta[t], isotropic=iso)
    if kind in kernels.PLATEAU_KINDS:
        return bsr.bivariate_plateau(k, sx, sy, theta, params.beta[t], isotropic=iso)
    return bsr.circular_lowpass_kernel(params.omega[t], k, pad_to=21)


def test_blur_equals_basicsr_filter2d_with_basicsrs_kernels(bikes_frames):
    frames = as_float(bikes_frames)
    rng = np.random.default_rng(11)
    kinds_seen = set()
    for _ in range(12):
        params = classical.sample_blur(rng, DRIFT_BLUR, 1.0, len(frames))
        kinds_seen.add(params.kind)
        ours = classical.apply_blur(frames, params, CTX)
        stack = torch.from_numpy(np.stack([basicsr_kernel(params, t) for t in range(len(frames))])).float()
        ref = to_nhwc(bsr_img.filter2D(to_nchw(frames), stack))
        assert np.abs(ours - ref).max() < 3e-6
    assert len(kinds_seen) >= 4


def test_plateau_beta_follows_basicsrs_split_rule():
    rng = np.random.default_rng(4)
    cfg = classical.BlurConfig(kernel_prob={"plateau_iso": 1})
    betas = np.array([classical.sample_blur(rng, cfg, 1.0, 1).beta[0] for _ in range(2000)])
    # basicsr: U[1, 1] (i.e. exactly 1) or U[1, 2], 1/2 each.
    assert abs(np.mean(betas == 1.0) - 0.5) < 0.04
    assert betas.min() >= 1.0 and betas.max() <= 2.0
    gen = classical.BlurConfig(kernel_prob={"generalized_iso": 1})
    betas = np.array([classical.sample_blur(rng, gen, 1.0, 1).beta[0] for _ in range(2000)])
    assert abs(np.mean(betas < 1.0) - 0.5) < 0.04 and betas.min() >= 0.5 and betas.max() <= 4.0


def test_sinc_cut_off_range_depends_on_kernel_size():
    rng = np.random.default_rng(5)
    cfg = classical.BlurConfig(kernel_prob={"sinc": 1})
    draws = [classical.sample_blur(rng, cfg, 1.0, 1) for _ in range(600)]
    small = [p.omega[0] for p in draws if p.kernel_size < 13]
    large = [p.omega[0] for p in draws if p.kernel_size >= 13]
    assert min(small) >= PI / 3 and min(large) < PI / 3 and min(large) >= PI / 5
    assert max(small + large) <= PI


def test_sinc_step_equals_basicsr_with_its_kernel_padded_to_21(carphone_frames):
    frames = as_float(carphone_frames)
    params = classical.sample_sinc(np.random.default_rng(2), classical.SincConfig(omega_step=0.0628), 1.0, 8)
    ours = classical.apply_sinc(frames, params, CTX)
    stack = np.stack([bsr.circular_lowpass_kernel(w, params.kernel_size, pad_to=21) for w in params.omega])
    ref = to_nhwc(bsr_img.filter2D(to_nchw(frames), torch.from_numpy(stack).float()))
    assert np.abs(ours - ref).max() < 3e-6


# -------------------------------------------------------------------------------------------- resize


def torch_resize(frames: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    options = {} if mode == "area" else {"align_corners": False}
    return to_nhwc(F.interpolate(to_nchw(frames), size=size, mode=mode, **options))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_bilinear_and_bicubic_match_torch_interpolate(mode, city_frames, bikes_frames):
    for frames in (as_float(city_frames), as_float(bikes_frames)):
        h, w = frames.shape[1:3]
        for scale in (0.15, 0.3, 0.63, 0.9, 1.2, 1.5):
            size = (int(h * scale), int(w * scale))
            ours = classical.resize_frames(frames, size, mode)
            assert np.abs(ours - torch_resize(frames, size, mode)).max() < 1e-5


def test_area_matches_torch_for_integer_factors_and_is_bounded_otherwise(city_frames):
    frames = as_float(city_frames)
    for size in ((64, 64), (32, 32)):
        ours = classical.resize_frames(frames, size, "area")
        assert np.abs(ours - torch_resize(frames, size, "area")).max() < 1e-6
    # Non-integer factors: torch's adaptive pooling averages every input pixel a cell touches with equal
    # weight, cv2's INTER_AREA weights partly covered pixels by their overlap. Measured on this crop (night
    # city, the most detailed fixture): max 0.29, mean 0.021.
    worst_max, worst_mean = 0.0, 0.0
    for scale in (0.15, 0.3, 0.63, 0.9, 1.2):
        size = (int(128 * scale), int(128 * scale))
        diff = np.abs(classical.resize_frames(frames, size, "area") - torch_resize(frames, size, "area"))
        worst_max, worst_mean = max(worst_max, diff.max()), max(worst_mean, diff.mean())
    assert worst_max < 0.35 and worst_mean < 0.03


def test_resize_output_sizes_follow_the_floor_target_and_even_rules():
    ctx = base.Context(hr_size=(130, 190), lr_size=(32, 47))
    size = classical.resize_output_size
    assert size(classical.ResizeParams("down", 0.63, "area", "input", False), (130, 190), ctx) == (81, 119)
    assert size(classical.ResizeParams("down", 0.63, "area", "input", True), (130, 190), ctx) == (80, 118)
    assert size(classical.ResizeParams("up", 1.1, "area", "target", False), (77, 91), ctx) == (35, 51)
    assert size(classical.ResizeParams("down", 0.001, "area", "input", False), (130, 190), ctx) == (1, 1)
    frames = np.zeros((2, 130, 190, 3), np.float32)
    keep = classical.ResizeParams("keep", 1.0, "bicubic", "input", False)
    assert classical.apply_resize(frames, keep, ctx) is frames
    out = classical.apply_resize_to_target(frames, classical.ResizeToTargetParams("bilinear"), ctx)
    assert out.shape == (2, 32, 47, 3)


# --------------------------------------------------------------------------------------------- noise


def noise_params(kind: str, gray: bool, level: float, frames: int, seed: int = 7, clip: bool = False):
    sigma, scale = ([level] * frames, []) if kind == "gaussian" else ([], [level] * frames)
    return classical.NoiseParams(kind, gray, sigma, scale, seed, clip)


def test_normal_table_is_a_unit_normal():
    table = classical.normal_table().astype(np.float64)
    assert table.size == 65536 and abs(table.mean()) < 1e-9 and abs(table.var() - 1.0) < 1e-9
    # quantiles of N(0, 1): 2.5 % at -1.96, 84.1 % at 1
    assert abs(np.quantile(table, 0.025) + 1.95996) < 1e-3 and abs(np.quantile(table, 0.8413447) - 1.0) < 1e-3


def test_gaussian_noise_has_the_drawn_sigma_and_is_new_every_frame(city_frames):
    frames = as_float(city_frames)
    noise = classical.apply_noise(frames, noise_params("gaussian", False, 20.0, 8), CTX) - frames
    assert abs(noise.std() * 255 / 20.0 - 1.0) < 0.01
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.02
    channels = noise[0].reshape(-1, 3).T
    assert abs(np.corrcoef(channels)[0, 1]) < 0.02
    ref = to_nhwc(bsr.generate_gaussian_noise_pt(to_nchw(frames), sigma=20.0, gray_noise=0))
    assert abs(noise.std() / ref.std() - 1.0) < 0.02


def test_gray_gaussian_noise_is_the_same_field_in_every_channel(bikes_frames):
    frames = as_float(bikes_frames)
    noise = classical.apply_noise(frames, noise_params("gaussian", True, 10.0, 8), CTX) - frames
    np.testing.assert_allclose(noise[..., 0], noise[..., 1], atol=2e-7)
    np.testing.assert_allclose(noise[..., 0], noise[..., 2], atol=2e-7)


def test_noise_clip_flag_clips_to_the_unit_interval(city_frames):
    frames = as_float(city_frames)
    clipped = classical.apply_noise(frames, noise_params("gaussian", False, 30.0, 8, clip=True), CTX)
    loose = classical.apply_noise(frames, noise_params("gaussian", False, 30.0, 8, clip=False), CTX)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0 and loose.min() < 0.0
    assert np.array_equal(clipped, np.clip(loose, 0, 1))


def test_levels_round_like_basicsr(city_frames):
    frames = as_float(city_frames) * 1.2 - 0.1  # includes values outside [0, 1]
    frames[0, 0, :4, 0] = np.array([0.5, 1.5, 2.5, 3.5], np.float32) / 255  # ties round to even
    ref = torch.clamp((torch.from_numpy(frames) * 255.0).round(), 0, 255).numpy().astype(np.uint8)
    assert np.array_equal(classical.quantize_levels(frames), ref)


def test_poisson_vals_follow_basicsrs_unique_count_rule(city_frames, carphone_frames):
    for image in (as_float(city_frames)[0], as_float(carphone_frames)[0], np.full((8, 8, 3), 0.5, np.float32),
                  np.linspace(0, 1, 3 * 20 * 20, dtype=np.float32).reshape(20, 20, 3)):
        quantised = torch.clamp((torch.from_numpy(image) * 255.0).round(), 0, 255) / 255.0
        expected = 2 ** np.ceil(np.log2(len(torch.unique(quantised))))
        assert classical.poisson_vals(classical.quantize_levels(image)) == expected


@pytest.mark.parametrize("vals", [256, 32, 2])
def test_poisson_sampler_matches_numpy_poisson_per_level(vals):
    rng = np.random.default_rng(vals)
    n = 200_000
    for level in (0, 1, 5, 37, 128, 200, 255):
        noise = classical.poisson_noise(np.full(n, level, np.uint8), rng, vals=vals)
        x = np.rint((noise.astype(np.float64) + np.float32(level) / np.float32(255)) * vals)
        lam = level * vals / 255
        ref = rng.poisson(lam, n)
        if lam == 0:
            assert np.all(x == 0)
            continue
        se_mean, se_var = math.sqrt(lam / n), lam * math.sqrt(2 / n + 1 / (lam * n))
        assert abs(x.mean() - lam) < 4.5 * se_mean
        assert abs(x.var() - lam) < 4.5 * se_var
        # the pmf, where it has mass, agrees with numpy's histogram to sampling error
        top = int(lam + 6 * math.sqrt(lam) + 3)
        ours_h = np.bincount(x.astype(np.int64), minlength=top + 1)[: top + 1] / n
        ref_h = np.bincount(ref, minlength=top + 1)[: top + 1] / n
        pmf_se = np.sqrt(np.maximum(ref_h, 1 / n) / n)
        assert np.all(np.abs(ours_h - ref_h) < 6 * pmf_se + 1e-4)


def test_poisson_noise_matches_basicsrs_on_a_real_frame(city_frames):
    frames = as_float(city_frames)
    ours = classical.apply_noise(frames, noise_params("poisson", False, 1.0, len(frames)), CTX) - frames
    torch.manual_seed(0)
    ref = to_nhwc(bsr.generate_poisson_noise_pt(to_nchw(frames), scale=1.0, gray_noise=0))
    levels = classical.quantize_levels(frames)
    # the noise std grows with the level (sqrt(ℓ / vals) / sqrt(255)): compare it level band by band
    for lo, hi in ((1, 16), (16, 48), (48, 128), (128, 256)):
        band = (levels >= lo) & (levels < hi)
        assert band.sum() > 5000
        assert abs(ours[band].std() / ref[band].std() - 1.0) < 0.05
    assert abs(ours.std() / ref.std() - 1.0) < 0.02


def test_gray_poisson_noise_is_one_field_from_the_luma(bikes_frames):
    frames = as_float(bikes_frames)
    noise = classical.apply_noise(frames, noise_params("poisson", True, 2.0, 8), CTX) - frames
    np.testing.assert_allclose(noise[..., 0], noise[..., 2], atol=3e-7)
    luma_levels = classical.quantize_levels(np.tensordot(frames, np.float32([0.299, 0.587, 0.114]), 1))
    # where the luma level is 0, Poisson(0) = 0: no noise at all
    assert np.all(np.abs(noise[..., 1][luma_levels == 0]) < 1e-6) if (luma_levels == 0).any() else True
    # the noise sits on the 1/vals grid around -ℓ/255 (scale 2)
    assert np.all(np.abs(noise[..., 1] / 2 * 256 - np.rint(noise[..., 1] / 2 * 256)) < 0.5)


# ---------------------------------------------------------------------------------------------- jpeg


@pytest.mark.parametrize("quality", [30, 57, 95])
def test_jpeg_equals_basicsrs_add_jpg_compression(quality, city_frames, bikes_frames):
    for frames in (as_float(city_frames), as_float(bikes_frames)):
        ours = classical.apply_jpeg(frames, classical.JpegParams([quality] * len(frames)), CTX)
        ref = np.stack([bsr.add_jpg_compression(np.ascontiguousarray(f[..., ::-1]), quality)[..., ::-1]
                        for f in frames])
        assert np.array_equal(ours, ref)


@pytest.mark.parametrize("quality", [30, 60, 95])
def test_jpeg_differs_from_diffjpeg_by_a_bounded_amount(quality, city_frames, carphone_frames):
    jpeger = DiffJPEG(differentiable=False)
    for frames in (as_float(city_frames), as_float(carphone_frames)):
        ours = classical.apply_jpeg(frames, classical.JpegParams([quality] * len(frames)), CTX)
        theirs = to_nhwc(jpeger(to_nchw(frames), quality=torch.full((len(frames),), float(quality))))
        # Same quantisation tables (IJG scaling); different DCT rounding and chroma resampling.
        # Measured: 31–41 dB apart, 0.0–1.6 dB apart in distortion.
        assert psnr(ours, theirs) > 30.0
        assert abs(psnr(ours, frames) - psnr(theirs, frames)) < 2.5


def test_jpeg_quality_drifts_in_integers_within_the_range():
    params = classical.sample_jpeg(np.random.default_rng(8), classical.JpegConfig(quality_step=3), 1.0, 40)
    assert all(isinstance(q, int) and 30 <= q <= 95 for q in params.quality)
    assert len(set(params.quality)) > 1 and max(np.abs(np.diff(params.quality))) <= 4


# ----------------------------------------------------------------------------------------------- USM


def basicsr_usm(frames: np.ndarray) -> np.ndarray:
    return to_nhwc(bsr_img.USMSharp()(to_nchw(frames)))


def test_exact_usm_equals_basicsr_usmsharp(city_frames):
    frames = as_float(city_frames)[:2]
    assert np.abs(sharpen.usm_sharpen(frames, exact=True) - basicsr_usm(frames)).max() < 2e-6


def test_fast_usm_is_within_a_grey_level_of_basicsr_usmsharp(city_frames, bikes_frames, carphone_frames):
    odd = np.ascontiguousarray(as_float(city_frames)[:1, 5:72, 9:100])  # 67×91: odd pyramid sizes
    for frames in (as_float(city_frames)[:2], as_float(bikes_frames)[:2], as_float(carphone_frames)[:2], odd):
        diff = np.abs(sharpen.usm_sharpen(frames) - basicsr_usm(frames))
        assert diff.max() < 2.5e-3 and diff.mean() < 1.5e-4


def test_usm_kernel_is_51_taps_with_sigma_8():
    g = sharpen.usm_kernel_1d()[:, 0].astype(np.float64)
    x = np.arange(51) - 25
    assert g.size == 51 == bsr_img.USMSharp().kernel.shape[-1]
    assert abs(g[25] / g[33] - math.exp(0.5)) < 1e-5  # one σ = 8 px away the value drops by e^-1/2
    assert abs((g * x * x).sum() - 63.0) < 0.05  # truncation at ±25 px trims σ² = 64 slightly
