"""NIQE (Mittal et al., "Making a completely blind image quality analyzer", 2013), batched in torch.

Follows basicsr 1.4.2's ``calculate_niqe`` (which matches the official MATLAB release to 4 decimals) with
basicsr's pristine-model parameters (``niqe_pris_params.npz``):

1. luma (BT.601 studio Y by default, as basicsr), rounded to integers, ``crop_border`` removed;
2. crop to whole 96×96 blocks; at two scales (full, then MATLAB-bicubic ½ with antialiasing):
   MSCN = (I − μ) / (σ + 1) with a 7×7 Gaussian window and replicated borders;
3. per block, 18 features: AGGD fit (α, mean β) of the MSCN coefficients, and (α, mean, β_l, β_r) of
   the products with the 4 neighbours (horizontal, vertical, two diagonals; wrapping inside the block);
4. fit a Gaussian to the 36-d block features and return the Mahalanobis-like distance
   sqrt((μ_p − μ_d)ᵀ pinv((Σ_p + Σ_d)/2) (μ_p − μ_d)).

Everything after the luma is float64 and vectorised over frames and blocks.

``y_matrix="matlab_gray"`` takes the luma the way the official MATLAB release does (``rgb2gray``); with it the
five Kodak calibration images score within 0.6% of that release's published values, and two of them to
1e-4. The rest of the gap is float rounding, not the method: flat regions make MSCN coefficients
±1e-14 or exactly 0 depending on summation order, which moves blocks between the AGGD's left and right
halves. On those images the metric itself is conditioned no better than that: a float64 filter instead
of basicsr's float32 result, or the Gaussian's two 1-D passes taken in the other order, moves I19 by 4%;
adding 1e-4 grey levels of noise moves it by 2% (tested).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import gamma as gamma_fn

from cascadevsr.evaluate.pixel import rgb_to_y
from cascadevsr.evaluate.weights import weight_path

BLOCK = 96
# The grid of AGGD shape values searched by moment matching, exactly as the reference builds it.
_GAM = np.arange(0.2, 10.001, 0.001)
_R_GAM = np.square(gamma_fn(2 / _GAM)) / (gamma_fn(1 / _GAM) * gamma_fn(3 / _GAM))
# Neighbour offsets (rows, cols) of the pairwise products: horizontal, vertical, main and anti diagonal.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@functools.lru_cache(maxsize=8)
def load_pristine_model(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(μ (36,), Σ (36, 36), 7×7 window) from a basicsr ``niqe_pris_params.npz``."""
    with np.load(path) as p:
        return (np.ravel(p["mu_pris_param"]).astype(np.float64), p["cov_pris_param"].astype(np.float64),
                p["gaussian_window"].astype(np.float64))


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=32)
def matlab_resize_matrix(in_len: int, scale: float) -> np.ndarray:
    """``(out_len, in_len)`` matrix of MATLAB ``imresize`` (bicubic, antialiased when shrinking).

    Output pixel i (1-based) samples input position u = i/scale + (1 − 1/scale)/2 with the cubic kernel
    (a = −0.5) widened by 1/scale when shrinking; weights are normalised per row, and taps falling
    outside the image are mirrored back including the edge pixel (MATLAB's 'symmetric' padding).
    """
    out_len = math.ceil(in_len * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    taps = math.ceil(width) + 2
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    zero_based = idx.astype(np.int64) - 1
    period = 2 * in_len
    folded = np.mod(zero_based, period)
    folded = np.where(folded >= in_len, period - 1 - folded, folded)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), folded.ravel()), w.ravel())
    return mat


def _separable(window: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) vectors whose outer product is ``window``, or None when it is not rank one."""
    u, s, vt = np.linalg.svd(window)
    col, row = u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])
    return (col, row) if np.abs(np.outer(col, row) - window).max() <= 1e-15 * np.abs(window).max() else None


def _gauss_filter(x: torch.Tensor, window: np.ndarray) -> torch.Tensor:
    """7×7 correlation with replicated borders; ``x`` is ``(N, 1, H, W)`` float64.

    The Gaussian window is separable, so it runs as two 1-D passes of shifted slices: float64 ``conv2d``
    has no fast CPU kernel and took most of the time.
    """
    pad = window.shape[-1] // 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    parts = _separable(window)
    if parts is None:
        return F.conv2d(xp, torch.from_numpy(window).to(x)[None, None])
    for dim, taps in ((-2, parts[0]), (-1, parts[1])):
        n = xp.shape[dim] - len(taps) + 1
        acc = xp.narrow(dim, 0, n) * float(taps[0])
        for i in range(1, len(taps)):
            acc = acc + xp.narrow(dim, i, n) * float(taps[i])
        xp = acc
    return xp


def _aggd(v: torch.Tensor, r_gam: torch.Tensor, gam: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """AGGD parameters (α, β_l, β_r) by moment matching, for each row of ``v`` ``(B, n)``."""
    neg, pos = v < 0, v > 0
    sq = v * v
    left_std = torch.sqrt((sq * neg).sum(1) / neg.sum(1))
    right_std = torch.sqrt((sq * pos).sum(1) / pos.sum(1))
    gammahat = left_std / right_std
    rhat = v.abs().mean(1).pow(2) / sq.mean(1)
    rhatnorm = rhat * (gammahat.pow(3) + 1) * (gammahat + 1) / (gammahat.pow(2) + 1).pow(2)
    # NaN rows (a block with no negative or no positive value) pick index 0 in the reference too.
    pos_best = torch.argmin((r_gam[None, :] - rhatnorm[:, None]).pow(2).nan_to_num(math.inf), dim=1)
    alpha = gam[pos_best]
    ratio = torch.sqrt(torch.exp(torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    return alpha, left_std * ratio, right_std * ratio


def _block_features(mscn: torch.Tensor, bh: int, bw: int, r_gam: torch.Tensor,
                    gam: torch.Tensor) -> torch.Tensor:
    """18 features per block: ``(N, 1, H, W)`` MSCN → ``(N, nblocks, 18)``."""
    n, _, h, w = mscn.shape
    nh, nw = h // bh, w // bw
    blocks = mscn[:, 0, : nh * bh, : nw * bw].reshape(n, nh, bh, nw, bw).permute(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n * nh * nw, bh, bw)  # (B, bh, bw)
    alpha, bl, br = _aggd(blocks.reshape(len(blocks), -1), r_gam, gam)
    feats = [alpha, (bl + br) / 2]
    for dy, dx in _SHIFTS:
        prod = blocks * torch.roll(blocks, shifts=(dy, dx), dims=(1, 2))
        alpha, bl, br = _aggd(prod.reshape(len(prod), -1), r_gam, gam)
        mean = (br - bl) * torch.exp(torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha))
        feats += [alpha, mean, bl, br]
    return torch.stack(feats, dim=1).reshape(n, nh * nw, 18)


def niqe_luma(y: torch.Tensor, mu_p: np.ndarray, cov_p: np.ndarray, window: np.ndarray) -> torch.Tensor:
    """NIQE of ``(N, 1, H, W)`` float64 luma on the 0–255 scale (already rounded/cropped) → ``(N,)``.

    Raises:
        ValueError: frames holding fewer than two 96×96 blocks (no covariance can be fitted).
    """
    n, _, h, w = y.shape
    nh, nw = h // BLOCK, w // BLOCK
    if nh * nw < 2:
        raise ValueError(f"NIQE needs frames of at least two {BLOCK}×{BLOCK} blocks (e.g. "
                         f"{2 * BLOCK}×{BLOCK}), got {w}×{h} after cropping")
    dev = y.device
    y = y[..., : nh * BLOCK, : nw * BLOCK]
    r_gam = torch.from_numpy(_R_GAM).to(dev)
    gam = torch.from_numpy(_GAM).to(dev)
    feats = []
    y = y.to(torch.float32)
    for scale in (1, 2):
        # The reference keeps images in float32 and filters in float64 with a float32 result. That rounding
        # matters: in flat regions it makes μ equal the pixel exactly, so MSCN is exactly 0 there (neither
        # negative nor positive in the AGGD fit) instead of ±1e-14; we reproduce it.
        mu = _gauss_filter(y.double(), window).float()
        var = _gauss_filter((y * y).double(), window).float()
        mscn = (y - mu) / (torch.sqrt((var - mu * mu).abs()) + 1)
        feats.append(_block_features(mscn.double(), BLOCK // scale, BLOCK // scale, r_gam, gam))
        if scale == 1:
            rh = torch.from_numpy(matlab_resize_matrix(y.shape[-2], 0.5)).to(dev)
            rw = torch.from_numpy(matlab_resize_matrix(y.shape[-1], 0.5)).to(dev)
            y = (rh @ (y / 255.0).double() @ rw.T).float() * 255.0  # (N, 1, H/2, W/2)
    dist = torch.cat(feats, dim=2)  # (N, nblocks, 36)
    mu_p_t = torch.from_numpy(mu_p).to(dev)
    cov_p_t = torch.from_numpy(cov_p).to(dev)
    out = torch.empty(n, dtype=torch.float64, device=dev)
    for i in range(n):
        d = dist[i]
        mu_d = torch.nanmean(d, dim=0)
        clean = d[~torch.isnan(d).any(dim=1)]
        cov_d = torch.cov(clean.T)
        # numpy's pinv cut-off (rcond = 1e-15 × largest singular value), which the reference uses.
        inv = torch.linalg.pinv((cov_p_t + cov_d) / 2, rtol=1e-15)
        diff = mu_p_t - mu_d
        out[i] = torch.sqrt(diff @ inv @ diff)
    return out


def niqe(x: torch.Tensor, params_path: str | Path | None = None, weights_dir: str | Path | None = None,
         crop_border: int = 0, y_matrix: str = "bt601_studio") -> torch.Tensor:
    """NIQE of RGB frames ``(N, 3, H, W)`` in [0, 1] → ``(N,)`` float64 (lower is better)."""
    path = str(params_path) if params_path is not None else str(weight_path("niqe_pris_params", weights_dir))
    mu_p, cov_p, window = load_pristine_model(path)
    y = torch.round(rgb_to_y(x, y_matrix))
    if crop_border > 0:
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    return niqe_luma(y, mu_p, cov_p, window)
