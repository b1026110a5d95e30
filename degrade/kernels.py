"""Blur kernels of Real-ESRGAN / RealBasicVSR as pure numpy functions, and a fast way to apply them.

The formulas are basicsr 1.4.2's (``basicsr/data/degradations.py``), written again here so that a kernel is
a pure function of its parameters (no global RNG) and so that we can choose how to apply it:

* Gaussian: ``exp(-q/2)``; generalized Gaussian: ``exp(-q**beta / 2)``; plateau: ``1 / (1 + q**beta)``,
  where ``q = [x y] Σ⁻¹ [x y]ᵀ`` and ``Σ = R(θ) diag(σx², σy²) R(θ)ᵀ``; isotropic kinds use ``Σ = σx² I``.
* circular low-pass ("sinc"): ``ω J1(ω r) / (2π r)``, centre value ``ω² / (4π)``; ω is the cut-off in
  radians per pixel (π is Nyquist).

Every kernel is ``float64 (k, k)`` with ``k`` odd, normalised to sum 1, on a grid centred at 0 with ``x``
along columns (→) and ``y`` along rows (↓); ``θ`` is in radians. All kinds are point-symmetric
(``K(-x,-y) = K(x,y)``), so correlation (OpenCV's ``filter2D``, torch's ``conv2d``) and convolution agree.

Applying a k×k kernel densely costs k² multiply-adds per pixel, which dominates a 720p pipeline. Most kernels
here are (numerically) low rank: an isotropic Gaussian is exactly separable, and a small-σ kernel on a large
grid is mostly zeros. :func:`plan_filter` trims negligible outer rings and factorises the rest with an SVD
into the fewest separable terms whose summed error is below a tolerance, then picks whichever of "separable
terms" and "dense" is cheaper. The result equals the dense filter to within ``tol`` (an L1 bound on the
kernel error, hence a max-abs bound on the output for inputs in [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import special

KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc")
GAUSSIAN_KINDS = ("iso", "aniso")
GENERALIZED_KINDS = ("generalized_iso", "generalized_aniso")
PLATEAU_KINDS = ("plateau_iso", "plateau_aniso")
ISOTROPIC_KINDS = ("iso", "generalized_iso", "plateau_iso")

# cv2's border rule that equals torch.nn.functional.pad(mode="reflect"), which basicsr's filter2D uses.
BORDER = cv2.BORDER_REFLECT_101


def _check_size(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd number, got {kernel_size}")


def _grid(kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (varies along columns) and ``y`` (varies along rows), both ``(k, k)`` float64, centred at 0."""
    half = kernel_size // 2
    ax = np.arange(-half, half + 1, dtype=np.float64)
    return np.meshgrid(ax, ax)


def _quadratic_form(kernel_size: int, sigma_x: float, sigma_y: float, theta: float,
                    isotropic: bool) -> np.ndarray:
    """``q(x, y) = [x y] Σ⁻¹ [x y]ᵀ`` on the kernel grid (float64, dimensionless)."""
    x, y = _grid(kernel_size)
    if isotropic:
        return (x * x + y * y) / (sigma_x * sigma_x)
    c, s = math.cos(theta), math.sin(theta)
    ix, iy = 1.0 / (sigma_x * sigma_x), 1.0 / (sigma_y * sigma_y)
    # Σ⁻¹ = R diag(1/σx², 1/σy²) Rᵀ, written out so no matrix inverse is needed.
    a = c * c * ix + s * s * iy
    b = c * s * (ix - iy)
    d = s * s * ix + c * c * iy
    return a * x * x + 2.0 * b * x * y + d * y * y


def gaussian(kernel_size: int, sigma_x: float, sigma_y: float = 0.0, theta: float = 0.0,
             isotropic: bool = True) -> np.ndarray:
    """Bivariate Gaussian ``(k, k)`` float64, sum 1; ``sigma_*`` in pixels, isotropic uses ``sigma_x``."""
    _check_size(kernel_size)
    kernel = np.exp(-0.5 * _quadratic_form(kernel_size, sigma_x, sigma_y, theta, isotropic))
    return kernel / kernel.sum()


def generalized_gaussian(kernel_size: int, sigma_x: float, sigma_y: float = 0.0, theta: float = 0.0,
                         beta: float = 1.0, isotropic: bool = True) -> np.ndarray:
    """Generalized Gaussian ``exp(-q**beta / 2)`` (beta = 1 is the Gaussian); ``(k, k)`` float64, sum 1."""
    _check_size(kernel_size)
    kernel = np.exp(-0.5 * np.power(_quadratic_form(kernel_size, sigma_x, sigma_y, theta, isotropic), beta))
    return kernel / kernel.sum()


def plateau(kernel_size: int, sigma_x: float, sigma_y: float = 0.0, theta: float = 0.0,
            beta: float = 1.0, isotropic: bool = True) -> np.ndarray:
    """Plateau kernel ``1 / (1 + q**beta)``; ``(k, k)`` float64, sum 1."""
    _check_size(kernel_size)
    kernel = 1.0 / (np.power(_quadratic_form(kernel_size, sigma_x, sigma_y, theta, isotropic), beta) + 1.0)
    return kernel / kernel.sum()


def circular_lowpass(kernel_size: int, omega: float) -> np.ndarray:
    """Circularly symmetric ideal low-pass ("sinc") kernel with cut-off ``omega`` (rad/pixel); sum 1."""
    _check_size(kernel_size)
    x, y = _grid(kernel_size)
    r = np.hypot(x, y)
    centre = kernel_size // 2
    r[centre, centre] = 1.0  # placeholder; the centre gets its limit value below
    kernel = omega * special.j1(omega * r) / (2.0 * np.pi * r)
    kernel[centre, centre] = omega * omega / (4.0 * np.pi)
    return kernel / kernel.sum()


def make_kernel(kind: str, kernel_size: int, sigma_x: float = 1.0, sigma_y: float = 1.0,
                theta: float = 0.0, beta: float = 1.0, omega: float = math.pi) -> np.ndarray:
    """The kernel of ``kind`` (one of :data:`KINDS`); parameters a kind does not use are ignored."""
    isotropic = kind in ISOTROPIC_KINDS
    if kind in GAUSSIAN_KINDS:
        return gaussian(kernel_size, sigma_x, sigma_y, theta, isotropic)
    if kind in GENERALIZED_KINDS:
        return generalized_gaussian(kernel_size, sigma_x, sigma_y, theta, beta, isotropic)
    if kind in PLATEAU_KINDS:
        return plateau(kernel_size, sigma_x, sigma_y, theta, beta, isotropic)
    if kind == "sinc":
        return circular_lowpass(kernel_size, omega)
    raise ValueError(f"unknown kernel kind '{kind}'; choose from {list(KINDS)}")


# --------------------------------------------------------------------------------------- application

# Single-thread costs in ns per value of float32 OpenCV filters, measured at 1280×720×3 (cv2 5.0): a separable
# pass costs about SEP_BASE + SEP_PER_TAP·k, summing a further term one ADD_PASS, a dense filter2D
# DENSE_PER_TAP·k² up to 11×11 (from 13×13 on cv2 itself switches to a tiled DFT costing ~10 ns per value),
# and our whole-frame DFT (see _fft_filter) about FFT regardless of k.
_SEP_BASE, _SEP_PER_TAP, _ADD_PASS = 0.36, 0.09, 0.19
_DENSE_PER_TAP, _DENSE_MAX, _FFT = 0.036, 11, 6.5


def _dense_cost(k: int) -> float:
    return min(_DENSE_PER_TAP * k * k, _FFT) if k <= _DENSE_MAX else _FFT


@dataclass(frozen=True)
class FilterPlan:
    """How to apply one kernel: either ``dense`` (a k×k float32 array, applied directly or through a DFT when
    ``fft``) or a sum of separable ``terms`` (pairs of float32 column and row vectors, ``kernel ≈ Σ col ⊗
    row``). ``error`` is the L1 norm of the difference to the exact kernel, i.e. the largest possible output
    error for inputs in [0, 1] (plus float32 rounding, ~1e-6 for the DFT)."""

    dense: np.ndarray | None
    terms: tuple[tuple[np.ndarray, np.ndarray], ...]
    error: float
    fft: bool = False
    spectra: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, compare=False, repr=False)


def _trim(kernel: np.ndarray, tol: float) -> tuple[np.ndarray, float]:
    """Drop outer rings while their total |mass| stays within ``tol``; returns the kernel and mass dropped."""
    dropped = 0.0
    while kernel.shape[0] > 1:
        ring = float(np.abs(kernel).sum() - np.abs(kernel[1:-1, 1:-1]).sum())
        if dropped + ring > tol:
            break
        dropped += ring
        kernel = kernel[1:-1, 1:-1]
    return kernel, dropped


def plan_filter(kernel: np.ndarray, tol: float = 1e-6) -> FilterPlan:
    """Choose the cheapest way to apply ``kernel`` (k×k, odd k) with an L1 error of at most ``tol``."""
    trimmed, dropped = _trim(np.asarray(kernel, dtype=np.float64), tol / 2)
    k = trimmed.shape[0]
    dense_cost = _dense_cost(k)
    u, s, vt = np.linalg.svd(trimmed)
    budget = tol - dropped
    approx = np.zeros_like(trimmed)
    for rank in range(1, k + 1):
        approx += s[rank - 1] * np.outer(u[:, rank - 1], vt[rank - 1])
        error = float(np.abs(trimmed - approx).sum())
        sep_cost = rank * (_SEP_BASE + _SEP_PER_TAP * k) + (rank - 1) * _ADD_PASS
        if sep_cost >= dense_cost:
            break
        if error <= budget:
            root = np.sqrt(s[:rank])
            terms = tuple(
                ((u[:, i] * root[i]).astype(np.float32).reshape(-1, 1),
                 (vt[i] * root[i]).astype(np.float32).reshape(1, -1))
                for i in range(rank)
            )
            return FilterPlan(dense=None, terms=terms, error=dropped + error)
    return FilterPlan(dense=trimmed.astype(np.float32), terms=(), error=dropped, fft=k > _DENSE_MAX)


def _fft_filter(image: np.ndarray, plan: FilterPlan, out: np.ndarray | None) -> np.ndarray:
    """Dense correlation with reflect-101 borders through one DFT per channel of the whole frame.

    cv2.filter2D's own DFT path works tile by tile; one transform per channel is ~1.6× faster at 720p. Each
    channel is reflect-padded straight to an optimal DFT size: outputs ``[:H, :W]`` read only rows and
    columns ``< H + k − 1`` / ``< W + k − 1``, so whatever fills the rest never wraps into them.
    """
    kernel = plan.dense
    h, w = image.shape[:2]
    k = kernel.shape[0]
    p = k // 2
    size = (cv2.getOptimalDFTSize(h + 2 * p), cv2.getOptimalDFTSize(w + 2 * p))
    spectrum = plan.spectra.get(size)
    if spectrum is None:
        padded_kernel = np.zeros(size, np.float32)
        padded_kernel[:k, :k] = kernel
        spectrum = plan.spectra[size] = cv2.dft(padded_kernel)
    channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
    results = []
    for channel in channels:
        padded = cv2.copyMakeBorder(np.ascontiguousarray(channel), p, size[0] - h - p, p, size[1] - w - p,
                                    BORDER)
        product = cv2.mulSpectrums(cv2.dft(padded), spectrum, 0, conjB=True)
        results.append(cv2.idft(product, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)[:h, :w])
    if image.ndim == 2:
        if out is None:
            return np.ascontiguousarray(results[0])
        np.copyto(out, results[0])
        return out
    return cv2.merge(results, dst=out)


def apply_plan(image: np.ndarray, plan: FilterPlan, out: np.ndarray | None = None,
               scratch: np.ndarray | None = None) -> np.ndarray:
    """Filter one image ``(H, W)`` or ``(H, W, C)`` float32 with ``plan`` (reflect-101 borders).

    ``out`` and ``scratch`` are optional preallocated float32 buffers of the image's shape (avoids page
    faults on large frames); ``out`` must not alias ``image``.
    """
    if plan.dense is not None:
        if plan.fft and min(image.shape[:2]) > plan.dense.shape[0]:
            return _fft_filter(image, plan, out)
        return cv2.filter2D(image, -1, plan.dense, dst=out, borderType=BORDER)
    col, row = plan.terms[0]
    out = cv2.sepFilter2D(image, -1, row, col, dst=out, borderType=BORDER)
    for col, row in plan.terms[1:]:
        scratch = cv2.sepFilter2D(image, -1, row, col, dst=scratch, borderType=BORDER)
        cv2.add(out, scratch, dst=out)
    return out


class Scratch:
    """Named float32 work buffers reused from frame to frame within one call.

    Allocating a fresh 10 MB array per intermediate costs more in page faults than the OpenCV filters that
    fill it, so the per-frame loops ask for buffers here. One ``Scratch`` lives for one step call and is
    dropped with it, so nothing is shared between calls or threads.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], str], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """An uninitialised C-contiguous buffer of ``shape``; the same object for the same name and shape."""
        key = (name, tuple(shape), np.dtype(dtype).str)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = np.empty(shape, dtype)
        return buffer


def filter_image(image: np.ndarray, kernel: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Filter one float32 image with ``kernel`` using the cheapest plan (reflect-101 borders)."""
    return apply_plan(image, plan_filter(kernel, tol))
