"""Noise-augmentation sweep (SimpleGVR §4, Fig. 7): checkpoints trained with different LR noise-augmentation
ranges, each run on the LR clips at several fixed test-time noise levels and scored.

Three kinds of metric, named on the command line:

* ``lr_<name>`` -- **LR consistency**: the output is downsampled to the LR size with OpenCV's area filter
  (``cv2.INTER_AREA``, the box average: the anti-aliased inverse of a ×s upscale) and compared with the LR
  input by the full-reference metric ``<name>`` (``lr_psnr``, ``lr_lpips``, ``lr_ssim``…). High = the output
  keeps the input's structure.
* reference-free metrics (``niqe``, ``ewarp``, pyiqa's ``musiq``…) on the output.
* full-reference metrics (``psnr``, ``lpips``…) against ``--gt``; refused without it.

Results are long-format parquet like ``cascadevsr evaluate``'s (see run.py) with two more columns::

    method, clip, frame, metric, value, train_range, test_level

``method`` is the checkpoint's name, ``train_range`` its training range as ``"LO-HI"`` (``"0.3-0.6"``;
from the checkpoint's ``model_config.noise_aug`` unless given as ``NAME=CKPT@LO-HI``), ``test_level`` the
test noise level; ``frame`` is the frame index, null on the clip-level row (mean of the clip's frames).
Resuming works like an evaluation run: each finished (checkpoint, level, clip) job is written to
``OUT.parts/``, a rerun computes only the missing (checkpoint, level, clip, metric) rows, and a rerun whose
settings would change existing numbers (steps, seed, frames, crop border, metric versions, a checkpoint's
file hash or range) is refused. The protocol is in the file's metadata and in ``OUT.protocol.json``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from cascadevsr import __version__
from cascadevsr.errors import UserError
from cascadevsr.evaluate.clips import Clip, discover
from cascadevsr.evaluate.metrics import Metric, create_metric, metric_spec
from cascadevsr.evaluate.run import COLUMNS as EVAL_COLUMNS
from cascadevsr.evaluate.run import DTYPES as EVAL_DTYPES
from cascadevsr.evaluate.run import (
    clip_fps,
    empty_rows,
    load_run,
    parts_dir,
    read_rows,
    score_clip,
    scored_frames,
    write_method_outputs,
    write_results,
)

log = logging.getLogger(__name__)

COLUMNS = (*EVAL_COLUMNS, "train_range", "test_level")
DTYPES = {**EVAL_DTYPES, "train_range": "string", "test_level": "float64"}
FORMAT = "cascadevsr.noise_sweep/1"
LR_PREFIX = "lr_"
DEFAULT_LEVELS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
DEFAULT_METRICS = ("lr_psnr", "lr_lpips", "niqe")
DEFAULT_METRICS_GT = ("psnr", "lpips")
DOWNSAMPLE = "cv2.INTER_AREA (box average) to the LR size"


@dataclass
class SweepCheckpoint:
    """One checkpoint of the sweep: its name in the results, its path, and its training range when given."""

    name: str
    path: Path
    train_range: tuple[float, float] | None = None
    """(lo, hi) from ``NAME=CKPT@LO-HI``; None = read ``model_config.noise_aug`` from the checkpoint."""


@dataclass
class SweepConfig:
    """Settings of a noise-augmentation sweep (``cascadevsr analyze noise-aug``).

    Attributes:
        checkpoints: the checkpoints to compare.
        lr: folder of LR clips (``evaluate`` layout).
        out: results parquet (created, or resumed when it exists).
        levels: test-time noise levels, each in [0, 1].
        metrics: metric names (see the module docstring); empty = the defaults.
        gt: ground-truth folder, needed by full-reference metrics.
        steps: Euler steps of every run.
        seed: seed of the sampling and augmentation noise (the same for every level).
        start, end: frame range ``[start, end)`` of every clip.
        max_clips: only the first N clips in name order (None = all).
        crop_border: pixels cropped on each side by the metrics that take it (PSNR, SSIM, NIQE), at the size
            the metric sees.
        batch_size: frames per metric call.
        device: torch device of the models and metrics (``auto``: CUDA when there is one).
        weights_dir: metric weights folder (default ``$CASCADEVSR_HOME/weights``).
        save_outputs: folder to write every output into, as ``NAME@LEVEL/CLIP.mp4`` (lossless), so that
            outputs can be viewed side by side or scored later with ``evaluate --pred`` without rerunning.
    """

    checkpoints: list[SweepCheckpoint]
    lr: Path
    out: Path
    levels: list[float] = field(default_factory=lambda: list(DEFAULT_LEVELS))
    metrics: list[str] = field(default_factory=list)
    gt: Path | None = None
    steps: int = 50
    seed: int = 0
    start: int = 0
    end: int | None = None
    max_clips: int | None = None
    crop_border: int = 0
    batch_size: int = 4
    device: str = "cpu"
    weights_dir: Path | None = None
    save_outputs: Path | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.checkpoints:
            problems.append("--checkpoint: give at least one NAME=CKPT")
        names = collections.Counter(c.name for c in self.checkpoints)
        problems += [f"--checkpoint: the name '{n}' is given twice" for n, k in names.items() if k > 1]
        if not self.levels:
            problems.append("--levels: give at least one test noise level")
        bad = [lv for lv in self.levels if not (math.isfinite(lv) and 0 <= lv <= 1)]
        if bad:
            problems.append(f"--levels: {bad[0]:g} is outside [0, 1] (a noise level is the noise fraction)")
        if len(set(self.levels)) != len(self.levels):
            problems.append(f"--levels: {self.levels} lists a level twice")
        if len(set(self.metrics)) != len(self.metrics):
            problems.append(f"--metrics: {self.metrics} lists a metric twice")
        if self.steps < 1:
            problems.append(f"--steps must be >= 1, got {self.steps}")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            problems.append(f"--frames: need 0 <= start < end, got {self.start}:{self.end}")
        if self.max_clips is not None and self.max_clips < 1:
            problems.append(f"--max-clips must be >= 1, got {self.max_clips}")
        if self.crop_border < 0:
            problems.append(f"--crop-border must be >= 0, got {self.crop_border}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if Path(self.out).suffix != ".parquet":
            problems.append(f"--out must name a .parquet file, got {self.out}")
        if problems:
            raise UserError("; ".join(problems) + ".")
        self.out, self.lr = Path(self.out), Path(self.lr)
        if self.device == "auto":  # the models and the metrics share it, so it is resolved once here
            self.device = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class SweepResult:
    """All rows now in ``out``, the (checkpoint, level, clip, metric) rows this run computed, the protocol."""

    rows: pd.DataFrame
    computed: list[tuple[str, float, str, str]]
    protocol: dict[str, Any]


# ------------------------------------------------------------------------------------------ parsing


_RANGE = re.compile(r"^\s*([0-9.eE+-]+)\s*-\s*([0-9.eE+-]+)\s*$")


def parse_range(text: str, what: str) -> tuple[float, float]:
    """``"LO-HI"`` → (lo, hi) with ``0 <= lo <= hi <= 1``; anything else is a ``UserError``."""
    m = _RANGE.match(text)
    try:
        lo, hi = (float(m.group(1)), float(m.group(2))) if m else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if not (0 <= lo <= hi <= 1):
        raise UserError(f"{what}: the training range must look like LO-HI with 0 <= LO <= HI <= 1 "
                        f"(e.g. 0.3-0.6), got '{text}'.")
    return lo, hi


def parse_checkpoint_arg(text: str) -> SweepCheckpoint:
    """``NAME=CKPT`` or ``NAME=CKPT@LO-HI`` → :class:`SweepCheckpoint`."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise UserError(f"--checkpoint takes NAME=CKPT[@LO-HI], got '{text}'.")
    path, at, rng = rest.rpartition("@")
    if at and not Path(rest).expanduser().exists():
        return SweepCheckpoint(name.strip(), Path(path.strip()).expanduser(),
                               parse_range(rng, f"--checkpoint {name.strip()}"))
    return SweepCheckpoint(name.strip(), Path(rest.strip()).expanduser())


def parse_levels(text: str) -> list[float]:
    """``"0,0.15,0.3"`` → [0.0, 0.15, 0.3]; a non-number is a ``UserError`` (ranges are checked by the config)."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--levels takes comma-separated numbers in [0, 1], got '{text}'.") from None


def range_label(lo: float, hi: float) -> str:
    """The ``train_range`` value of a range: ``"0.3-0.6"``."""
    return f"{lo:g}-{hi:g}"


# ------------------------------------------------------------------------------------------ metrics


@dataclass
class SweepMetric:
    """A metric of the sweep: its result name, what it compares, and the configured evaluate metric."""

    name: str
    kind: str
    """``lr`` (downsampled output vs LR input), ``nr`` (output alone) or ``fr`` (output vs ground truth)."""
    metric: Metric

    def describe(self) -> dict[str, Any]:
        compares = {"lr": f"output downsampled with {DOWNSAMPLE}, against the LR input",
                    "nr": "output alone", "fr": "output against the ground truth"}[self.kind]
        return {**self.metric.describe(), "compares": compares}


def metric_kinds(names: list[str], have_gt: bool) -> dict[str, tuple[str, str]]:
    """name → (evaluate metric, kind) for every requested metric, checked before anything is computed."""
    out: dict[str, tuple[str, str]] = {}
    needs_gt = []
    for name in names:
        if name.startswith(LR_PREFIX) and name not in _known_metrics():
            base = name[len(LR_PREFIX):]
            if not metric_spec(base).needs_reference:
                raise UserError(f"metric '{name}': {base} is reference-free, so there is nothing to compare "
                                f"with the LR input; ask for '{base}' instead.")
            out[name] = (base, "lr")
            continue
        spec = metric_spec(name)
        if spec.needs_reference:
            needs_gt.append(name)
        out[name] = (name, "fr" if spec.needs_reference else "nr")
    if needs_gt and not have_gt:
        raise UserError(f"metric(s) {needs_gt} compare against ground truth: give --gt DIR, or measure "
                        f"consistency with the LR input instead ({', '.join(LR_PREFIX + n for n in needs_gt)}).")
    return out


def _known_metrics() -> set[str]:
    from cascadevsr.evaluate.metrics import METRICS

    return set(METRICS)


def _scorable(m: SweepMetric, height: int, width: int) -> str | None:
    """Why ``m`` cannot score frames of that size, or None; probes metrics that do not say (e.g. LPIPS)."""
    spec = m.metric.spec
    if spec.size_problem is not None:
        return spec.size_problem(height, width, m.metric.options)
    frames = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    try:
        m.metric(frames, frames.flip(0) if m.metric.needs_reference else None)
    except (ValueError, RuntimeError) as err:
        return f"frames of {width}x{height} are too small for it ({err})"
    return None


# ------------------------------------------------------------------------------------------ storage


def read_sweep(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows and protocol of a noise-sweep results file."""
    return read_rows(path, DTYPES, "noise-sweep results")


def output_name(checkpoint: str, level: float) -> str:
    """Folder (method) name of a checkpoint's outputs at one test level in ``save_outputs``: ``NAME@LEVEL``."""
    return f"{checkpoint}@{level:g}"


def _load_existing(out: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    return load_run(out, DTYPES, "noise-sweep results", ["method", "test_level", "clip", "frame", "metric"],
                    _merge_protocol)


def _merge_protocol(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = {**old, **new}
    for key in ("metrics", "checkpoints"):
        merged[key] = {**old.get(key, {}), **new.get(key, {})}
    merged["levels"] = sorted(set(old.get("levels", [])) | set(new.get("levels", [])))
    return merged


def _check_compatible(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    """Refuse to add rows computed under settings that would make them incomparable with those in ``out``."""
    if not old:
        return
    for key in ("steps", "seed", "frames", "crop_border", "downsample"):
        if key in old and old[key] != new[key]:
            raise UserError(f"{out} was computed with {key}={old[key]}, this run asks for {new[key]}; use the "
                            "same settings to add to it, or a new --out.")
    for name, desc in new["metrics"].items():
        prev = old.get("metrics", {}).get(name)
        for key in ("version", "options", "weights"):
            if prev is not None and prev.get(key) != desc.get(key):
                raise UserError(f"{out} holds '{name}' computed with {key} {prev.get(key)}, this run would use "
                                f"{desc.get(key)}; use a new --out to compare them.")
    for name, desc in new["checkpoints"].items():
        prev = old.get("checkpoints", {}).get(name)
        for key in ("sha256", "train_range"):
            if prev is not None and prev.get(key) != desc.get(key):
                raise UserError(f"{out} holds checkpoint '{name}' with {key} {prev.get(key)}, this run gives "
                                f"{desc.get(key)}; give the checkpoint another name or use a new --out.")


# ------------------------------------------------------------------------------------------ the sweep


def _read_checkpoint_facts(ck: SweepCheckpoint) -> dict[str, Any]:
    """File, hash, step, training range and scale of a checkpoint, without building its model."""
    from cascadevsr.fetch import sha256_file
    from cascadevsr.train.model import CHECKPOINT_FORMAT, resolve_checkpoint

    if not ck.path.exists():
        raise UserError(f"checkpoint {ck.path} for '{ck.name}' does not exist.")
    file = resolve_checkpoint(ck.path)
    try:  # memory-mapped: only the small config is read here, the weights when the model is built
        state = torch.load(file, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise UserError(f"cannot read checkpoint {file} for '{ck.name}': {err}.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{file} ('{ck.name}') is not a cascadevsr VSR checkpoint (format {CHECKPOINT_FORMAT}).")
    model_cfg = state.get("model_config") or {}
    saved = model_cfg.get("noise_aug")
    saved = [float(saved[0]), float(saved[1])] if saved is not None else None
    if ck.train_range is None and saved is None:
        raise UserError(f"checkpoint {file} does not record its noise-augmentation range; give it as "
                        f"--checkpoint {ck.name}=CKPT@LO-HI.")
    given = list(ck.train_range) if ck.train_range is not None else None
    if given is not None and saved is not None and given != saved:
        log.warning("checkpoint %s was trained with noise augmentation %s; labelling it %s as given",
                    ck.name, range_label(*saved), range_label(*given))
    lo, hi = given or saved
    return {"checkpoint": str(ck.path), "file": str(file), "sha256": sha256_file(file), "step": state.get("step"),
            "train_range": range_label(lo, hi), "train_range_source": "command line" if given else "checkpoint",
            "saved_train_range": saved, "scale": float(model_cfg.get("scale", 4.0))}


def _downsample(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def run_noise_sweep(cfg: SweepConfig,
                    on_job_done: Callable[[str, float, str], None] | None = None) -> SweepResult:
    """Run every (checkpoint, level, clip) job whose rows are missing from ``cfg.out`` and write the results.

    ``on_job_done(checkpoint, level, clip)`` is called after each job's rows are safely on disk.
    """
    from cascadevsr.train.inference import CheckpointUpscaler

    have_gt = cfg.gt is not None
    names = cfg.metrics or [*DEFAULT_METRICS, *(DEFAULT_METRICS_GT if have_gt else ())]
    kinds = metric_kinds(names, have_gt)
    facts = {ck.name: _read_checkpoint_facts(ck) for ck in cfg.checkpoints}
    lr = discover(cfg.lr, "LR")
    gt = discover(cfg.gt, "ground truth") if have_gt else {}
    clips = sorted(lr)[: cfg.max_clips]
    missing = [c for c in clips if have_gt and c not in gt]
    if missing:
        raise UserError(f"the ground-truth folder has no clip '{missing[0]}'"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + ".")

    built: dict[tuple[str, tuple], Metric] = {}

    def build(base: str) -> Metric:
        opts = {"crop_border": cfg.crop_border} if "crop_border" in metric_spec(base).defaults else {}
        key = (base, tuple(sorted(opts.items())))
        if key not in built:
            built[key] = create_metric(base, device=cfg.device, weights_dir=cfg.weights_dir, **opts)
        return built[key]

    metrics = {n: SweepMetric(n, kind, build(base)) for n, (base, kind) in kinds.items()}
    # Sizes: every clip's LR size, and its output size for every checkpoint (GT size, or LR × scale).
    sizes: dict[str, tuple[int, int, int]] = {}
    for c in clips:
        frames, h, w = _clip_info(lr[c], "LR")
        if have_gt:
            g = _clip_info(gt[c], "ground-truth")
            if g[0] != frames:
                raise UserError(f"clip '{c}': the LR clip has {frames} frames, the ground truth {g[0]}.")
        sizes[c] = (frames, h, w)
    out_sizes = {(n, c): (_clip_info(gt[c], "ground-truth")[1:] if have_gt else
                          (round(sizes[c][1] * f["scale"]), round(sizes[c][2] * f["scale"])))
                 for n, f in facts.items() for c in clips}
    if not cfg.metrics and "niqe" in metrics:
        small = [c for (_, c), (h, w) in out_sizes.items() if _scorable(metrics["niqe"], h, w)]
        if small:  # a default, not a request: leave it out where it cannot work
            print(f"analyze noise-aug: leaving NIQE out, the outputs of clip '{small[0]}' are too small for it")
            metrics.pop("niqe")
    checked: set[tuple[str, int, int]] = set()
    for (_, c), (h, w) in out_sizes.items():
        for m in metrics.values():
            size = sizes[c][1:] if m.kind == "lr" else (h, w)
            if (m.name, *size) in checked:
                continue
            problem = _scorable(m, *size)
            if problem:
                raise UserError(f"metric '{m.name}' cannot score clip '{c}': {problem}.")
            checked.add((m.name, *size))

    protocol = {
        "format": FORMAT,
        "columns": list(COLUMNS),
        "steps": cfg.steps,
        "seed": cfg.seed,
        "frames": {"start": cfg.start, "end": cfg.end},
        "crop_border": cfg.crop_border,
        "downsample": DOWNSAMPLE,
        "output_size": "the ground truth's" if have_gt else "LR size x the checkpoint's scale",
        "levels": sorted(cfg.levels),
        "metrics": {n: m.describe() for n, m in metrics.items()},
        "checkpoints": facts,
        "lr": str(cfg.lr),
        "gt": str(cfg.gt) if have_gt else None,
        "packages": {"cascadevsr": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "opencv": cv2.__version__},
    }
    existing, old_protocol = _load_existing(cfg.out)
    _check_compatible(old_protocol, protocol, cfg.out)
    protocol = _merge_protocol(old_protocol, protocol)
    done = set(zip(existing["method"], existing["test_level"], existing["clip"], existing["metric"], strict=True))

    def wanted(ck: str, level: float, clip: str) -> list[str]:
        return [n for n in metrics if (ck, level, clip, n) not in done]

    jobs = [(ck.name, lv, c) for ck in cfg.checkpoints for lv in cfg.levels for c in clips if wanted(ck.name, lv, c)]
    total = len(cfg.checkpoints) * len(cfg.levels) * len(clips)
    described = ", ".join(f"{n} ({f['train_range']})" for n, f in facts.items())
    print(f"analyze noise-aug: {len(cfg.checkpoints)} checkpoint(s) [{described}] × {len(cfg.levels)} level(s) × "
          f"{len(clips)} clip(s); metrics {', '.join(metrics)}; {cfg.steps} steps; {len(jobs)} of {total} job(s) "
          f"to run → {cfg.out}")
    pdir = parts_dir(cfg.out)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    if jobs:
        pdir.mkdir(parents=True, exist_ok=True)
        (pdir / "protocol.json").write_text(json.dumps(protocol, indent=1, sort_keys=True))

    computed: list[tuple[str, float, str, str]] = []
    upscaler, loaded = None, None
    started = time.perf_counter()
    for i, (name, level, clip) in enumerate(jobs):
        if loaded != name:  # jobs are grouped by checkpoint: one model in memory at a time
            ck = next(c for c in cfg.checkpoints if c.name == name)
            upscaler, loaded = CheckpointUpscaler(ck.path, steps=cfg.steps, device=cfg.device, seed=cfg.seed), name
        upscaler.icfg = dataclasses.replace(upscaler.icfg, noise_level=level)
        lr_frames = lr[clip].read(cfg.start, cfg.end)
        ref = gt[clip].read(cfg.start, cfg.end) if have_gt else None
        pred = upscaler(lr_frames, out_sizes[(name, clip)])
        if cfg.save_outputs is not None:
            write_method_outputs(cfg.save_outputs, output_name(name, level), clip, pred, clip_fps(lr[clip]))
        down = _downsample(pred, lr_frames.shape[1:3])
        frame_ids = np.arange(cfg.start, cfg.start + len(pred))
        label = facts[name]["train_range"]
        records = []
        for n in wanted(name, level, clip):
            m = metrics[n]
            a, b = {"lr": (down, lr_frames), "nr": (pred, None), "fr": (pred, ref)}[m.kind]
            scores = score_clip(m.metric, a, b, cfg.batch_size)
            keep, mean = scored_frames(scores, m.metric.temporal)
            records += [(name, clip, int(f), n, float(v), label, level)
                        for f, v in zip(frame_ids[keep], scores[keep], strict=True)]
            records.append((name, clip, None, n, mean, label, level))
            computed.append((name, level, clip, n))
        part = pdir / f"{uuid.uuid4().hex[:16]}.parquet"
        write_results(_as_rows(records), part, None)
        log.info("[%d/%d] %s @ %g / %s (%.1f s elapsed)", i + 1, len(jobs), name, level, clip,
                 time.perf_counter() - started)
        if on_job_done is not None:
            on_job_done(name, level, clip)

    rows, _ = _load_existing(cfg.out)
    rows = rows.sort_values(["method", "test_level", "clip", "metric", "frame"], na_position="last",
                            kind="stable").reset_index(drop=True)
    write_results(rows, cfg.out, protocol)
    cfg.out.with_name(cfg.out.name + ".protocol.json").write_text(json.dumps(protocol, indent=1, sort_keys=True))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config["checkpoints"] = [{"name": c.name, "path": str(c.path), "train_range": c.train_range}
                             for c in cfg.checkpoints]
    config["metrics"] = list(metrics)
    cfg.out.with_name(cfg.out.name + ".config.json").write_text(json.dumps(config, indent=1))
    if pdir.is_dir():
        for p in pdir.iterdir():
            p.unlink()
        pdir.rmdir()
    return SweepResult(rows=rows, computed=computed, protocol=protocol)


def _as_rows(records: list[tuple]) -> pd.DataFrame:
    if not records:
        return empty_rows(DTYPES)
    return pd.DataFrame.from_records(records, columns=list(COLUMNS)).astype(DTYPES)


def _clip_info(clip: Clip, what: str) -> tuple[int, int, int]:
    try:
        return clip.info()
    except UserError as err:
        raise UserError(f"{what} clip '{clip.name}': {err}") from None


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """(checkpoint, train_range, test_level) × metric table: the mean over clips of the clip-level values."""
    clip_rows = rows[rows["frame"].isna()]
    if clip_rows.empty:
        return pd.DataFrame()
    return clip_rows.pivot_table(index=["method", "train_range", "test_level"], columns="metric",
                                 values="value", aggfunc="mean")
