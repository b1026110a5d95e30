"""Timestep analysis (SimpleGVR §4.3, Fig. 5): how much high-frequency detail each sampling step adds.

A checkpoint trained with the uniform timestep sampler is run for N Euler steps on each LR clip, exactly as
``cascadevsr upscale`` runs it (same noise, windows and tiles; each clip is one segment, so ``--frames``
bounds memory). At every step the clean estimate ``x̂0 = x_t - t·v`` is taken in the latent space and
high-pass filtered; the change of that high-frequency content across each step is the step's *detail
variation*. Choices that are ours (the paper leaves them open):

* **DCT**: 2-D DCT-II, orthonormal, over (rows, columns) of every latent frame and channel (the latent is
  what the paper's ``ẑ0`` is; a 3-D DCT would mix time in).
* **High frequency**: coefficient (u, v) of an H×W latent frame is kept when its normalised radial frequency
  ``sqrt((u/H)² + (v/W)²)`` exceeds ``cutoff`` (1 = the Nyquist frequency along one axis; default 0.5).
* **Variation** of step i (from ``t_i`` to ``t_{i+1}`` on the grid ``1 = t_0 > … > t_N = 0``):
  ``d_i = ‖H(x̂0 after) − H(x̂0 before)‖₂ / sqrt(n)``, the root-mean-square change per kept coefficient
  (n = kept coefficients × channels × latent frames), so clips of any size and length are on one scale and
  a clip with more changing detail weighs more in the mean, as in the paper's plain average over videos.
  "Before" is x̂0 predicted at ``t_i``, "after" the one predicted at ``t_{i+1}``; after the last step it is
  the sampler's output, which for Euler equals the last prediction (``x_t + (0 - t)·v = x_t - t·v``), so
  the last step's variation is 0 by construction.
* **Density**: bin i of the detail-aware sampler is the step's interval ``[t_{i+1}, t_i]`` and gets the
  mean variation over clips, normalised to sum 1 (``density.json``, the format
  :meth:`cascadevsr.train.flow.PiecewiseConstantSampler.from_file` reads, edges increasing from 0 to 1).
  The last bin ``[0, t_{N-1}]`` therefore gets no mass: N-step inference never evaluates the model there.

Outputs in ``--out``: ``timesteps.parquet`` (``clip, step, t_from, t_to, variation``; the rows with
``clip = "mean"`` are the mean over clips of each step), ``density.json`` and ``analysis.json`` (the
protocol and the resolved config).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cascadevsr import __version__
from cascadevsr.errors import UserError
from cascadevsr.evaluate.clips import VIDEO_SUFFIXES, Clip, discover
from cascadevsr.evaluate.run import write_results

log = logging.getLogger(__name__)

COLUMNS = ("clip", "step", "t_from", "t_to", "variation")
MEAN_CLIP = "mean"
FORMAT = "cascadevsr.timesteps/1"


# -------------------------------------------------------------------------------------------- the DCT


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (n, n): ``X = D @ x`` for a length-n signal, ``x = D.T @ X``."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II over the last two dimensions of ``x`` ``(..., H, W)``, in float64."""
    x = x.to(torch.float64)
    dh = dct_matrix(x.shape[-2]).to(x.device)
    dw = dct_matrix(x.shape[-1]).to(x.device)
    return dh @ x @ dw.T


def high_pass_mask(height: int, width: int, cutoff: float) -> torch.Tensor:
    """Bool ``(H, W)``: DCT coefficients (u, v) with ``sqrt((u/H)² + (v/W)²) > cutoff``."""
    u = torch.arange(height, dtype=torch.float64)[:, None] / height
    v = torch.arange(width, dtype=torch.float64)[None, :] / width
    return torch.sqrt(u**2 + v**2) > cutoff


def high_frequency(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The kept DCT coefficients of every frame and channel of ``x`` ``(..., H, W)``: ``(..., n_kept)``.

    Raises:
        UserError: no coefficient of an H×W frame lies above ``cutoff``.
    """
    mask = high_pass_mask(x.shape[-2], x.shape[-1], cutoff).to(x.device)
    if not mask.any():
        raise UserError(f"no DCT coefficient of a {x.shape[-2]}x{x.shape[-1]} latent frame lies above "
                        f"--cutoff {cutoff}; lower it (the highest is "
                        f"{math.hypot(1 - 1 / x.shape[-2], 1 - 1 / x.shape[-1]):.3f}).")
    return dct2(x)[..., mask]


def rms_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square of ``b - a`` over all elements (the variation between two high-pass results)."""
    return float(torch.sqrt(torch.mean((b - a) ** 2)))


def detail_variation(x0_sequence: Sequence[torch.Tensor], cutoff: float = 0.5) -> np.ndarray:
    """Variation between consecutive entries of a sequence of x̂0 latents ``(..., H, W)``: ``(len - 1,)``.

    The definition the analysis uses (module docstring), for whole sequences held in memory.
    """
    hf = [high_frequency(x, cutoff) for x in x0_sequence]
    return np.array([rms_change(a, b) for a, b in itertools.pairwise(hf)], dtype=np.float64)


# ------------------------------------------------------------------------------------------ settings


@dataclass
class TimestepConfig:
    """Settings of a timestep analysis (``cascadevsr analyze timesteps``).

    Attributes:
        checkpoint: checkpoint file or run folder (the model trained with the uniform sampler).
        lr: LR clips: folders of clips (``evaluate`` layout) and/or video files.
        out: output folder.
        steps: Euler steps N of the analysed inference (the paper: 50).
        noise_level: fixed LR noise-augmentation level; None = the checkpoint's default.
        seed: seed of the sampling and augmentation noise.
        start, end: frame range ``[start, end)`` of every clip (end None = to the end).
        max_clips: analyse only the first N clips in name order (None = all).
        cutoff: high-pass cut-off on the normalised radial DCT frequency.
        floor: weight of the uniform density mixed into the derived one (0 = the paper's literal density).
        device: torch device of the model.
    """

    checkpoint: Path
    lr: list[Path]
    out: Path
    steps: int = 50
    noise_level: float | None = None
    seed: int = 0
    start: int = 0
    end: int | None = None
    max_clips: int | None = None
    cutoff: float = 0.5
    floor: float = 0.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 2:
            problems.append(f"--steps must be >= 2 (one step has no variation), got {self.steps}")
        if self.noise_level is not None and not 0 <= self.noise_level <= 1:
            problems.append(f"--noise-level must lie in [0, 1], got {self.noise_level}")
        if not 0 <= self.cutoff < math.sqrt(2):
            problems.append(f"--cutoff must lie in [0, {math.sqrt(2):.4f}) (radial frequency, 1 = Nyquist "
                            f"along one axis), got {self.cutoff}")
        if not 0 <= self.floor < 1:
            problems.append(f"--floor must lie in [0, 1) (the uniform share of the density), got {self.floor}")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            problems.append(f"--frames: need 0 <= start < end, got {self.start}:{self.end}")
        if self.max_clips is not None and self.max_clips < 1:
            problems.append(f"--max-clips must be >= 1, got {self.max_clips}")
        if not self.lr:
            problems.append("--lr: give a folder of LR clips or LR video files")
        if problems:
            raise UserError("; ".join(problems) + ".")
        self.checkpoint, self.out = Path(self.checkpoint), Path(self.out)
        self.lr = [Path(p) for p in self.lr]


@dataclass
class TimestepResult:
    """What an analysis wrote: the rows, the density (edges, bin probabilities) and the protocol."""

    rows: pd.DataFrame
    edges: list[float]
    pdf: list[float]
    protocol: dict[str, Any]


# ------------------------------------------------------------------------------------------- inputs


def collect_clips(paths: Sequence[Path]) -> dict[str, Clip]:
    """Clips by name from folders of clips and single video files; a repeated name is a ``UserError``."""
    clips: dict[str, Clip] = {}
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            found = discover(path, "LR")
        elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            found = {path.stem: Clip(path.stem, path, is_video=True)}
        elif path.exists():
            raise UserError(f"--lr {path} is neither a folder of clips nor a video file "
                            f"({', '.join(sorted(VIDEO_SUFFIXES))}).")
        else:
            raise UserError(f"LR input {path} does not exist.")
        for name, clip in found.items():
            if name in clips:
                raise UserError(f"two LR clips are named '{name}' ({clips[name].path} and {clip.path}); "
                                "rename one.")
            clips[name] = clip
    if MEAN_CLIP in clips:
        raise UserError(f"an LR clip is named '{MEAN_CLIP}', the name of the rows averaged over clips; "
                        "rename it.")
    return clips


def encode_lr(frames: np.ndarray, codec: Any, device: torch.device) -> torch.Tensor:
    """LR latent ``(1, C, t, h, w)`` of ``uint8`` frames ``(T, H, W, 3)``, padded like ``upscale`` pads them
    (last frame repeated to a codec length, edge pixels replicated to the codec's space factor)."""
    from cascadevsr.latent import valid_length
    from cascadevsr.train.inference import to_float_frames

    x = to_float_frames(frames)  # (T, 3, H, W)
    T, _, H, W = x.shape
    Tp = valid_length(T, codec.time_factor)
    x = torch.cat([x, x[-1:].expand(Tp - T, -1, -1, -1)]) if Tp > T else x
    pad = (0, (-W) % codec.space_factor, 0, (-H) % codec.space_factor)
    x = F.pad(x, pad, mode="replicate") if any(pad) else x
    return codec.encode(x[None].to(device))


# ------------------------------------------------------------------------------------------ analysis


def clip_variation(upscaler: Any, frames: np.ndarray, cutoff: float) -> tuple[list[float], np.ndarray, int]:
    """Run the checkpoint's N-step inference on one LR clip and measure every step's detail variation.

    ``upscaler`` is a :class:`cascadevsr.train.inference.CheckpointUpscaler` (its model, codec and inference
    settings are used as they are). Returns the time grid ``(N + 1,)`` from 1 to 0, the variations ``(N,)``
    of the steps ``grid[i] -> grid[i + 1]`` and the number of high-frequency coefficients per x̂0.
    """
    from cascadevsr.train import flow
    from cascadevsr.train.inference import hr_latent_size, upscale_latent

    codec, icfg = upscaler.codec, upscaler.icfg
    lr_latent = encode_lr(frames, codec, upscaler.device)  # (1, C, t, h, w)
    t = lr_latent.shape[2]
    # Noise keys as upscale gives them to a clip's first segment: the last video frame each latent covers.
    keys = [0] + [i * codec.time_factor for i in range(1, t)]
    size = hr_latent_size(tuple(lr_latent.shape[-2:]), upscaler.model.cfg.scale)
    grid = flow.timestep_grid(icfg.steps, icfg.shift)
    variations: list[float] = []
    previous: list[torch.Tensor] = []  # H(x̂0) of the step before; only one is kept

    def on_step(step: flow.EulerStep) -> None:
        hf = high_frequency(step.x0_hat, cutoff)
        if previous:
            variations.append(rms_change(previous[0], hf))
            previous[0] = hf
        else:
            previous.append(hf)

    out = upscale_latent(upscaler.model, lr_latent, size, icfg, frame_keys=keys, callback=on_step)
    final = high_frequency(out, cutoff)
    variations.append(rms_change(previous[0], final))  # the last step lands on its x̂0: 0 for Euler
    return grid, np.array(variations, dtype=np.float64), int(final.numel())


def density_from_curve(grid: Sequence[float], variation: Sequence[float],
                       floor: float = 0.0) -> tuple[list[float], list[float]]:
    """Edges increasing from 0 to 1 (the grid reversed) and bin probabilities (the variation of the step
    over each bin, normalised to sum 1), the detail-aware sampler's piecewise-constant density.

    ``floor`` mixes in the uniform density with that weight: ``(1 − floor)·detail + floor·uniform``. The
    literal density (floor 0) gives no mass to the last interval [0, 1/N], whose variation is exactly 0, so a
    model trained on it never sees those t; a floor keeps every t in training, e.g. for inference with
    more steps than the analysis used.

    Raises:
        UserError: the variation is zero everywhere (an untrained model predicts the same x̂0 at every step).
    """
    v = np.asarray(variation, dtype=np.float64)
    if not np.isfinite(v).all() or v.sum() <= 0:
        raise UserError("the checkpoint's x̂0 has no high-frequency change across the sampling steps "
                        "(all variations are 0), so no density can be derived; is the checkpoint trained?")
    edges = [float(t) for t in reversed(grid)]
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    pdf = (1.0 - floor) * (v / v.sum())[::-1] + floor * widths / widths.sum()
    return edges, [float(p) for p in pdf]


def run_timestep_analysis(cfg: TimestepConfig) -> TimestepResult:
    """Run the analysis of ``cfg`` and write ``timesteps.parquet``, ``density.json`` and ``analysis.json``."""
    from cascadevsr.fetch import sha256_file
    from cascadevsr.train import flow
    from cascadevsr.train.inference import CheckpointUpscaler
    from cascadevsr.train.model import resolve_checkpoint

    if not cfg.checkpoint.expanduser().exists():
        raise UserError(f"checkpoint {cfg.checkpoint} does not exist.")
    clips = collect_clips(cfg.lr)
    names = sorted(clips)[: cfg.max_clips]
    ckpt_file = resolve_checkpoint(cfg.checkpoint)
    upscaler = CheckpointUpscaler(cfg.checkpoint, steps=cfg.steps, noise_level=cfg.noise_level,
                                  device=cfg.device, seed=cfg.seed)
    level = upscaler.model.cfg.noise_level if cfg.noise_level is None else cfg.noise_level
    print(f"analyze timesteps: {ckpt_file} on {len(names)} clip(s), {cfg.steps} Euler steps, noise level "
          f"{level}, seed {cfg.seed}, DCT cut-off {cfg.cutoff} → {cfg.out}")

    records: list[tuple[str, int, float, float, float]] = []
    clip_info = []
    curves = []
    grid: list[float] = []
    for i, name in enumerate(names):
        frames = clips[name].read(cfg.start, cfg.end)
        if len(frames) == 0:
            raise UserError(f"LR clip '{name}' has no frames in {cfg.start}:{cfg.end or ''}.")
        grid, curve, kept = clip_variation(upscaler, frames, cfg.cutoff)
        curves.append(curve)
        records += [(name, k, grid[k], grid[k + 1], float(v)) for k, v in enumerate(curve)]
        clip_info.append({"name": name, "path": str(clips[name].path), "frames": len(frames),
                          "lr_size": [int(frames.shape[1]), int(frames.shape[2])],
                          "high_frequency_coefficients": kept})
        log.info("[%d/%d] %s: %d frames, peak variation %.4g at step %d", i + 1, len(names), name,
                 len(frames), curve.max(), int(curve.argmax()))
    mean = np.mean(curves, axis=0)
    records += [(MEAN_CLIP, k, grid[k], grid[k + 1], float(v)) for k, v in enumerate(mean)]
    edges, pdf = density_from_curve(grid, mean, cfg.floor)

    protocol = {
        "format": FORMAT,
        "columns": list(COLUMNS),
        "mean_rows": f"clip = '{MEAN_CLIP}': the mean over clips of each step's variation",
        "checkpoint": {"path": str(cfg.checkpoint), "file": str(ckpt_file), "sha256": sha256_file(ckpt_file),
                       "step": upscaler.step},
        "steps": cfg.steps,
        "grid": [float(t) for t in grid],
        "grid_shift": upscaler.icfg.shift,
        "noise_level": level,
        "seed": cfg.seed,
        "frames": {"start": cfg.start, "end": cfg.end},
        "cutoff": cfg.cutoff,
        "dct": "2-D DCT-II, orthonormal, per latent frame and channel",
        "high_frequency": "coefficients (u, v) with sqrt((u/H)^2 + (v/W)^2) > cutoff",
        "variation": "RMS over the kept coefficients of H(x0_hat after the step) - H(x0_hat before it)",
        "density": {"file": "density.json", "edges": "the grid reversed (0 -> 1)",
                    "pdf": "mean variation of the step over each bin, normalised to sum 1, mixed with the "
                           "uniform bin probabilities: (1 - floor) * detail + floor * uniform",
                    "floor": cfg.floor,
                    "train": "cascadevsr train --set sampler=detail_aware "
                             "--set sampler_options.pdf_file=<out>/density.json"},
        "inference": upscaler.describe() | {"tile": upscaler.icfg.tile, "window": upscaler.icfg.window},
        "clips": clip_info,
        "packages": {"cascadevsr": __version__, "torch": torch.__version__, "numpy": np.__version__},
    }
    rows = pd.DataFrame.from_records(records, columns=list(COLUMNS)).astype(
        {"clip": "string", "step": "int64", "t_from": "float64", "t_to": "float64", "variation": "float64"})
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_results(rows, cfg.out / "timesteps.parquet", protocol)
    flow.write_density_file(cfg.out / "density.json", edges, pdf)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config["lr"] = [str(p) for p in cfg.lr]
    (cfg.out / "analysis.json").write_text(json.dumps({**protocol, "config": config}, indent=1))
    print(f"wrote {cfg.out / 'timesteps.parquet'} ({len(rows)} rows), {cfg.out / 'density.json'} "
          f"({len(pdf)} bins), {cfg.out / 'analysis.json'}")
    return TimestepResult(rows=rows, edges=edges, pdf=pdf, protocol=protocol)
