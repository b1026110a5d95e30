"""LR branches: the LR latent ``(B, C, t, h, w)`` brought to the HR latent grid ``(B, C, t, H, W)``.

Variants (``ModelConfig.lr_branch``):

* ``conv_bilinear_conv`` -- the paper's v3 upsampler: 3D conv → bilinear to the HR latent size (any,
  non-integer factor included) → 3D conv.
* ``res3d_temporal`` -- the ICLR variant: two Res3D blocks expand channels and time (each latent frame
  becomes ``time_factor`` frames, roughly one per video frame), bilinear, two Res3D blocks fold time back
  into channels and compress to C.
* ``interp`` -- bilinear only (ablation).
* ``token_concat`` -- no upsampling: the LR latent stays at its own size and its tokens join the DiT's
  sequence instead of its channels (ablation; the model handles the rest).

Ours, not the paper's: the learned branches add their output to the plain bilinear upsample and start at
zero (last conv zero-initialised), so at initialisation every branch equals ``interp`` and training only
learns a correction; temporal convolutions pad by replicating edge frames, so a chunk of a long clip sees
the same boundary treatment as the whole clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

LR_BRANCHES = ("conv_bilinear_conv", "res3d_temporal", "interp", "token_concat")


def bilinear_frames(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of every frame of ``(B, C, t, h, w)`` to ``(B, C, t, *size)``."""
    B, T = x.shape[0], x.shape[2]
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    flat = rearrange(x, "b c t h w -> (b t) c h w")
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return rearrange(up, "(b t) c h w -> b c t h w", b=B, t=T)


def conv3d(cin: int, cout: int) -> nn.Conv3d:
    """3×3×3 convolution that keeps the shape; time padded by replicating edge frames."""
    return nn.Conv3d(cin, cout, 3, padding=1, padding_mode="replicate")


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class Res3D(nn.Module):
    """Residual block: GroupNorm → SiLU → conv3d, twice, plus a 1×1×1 skip when channels change."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(_groups(cin), cin), nn.SiLU(), conv3d(cin, cout),
                                  nn.GroupNorm(_groups(cout), cout), nn.SiLU(), conv3d(cout, cout))
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class InterpBranch(nn.Module):
    """Bilinear resize only; no parameters."""

    def forward(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return bilinear_frames(lr, size)


class ConvBilinearConv(nn.Module):
    """3D conv → SiLU → bilinear → 3D conv (zero-initialised), added to the bilinear upsample."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.pre = conv3d(channels, hidden)
        self.post = conv3d(hidden, channels)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = bilinear_frames(F.silu(self.pre(lr)), size)  # (B, hidden, t, H, W)
        return bilinear_frames(lr, size) + self.post(h)


class Res3DTemporal(nn.Module):
    """Res3D ×2 expanding channels and time → bilinear → Res3D ×2 folding time back and compressing."""

    def __init__(self, channels: int, hidden: int, time_factor: int) -> None:
        super().__init__()
        self.f = time_factor
        self.expand = nn.Sequential(Res3D(channels, hidden), Res3D(hidden, hidden * time_factor))
        self.refine = Res3D(hidden, hidden)
        self.compress = Res3D(hidden * time_factor, hidden)
        self.out = nn.Conv3d(hidden, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = self.expand(lr)  # (B, hidden*f, t, h, w)
        h = rearrange(h, "b (c f) t h w -> b c (t f) h w", f=self.f)  # one frame per video frame
        h = self.refine(bilinear_frames(h, size))  # (B, hidden, t*f, H, W)
        h = rearrange(h, "b c (t f) h w -> b (c f) t h w", f=self.f)
        return bilinear_frames(lr, size) + self.out(self.compress(h))


def make_lr_branch(kind: str, channels: int, hidden: int, time_factor: int) -> nn.Module | None:
    """The LR branch named ``kind``; ``token_concat`` has none (returns None)."""
    if kind == "conv_bilinear_conv":
        return ConvBilinearConv(channels, hidden)
    if kind == "res3d_temporal":
        return Res3DTemporal(channels, hidden, time_factor)
    if kind == "interp":
        return InterpBranch()
    if kind == "token_concat":
        return None
    raise ValueError(f"unknown LR branch '{kind}'; choose from {list(LR_BRANCHES)}")
