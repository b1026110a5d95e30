"""Clip sources (the reader side of the corpus builder): find videos, scan them, plan clips, filter clips.

1. ``expand_inputs`` turns folders, files, globs and ``.txt`` lists into a sorted list of video paths.
2. ``scan_source`` probes one video and decodes it once at thumbnail size to count the frames that really
   decode (a truncated file reports more than it has) and to find scene cuts. It never raises: a bad file
   comes back as a ``SourceScan`` with ``ok=False`` and a reason.
3. ``plan_clips`` cuts every shot into clips of ``clip_frames`` with a stride, so no clip spans a cut, and
   gives each clip a key and a seed derived from (corpus seed, source, frame range). The plan is a pure
   function of the scans and the config, which is what makes resuming safe.
4. ``fit_hr`` and ``clip_filters`` run inside the shard worker on the decoded frames.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cascadevsr.datasets.config import CorpusConfig
from cascadevsr.errors import UserError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
LIST_EXTENSIONS = (".txt", ".lst")
# The scene-cut detector works on thumbnails: histograms of a 64-px-wide frame are as telling as of the full
# frame and cost nothing next to decoding.
THUMB_WIDTH = 64
HIST_BINS = 32
# A decoder that yields fewer than this fraction of the frames the container promises is reading a
# truncated or damaged file; such sources are failed as a whole rather than half used.
MIN_DECODED_FRACTION = 0.9


# ------------------------------------------------------------------------------------------------ inputs


def expand_inputs(inputs: tuple[str, ...] | list[str]) -> list[str]:
    """Resolve ``inputs`` to a sorted, de-duplicated list of absolute video paths.

    A folder contributes every file below it with a video extension (whatever its content: a bad file is a
    scan failure, not a silent omission); a glob contributes its matches; a ``.txt``/``.lst`` file one path
    per line (``#`` comments allowed; missing entries are kept and fail at scan time, so a list of a million
    paths with a few stale ones still builds); anything else must be an existing file.
    """
    found: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += [str(p.resolve()) for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line).expanduser()
                    found.append(str((entry if entry.is_absolute() else path.parent / entry).resolve()))
        elif path.is_file():
            found.append(str(path.resolve()))
        elif glob.has_magic(str(item)):
            matches = [m for m in glob.glob(str(path), recursive=True) if Path(m).is_file()]
            if not matches:
                raise UserError(f"--input pattern '{item}' matches no file.")
            found += [str(Path(m).resolve()) for m in matches]
        else:
            raise UserError(f"--input '{item}' is not a folder, a file, a glob or a list of paths.")
    return sorted(set(found))


# ------------------------------------------------------------------------------------------------ scans


@dataclass(frozen=True)
class SourceScan:
    """What the scan learnt about one source video. ``cuts`` are the first frames of shots 2, 3, ..."""

    path: str
    ok: bool
    reason: str = ""
    num_frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    cuts: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["cuts"] = list(self.cuts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceScan:
        """Inverse of ``to_dict``."""
        return cls(**{**d, "cuts": tuple(d.get("cuts", ()))})

    @property
    def shots(self) -> list[tuple[int, int]]:
        """Half-open frame ranges of the shots."""
        edges = [0, *self.cuts, self.num_frames]
        return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def frame_histogram(frame: np.ndarray) -> np.ndarray:
    """Per-channel colour histogram of a thumbnail of ``frame`` (uint8 ``(H, W, 3)``), each channel summing
    to 1; shape ``(3, HIST_BINS)``."""
    h, w = frame.shape[:2]
    thumb = cv2.resize(frame, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
    hist = np.stack([np.bincount(thumb[..., c].ravel() // (256 // HIST_BINS), minlength=HIST_BINS)
                     for c in range(3)]).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance in [0, 1] between two ``frame_histogram`` results (mean over channels)."""
    return float(0.5 * np.abs(a - b).sum(axis=1).mean())


def detect_cuts(histograms: list[np.ndarray], threshold: float) -> list[int]:
    """Frame indices that start a new shot: where consecutive histograms differ by more than ``threshold``.

    A hard cut changes the colour distribution at once; a pan or moving object changes it slowly, so a
    first-difference test on histograms separates the two well enough for clip planning.
    """
    return [i for i in range(1, len(histograms))
            if histogram_distance(histograms[i - 1], histograms[i]) > threshold]


def one_line(err: BaseException, with_type: bool = True, limit: int = 300) -> str:
    """An exception as one short line for a manifest ``reason`` (library messages can span lines)."""
    text = " ".join(str(err).split())[:limit]
    return f"{type(err).__name__}: {text}" if with_type else text


def scan_source(path: str, threshold: float) -> SourceScan:
    """Probe ``path`` and decode it once to count frames and find cuts; never raises."""
    from cascadevsr.video import iter_frames, probe

    try:
        if not Path(path).is_file():
            return SourceScan(path, False, "file not found")
        info = probe(path)
    except UserError as err:
        return SourceScan(path, False, f"unreadable: {one_line(err, with_type=False)}")
    except Exception as err:  # any decoder error on a bad file is that file's failure, not the job's
        return SourceScan(path, False, f"unreadable: {one_line(err)}")
    meta = dict(fps=float(info.fps), width=int(info.width), height=int(info.height), codec=str(info.codec))
    hists: list[np.ndarray] = []
    try:
        for chunk in iter_frames(path, chunk=32):  # (t, H, W, 3) uint8
            hists += [frame_histogram(frame) for frame in chunk]
    except Exception as err:
        return SourceScan(path, False, f"corrupt: decoding failed after {len(hists)} frames "
                                       f"({one_line(err)})", num_frames=len(hists), **meta)
    promised = int(info.num_frames or 0)
    if not hists:
        return SourceScan(path, False, "corrupt: no frame decodes", **meta)
    if promised and len(hists) < MIN_DECODED_FRACTION * promised:
        return SourceScan(path, False, f"truncated: {len(hists)} of {promised} frames decode",
                          num_frames=len(hists), **meta)
    cuts = tuple(detect_cuts(hists, threshold))
    return SourceScan(path, True, "", num_frames=len(hists), cuts=cuts, **meta)


def scan_batch(paths: list[str], threshold: float) -> list[dict[str, Any]]:
    """``scan_source`` over several paths (one scan task), JSON-ready."""
    out = []
    for p in paths:
        scan = scan_source(p, threshold)
        if not scan.ok:
            log.warning("source %s skipped: %s", p, scan.reason)
        out.append(scan.to_dict())
    return out


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class ClipSpec:
    """One clip to turn into a sample: frames ``[start, end)`` of ``source``."""

    key: str
    source: str
    start: int
    end: int
    seed: int
    fps: float
    source_size: tuple[int, int]


def sample_key(source: str, start: int) -> str:
    """A WebDataset-safe key (no dots: the tar reader splits key and extension at the first dot), unique per
    (source path, start frame) and readable: ``<stem>-<path hash>-<start>``."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(source).stem)[:40] or "clip"
    digest = hashlib.sha1(source.encode()).hexdigest()[:8]
    return f"{stem}-{digest}-{start:06d}"


def clip_starts(shots: list[tuple[int, int]], clip_frames: int, stride: int) -> list[int]:
    """Start frames of the clips that fit inside a shot, every ``stride`` frames."""
    return [s for a, b in shots for s in range(a, b - clip_frames + 1, stride)]


def source_too_small(scan: SourceScan, cfg: CorpusConfig) -> str | None:
    """Why a source's frames cannot give ``hr_size`` without upscaling (``None`` if they can)."""
    h, w = cfg.hr_size
    if scan.height >= h and scan.width >= w:
        return None
    if cfg.hr_mode == "resize" and cfg.allow_upscale:
        return None
    hint = "" if cfg.hr_mode == "crop" else " (pass --allow-upscale to accept)"
    return f"too small: {scan.width}x{scan.height} < --hr-size {w}x{h}{hint}"


def plan_clips(scans: list[SourceScan], cfg: CorpusConfig) -> tuple[list[ClipSpec], list[dict[str, Any]]]:
    """Clips of every usable source, in source then time order, and a failure row for every source that
    yields none (unreadable, truncated, smaller than ``hr_size``, or with no shot as long as a clip)."""
    from cascadevsr.degrade.pipeline import derive_seed

    clips: list[ClipSpec] = []
    failures: list[dict[str, Any]] = []
    for scan in scans:
        if not scan.ok:
            failures.append({"source": scan.path, "reason": scan.reason})
            continue
        small = source_too_small(scan, cfg)
        if small:
            failures.append({"source": scan.path, "reason": small})
            continue
        starts = clip_starts(scan.shots, cfg.clip_frames, cfg.clip_stride)
        if not starts:
            longest = max((b - a for a, b in scan.shots), default=0)
            why = (f"too short: {scan.num_frames} frames < --clip-frames {cfg.clip_frames}"
                   if scan.num_frames < cfg.clip_frames else
                   f"no shot of {cfg.clip_frames} frames (longest {longest} of {scan.num_frames}, "
                   f"{len(scan.cuts)} scene cuts)")
            failures.append({"source": scan.path, "reason": why})
            continue
        if cfg.max_clips_per_video and len(starts) > cfg.max_clips_per_video:
            pick = np.linspace(0, len(starts) - 1, cfg.max_clips_per_video).round().astype(int)
            starts = [starts[i] for i in sorted(set(pick.tolist()))]
        for s in starts:
            e = s + cfg.clip_frames
            clips.append(ClipSpec(key=sample_key(scan.path, s), source=scan.path, start=s, end=e,
                                  seed=derive_seed(cfg.seed, scan.path, s, e), fps=scan.fps,
                                  source_size=(scan.height, scan.width)))
    return clips, failures


# ------------------------------------------------------------------------------------------- HR framing


def fit_hr(frames: np.ndarray, hr_size: tuple[int, int], mode: str, allow_upscale: bool,
           rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Bring uint8 frames ``(T, H, W, 3)`` to ``hr_size = (h, w)``; returns the frames and a JSON record.

    ``resize`` scales (area filter down, bicubic up) so the frame covers ``hr_size`` and crops the centre;
    ``crop`` takes a native-resolution window at a position drawn from ``rng``. A source smaller than
    ``hr_size`` raises ``ValueError`` unless ``allow_upscale``.
    """
    H, W = frames.shape[1:3]
    h, w = hr_size
    if mode == "crop":
        if h > H or w > W:
            raise ValueError(f"source {W}x{H} is smaller than --hr-size {w}x{h} for --hr-mode crop")
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        out = frames[:, top : top + h, left : left + w]
        return np.ascontiguousarray(out), {"mode": "crop", "crop": [top, left, h, w]}
    factor = max(h / H, w / W)
    if factor > 1 and not allow_upscale:
        raise ValueError(f"source {W}x{H} is smaller than --hr-size {w}x{h} (pass --allow-upscale to accept)")
    rh, rw = max(h, math.ceil(H * factor - 1e-6)), max(w, math.ceil(W * factor - 1e-6))
    if (rh, rw) != (H, W):
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        frames = np.stack([cv2.resize(f, (rw, rh), interpolation=interp) for f in frames])
    top, left = (rh - h) // 2, (rw - w) // 2
    out = frames[:, top : top + h, left : left + w]
    return np.ascontiguousarray(out), {"mode": "resize", "resize_to": [rh, rw], "crop": [top, left, h, w]}


# ------------------------------------------------------------------------------------------------ filters


MUSIQ_FILE = "musiq_koniq_ckpt-e95806b9.pth"


def find_musiq_weights(explicit: str | None) -> Path | None:
    """The MUSIQ checkpoint: an explicit path (must exist), else the cascadevsr weights cache, else pyiqa's
    torch-hub cache; ``None`` when none is present (the filter is then skipped)."""
    import os

    from cascadevsr.paths import weights_dir

    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"--musiq-weights '{explicit}' does not exist.")
        return path.resolve()
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    for candidate in (weights_dir() / MUSIQ_FILE, weights_dir() / "pyiqa" / MUSIQ_FILE,
                      torch_home / "hub" / "pyiqa" / MUSIQ_FILE):
        if candidate.is_file():
            return candidate
    return None


_MUSIQ_CACHE: dict[str, Any] = {}


def musiq_score(frames: np.ndarray, weights: str) -> float:
    """Mean MUSIQ (KonIQ scale, ~0-100) of uint8 frames ``(N, H, W, 3)``; the model loads once per process."""
    import torch

    import cascadevsr  # noqa: F401  (installs the torchvision shim pyiqa needs)

    if weights not in _MUSIQ_CACHE:
        import pyiqa

        _MUSIQ_CACHE[weights] = pyiqa.create_metric("musiq", device="cpu", pretrained_model_path=weights)
    metric = _MUSIQ_CACHE[weights]
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    with torch.no_grad():
        return float(metric(x).mean())


def filter_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly over a clip (all frames if it is shorter)."""
    return sorted({round(float(i)) for i in np.linspace(0, num_frames - 1, min(count, num_frames))})


def clip_measures(frames: np.ndarray, cfg: CorpusConfig,
                  musiq_weights: str | None) -> dict[str, float | None]:
    """Brightness (mean luma 0-255), Laplacian variance and, with weights, MUSIQ of uniformly sampled frames
    of the HR clip. MUSIQ is only computed when the cheap measures pass."""
    sample = frames[filter_indices(len(frames), cfg.filter_frames)]
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in sample]
    brightness = float(np.mean([g.mean() for g in grey]))
    lap = float(np.mean([cv2.Laplacian(g, cv2.CV_64F).var() for g in grey]))
    out: dict[str, float | None] = {"brightness": brightness, "laplacian_var": lap, "musiq": None}
    if musiq_weights and filter_rejection(out, cfg) is None:
        out["musiq"] = musiq_score(sample, musiq_weights)
    return out


def filter_rejection(measures: dict[str, float | None], cfg: CorpusConfig) -> str | None:
    """The reason a clip is rejected (``brightness``/``laplacian``/``musiq`` first), or ``None``."""
    b = measures["brightness"]
    if b is not None and b < cfg.min_brightness:
        return f"brightness: too dark (mean luma {b:.1f} < {cfg.min_brightness:g})"
    if b is not None and b > cfg.max_brightness:
        return f"brightness: too bright (mean luma {b:.1f} > {cfg.max_brightness:g})"
    lap = measures["laplacian_var"]
    if lap is not None and lap < cfg.min_laplacian_var:
        return f"laplacian: too blurry (Laplacian variance {lap:.1f} < {cfg.min_laplacian_var:g})"
    m = measures.get("musiq")
    if m is not None and m < cfg.min_musiq:
        return f"musiq: low quality (MUSIQ {m:.1f} < {cfg.min_musiq:g})"
    return None
