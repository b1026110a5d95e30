"""Classical degradations (Real-ESRGAN / RealBasicVSR): blur, sinc, resize, resize_to_target, noise, jpeg.

Each step follows the contract in :mod:`cascadevsr.degrade.base`: a config dataclass of ranges written
mild → severe, a frozen JSON-ready params dataclass, ``sample_X(rng, cfg, strength, num_frames)`` and a pure
``apply_X(frames, params, ctx)`` on float32 ``(T, H, W, 3)`` RGB frames. Per-frame values (RealBasicVSR's
slow "drift" of a parameter across the clip) are lists of length T; with a drift step of 0 they are constant.

The reference for every formula is basicsr 1.4.2 as Real-ESRGAN uses it (``RealESRGANDataset`` draws the
kernels, ``RealESRGANModel.feed_data`` applies them); ``tests/test_classical.py`` shows where we match it
exactly and bounds the differences where we do not (cv2 vs torch resampling, libjpeg vs DiffJPEG).
Speed matters (a corpus is many hours of 720p video), so every per-frame loop writes into preallocated
buffers and uses OpenCV kernels; see the notes at each step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import special

from cascadevsr.degrade import base
from cascadevsr.degrade.base import Context
from cascadevsr.degrade.kernels import (
    GENERALIZED_KINDS,
    ISOTROPIC_KINDS,
    KINDS,
    PLATEAU_KINDS,
    FilterPlan,
    Scratch,
    apply_plan,
    make_kernel,
    plan_filter,
)

PI = math.pi
KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
# Real-ESRGAN's first-order kernel mix: sinc with probability 0.1, otherwise the six Gaussian-family kinds
# with [0.45, 0.25, 0.12, 0.03, 0.12, 0.03].
REALESRGAN_KERNEL_PROB = {"iso": 0.405, "aniso": 0.225, "generalized_iso": 0.108, "generalized_aniso": 0.027,
                          "plateau_iso": 0.108, "plateau_aniso": 0.027, "sinc": 0.1}
INTERPOLATIONS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
EVEN_THIRDS = {"area": 1 / 3, "bilinear": 1 / 3, "bicubic": 1 / 3}
# L1 bound on the difference between a blur kernel and the separable terms we apply instead (kernels.py).
FILTER_TOL = 1e-6


# ------------------------------------------------------------------------------------ config helpers


class _Checker:
    """Collects every problem of a config so that one error names them all."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.problems: list[str] = []

    def set(self, name: str, value: Any) -> None:
        object.__setattr__(self.obj, name, value)

    def range(self, name: str, lo: float | None = None, hi: float | None = None) -> None:
        value = getattr(self.obj, name)
        try:
            pair = (float(value[0]), float(value[1]))
            if len(value) != 2:
                raise ValueError
        except (TypeError, ValueError, IndexError):
            self.problems.append(f"{name} must be a [mild, severe] pair of numbers, got {value!r}")
            return
        if (lo is not None and min(pair) < lo) or (hi is not None and max(pair) > hi):
            self.problems.append(f"{name} must lie within [{lo}, {hi}], got {list(pair)}")
        self.set(name, pair)

    def probs(self, name: str, allowed: Sequence[str]) -> None:
        value = getattr(self.obj, name)
        if not isinstance(value, dict) or not value:
            self.problems.append(f"{name} must map {list(allowed)} to probabilities, got {value!r}")
            return
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            self.problems.append(f"{name} has unknown key(s) {unknown}; choose from {list(allowed)}")
        try:
            probs = {str(k): float(v) for k, v in value.items()}
        except (TypeError, ValueError):
            self.problems.append(f"{name} values must be numbers, got {value!r}")
            return
        if any(p < 0 for p in probs.values()) or sum(probs.values()) <= 0:
            self.problems.append(f"{name} must be non-negative with a positive sum, got {probs}")
        self.set(name, probs)

    def number(self, name: str, lo: float = 0.0, hi: float = math.inf) -> None:
        value = getattr(self.obj, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            self.problems.append(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
        else:
            self.set(name, float(value))

    def choice(self, name: str, allowed: Sequence[Any]) -> None:
        if getattr(self.obj, name) not in allowed:
            self.problems.append(f"{name} must be one of {list(allowed)}, got {getattr(self.obj, name)!r}")

    def done(self) -> None:
        if self.problems:
            raise ValueError("; ".join(self.problems))


def _kernel_sizes(check: _Checker, name: str) -> None:
    sizes = getattr(check.obj, name)
    try:
        parsed = tuple(int(k) for k in sizes)
    except (TypeError, ValueError):
        parsed = ()
    if not parsed or any(k < 3 or k % 2 == 0 for k in parsed):
        check.problems.append(f"{name} must be a non-empty list of odd sizes >= 3, got {sizes!r}")
    check.set(name, parsed)


def _drift_or_constant(rng: np.random.Generator, start: float, step: float, num_frames: int,
                       bounds: Sequence[float]) -> list[float]:
    return base.drift(rng, float(start), float(step), num_frames, bounds)


def _new_like(frames: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    t, h, w, c = frames.shape
    if size is not None:
        h, w = size
    return np.empty((t, h, w, c), np.float32)


def _as_frames(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- blur


@dataclass(frozen=True)
class BlurConfig:
    """Random blur kernel per clip (Real-ESRGAN's ``kernel1``/``kernel2``; RealBasicVSR's ``RandomBlur``)."""

    kernel_size: tuple[int, ...] = KERNEL_SIZES
    """Odd kernel sizes to choose from uniformly (pixels)."""
    kernel_prob: dict[str, float] = field(default_factory=lambda: dict(REALESRGAN_KERNEL_PROB))
    """Probability of each kernel kind (see ``kernels.KINDS``)."""
    sigma: tuple[float, float] = (0.2, 3.0)
    """[mild, severe] range of σx and σy (pixels)."""
    rotation: tuple[float, float] = (-PI, PI)
    """Range of the anisotropic rotation θ (radians); a direction, so not scaled by strength."""
    beta_gaussian: tuple[float, float] = (4.0, 0.5)
    """[mild, severe] shape β of generalized Gaussians (large β: light tails; β = 1 is the Gaussian)."""
    beta_plateau: tuple[float, float] = (2.0, 1.0)
    """[mild, severe] shape β of plateau kernels."""
    beta_split: bool = True
    """Real-ESRGAN's β rule: when the range contains 1, draw from its part below 1 or above 1 with
    probability 1/2 each (basicsr); otherwise (RealBasicVSR/mmagic) uniform over the range."""
    omega_small: tuple[float, float] = (PI, PI / 3)
    """[mild, severe] sinc cut-off ω (rad/pixel) for kernel sizes below ``omega_split_size``."""
    omega_large: tuple[float, float] = (PI, PI / 5)
    """[mild, severe] sinc cut-off ω (rad/pixel) for larger kernels."""
    omega_split_size: int = 13
    """Kernel size from which ``omega_large`` applies (Real-ESRGAN: 13)."""
    sigma_x_step: float = 0.0
    """Per-frame drift of σx (RealBasicVSR: 0.02)."""
    sigma_y_step: float = 0.0
    """Per-frame drift of σy (RealBasicVSR: 0.02)."""
    rotation_step: float = 0.0
    """Per-frame drift of θ in radians (RealBasicVSR: 0.31416)."""
    beta_gaussian_step: float = 0.0
    """Per-frame drift of the generalized-Gaussian β (RealBasicVSR: 0.05)."""
    beta_plateau_step: float = 0.0
    """Per-frame drift of the plateau β (RealBasicVSR: 0.1)."""
    omega_step: float = 0.0
    """Per-frame drift of the sinc ω (RealBasicVSR: 0.0628)."""

    def __post_init__(self) -> None:
        check = _Checker(self)
        _kernel_sizes(check, "kernel_size")
        check.probs("kernel_prob", KINDS)
        check.range("sigma", lo=1e-3)
        check.range("rotation")
        check.range("beta_gaussian", lo=1e-3)
        check.range("beta_plateau", lo=1e-3)
        check.range("omega_small", lo=1e-3, hi=PI)
        check.range("omega_large", lo=1e-3, hi=PI)
        if not isinstance(self.beta_split, bool):
            check.problems.append(f"beta_split must be true or false, got {self.beta_split!r}")
        if isinstance(self.omega_split_size, bool) or not isinstance(self.omega_split_size, int):
            check.problems.append(f"omega_split_size must be an integer, got {self.omega_split_size!r}")
        for name in ("sigma_x_step", "sigma_y_step", "rotation_step", "beta_gaussian_step",
                     "beta_plateau_step", "omega_step"):
            check.number(name)
        check.done()


@dataclass(frozen=True)
class BlurParams:
    """One drawn blur. Lists hold one value per frame; a list is empty when the kind does not use it
    (``sigma_*``/``rotation`` for sinc, ``sigma_y``/``rotation`` for isotropic kinds, ``beta`` for
    Gaussians, ``omega`` for all but sinc). Sigmas in pixels, angles and ω in radians."""

    kind: str
    kernel_size: int
    sigma_x: list[float]
    sigma_y: list[float]
    rotation: list[float]
    beta: list[float]
    omega: list[float]


def _sample_beta(rng: np.random.Generator, bounds: Sequence[float], strength: float, split: bool) -> float:
    lo, hi = sorted(base.scaled_range(bounds, strength))
    if split and lo <= 1.0 <= hi:
        # basicsr: U[lo, 1] or U[1, hi] with probability 1/2 each (a point mass at 1 when lo == 1).
        return float(rng.uniform(lo, 1.0)) if rng.uniform() < 0.5 else float(rng.uniform(1.0, hi))
    return float(rng.uniform(lo, hi)) if lo < hi else lo


def sample_blur(rng: np.random.Generator, cfg: BlurConfig, strength: float, num_frames: int) -> BlurParams:
    """Draw a kernel kind, size and parameters; per-frame values drift when the config's steps are > 0."""
    kernel_size = int(rng.choice(cfg.kernel_size))
    kind = base.choice(rng, cfg.kernel_prob)
    if kind == "sinc":
        bounds = cfg.omega_small if kernel_size < cfg.omega_split_size else cfg.omega_large
        omega = base.uniform(rng, bounds, strength)
        omegas = _drift_or_constant(rng, omega, cfg.omega_step, num_frames,
                                    base.scaled_range(bounds, strength))
        return BlurParams(kind, kernel_size, [], [], [], [], omegas)
    sigma_bounds = base.scaled_range(cfg.sigma, strength)
    sigma_x = _drift_or_constant(rng, base.uniform(rng, cfg.sigma, strength), cfg.sigma_x_step, num_frames,
                                 sigma_bounds)
    sigma_y: list[float] = []
    rotation: list[float] = []
    if kind not in ISOTROPIC_KINDS:
        sigma_y = _drift_or_constant(rng, base.uniform(rng, cfg.sigma, strength), cfg.sigma_y_step,
                                     num_frames, sigma_bounds)
        rotation = _drift_or_constant(rng, rng.uniform(*cfg.rotation), cfg.rotation_step, num_frames,
                                      cfg.rotation)
    beta: list[float] = []
    if kind in GENERALIZED_KINDS or kind in PLATEAU_KINDS:
        bounds, step = ((cfg.beta_gaussian, cfg.beta_gaussian_step) if kind in GENERALIZED_KINDS
                        else (cfg.beta_plateau, cfg.beta_plateau_step))
        start = _sample_beta(rng, bounds, strength, cfg.beta_split)
        beta = _drift_or_constant(rng, start, step, num_frames, base.scaled_range(bounds, strength))
    return BlurParams(kind, kernel_size, sigma_x, sigma_y, rotation, beta, [])


def blur_kernel(params: BlurParams, t: int) -> np.ndarray:
    """The ``(k, k)`` float64 kernel of frame ``t`` (the kernel basicsr would build from these values)."""

    def at(values: list[float], default: float) -> float:
        return values[t] if values else default

    sigma_x = at(params.sigma_x, 1.0)
    return make_kernel(params.kind, params.kernel_size, sigma_x, at(params.sigma_y, sigma_x),
                       at(params.rotation, 0.0), at(params.beta, 1.0), at(params.omega, PI))


def _filter_frames(frames: np.ndarray, kernel_at) -> np.ndarray:
    """Filter each frame with ``kernel_at(t)``; a plan is reused while the kernel does not change."""
    frames = _as_frames(frames)
    out = _new_like(frames)
    scratch = Scratch()
    plan: FilterPlan | None = None
    previous: np.ndarray | None = None
    for t, frame in enumerate(frames):
        kernel = kernel_at(t)
        if previous is None or not np.array_equal(kernel, previous):
            plan, previous = plan_filter(kernel, FILTER_TOL), kernel
        apply_plan(frame, plan, out=out[t], scratch=scratch.get("blur", frame.shape))
    return out


def apply_blur(frames: np.ndarray, params: BlurParams, ctx: Context) -> np.ndarray:
    """Blur each frame with its kernel (reflect-101 borders, as basicsr's ``filter2D``).

    The kernel is regenerated from the params per frame and applied as separable terms or densely,
    whichever is cheaper, within ``FILTER_TOL`` (L1) of ``cv2.filter2D`` with the full kernel.
    """
    return _filter_frames(frames, lambda t: blur_kernel(params, t))


# ---------------------------------------------------------------------------------------------- sinc


@dataclass(frozen=True)
class SincConfig:
    """Real-ESRGAN's final sinc filter (applied with probability 0.8 through the step's ``prob``)."""

    kernel_size: tuple[int, ...] = KERNEL_SIZES
    """Odd kernel sizes to choose from uniformly (pixels)."""
    omega: tuple[float, float] = (PI, PI / 3)
    """[mild, severe] cut-off ω (rad/pixel)."""
    omega_step: float = 0.0
    """Per-frame drift of ω (RealBasicVSR: 0.0628)."""

    def __post_init__(self) -> None:
        check = _Checker(self)
        _kernel_sizes(check, "kernel_size")
        check.range("omega", lo=1e-3, hi=PI)
        check.number("omega_step")
        check.done()


@dataclass(frozen=True)
class SincParams:
    """One drawn sinc filter: kernel size (pixels) and per-frame cut-off ω (rad/pixel)."""

    kernel_size: int
    omega: list[float]


def sample_sinc(rng: np.random.Generator, cfg: SincConfig, strength: float, num_frames: int) -> SincParams:
    """Draw the kernel size and cut-off."""
    kernel_size = int(rng.choice(cfg.kernel_size))
    omega = base.uniform(rng, cfg.omega, strength)
    return SincParams(kernel_size, _drift_or_constant(rng, omega, cfg.omega_step, num_frames,
                                                      base.scaled_range(cfg.omega, strength)))


def apply_sinc(frames: np.ndarray, params: SincParams, ctx: Context) -> np.ndarray:
    """Filter each frame with a circular low-pass kernel (reflect-101 borders)."""
    return _filter_frames(frames, lambda t: make_kernel("sinc", params.kernel_size, omega=params.omega[t]))


# -------------------------------------------------------------------------------------------- resize


def resize_frames(frames: np.ndarray, size: Sequence[int], interpolation: str) -> np.ndarray:
    """Resize float32 frames ``(T, H, W, 3)`` to ``size = (h, w)`` with ``cv2.resize``.

    ``interpolation`` is ``area`` | ``bilinear`` | ``bicubic`` (half-pixel centres, like torch's
    ``align_corners=False``; bicubic uses a = -0.75 like torch; no antialiasing for bilinear/bicubic
    downscaling, like torch's default). Frames already at ``size`` are returned as they are.
    """
    frames = _as_frames(frames)
    h, w = int(size[0]), int(size[1])
    if frames.shape[1:3] == (h, w):
        return frames
    flag = INTERPOLATIONS[interpolation]
    out = _new_like(frames, (h, w))
    for t, frame in enumerate(frames):
        cv2.resize(frame, (w, h), dst=out[t], interpolation=flag)
    return out


@dataclass(frozen=True)
class ResizeConfig:
    """Random up/down/keep resize (Real-ESRGAN's "random resize"; RealBasicVSR's ``RandomResize``)."""

    mode_prob: dict[str, float] = field(default_factory=lambda: {"up": 0.2, "down": 0.7, "keep": 0.1})
    """Probability of scaling up, down, or keeping the scale."""
    up_scale: tuple[float, float] = (1.0, 1.5)
    """[mild, severe] scale factor when scaling up."""
    down_scale: tuple[float, float] = (1.0, 0.15)
    """[mild, severe] scale factor when scaling down."""
    interpolation_prob: dict[str, float] = field(default_factory=lambda: dict(EVEN_THIRDS))
    """Probability of each interpolation (``area`` | ``bilinear`` | ``bicubic``)."""
    relative_to: str = "input"
    """``input``: output = floor(input size · scale) (Real-ESRGAN's first order, RealBasicVSR);
    ``target``: output = floor(LR target size · scale) (Real-ESRGAN's second order)."""
    even_size: bool = False
    """Round the output size down to even numbers (RealBasicVSR's ``is_size_even``)."""

    def __post_init__(self) -> None:
        check = _Checker(self)
        check.probs("mode_prob", ("up", "down", "keep"))
        check.range("up_scale", lo=1.0)
        check.range("down_scale", lo=1e-3, hi=1.0)
        check.probs("interpolation_prob", tuple(INTERPOLATIONS))
        check.choice("relative_to", ("input", "target"))
        if not isinstance(self.even_size, bool):
            check.problems.append(f"even_size must be true or false, got {self.even_size!r}")
        check.done()


@dataclass(frozen=True)
class ResizeParams:
    """One drawn resize: mode, scale factor (output/input), interpolation, and how the size is computed."""

    mode: str
    scale: float
    interpolation: str
    relative_to: str
    even_size: bool


def sample_resize(rng: np.random.Generator, cfg: ResizeConfig, strength: float,
                  num_frames: int) -> ResizeParams:
    """Draw mode, scale and interpolation (the scale is constant over the clip)."""
    mode = base.choice(rng, cfg.mode_prob)
    scale = {"up": lambda: base.uniform(rng, cfg.up_scale, strength),
             "down": lambda: base.uniform(rng, cfg.down_scale, strength),
             "keep": lambda: 1.0}[mode]()
    interpolation = base.choice(rng, cfg.interpolation_prob)
    return ResizeParams(mode, float(scale), interpolation, cfg.relative_to, cfg.even_size)


def resize_output_size(params: ResizeParams, input_size: Sequence[int], ctx: Context) -> tuple[int, int]:
    """The ``(h, w)`` a resize produces from frames of ``input_size``."""
    ref = input_size if params.relative_to == "input" else ctx.lr_size
    h, w = (int(ref[0] * params.scale), int(ref[1] * params.scale))
    if params.even_size:
        h, w = 2 * (h // 2), 2 * (w // 2)
    floor = 2 if params.even_size else 1
    return max(h, floor), max(w, floor)


def apply_resize(frames: np.ndarray, params: ResizeParams, ctx: Context) -> np.ndarray:
    """Resize every frame to :func:`resize_output_size` with the drawn interpolation."""
    return resize_frames(frames, resize_output_size(params, frames.shape[1:3], ctx), params.interpolation)


@dataclass(frozen=True)
class ResizeToTargetConfig:
    """Resize to the LR target size ``ctx.lr_size`` (Real-ESRGAN's final "resize back")."""

    interpolation_prob: dict[str, float] = field(default_factory=lambda: dict(EVEN_THIRDS))
    """Probability of each interpolation (``area`` | ``bilinear`` | ``bicubic``)."""

    def __post_init__(self) -> None:
        check = _Checker(self)
        check.probs("interpolation_prob", tuple(INTERPOLATIONS))
        check.done()


@dataclass(frozen=True)
class ResizeToTargetParams:
    """The drawn interpolation."""

    interpolation: str


def sample_resize_to_target(rng: np.random.Generator, cfg: ResizeToTargetConfig, strength: float,
                            num_frames: int) -> ResizeToTargetParams:
    """Draw the interpolation."""
    return ResizeToTargetParams(base.choice(rng, cfg.interpolation_prob))


def apply_resize_to_target(frames: np.ndarray, params: ResizeToTargetParams, ctx: Context) -> np.ndarray:
    """Resize every frame to ``ctx.lr_size``."""
    return resize_frames(frames, ctx.lr_size, params.interpolation)


# --------------------------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class NoiseConfig:
    """Gaussian or Poisson noise, colour or gray, new for every frame (Real-ESRGAN; RealBasicVSR)."""

    gaussian_prob: float = 0.5
    """Probability of Gaussian noise; Poisson noise otherwise."""
    gaussian_sigma: tuple[float, float] = (1.0, 30.0)
    """[mild, severe] Gaussian σ in grey levels (0–255 scale)."""
    gaussian_gray_prob: float = 0.4
    """Probability that Gaussian noise is gray (one field added to all three channels)."""
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    """[mild, severe] multiplier of the Poisson noise."""
    poisson_gray_prob: float = 0.4
    """Probability that Poisson noise is computed on the gray image and added to all channels."""
    gaussian_sigma_step: float = 0.0
    """Per-frame drift of σ (RealBasicVSR: 0.1)."""
    poisson_scale_step: float = 0.0
    """Per-frame drift of the Poisson scale (RealBasicVSR: 0.005)."""
    clip: bool = True
    """Clip to [0, 1] after adding the noise (Real-ESRGAN's ``clip=True``; mmagic does not clip here)."""

    def __post_init__(self) -> None:
        check = _Checker(self)
        for name in ("gaussian_prob", "gaussian_gray_prob", "poisson_gray_prob"):
            check.number(name, 0.0, 1.0)
        check.range("gaussian_sigma", lo=0.0)
        check.range("poisson_scale", lo=0.0)
        check.number("gaussian_sigma_step")
        check.number("poisson_scale_step")
        if not isinstance(self.clip, bool):
            check.problems.append(f"clip must be true or false, got {self.clip!r}")
        check.done()


@dataclass(frozen=True)
class NoiseParams:
    """One drawn noise: ``kind`` gaussian | poisson, ``gray``, per-frame ``sigma`` (grey levels, Gaussian) or
    ``scale`` (Poisson; the other list is empty), the ``seed`` of the noise fields, and ``clip``."""

    kind: str
    gray: bool
    sigma: list[float]
    scale: list[float]
    seed: int
    clip: bool


def sample_noise(rng: np.random.Generator, cfg: NoiseConfig, strength: float, num_frames: int) -> NoiseParams:
    """Draw the noise type, colour/gray, per-frame level and a seed for the noise fields."""
    if rng.uniform() < cfg.gaussian_prob:
        sigma = _drift_or_constant(rng, base.uniform(rng, cfg.gaussian_sigma, strength),
                                   cfg.gaussian_sigma_step, num_frames,
                                   base.scaled_range(cfg.gaussian_sigma, strength))
        gray = bool(rng.uniform() < cfg.gaussian_gray_prob)
        return NoiseParams("gaussian", gray, sigma, [], base.new_seed(rng), cfg.clip)
    scale = _drift_or_constant(rng, base.uniform(rng, cfg.poisson_scale, strength), cfg.poisson_scale_step,
                               num_frames, base.scaled_range(cfg.poisson_scale, strength))
    gray = bool(rng.uniform() < cfg.poisson_gray_prob)
    return NoiseParams("poisson", gray, [], scale, base.new_seed(rng), cfg.clip)


# Gaussian fields. numpy's float32 standard_normal costs ~9 ns per value (≈25 ms per 720p frame), more than
# the rest of the step. We draw 16 random bits per value and map them through the normal quantile function
# instead: value i of the table is Φ⁻¹((i + ½) / 2¹⁶), rescaled to unit variance. The result is a
# 65,536-level discretisation of N(0, 1) truncated at ±4.17σ (tail mass 3e-5); the level spacing near 0 is
# 4e-5σ, far below anything 8-bit output can show.
_NORMAL_BITS = 16


@functools.cache
def normal_table() -> np.ndarray:
    """The 2¹⁶ normal quantiles used as Gaussian noise values, float32, mean 0, variance 1."""
    p = (np.arange(2**_NORMAL_BITS, dtype=np.float64) + 0.5) / 2**_NORMAL_BITS
    z = special.ndtri(p)
    return (z / np.sqrt(np.mean(z * z))).astype(np.float32)


def random_u16(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uniform random uint16 values (writable), straight from the bit generator's 64-bit words."""
    return rng.bit_generator.random_raw((n + 3) // 4).view(np.uint16)[:n]


def standard_normal(rng: np.random.Generator, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """``n`` draws from the discretised N(0, 1) of :func:`normal_table`, float32."""
    return np.take(normal_table(), random_u16(rng, n), out=out, mode="clip")


def quantize_levels(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``clip(round(image · 255), 0, 255)`` as uint8 (round half to even, like torch.round); any shape."""
    # cv2.max(…, 0.0) broadcasts the scalar (0, 0, 0, 0) to every channel; convertScaleAbs then rounds and
    # saturates at 255, so together they clip to [0, 1] first as basicsr does.
    return cv2.convertScaleAbs(cv2.max(image, 0.0), dst=out, alpha=255.0)


def poisson_vals(levels: np.ndarray) -> int:
    """basicsr's ``vals = 2 ** ceil(log2(number of distinct levels))`` for uint8 levels (any shape)."""
    # Most real frames use more than 128 levels, so vals = 256; a sparse sample shows that at 1/35 the cost
    # of the full histogram (the sample's distinct levels are a subset of the frame's).
    sample = levels.reshape(levels.shape[0], -1)[::5, ::7]
    if np.count_nonzero(np.bincount(sample.ravel(), minlength=256)) > 128:
        return 256
    hist = cv2.calcHist([levels.reshape(-1, 1)], [0], None, [256], [0, 256])
    count = int(np.count_nonzero(hist))
    return 2 ** math.ceil(math.log2(count)) if count > 1 else 1


# Bits of the uniform u that select a bucket of the inverse-CDF table (see _PoissonTables).
_BUCKET_BITS = 12


@dataclass(frozen=True)
class _PoissonTables:
    """Inverse-CDF tables for X ~ Poisson(ℓ·vals/255), ℓ = 0…255 (see :func:`poisson_noise`).

    X = min{k : u < P(X ≤ k)} for a uniform u. The top 12 bits of u pick one of 4096 buckets:
    ``value[ℓ·4096 + b]`` is the noise value ``X/vals − ℓ/255`` when every u in bucket b gives the same X
    (~98 % of pixels at vals = 256), else NaN and ``slot`` numbers the undecided (ℓ, b). Almost every
    undecided bucket holds one step of the CDF, at fraction ``threshold[slot]`` of its width, so a fresh
    uniform v decides X = smallest + (v ≥ threshold); buckets with several steps (``multi``, far tails only)
    are resolved by search in ``cdf``.
    """

    vals: int
    value: np.ndarray  # (256·4096,) float32
    slot: np.ndarray  # (256·4096,) int32, -1 where the bucket decides X
    low: np.ndarray  # (slots,) float32, noise value of the smallest X in the bucket
    threshold: np.ndarray  # (slots,) float64, position of the CDF step inside the bucket, in [0, 1)
    multi: np.ndarray  # (slots,) bool, the bucket holds more than one CDF step
    cdf: np.ndarray  # (256, K) float64, P(X <= k), rows offset by ℓ for one flat searchsorted
    noise: np.ndarray  # (256, K) float32, X/vals − ℓ/255 for X = k


@functools.lru_cache(maxsize=9)
def poisson_tables(vals: int) -> _PoissonTables:
    """Tables for one ``vals`` (a power of two ≤ 256); built once per process (~0.1 s) and cached."""
    levels = np.arange(256, dtype=np.float64)
    lam = levels * vals / 255.0
    k_max = math.ceil(lam.max() + 12.0 * math.sqrt(lam.max()) + 40)
    k = np.arange(k_max, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = k[None, :] * np.log(lam[:, None]) - lam[:, None] - special.gammaln(k + 1.0)[None, :]
    log_pmf[0] = np.where(k == 0, 0.0, -np.inf)  # λ = 0: X = 0 surely
    cdf = np.cumsum(np.exp(log_pmf), axis=1)
    cdf[:, -1] = 1.0  # the tail beyond k_max has probability < 1e-25
    np.minimum(cdf, 1.0, out=cdf)
    # float32 as basicsr computes it: poisson(…) / vals − round(img·255) / 255
    noise = (k[None, :].astype(np.float32) / np.float32(vals)
             - (levels[:, None].astype(np.float32) / np.float32(255.0))).astype(np.float32)

    buckets = 1 << _BUCKET_BITS
    edges = np.arange(buckets + 1, dtype=np.float64) / buckets
    value = np.full(256 * buckets, np.nan, np.float32)
    slot = np.full(256 * buckets, -1, np.int32)
    low, threshold, multi = [], [], []
    for level in range(256):
        row = cdf[level]
        first = np.searchsorted(row, edges[:-1], side="right")  # X at the bucket's lower edge
        last = np.minimum(np.searchsorted(row, edges[1:], side="left"), k_max - 1)  # X just below the top
        sure = first == last
        part = slice(level * buckets, (level + 1) * buckets)
        value[part][sure] = noise[level, first[sure]]
        unsure = np.flatnonzero(~sure)
        slot[part][unsure] = np.arange(len(low), len(low) + unsure.size)
        low.extend(noise[level, first[unsure]])
        threshold.extend(row[first[unsure]] * buckets - unsure)
        multi.extend(last[unsure] - first[unsure] > 1)
    flat_cdf = cdf + levels[:, None]  # increasing across rows: one searchsorted serves every level
    return _PoissonTables(vals, value, slot, np.asarray(low, np.float32), np.asarray(threshold, np.float64),
                          np.asarray(multi, bool), flat_cdf, noise)


def poisson_noise(levels: np.ndarray, rng: np.random.Generator, vals: int | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """basicsr's Poisson noise for quantised levels: ``X / vals − ℓ / 255`` with X ~ Poisson(ℓ·vals/255).

    ``levels`` is uint8 of any shape (ℓ = round(img·255)); returns float32 of the same shape. numpy's
    ``poisson`` needs ~100 ns per pixel at these λ; since only 256 distinct λ occur per frame we sample by
    inverse CDF from precomputed tables instead (see :class:`_PoissonTables`): one table look-up for nearly
    every pixel, exact up to float64 CDF rounding (~1e-16).
    """
    vals = poisson_vals(levels) if vals is None else vals
    tables = poisson_tables(vals)
    flat = levels.reshape(-1)
    index = flat.astype(np.uint32)
    index <<= _BUCKET_BITS
    bucket = random_u16(rng, flat.size)
    bucket >>= 16 - _BUCKET_BITS
    index |= bucket
    value = np.take(tables.value, index, out=None if out is None else out.reshape(-1), mode="clip")
    undecided = np.flatnonzero(np.isnan(value))
    if undecided.size:
        slots = tables.slot[index[undecided]]
        v = rng.random(undecided.size)
        step = (v >= tables.threshold[slots]).astype(np.float32) / np.float32(vals)
        exact = tables.low[slots] + step
        multi = np.flatnonzero(tables.multi[slots])
        if multi.size:
            idx = index[undecided[multi]].astype(np.int64)
            level, b = idx >> _BUCKET_BITS, idx & ((1 << _BUCKET_BITS) - 1)
            u = (b + v[multi]) / (1 << _BUCKET_BITS)
            x = np.searchsorted(tables.cdf.reshape(-1), u + level, side="right") - level * tables.cdf.shape[1]
            exact[multi] = tables.noise[level, np.minimum(x, tables.cdf.shape[1] - 1)]
        value[undecided] = exact
    return value.reshape(levels.shape)


# Rows per strip when adding noise: the random field, its levels and the sum stay in cache (at 720p each
# pass over a whole frame would be bound by memory bandwidth).
_NOISE_STRIP = 32


def _noise_frame(frame: np.ndarray, params: NoiseParams, t: int, rng: np.random.Generator,
                 out: np.ndarray, scratch: Scratch) -> None:
    """Add frame t's noise to ``frame`` (H, W, 3) float32, writing ``out``; strip by strip."""
    h, w, c = frame.shape
    gray, gaussian = params.gray, params.kind == "gaussian"
    width = w if gray else w * c  # values per row of the noise field
    if not gaussian:
        # Levels of the luma (0.299 R + 0.587 G + 0.114 B, cv2; torchvision's rgb_to_grayscale uses 0.2989)
        # or of every channel, and basicsr's vals for the whole frame.
        source = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY, dst=scratch.get("luma", (h, w))) if gray else frame
        levels = quantize_levels(source, out=scratch.get("levels", source.shape, np.uint8)).reshape(h, width)
        vals = poisson_vals(levels)
        amount = params.scale[t]
    else:
        amount = params.sigma[t] / 255.0
    field = scratch.get("field", (_NOISE_STRIP, width))
    spread = scratch.get("spread", (_NOISE_STRIP, w * c)) if gray else field
    flat_in, flat_out = frame.reshape(h, w * c), out.reshape(h, w * c)
    for y in range(0, h, _NOISE_STRIP):
        rows = slice(y, min(y + _NOISE_STRIP, h))
        n = rows.stop - rows.start
        noise = field[:n]
        if gaussian:
            standard_normal(rng, n * width, out=noise.reshape(-1))
        else:
            poisson_noise(levels[rows], rng, vals, out=noise)
        np.multiply(noise, np.float32(amount), out=noise)
        if gray:  # the same value in all three channels (cv2 interleaves faster than numpy broadcasting)
            cv2.cvtColor(noise, cv2.COLOR_GRAY2RGB, dst=spread[:n].reshape(n, w, c))
        cv2.add(flat_in[rows], spread[:n], dst=flat_out[rows])
        if params.clip:
            np.clip(flat_out[rows], 0.0, 1.0, out=flat_out[rows])


def apply_noise(frames: np.ndarray, params: NoiseParams, ctx: Context) -> np.ndarray:
    """Add a new noise field to every frame t (seeded by ``(seed, t)``), then clip to [0, 1] if ``clip``.

    Gaussian: ``img + σ/255 · z`` with z ~ N(0, 1) per pixel and channel, or one z per pixel when gray.
    Poisson (basicsr): ``img + scale · (X / vals − ℓ / 255)`` with ℓ = round(img · 255) clipped to [0, 255]
    (per channel, or of the luma when gray), ``vals = 2^ceil(log2(#distinct ℓ in the frame))`` and
    X ~ Poisson(ℓ · vals / 255).
    """
    if params.kind not in ("gaussian", "poisson"):
        raise ValueError(f"unknown noise kind '{params.kind}'")
    frames = _as_frames(frames)
    out = _new_like(frames)
    scratch = Scratch()
    for t, frame in enumerate(frames):
        # One stream per frame, keyed by (seed, t): frame t's noise does not depend on the other frames.
        _noise_frame(frame, params, t, np.random.default_rng((params.seed, t)), out[t], scratch)
    return out


# ---------------------------------------------------------------------------------------------- jpeg


@dataclass(frozen=True)
class JpegConfig:
    """JPEG compression of every frame (Real-ESRGAN; RealBasicVSR's ``RandomJPEGCompression``)."""

    quality: tuple[float, float] = (95.0, 30.0)
    """[mild, severe] JPEG quality (libjpeg scale 1–100)."""
    quality_step: float = 0.0
    """Per-frame drift of the quality (RealBasicVSR: 3)."""

    def __post_init__(self) -> None:
        check = _Checker(self)
        check.range("quality", lo=1.0, hi=100.0)
        check.number("quality_step")
        check.done()


@dataclass(frozen=True)
class JpegParams:
    """Per-frame integer JPEG quality."""

    quality: list[int]


def sample_jpeg(rng: np.random.Generator, cfg: JpegConfig, strength: float, num_frames: int) -> JpegParams:
    """Draw the quality (rounded to an integer, as cv2 needs; DiffJPEG would take the float)."""
    values = _drift_or_constant(rng, base.uniform(rng, cfg.quality, strength), cfg.quality_step, num_frames,
                                base.scaled_range(cfg.quality, strength))
    return JpegParams([round(q) for q in values])


def jpeg_frame(frame: np.ndarray, quality: int, out: np.ndarray | None = None,
               scratch: Scratch | None = None) -> np.ndarray:
    """JPEG round trip of one RGB float32 frame ``(H, W, 3)`` through libjpeg (cv2), 4:2:0 chroma.

    As basicsr's ``add_jpg_compression``: clip to [0, 1], ×255, round half to even to uint8, encode, decode,
    /255 — so a BGR frame given to basicsr gives our output's BGR bytes exactly.
    """
    scratch = scratch or Scratch()
    h, w, _ = frame.shape
    levels = quantize_levels(frame, out=scratch.get("jpeg.levels", (h, w, 3), np.uint8))
    bgr = cv2.cvtColor(levels, cv2.COLOR_RGB2BGR, dst=scratch.get("jpeg.bgr", (h, w, 3), np.uint8))
    ok, encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for a {w}x{h} frame at quality {quality}")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR_RGB)
    if out is None:
        out = np.empty((h, w, 3), np.float32)
    return np.true_divide(decoded, np.float32(255.0), out=out)


def apply_jpeg(frames: np.ndarray, params: JpegParams, ctx: Context) -> np.ndarray:
    """JPEG-compress every frame at its quality; output float32 on the 1/255 grid in [0, 1]."""
    frames = _as_frames(frames)
    out = _new_like(frames)
    scratch = Scratch()
    for t, frame in enumerate(frames):
        jpeg_frame(frame, params.quality[t], out=out[t], scratch=scratch)
    return out
