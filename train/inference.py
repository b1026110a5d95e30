"""Inference for any length and size: Euler sampling with per-step stitching over windows and tiles.

Three nested levels, all with blended overlaps, never hard cuts:

* **segments** (:func:`upscale_video`) -- the video is streamed in segments of ``segment`` latent frames;
  each is read, encoded, upscaled, decoded and written before the next one is read, so memory is bounded
  by one segment whatever the length. Overlapping frames of consecutive segments are blended in pixel
  space.
* **temporal windows** (:func:`upscale_latent`) -- inside a segment the model runs on windows of
  ``window`` latent frames (the training length), overlapping by ``window_overlap``; at *every* Euler step
  the windows' velocities are stitched into one velocity for the whole segment (STAR-style), so windows
  agree as they denoise.
* **spatial tiles** -- each window is run in tiles of ``tile`` latent pixels overlapping by
  ``tile_overlap``, stitched the same way.

All windows of a segment have one length and all tiles one size (the merged tail keeps the size), so the
(window, tile) chunks of one Euler step are run ``tile_batch`` at a time, stacked along the batch axis of
one model call. Chunks never interact inside the model, so batching changes only float32 summation order,
not the result beyond rounding; the noise is drawn for the whole segment before any chunk is cut from it.

:func:`windows` and :func:`stitch` are the pure building blocks: the last window is moved back to end at
the clip's end (a "merged tail"), and stitching blends overlaps with a linear ramp as
``old + w·(new - old)``, so chunks that agree are reproduced exactly.

Noise is drawn per latent frame from ``(seed, key)``, where the key is the index of the last video frame
the latent frame covers; overlapping segments therefore start from the same noise where they overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cascadevsr.errors import UserError
from cascadevsr.latent import LatentCodec, pixel_frames, valid_length
from cascadevsr.train import flow
from cascadevsr.train.model import VSRModel

# --------------------------------------------------------------------------------- windows and stitch


def windows(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of ``size`` covering ``range(length)``, consecutive ones overlapping by ``overlap``.

    The last span is moved back to end at ``length`` (it then overlaps its neighbour by more); a length up
    to ``size`` is one span.
    """
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    if length <= size:
        return [(0, length)]
    stride = size - overlap
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return [(s, s + size) for s in starts]


def stitch(chunks: Sequence[torch.Tensor], spans: Sequence[tuple[int, int]], length: int,
           dim: int) -> torch.Tensor:
    """Join ``chunks`` (each covering ``spans[i]`` along ``dim``) into one tensor of ``length`` along ``dim``.

    Spans are sorted by start and leave no gap. Where a chunk overlaps what is already placed, the result
    moves from the old values to the new ones along a linear ramp (weights (j+1)/(n+1)), computed as
    ``old + w·(new - old)``: identical chunks come back bit for bit.
    """
    if len(chunks) != len(spans) or not spans:
        raise ValueError("need one span per chunk, and at least one")
    first = chunks[0]
    dim = dim % first.dim()
    shape = list(first.shape)
    shape[dim] = length
    out = first.new_empty(shape)
    filled = 0
    for chunk, (start, end) in zip(chunks, spans, strict=True):
        if chunk.shape[dim] != end - start:
            raise ValueError(f"chunk of size {chunk.shape[dim]} does not match span {(start, end)}")
        if start > filled:
            raise ValueError(f"spans leave a gap at {filled}..{start}")
        n = max(0, min(filled, end) - start)
        if n:
            view = [1] * out.dim()
            view[dim] = n
            w = (torch.arange(1, n + 1, dtype=out.dtype, device=out.device) / (n + 1)).view(view)
            old = out.narrow(dim, start, n)
            out.narrow(dim, start, n).copy_(old + w * (chunk.narrow(dim, 0, n) - old))
        if end - start - n > 0:
            out.narrow(dim, start + n, end - start - n).copy_(chunk.narrow(dim, n, end - start - n))
        filled = max(filled, end)
    if filled < length:
        raise ValueError(f"spans end at {filled}, before the length {length}")
    return out


# ------------------------------------------------------------------------------------------ settings


@dataclass
class InferenceConfig:
    """How to run the model over a clip."""

    steps: int = 50
    """Euler steps (the paper uses 50)."""
    noise_level: float | None = None
    """Fixed LR noise-augmentation level s; None = the model config's ``noise_level``."""
    seed: int = 0
    """Seed of the initial noise and of the augmentation noise."""
    shift: float = 1.0
    """Timestep-grid warp (1 = uniform grid)."""
    window: int = 20
    """Latent frames per temporal window (20 = the paper's 77-frame training length)."""
    window_overlap: int = 5
    """Latent frames shared by consecutive windows."""
    tile: int = 96
    """Tile side in HR latent pixels."""
    tile_overlap: int = 16
    """HR latent pixels shared by neighbouring tiles."""
    tile_batch: int = 8
    """(window, tile) chunks stacked into one model call; peak activation memory grows with it, so it is
    a cap rather than "all chunks" (see benchmarks/RESULTS.md for the measurement behind the default)."""
    segment: int = 60
    """Latent frames per streamed segment (memory bound for long videos)."""
    segment_overlap: int = 5
    """Latent frames shared by consecutive segments."""

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append("steps: must be >= 1")
        if self.tile_batch < 1:
            problems.append("tile_batch: must be >= 1")
        if self.noise_level is not None and not 0 <= self.noise_level <= 1:
            problems.append("noise_level: must be in [0, 1]")
        for size, overlap in (("window", "window_overlap"), ("tile", "tile_overlap"),
                              ("segment", "segment_overlap")):
            if getattr(self, size) < 1 or not 0 <= getattr(self, overlap) < getattr(self, size):
                problems.append(f"{overlap}: need 0 <= {overlap} < {size} and {size} >= 1")
        if self.segment < 2 or self.segment_overlap < 1:
            problems.append("segment_overlap: segments need >= 2 latent frames and share >= 1")
        if problems:
            raise UserError("invalid inference settings: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------- latents


def frame_noise(seed: int, keys: Sequence[int], shape: tuple[int, ...], device: str | torch.device = "cpu"
                ) -> torch.Tensor:
    """Gaussian noise ``(B, C, len(keys), H, W)`` for ``shape = (B, C, H, W)``, one generator per key."""
    frames = []
    for key in keys:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        frames.append(torch.randn(shape, generator=g))
    return torch.stack(frames, dim=2).to(device)


@torch.no_grad()
def upscale_latent(model: VSRModel, lr_latent: torch.Tensor, size: tuple[int, int], icfg: InferenceConfig,
                   frame_keys: Sequence[int] | None = None, text: torch.Tensor | None = None,
                   callback: Callable[[flow.EulerStep], None] | None = None,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """HR latent ``(B, C, T, *size)`` from an LR latent ``(B, C, T, h, w)``: Euler over windows × tiles.

    ``frame_keys`` (default ``0..T-1``) name each latent frame for :func:`frame_noise`. ``callback`` sees
    x̂0 of the whole clip at every step; ``progress(n)`` is called after every model evaluation.
    """
    B, C, T = lr_latent.shape[:3]
    H, W = size
    keys = list(range(T)) if frame_keys is None else list(frame_keys)
    s = model.cfg.noise_level if icfg.noise_level is None else icfg.noise_level
    device = lr_latent.device
    noise = frame_noise(icfg.seed, keys, (B, C, H, W), device)  # (B, C, T, H, W)
    cond_shape = model.cond_shape(tuple(lr_latent.shape), size)
    aug = frame_noise(icfg.seed + 1, keys, (B, C, *cond_shape[-2:]), device)
    spans_t = windows(T, icfg.window, icfg.window_overlap)
    spans_h = windows(H, icfg.tile, icfg.tile_overlap)
    spans_w = windows(W, icfg.tile, icfg.tile_overlap)
    if model.token_concat and (len(spans_h) > 1 or len(spans_w) > 1):
        raise UserError("token_concat models run on whole frames; raise --tile to at least "
                        f"{max(H, W)} latent pixels")
    # The conditioning is fixed over all steps (paper §4.1): computed once per window.
    conds = [model.condition(lr_latent[:, :, a:b], size, s, aug[:, :, a:b]) for a, b in spans_t]

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        chunks = chunk_velocities(model, x, t, conds, s, text, spans_t, spans_h, spans_w, icfg.tile_batch,
                                  progress)
        # Consumed in the order they are produced, so only one batch of tile velocities waits at a time.
        per_window = []
        for _ in spans_t:
            rows = [stitch([next(chunks) for _ in spans_w], spans_w, W, dim=-1) for _ in spans_h]
            per_window.append(stitch(rows, spans_h, H, dim=-2))
        return stitch(per_window, spans_t, T, dim=2)

    return flow.euler_sample(velocity, noise, icfg.steps, icfg.shift, callback)


def chunk_velocities(model: VSRModel, x: torch.Tensor, t: float, conds: Sequence[torch.Tensor],
                     s: float, text: torch.Tensor | None, spans_t: Sequence[tuple[int, int]],
                     spans_h: Sequence[tuple[int, int]], spans_w: Sequence[tuple[int, int]], batch: int,
                     progress: Callable[[int], None] | None = None) -> Iterator[torch.Tensor]:
    """Velocity of every (window, row, column) chunk of ``x`` at time ``t``, in that order, ``batch`` per call.

    ``conds[i]`` is window ``i``'s conditioning. Each yielded tensor is one chunk ``(B, C, t, h, w)``; the
    generator runs the model only when the previous batch is used up. ``progress(n)`` gets the number of
    chunks each call evaluated.
    """
    B = x.shape[0]
    cuts = [(cond, a, b, ys, xs) for (a, b), cond in zip(spans_t, conds, strict=True)
            for ys in spans_h for xs in spans_w]
    for i in range(0, len(cuts), batch):
        group = cuts[i:i + batch]
        z = torch.cat([x[:, :, a:b, y0:y1, x0:x1] for _, a, b, (y0, y1), (x0, x1) in group])
        # token_concat models see the window's whole LR-size conditioning (they run on one tile).
        c = torch.cat([cond if model.token_concat else cond[..., y0:y1, x0:x1]
                       for cond, _, _, (y0, y1), (x0, x1) in group])
        tt = torch.full((len(group) * B,), t, device=x.device)
        txt = None if text is None else text.repeat(len(group), *[1] * (text.dim() - 1))
        v = model.velocity(z, tt, c, s, txt)
        if progress is not None:  # before yielding: the consumer stops pulling after the last chunk
            progress(len(group))
        yield from v.split(B)


def model_evaluations(num_latent: int, size: tuple[int, int], icfg: InferenceConfig) -> int:
    """How many chunk evaluations :func:`upscale_latent` makes (for progress bars; one model call runs up
    to ``icfg.tile_batch`` of them)."""
    n = len(windows(num_latent, icfg.window, icfg.window_overlap))
    n *= len(windows(size[0], icfg.tile, icfg.tile_overlap))
    n *= len(windows(size[1], icfg.tile, icfg.tile_overlap))
    return n * icfg.steps


# -------------------------------------------------------------------------------------------- frames


def hr_latent_size(lr_latent_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """HR latent grid for an LR latent grid: ``round(h·scale) × round(w·scale)``."""
    return max(1, round(lr_latent_size[0] * scale)), max(1, round(lr_latent_size[1] * scale))


def to_float_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8`` (T, H, W, 3) (or float in [0, 1]) -> float tensor (T, 3, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(frames))
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x.permute(0, 3, 1, 2).contiguous()


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """Float (T, 3, H, W) in [0, 1] -> ``uint8`` (T, H, W, 3), rounded."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def upscale_frames(model: VSRModel, codec: LatentCodec, frames: np.ndarray | torch.Tensor,
                   icfg: InferenceConfig, scale: float | None = None, first_key: int = 0,
                   progress: Callable[[int], None] | None = None, device: str | torch.device = "cpu"
                   ) -> torch.Tensor:
    """Upscale one segment of LR frames ``(T, H, W, 3)``; returns float HR frames ``(T, 3, H·s, W·s)``.

    Frames are padded (edge replication) to a length and size the codec accepts and cropped back after
    decoding; ``first_key`` is the index of the segment's first frame in the whole video (noise keys).
    """
    scale = model.cfg.scale if scale is None else scale
    x = to_float_frames(frames)  # (T, 3, H, W)
    T, _, H, W = x.shape
    tf, sf = codec.time_factor, codec.space_factor
    Tp = valid_length(T, tf)
    x = torch.cat([x, x[-1:].expand(Tp - T, -1, -1, -1)]) if Tp > T else x
    pad = (0, (-W) % sf, 0, (-H) % sf)
    x = F.pad(x, pad, mode="replicate") if any(pad) else x
    lr_latent = codec.encode(x[None].to(device))  # (1, C, t, h, w)
    t = lr_latent.shape[2]
    keys = [first_key] + [first_key + i * tf for i in range(1, t)]  # last frame each latent frame covers
    size = hr_latent_size(tuple(lr_latent.shape[-2:]), scale)
    hr_latent = upscale_latent(model, lr_latent, size, icfg, frame_keys=keys, progress=progress)
    hr = codec.decode(hr_latent)[0]  # (Tp, 3, H', W')
    return hr[:T, :, : round(H * scale), : round(W * scale)].float().cpu()


def segment_spans(num_frames: int, icfg: InferenceConfig, time_factor: int) -> list[tuple[int, int]]:
    """[start, end) video-frame spans of the streamed segments.

    A segment of S latent frames spans ``1 + tf·(S - 1)`` video frames; consecutive ones start
    ``tf·(S - overlap)`` frames apart, so their latent frames cover the same video frames (the codec's
    frame grid) and share ``1 + tf·(overlap - 1)`` video frames. Only the merged tail may start off the grid.
    """
    size = pixel_frames(icfg.segment, time_factor)
    return windows(num_frames, size, 1 + time_factor * (icfg.segment_overlap - 1))


def upscale_stream(model: VSRModel, codec: LatentCodec, read: Callable[[int, int], np.ndarray],
                   num_frames: int, icfg: InferenceConfig, scale: float | None = None,
                   progress: Callable[[int], None] | None = None, device: str | torch.device = "cpu"
                   ) -> Iterator[np.ndarray]:
    """Yield ``uint8`` HR chunks ``(t, H', W', 3)`` of a video read by ``read(start, end)``, per segment.

    Frames shared by two segments are blended (linear ramp) before they are yielded; at most one segment
    plus its overlap is in memory.
    """
    spans = segment_spans(num_frames, icfg, codec.time_factor)
    tail: torch.Tensor | None = None  # HR frames of the previous segment not yet yielded
    for i, (start, end) in enumerate(spans):
        hr = upscale_frames(model, codec, read(start, end), icfg, scale, start, progress, device)
        if tail is not None:
            hr = stitch([tail, hr], [(0, tail.shape[0]), (0, hr.shape[0])], hr.shape[0], dim=0)
        next_start = spans[i + 1][0] if i + 1 < len(spans) else end
        yield to_uint8_frames(hr[: next_start - start])
        tail = hr[next_start - start:]


# ------------------------------------------------------------------------------------- as a method


class CheckpointUpscaler:
    """A trained checkpoint as a callable method: ``upscaler(lr_uint8 (T, H, W, 3), (h, w)) -> (T, h, w, 3)``.

    This is the interface the evaluation harness scores (name, ``__call__``, ``describe``). The model runs
    over the clip in streamed segments, temporal windows and tiles like ``cascadevsr upscale``; its output is
    resized to the requested size when that differs from ``scale ×`` the input (a rounding difference).
    """

    def __init__(self, path: str | Path, steps: int = 50, noise_level: float | None = None,
                 device: str = "cpu", seed: int = 0, tile_batch: int | None = None) -> None:
        from cascadevsr.latent import make_codec
        from cascadevsr.train.model import load_checkpoint

        self.name = Path(path).stem
        self.path = str(path)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        self.model, state = load_checkpoint(path, device=self.device)
        self.step = state.get("step")
        self.codec = make_codec(self.model.cfg.codec, device=self.device)
        tile = training_tile(state, self.codec.space_factor)
        settings: dict[str, Any] = {"tile": tile, "tile_overlap": max(1, tile // 4)} if tile else {}
        if tile_batch is not None:
            settings["tile_batch"] = tile_batch
        self.icfg = InferenceConfig(steps=steps, noise_level=noise_level, seed=seed, **settings)

    def __call__(self, lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        import cv2

        with torch.no_grad():
            chunks = upscale_stream(self.model, self.codec, lambda a, b: lr[a:b], len(lr), self.icfg,
                                    device=self.device)
            hr = np.concatenate(list(chunks))
        h, w = size
        if hr.shape[1:3] != (h, w):
            hr = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in hr])
        return hr

    def describe(self) -> dict[str, Any]:
        return {"kind": "cascadevsr checkpoint", "checkpoint": self.path, "step": self.step,
                "steps": self.icfg.steps, "noise_level": self.icfg.noise_level, "seed": self.icfg.seed,
                "scale": self.model.cfg.scale, "codec": self.model.cfg.codec}


def training_tile(state: dict[str, Any], space_factor: int) -> int | None:
    """HR-latent tile side matching the crops a checkpoint was trained on, or None when it does not say.

    Ours: a model trained only on small crops has never attended over a larger field, and on whole frames
    it degrades (and full attention there costs quadratically more), so as a method it runs in tiles of its
    training crop size, blended as usual.
    """
    data = (state.get("config") or {}).get("data") or {}
    crop, scale = data.get("crop_size"), (state.get("model_config") or {}).get("scale")
    if not crop or not scale:
        return None
    return max(2, round(crop * scale / space_factor))


def load_upscaler(path: str | Path, steps: int = 50, noise_level: float | None = None,
                  device: str = "cpu", tile_batch: int | None = None) -> CheckpointUpscaler:
    """Load a checkpoint (file or run folder) as a method the evaluation harness can score.

    ``tile_batch`` (default: :class:`InferenceConfig`'s) only trades memory for speed; results do not
    depend on it beyond float32 rounding.
    """
    return CheckpointUpscaler(path, steps=steps, noise_level=noise_level, device=device, tile_batch=tile_batch)
