"""A minimal fitting loop: one LR/HR clip pair, random crops, AdamW. For tests and sanity checks.

This is not the trainer (no checkpoints, resume, AMP, EMA or data loader); it exists to show that a model
can fit a real clip with the same objective the trainer uses (:func:`objective.training_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cascadevsr.latent import LatentCodec, valid_length
from cascadevsr.train import flow
from cascadevsr.train.inference import to_float_frames
from cascadevsr.train.model import VSRModel
from cascadevsr.train.objective import training_loss


@dataclass
class FitConfig:
    """Settings of :func:`fit_pair`."""

    steps: int = 300
    """Optimizer steps."""
    lr: float = 2e-3
    """AdamW learning rate (constant after a linear warm-up)."""
    warmup: int = 20
    """Warm-up steps."""
    batch: int = 1
    """Crops per step."""
    crop_frames: int = 5
    """Video frames per crop (a valid codec length: 1 + time_factor·k)."""
    crop_size: int = 32
    """HR crop side in pixels (a multiple of scale × the codec's space factor)."""
    sampler: str = "uniform"
    """Timestep sampler name (see flow.TIMESTEP_SAMPLERS)."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    """Options of the sampler (``m``, ``s`` for logit_normal; ``pdf_file`` for detail_aware)."""
    seed: int = 0
    """Seed of crops, timesteps and noises."""
    clip: float = 1.0
    """Gradient-norm clipping threshold."""


def random_crop_pair(hr: torch.Tensor, lr: torch.Tensor, frames: int, size: int, scale: int,
                     rng: np.random.Generator, time_step: int = 1, space_step: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Matching crops of float frames ``hr`` ``(T, 3, H, W)`` and ``lr`` ``(T, 3, H/scale, W/scale)``.

    Crops start at multiples of ``time_step`` frames and ``space_step`` LR pixels; with the codec's
    factors there, a crop's latent is exactly a crop of the whole clip's latent (the grid inference uses).
    """
    T, _, h, w = lr.shape
    lsize = size // scale

    def start(limit: int, step: int) -> int:
        return step * int(rng.integers(0, limit // step + 1))

    t0 = start(T - frames, time_step)
    y, x = start(h - lsize, space_step), start(w - lsize, space_step)
    lr_crop = lr[t0:t0 + frames, :, y:y + lsize, x:x + lsize]
    hr_crop = hr[t0:t0 + frames, :, y * scale:y * scale + size, x * scale:x * scale + size]
    return hr_crop, lr_crop


def fit_pair(model: VSRModel, codec: LatentCodec, hr_frames: np.ndarray, lr_frames: np.ndarray,
             cfg: FitConfig) -> list[float]:
    """Fit ``model`` to one clip pair (``uint8`` ``(T, H, W, 3)`` HR and LR); returns the loss per step."""
    scale = hr_frames.shape[1] // lr_frames.shape[1]
    if cfg.crop_frames != valid_length(cfg.crop_frames, codec.time_factor):
        raise ValueError(f"crop_frames {cfg.crop_frames} is not 1 + {codec.time_factor}·k")
    hr, lr = to_float_frames(hr_frames), to_float_frames(lr_frames)  # (T, 3, H, W)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = flow.make_timestep_sampler(cfg.sampler, **cfg.sampler_options)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, cfg.warmup)))
    model.train()
    losses = []
    for _ in range(cfg.steps):
        crops = [random_crop_pair(hr, lr, cfg.crop_frames, cfg.crop_size, scale, rng, codec.time_factor,
                                  codec.space_factor)
                 for _ in range(cfg.batch)]
        hr_latent = codec.encode(torch.stack([c[0] for c in crops]))  # (B, C, t, H, W)
        lr_latent = codec.encode(torch.stack([c[1] for c in crops]))  # (B, C, t, h, w)
        loss = training_loss(model, hr_latent, lr_latent, sampler, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses
