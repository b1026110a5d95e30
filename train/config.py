"""The training configuration: one dataclass tree, named presets, YAML files and ``--set`` overrides.

Every run is described by one :class:`TrainConfig` (model, data, optimiser, validation and loop settings),
validated when built (every problem collected, each named by its dotted key), printed at start and saved as
``config.json`` in the run folder. The model part is :class:`cascadevsr.train.model.ModelConfig`, nested as
it is, so a checkpoint's ``model_config`` and a run's ``config.json["model"]`` are the same dict.

Where the values come from:

* the paper (SimpleGVR §5.1): AdamW, lr 5e-5, global batch 32, LR noise augmentation U[0.3, 0.6]
  (``model.noise_aug``), 10% null condition (``model.text_dropout``), stage lengths 20K / 5K / ~5K steps,
  17 then 77 frames, sparse local attention in stage 3;
* ours (the paper does not say): AdamW betas (0.9, 0.999), weight decay 0.01, linear warm-up then constant
  lr, gradient clipping at norm 1.0, EMA decay 0.999 (a time constant of 1K steps, short enough for 5K-step
  stages), bf16 autocast on GPU.

A preset is a plain function returning a ``TrainConfig`` (``PRESETS``). A YAML file is a nested mapping of
the same keys, optionally with ``preset: NAME`` naming the base it changes; ``--set a.b=value`` overrides
are applied last (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cascadevsr.errors import UserError
from cascadevsr.hints import value_matches_hint

if typing.TYPE_CHECKING:
    from cascadevsr.train.model import ModelConfig


def _model_config(size: str = "tiny", **overrides: Any) -> ModelConfig:
    # Deferred: the model module imports torch, and loading a config must stay cheap.
    from cascadevsr.train.model import model_config

    return model_config(size, **overrides)


@dataclass
class DataConfig:
    """Where training pairs come from and how they are cut."""

    shards: str = ""
    """Training corpus: a folder built by ``build-corpus``, a brace pattern, or a comma-separated list of tars
    (``--data`` on the command line)."""
    val_shards: str = ""
    """Held-out validation shards (same forms); empty = the last ``holdout_shards`` of ``shards``."""
    holdout_shards: int = 0
    """With no ``val_shards``: keep the last N shards of the corpus out of training for validation."""
    num_frames: int = 17
    """Video frames per training clip; a codec length ``1 + time_factor·k`` (17 -> 5 latent frames)."""
    crop_size: int = 64
    """LR crop side in pixels (the HR crop is ``model.scale`` times that); a multiple of the codec's space
    factor."""
    hflip: bool = True
    """Random horizontal flips (pixel crops only: a flipped latent is not the latent of a flipped clip)."""
    latents: str = "encode"
    """``encode``: decode and crop frames, encode every step with the model's codec. ``cache``: whole-clip
    latents read from the shards (``build-corpus --latent-codec`` with the same codec) or from a cache
    written beside the shards the first time a clip is seen; crops are cut on the latent grid."""
    cache_dir: str = ""
    """Latent cache folder; empty = ``latents-<codec id>/`` beside the first shard."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    shuffle_buffer: int = 32
    """Samples held for shuffling in each worker."""
    samples_per_epoch: int = 1024
    """Samples each rank reads per pass (shards are drawn with replacement, webdataset's ``resampled``); the
    data position of a checkpoint is a count inside such a pass."""
    expect_presets: list[str] = field(default_factory=list)
    """Degradation presets this stage is meant for; a corpus built with another one is warned about."""


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 5e-5
    """Peak learning rate (paper: 5e-5)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (ours)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (ours)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup: int = 500
    """Steps of linear warm-up from 0 (ours)."""
    schedule: str = "constant"
    """After warm-up: ``constant`` or ``cosine`` (down to ``min_lr_ratio·lr`` at the last step)."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine schedule as a fraction of ``lr``."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping; ours)."""


@dataclass
class ValConfig:
    """Periodic validation on held-out shards."""

    every: int = 1000
    """Validate every N steps (0 = never)."""
    at_start: bool = True
    """Also validate before the first step (the untrained model's numbers)."""
    batches: int = 4
    """Held-out micro-batches for the validation loss (drawn once, with fixed noises)."""
    clips: int = 2
    """Held-out clips upscaled for PSNR (and LPIPS when available) and written as sample videos."""
    steps: int = 50
    """Euler steps of those upscales (paper: 50)."""
    use_ema: bool = True
    """Validate the EMA weights (what ``cascadevsr upscale`` uses) when EMA is on."""
    samples: bool = True
    """Write side-by-side sample videos (bicubic | model | HR) to ``samples/``."""
    best: str = "loss"
    """Which validation number picks the ``best`` checkpoint: ``loss`` (lower) or ``psnr`` (higher)."""


@dataclass
class TrainConfig:
    """One training run (see the module docstring for where each default comes from)."""

    model: ModelConfig = field(default_factory=lambda: _model_config("tiny"))
    """The VSR model (``cascadevsr.train.model.ModelConfig``)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and validation data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    val: ValConfig = field(default_factory=ValConfig)
    """Validation."""
    steps: int = 20000
    """Optimiser steps of the run."""
    global_batch: int = 32
    """Clips per optimiser step over all ranks (paper: 32); = ranks × micro_batch × accumulation."""
    micro_batch: int = 4
    """Clips per forward pass on one rank."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU) | ``fp32`` | ``bf16`` | ``fp16`` (with a grad scaler)."""
    grad_checkpointing: bool = False
    """Recompute each DiT block in the backward pass (less memory, ~30% more compute)."""
    compile: bool = False
    """``torch.compile`` the model."""
    ema_decay: float = 0.999
    """EMA of the weights (0 = off); the effective decay warms up as ``min(decay, (1 + n) / (10 + n))``."""
    sampler: str = "uniform"
    """Training timestep density: ``uniform`` | ``logit_normal`` | ``detail_aware`` (the paper's, from the
    timestep analysis: set ``sampler_options.pdf_file``)."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    """Options of the sampler (``m``, ``s`` for logit_normal; ``pdf_file`` for detail_aware)."""
    weighting: str = "none"
    """Loss weighting over t (``none``: the paper's Eq. 3)."""
    seed: int = 0
    """Seed of the weights, data order and every noise draw."""
    init_from: str = ""
    """Checkpoint (file or run folder) whose weights start this run (EMA weights when present); a relative
    path that does not exist from the working folder is looked up beside the run folder, so the stage
    presets' ``stage1`` means the sibling run ``../stage1``."""
    log_every: int = 10
    """Progress-bar and TensorBoard refresh interval in steps (the CSV gets every step)."""
    ckpt_every: int = 1000
    """Checkpoint interval in steps (the last step is always saved)."""
    keep_last: int = 3
    """Numbered checkpoints kept (older ones are pruned; ``best/`` is kept apart)."""
    device: str = "auto"
    """``auto`` (the rank's GPU when there is one, else CPU) | ``cpu`` | ``cuda`` | ``cuda:N``."""
    cpu_threads: int = 0
    """torch intra-op threads on CPU (0 = cores / local ranks)."""
    peak_tflops: float = 0.0
    """Peak dense TFLOP/s of one device for MFU (0 = from a table of known GPUs)."""
    tensorboard: bool = True
    """Also log to TensorBoard (``tb/``) when tensorboard or tensorboardX is installed."""

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise UserError(format_problems(problems))

    # -------------------------------------------------------------------------------------- conversions

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (what ``config.json`` holds)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build and validate from a nested dict; unknown keys and wrong types are errors naming the key."""
        problems: list[str] = []
        cfg = _build(cls, data, "", problems)
        if problems or cfg is None:
            raise UserError(format_problems(problems))
        return cfg

    def summary(self) -> str:
        """The config as indented ``key: value`` lines (printed at start)."""
        return "\n".join(f"  {k}: {json.dumps(v)}" for k, v in flatten(self.to_dict()).items())


# ---------------------------------------------------------------------------------------------- checks

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
LATENT_MODES = ("encode", "cache")
BEST_METRICS = ("loss", "psnr")


def config_problems(cfg: TrainConfig) -> list[str]:
    """Every problem of a config, each starting with its dotted key."""
    p: list[str] = []
    m, d, o, v = cfg.model, cfg.data, cfg.optim, cfg.val
    tf = int(m.codec.get("time_factor", 1)) if m.codec.get("name") == "pixel" else 4
    sf = int(m.codec.get("space_factor", 1)) if m.codec.get("name") == "pixel" else 8
    for key, value, low in (("steps", cfg.steps, 1), ("global_batch", cfg.global_batch, 1),
                            ("micro_batch", cfg.micro_batch, 1), ("log_every", cfg.log_every, 1),
                            ("ckpt_every", cfg.ckpt_every, 1), ("keep_last", cfg.keep_last, 1),
                            ("cpu_threads", cfg.cpu_threads, 0), ("data.num_workers", d.num_workers, 0),
                            ("data.shuffle_buffer", d.shuffle_buffer, 1), ("data.holdout_shards", d.holdout_shards, 0),
                            ("data.samples_per_epoch", d.samples_per_epoch, 1), ("optim.warmup", o.warmup, 0),
                            ("val.every", v.every, 0), ("val.batches", v.batches, 0), ("val.clips", v.clips, 0),
                            ("val.steps", v.steps, 1)):
        if value < low:
            p.append(f"{key}: must be >= {low}, got {value}")
    if cfg.global_batch % cfg.micro_batch:
        p.append(f"global_batch: {cfg.global_batch} is not a multiple of micro_batch {cfg.micro_batch}")
    if cfg.precision not in PRECISIONS:
        p.append(f"precision: unknown '{cfg.precision}'; choose from {list(PRECISIONS)}")
    if not 0 <= cfg.ema_decay < 1:
        p.append(f"ema_decay: must be in [0, 1), got {cfg.ema_decay}")
    if cfg.peak_tflops < 0:
        p.append("peak_tflops: must be >= 0")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        p.append(f"device: '{cfg.device}' is not auto, cpu, cuda or cuda:N")
    try:  # the names only; a detail_aware pdf file is read when training starts
        from cascadevsr.train.flow import LOSS_WEIGHTINGS, TIMESTEP_SAMPLERS
    except ImportError:  # pragma: no cover - torch missing
        LOSS_WEIGHTINGS, TIMESTEP_SAMPLERS = {}, {}
    if TIMESTEP_SAMPLERS and cfg.sampler not in TIMESTEP_SAMPLERS:
        p.append(f"sampler: unknown '{cfg.sampler}'; choose from {sorted(TIMESTEP_SAMPLERS)}")
    if cfg.sampler == "detail_aware" and "pdf_file" not in cfg.sampler_options:
        p.append("sampler_options: detail_aware needs pdf_file (written by the timestep analysis)")
    if LOSS_WEIGHTINGS and cfg.weighting not in LOSS_WEIGHTINGS:
        p.append(f"weighting: unknown '{cfg.weighting}'; choose from {sorted(LOSS_WEIGHTINGS)}")
    if d.num_frames < 1 or (d.num_frames - 1) % tf:
        p.append(f"data.num_frames: {d.num_frames} is not 1 + {tf}·k (the codec's time factor is {tf})")
    if d.crop_size < 1 or d.crop_size % sf:
        p.append(f"data.crop_size: {d.crop_size} is not a positive multiple of the codec's space factor {sf}")
    if m.scale != int(m.scale):
        p.append(f"model.scale: training crops need an integer scale, got {m.scale}")
    if d.latents not in LATENT_MODES:
        p.append(f"data.latents: unknown '{d.latents}'; choose from {list(LATENT_MODES)}")
    if o.lr <= 0:
        p.append(f"optim.lr: must be > 0, got {o.lr}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        p.append(f"optim.betas: two values in [0, 1), got {list(o.betas)}")
    if o.weight_decay < 0 or o.eps <= 0 or o.grad_clip < 0:
        p.append("optim.weight_decay, optim.eps, optim.grad_clip: must be >= 0 (eps > 0)")
    if o.schedule not in SCHEDULES:
        p.append(f"optim.schedule: unknown '{o.schedule}'; choose from {list(SCHEDULES)}")
    if not 0 <= o.min_lr_ratio <= 1:
        p.append("optim.min_lr_ratio: must be in [0, 1]")
    if v.best not in BEST_METRICS:
        p.append(f"val.best: unknown '{v.best}'; choose from {list(BEST_METRICS)}")
    return p


def format_problems(problems: list[str]) -> str:
    """One sentence listing every problem."""
    return "invalid training config: " + "; ".join(problems) + "."


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """A dataclass of type ``cls`` from ``data``, appending problems (dotted keys) instead of raising."""
    from cascadevsr.train.model import ModelConfig

    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, globalns={**globals(), "ModelConfig": ModelConfig})
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key{_suggest(key, list(fields))}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if hint is ModelConfig:
                kwargs[key] = _build_model(value, f"{prefix}{key}.", problems)
            else:
                kwargs[key] = _build(hint, value, f"{prefix}{key}.", problems)
        elif not value_matches_hint(value, hint):
            problems.append(f"{prefix}{key}: expected {_hint_name(hint)}, got {type(value).__name__} {value!r}")
        else:
            kwargs[key] = tuple(value) if typing.get_origin(hint) is tuple else value
    if cls is TrainConfig:
        # Whole-tree checks run even when a part failed (that part is left at its default), so one run
        # of the command reports every problem.
        obj = object.__new__(cls)
        for f in dataclasses.fields(cls):
            value = kwargs.get(f.name)
            if value is None:
                value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(obj, f.name, value)
        problems.extend(config_problems(obj))
        return obj if not problems else None
    if any(v is None and dataclasses.is_dataclass(hints[k]) for k, v in kwargs.items()):
        return None
    try:
        return cls(**kwargs)
    except TypeError as err:
        problems.append(f"{prefix.rstrip('.')}: {err}")
        return None


def _build_model(data: Any, prefix: str, problems: list[str]) -> ModelConfig | None:
    from cascadevsr.train.model import ModelConfig

    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.')}: expected a mapping, got {type(data).__name__}")
        return None
    data = dict(data)
    codec = data.get("codec", {})
    if isinstance(codec, dict) and codec.get("name", "pixel") == "pixel":
        # A pixel codec fixes the channel count; deriving it keeps `--set model.codec.space_factor=..` valid.
        data.pop("latent_channels", None)
    elif isinstance(codec, dict) and (channels := vae_latent_channels(codec)):
        # So does a VAE: a count inherited from a pixel preset would build a model for the wrong latents.
        data["latent_channels"] = channels
    known = [f.name for f in dataclasses.fields(ModelConfig)]
    for key in [k for k in data if k not in known]:
        problems.append(f"{prefix}{key}: unknown key{_suggest(key, known)}")
        data.pop(key)
    try:
        return ModelConfig.from_dict(data)
    except UserError as err:
        text = str(err).removeprefix("invalid model config: ")
        problems.extend(f"{prefix}{part}" for part in text.split("; "))
        return None


def vae_latent_channels(codec: dict[str, Any]) -> int | None:
    """Latent channels of a local diffusers VAE codec (``{"name": "wan", "path": ...}``) from its folder's
    ``config.json`` alone (no weights read); None when there is no readable folder or count."""
    path = codec.get("path")
    if not isinstance(path, str) or not path:
        return None
    try:
        vae = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    channels = (vae.get("z_dim") or vae.get("latent_channels")) if isinstance(vae, dict) else None
    return int(channels) if isinstance(channels, int) and channels > 0 else None


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# ------------------------------------------------------------------------------------- dicts and diffs


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and the model's codec dict are leaves below one key)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in ("codec", "sampler_options"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys that may change between a run and its resumption: they do not move the loss trajectory.
RESUME_FREE = ("steps", "log_every", "ckpt_every", "keep_last", "val.every", "val.at_start", "val.samples",
               "data.num_workers", "data.shards", "data.val_shards", "data.cache_dir", "device", "cpu_threads",
               "peak_tflops", "tensorboard", "init_from", "compile")


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       free: tuple[str, ...] = RESUME_FREE) -> list[str]:
    """``key: saved -> current`` for every key that differs, except those in ``free``."""
    a, b = flatten(saved), flatten(current)
    return [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in sorted(set(a) | set(b))
            if k not in free and a.get(k) != b.get(k)]


# --------------------------------------------------------------------------------------------- presets


def tiny() -> TrainConfig:
    """CPU tests and demos: the ``tiny`` model, 9-frame clips, 32×32 HR crops, a few hundred steps."""
    return TrainConfig(
        model=_model_config("tiny"),
        data=DataConfig(num_frames=9, crop_size=8, num_workers=1, shuffle_buffer=8, samples_per_epoch=64,
                        holdout_shards=1),
        optim=OptimConfig(lr=1e-3, warmup=20),
        val=ValConfig(every=100, batches=2, clips=1, steps=8),
        steps=300, global_batch=4, micro_batch=4, ema_decay=0.99, log_every=10, ckpt_every=100)


def small() -> TrainConfig:
    """One GPU for hours: the ``small`` model on 17-frame clips, 256×256 HR crops, bf16."""
    return TrainConfig(
        model=_model_config("small"),
        data=DataConfig(num_frames=17, crop_size=64, num_workers=6, shuffle_buffer=64, samples_per_epoch=4096,
                        holdout_shards=1),
        optim=OptimConfig(lr=2e-4, warmup=500, schedule="cosine"),
        val=ValConfig(every=1000, batches=8, clips=4, steps=50),
        steps=20000, global_batch=32, micro_batch=8, ema_decay=0.999, log_every=20, ckpt_every=1000)


def stage1() -> TrainConfig:
    """Paper stage 1: 17-frame clips of one-order (classical) pairs, 20K steps, AdamW 5e-5, batch 32."""
    return TrainConfig(
        model=_model_config("base"),
        data=DataConfig(num_frames=17, crop_size=128, num_workers=8, samples_per_epoch=8192, holdout_shards=1,
                        expect_presets=["one_order"]),
        optim=OptimConfig(lr=5e-5, warmup=500),
        val=ValConfig(every=2000, batches=8, clips=4, steps=50),
        steps=20000, global_batch=32, micro_batch=2, grad_checkpointing=True, ema_decay=0.999,
        ckpt_every=1000)


def stage2() -> TrainConfig:
    """Paper stage 2: fine-tune stage 1 on flow-based / model-guided pairs for 5K steps."""
    cfg = stage1()
    cfg.data.expect_presets = ["flow", "model_guided", "simplegvr_mix"]
    cfg.optim.warmup = 100
    cfg.steps, cfg.init_from, cfg.val.every = 5000, "stage1", 1000
    return cfg


def stage3() -> TrainConfig:
    """Paper stage 3: 77 frames (20 latent), interleaved temporal units of 5 latent frames with half-unit
    shifts and sparse local attention (12×9 windows, top-1), ~5K steps from stage 2, data of stages 1+2."""
    cfg = stage2()
    cfg.model = _model_config("base", attention="sparse_local", unit=5, window=(9, 12), topk=1)
    cfg.data.num_frames, cfg.data.crop_size, cfg.micro_batch = 77, 64, 1
    cfg.data.expect_presets = ["one_order", "flow", "model_guided", "simplegvr_mix"]
    cfg.steps, cfg.init_from = 5000, "stage2"
    return cfg


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "tiny": tiny,
    "small": small,
    "stage1": stage1,
    "stage2": stage2,
    "stage3": stage3,
}


def preset(name: str) -> TrainConfig:
    """The named preset; unknown names raise with the choices."""
    if name not in PRESETS:
        raise UserError(f"unknown training preset '{name}'; choose from {list(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------- loading


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML scalars and lists (``1e-4`` and friends read as numbers)."""
    import yaml

    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (copied); a malformed one raises naming it."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set '{item}': expected key=value, e.g. optim.lr=1e-4")
        node = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise UserError(f"--set '{item}': {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = parse_value(text)
    return data


def load_config(preset_name: str | None = None, file: str | Path | None = None,
                overrides: list[str] | None = None) -> TrainConfig:
    """A validated config from a preset or a YAML file (which may name its base ``preset:``), then overrides."""
    import yaml

    if (preset_name is None) == (file is None):
        raise UserError("give exactly one of --preset NAME or --config FILE")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must hold a mapping of keys")
        base = preset(str(data.pop("preset"))).to_dict() if "preset" in data else TrainConfig().to_dict()
        data = _merge(base, data)
    else:
        data = preset(preset_name).to_dict()
    return TrainConfig.from_dict(apply_overrides(data, overrides or []))


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("codec", "sampler_options"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
