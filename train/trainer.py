"""The training loop: corpus shards -> (latents) -> rectified-flow loss -> AdamW, with exact resume.

:func:`train` is the whole loop, top to bottom in the order it runs::

    setup (process group, device, threads, run folder, config check)
    build (model, EMA copy, optimiser, schedule, scaler, codec, sampler, data streams)
    resume (model, EMA, optimiser, schedule, scaler, RNG states, data position, best value)
    loop: lr -> micro-steps (data, latents, loss, backward) -> clip -> step -> EMA -> log -> validate -> save

Reproducibility. Every noise draw of a micro-batch (timestep, diffusion noise, augmentation level and noise)
comes from a generator seeded by ``(seed, step, slot)``, where ``slot = rank · accumulation + micro-step``,
so the draws depend on the step, not on what ran before: a resumed run repeats them, and a layout with the
same micro-batch slots (one process accumulating 2 micro-batches, or 2 DDP ranks of 1) gets the same ones.
The data stream is resumable by position: each rank reads passes of ``samples_per_epoch`` samples (shards
drawn with replacement, seeded per pass, rank and worker), and a checkpoint records the pass and the number
of micro-batches consumed in it; resuming replays the pass up to there (those samples are decoded again,
not trained on). With that, a resumed run continues the same loss trajectory.

Bad samples (a corrupt video, a broken tar member) are skipped and counted (``skipped`` in the CSV);
a stream that yields nothing readable for ``MAX_CONSECUTIVE_SKIPS`` samples in a row stops with an error
instead of spinning forever.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from cascadevsr.errors import UserError
from cascadevsr.train import checkpoint, distributed, flow
from cascadevsr.train.config import TrainConfig, config_differences
from cascadevsr.train.model import CHECKPOINT_FORMAT, VSRModel, build_model, count_parameters, model_flops
from cascadevsr.train.objective import training_loss

if TYPE_CHECKING:
    from cascadevsr.datasets.loader import Epoch

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 200
METRICS_CSV = "metrics.csv"
VAL_CSV = "val.csv"

# Peak dense bf16/fp16 tensor-core TFLOP/s of one device, by a substring of its name (vendor data sheets).
PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.4, "H100": 989.4, "H800": 989.4, "GH200": 989.4, "A100": 312.0, "A800": 312.0,
    "L40S": 362.1, "L40": 181.0, "A6000": 154.8, "RTX 4090": 165.2, "A10G": 70.0, "L4": 121.0, "V100": 125.0,
}


# ------------------------------------------------------------------------------------------------ data


class SkipCounter:
    """Counts bad samples inside one loader process; the count rides on the next good sample (``skipped``)."""

    def __init__(self) -> None:
        self.pending = 0
        self.consecutive = 0

    def handler(self, exn: BaseException) -> bool:
        """Loader handler (``pair_dataset(handler=...)``): log, count, go on (until nothing readable is
        left)."""
        self.pending += 1
        self.consecutive += 1
        log.warning("skipped a bad sample: %s", exn)
        if self.consecutive >= MAX_CONSECUTIVE_SKIPS:
            raise UserError(f"{self.consecutive} samples in a row could not be read (last: {exn}); "
                            "check the shards (cascadevsr build-corpus --inspect)")
        return True

    def stamp(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Last stage: attach and reset the count of samples skipped since the previous good one."""
        for sample in src:
            sample["skipped"] = self.pending
            self.pending = self.consecutive = 0
            yield sample


def codec_id(spec: dict[str, Any]) -> str:
    """Short stable name of a codec spec (the latent cache folder's suffix)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def _write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


class LatentPairs:
    """Cache-mode stage: raw sample -> ``{"hr_latent", "lr_latent"}`` crops on the latent grid.

    Whole-clip latents come from, in order: the cache file ``cache_dir/KEY.npz``; the sample's own
    ``hr_latent.npy``/``lr_latent.npy`` when the corpus stored them with this codec; otherwise the clip is
    decoded and encoded here, and the cache file written (atomically) for the next pass. Temporal windows
    always start at latent frame 0: causal video codecs code the first frame alone, as inference sees it.
    """

    def __init__(self, codec_spec: dict[str, Any], cache_dir: str, use_stored: bool, latent_frames: int,
                 crop: int, seed: int, rank: int, epoch: Epoch) -> None:
        self.codec_spec, self.cache_dir, self.use_stored = codec_spec, cache_dir, use_stored
        self.latent_frames, self.crop, self.epoch, self.seed, self.rank = latent_frames, crop, epoch, seed, rank
        self._codec: Any = None
        self._state: tuple[int, int] | None = None
        self._rng: np.random.Generator | None = None

    def _whole(self, sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        from cascadevsr.datasets.loader import decode_pair
        from cascadevsr.latent import make_codec

        path = Path(self.cache_dir) / f"{sample['__key__']}.npz"
        if path.is_file():
            with np.load(path) as z:
                return z["hr"], z["lr"]
        if self.use_stored and "hr_latent.npy" in sample and "lr_latent.npy" in sample:
            return (np.load(io.BytesIO(sample["hr_latent.npy"])), np.load(io.BytesIO(sample["lr_latent.npy"])))
        pair = decode_pair(sample)
        if self._codec is None:
            self._codec = make_codec(self.codec_spec)
        out = []
        for frames in (pair["hr"], pair["lr"]):
            x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
            with torch.no_grad():
                out.append(self._codec.encode(x).float().numpy())  # (C, t, h, w)
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        _write_npz_atomic(path, hr=out[0], lr=out[1])
        return out[0], out[1]

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from cascadevsr.datasets.loader import sample_seed, worker_info

        hr, lr = self._whole(sample)  # (C, t, H, W), (C, t, h, w)
        state = (self.epoch.current(), worker_info()[0])
        if self._rng is None or state != self._state:
            self._rng = np.random.default_rng(sample_seed(self.seed, "latent-crop", *state, self.rank))
            self._state = state
        (h, w), (H, W) = lr.shape[-2:], hr.shape[-2:]
        s = H // h
        if (s * h, s * w) != (H, W) or hr.shape[1] != lr.shape[1]:
            raise ValueError(f"HR latent {hr.shape} is not an integer upscale of LR latent {lr.shape}")
        if lr.shape[1] < self.latent_frames or min(h, w) < self.crop:
            raise ValueError(f"latent {lr.shape} is smaller than {self.latent_frames} frames x {self.crop}^2")
        y, x = int(self._rng.integers(0, h - self.crop + 1)), int(self._rng.integers(0, w - self.crop + 1))
        c, t = self.crop, self.latent_frames
        return {"__key__": sample["__key__"],
                "hr_latent": torch.from_numpy(np.ascontiguousarray(hr[:, :t, y * s:(y + c) * s, x * s:(x + c) * s])),
                "lr_latent": torch.from_numpy(np.ascontiguousarray(lr[:, :t, y:y + c, x:x + c]))}


def resolve_urls(spec: str) -> list[str]:
    """Shard paths from a corpus folder, a brace pattern or a comma-separated list; missing or empty files
    are refused up front (a reader would otherwise skip them forever)."""
    from cascadevsr.datasets.loader import resolve_shards

    if not spec:
        raise UserError("no training data: give --data (a corpus folder, a shard pattern or a list of tars)")
    if "," in spec and "{" not in spec:
        urls = resolve_shards([s.strip() for s in spec.split(",") if s.strip()])
    else:
        if not Path(spec).exists() and "{" not in spec and not any(c in spec for c in "*?"):
            raise UserError(f"training data {spec} does not exist")
        urls = resolve_shards(spec)
    bad = [u for u in urls if "://" not in u and (not Path(u).is_file() or Path(u).stat().st_size == 0)]
    if bad:
        raise UserError(f"{len(bad)} of {len(urls)} shard(s) are missing or empty: {', '.join(bad[:3])}"
                        f"{' ...' if len(bad) > 3 else ''}")
    return urls


def corpus_settings(urls: list[str]) -> dict[str, Any]:
    """The corpus ``config.json`` beside the first shard (empty when there is none)."""
    path = Path(urls[0]).parent / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def latent_pairs(cfg: TrainConfig, cache_dir: str, use_stored: bool, seed: int,
                 rank: int) -> Callable[[Epoch], LatentPairs]:
    """The loader's ``pairs`` hook for cache mode: builds the :class:`LatentPairs` stage of one pipeline."""
    from cascadevsr.latent import latent_frames, make_codec

    codec = make_codec(cfg.model.codec)
    frames = latent_frames(cfg.data.num_frames, codec.time_factor)
    crop = cfg.data.crop_size // codec.space_factor
    return functools.partial(LatentPairs, cfg.model.codec, cache_dir, use_stored, frames, crop, seed, rank)


def make_dataset(urls: list[str], cfg: TrainConfig, *, rank: int, world_size: int, seed: int, flips: bool,
                 cache_dir: str, use_stored: bool, per_worker: int) -> Any:
    """The loader pipeline of one rank: resampled shards -> tar -> shuffle -> pairs (pixel crops, or latent
    crops from :class:`LatentPairs`) -> skip count; each worker yields ``per_worker`` samples per pass."""
    from cascadevsr.datasets.loader import pair_dataset

    d = cfg.data
    skips = SkipCounter()
    pairs = latent_pairs(cfg, cache_dir, use_stored, seed, rank) if d.latents == "cache" else None
    dataset = pair_dataset(urls, crop_size=d.crop_size, num_frames=d.num_frames, hflip=flips and d.hflip,
                           vflip=False, shuffle_buffer=d.shuffle_buffer, resampled=True, shuffle_shards=True,
                           seed=seed, rank=rank, world_size=world_size, dtype="float32", handler=skips.handler,
                           pairs=pairs)
    dataset.append(skips.stamp)  # last: the skip count rides on the next good sample
    return dataset.with_epoch(per_worker)


class BatchStream:
    """Micro-batches of one rank in a fixed order, with a resumable position ``(epoch, index)``."""

    def __init__(self, dataset: Any, micro_batch: int, num_workers: int, epoch: int = 0, index: int = 0,
                 pin_memory: bool = False) -> None:
        self.dataset, self.micro_batch, self.num_workers = dataset, micro_batch, num_workers
        self.epoch, self.index, self.pin_memory = epoch, index, pin_memory
        self._it: Iterator | None = None

    def _start(self) -> None:
        from torch.utils.data import DataLoader

        self.dataset.set_epoch(self.epoch)
        loader = DataLoader(self.dataset, batch_size=self.micro_batch, num_workers=self.num_workers,
                            drop_last=True, persistent_workers=False, pin_memory=self.pin_memory)
        self._it = iter(loader)
        for _ in range(self.index):  # replay the pass up to the saved position
            next(self._it)

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.index, self._it = self.epoch + 1, 0, None
            return next(self)
        self.index += 1
        return batch

    def state(self) -> dict[str, int]:
        """Where the next micro-batch comes from."""
        return {"epoch": self.epoch, "index": self.index}

    def close(self) -> None:
        """Stop the loader workers."""
        self._it = None


def batch_latents(batch: dict[str, Any], codec: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """HR and LR latents ``(B, C, t, H, W)`` / ``(B, C, t, h, w)`` of a micro-batch on ``device``."""
    if "hr_latent" in batch:
        return batch["hr_latent"].to(device, non_blocking=True), batch["lr_latent"].to(device, non_blocking=True)
    with torch.no_grad():
        hr = codec.encode(batch["hr"].to(device, non_blocking=True))  # (B, C, t, H, W)
        lr = codec.encode(batch["lr"].to(device, non_blocking=True))  # (B, C, t, h, w)
    return hr, lr


# ------------------------------------------------------------------------------------ pure helpers


def lr_factor(step: int, warmup: int, schedule: str, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up, then constant or cosine."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def draw_generator(seed: int, step: int, slot: int | str) -> torch.Generator:
    """The generator of one micro-batch's noise draws (see the module docstring)."""
    digest = hashlib.sha256(f"{seed}:{step}:{slot}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def _checkpointed(forward: Callable, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint as recompute

    return recompute(forward, *args, use_reentrant=False, **kwargs)


def enable_grad_checkpointing(model: VSRModel) -> None:
    """Recompute every DiT block in the backward pass instead of keeping its activations."""
    for block in model.blocks:
        block.forward = functools.partial(_checkpointed, block.forward)


class ModelCall:
    """What ``training_loss`` is given: the model's attributes, with the forward pass going through the
    DDP / compiled wrapper (so gradients are synchronised)."""

    def __init__(self, module: VSRModel, wrapped: torch.nn.Module) -> None:
        self._module, self._wrapped = module, wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._wrapped(*args, **kwargs)


def psnr(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of float frames in [0, 1] (RGB, whole frames; the training monitor, not the benchmark's)."""
    mse = (pred.clamp(0, 1).double() - ref.double()).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def peak_flops(device: torch.device, precision: str, override_tflops: float) -> float | None:
    """Peak FLOP/s for MFU: the configured value, else the table for bf16/fp16 on a known GPU."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def _open_tensorboard(run_dir: Path) -> Any:
    for module in ("torch.utils.tensorboard", "tensorboardX"):
        try:
            return __import__(module, fromlist=["SummaryWriter"]).SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            continue
    return None


class CsvLog:
    """Append-only CSV with a fixed header; rows past ``keep_until`` (a resumed step) are dropped at open."""

    def __init__(self, path: Path, keep_until: int) -> None:
        self.path = path
        self.header: list[str] | None = None
        if path.exists():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            kept = [r for r in rows if int(float(r["step"])) <= keep_until]
            if rows:
                self.header = list(rows[0])
            with open(path, "w", newline="") as f:
                if self.header:
                    w = csv.DictWriter(f, self.header)
                    w.writeheader()
                    w.writerows(kept)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (the first row fixes the columns)."""
        new = self.header is None
        if new:
            self.header = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.header, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def find_init(path: str, run_dir: Path) -> Path:
    """``init_from`` as given, else beside the run folder (the stage presets name sibling runs)."""
    p = Path(path).expanduser()
    return p if p.exists() or p.is_absolute() else run_dir.parent / p


def load_weights(model: VSRModel, state: dict[str, Any], what: str) -> None:
    """Load a checkpoint's weights (EMA when present) into ``model``; shape mismatches name the tensors."""
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    own = model.state_dict()
    bad = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(weights))
    if bad or missing:
        raise UserError(f"{what} does not fit this model: differing shapes {bad[:4]}, missing {missing[:4]}")
    model.load_state_dict(weights, strict=False)


# ------------------------------------------------------------------------------------------ validation


@torch.no_grad()
def validate(model: VSRModel, codec: Any, batches: list[dict[str, Any]], cfg: TrainConfig,
             sampler: flow.TimestepSampler, device: torch.device, autocast: Callable[[], Any],
             metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]) -> tuple[dict[str, float], list]:
    """Validation loss on the held-out micro-batches (fixed draws) and PSNR (+ ``metrics``) of a few clips
    upscaled from their LR latents with ``val.steps`` Euler steps. Returns the numbers and, per clip,
    ``uint8`` frames of ``bicubic | model | HR`` side by side."""
    from cascadevsr.train.inference import InferenceConfig, to_uint8_frames, upscale_latent

    was_training = model.training
    model.eval()
    losses = []
    for i, batch in enumerate(batches):
        hr, lr = batch_latents(batch, codec, device)
        with autocast():
            losses.append(training_loss(model, hr, lr, sampler, draw_generator(cfg.seed, -1, i),
                                        weighting=cfg.weighting).item())
    out: dict[str, float] = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
    scores: dict[str, list[float]] = {"val_psnr": [], "bicubic_psnr": [], **{f"val_{k}": [] for k in metrics}}
    videos = []
    clips = [(b, j) for b in batches for j in range(len(b["__key__"]))][: cfg.val.clips]
    for batch, j in clips:
        hr_lat, lr_lat = (x[j : j + 1] for x in batch_latents(batch, codec, device))
        T, H, W = hr_lat.shape[2:]
        icfg = InferenceConfig(steps=cfg.val.steps, seed=cfg.seed, window=T, window_overlap=0, tile=max(H, W),
                               tile_overlap=0)
        with autocast():
            pred_lat = upscale_latent(model, lr_lat, (H, W), icfg)
        pred = codec.decode(pred_lat.float())[0].clamp(0, 1)  # (T, 3, H, W)
        # Cached latents carry no frames: the reference is then the codec's reconstruction of the HR clip.
        ref = batch["hr"][j].to(device) if "hr" in batch else codec.decode(hr_lat.float())[0].clamp(0, 1)
        low = batch["lr"][j].to(device) if "lr" in batch else codec.decode(lr_lat.float())[0].clamp(0, 1)
        bicubic = F.interpolate(low, size=ref.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        scores["val_psnr"].append(psnr(pred, ref))
        scores["bicubic_psnr"].append(psnr(bicubic, ref))
        for name, fn in metrics.items():
            scores[f"val_{name}"].append(float(torch.as_tensor(fn(pred.float().cpu(), ref.float().cpu())).mean()))
        videos.append(to_uint8_frames(torch.cat([bicubic, pred, ref], dim=-1).float().cpu()))
    out.update({k: float(np.mean(v)) for k, v in scores.items() if v})
    model.train(was_training)
    return out, videos


# ------------------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, run_dir: str | Path, resume: str = "auto",
          metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] | None = None,
          show_progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; ``resume`` is ``auto`` (the run's latest checkpoint if any), ``never``,
    or a checkpoint path. ``metrics`` maps names to ``fn(pred, ref) -> per-frame scores`` (float frames
    ``(T, 3, H, W)`` in [0, 1]) computed on the validation clips. Returns a summary of the run."""
    # ------------------------------------------------------------------------------------------- setup
    run_dir = Path(run_dir).absolute()
    dist = distributed.setup(cfg.device)
    device = dist.device
    threads = torch.get_num_threads()
    try:
        if device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
            torch.set_num_threads(cfg.cpu_threads or max(1, (os.cpu_count() or 1) // local))
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def autocast() -> Any:
            if amp_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=device.type, dtype=amp_dtype)

        slots = cfg.global_batch // cfg.micro_batch
        if slots % dist.world_size:
            raise UserError(f"global_batch {cfg.global_batch} does not split over {dist.world_size} rank(s) of "
                            f"micro_batch {cfg.micro_batch}; change micro_batch or global_batch")
        accum = slots // dist.world_size
        if resume not in ("auto", "never"):
            ckpt_file: Path | None = checkpoint.resolve(resume)
        else:
            ckpt_file = checkpoint.latest_checkpoint(run_dir)
            if resume == "never" and ckpt_file is not None:
                raise UserError(f"{run_dir} already holds checkpoints; resume it (--resume auto) or pick a new --out")
        state = checkpoint.load(ckpt_file) if ckpt_file is not None else None
        if state is not None:
            diffs = config_differences(state.get("config", {}), cfg.to_dict())
            if diffs:
                raise UserError(f"checkpoint {state['_file']} was written by another config; differing keys: "
                                + "; ".join(diffs))
        urls = resolve_urls(cfg.data.shards)
        if cfg.data.val_shards:
            val_urls = resolve_urls(cfg.data.val_shards)
        elif cfg.data.holdout_shards and cfg.val.every:
            if len(urls) <= cfg.data.holdout_shards:
                raise UserError(f"data.holdout_shards: holding out {cfg.data.holdout_shards} of {len(urls)} "
                                "shard(s) leaves none to train on")
            urls, val_urls = urls[: -cfg.data.holdout_shards], urls[-cfg.data.holdout_shards :]
        else:
            val_urls = []
        corpus = corpus_settings(urls)
        if cfg.data.expect_presets and corpus.get("preset") and corpus["preset"] not in cfg.data.expect_presets:
            log.warning("the corpus was built with preset '%s'; this stage expects %s", corpus["preset"],
                        cfg.data.expect_presets)
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(run_dir / "config.json", cfg.to_dict())
            print(f"cascadevsr train: {run_dir}\n{cfg.summary()}", flush=True)

        # ------------------------------------------------------------------------------------------ build
        torch.manual_seed(cfg.seed)
        raw = build_model(cfg.model).to(device)
        init_state = None
        if state is None and cfg.init_from:
            init_state = checkpoint.load(find_init(cfg.init_from, run_dir))
            load_weights(raw, init_state, f"init_from {init_state['_file']}")
        ema = copy.deepcopy(raw).requires_grad_(False) if cfg.ema_decay > 0 else None
        o = cfg.optim
        decay, no_decay = [], []
        for name, p in raw.named_parameters():
            # Norm gains, biases and the adaLN tables are offsets around a set value: no decay (common practice).
            (no_decay if p.dim() < 2 or "table" in name else decay).append(p)
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                      fused=device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(lr_factor, warmup=o.warmup, schedule=o.schedule, total=cfg.steps,
                                         min_ratio=o.min_lr_ratio))
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        from cascadevsr.latent import latent_frames, make_codec

        codec = make_codec(cfg.model.codec, device=device)
        sampler = flow.make_timestep_sampler(cfg.sampler, **cfg.sampler_options)
        cache_dir = cfg.data.cache_dir or str(Path(urls[0]).parent / f"latents-{codec_id(codec.spec())}")
        use_stored = False
        if corpus.get("latent_codec"):
            from cascadevsr.datasets.config import codec_spec
            from cascadevsr.latent import same_codec

            # Compared without loading the corpus's VAE; one that is not here matches nothing (cache instead).
            with contextlib.suppress(Exception):
                use_stored = same_codec(codec_spec(corpus["latent_codec"]), codec.spec())
            if use_stored and cfg.data.latents == "encode" and dist.main:
                # Model-guided samples' stored LR latent is the base model's own; re-encoding frames loses that.
                log.warning("the corpus stores latents of this codec; --set data.latents=cache trains on them "
                            "instead of encoding frames every step")
        nw = cfg.data.num_workers
        per_worker = cfg.micro_batch * math.ceil(cfg.data.samples_per_epoch / (max(1, nw) * cfg.micro_batch))
        data_args = {"cache_dir": cache_dir, "use_stored": use_stored}

        # ----------------------------------------------------------------------------------------- resume
        step, best, skipped_total = 0, None, 0
        position = {"epoch": 0, "index": 0}
        if state is not None:
            raw.load_state_dict(state["model"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            ranks = len(state["data"]) if isinstance(state["data"], list) else 1
            if ranks != dist.world_size:
                raise UserError(f"checkpoint {state['_file']} was written by {ranks} rank(s); resume it with "
                                f"{ranks} (the data position is per rank), not {dist.world_size}")
            checkpoint.set_rng_state(state["rng"][dist.rank] if isinstance(state["rng"], list) else state["rng"])
            step, best = int(state["step"]), state.get("best")
            skipped_total = int(state.get("skipped", 0))
            position = state["data"][dist.rank] if isinstance(state["data"], list) else state["data"]
            if dist.main:
                print(f"resumed from {state['_file']} at step {step}", flush=True)
        del state, init_state
        stream = BatchStream(make_dataset(urls, cfg, rank=dist.rank, world_size=dist.world_size, seed=cfg.seed,
                                          flips=True, per_worker=per_worker, **data_args),
                             cfg.micro_batch, nw, **position, pin_memory=device.type == "cuda")
        val_batches: list[dict[str, Any]] = []
        if dist.main and val_urls and cfg.val.every:
            n_val = max(cfg.val.batches, math.ceil(cfg.val.clips / cfg.micro_batch))
            # Fixed held-out batches: no flips, their own seed, read once in this process.
            val_stream = BatchStream(make_dataset(val_urls, cfg, rank=0, world_size=1, seed=cfg.seed + 1,
                                                  flips=False, per_worker=n_val * cfg.micro_batch, **data_args),
                                     cfg.micro_batch, 0)
            val_batches = [next(val_stream) for _ in range(n_val)]
        net: torch.nn.Module = raw
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(raw)
        if cfg.compile:
            net = torch.compile(net)
        if dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        call = ModelCall(raw, net)
        raw.train()

        # Throughput accounting: latent tokens and model FLOPs of one training clip.
        t_lat = latent_frames(cfg.data.num_frames, codec.time_factor)
        lr_side = cfg.data.crop_size // codec.space_factor
        hr_side = lr_side * int(cfg.model.scale)
        tokens_per_sample = t_lat * math.ceil(hr_side / cfg.model.patch) ** 2
        flops_per_sample = 3 * model_flops(cfg.model, t_lat, hr_side, hr_side, (lr_side, lr_side))["total"]
        peak = peak_flops(device, precision, cfg.peak_tflops)
        metrics = metrics or {}
        csv_log = val_log = tb = None
        if dist.main:
            csv_log = CsvLog(run_dir / METRICS_CSV, step)
            val_log = CsvLog(run_dir / VAL_CSV, step)
            tb = _open_tensorboard(run_dir) if cfg.tensorboard else None
            print(f"{count_parameters(raw) / 1e6:.2f}M parameters on {device} ({precision}); global batch "
                  f"{cfg.global_batch} = {dist.world_size} rank(s) x {cfg.micro_batch} x {accum} accumulation; "
                  f"{tokens_per_sample} tokens per clip", flush=True)
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, disable=not (dist.main and show_progress), unit="step",
                   dynamic_ncols=True)

        def run_validation() -> dict[str, float] | None:
            if not val_batches:
                return None
            model = ema if (ema is not None and cfg.val.use_ema) else raw
            numbers, videos = validate(model, codec, val_batches, cfg, sampler, device, autocast, metrics)
            val_log.write({"step": step, **numbers})
            if tb is not None:
                for k, v in numbers.items():
                    tb.add_scalar(f"val/{k}", v, step)
            if cfg.val.samples and videos:
                from cascadevsr.video import write_video

                folder = run_dir / "samples"
                folder.mkdir(exist_ok=True)
                for i, frames in enumerate(videos):
                    write_video(folder / f"step-{step:08d}-{i}.mp4", frames, fps=8, crf=10)
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
            return numbers

        def improved(numbers: dict[str, float] | None) -> bool:
            nonlocal best
            if numbers is None:
                return False
            key = "val_loss" if cfg.val.best == "loss" else "val_psnr"
            value = numbers[key]
            better = best is None or (value < best["value"] if cfg.val.best == "loss" else value > best["value"])
            if better and math.isfinite(value):
                best = {"metric": key, "value": value, "step": step}
                return True
            return False

        def save(is_best: bool) -> None:
            # One dict, written by rank 0; every rank's data position and RNG are gathered into it.
            positions = _gather(stream.state(), dist)
            rngs = _gather(checkpoint.rng_state(), dist)
            if not dist.main:
                return
            state = {"format": CHECKPOINT_FORMAT, "model_config": asdict(cfg.model), "model": raw.state_dict(),
                     "ema": None if ema is None else ema.state_dict(), "step": step,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": None if scaler is None else scaler.state_dict(), "rng": rngs, "data": positions,
                     "best": best, "skipped": skipped_total, "config": cfg.to_dict()}
            checkpoint.save(run_dir, state, step, cfg.keep_last, best=is_best)

        if step == 0 and cfg.val.at_start and dist.main:
            improved(run_validation())

        # ------------------------------------------------------------------------------------------ loop
        last_loss = float("nan")
        window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
        while step < cfg.steps:
            step_start = time.perf_counter()
            wait = 0.0
            loss_sum, skipped = 0.0, 0
            for micro in range(accum):
                t0 = time.perf_counter()
                batch = next(stream)
                wait += time.perf_counter() - t0
                skipped += int(batch["skipped"].sum())
                hr, lr = batch_latents(batch, codec, device)
                generator = draw_generator(cfg.seed, step, dist.rank * accum + micro)
                sync = micro == accum - 1 or dist.world_size == 1
                with (contextlib.nullcontext() if sync else net.no_sync()), autocast():
                    loss = training_loss(call, hr, lr, sampler, generator, weighting=cfg.weighting)
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_sum += loss.detach().float().item()
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), o.grad_clip or float("inf")).item()
            lr_now = optimizer.param_groups[0]["lr"]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema_update(ema, raw, min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1

            # ------------------------------------------------------------------------------------- log
            last_loss, skipped_mean = distributed.all_reduce_mean([loss_sum / accum, float(skipped)], dist)
            skipped_total += round(skipped_mean * dist.world_size)
            if not math.isfinite(last_loss):
                raise UserError(f"the loss became {last_loss} at step {step}; lower optim.lr or check the data")
            now = time.perf_counter()
            step_time = now - step_start
            window_steps += 1
            window_wait += wait
            samples_s = cfg.global_batch / step_time
            row: dict[str, Any] = {
                "step": step, "loss": last_loss, "lr": lr_now, "grad_norm": grad_norm, "step_time": step_time,
                "samples_per_s": samples_s, "tokens_per_s": samples_s * tokens_per_sample,
                "data_wait": wait / step_time, "skipped": skipped_total,
                "mfu": samples_s * flops_per_sample / (peak * dist.world_size) if peak else None,
                "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                "time": time.time()}
            if dist.main:
                csv_log.write(row)
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    elapsed = now - window_start
                    post = {"loss": f"{last_loss:.4f}", "step/s": f"{window_steps / elapsed:.2f}",
                            "samples/s": f"{window_steps * cfg.global_batch / elapsed:.1f}",
                            "tokens/s": f"{window_steps * cfg.global_batch * tokens_per_sample / elapsed:.3g}",
                            "wait": f"{window_wait / elapsed:.0%}"}
                    if row["mfu"] is not None:
                        post["mfu"] = f"{row['mfu']:.1%}"
                    if row["peak_mem_gb"] is not None:
                        post["mem"] = f"{row['peak_mem_gb']:.1f}G"
                    if skipped_total:
                        post["skipped"] = str(skipped_total)
                    bar.set_postfix(post, refresh=False)
                    if tb is not None:
                        for k in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "data_wait", "mfu"):
                            if row[k] is not None:
                                tb.add_scalar(f"train/{k}", row[k], step)
                    window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0

            # -------------------------------------------------------------------------- validate, save
            is_best = False
            if cfg.val.every and step % cfg.val.every == 0:
                if dist.main:
                    is_best = improved(run_validation())
                is_best = distributed.broadcast_object(is_best, dist)
            if is_best or step % cfg.ckpt_every == 0 or step == cfg.steps:
                save(is_best)
        bar.close()
        stream.close()
        if tb is not None:
            tb.close()
        summary = {"step": step, "loss": last_loss, "best": best, "skipped": skipped_total, "run_dir": str(run_dir)}
        distributed.barrier(dist)
        return summary
    finally:
        torch.set_num_threads(threads)  # the caller's setting (tests run many trainings in one process)
        distributed.teardown(dist)


def _gather(obj: Any, dist: distributed.Dist) -> Any:
    """Every rank's ``obj`` on rank 0 as a list (the object itself for one process)."""
    if dist.world_size == 1:
        return obj
    import torch.distributed as td

    out: list[Any] = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out
