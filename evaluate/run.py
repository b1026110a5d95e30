"""An evaluation run: methods × clips × metrics → long-format parquet, resumable, with its protocol.

Rows have the columns ``method, clip, frame, metric, value``; ``frame`` is the frame's index in the clip,
or null for a clip-level value (the mean of the clip's per-frame values, or a value that only exists per
clip: ``align_dx``/``align_dy``, the estimated global shift against the ground truth in px, and
``runtime_s_per_frame`` for methods the run executes itself).

Resuming: every finished (method, clip) job writes its rows to ``OUT.parts/`` under a temporary name and
renames it; at the end the parts are merged into ``OUT`` (again written and renamed). A rerun of the same
command reads ``OUT`` and the parts, and computes only the (method, clip, metric) triples that are
missing, so an interrupted run loses at most the clip in progress.

Sharing: the methods of a clip are scored together (as many as fit :data:`GROUP_BYTES` of decoded
frames), and a full-reference metric prepares each ground-truth batch once for all of them, so LPIPS and
DISTS run M + 1 network passes per frame for M methods instead of 2M. The protocol (crop border, colour
space, frame subset, metric versions and options, weight hashes, methods) is stored in the parquet
file's metadata under ``cascadevsr.protocol`` and beside it as ``OUT.protocol.json``; a rerun with
settings that would change existing numbers is refused.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cascadevsr import __version__
from cascadevsr.errors import UserError
from cascadevsr.evaluate import temporal
from cascadevsr.evaluate.clips import Clip, discover
from cascadevsr.evaluate.methods import Upscaler
from cascadevsr.evaluate.metrics import Metric, create_metric, metric_spec

log = logging.getLogger(__name__)

COLUMNS = ("method", "clip", "frame", "metric", "value")
DTYPES = {"method": "string", "clip": "string", "frame": "Int64", "metric": "string", "value": "float64"}
PROTOCOL_KEY = b"cascadevsr.protocol"
ALIGN_METRICS = ("align_dx", "align_dy")
RUNTIME_METRIC = "runtime_s_per_frame"


@dataclass
class MethodSource:
    """Where a method's outputs come from: a folder of clips, or an upscaler run on the LR clips.

    Attributes:
        name: method name in the results.
        kind: ``folder`` (``--pred``), ``submission`` (``--submission``), ``baseline`` or ``checkpoint``.
        folder: the outputs' folder (folder and submission kinds).
        upscaler: the callable that produces outputs from LR frames (baseline and checkpoint kinds).
        meta: free-form description stored in the protocol (a submission's ``meta.json``).
    """

    name: str
    kind: str
    folder: Path | None = None
    upscaler: Upscaler | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def generated(self) -> bool:
        return self.upscaler is not None


@dataclass
class EvalConfig:
    """Settings of an evaluation run (``cascadevsr evaluate``).

    Attributes:
        out: results parquet file (created, or resumed when it exists).
        metrics: metric names (built-in, or pyiqa's).
        gt: ground-truth folder; needed by full-reference metrics and the alignment check.
        lr: LR folder; needed by methods the run executes (baselines, checkpoints).
        scale: output size = LR size × scale for executed methods when there is no ground truth.
        crop_border: pixels removed on each side before PSNR, SSIM and NIQE (basicsr's ``crop_border``).
        start, end, step: frame subset ``[start, end)`` every ``step`` frames, the same for every clip.
        batch_size: frames per metric call.
        device: torch device for the metrics and executed methods.
        weights_dir: weights folder (default ``$CASCADEVSR_HOME/weights``).
        workers: clips decoded ahead of the metric computation, in threads.
        align_check: estimate every method's global shift against the ground truth.
        align_tolerance: a shift of at least this many px flags the method as misaligned.
        save_outputs: folder to write the outputs of executed methods into (``METHOD/CLIP.mp4``, lossless).
        strict_clips: a method folder with clips the ground truth lacks is an error (else a warning).
    """

    out: Path
    metrics: list[str]
    gt: Path | None = None
    lr: Path | None = None
    scale: float = 4.0
    crop_border: int = 0
    start: int = 0
    end: int | None = None
    step: int = 1
    batch_size: int = 4
    device: str = "cpu"
    weights_dir: Path | None = None
    workers: int = 2
    align_check: bool = True
    align_tolerance: float = 1.0
    save_outputs: Path | None = None
    strict_clips: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not self.metrics:
            problems.append("--metrics: give at least one metric")
        if len(set(self.metrics)) != len(self.metrics):
            problems.append(f"--metrics: {self.metrics} lists a metric twice")
        if self.crop_border < 0:
            problems.append(f"--crop-border must be >= 0, got {self.crop_border}")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            problems.append(f"--frames: need 0 <= start < end, got {self.start}:{self.end}")
        if self.step < 1:
            problems.append(f"--frame-step must be >= 1, got {self.step}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if not self.scale > 0:
            problems.append(f"--scale must be > 0, got {self.scale}")
        if self.align_tolerance <= 0:
            problems.append(f"--align-tolerance must be > 0, got {self.align_tolerance}")
        if Path(self.out).suffix != ".parquet":
            problems.append(f"--out must name a .parquet file, got {self.out}")
        if problems:
            raise UserError("; ".join(problems) + ".")
        self.out = Path(self.out)


@dataclass
class RunResult:
    """What a run did: all rows now in ``out``, and which (method, clip, metric) it computed itself."""

    rows: pd.DataFrame
    computed: list[tuple[str, str, str]]
    misaligned: dict[tuple[str, str], tuple[float, float]]
    protocol: dict[str, Any]


# ------------------------------------------------------------------------------------------ storage


def parts_dir(out: Path) -> Path:
    """Folder of the finished-job files of an unfinished run."""
    return out.with_name(out.name + ".parts")


def empty_rows(dtypes: dict[str, str] = DTYPES) -> pd.DataFrame:
    """No rows, with the columns and types of ``dtypes``."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


def _as_rows(records: list[tuple[str, str, int | None, str, float]]) -> pd.DataFrame:
    if not records:
        return empty_rows()
    df = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return df.astype(DTYPES)


def write_results(df: pd.DataFrame, path: Path, protocol: dict[str, Any] | None) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    if protocol is not None:
        meta = dict(table.schema.metadata or {})
        meta[PROTOCOL_KEY] = json.dumps(protocol, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_rows(path: str | Path, dtypes: dict[str, str], kind: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows (the columns of ``dtypes``, in that order and with those types) and protocol of a parquet file;
    ``kind`` names the file in the error raised when it is unreadable or lacks a column."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise UserError(f"cannot read results file {path}: {err}.") from None
    missing = set(dtypes) - set(table.column_names)
    if missing:
        raise UserError(f"{path} is not a {kind} file (no column(s) {sorted(missing)}).")
    raw = (table.schema.metadata or {}).get(PROTOCOL_KEY)
    protocol = json.loads(raw) if raw else {}
    return table.to_pandas().astype(dtypes)[list(dtypes)], protocol


def read_results(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows and protocol of a results parquet file."""
    return read_rows(path, DTYPES, "cascadevsr results")


def load_run(out: Path, dtypes: dict[str, str], kind: str, keys: list[str],
             merge: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows and protocol of a resumable run: ``out`` if it exists plus the finished parts of an interrupted
    run, the latest row winning per ``keys``; the parts' protocol is folded in with ``merge``."""
    frames, protocol = [], {}
    if out.exists():
        df, protocol = read_rows(out, dtypes, kind)
        frames.append(df)
    pdir = parts_dir(out)
    if pdir.is_dir():
        frames += [read_rows(part, dtypes, kind)[0] for part in sorted(pdir.glob("*.parquet"))]
        saved = pdir / "protocol.json"
        if saved.exists():
            protocol = merge(protocol, json.loads(saved.read_text()))
    if not frames:
        return empty_rows(dtypes), protocol
    return pd.concat(frames, ignore_index=True).drop_duplicates(subset=keys, keep="last"), protocol


def _load_existing(out: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    return load_run(out, DTYPES, "cascadevsr results", ["method", "clip", "frame", "metric"], _merge_protocol)


# ----------------------------------------------------------------------------------------- protocol


def _packages() -> dict[str, str]:
    import cv2

    versions = {"cascadevsr": __version__, "torch": torch.__version__, "numpy": np.__version__,
                "opencv": cv2.__version__}
    try:
        import pyiqa

        versions["pyiqa"] = pyiqa.__version__
    except ImportError:
        pass
    return versions


def _merge_protocol(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = {**old, **new}
    for key in ("metrics", "methods"):
        merged[key] = {**old.get(key, {}), **new.get(key, {})}
    return merged


def _check_compatible(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    """Refuse to add rows computed under settings that differ from those of the rows already in ``out``."""
    if not old:
        return
    def comparable(p: dict[str, Any]) -> dict[str, Any]:
        # The alignment tolerance only decides which shifts are flagged; it changes no stored number.
        out = {k: p.get(k) for k in ("crop_border", "frames")}
        out["alignment"] = {k: v for k, v in p.get("alignment", {}).items() if k != "tolerance_px"}
        return out

    was, now = comparable(old), comparable(new)
    for key in was:
        if key in old and was[key] != now[key]:
            raise UserError(f"{out} was computed with {key}={was[key]}, this run asks for {now[key]}; use "
                            f"the same settings to add to it, or a new --out.")
    for name, desc in new["metrics"].items():
        prev = old.get("metrics", {}).get(name)
        if prev is None:
            continue
        for field_name in ("version", "options", "weights"):
            if prev.get(field_name) != desc.get(field_name):
                raise UserError(f"{out} holds '{name}' computed with {field_name} {prev.get(field_name)}, "
                                f"this run would use {desc.get(field_name)}; use a new --out to compare "
                                "them.")


# ---------------------------------------------------------------------------------------- the run


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W) in [0, 1]


def score_clips(metric: Metric, preds: list[np.ndarray], ref: np.ndarray | None,
                batch_size: int) -> list[np.ndarray]:
    """Per-frame scores ``(T,)`` of several outputs of one clip (``uint8 (T, H, W, 3)`` each).

    Frames go ``batch_size`` at a time. A full-reference metric prepares each reference batch once and
    scores every output against it: LPIPS and DISTS then run their network once per output frame instead
    of twice. Temporal metrics get each batch with the previous frame prepended, so every frame after the
    first is scored against its predecessor exactly once.
    """
    outs = [np.full(len(p), np.nan) for p in preds]
    if ref is None or not metric.needs_reference:
        for pred, out in zip(preds, outs, strict=True):
            for a, b, lo in _batches(metric, len(pred), batch_size):
                out[a:b] = metric(_to_tensor(pred[lo:b])).numpy()[a - lo:]
        return outs
    for a, b, lo in _batches(metric, len(ref), batch_size):
        prepared = metric.reference(_to_tensor(ref[lo:b]))
        for pred, out in zip(preds, outs, strict=True):
            out[a:b] = metric.score(_to_tensor(pred[lo:b]), prepared).numpy()[a - lo:]
    return outs


def _batches(metric: Metric, t: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(first frame scored, end, first frame fed) of each batch; temporal metrics also get the frame before."""
    return [(a, min(a + batch_size, t), a - 1 if (metric.temporal and a > 0) else a)
            for a in range(0, t, batch_size)]


def score_clip(metric: Metric, pred: np.ndarray, ref: np.ndarray | None, batch_size: int) -> np.ndarray:
    """Per-frame scores ``(T,)`` of one output of one clip; see :func:`score_clips`."""
    return score_clips(metric, [pred], ref, batch_size)[0]


def _job_key(method: str, clip: str) -> str:
    return hashlib.sha1(f"{method}\0{clip}".encode()).hexdigest()[:16]


def _clip_size(clip: Clip, what: str) -> tuple[int, int, int]:
    try:
        return clip.info()
    except UserError as err:
        raise UserError(f"{what} clip '{clip.name}': {err}") from None


def _plan_clips(cfg: EvalConfig, methods: list[MethodSource],
                metrics: dict[str, Metric]) -> tuple[list[str], dict, dict, dict]:
    """Clip names to evaluate, GT/LR clips, and each folder method's clips; every mismatch is a UserError."""
    gt = discover(cfg.gt, "ground truth") if cfg.gt else {}
    lr = discover(cfg.lr, "LR") if cfg.lr else {}
    folders = {m.name: discover(m.folder, f"method '{m.name}'") for m in methods if m.folder is not None}
    if gt:
        names = list(gt)
    elif any(m.generated for m in methods):
        names = list(lr)
    else:
        names = sorted(set().union(*[set(c) for c in folders.values()]))
    for m in methods:
        if m.generated:
            missing = [n for n in names if n not in lr]
            if missing:
                raise UserError(f"the LR folder has no clip '{missing[0]}' for method '{m.name}'"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + ".")
            continue
        have = folders[m.name]
        if gt:
            missing = [n for n in names if n not in have]
            if missing:
                raise UserError(f"method '{m.name}' has no output for clip '{missing[0]}'"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                + f" in {m.folder}.")
            extra = sorted(set(have) - set(names))
            if extra and (cfg.strict_clips or m.kind == "submission"):
                raise UserError(f"method '{m.name}' has clip '{extra[0]}', which is not in the ground truth; "
                                f"remove it from {m.folder}.")
            if extra:
                log.warning("method %s: ignoring %d clip(s) not in the ground truth: %s", m.name, len(extra),
                            ", ".join(extra[:5]))
    # Frame counts and sizes, checked before anything is computed.
    gt_info = {n: _clip_size(gt[n], "ground-truth") for n in names} if gt else {}
    for m in methods:
        for n in names:
            if m.generated:
                frames = _clip_size(lr[n], "LR")[0]
                if gt and frames != gt_info[n][0]:
                    raise UserError(f"clip '{n}': the LR clip has {frames} frames, the ground truth "
                                    f"{gt_info[n][0]}.")
                continue
            if n not in folders[m.name]:
                continue
            info = _clip_size(folders[m.name][n], f"method '{m.name}'")
            if gt and info[0] != gt_info[n][0]:
                raise UserError(f"clip '{n}': method '{m.name}' has {info[0]} frames, the ground truth "
                                f"{gt_info[n][0]}.")
            if gt and info[1:] != gt_info[n][1:]:
                raise UserError(f"clip '{n}': method '{m.name}' has frames of {info[2]}x{info[1]}, the "
                                f"ground truth {gt_info[n][2]}x{gt_info[n][1]}.")
            _check_sizes(metrics, n, info[1], info[2])
    for n, info in gt_info.items():
        _check_sizes(metrics, n, info[1], info[2])
    return names, gt, lr, folders


def _check_sizes(metrics: dict[str, Metric], clip: str, h: int, w: int) -> None:
    for name, m in metrics.items():
        problem = m.spec.size_problem(h, w, m.options) if m.spec.size_problem else None
        if problem:
            raise UserError(f"metric '{name}' cannot score clip '{clip}': {problem}.")


def build_protocol(cfg: EvalConfig, metrics: dict[str, Metric],
                   methods: list[MethodSource]) -> dict[str, Any]:
    """The JSON-ready protocol record of a run."""
    method_desc = {}
    for m in methods:
        d: dict[str, Any] = {"kind": m.kind}
        if m.folder is not None:
            d["folder"] = str(m.folder)
        if m.upscaler is not None:
            d["upscaler"] = m.upscaler.describe()
        if m.meta:
            d["meta"] = m.meta
        method_desc[m.name] = d
    return {
        "format": "cascadevsr.results/1",
        "columns": list(COLUMNS),
        "crop_border": cfg.crop_border,
        "crop_border_applies_to": [n for n, m in metrics.items() if "crop_border" in m.options],
        "colour_space": {n: _colour_space(m) for n, m in metrics.items()},
        "frames": {"start": cfg.start, "end": cfg.end, "step": cfg.step},
        "alignment": {"enabled": cfg.align_check, "radius_px": temporal.ALIGN_RADIUS,
                      "samples": temporal.ALIGN_SAMPLES, "smoothing_sigma_px": temporal.ALIGN_SIGMA,
                      "tolerance_px": cfg.align_tolerance},
        "metrics": {n: m.describe() for n, m in metrics.items()},
        "methods": method_desc,
        "gt": str(cfg.gt) if cfg.gt else None,
        "lr": str(cfg.lr) if cfg.lr else None,
        "packages": _packages(),
    }


def _colour_space(m: Metric) -> str:
    o = m.options
    if o.get("channel") == "rgb":
        return "RGB, 0-255"
    if "y_matrix" in o:
        names = {"bt601_studio": "Y of BT.601 YCbCr (studio swing, basicsr)",
                 "bt601_full": "Y of YIQ (full range)"}
        return names[o["y_matrix"]] + (", rounded" if o.get("round_y") else "")
    return "RGB in [0, 1]"


def write_method_outputs(folder: Path, method: str, clip: str, frames: np.ndarray, fps: float) -> None:
    """Write a method's output clip as ``folder/METHOD/CLIP.mp4`` (lossless FFV1), the layout ``--pred`` reads."""
    from cascadevsr import video

    dest = folder / method
    dest.mkdir(parents=True, exist_ok=True)
    video.write_video(dest / f"{clip}.mp4", frames, fps or 25.0, codec="ffv1")


# Decoded method outputs of one clip held at once so that they share the reference's features; above this,
# a clip's methods are scored in several groups (each group recomputes the reference side once).
GROUP_BYTES = 1024**3


def _group_jobs(jobs: list[tuple[MethodSource, str]],
                nbytes: Callable[[MethodSource, str], int]) -> list[list[tuple[MethodSource, str]]]:
    """Consecutive jobs of the same clip, in groups whose outputs fit :data:`GROUP_BYTES` (at least one)."""
    groups: list[list[tuple[MethodSource, str]]] = []
    held = 0
    for m, clip in jobs:
        size = nbytes(m, clip)
        if groups and groups[-1][0][1] == clip and held + size <= GROUP_BYTES:
            groups[-1].append((m, clip))
            held += size
        else:
            groups.append([(m, clip)])
            held = size
    return groups


def _frames_bytes(folders: dict[str, dict[str, Clip]], gt: dict[str, Clip], lr: dict[str, Clip],
                  cfg: EvalConfig, m: MethodSource, clip: str) -> int:
    """Bytes of a method's decoded frames of ``clip`` (estimated from the GT or LR size for executed methods)."""
    if m.folder is not None:
        t, h, w = folders[m.name][clip].info()
    elif gt:
        t, h, w = gt[clip].info()
    else:
        t, h, w = lr[clip].info()
        h, w = round(h * cfg.scale), round(w * cfg.scale)
    t = len(range(cfg.start, t if cfg.end is None else min(cfg.end, t), cfg.step))
    return t * h * w * 3


def _run_method(cfg: EvalConfig, m: MethodSource, lr_clip: Clip, ref: np.ndarray | None,
                records: list[tuple[str, str, int | None, str, float]]) -> np.ndarray:
    """Run an executed method (baseline, checkpoint) on the LR clip; records its runtime per frame."""
    lr_frames = lr_clip.read(cfg.start, cfg.end, cfg.step)
    size = ref.shape[1:3] if ref is not None else (round(lr_frames.shape[1] * cfg.scale),
                                                   round(lr_frames.shape[2] * cfg.scale))
    t0 = time.perf_counter()
    pred = np.concatenate([m.upscaler(lr_frames[a:a + cfg.batch_size], size)
                           for a in range(0, len(lr_frames), cfg.batch_size)])
    records.append((m.name, lr_clip.name, None, RUNTIME_METRIC, (time.perf_counter() - t0) / len(lr_frames)))
    if cfg.save_outputs is not None:
        write_method_outputs(Path(cfg.save_outputs), m.name, lr_clip.name, pred, clip_fps(lr_clip))
    return pred


def _score_rows(method: str, clip: str, metric: str, scores: np.ndarray, temporal_metric: bool,
                cfg: EvalConfig) -> list[tuple[str, str, int | None, str, float]]:
    """Per-frame rows and the clip mean; a temporal metric has no value for the first frame."""
    frame_ids = np.arange(cfg.start, cfg.start + len(scores) * cfg.step, cfg.step)[: len(scores)]
    keep, mean = scored_frames(scores, temporal_metric)
    rows = [(method, clip, int(f), metric, float(v)) for f, v in zip(frame_ids[keep], scores[keep], strict=True)]
    return [*rows, (method, clip, None, metric, mean)]


def scored_frames(scores: np.ndarray, temporal_metric: bool) -> tuple[np.ndarray, float]:
    """(mask of the frames that have a score, their clip mean): a temporal metric has none for the first
    frame; NaN scores are rows of their own but left out of the mean (NaN when nothing is left)."""
    keep = np.ones(len(scores), bool)
    if temporal_metric:
        keep[0] = False
    vals = scores[keep]
    mean = float(np.mean(vals[~np.isnan(vals)])) if (~np.isnan(vals)).any() else math.nan
    return keep, mean


def run_evaluation(cfg: EvalConfig, methods: list[MethodSource],
                   on_job_done: Callable[[str, str], None] | None = None) -> RunResult:
    """Evaluate ``methods`` on the clips of ``cfg`` and write/extend ``cfg.out``.

    ``on_job_done(method, clip)`` is called after each job's rows are safely on disk (progress, tests).
    """
    if not methods:
        raise UserError("nothing to evaluate: give --pred NAME=DIR, --baseline, --checkpoint or "
                        "--submission.")
    names_seen = collections.Counter(m.name for m in methods)
    dup = [n for n, c in names_seen.items() if c > 1]
    if dup:
        raise UserError(f"method name '{dup[0]}' is used twice; give each method its own name.")
    specs = {n: metric_spec(n) for n in cfg.metrics}
    fr = [n for n, s in specs.items() if s.needs_reference]
    if fr and cfg.gt is None:
        raise UserError(f"metric(s) {fr} compare against ground truth: give --gt DIR, or use reference-free "
                        "metrics only (e.g. niqe, ewarp, musiq).")
    if any(m.generated for m in methods) and cfg.lr is None:
        raise UserError("baselines and checkpoints run on LR clips: give --lr DIR.")

    metrics = {}
    for n, s in specs.items():
        opts = {"crop_border": cfg.crop_border} if "crop_border" in s.defaults else {}
        metrics[n] = create_metric(n, device=cfg.device, weights_dir=cfg.weights_dir, **opts)
    names, gt, lr, folders = _plan_clips(cfg, methods, metrics)
    protocol = build_protocol(cfg, metrics, methods)

    existing, old_protocol = _load_existing(cfg.out)
    _check_compatible(old_protocol, protocol, cfg.out)
    protocol = _merge_protocol(old_protocol, protocol)
    done = set(zip(existing["method"], existing["clip"], existing["metric"], strict=True))
    align = cfg.align_check and bool(gt)

    def wanted(m: MethodSource, clip: str) -> list[str]:
        todo = [n for n in cfg.metrics if (m.name, clip, n) not in done]
        if align and (m.name, clip, ALIGN_METRICS[0]) not in done:
            todo.append(ALIGN_METRICS[0])
        return todo

    jobs = [(m, c) for c in names for m in methods if wanted(m, c)]
    total = len(names) * len(methods)
    log.info("evaluate: %d clip(s) × %d method(s) × %d metric(s); %d job(s) to run, %d already done",
             len(names), len(methods), len(cfg.metrics), len(jobs), total - len(jobs))
    pdir = parts_dir(cfg.out)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    if jobs:
        pdir.mkdir(parents=True, exist_ok=True)
        (pdir / "protocol.json").write_text(json.dumps(protocol, indent=1, sort_keys=True))

    groups = _group_jobs(jobs, lambda m, c: _frames_bytes(folders, gt, lr, cfg, m, c))

    def load(group: list[tuple[MethodSource, str]]) -> tuple[np.ndarray | None, list[np.ndarray | None]]:
        """(reference or None, each method's frames or None for executed methods); runs in a worker thread."""
        clip = group[0][1]
        ref = gt[clip].read(cfg.start, cfg.end, cfg.step) if gt else None
        return ref, [None if m.generated else folders[m.name][clip].read(cfg.start, cfg.end, cfg.step)
                     for m, _ in group]

    computed: list[tuple[str, str, str]] = []
    started = time.perf_counter()
    done_jobs = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        pending: collections.deque = collections.deque()
        queue = iter(groups)
        for _ in range(cfg.workers):
            group = next(queue, None)
            if group is not None:
                pending.append((group, pool.submit(load, group)))
        while pending:
            group, fut = pending.popleft()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            ref, preds = fut.result()
            clip = group[0][1]
            group_methods = [m for m, _ in group]
            records: dict[str, list[tuple[str, str, int | None, str, float]]] = {m.name: [] for m in group_methods}
            todo = {m.name: wanted(m, clip) for m in group_methods}
            for i, m in enumerate(group_methods):
                if m.generated:
                    preds[i] = _run_method(cfg, m, lr[clip], ref, records[m.name])
                if ref is not None and preds[i].shape != ref.shape:
                    raise UserError(f"clip '{clip}': method '{m.name}' gives frames of shape {preds[i].shape[1:]}, "
                                    f"the ground truth {ref.shape[1:]}.")
                if ALIGN_METRICS[0] in todo[m.name]:
                    try:
                        dx, dy = temporal.clip_shift(_to_tensor(preds[i]), _to_tensor(ref))
                    except ValueError:  # frames too small to search ±3 px
                        dx = dy = math.nan
                    records[m.name] += [(m.name, clip, None, "align_dx", dx), (m.name, clip, None, "align_dy", dy)]
            for n in cfg.metrics:
                who = [i for i, m in enumerate(group_methods) if n in todo[m.name]]
                if not who:
                    continue
                try:
                    all_scores = score_clips(metrics[n], [preds[i] for i in who], ref, cfg.batch_size)
                except ValueError as err:
                    raise UserError(f"metric '{n}' cannot score clip '{clip}': {err}.") from None
                for i, scores in zip(who, all_scores, strict=True):
                    name = group_methods[i].name
                    records[name] += _score_rows(name, clip, n, scores, metrics[n].temporal, cfg)
                    computed.append((name, clip, n))
            for m in group_methods:
                part = pdir / f"{_job_key(m.name, clip)}-{uuid.uuid4().hex[:8]}.parquet"
                write_results(_as_rows(records[m.name]), part, None)
                done_jobs += 1
                log.info("[%d/%d] %s / %s: %s (%.1f s elapsed)", done_jobs, len(jobs), m.name, clip,
                         ", ".join(todo[m.name]), time.perf_counter() - started)
                if on_job_done is not None:
                    on_job_done(m.name, clip)

    rows, _ = _load_existing(cfg.out)
    rows = rows.sort_values(["method", "clip", "metric", "frame"], na_position="last", kind="stable")
    rows = rows.reset_index(drop=True)
    misaligned = find_misaligned(rows, cfg.align_tolerance)
    protocol["misaligned"] = [{"method": k[0], "clip": k[1], "dx": v[0], "dy": v[1]}
                              for k, v in misaligned.items()]
    write_results(rows, cfg.out, protocol)
    protocol_path = cfg.out.with_name(cfg.out.name + ".protocol.json")
    protocol_path.write_text(json.dumps(protocol, indent=1, sort_keys=True))
    _write_config(cfg, methods)
    if pdir.is_dir():
        for p in pdir.iterdir():
            p.unlink()
        pdir.rmdir()
    for (meth, clip), (dx, dy) in misaligned.items():
        log.warning("method %s, clip %s: output is shifted by (%.2f, %.2f) px against the ground truth; "
                    "its full-reference scores are not comparable until it is aligned", meth, clip, dx, dy)
    return RunResult(rows=rows, computed=computed, misaligned=misaligned, protocol=protocol)


def clip_fps(clip: Clip) -> float:
    """Frame rate of a clip (25 for frame folders and unreadable rates)."""
    if not clip.is_video:
        return 25.0
    from cascadevsr import video

    return video.probe(clip.path).fps or 25.0


def _write_config(cfg: EvalConfig, methods: list[MethodSource]) -> None:
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    data["methods"] = [{"name": m.name, "kind": m.kind, "folder": str(m.folder) if m.folder else None}
                       for m in methods]
    cfg.out.with_name(cfg.out.name + ".config.json").write_text(json.dumps(data, indent=1))


def find_misaligned(rows: pd.DataFrame, tolerance: float) -> dict[tuple[str, str], tuple[float, float]]:
    """(method, clip) → (dx, dy) for every clip whose estimated shift is at least ``tolerance`` px."""
    sub = rows[rows["metric"].isin(ALIGN_METRICS)]
    if sub.empty:
        return {}
    wide = sub.pivot_table(index=["method", "clip"], columns="metric", values="value", aggfunc="first")
    out = {}
    for (meth, clip), r in wide.iterrows():
        dx, dy = float(r.get("align_dx", 0.0)), float(r.get("align_dy", 0.0))
        if math.hypot(dx, dy) >= tolerance:
            out[(str(meth), str(clip))] = (dx, dy)
    return out


def summary(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Method × metric table: the mean over clips of the clip-level values."""
    clip_rows = rows[rows["frame"].isna() & rows["metric"].isin(metrics)]
    if clip_rows.empty:
        return pd.DataFrame()
    table = clip_rows.pivot_table(index="method", columns="metric", values="value", aggfunc="mean")
    return table[[m for m in metrics if m in table.columns]]
