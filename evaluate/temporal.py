"""Temporal consistency and alignment: flow warping errors, frame-difference error, global-shift check.

Flow is OpenCV's DIS (Kroeger et al. 2016) on 8-bit grey frames. ``dis(a, b)`` gives the flow ``f`` with
``a(x) ≈ b(x + f(x))``, so sampling frame ``t−1`` at ``x + f_{t→t−1}(x)`` aligns it to frame ``t``.

A pixel of frame t is *valid* when its backward flow lands inside frame t−1 and the round trip is
consistent (Sundaram et al. 2010, as in Lai et al. 2018): with ``b = f_{t→t−1}(x)`` and
``w = f_{t−1→t}(x + b)``, ``|b + w|² < 0.01 (|b|² + |w|²) + 0.5``; occluded and disoccluded pixels fail it.

* ``warp_error`` (full-reference): flow from the ground truth; per frame t ≥ 1, the mean over valid pixels
  of ``‖(P_t − W P_{t−1}) − (G_t − W G_{t−1})‖²`` (sum over RGB in [0, 1]): the part of the output's
  temporal change along the true motion that the ground truth does not have. A clip scored against
  itself gives exactly 0; flicker, popping and swimming textures raise it.
* ``ewarp`` (no reference): the classic warping error ``‖P_t − W P_{t−1}‖²`` averaged over valid pixels,
  with flow estimated on the output itself (the E_warp of AIGC super-resolution papers, which have no
  ground truth). It is not 0 for real footage (lighting, blur, interpolation), so compare methods, not to 0.
* ``tdiff`` (full-reference): mean ``|(P_t − P_{t−1}) − (G_t − G_{t−1})|`` over pixels and channels: no flow,
  cheap, 0 for a clip against itself.

The global-shift check estimates the translation of an output against the ground truth by exhaustive
integer search in ±3 px on the MSE of smoothed luma (summed over a few frames), refined to sub-pixel by
a parabola through the neighbours of the minimum.
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading

import cv2
import numpy as np
import torch

FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def to_uint8_gray(x: torch.Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` RGB in [0, 1] → ``(T, H, W)`` uint8 grey (BT.601 full-range luma)."""
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return (y * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


class FlowCache:
    """DIS flow pairs keyed by frame content, so every method of a clip reuses the ground-truth flow.

    Bounded by ``max_bytes`` (least recently used pairs are dropped first). Thread-safe.
    """

    def __init__(self, preset: str = "medium", max_bytes: int = 1 << 30) -> None:
        if preset not in FLOW_PRESETS:
            raise ValueError(f"unknown flow preset '{preset}'; choose from {sorted(FLOW_PRESETS)}")
        self.preset = preset
        self.max_bytes = max_bytes
        self._store: collections.OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def _dis(self):
        # A DIS object holds per-call state; give each thread its own.
        if not hasattr(self._local, "dis"):
            self._local.dis = cv2.DISOpticalFlow_create(FLOW_PRESETS[self.preset])
        return self._local.dis

    def pair(self, prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(backward flow cur→prev, forward flow prev→cur), ``(H, W, 2)`` float32, of uint8 grey frames."""
        key = hashlib.blake2b(prev.tobytes() + cur.tobytes(), digest_size=16).digest()
        with self._lock:
            hit = self._store.get(key)
            if hit is not None:
                self._store.move_to_end(key)
                return hit
        dis = self._dis()
        value = (dis.calc(cur, prev, None), dis.calc(prev, cur, None))
        size = value[0].nbytes * 2
        with self._lock:
            self._store[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._store) > 1:
                _, old = self._store.popitem(last=False)
                self._bytes -= old[0].nbytes * 2
        return value


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx, gy


def warp_and_mask(back: np.ndarray, fwd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampling maps (x, y) for aligning frame t−1 to t, and the validity mask ``(H, W)`` bool."""
    h, w = back.shape[:2]
    gx, gy = _grid(h, w)
    mx, my = gx + back[..., 0], gy + back[..., 1]
    fwd_at = cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    round_trip = ((back + fwd_at) ** 2).sum(-1)
    bound = 0.01 * ((back**2).sum(-1) + (fwd_at**2).sum(-1)) + 0.5
    valid = (round_trip < bound) & (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return mx, my, valid


def _warp(frame: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    return cv2.remap(frame, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).to(torch.float32).cpu().numpy())  # (T, H, W, 3)


def warp_error(pred: torch.Tensor, ref: torch.Tensor | None, flows: FlowCache,
               relative: bool) -> torch.Tensor:
    """Per-frame warping error of a clip chunk ``(T, 3, H, W)`` in [0, 1] → ``(T,)`` float64, NaN at t = 0.

    ``relative=True`` is ``warp_error`` (flow from ``ref``, minus the reference's own residual);
    ``relative=False`` is ``ewarp`` (flow from ``pred``, ``ref`` unused).
    """
    p = _hwc(pred)
    g = _hwc(ref) if relative else None
    grey = to_uint8_gray(ref if relative else pred)
    out = np.full(len(p), np.nan, dtype=np.float64)
    for t in range(1, len(p)):
        mx, my, valid = warp_and_mask(*flows.pair(grey[t - 1], grey[t]))
        if not valid.any():
            continue
        resid = p[t] - _warp(p[t - 1], mx, my)  # (H, W, 3)
        if relative:
            resid = resid - (g[t] - _warp(g[t - 1], mx, my))
        out[t] = float((resid.astype(np.float64) ** 2).sum(-1)[valid].mean())
    return torch.from_numpy(out)


def frame_diff_error(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-frame ``mean |ΔP_t − ΔG_t|`` of ``(T, 3, H, W)`` clips in [0, 1] → ``(T,)`` float64, NaN at 0."""
    dp = pred[1:].double() - pred[:-1].double()
    dg = ref[1:].double() - ref[:-1].double()
    vals = (dp - dg).abs().mean(dim=(1, 2, 3)).cpu()
    return torch.cat([torch.tensor([float("nan")], dtype=torch.float64), vals])


def _parabola_offset(m_minus: float, m0: float, m_plus: float) -> float:
    denom = m_minus - 2 * m0 + m_plus
    if denom <= 0:
        return 0.0
    return float(np.clip(0.5 * (m_minus - m_plus) / denom, -0.5, 0.5))


def shift_scores(pred: np.ndarray, ref: np.ndarray, radius: int = 3) -> np.ndarray:
    """MSE of ``pred`` moved by every integer (dy, dx) in ±``radius`` against ``ref``: ``(2r+1, 2r+1)``.

    Entry ``[dy + r, dx + r]`` is small when ``pred(y + dy, x + dx) ≈ ref(y, x)``, i.e. when the content of
    ``pred`` sits ``(dx, dy)`` px right and down of where it is in ``ref``.
    """
    h, w = ref.shape
    r = radius
    if h <= 4 * r or w <= 4 * r:
        raise ValueError(f"frames of {w}×{h} are too small to search shifts of ±{r} px")
    core = ref[r:h - r, r:w - r]
    scores = np.empty((2 * r + 1, 2 * r + 1), dtype=np.float64)
    for iy, dy in enumerate(range(-r, r + 1)):
        for ix, dx in enumerate(range(-r, r + 1)):
            moved = pred[r + dy:h - r + dy, r + dx:w - r + dx]
            scores[iy, ix] = float(np.mean((moved - core) ** 2))
    return scores


def best_shift(scores: np.ndarray) -> tuple[float, float]:
    """(dx, dy) at the minimum of a shift-score grid, refined by a parabola per axis (sub-pixel)."""
    r = scores.shape[0] // 2
    iy, ix = np.unravel_index(np.argmin(scores), scores.shape)
    fx = _parabola_offset(scores[iy, ix - 1], scores[iy, ix], scores[iy, ix + 1]) if 0 < ix < 2 * r else 0.0
    fy = _parabola_offset(scores[iy - 1, ix], scores[iy, ix], scores[iy + 1, ix]) if 0 < iy < 2 * r else 0.0
    return float(ix - r + fx), float(iy - r + fy)


ALIGN_RADIUS = 3  # px searched in each direction
ALIGN_SAMPLES = 8  # frames per clip whose score grids are summed
ALIGN_SIGMA = 1.5  # Gaussian low-pass (px) applied to both lumas first


def _smooth_luma(x: torch.Tensor) -> np.ndarray:
    # Comparing low-passed luma makes the score landscape smooth and insensitive to noise and to texture
    # a generative method invents, which are not misalignment.
    return cv2.GaussianBlur(to_uint8_gray(x)[0].astype(np.float32), (0, 0), ALIGN_SIGMA)


# Below this mean gradient magnitude (grey levels per px of the smoothed ground truth) a frame has too
# little structure to locate, e.g. a plain wall; the shift is then reported as unknown (NaN).
MIN_STRUCTURE = 1.0


def clip_shift(pred: torch.Tensor, ref: torch.Tensor, samples: int = ALIGN_SAMPLES,
               radius: int = ALIGN_RADIUS) -> tuple[float, float]:
    """Global shift (dx, dy) in px of ``pred`` against ``ref`` (``(T, 3, H, W)`` clips in [0, 1]).

    Score grids of up to ``samples`` evenly spaced frames are summed before the minimum is taken, so one
    ambiguous frame cannot decide. ±``radius`` means "at least that much"; NaN means "no structure".
    """
    idx = np.unique(np.linspace(0, len(pred) - 1, min(samples, len(pred))).round().astype(int))
    total = np.zeros((2 * radius + 1, 2 * radius + 1))
    used = 0
    for i in idx:
        g = _smooth_luma(ref[i:i + 1])
        gy, gx = np.gradient(g)
        if float(np.mean(np.hypot(gx, gy))) < MIN_STRUCTURE:
            continue
        total += shift_scores(_smooth_luma(pred[i:i + 1]), g, radius)
        used += 1
    if used == 0:
        return math.nan, math.nan
    return best_shift(total)
