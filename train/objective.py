"""The training objective of one batch: SimpleGVR Eq. 3 with LR noise augmentation and text dropout.

Every random draw (timestep, diffusion noise, augmentation level and noise, text dropout) comes from the
one ``generator`` passed in, in a fixed order, so a batch's loss is reproducible from the generator state.
"""

from __future__ import annotations

import torch

from cascadevsr.train import flow
from cascadevsr.train.model import VSRModel


def training_loss(model: VSRModel, hr_latent: torch.Tensor, lr_latent: torch.Tensor,
                  sampler: flow.TimestepSampler, generator: torch.Generator,
                  text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                  weighting: str = "none") -> torch.Tensor:
    """Flow-matching loss for HR latents ``(B, C, T, H, W)`` given LR latents ``(B, C, T, h, w)``.

    t ~ ``sampler``; ``z_t = (1 - t)·z0 + t·ε``; s ~ U[a, b] (``model.cfg.noise_aug``) per sample; with
    text, each sample's text is replaced by the null embedding with probability ``cfg.text_dropout``.
    """
    cfg = model.cfg
    B, device = hr_latent.shape[0], hr_latent.device
    t = sampler.sample(B, generator).to(device)  # (B,)
    noise = torch.randn(hr_latent.shape, generator=generator).to(device, hr_latent.dtype)
    a, b = cfg.noise_aug
    s = (a + (b - a) * torch.rand(B, generator=generator)).to(device)  # (B,)
    aug_shape = model.cond_shape(tuple(lr_latent.shape), tuple(hr_latent.shape[-2:]))
    aug_noise = torch.randn(aug_shape, generator=generator).to(device, lr_latent.dtype)
    if cfg.text_dim and text is not None and cfg.text_dropout > 0:
        drop = (torch.rand(B, generator=generator) < cfg.text_dropout).to(device)  # (B,)
        null = model.null_text.expand(B, -1, -1).to(text.dtype)
        text = torch.where(drop[:, None, None], null, text)
        if text_mask is not None:
            text_mask = text_mask | drop[:, None]
    z_t = flow.interpolate(hr_latent, noise, t)
    velocity = model(z_t, t, lr_latent, s, aug_noise, text, text_mask)
    return flow.flow_loss(velocity, hr_latent, noise, t, weighting)
