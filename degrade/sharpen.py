"""Unsharp masking of the HR frames (Real-ESRGAN's ``USMSharp``; RealBasicVSR's ``UnsharpMasking``).

Real-ESRGAN and RealBasicVSR sharpen the ground truth before training and degrade the *sharpened* frames. The
operation (basicsr 1.4.2 ``USMSharp(radius=50)``, mmagic ``UnsharpMasking(kernel_size=51)``) is::

    blur     = G * img                        G: 51×51 Gaussian, σ = 8 (cv2.getGaussianKernel(51, 0))
    residual = img - blur
    mask     = |residual| · 255 > threshold   per channel, threshold 10
    soft     = G * mask
    out      = soft · clip(img + weight · residual, 0, 1) + (1 - soft) · img        weight 0.5

(``USMSharp(radius=50)`` bumps an even radius to 51 and uses it as the kernel *size*, so the kernel is 51×51,
not 101×101.) Both blurs use reflect-101 borders, as basicsr's ``filter2D``.

A dense 51×51 blur is what makes basicsr's pipeline slow (about 44 s per 16 frames at 720p on one core), and
even OpenCV's separable ``GaussianBlur`` costs about 18 ms per 720p frame. Since σ = 8 is large, the default
here blurs through a Gaussian pyramid: two ``pyrDown`` (5-tap binomial, variance 1 px² at the level it runs
on), a small Gaussian at quarter resolution, two ``pyrUp``; the quarter-resolution σ is chosen so the total
variance is σ². The binomial pre-filters suppress aliasing by > 1e3 at the frequencies σ = 8 lets through;
what remains is mostly the exact kernel's truncation at ±25 px, which the pyramid does not reproduce. On real
frames the sharpened output is within 2e-3 of basicsr's (≈ 0.5 grey level; mean 1e-4), at a quarter of the
cost; ``exact=True`` uses the 51-tap kernel instead.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from cascadevsr.degrade.kernels import Scratch

USM_KERNEL_SIZE = 51
USM_WEIGHT = 0.5
USM_THRESHOLD = 10.0
_BORDER = cv2.BORDER_REFLECT_101
# Variance in full-resolution px² that two pyrDown and two pyrUp add on top of the quarter-resolution blur:
# each pyrDown/pyrUp filter has variance 1 px² at the finer of its two levels (1 + 4 + 4 + 1).
_PYRAMID_VARIANCE = 10.0
# Reflect-101 padding (px, a multiple of 4) added before the pyramid: covers the 25-px kernel radius plus the
# pyramid filters' reach.
_MARGIN = 40
# Rows per strip in the per-pixel part of usm_frame: 16 rows of a 1280-px RGB frame are 245 kB per array.
_STRIP = 16


@functools.cache
def usm_kernel_1d(kernel_size: int = USM_KERNEL_SIZE) -> np.ndarray:
    """The 1-D Gaussian of the USM blur, ``(k, 1)`` float32, as ``cv2.getGaussianKernel(k, 0)``."""
    return cv2.getGaussianKernel(kernel_size, 0).astype(np.float32)


@functools.cache
def _quarter_sigma(kernel_size: int) -> float:
    # cv2.getGaussianKernel(k, 0) uses σ = 0.3·((k − 1)/2 − 1) + 0.8 (= 8 for k = 51). Matching the pyramid's
    # total variance to σ² (not to the truncated kernel's 63.0 px²) fits the kernel's core best: the L1
    # distance between the pyramid's impulse response and the exact 51×51 kernel is 0.006 instead of 0.013.
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    return math.sqrt(max(sigma * sigma - _PYRAMID_VARIANCE, 1e-6)) / 4.0


def blur(image: np.ndarray, kernel_size: int = USM_KERNEL_SIZE, exact: bool = False,
         scratch: Scratch | None = None, tag: str = "blur") -> np.ndarray:
    """The USM blur of one image ``(H, W)`` or ``(H, W, C)`` float32; reflect-101 borders.

    ``exact`` applies the separable 51-tap kernel; otherwise the pyramid approximation described above.
    Frames smaller than 16 px on a side always use the exact kernel. With a ``scratch``, the result may be a
    view into its buffers named ``tag``: valid until the next call with the same tag.
    """
    if exact or min(image.shape[:2]) < 16:
        g = usm_kernel_1d(kernel_size)
        return cv2.sepFilter2D(image, -1, g, g, borderType=_BORDER)
    scratch = scratch or Scratch()
    h, w = image.shape[:2]
    # Pad with reflect-101 first so that the pyramid sees the same border as the exact kernel would; the
    # pyramid's own border rules then act on the padding only. m is a multiple of 4 so the levels align.
    m = min(_MARGIN, 4 * (min(h, w) // 4 - 1))
    rest = image.shape[2:]
    padded = scratch.get(f"{tag}.pad", (h + 2 * m, w + 2 * m, *rest))
    cv2.copyMakeBorder(image, m, m, m, m, _BORDER, dst=padded)
    hh, hw = (padded.shape[0] + 1) // 2, (padded.shape[1] + 1) // 2
    qh, qw = (hh + 1) // 2, (hw + 1) // 2
    half = scratch.get(f"{tag}.half", (hh, hw, *rest))
    quarter = scratch.get(f"{tag}.quarter", (qh, qw, *rest))
    cv2.pyrDown(padded, dst=half, dstsize=(hw, hh), borderType=_BORDER)
    cv2.pyrDown(half, dst=quarter, dstsize=(qw, qh), borderType=_BORDER)
    sigma = _quarter_sigma(kernel_size)
    smooth = scratch.get(f"{tag}.smooth", quarter.shape)
    cv2.GaussianBlur(quarter, (0, 0), sigma, dst=smooth, borderType=_BORDER)
    cv2.pyrUp(smooth, dst=half, dstsize=(hw, hh), borderType=_BORDER)
    cv2.pyrUp(half, dst=padded, dstsize=(padded.shape[1], padded.shape[0]), borderType=_BORDER)
    return padded[m : m + h, m : m + w]


def usm_frame(image: np.ndarray, weight: float = USM_WEIGHT, threshold: float = USM_THRESHOLD,
              exact: bool = False, out: np.ndarray | None = None,
              scratch: Scratch | None = None) -> np.ndarray:
    """Unsharp-mask one image ``(H, W, 3)`` float32 in [0, 1]; the result (float32, [0, 1]) goes to ``out``
    (a new array if None). ``image`` is not modified."""
    scratch = scratch or Scratch()
    h, w, c = image.shape
    if out is None:
        out = np.empty_like(image)
    # The per-pixel arithmetic runs on strips of rows, so the five intermediate arrays of a strip stay in
    # cache: over whole 720p frames each of those passes is bound by memory bandwidth, not arithmetic.
    # Channels are folded into the width, (h, w·c), so every cv2 call sees a single-channel array.
    flat = image.reshape(h, w * c)
    blurred = blur(image, exact=exact, scratch=scratch, tag="image").reshape(h, w * c)
    mask = scratch.get("usm.mask", (h, w * c))
    limit = threshold / 255.0
    for rows in _strips(h):
        # mask = |img − blur|·255 > threshold, as 0/1 float32
        cv2.absdiff(flat[rows], blurred[rows], dst=mask[rows])
        cv2.threshold(mask[rows], limit, 1.0, cv2.THRESH_BINARY, dst=mask[rows])
    soft = blur(mask.reshape(h, w, c), exact=exact, scratch=scratch, tag="mask").reshape(h, w * c)
    result = out.reshape(h, w * c)
    delta = scratch.get("usm.delta", (_STRIP, w * c))
    for rows in _strips(h):
        n = rows.stop - rows.start
        d = delta[:n]
        # out = img + soft·(clip(img + weight·(img − blur), 0, 1) − img)
        cv2.addWeighted(flat[rows], 1.0 + weight, blurred[rows], -weight, 0.0, dst=d)
        np.clip(d, 0.0, 1.0, out=d)
        cv2.subtract(d, flat[rows], dst=d)
        cv2.multiply(d, soft[rows], dst=d)
        cv2.add(flat[rows], d, dst=result[rows])
    return out


def _strips(height: int) -> list[slice]:
    return [slice(y, min(y + _STRIP, height)) for y in range(0, height, _STRIP)]


def usm_sharpen(frames: np.ndarray, weight: float = USM_WEIGHT, threshold: float = USM_THRESHOLD,
                exact: bool = False) -> np.ndarray:
    """Unsharp-mask a clip: float32 ``(T, H, W, 3)`` in [0, 1] → a new float32 clip of the same shape.

    ``weight`` scales the added residual; ``threshold`` is in 0–255 grey levels; ``exact`` selects the
    51-tap kernel (slower) instead of the pyramid (default, within ~2e-3 of it, mean 1e-4).
    """
    frames = np.asarray(frames, dtype=np.float32)
    out = np.empty_like(frames)
    scratch = Scratch()
    for t, frame in enumerate(frames):
        usm_frame(frame, weight, threshold, exact, out=out[t], scratch=scratch)
    return out
