"""PSNR and SSIM, batched in torch, following basicsr's conventions (and pyiqa's where asked).

Conventions (basicsr 1.4.2, ``basicsr/metrics/psnr_ssim.py``), which are the defaults here:

* images are compared on the 0–255 scale in float64, after cropping ``crop_border`` pixels on each side;
* "Y" is the luma of ITU-R BT.601 *studio swing* (MATLAB's ``rgb2ycbcr``): ``Y = 16 + 65.481 R + 128.553 G
  + 24.966 B`` for R, G, B in [0, 1], computed the way basicsr computes it (float32 input, float64 dot
  product, float32 result) so that values agree with basicsr to ~1e-10;
* PSNR: ``10 log10(255² / MSE)`` per frame (``inf`` for identical frames);
* SSIM: Gaussian window 11×11, σ = 1.5, "valid" region only, C1 = (0.01·255)², C2 = (0.03·255)²; on RGB,
  the mean of the three per-channel SSIMs.

pyiqa's ``ssim``/``psnry`` instead use the *full-range* luma ``0.299 R + 0.587 G + 0.114 B`` (the Y of YIQ)
rounded to integers; ``y_matrix='bt601_full', round_y=True`` selects that, which is how pyiqa's published
calibration values for SSIM are reproduced. ``matlab_gray`` is MATLAB's ``rgb2gray`` (the grey conversion of
the official NIQE release), whose coefficients differ from 0.299/0.587/0.114 in the fourth decimal.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Row vectors applied to (R, G, B) in [0, 1]; results are on the 0–255 scale (plus the offset).
Y_MATRICES: dict[str, tuple[tuple[float, float, float], float]] = {
    "bt601_studio": ((65.481, 128.553, 24.966), 16.0),  # basicsr / MATLAB rgb2ycbcr, Y in [16, 235]
    "bt601_full": ((0.299 * 255, 0.587 * 255, 0.114 * 255), 0.0),  # YIQ / grey luma, Y in [0, 255]
    # MATLAB rgb2gray: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]), not 0.299/0.587/0.114.
    "matlab_gray": ((0.298936021293775 * 255, 0.587043074451121 * 255, 0.114020904255103 * 255), 0.0),
}


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> list[float]:
    """Normalised 1-D Gaussian, identical to ``cv2.getGaussianKernel(size, sigma)`` for sigma > 0."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).tolist()


SSIM_TAPS = _gaussian_taps()


def rgb_to_y(x: torch.Tensor, y_matrix: str = "bt601_studio", round_y: bool = False) -> torch.Tensor:
    """Luma of RGB frames: ``(N, 3, H, W)`` in [0, 1] → ``(N, 1, H, W)`` float64 on the 0–255 scale.

    ``bt601_studio`` reproduces basicsr's precision path (float32 in, float64 dot, float32 out); the
    difference from a pure float64 computation is below 1e-4 grey levels but keeps agreement exact.
    """
    if y_matrix not in Y_MATRICES:
        raise ValueError(f"unknown y_matrix '{y_matrix}'; choose from {sorted(Y_MATRICES)}")
    (wr, wg, wb), offset = Y_MATRICES[y_matrix]
    x32 = x.to(torch.float32).to(torch.float64)
    y = wr * x32[:, 0:1] + wg * x32[:, 1:2] + wb * x32[:, 2:3] + offset
    if y_matrix == "bt601_studio":
        # basicsr: float64 dot, /255 cast back to float32, then *255 in float32.
        y = ((y / 255.0).to(torch.float32) * 255.0).to(torch.float64)
    if round_y:
        y = torch.round(y)
    return y


def prepare(x: torch.Tensor, channel: str, crop_border: int, y_matrix: str, round_y: bool) -> torch.Tensor:
    """Crop and convert ``(N, 3, H, W)`` [0, 1] frames to what PSNR/SSIM compare: float64, 0–255."""
    if crop_border > 0:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
    if channel == "y":
        return rgb_to_y(x, y_matrix, round_y)
    if channel == "rgb":
        return x.to(torch.float32).to(torch.float64) * 255.0
    raise ValueError(f"unknown channel '{channel}'; choose from ['y', 'rgb']")


def psnr(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR of two ``(N, C, H, W)`` float64 batches on the 0–255 scale → ``(N,)`` float64 dB."""
    mse = (pred - ref).pow(2).mean(dim=(1, 2, 3))
    out = 10.0 * torch.log10(255.0**2 / mse)
    return torch.where(mse == 0, torch.full_like(out, math.inf), out)


def _filter_valid(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable correlation with ``taps`` over the last two dims, keeping only the valid region.

    Written as a sum of shifted slices rather than ``conv2d`` because float64 convolution has no fast
    CPU kernel; the symmetric taps are paired so each pass costs (k+1)/2 multiplications.
    """
    k = len(taps)
    half = k // 2
    for dim in (-1, -2):
        n = x.shape[dim] - k + 1
        acc = x.narrow(dim, half, n) * taps[half]
        for i in range(half):
            acc = acc + (x.narrow(dim, i, n) + x.narrow(dim, k - 1 - i, n)) * taps[i]
        x = acc
    return x


def ssim(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM of two ``(N, C, H, W)`` float64 batches on the 0–255 scale → ``(N,)`` float64.

    Channels are scored separately and averaged, as basicsr does for RGB.
    """
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = _filter_valid(pred, SSIM_TAPS), _filter_valid(ref, SSIM_TAPS)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(pred * pred, SSIM_TAPS) - mu1_sq
    s2 = _filter_valid(ref * ref, SSIM_TAPS) - mu2_sq
    s12 = _filter_valid(pred * ref, SSIM_TAPS) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)
