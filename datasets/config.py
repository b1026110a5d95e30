"""The corpus configuration: one frozen dataclass, validated once, saved as ``config.json`` beside the shards.

Fields split in two groups. *Content* fields decide which samples exist and what they contain; a rerun
into the same folder must use the same content fields, or resuming would mix two corpora. *Run* fields
(workers, cluster address, retries) only decide how the work is executed and may change between runs.

A config comes from up to three layers over the defaults (:func:`load_corpus_config`): a YAML file of the
same keys (``--config``; a saved ``config.json`` is one, JSON being YAML), the command-line flags given
explicitly, then ``--set key=value`` overrides. Each problem is reported under the key and layer it came from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascadevsr.errors import UserError
from cascadevsr.hints import value_matches_hint

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
    base_model: str | None = None
    """Base video model for a preset's model-guided step (``cascadevsr.base_model.load_base_model``):
    ``wan:DIR`` with diffusers ``transformer/`` and ``vae/`` in ``DIR``; each worker loads it once."""
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
        problems = settings_problems(self)
        if problems:
            raise SettingsError(problems)

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
    def from_dict(cls, data: dict[str, Any], origin: str = "in the corpus settings") -> CorpusConfig:
        """Rebuild a config from ``to_dict`` output; unknown keys and bad values are errors naming the key
        (``origin``, e.g. ``in corpus.yaml``, says where the dict came from)."""
        return _build(_merge([_layer(data, origin)]), file_given=True)

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


class SettingsError(UserError):
    """Invalid field values; ``problems`` holds one phrase per problem (flags named as on the command line)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problem_sentence(problems))
        self.problems = problems


def problem_sentence(problems: list[str]) -> str:
    """One sentence listing every problem."""
    return "invalid corpus settings: " + "; ".join(problems) + "."


def settings_problems(cfg: CorpusConfig) -> list[str]:
    """Every problem of a config's values, each naming the flag (or, without one, the key) it concerns."""
    problems = []
    if not cfg.inputs:
        problems.append("--input: give at least one folder, file, glob or list")
    if not str(cfg.out):
        problems.append("--out: give an output folder")
    if cfg.clip_frames < 1:
        problems.append(f"--clip-frames must be >= 1, got {cfg.clip_frames}")
    if cfg.stride is not None and cfg.stride < 1:
        problems.append(f"--stride must be >= 1, got {cfg.stride}")
    if cfg.max_clips_per_video is not None and cfg.max_clips_per_video < 1:
        problems.append(f"--max-clips-per-video must be >= 1, got {cfg.max_clips_per_video}")
    if len(cfg.hr_size) != 2 or min(cfg.hr_size) < 1:
        problems.append(f"--hr-size must be two positive numbers, got {cfg.hr_size}")
    if cfg.hr_mode not in HR_MODES:
        problems.append(f"--hr-mode must be one of {list(HR_MODES)}, got '{cfg.hr_mode}'")
    if (cfg.scale is None) == (cfg.lr_size is None):
        problems.append("give exactly one of --scale and --lr-size")
    elif cfg.lr_size is not None and (len(cfg.lr_size) != 2 or min(cfg.lr_size) < 1):
        problems.append(f"--lr-size must be two positive numbers, got {cfg.lr_size}")
    elif cfg.scale is not None:
        if cfg.scale <= 0:
            problems.append(f"--scale must be positive, got {cfg.scale}")
        elif float(cfg.scale).is_integer() and any(s % int(cfg.scale) for s in cfg.hr_size):
            h, w = cfg.hr_size
            problems.append(f"--hr-size {w}x{h} must be divisible by --scale {cfg.scale:g} so that "
                            f"HR = scale x LR exactly")
    elif cfg.lr_size[0] > cfg.hr_size[0] or cfg.lr_size[1] > cfg.hr_size[1]:
        problems.append(f"--lr-size {cfg.lr_size[1]}x{cfg.lr_size[0]} is larger than --hr-size "
                        f"{cfg.hr_size[1]}x{cfg.hr_size[0]}")
    if not 0.0 <= cfg.strength <= 1.0:
        problems.append(f"--strength must be in [0, 1], got {cfg.strength}")
    if cfg.samples_per_shard < 1:
        problems.append(f"--samples-per-shard must be >= 1, got {cfg.samples_per_shard}")
    if not 0.0 < cfg.scene_cut_threshold <= 1.0:
        problems.append(f"--scene-cut-threshold must be in (0, 1], got {cfg.scene_cut_threshold}")
    if not 0.0 <= cfg.min_brightness < cfg.max_brightness <= 255.0:
        problems.append(f"--min-brightness/--max-brightness must satisfy 0 <= min < max <= 255, got "
                        f"{cfg.min_brightness}/{cfg.max_brightness}")
    if cfg.filter_frames < 1:
        problems.append(f"filter_frames must be >= 1, got {cfg.filter_frames}")
    if cfg.workers is not None and cfg.workers < 0:
        problems.append(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.workers == 0 and cfg.address:
        problems.append("--workers 0 runs without Ray, so it cannot be combined with --address")
    if cfg.shard_retries < 0:
        problems.append(f"--shard-retries must be >= 0, got {cfg.shard_retries}")
    if cfg.threads_per_task < 1:
        problems.append(f"threads_per_task must be >= 1, got {cfg.threads_per_task}")
    return problems


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


# ------------------------------------------------------------------------------------ files, flags, --set

# The command-line flag of each field that has one (the others are set in a file or with --set).
FLAGS: dict[str, str] = {
    "inputs": "--input", "out": "--out", "preset": "--preset", "clip_frames": "--clip-frames",
    "stride": "--stride", "max_clips_per_video": "--max-clips-per-video", "hr_size": "--hr-size",
    "hr_mode": "--hr-mode", "allow_upscale": "--allow-upscale", "scale": "--scale", "lr_size": "--lr-size",
    "strength": "--strength", "latent_codec": "--latent-codec", "base_model": "--base-model",
    "seed": "--seed",
    "samples_per_shard": "--samples-per-shard", "scene_cut_threshold": "--scene-cut-threshold",
    "min_brightness": "--min-brightness", "max_brightness": "--max-brightness",
    "min_laplacian_var": "--min-laplacian", "min_musiq": "--min-musiq", "musiq_weights": "--musiq-weights",
    "workers": "--workers", "address": "--address", "shard_retries": "--shard-retries",
}

FLAG = "flag"
"""The origin of a value given as a command-line flag (messages then name the flag, not the key)."""

# One value and where it came from: (key, value, origin); origin is FLAG or a phrase such as
# "in corpus.yaml" or "in --set seed=3".
Entry = tuple[str, Any, str]


def load_corpus_config(file: str | Path | None = None, flags: dict[str, Any] | None = None,
                       overrides: Iterable[str] = ()) -> CorpusConfig:
    """The validated config from the defaults, then a YAML ``file``, then explicit ``flags`` (field name →
    value), then ``--set`` ``overrides`` (``key=value``, values read as YAML); each later layer wins.

    Relative paths (``inputs``, ``out``, a preset file) are taken from the working folder, as on the command
    line, and stored absolute. An unknown key or a bad value raises :class:`UserError` naming the key and
    the layer that gave it.
    """
    layers = []
    if file is not None:
        layers.append(_layer(read_config_file(file), f"in {file}"))
    if flags:
        layers.append(_layer(flags, FLAG))
    layers.append(parse_overrides(overrides))
    merged = _merge(layers)
    if not {"inputs", "out"} <= merged[0].keys():
        raise UserError("give --input PATHS and --out DIR, or inputs and out in the --config file "
                        "(or --inspect DIR).")
    return _build(_absolute_paths(merged), file_given=file is not None)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML (or JSON) config file; a missing, unreadable or non-mapping file raises."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings (key: value lines), "
                        f"got {type(data).__name__}.")
    return data


def parse_overrides(items: Iterable[str]) -> list[Entry]:
    """``key=value`` items as entries; values are YAML, except that text fields take the text verbatim
    (so ``--set out=2024`` is a folder, not a number) unless it is a mapping (a ``latent_codec`` spec)."""
    import yaml

    hints = _hints()
    entries = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set '{item}': expected key=value, e.g. --set clip_frames=17.")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # reported as a bad value of the key below, unless the key takes text
        if _is_text(hints.get(key)) and value is not None and not isinstance(value, dict):
            value = text
        entries.append((key, value, f"in --set {item}"))
    return entries


def to_yaml(cfg: CorpusConfig) -> str:
    """The config as a YAML file that :func:`load_corpus_config` reads back to ``cfg``."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(CorpusConfig)


def _is_text(hint: Any) -> bool:
    """Whether a field holds text (``str`` or ``str | None``)."""
    return hint is str or set(typing.get_args(hint)) == {str, type(None)}


def _layer(data: dict[str, Any], origin: str) -> list[Entry]:
    return [(str(k), v, origin) for k, v in data.items()]


def _merge(layers: list[list[Entry]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Values and their origins, later layers winning; raises on unknown keys and bad values."""
    fields = [f.name for f in dataclasses.fields(CorpusConfig)]
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    problems: list[str] = []
    for layer in layers:
        given = {}
        for key, value, origin in layer:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"unknown key '{key}' {origin}{hint}")
                continue
            value, problem = _coerce(key, value)
            if problem:
                name = FLAGS[key] if origin == FLAG else key
                problems.append(f"{name} must be {problem}, got {value!r}{_where(origin)}")
                continue
            given[key] = (value, origin)
        # scale and lr_size are two ways to say one thing: a layer giving one clears the other's older value.
        for key, other in (("scale", "lr_size"), ("lr_size", "scale")):
            if given.get(key, (None,))[0] is not None and other not in given:
                given[other] = (None, given[key][1])
        for key, (value, origin) in given.items():
            values[key], origins[key] = value, origin
    if problems:
        raise UserError(problem_sentence(problems))
    return values, origins


def _coerce(key: str, value: Any) -> tuple[Any, str]:
    """``value`` in the field's type, and an empty string, or the value and what was expected instead."""
    hint = _hints()[key]
    optional = type(None) in typing.get_args(hint)
    if value is None:
        return value, "" if optional else _expected(key, hint)
    if key == "inputs" and isinstance(value, str):
        value = [value]  # one folder, file, glob or list
    if key in ("hr_size", "lr_size") and isinstance(value, str):
        value = _size(value)
        if value is None:
            return value, "a size WxH (e.g. 1280x720) or a [height, width] list"
    if key == "latent_codec" and isinstance(value, dict):
        value = json.dumps(value)  # a codec spec written as a mapping is the JSON form of --latent-codec
    # YAML 1.1 reads 1e-4 (no dot) as text; ints become floats so that a saved config reads as flags do
    if float in (hint, *typing.get_args(hint)) and isinstance(value, str | int) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            value = float(value)
    if not value_matches_hint(value, hint) or not _items_match(key, value):
        return value, _expected(key, hint)
    return (tuple(value) if isinstance(value, list) else value), ""


def _items_match(key: str, value: Any) -> bool:
    if key == "inputs":
        return all(isinstance(v, str) for v in value)
    if key in ("hr_size", "lr_size"):
        return len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return True


def _expected(key: str, hint: Any) -> str:
    if key == "inputs":
        return "a path or a list of paths"
    if key in ("hr_size", "lr_size"):
        return "a size WxH (e.g. 1280x720) or a [height, width] list"
    words = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
    kinds = [words[h] for h in (hint, *typing.get_args(hint)) if h in words]
    return " or ".join(kinds[:1] + (["null"] if type(None) in typing.get_args(hint) else []))


def _size(text: str) -> tuple[int, int] | None:
    """``WxH`` → ``(height, width)``, or None when it is not a size."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        return None
    return h, w


def _where(origin: str) -> str:
    return "" if origin == FLAG else f" ({origin})"


def _absolute_paths(merged: tuple[dict[str, Any], dict[str, str]]) -> tuple[dict[str, Any], dict[str, str]]:
    # Absolute paths make a rerun from another folder (or from the saved config) the same corpus.
    values, origins = merged
    values = dict(values)
    values["inputs"] = tuple(str(Path(p).expanduser().absolute()) for p in values["inputs"])
    values["out"] = str(Path(values["out"]).expanduser().absolute())
    kind, sep, folder = (values.get("base_model") or "").partition(":")
    if sep and folder:  # workers may run in another folder
        values["base_model"] = f"{kind}:{Path(folder).expanduser().absolute()}"
    values["latent_codec"] = _absolute_codec(values.get("latent_codec"))
    preset = values.get("preset")
    if preset and Path(preset).suffix in (".yaml", ".yml"):
        values["preset"] = str(Path(preset).expanduser().resolve())
    return values, origins


def _absolute_codec(text: str | None) -> str | None:
    """A VAE codec's folder made absolute (``wan:vae`` → ``wan:/abs/vae``, also inside the JSON form), so that
    workers and the trainer, wherever they run, find the same VAE."""
    if not text:
        return text
    if text.strip().startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):
            spec = json.loads(text)
            if isinstance(spec, dict) and isinstance(spec.get("path"), str) and spec["path"]:
                return json.dumps({**spec, "path": str(Path(spec["path"]).expanduser().absolute())})
        return text
    kind, sep, folder = text.partition(":")
    return f"{kind}:{Path(folder).expanduser().absolute()}" if sep and folder else text


def _build(merged: tuple[dict[str, Any], dict[str, str]], file_given: bool) -> CorpusConfig:
    """The config, with value problems reworded to name each key the way its layer wrote it."""
    values, origins = merged
    try:
        return CorpusConfig(**values)
    except SettingsError as err:
        raise UserError(problem_sentence([_reword(p, origins, file_given) for p in err.problems])) from None
    except TypeError:  # a required field is missing
        raise UserError("give inputs and out (--input PATHS --out DIR).") from None


def _reword(problem: str, origins: dict[str, str], file_given: bool) -> str:
    """A problem phrase with flags of values not given as flags replaced by their keys, and the layers of
    the values it mentions appended. Defaults keep their flag unless a config file is in use."""
    layers = []
    for key in (f.name for f in dataclasses.fields(CorpusConfig)):
        origin = origins.get(key, "" if file_given else FLAG)
        flag = FLAGS.get(key)
        pattern = re.escape(flag) + r"(?![\w-])" if flag else rf"\b{key}\b"
        if not re.search(pattern, problem):
            continue
        if flag and origin != FLAG:
            problem = re.sub(pattern, key, problem)
        if origin not in ("", FLAG) and origin not in layers:
            layers.append(origin)
    return problem + (f" ({', '.join(layers)})" if layers else "")
