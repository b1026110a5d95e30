"""The shard worker: ``process_shard(spec) -> ShardResult``, one output shard per call.

Ray runs it as a task; a plain ``for`` loop (``--workers 0``, tests, benchmarks) calls the same function
with the same argument. It never raises to its caller: a clip that cannot be used becomes a row with
``status`` ``failed`` or ``rejected`` and a reason, and an error that breaks the shard as a whole (disk
full, a bad preset) comes back as ``ShardResult(ok=False, error=...)``.

Files, in the order they are written (the order is the resume protocol):

1. ``shard-NNNNNN.tar.tmp``: the samples, written with webdataset's ``TarWriter``, fsynced;
2. renamed to ``shard-NNNNNN.tar`` once complete, so a ``.tar`` is never truncated;
3. ``shard-NNNNNN.json``: the shard's stats and manifest rows, written last. It is the commit marker:
   a shard is finished exactly when this file exists, and a finished shard is never rewritten.

Sample format (one tar member per entry, webdataset naming ``KEY.EXT``)::

    KEY.hr.mp4       HR clip, H.264 CRF 4 (near-lossless), hr_size
    KEY.lr.mp4       LR clip, FFV1 (lossless, so storage adds no second degradation)
    KEY.params.json  source, frame range, HR framing, filter measures, preset, every resolved
                     parameter, seeds, package versions: enough to regenerate the LR clip
    KEY.lr_latent.npy / KEY.hr_latent.npy   with --latent-codec: float32 (C, t, h, w) latents

The HR latent is always the encoding of the HR frames. The LR latent is the encoding of the LR frames,
except in a model-guided sample whose last frame-changing step was the model-guided one, when the corpus's
``--latent-codec`` is the base model's VAE: then it is the base model's denoised latent ĉ0 itself
(SimpleGVR §4.2.2 stores ĉ0 rather than re-encoding its decoding), and ``lr.mp4`` holds its decoding.
Samples of a preset with a model-guided step say which in ``params.json``: ``"lr_latent_source"`` is
``"model_guided"`` or ``"encoded"``; samples of other presets have no such key (their LR latent is encoded).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cascadevsr.datasets.config import CorpusConfig
from cascadevsr.datasets.sources import ClipSpec, clip_measures, filter_rejection, fit_hr, one_line
from cascadevsr.errors import UserError

log = logging.getLogger(__name__)

# The tar's extension table, written out by hand: what each member holds and how it is encoded.
SAMPLE_ENTRIES: dict[str, str] = {
    "hr.mp4": "HR frames, H.264 (libx264, CRF 4, near-lossless)",
    "lr.mp4": "LR frames, FFV1 (lossless)",
    "params.json": "UTF-8 JSON record of the source, framing, filters, degradation and versions",
}
LATENT_ENTRIES: dict[str, str] = {
    "lr_latent.npy": "LR latent, float32 .npy (C, t, h, w) from --latent-codec, or the model-guided step's "
                     "denoised latent when that codec is the base model's VAE (params.json: lr_latent_source)",
    "hr_latent.npy": "HR latent, float32 .npy (C, t, H, W) from --latent-codec",
}
# x264's macroblock-tree rate control made identical frames encode to different bytes depending on what
# the process had encoded before (measured: the same HR clip after other clips' codec round trips); with it
# off, the same command and seed give byte-identical shards on Ray or in a plain loop. Preset "fast": on 17 frames
# of 720p it encoded in 1.5 s instead of medium's 1.9 s at the same PSNR (47.6 dB) and size (+1%); veryfast cost
# 1.1 dB.
HR_CODEC: dict[str, Any] = {"codec": "libx264", "crf": 4, "preset": "fast", "options": {"x264-params": "mbtree=0"}}
LR_CODEC: dict[str, Any] = {"codec": "ffv1"}
# Fixed member mtime: the same command and seed must give byte-identical tars.
TAR_MTIME = 0.0
STATUSES = ("ok", "rejected", "failed")


def shard_name(index: int) -> str:
    """``shard-000123``."""
    return f"shard-{index:06d}"


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: the clips of one output shard and the settings to make them."""

    index: int
    clips: tuple[ClipSpec, ...]
    config: CorpusConfig
    musiq_weights: str | None = None

    @property
    def name(self) -> str:
        """The shard's file stem."""
        return shard_name(self.index)

    @property
    def out_dir(self) -> Path:
        """Folder the shard is written to."""
        return self.config.out_dir


@dataclass
class ShardResult:
    """What a shard task returns: picklable, small, and never an exception."""

    name: str
    ok: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Rows with ``status``."""
        return sum(r["status"] == status for r in self.rows)


class Report(Protocol):
    """Progress callback: called once per clip with the shard name and the clip's status."""

    def __call__(self, shard: str, status: str) -> None: ...


def shard_paths(out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    """``(tar, tar.tmp, stats json)`` of shard ``name``."""
    return out_dir / f"{name}.tar", out_dir / f"{name}.tar.tmp", out_dir / f"{name}.json"


def shard_done(out_dir: Path, name: str) -> bool:
    """True when the shard's commit marker exists (and its tar with it)."""
    tar, _, stats = shard_paths(out_dir, name)
    return stats.is_file() and tar.is_file()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def package_versions() -> dict[str, str]:
    """Versions that can change a sample's bytes."""
    import av
    import cv2
    import webdataset

    from cascadevsr import __version__

    return {"cascadevsr": __version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "av": av.__version__, "webdataset": getattr(webdataset, "__version__", "?"),
            "python": sys.version.split()[0]}


def applied_ops(steps: list[dict[str, Any]]) -> list[str]:
    """Names of the degradation ops that were applied, in the order they ran."""
    ops: list[str] = []
    for entry in steps:
        if entry["op"] == "shuffle":
            for gi in entry["order"]:
                ops += [s["op"] for s in entry["groups"][gi] if s["applied"]]
        elif entry["applied"]:
            ops.append(entry["op"])
    return ops


def base_row(clip: ClipSpec, cfg: CorpusConfig, shard: str) -> dict[str, Any]:
    """The manifest columns every clip row has, filled with what is known before processing."""
    return {"key": clip.key, "status": "failed", "shard": shard, "source": clip.source,
            "start": clip.start, "end": clip.end, "preset": cfg.preset, "seed": clip.seed, "reason": "",
            "hr_size": "", "lr_size": "", "brightness": None, "laplacian_var": None, "musiq": None,
            "ops": "", "params": "", "hr_bytes": 0, "lr_bytes": 0}


def make_sample(clip: ClipSpec, cfg: CorpusConfig, pipeline: Any, musiq_weights: str | None,
                shard: str, versions: dict[str, str],
                base_model: Any = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Turn one clip into a webdataset sample dict (or ``None``) and its manifest row; never raises.

    ``base_model`` is the loaded ``cfg.base_model`` for a model-guided step."""
    from cascadevsr.degrade.model_guided import uses_model_guided
    from cascadevsr.degrade.pipeline import degrade_clip, derive_seed
    from cascadevsr.video import encode_video, read_frames

    row = base_row(clip, cfg, shard)
    row["preset"] = pipeline.name
    try:
        frames = read_frames(clip.source, clip.start, clip.end)  # (T, H, W, 3) uint8
        if len(frames) != clip.end - clip.start:
            raise ValueError(f"decoded {len(frames)} of {clip.end - clip.start} frames")
        rng = np.random.default_rng(derive_seed(clip.seed, "hr_framing"))
        hr, framing = fit_hr(frames, cfg.hr_size, cfg.hr_mode, cfg.allow_upscale, rng)
        measures = clip_measures(hr, cfg, musiq_weights)
        row.update(measures)
        reason = filter_rejection(measures, cfg)
        if reason:
            row.update(status="rejected", reason=reason)
            return None, row
        fps = clip.fps if clip.fps > 0 else 25.0
        pair = degrade_clip(hr, pipeline, clip.seed, strength=cfg.strength, scale=cfg.scale,
                            lr_size=cfg.lr_size, fps=fps, base_model=base_model)
        params = {
            "key": clip.key,
            "source": {"path": clip.source, "frames": [clip.start, clip.end], "fps": fps,
                       "size": list(clip.source_size)},
            "hr_framing": framing,
            "filters": measures,
            **pair.record,
            "corpus_seed": cfg.seed,
            "versions": versions,
        }
        hr_bytes = encode_video(pair.hr, fps, **HR_CODEC)
        lr_bytes = encode_video(pair.lr, fps, **LR_CODEC)
        latents: dict[str, bytes] = {}
        if cfg.latent_codec:
            denoised = stored_lr_latent(cfg.latent_codec, pair)
            latents = encode_latents(cfg.latent_codec, pair.hr, pair.lr if denoised is None else None)
            if denoised is not None:
                latents["lr_latent.npy"] = npy_bytes(denoised)
            if uses_model_guided(pipeline):
                # Only where it can be either: other presets' shards keep their bytes.
                params["lr_latent_source"] = "encoded" if denoised is None else "model_guided"
    except Exception as err:  # one bad clip is a row, never the end of the shard
        reason = one_line(err, with_type=not isinstance(err, UserError))
        log.warning("shard %s clip %s (%s) failed: %s", shard, clip.key, clip.source, reason)
        row.update(status="failed", reason=reason)
        return None, row
    (h, w), (lh, lw) = pair.hr.shape[1:3], pair.lr.shape[1:3]
    row.update(status="ok", hr_size=f"{w}x{h}", lr_size=f"{lw}x{lh}",
               ops=",".join(applied_ops(pair.record["steps"])),
               params=json.dumps(pair.record["steps"], separators=(",", ":")),
               hr_bytes=len(hr_bytes), lr_bytes=len(lr_bytes))
    sample = {"__key__": clip.key, "hr.mp4": hr_bytes, "lr.mp4": lr_bytes,
              "params.json": json.dumps(params, sort_keys=True).encode(), **latents}
    return sample, row


_CODECS: dict[str, Any] = {}


def latent_codec(text: str) -> Any:
    """The ``cascadevsr.latent`` codec for a ``--latent-codec`` value, built once per process."""
    if text not in _CODECS:
        from cascadevsr.datasets.config import codec_spec
        from cascadevsr.latent import make_codec

        _CODECS[text] = make_codec(codec_spec(text))
    return _CODECS[text]


def encode_latents(text: str, hr: np.ndarray, lr: np.ndarray | None) -> dict[str, bytes]:
    """``hr_latent.npy`` / ``lr_latent.npy`` entries: float32 ``(C, t, h, w)`` latents of uint8 clips (no
    ``lr_latent.npy`` when ``lr`` is None)."""
    import torch

    codec = latent_codec(text)
    out = {}
    for name, frames in (("hr_latent.npy", hr), ("lr_latent.npy", lr)):
        if frames is None:
            continue
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
        with torch.no_grad():
            z = codec.encode(x).float().cpu().numpy()  # (C, t, h, w)
        out[name] = npy_bytes(z)
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (no pickle)."""
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


_SAME_CODEC: dict[tuple[str, str], bool] = {}


def stored_lr_latent(text: str, pair: Any) -> np.ndarray | None:
    """The pair's own LR latent (the model-guided step's ĉ0) when ``--latent-codec`` ``text`` is the codec it
    lives in, else None (the LR frames are then encoded). The comparison is made once per process and codec."""
    if pair.lr_latent is None or pair.lr_latent_codec is None:
        return None
    import json

    from cascadevsr.latent import latent_frames, same_codec

    key = (text, json.dumps(pair.lr_latent_codec, sort_keys=True))
    if key not in _SAME_CODEC:
        from cascadevsr.datasets.config import codec_spec

        _SAME_CODEC[key] = same_codec(codec_spec(text), pair.lr_latent_codec)
    if not _SAME_CODEC[key]:
        return None
    codec = latent_codec(text)
    (num, h, w), s = pair.lr.shape[:3], codec.space_factor
    want = (codec.channels, latent_frames(num, codec.time_factor), h // s, w // s)
    if tuple(pair.lr_latent.shape) != want:
        raise ValueError(f"the model-guided latent has shape {tuple(pair.lr_latent.shape)}, but the LR clip's "
                         f"latent would be {want}")
    return np.ascontiguousarray(pair.lr_latent, dtype=np.float32)


def process_shard(spec: ShardSpec, report: Report | None = None) -> ShardResult:
    """Write shard ``spec.name`` (tar, then its stats file) and return its rows; never raises.

    ``report(shard, status)`` is called after each clip, for a progress bar.
    """
    import cv2
    import webdataset as wds

    from cascadevsr.degrade.pipeline import load_preset

    t0, cpu0 = time.perf_counter(), time.process_time()
    name, cfg = spec.name, spec.config
    tar, tmp, stats = shard_paths(spec.out_dir, name)
    rows: list[dict[str, Any]] = []
    threads = cv2.getNumThreads()
    # One task per core: OpenCV's own thread pool would otherwise fight the other tasks for the cores.
    cv2.setNumThreads(cfg.threads_per_task)
    try:
        pipeline = load_preset(cfg.preset)
        versions = package_versions()
        base_model = None
        if cfg.base_model:
            from cascadevsr.base_model import load_base_model

            base_model = load_base_model(cfg.base_model)  # cached: once per worker process
        with open(tmp, "wb") as fh:
            writer = wds.TarWriter(fh, encoder=False, mtime=TAR_MTIME)
            for clip in spec.clips:
                sample, row = make_sample(clip, cfg, pipeline, spec.musiq_weights, name, versions, base_model)
                if sample is not None:
                    writer.write(sample)
                rows.append(row)
                if report is not None:
                    report(name, row["status"])
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, tar)
        seconds = time.perf_counter() - t0
        write_json_atomic(stats, {
            "shard": name, "keys": [c.key for c in spec.clips], "rows": rows, "seconds": round(seconds, 3),
            "cpu_seconds": round(time.process_time() - cpu0, 3),
            "tar_bytes": tar.stat().st_size,
            "counts": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
        })
        return ShardResult(name, True, rows, seconds=seconds)
    except Exception as err:  # the shard boundary: anything left is this shard's failure, reported as data
        log.exception("shard %s failed", name)
        tmp.unlink(missing_ok=True)
        return ShardResult(name, False, rows, error=f"{type(err).__name__}: {err}",
                           seconds=time.perf_counter() - t0)
    finally:
        cv2.setNumThreads(threads)
