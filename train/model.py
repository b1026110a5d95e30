"""The efficient VSR model (SimpleGVR §4): LR branch, noise augmentation, a DiT over the HR latent.

One forward pass, with shapes (B batch, C latent channels, T latent frames, H×W HR latent grid)::

    lr latent (B, C, T, h, w) --LR branch--> c (B, C, T, H, W)            (see lr_branch.py)
    c_s = (1 - s)·c + s·ε′                   noise augmentation, s ~ U[a, b] in training, fixed at inference
    [z_t, c_s] (B, 2C, T, H, W) --patchify p×p--> tokens (B, T, H/p, W/p, D)
    DiT blocks × depth: adaLN(t) · {spatial attention, spatio-temporal attention in temporal units,
                                    optional text cross-attention, FFN}
    --unpatchify--> velocity (B, C, T, H, W)                               (target ε - z0, see flow.py)

Choices that are ours (the paper leaves them open), each a config field:

* Positions are 3D rotary embeddings on (frame, row, column), so the model is translation-equivariant and
  runs on any size, on tiles and on temporal chunks without position offsets.
* adaLN is PixArt-α's "adaLN-single": one timestep MLP for the whole network plus a learned per-block
  table. Queries and keys are RMS-normalised per head (``qk_norm``) for stable training.
* The attention kind (``full | swin | sparse_local``) applies to both self-attentions of a block: spatial
  attention groups are single latent frames, spatio-temporal groups are temporal units of ``unit`` frames
  whose borders move by ``unit // 2`` on odd blocks (Fig. 8; a re-partition, see attention.py).
* ``s`` is not given to the network unless ``embed_noise_level`` is set (default off, as in the paper).
* Text conditioning is optional (``text_dim = 0`` leaves it out): precomputed embeddings ``(B, L, text_dim)``
  or, when absent or dropped (``text_dropout``, 10% in the paper), a learned null embedding.

Checkpoint format (what ``cascadevsr upscale`` loads, and what the trainer writes a superset of): one dict
saved with ``torch.save``::

    {"format": "cascadevsr.vsr/1",
     "model_config": {...},          # asdict(ModelConfig): all build_model() needs, codec spec included
     "model": state_dict,            # the raw weights
     "ema": state_dict | None,       # EMA weights; upscale prefers them when present
     "step": int}                    # training step (informational here)

Extra keys (optimizer, RNG states, data position) are ignored by :func:`load_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cascadevsr.errors import UserError
from cascadevsr.hints import value_matches_hint
from cascadevsr.train.attention import (
    ATTENTION_KINDS,
    ATTENTION_PATHS,
    AttentionSpec,
    attend,
    attention_flops,
    full_attention,
    group_frames,
    temporal_units,
    ungroup_frames,
)
from cascadevsr.train.lr_branch import LR_BRANCHES, make_lr_branch

CHECKPOINT_FORMAT = "cascadevsr.vsr/1"


@dataclass
class ModelConfig:
    """Everything that defines a VSR model (saved in every checkpoint)."""

    codec: dict[str, Any] = field(default_factory=lambda: {"name": "pixel", "space_factor": 4,
                                                           "time_factor": 4})
    """Latent codec spec for :func:`cascadevsr.latent.make_codec` (LR and HR share it)."""
    latent_channels: int = 0
    """Channels C of the codec's latent; 0 = derive from a ``pixel`` codec spec."""
    scale: float = 4.0
    """Pixel upscaling factor the model is trained for (any value > 1, e.g. 2.8125 for 384p→1080p)."""
    lr_branch: str = "conv_bilinear_conv"
    """``conv_bilinear_conv`` | ``res3d_temporal`` | ``interp`` | ``token_concat``."""
    lr_hidden: int = 64
    """Hidden channels of the learned LR branches."""
    lr_time_factor: int = 4
    """Frames per latent frame that ``res3d_temporal`` expands to (the codec's time factor)."""
    hidden: int = 64
    """DiT width D."""
    depth: int = 2
    """Number of DiT blocks."""
    heads: int = 4
    """Attention heads (hidden / heads is the head size)."""
    mlp_ratio: float = 4.0
    """FFN width as a multiple of ``hidden``."""
    patch: int = 1
    """Spatial patch size in latent pixels (temporal patch is 1)."""
    unit: int = 5
    """Temporal unit in latent frames; odd blocks shift the unit borders by ``unit // 2``."""
    attention: str = "full"
    """``full`` | ``swin`` | ``sparse_local`` (used by both self-attentions)."""
    window: tuple[int, int] = (9, 12)
    """(rows, cols) of a window in tokens; the paper's 12×9 read as width×height (fits a 16:9 grid)."""
    topk: int = 1
    """``sparse_local``: extra units attended per unit."""
    attention_path: str = "fast"
    """``fast`` (gathered-block SDPA) or ``reference`` (dense mask)."""
    qk_norm: bool = True
    """RMS-normalise queries and keys per head."""
    text_dim: int = 0
    """Width of precomputed text embeddings; 0 = no text cross-attention."""
    text_len: int = 0
    """Tokens of the learned null text embedding (and of the text inputs)."""
    text_dropout: float = 0.1
    """Probability of replacing a sample's text by the null embedding in training."""
    noise_aug: tuple[float, float] = (0.3, 0.6)
    """Training range [a, b] of the LR noise-augmentation level s."""
    noise_level: float = 0.3
    """Default fixed s at inference (ours: the bottom of the training range; the paper does not say)."""
    embed_noise_level: bool = False
    """Also give s to the network as an embedding added to the timestep embedding."""

    def __post_init__(self) -> None:
        self.window = tuple(self.window)
        self.noise_aug = tuple(self.noise_aug)
        self.codec = dict(self.codec)
        if self.latent_channels == 0 and self.codec.get("name") == "pixel":
            tf, sf = self.codec.get("time_factor", 4), self.codec.get("space_factor", 4)
            self.latent_channels = 3 * tf * sf * sf
        problems = []
        if self.latent_channels <= 0:
            problems.append("latent_channels: required (> 0) for a non-pixel codec")
        if self.lr_branch not in LR_BRANCHES:
            problems.append(f"lr_branch: unknown '{self.lr_branch}'; choose from {list(LR_BRANCHES)}")
        if self.attention not in ATTENTION_KINDS:
            problems.append(f"attention: unknown '{self.attention}'; choose from {list(ATTENTION_KINDS)}")
        if self.attention_path not in ATTENTION_PATHS:
            problems.append(f"attention_path: unknown '{self.attention_path}'; "
                            f"choose from {list(ATTENTION_PATHS)}")
        if self.lr_branch == "token_concat" and self.attention != "full":
            problems.append("lr_branch: token_concat needs attention='full' (LR tokens have no window grid)")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            problems.append(f"heads: hidden {self.hidden} must split into {self.heads} heads of even size")
        elif self.hidden // self.heads < 6:
            problems.append("heads: head size must be >= 6 (two rotary dims per axis)")
        for name in ("depth", "patch", "unit", "lr_hidden", "lr_time_factor"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        if self.scale <= 0:
            problems.append("scale: must be > 0")
        if len(self.window) != 2 or min(self.window) < 1:
            problems.append(f"window: two positive ints, got {self.window}")
        if self.topk < 0:
            problems.append("topk: must be >= 0")
        a, b = self.noise_aug
        if not 0 <= a <= b <= 1:
            problems.append(f"noise_aug: need 0 <= a <= b <= 1, got {self.noise_aug}")
        if not 0 <= self.noise_level <= 1:
            problems.append("noise_level: must be in [0, 1]")
        if self.text_dim < 0 or (self.text_dim > 0 and self.text_len < 1):
            problems.append("text_len: must be >= 1 when text_dim > 0")
        if not 0 <= self.text_dropout <= 1:
            problems.append("text_dropout: must be in [0, 1]")
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (a checkpoint's or a YAML file's); unknown keys and wrong types raise."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        problems = [f"unknown key '{k}'" for k in data if k not in known]
        for key, value in data.items():
            if key in known and not value_matches_hint(value, hints[key]):
                problems.append(f"{key}: expected {hints[key]}, got {type(value).__name__} {value!r}")
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems))
        return cls(**data)


MODEL_SIZES: dict[str, dict[str, Any]] = {
    # tests and CPU demos: seconds per hundred steps on a laptop core
    "tiny": {"codec": {"name": "pixel", "space_factor": 2, "time_factor": 4}, "hidden": 128, "depth": 2,
             "heads": 4, "lr_hidden": 32, "patch": 1, "window": (4, 4)},
    # one GPU experiments
    "small": {"hidden": 384, "depth": 12, "heads": 6, "lr_hidden": 128, "patch": 2},
    # the paper's scale (~1B parameters with T5-XXL text embeddings)
    "base": {"hidden": 1536, "depth": 20, "heads": 24, "lr_hidden": 256, "patch": 2, "text_dim": 4096,
             "text_len": 128},
}


def model_config(size: str = "tiny", **overrides: Any) -> ModelConfig:
    """A named model size (``tiny`` | ``small`` | ``base``) with some fields changed."""
    if size not in MODEL_SIZES:
        raise UserError(f"unknown model size '{size}'; choose from {sorted(MODEL_SIZES)}")
    return ModelConfig.from_dict({**MODEL_SIZES[size], **overrides})


# ------------------------------------------------------------------------------------------ embeddings


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``(B,)`` values -> ``(B, dim)`` sin/cos features (DiT's timestep features)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbed(nn.Module):
    """A value in [0, 1] (timestep or noise level) -> a ``hidden`` vector, through 1000·x features."""

    def __init__(self, hidden: int, features: int = 256) -> None:
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(x * 1000, self.features))


def rope_angles(T: int, H: int, W: int, head_dim: int, device: torch.device,
                step: tuple[float, float] = (1.0, 1.0), base: float = 10000.0) -> torch.Tensor:
    """Rotary angles ``(T, H, W, head_dim // 2)`` for (frame, row, column) positions.

    Each axis gets ``2 * (head_dim // 6)`` dims; leftover dims get angle 0 (not rotated). ``step`` scales the
    row/column positions (the token_concat LR tokens live on a coarser grid of the same image).
    """
    per_axis = head_dim // 6  # rotation pairs per axis
    freqs = base ** (-torch.arange(per_axis, device=device, dtype=torch.float32) / per_axis)
    t = torch.arange(T, device=device, dtype=torch.float32)
    y = torch.arange(H, device=device, dtype=torch.float32) * step[0]
    x = torch.arange(W, device=device, dtype=torch.float32) * step[1]
    parts = [(t[:, None, None, None] * freqs).expand(T, H, W, per_axis),
             (y[None, :, None, None] * freqs).expand(T, H, W, per_axis),
             (x[None, None, :, None] * freqs).expand(T, H, W, per_axis)]
    rest = head_dim // 2 - 3 * per_axis
    if rest:
        parts.append(torch.zeros(T, H, W, rest, device=device))
    return torch.cat(parts, dim=-1)  # (T, H, W, head_dim // 2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of ``x`` ``(B, T, H, W, heads, d)`` by ``angles`` ``(T, H, W, d // 2)``."""
    cos = angles.cos()[None, :, :, :, None].to(x.dtype)  # (1, T, H, W, 1, d/2)
    sin = angles.sin()[None, :, :, :, None].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


# -------------------------------------------------------------------------------------------- blocks


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x·(1 + scale) + shift`` with (B, D) modulation broadcast over (B, T, H, W, D) tokens."""
    view = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return x * (1 + scale.view(view)) + shift.view(view)


class SelfAttention(nn.Module):
    """Multi-head self-attention over temporal groups of a token grid."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.q_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()

    def _qkv(self, x: torch.Tensor, angles: torch.Tensor) -> list[torch.Tensor]:
        q, k, v = rearrange(self.qkv(x), "b t h w (n e d) -> n b t h w e d", n=3, e=self.heads)
        q, k = apply_rope(self.q_norm(q), angles), apply_rope(self.k_norm(k), angles)
        return [q, k, v]  # each (B, T, H, W, heads, d)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, unit: int, time_shift: int,
                spec: AttentionSpec, window_shift: bool,
                extra: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``(B, T, H, W, D)``; groups of ``unit`` frames shifted by ``time_shift``; ``extra`` = LR
        tokens ``(B, T, h, w, D)`` with their angles, joining the sequence (token_concat)."""
        T = x.shape[1]
        to_groups = "n u h w e d -> n e u h w d"
        q, k, v = (rearrange(group_frames(a, unit, time_shift)[0], to_groups) for a in self._qkv(x, angles))
        frame_valid = group_frames(x[:, :, :1, :1, :1], unit, time_shift)[1]  # (N, U)
        extra_out = None
        if extra is not None:
            eqkv = [rearrange(group_frames(a, unit, time_shift)[0], to_groups) for a in self._qkv(*extra)]
            out, eo = full_attention(q, k, v, frame_valid, tuple(eqkv))
            eo = ungroup_frames(rearrange(eo, "n e u h w d -> n u h w (e d)"), T, unit, time_shift)
            extra_out = self.proj(eo)
        else:
            out = attend(q, k, v, spec, frame_valid, window_shift)  # (N, heads, U, H, W, d)
        out = ungroup_frames(rearrange(out, "n e u h w d -> n u h w (e d)"), T, unit, time_shift)
        return self.proj(out), extra_out


class CrossAttention(nn.Module):
    """Tokens attend to (already projected) text tokens ``(B, L, D)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.q = nn.Linear(cfg.hidden, cfg.hidden)
        self.kv = nn.Linear(cfg.hidden, 2 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        shape = x.shape
        q = rearrange(self.q(x).reshape(shape[0], -1, shape[-1]), "b l (e d) -> b e l d", e=self.heads)
        k, v = rearrange(self.kv(text), "b l (n e d) -> n b e l d", n=2, e=self.heads)
        mask = None if text_mask is None else text_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, L, d)
        return self.proj(rearrange(out, "b e l d -> b l (e d)")).reshape(shape)


class DiTBlock(nn.Module):
    """adaLN-modulated spatial attention, unit attention, optional cross-attention and FFN."""

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.odd = index % 2 == 1
        D = cfg.hidden
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.spatial = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.temporal = SelfAttention(cfg)
        self.cross = CrossAttention(cfg) if cfg.text_dim else None
        self.norm3 = nn.LayerNorm(D, eps=1e-6) if cfg.text_dim else None
        self.norm4 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden_ffn = int(D * cfg.mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(D, hidden_ffn), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden_ffn, D))
        self.table = nn.Parameter(torch.randn(9, D) / D**0.5)  # adaLN-single per-block offsets
        self.spec = AttentionSpec(cfg.attention, cfg.window, cfg.topk, cfg.attention_path)

    @property
    def time_shift(self) -> int:
        """Frames by which this block moves the temporal unit borders (half a unit on odd blocks)."""
        return self.cfg.unit // 2 if self.odd else 0

    def forward(self, x: torch.Tensor, mod: torch.Tensor, angles: torch.Tensor,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                extra: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``(B, T, H, W, D)``, ``mod`` ``(B, 9, D)``; ``extra`` = (LR tokens, their angles)."""
        m = (mod + self.table).unbind(dim=1)  # 9 × (B, D)
        streams = [x] if extra is None else [x, extra[0]]

        def sublayer(norm, i: int) -> list[torch.Tensor]:
            return [modulate(norm(s), m[i], m[i + 1]) for s in streams]

        for attn, norm, i, unit, tshift, wshift in (
            (self.spatial, self.norm1, 0, 1, 0, self.odd),
            (self.temporal, self.norm2, 3, self.cfg.unit, self.time_shift, self.odd),
        ):
            h = sublayer(norm, i)
            ex = None if extra is None else (h[1], extra[1])
            out, eout = attn(h[0], angles, unit, tshift, self.spec, wshift, ex)
            streams[0] = streams[0] + m[i + 2].view(-1, 1, 1, 1, x.shape[-1]) * out
            if eout is not None:
                streams[1] = streams[1] + m[i + 2].view(-1, 1, 1, 1, x.shape[-1]) * eout
        if self.cross is not None:
            streams = [s + self.cross(self.norm3(s), text, text_mask) for s in streams]
        h = sublayer(self.norm4, 6)
        gate = m[8].view(-1, 1, 1, 1, x.shape[-1])
        streams = [s + gate * self.ffn(hh) for s, hh in zip(streams, h, strict=True)]
        return streams[0], (streams[1] if extra is not None else None)


# ----------------------------------------------------------------------------------------------- model


class VSRModel(nn.Module):
    """LR branch + noise augmentation + DiT; see the module docstring."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, D, p = cfg.latent_channels, cfg.hidden, cfg.patch
        self.token_concat = cfg.lr_branch == "token_concat"
        self.lr_branch = make_lr_branch(cfg.lr_branch, C, cfg.lr_hidden, cfg.lr_time_factor)
        self.embed = nn.Linear((C if self.token_concat else 2 * C) * p * p, D)
        self.lr_embed = nn.Linear(C, D) if self.token_concat else None
        self.t_embed = ScalarEmbed(D)
        self.s_embed = ScalarEmbed(D) if cfg.embed_noise_level else None
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(D, 9 * D))
        if cfg.text_dim:
            self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, D), nn.GELU(approximate="tanh"),
                                           nn.Linear(D, D))
            self.null_text = nn.Parameter(torch.randn(cfg.text_len, cfg.text_dim) / cfg.text_dim**0.5)
        self.blocks = nn.ModuleList(DiTBlock(cfg, i) for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_table = nn.Parameter(torch.randn(2, D) / D**0.5)
        self.final = nn.Linear(D, C * p * p)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.adaln[1].weight)  # modulation starts from the per-block tables alone
        nn.init.zeros_(self.final.weight)  # the velocity starts at zero
        nn.init.zeros_(self.final.bias)

    # ------------------------------------------------------------------------------- conditioning

    def cond_shape(self, lr_shape: tuple[int, ...], size: tuple[int, int]) -> tuple[int, ...]:
        """Shape of the conditioning (and of its augmentation noise) for an LR latent and HR latent size."""
        return tuple(lr_shape) if self.token_concat else (*lr_shape[:-2], *size)

    def condition(self, lr_latent: torch.Tensor, size: tuple[int, int], noise_level: torch.Tensor | float,
                  noise: torch.Tensor) -> torch.Tensor:
        """LR latent ``(B, C, T, h, w)`` -> noise-augmented conditioning ``c_s = (1 - s)·c + s·ε′``.

        ``size`` = (H, W) of the HR latent; ``noise`` has :meth:`cond_shape`. The result is at HR size,
        except for ``token_concat`` where it stays at LR size.
        """
        c = lr_latent if self.lr_branch is None else self.lr_branch(lr_latent, size)  # (B, C, T, H, W)
        s = torch.as_tensor(noise_level, dtype=c.dtype, device=c.device).reshape(-1, 1, 1, 1, 1)
        return (1 - s) * c + s * noise

    # ---------------------------------------------------------------------------------- velocity

    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                 noise_level: torch.Tensor | float | None = None, text: torch.Tensor | None = None,
                 text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted velocity ``(B, C, T, H, W)`` for ``z_t`` at times ``t`` ``(B,)`` given ``cond``."""
        cfg, p = self.cfg, self.cfg.patch
        B, _, T, H, W = z_t.shape
        t = torch.as_tensor(t, dtype=torch.float32, device=z_t.device).reshape(-1).expand(B)
        pad = (0, (-W) % p, 0, (-H) % p)
        x = z_t if self.token_concat else torch.cat([z_t, cond], dim=1)  # (B, 2C, T, H, W)
        x = F.pad(x, pad, mode="replicate") if any(pad) else x
        tokens = self.embed(rearrange(x, "b c t (h p) (w q) -> b t h w (c p q)", p=p, q=p))  # (B, T, h, w, D)
        hd = cfg.hidden // cfg.heads
        angles = rope_angles(T, *tokens.shape[2:4], hd, z_t.device)
        extra = None
        if self.token_concat:
            lr_tokens = self.lr_embed(rearrange(cond, "b c t h w -> b t h w c"))  # (B, T, h', w', D)
            step = (tokens.shape[2] / cond.shape[-2], tokens.shape[3] / cond.shape[-1])
            extra = (lr_tokens, rope_angles(T, *cond.shape[-2:], hd, z_t.device, step))
        emb = self.t_embed(t)  # (B, D)
        if self.s_embed is not None:
            s = torch.as_tensor(0.0 if noise_level is None else noise_level, dtype=torch.float32,
                                device=z_t.device).reshape(-1).expand(B)
            emb = emb + self.s_embed(s)
        mod = self.adaln(emb).view(B, 9, -1)  # (B, 9, D)
        ctx = None
        if cfg.text_dim:
            text = self.null_text.expand(B, -1, -1) if text is None else text
            ctx = self.text_proj(text.to(tokens.dtype))  # (B, L, D)
        for block in self.blocks:
            tokens, lr_out = block(tokens, mod, angles, ctx, text_mask,
                                   None if extra is None else (extra[0], extra[1]))
            if extra is not None:
                extra = (lr_out, extra[1])
        shift, scale = (self.final_table[None] + emb[:, None]).unbind(dim=1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))  # (B, T, h, w, C p p)
        out = rearrange(out, "b t h w (c p q) -> b c t (h p) (w q)", p=p, q=p)
        return out[..., :H, :W]

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, lr_latent: torch.Tensor,
                noise_level: torch.Tensor | float, aug_noise: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity for ``z_t`` ``(B, C, T, H, W)`` conditioned on the LR latent (training entry point)."""
        cond = self.condition(lr_latent, tuple(z_t.shape[-2:]), noise_level, aug_noise)
        return self.velocity(z_t, t, cond, noise_level, text, text_mask)


def build_model(cfg: ModelConfig | dict[str, Any]) -> VSRModel:
    """A freshly initialised model from a config (or its dict form, as stored in checkpoints)."""
    return VSRModel(cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_dict(cfg))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, model: VSRModel, ema: VSRModel | None = None, step: int = 0,
                    **extra: Any) -> None:
    """Write the checkpoint dict described in the module docstring (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "model_config": asdict(model.cfg), "model": model.state_dict(),
             "ema": None if ema is None else ema.state_dict(), "step": step, **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a folder holding ``checkpoint.pt`` or ``step-*/checkpoint.pt`` (latest wins)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "checkpoint.pt").is_file():
            return path / "checkpoint.pt"
        steps = sorted(p for p in path.glob("step-*/checkpoint.pt"))
        if steps:
            return steps[-1]
    raise UserError(f"no checkpoint at {path} (expected a .pt file, or a folder with checkpoint.pt "
                    "or step-*/checkpoint.pt)")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    prefer_ema: bool = True) -> tuple[VSRModel, dict[str, Any]]:
    """Model (eval mode, EMA weights when present and ``prefer_ema``) and the raw checkpoint dict."""
    from cascadevsr.train.checkpoint import read_file

    file = resolve_checkpoint(path)
    state = read_file(file)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{file} is not a cascadevsr VSR checkpoint (format {CHECKPOINT_FORMAT})")
    model = build_model(state["model_config"])
    weights = state["ema"] if prefer_ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.to(device).eval(), state


# ---------------------------------------------------------------------------------------------- FLOPs


def _linear(tokens: int, cin: int, cout: int) -> int:
    return 2 * tokens * cin * cout


def _conv(voxels: int, cin: int, cout: int, kernel: int = 3) -> int:
    return 2 * voxels * cin * cout * kernel**3


def model_flops(cfg: ModelConfig, frames: int, height: int, width: int,
                lr_size: tuple[int, int] | None = None, attention: str | None = None) -> dict[str, int]:
    """FLOPs of one forward pass (batch 1) at an HR latent of ``frames × height × width``.

    Returns ``{"attention": ..., "other": ..., "total": ...}``: attention cores (all kinds of both
    self-attentions, computed padding included) and everything else (projections, FFN, cross-attention,
    embeddings, LR branch convolutions). ``attention`` overrides ``cfg.attention``.
    """
    kind = attention or cfg.attention
    D, p, C = cfg.hidden, cfg.patch, cfg.latent_channels
    h, w = -(-height // p), -(-width // p)
    n = frames * h * w
    lr_h, lr_w = lr_size or (max(1, round(height / cfg.scale)), max(1, round(width / cfg.scale)))
    concat = cfg.lr_branch == "token_concat"
    if concat:  # LR tokens join every sequence (full attention only): one row of h·w + lr_h·lr_w tokens
        n += frames * lr_h * lr_w
        h, w = 1, h * w + lr_h * lr_w
    attn = 0
    other = _linear(n, (1 if concat else 2) * C * p * p, D) + _linear(n, D, C * p * p)
    for i in range(cfg.depth):
        shift = cfg.unit // 2 if i % 2 else 0
        attn += frames * attention_flops(kind, 1, h, w, D, cfg.window, cfg.topk)
        spans = temporal_units(frames, cfg.unit, shift)
        group = frames if frames <= cfg.unit else cfg.unit  # short edge units are padded to a full unit
        attn += len(spans) * attention_flops(kind, group, h, w, D, cfg.window, cfg.topk)
        other += 2 * (_linear(n, D, 3 * D) + _linear(n, D, D))
        other += _linear(n, D, int(D * cfg.mlp_ratio)) * 2
        if cfg.text_dim:
            other += _linear(n, D, D) * 2 + _linear(cfg.text_len, D, 2 * D) + 4 * n * cfg.text_len * D
    lr_px, hr_px = frames * lr_h * lr_w, frames * height * width
    if cfg.lr_branch == "conv_bilinear_conv":
        other += _conv(lr_px, C, cfg.lr_hidden) + _conv(hr_px, cfg.lr_hidden, C)
    elif cfg.lr_branch == "res3d_temporal":
        hid, f = cfg.lr_hidden, cfg.lr_time_factor
        other += _conv(lr_px, C, hid) + _conv(lr_px, hid, hid) + _conv(lr_px, C, hid, 1)  # Res3D(C, hid)
        other += _conv(lr_px, hid, hid * f) + _conv(lr_px, hid * f, hid * f) + _conv(lr_px, hid, hid * f, 1)
        other += 2 * _conv(hr_px * f, hid, hid)  # Res3D(hid, hid) on expanded time
        other += _conv(hr_px, hid * f, hid) + _conv(hr_px, hid, hid) + _conv(hr_px, hid * f, hid, 1)
        other += _conv(hr_px, hid, C, 1)
    return {"attention": int(attn), "other": int(other), "total": int(attn + other)}
