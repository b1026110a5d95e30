"""The corpus configuration: one frozen dataclass, validated once, saved as ``config.json`` beside the shards.

Fields split in two groups. *Content* fields decide which samples exist and what they contain; a rerun
into the same folder must use the same content fields, or resuming would mix two corpora. *Run* fields
(workers, cluster address, retries) only decide how the work is executed and may change between runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascadevsr.errors import UserError

HR_MODES = ("resize", "crop")

# Fields that may differ between a run and the run it resumes.
RUN_FIELDS = ("workers", "address", "shard_retries", "threads_per_task")


@dataclass(frozen=True)
class CorpusConfig:
    """Everything ``build-corpus`` needs. Sizes are ``(height, width)`` in pixels."""

    inputs: tuple[str, ...]
    """Folders (searched recursively for videos), video files, glob patterns, or ``.txt`` lists of paths."""
    out: str
    """Output folder: shards, per-shard stats, ``manifest.parquet``, ``stats.json``, ``config.json``."""
    preset: str = "realbasicvsr"
    """Degradation preset name or YAML path (see ``cascadevsr degrade --list-presets``)."""
    clip_frames: int = 17
    """Frames per clip (17 and 77 are the paper's lengths: 5 and 20 latent frames)."""
    stride: int | None = None
    """Frames between the starts of consecutive clips of a shot; default ``clip_frames`` (no overlap)."""
    max_clips_per_video: int | None = None
    """Keep at most this many clips per source video, evenly spread over it; default all."""
    hr_size: tuple[int, int] = (720, 1280)
    """HR frame size of every sample."""
    hr_mode: str = "resize"
    """``resize``: scale the source to cover ``hr_size`` and centre-crop; ``crop``: take a crop at native
    resolution at a seeded position (keeps the source's pixel-level detail)."""
    allow_upscale: bool = False
    """Accept sources smaller than ``hr_size`` (upscaled with bicubic); by default they are rejected, since
    an upscaled HR teaches the model blur."""
    scale: float | None = 4.0
    """HR/LR factor; exactly one of ``scale`` and ``lr_size`` is set."""
    lr_size: tuple[int, int] | None = None
    """Explicit LR size instead of ``scale`` (the factor may then be non-integer)."""
    strength: float = 1.0
    """Degradation severity in [0, 1]; 1 = the preset's published ranges."""
    latent_codec: str | None = None
    """Also store ``lr_latent.npy``/``hr_latent.npy`` from this codec (``cascadevsr.latent``): ``pixel``,
    ``NAME:PATH`` for a local diffusers VAE folder (``wan:/weights/wan-vae``), or a JSON spec."""
    seed: int = 0
    """Corpus seed; every clip's seed derives from (seed, source path, frame range)."""
    samples_per_shard: int = 64
    """Clips per shard (fewer samples when clips are rejected or fail)."""
    scene_cut_threshold: float = 0.2
    """Histogram distance in [0, 1] between consecutive frames above which a new shot starts. On the fetched
    clips every hard cut scores >= 0.23 and every pair of frames within a shot <= 0.16."""
    min_brightness: float = 20.0
    """Reject clips whose mean luma (0-255) is below this (over-dark)."""
    max_brightness: float = 235.0
    """Reject clips whose mean luma (0-255) is above this (over-bright)."""
    min_laplacian_var: float = 30.0
    """Reject clips whose mean Laplacian variance (sharpness, on the HR-sized grey frames) is below this."""
    min_musiq: float = 40.0
    """Reject clips whose mean MUSIQ is below this; only when MUSIQ weights are available locally."""
    musiq_weights: str | None = None
    """MUSIQ checkpoint; default: look in the weights cache, and skip the filter with a warning if absent."""
    filter_frames: int = 10
    """Frames sampled uniformly from a clip for the filters (the paper samples 10)."""
    workers: int | None = None
    """Parallel tasks: local Ray CPUs (default: all cores), or at most this many tasks in flight on a
    cluster (default: its CPU count); 0 runs every shard in this process with a plain loop (no Ray)."""
    address: str | None = None
    """Ray cluster to join (``auto`` or ``HOST:PORT``); default starts a local Ray instance."""
    shard_retries: int = 1
    """How many times a shard whose task failed as a whole is run again before giving up."""
    threads_per_task: int = 1
    """OpenCV threads inside one task; 1 keeps a task on one core so tasks scale with cores."""

    def __post_init__(self) -> None:
        problems = []
        if not self.inputs:
            problems.append("--input: give at least one folder, file, glob or list")
        if not str(self.out):
            problems.append("--out: give an output folder")
        if self.clip_frames < 1:
            problems.append(f"--clip-frames must be >= 1, got {self.clip_frames}")
        if self.stride is not None and self.stride < 1:
            problems.append(f"--stride must be >= 1, got {self.stride}")
        if self.max_clips_per_video is not None and self.max_clips_per_video < 1:
            problems.append(f"--max-clips-per-video must be >= 1, got {self.max_clips_per_video}")
        if len(self.hr_size) != 2 or min(self.hr_size) < 1:
            problems.append(f"--hr-size must be two positive numbers, got {self.hr_size}")
        if self.hr_mode not in HR_MODES:
            problems.append(f"--hr-mode must be one of {list(HR_MODES)}, got '{self.hr_mode}'")
        if (self.scale is None) == (self.lr_size is None):
            problems.append("give exactly one of --scale and --lr-size")
        elif self.scale is not None:
            if self.scale <= 0:
                problems.append(f"--scale must be positive, got {self.scale}")
            elif float(self.scale).is_integer() and any(s % int(self.scale) for s in self.hr_size):
                h, w = self.hr_size
                problems.append(f"--hr-size {w}x{h} must be divisible by --scale {self.scale:g} so that "
                                f"HR = scale x LR exactly")
        elif self.lr_size[0] > self.hr_size[0] or self.lr_size[1] > self.hr_size[1]:
            problems.append(f"--lr-size {self.lr_size[1]}x{self.lr_size[0]} is larger than --hr-size "
                            f"{self.hr_size[1]}x{self.hr_size[0]}")
        if not 0.0 <= self.strength <= 1.0:
            problems.append(f"--strength must be in [0, 1], got {self.strength}")
        if self.samples_per_shard < 1:
            problems.append(f"--samples-per-shard must be >= 1, got {self.samples_per_shard}")
        if not 0.0 < self.scene_cut_threshold <= 1.0:
            problems.append(f"--scene-cut-threshold must be in (0, 1], got {self.scene_cut_threshold}")
        if not 0.0 <= self.min_brightness < self.max_brightness <= 255.0:
            problems.append(f"--min-brightness/--max-brightness must satisfy 0 <= min < max <= 255, got "
                            f"{self.min_brightness}/{self.max_brightness}")
        if self.filter_frames < 1:
            problems.append(f"--filter-frames must be >= 1, got {self.filter_frames}")
        if self.workers is not None and self.workers < 0:
            problems.append(f"--workers must be >= 0, got {self.workers}")
        if self.workers == 0 and self.address:
            problems.append("--workers 0 runs without Ray, so it cannot be combined with --address")
        if self.shard_retries < 0:
            problems.append(f"--shard-retries must be >= 0, got {self.shard_retries}")
        if self.threads_per_task < 1:
            problems.append(f"--threads-per-task must be >= 1, got {self.threads_per_task}")
        if problems:
            raise UserError("invalid corpus settings: " + "; ".join(problems) + ".")

    @property
    def clip_stride(self) -> int:
        """The stride actually used."""
        return self.stride or self.clip_frames

    @property
    def out_dir(self) -> Path:
        """``out`` as a path."""
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def content(self) -> dict[str, Any]:
        """The fields that decide the corpus content (everything but the run fields and notes)."""
        d = self.to_dict()
        for name in RUN_FIELDS:
            d.pop(name)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusConfig:
        """Rebuild a config from ``to_dict`` output; an unknown key is an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown corpus setting(s) {unknown}; known: {sorted(names)}.")
        data = dict(data)
        for name in ("inputs", "hr_size", "lr_size"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)

    def summary(self) -> str:
        """A few lines for the start of a run."""
        h, w = self.hr_size
        size = f"x{self.scale:g}" if self.scale is not None else f"LR {self.lr_size[1]}x{self.lr_size[0]}"
        runner = ("in this process (no Ray)" if self.workers == 0
                  else f"Ray cluster {self.address}" if self.address
                  else f"local Ray, {self.workers or 'all'} workers")
        return (f"build-corpus: {len(self.inputs)} input(s) -> {self.out}/\n"
                f"  preset {self.preset} (strength {self.strength:g}), seed {self.seed}, "
                f"{self.clip_frames} frames per clip (stride {self.clip_stride}), "
                f"HR {w}x{h} ({self.hr_mode}), {size}\n"
                f"  {self.samples_per_shard} samples per shard, {runner}")


def codec_spec(text: str) -> dict[str, Any]:
    """``pixel`` / ``NAME:PATH`` / JSON object → a ``cascadevsr.latent.make_codec`` spec."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"--latent-codec is not valid JSON: {err}.") from None
        if not isinstance(spec, dict) or "name" not in spec:
            raise UserError("--latent-codec JSON must be an object with a 'name'.")
        return spec
    name, sep, path = text.partition(":")
    return {"name": name, "path": path} if sep else {"name": name}


def content_differences(saved: dict[str, Any], current: CorpusConfig) -> list[str]:
    """Names of content fields whose saved value differs from ``current`` (for resume checks)."""
    now = current.content()
    return sorted(k for k in set(saved) | set(now) if k not in RUN_FIELDS and saved.get(k) != now.get(k))
