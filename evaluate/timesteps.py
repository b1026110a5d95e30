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
protocol, the settings that shape the curves and the resolved config).

Resuming works like the noise-augmentation sweep's: each finished clip (its record, grid and curve) is
written to ``OUT.parts/`` as soon as it is done, and the folder is removed once the outputs are written. A
rerun reads back the clips finished there and in the outputs of an earlier finished analysis (records from
``analysis.json``, curves from ``timesteps.parquet``, both exact) and analyses only the rest, so rerunning a
finished analysis computes nothing and one given more clips computes only those; the outputs are the same
bytes one uninterrupted run writes. A rerun whose settings would change a clip's curve (checkpoint file,
steps, noise level, seed, frames, cut-off, device, the checkpoint's inference settings, or the file a clip
name points to) is refused; ``--floor`` and ``--max-clips`` may change, as they only shape the density or
choose clips.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cascadevsr import __version__
from cascadevsr.errors import UserError
from cascadevsr.evaluate.clips import VIDEO_SUFFIXES, Clip, discover
from cascadevsr.evaluate.run import parts_dir, read_rows, write_results

log = logging.getLogger(__name__)

COLUMNS = ("clip", "step", "t_from", "t_to", "variation")
DTYPES = {"clip": "string", "step": "int64", "t_from": "float64", "t_to": "float64", "variation": "float64"}
MEAN_CLIP = "mean"
FORMAT = "cascadevsr.timesteps/1"
PART_SUFFIX = ".clip.json"
# The settings that change a clip's curve, with what sets each: clips computed under others are not reused.
# --floor, --max-clips and --lr are not among them: they shape the density or choose the clips.
CURVE_SETTINGS = {
    "checkpoint_sha256": "--checkpoint (the file's SHA-256)",
    "steps": "--steps",
    "noise_level": "--noise-level",
    "seed": "--seed",
    "frames": "--frames",
    "cutoff": "--cutoff",
    "device": "--device",
    "inference": "the checkpoint's inference settings",
}


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
    """What an analysis wrote: the rows, the density (edges, bin probabilities) and the protocol, and the
    clips analysed in this run (the others were read back from ``OUT.parts/`` or the finished outputs)."""

    rows: pd.DataFrame
    edges: list[float]
    pdf: list[float]
    protocol: dict[str, Any]
    computed: list[str] = field(default_factory=list)


@dataclass
class ClipCurve:
    """One clip's result, as a part file holds it: its record in ``analysis.json`` and its curve."""

    name: str
    path: str
    frames: int
    lr_size: list[int]
    """(height, width) of the LR frames."""
    high_frequency_coefficients: int
    """Kept DCT coefficients per x̂0 (the ``n`` of the RMS)."""
    grid: list[float]
    """The time grid ``(N + 1,)`` from 1 to 0."""
    variation: list[float]
    """Detail variation ``(N,)`` of the steps ``grid[i] -> grid[i + 1]``."""

    def info(self) -> dict[str, Any]:
        """The clip's record in ``analysis.json``."""
        return {"name": self.name, "path": self.path, "frames": self.frames, "lr_size": self.lr_size,
                "high_frequency_coefficients": self.high_frequency_coefficients}


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


def analyse_clip(upscaler: Any, clip: Clip, cfg: TimestepConfig) -> ClipCurve:
    """Read ``cfg``'s frame range of ``clip`` and measure its curve (:func:`clip_variation`).

    Raises:
        UserError: the clip has no frames in that range.
    """
    frames = clip.read(cfg.start, cfg.end)
    if len(frames) == 0:
        raise UserError(f"LR clip '{clip.name}' has no frames in {cfg.start}:{cfg.end or ''}.")
    grid, curve, kept = clip_variation(upscaler, frames, cfg.cutoff)
    return ClipCurve(name=clip.name, path=str(clip.path), frames=len(frames),
                     lr_size=[int(frames.shape[1]), int(frames.shape[2])], high_frequency_coefficients=kept,
                     grid=[float(t) for t in grid], variation=[float(v) for v in curve])


# ------------------------------------------------------------------------------------------ resuming


def curve_settings(cfg: TimestepConfig, upscaler: Any, sha256: str, level: float) -> dict[str, Any]:
    """The settings of :data:`CURVE_SETTINGS` for this run, as they read back from JSON."""
    settings = {"checkpoint_sha256": sha256, "steps": cfg.steps, "noise_level": level, "seed": cfg.seed,
                "frames": f"{cfg.start}:{'' if cfg.end is None else cfg.end}", "cutoff": cfg.cutoff,
                "device": str(upscaler.device), "inference": asdict(upscaler.icfg)}
    return json.loads(json.dumps(settings))


def _start_over(where: Path, finished: bool) -> str:
    """How to start over when the clips in ``where`` (parts folder or finished outputs) cannot be reused."""
    return f"give a new --out or delete {'the outputs in ' if finished else ''}{where} to start over"


def check_resumable(old: dict[str, Any], new: dict[str, Any], where: Path, finished: bool = False) -> None:
    """Refuse to reuse clips computed under settings that would give other curves than this run's: the parts
    folder ``where`` of an interrupted run or, with ``finished``, the outputs folder of a finished one."""
    for key, what in CURVE_SETTINGS.items():
        if old.get(key) == new[key]:
            continue
        was, now = old.get(key), new[key]
        if isinstance(was, dict) and isinstance(now, dict):  # name only the entries that differ
            diff = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            was, now = ({k: d.get(k) for k in diff} for d in (was, now))
        held, reuse = ("a finished analysis", "reuse its clips") if finished else ("clips analysed", "resume")
        raise UserError(f"{where} holds {held} with {what} {was}, but this run has {now}; rerun with the same "
                        f"settings to {reuse}, or {_start_over(where, finished)}.")


def _check_same_file(curve: ClipCurve, clip: Clip, where: Path, finished: bool) -> None:
    if Path(curve.path).resolve() != clip.path.resolve():
        raise UserError(f"{where} holds clip '{curve.name}' analysed from {curve.path}, but this run reads it from "
                        f"{clip.path}; {_start_over(where, finished)}.")


def load_finished(out: Path, settings: dict[str, Any], clips: dict[str, Clip]) -> dict[str, ClipCurve]:
    """The clips among ``clips`` in the outputs of a finished analysis in ``out``, by name, read back exactly:
    records and settings from ``analysis.json``, curves from ``timesteps.parquet``.

    Raises:
        UserError: the outputs were computed with other settings (or do not record them), hold part of a
            recorded clip's curve, or hold another file under a clip's name.
    """
    saved = out / "analysis.json"
    if not saved.exists():
        return {}
    try:
        analysis = json.loads(saved.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"cannot read {saved}: {err}; {_start_over(out, True)}.") from None
    if "curve_settings" not in analysis:
        raise UserError(f"{out} holds a finished analysis that does not record the settings of its curves "
                        f"(an older version wrote it); {_start_over(out, True)}.")
    check_resumable(analysis["curve_settings"], settings, out, finished=True)
    rows = read_rows(out / "timesteps.parquet", DTYPES, "timestep analysis")[0]
    done: dict[str, ClipCurve] = {}
    for record in analysis["clips"]:
        clip = clips.get(record["name"])
        if clip is None:
            continue
        steps = rows[rows["clip"] == record["name"]].sort_values("step")
        if steps.empty:  # a run stopped between writing timesteps.parquet and analysis.json: analysed again
            continue
        if steps["step"].tolist() != list(range(settings["steps"])):
            raise UserError(f"{out / 'timesteps.parquet'} lacks steps of clip '{record['name']}' that "
                            f"{saved} lists; {_start_over(out, True)}.")
        curve = ClipCurve(name=record["name"], path=record["path"], frames=record["frames"],
                          lr_size=record["lr_size"], high_frequency_coefficients=record["high_frequency_coefficients"],
                          grid=[*steps["t_from"].tolist(), steps["t_to"].iloc[-1].item()],
                          variation=steps["variation"].tolist())
        _check_same_file(curve, clip, out, finished=True)
        done[curve.name] = dataclasses.replace(curve, path=str(clip.path))
    return done


def load_parts(pdir: Path, settings: dict[str, Any], clips: dict[str, Clip]) -> dict[str, ClipCurve]:
    """The finished clips among ``clips`` in the parts folder ``pdir``, by name.

    Raises:
        UserError: the parts were computed with other settings, or for another file under a clip's name.
    """
    parts = sorted(pdir.glob(f"*{PART_SUFFIX}")) if pdir.is_dir() else []
    if not parts:  # nothing finished (a run that failed before its first clip): nothing to be consistent with
        return {}
    saved = pdir / "protocol.json"
    if not saved.exists():
        raise UserError(f"{pdir} holds finished clips but no protocol.json to tell their settings; delete "
                        f"{pdir} to start over.")
    check_resumable(json.loads(saved.read_text()), settings, pdir)
    done: dict[str, ClipCurve] = {}
    for part in parts:
        curve = ClipCurve(**json.loads(part.read_text()))
        clip = clips.get(curve.name)
        if clip is None or curve.name in done:
            continue
        _check_same_file(curve, clip, pdir, finished=False)
        done[curve.name] = dataclasses.replace(curve, path=str(clip.path))
    return done


def write_part(pdir: Path, curve: ClipCurve) -> None:
    """Store a finished clip in the parts folder, atomically."""
    _write_atomically(pdir / f"{uuid.uuid4().hex[:16]}{PART_SUFFIX}", json.dumps(asdict(curve)))


def remove_parts(pdir: Path) -> None:
    """Delete the parts folder of a finished analysis."""
    if pdir.is_dir():
        for p in pdir.iterdir():
            p.unlink()
        pdir.rmdir()


def _write_atomically(path: Path, text: str) -> None:
    # A run killed mid-write leaves a hidden temporary file, never a truncated part that would read as done.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ the run


def run_timestep_analysis(cfg: TimestepConfig,
                          on_clip_done: Callable[[str], None] | None = None) -> TimestepResult:
    """Run the analysis of ``cfg`` and write ``timesteps.parquet``, ``density.json`` and ``analysis.json``.

    Clips already finished with the same settings, in ``OUT.parts/`` by an interrupted run or in the outputs
    of a finished one, are not analysed again. ``on_clip_done(name)`` is called after each analysed clip's
    part is safely on disk.
    """
    from cascadevsr.fetch import sha256_file
    from cascadevsr.train import flow
    from cascadevsr.train.inference import CheckpointUpscaler
    from cascadevsr.train.model import resolve_checkpoint

    if not cfg.checkpoint.expanduser().exists():
        raise UserError(f"checkpoint {cfg.checkpoint} does not exist.")
    clips = collect_clips(cfg.lr)
    names = sorted(clips)[: cfg.max_clips]
    ckpt_file = resolve_checkpoint(cfg.checkpoint)
    sha256 = sha256_file(ckpt_file)
    upscaler = CheckpointUpscaler(cfg.checkpoint, steps=cfg.steps, noise_level=cfg.noise_level,
                                  device=cfg.device, seed=cfg.seed)
    level = upscaler.model.cfg.noise_level if cfg.noise_level is None else cfg.noise_level
    print(f"analyze timesteps: {ckpt_file} on {len(names)} clip(s), {cfg.steps} Euler steps, noise level "
          f"{level}, seed {cfg.seed}, DCT cut-off {cfg.cutoff} → {cfg.out}")

    settings = curve_settings(cfg, upscaler, sha256, level)
    pdir = parts_dir(cfg.out)
    # Both are read before anything is written, so a refused rerun leaves the disk as it was.
    finished = load_finished(cfg.out, settings, {n: clips[n] for n in names})
    parts = load_parts(pdir, settings, {n: clips[n] for n in names if n not in finished})
    done = finished | parts
    todo = [n for n in names if n not in done]
    if done:
        where = [f"{len(d)} in {p}" for d, p in ((finished, cfg.out), (parts, pdir)) if d]
        print(f"resuming: {len(done)} of {len(names)} clip(s) already analysed ({', '.join(where)})")
    if todo:
        pdir.mkdir(parents=True, exist_ok=True)
        _write_atomically(pdir / "protocol.json", json.dumps(settings, indent=1, sort_keys=True))
    for i, name in enumerate(todo):
        curve = analyse_clip(upscaler, clips[name], cfg)
        write_part(pdir, curve)
        done[name] = curve
        variation = np.array(curve.variation)
        log.info("[%d/%d] %s: %d frames, peak variation %.4g at step %d", i + 1, len(todo), name, curve.frames,
                 variation.max(), int(variation.argmax()))
        if on_clip_done is not None:
            on_clip_done(name)

    curves = [done[n] for n in names]
    grid = curves[-1].grid if curves else []
    records = [(c.name, k, c.grid[k], c.grid[k + 1], v) for c in curves for k, v in enumerate(c.variation)]
    mean = np.mean([np.array(c.variation, dtype=np.float64) for c in curves], axis=0)
    records += [(MEAN_CLIP, k, grid[k], grid[k + 1], float(v)) for k, v in enumerate(mean)]
    edges, pdf = density_from_curve(grid, mean, cfg.floor)
    protocol = {
        "format": FORMAT,
        "columns": list(COLUMNS),
        "mean_rows": f"clip = '{MEAN_CLIP}': the mean over clips of each step's variation",
        "checkpoint": {"path": str(cfg.checkpoint), "file": str(ckpt_file), "sha256": sha256,
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
        "curve_settings": settings,
        "clips": [c.info() for c in curves],
        "packages": {"cascadevsr": __version__, "torch": torch.__version__, "numpy": np.__version__},
    }
    rows = pd.DataFrame.from_records(records, columns=list(COLUMNS)).astype(DTYPES)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_results(rows, cfg.out / "timesteps.parquet", protocol)
    flow.write_density_file(cfg.out / "density.json", edges, pdf)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config["lr"] = [str(p) for p in cfg.lr]
    _write_atomically(cfg.out / "analysis.json", json.dumps({**protocol, "config": config}, indent=1))
    remove_parts(pdir)  # only now: until every output is written, a rerun still finds every clip done
    print(f"wrote {cfg.out / 'timesteps.parquet'} ({len(rows)} rows), {cfg.out / 'density.json'} "
          f"({len(pdf)} bins), {cfg.out / 'analysis.json'}")
    return TimestepResult(rows=rows, edges=edges, pdf=pdf, protocol=protocol, computed=todo)
