"""Blur kernels equal basicsr's, and applying them through a filter plan equals a dense filter."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

# conftest imports cascadevsr first, which installs the torchvision shim basicsr needs.
from basicsr.data import degradations as bsr
from basicsr.utils import img_process_util as bsr_img

from cascadevsr.degrade import kernels

SIZES = (7, 9, 11, 13, 15, 17, 19, 21)


def _random_parameters(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield (int(rng.choice(SIZES)), *rng.uniform(0.2, 3.0, 2), rng.uniform(-math.pi, math.pi),
               rng.uniform(0.5, 4.0), rng.uniform(math.pi / 5, math.pi))


def _to_frames(uint8_frames: np.ndarray) -> np.ndarray:
    return uint8_frames.astype(np.float32) / 255.0


def _torch_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """basicsr's filter2D (reflect pad + conv2d in float32) on one HWC image."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    k = torch.from_numpy(kernel.astype(np.float32))[None]
    return bsr_img.filter2D(x, k)[0].numpy().transpose(1, 2, 0)


def test_every_kernel_kind_equals_basicsr_for_the_same_parameters():
    worst = 0.0
    for k, sx, sy, theta, beta, omega in _random_parameters(0, 60):
        pairs = [
            (kernels.gaussian(k, sx, sy, theta, isotropic=False),
             bsr.bivariate_Gaussian(k, sx, sy, theta, isotropic=False)),
            (kernels.gaussian(k, sx), bsr.bivariate_Gaussian(k, sx, sy, theta, isotropic=True)),
            (kernels.generalized_gaussian(k, sx, sy, theta, beta, isotropic=False),
             bsr.bivariate_generalized_Gaussian(k, sx, sy, theta, beta, isotropic=False)),
            (kernels.generalized_gaussian(k, sx, beta=beta),
             bsr.bivariate_generalized_Gaussian(k, sx, sy, theta, beta, isotropic=True)),
            (kernels.plateau(k, sx, sy, theta, beta, isotropic=False),
             bsr.bivariate_plateau(k, sx, sy, theta, beta, isotropic=False)),
            (kernels.plateau(k, sx, beta=beta),
             bsr.bivariate_plateau(k, sx, sy, theta, beta, isotropic=True)),
            (kernels.circular_lowpass(k, omega), bsr.circular_lowpass_kernel(omega, k)),
        ]
        for ours, ref in pairs:
            worst = max(worst, float(np.abs(ours - ref).max()))
    # Same formulas in float64; only the order of operations differs (measured ~2e-15).
    assert worst < 1e-12


@pytest.mark.parametrize("kind", kernels.KINDS)
def test_kernels_are_normalised_and_point_symmetric(kind):
    kernel = kernels.make_kernel(kind, 15, 2.5, 0.7, 0.6, 1.7, 1.3)
    assert kernel.shape == (15, 15)
    assert abs(kernel.sum() - 1.0) < 1e-12
    # K(-x, -y) = K(x, y): correlation (cv2, torch) and convolution agree.
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-15)


def test_rotation_turns_the_long_axis_counter_clockwise_in_xy():
    # σx long along x at θ = 0; at θ = π/2 the long axis lies along y (rows).
    flat = kernels.gaussian(21, 4.0, 0.5, 0.0, isotropic=False)
    turned = kernels.gaussian(21, 4.0, 0.5, math.pi / 2, isotropic=False)
    assert flat[10, 14] > flat[14, 10]
    np.testing.assert_allclose(turned, flat.T, atol=1e-15)


def test_even_kernel_sizes_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        kernels.gaussian(8, 1.0)


def test_isotropic_gaussian_is_applied_as_one_separable_term():
    plan = kernels.plan_filter(kernels.gaussian(21, 2.0), tol=1e-6)
    assert plan.dense is None and len(plan.terms) == 1
    assert plan.error <= 1e-6


def test_small_sigma_kernels_are_trimmed_to_their_support():
    plan = kernels.plan_filter(kernels.gaussian(21, 0.3), tol=1e-6)
    size = plan.dense.shape[0] if plan.dense is not None else plan.terms[0][0].shape[0]
    assert size <= 5


@pytest.mark.parametrize("kind", kernels.KINDS)
def test_a_filter_plan_matches_the_dense_filter_within_its_error_bound(kind, city_frames):
    image = _to_frames(city_frames)[0]
    worst = 0.0
    for k, sx, sy, theta, beta, omega in _random_parameters(1, 6):
        kernel = kernels.make_kernel(kind, k, sx, sy, theta, beta, omega)
        plan = kernels.plan_filter(kernel, tol=1e-6)
        dense = cv2.filter2D(image, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
        ours = kernels.apply_plan(image, plan)
        # The plan's own L1 error plus float32 accumulation (~1e-6 for 441 taps).
        worst = max(worst, float(np.abs(ours - dense).max()) - plan.error)
    assert worst < 2e-6


def test_cv2_filter2d_equals_basicsr_filter2d_on_real_frames(bikes_frames):
    image = _to_frames(bikes_frames)[3]
    for k, sx, sy, theta, beta, _ in _random_parameters(2, 4):
        kernel = bsr.bivariate_generalized_Gaussian(k, sx, sy, theta, beta, isotropic=False)
        ours = cv2.filter2D(image, -1, kernel.astype(np.float32), borderType=kernels.BORDER)
        ref = _torch_filter(image, kernel)
        assert np.abs(ours - ref).max() < 1e-6


def test_zero_padding_a_kernel_to_21_changes_nothing_with_reflect_borders(carphone_frames):
    # RealESRGANDataset pads every kernel to 21×21 before filter2D; reflect padding makes that a no-op,
    # which is why we filter with the unpadded kernel.
    image = _to_frames(carphone_frames)[0]
    kernel = bsr.circular_lowpass_kernel(1.3, 9)
    padded = np.pad(kernel, 6)
    ours = kernels.filter_image(image, kernel)
    ref = _torch_filter(image, padded)
    assert np.abs(ours - ref).max() < 2e-6
