"""Attention over video tokens: one interface, three kinds, two paths.

Tokens reach :func:`attend` as *groups*: ``q, k, v`` of shape ``(N, heads, F, H, W, d)``, where a group is
one latent frame (spatial attention, F = 1) or one temporal unit (spatio-temporal attention, F = 5 by
default) of an H×W token grid. ``frame_valid`` ``(N, F)`` marks padding frames (a short unit at a clip's
end), which are never attended to. Kinds:

* ``full`` -- every token attends to every valid token of its group.
* ``swin`` -- 2D windows of ``window = (wh, ww)`` tokens spanning all F frames of the group (a 3D window,
  Video-Swin style); with ``shift`` the window grid moves by half a window (a re-partition with padding,
  not a cyclic roll, so no wrap-around masks are needed). A window larger than the grid is clipped to it.
* ``sparse_local`` (SimpleGVR §4.4) -- each frame's grid is cut into 2D window *units* of ``window``
  tokens; a unit attends to itself plus the ``topk`` most relevant other units anywhere in the group (any
  frame, future ones included). Relevance is MoBA-style and ours to choose (the paper does not give it):
  ``mean(queries of the unit) · mean(keys of the other unit)``, per head. ``topk >= units - 1`` is full
  attention.

Paths: ``reference`` builds the dense token mask and runs one masked SDPA (pure PyTorch, O(L²) memory,
the ground truth); ``fast`` runs SDPA over gathered blocks (windows, or a unit's selected key units), which
is O(L·window) in memory and runs on any device. Tests check the two agree. (FlexAttention with a block
mask is the other natural fast path; it works in eager mode on CPU in torch 2.13 but materialises the full
score matrix there, so gathered-block SDPA is what we use.)

Windows do not need to divide the grid: the grid is padded and padded tokens are masked out as keys.

:func:`attention_flops` counts the matmul FLOPs of each kind (2 per multiply-add; QKᵀ and AV, plus the
unit scoring of ``sparse_local``), for the benchmark and the model's FLOPs report.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

ATTENTION_KINDS = ("full", "swin", "sparse_local")
ATTENTION_PATHS = ("reference", "fast")


@dataclass(frozen=True)
class AttentionSpec:
    """Which attention to run and how."""

    kind: str = "full"
    """``full`` | ``swin`` | ``sparse_local``."""
    window: tuple[int, int] = (9, 12)
    """(rows, cols) of a window in tokens, for ``swin`` and ``sparse_local``."""
    topk: int = 1
    """``sparse_local``: how many other units each unit attends to, besides itself."""
    path: str = "fast"
    """``reference`` (dense mask, for checking) or ``fast`` (gathered blocks)."""

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in ATTENTION_KINDS:
            problems.append(f"unknown attention kind '{self.kind}'; choose from {list(ATTENTION_KINDS)}")
        if self.path not in ATTENTION_PATHS:
            problems.append(f"unknown attention path '{self.path}'; choose from {list(ATTENTION_PATHS)}")
        if len(self.window) != 2 or min(self.window) < 1:
            problems.append(f"window must be two positive ints, got {self.window}")
        if self.topk < 0:
            problems.append(f"topk must be >= 0, got {self.topk}")
        if problems:
            raise ValueError("; ".join(problems))


# ------------------------------------------------------------------------------------- temporal groups


def temporal_units(num_frames: int, unit: int, shift: int) -> list[tuple[int, int]]:
    """The [start, end) spans of the temporal partition: units of ``unit`` frames, borders moved by ``shift``.

    A clip no longer than one unit stays one group whatever the shift (as Swin does when the window covers
    the input), so a 17-frame clip (5 latent frames) keeps full spatio-temporal attention.
    """
    if num_frames <= unit:
        return [(0, num_frames)]
    borders = sorted({0, num_frames, *range(shift % unit or unit, num_frames, unit)})
    return list(itertools.pairwise(borders))


def group_frames(x: torch.Tensor, unit: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``x`` ``(B, T, ...)`` into padded temporal groups ``(B*G, U, ...)`` and a frame mask ``(B*G, U)``.

    Implements :func:`temporal_units`: the front is padded by ``unit - shift`` frames so that the borders
    land at ``shift + k*unit``, the back up to a whole number of units.
    """
    B, T = x.shape[:2]
    if unit >= T:
        return x, torch.ones(B, T, dtype=torch.bool, device=x.device)
    front = (unit - shift % unit) % unit
    back = (-(front + T)) % unit
    valid = torch.zeros(front + T + back, dtype=torch.bool, device=x.device)
    valid[front:front + T] = True
    pad = [0, 0] * (x.dim() - 2) + [front, back]
    xp = F.pad(x, pad)  # (B, G*U, ...)
    groups = xp.reshape(B * ((front + T + back) // unit), unit, *x.shape[2:])  # (B*G, U, ...)
    return groups, valid.reshape(-1, unit).repeat(B, 1)


def ungroup_frames(groups: torch.Tensor, num_frames: int, unit: int, shift: int) -> torch.Tensor:
    """Inverse of :func:`group_frames`: ``(B*G, U, ...)`` back to ``(B, T, ...)``."""
    if num_frames <= unit:
        return groups
    front = (unit - shift % unit) % unit
    total = front + num_frames + (-(front + num_frames)) % unit
    flat = groups.reshape(-1, total, *groups.shape[2:])  # (B, G*U, ...)
    return flat[:, front:front + num_frames]


# ------------------------------------------------------------------------------------------- masks and padding


def _safe(mask: torch.Tensor) -> torch.Tensor:
    """Rows with no allowed key would give NaN; they belong to padding queries, so allow everything there."""
    return mask | ~mask.any(dim=-1, keepdim=True)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and bool(mask.all()):
        mask = None  # lets SDPA pick its fused kernels
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else _safe(mask))


def _pad_grid(x: torch.Tensor, window: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
    """Pad dims H, W of ``(N, h, F, H, W, d)`` by ``offset`` before and up to a window multiple after."""
    H, W = x.shape[3:5]
    (wh, ww), (oh, ow) = window, offset
    bh, bw = (-(H + oh)) % wh, (-(W + ow)) % ww
    return F.pad(x, (0, 0, ow, bw, oh, bh))


def _token_valid(frame_valid: torch.Tensor, H: int, W: int, window: tuple[int, int],
                 offset: tuple[int, int]) -> torch.Tensor:
    """``(N, F, Hp, Wp)`` validity of the padded grid (real frame and real position)."""
    (wh, ww), (oh, ow) = window, offset
    Hp, Wp = H + oh + (-(H + oh)) % wh, W + ow + (-(W + ow)) % ww
    spatial = torch.zeros(Hp, Wp, dtype=torch.bool, device=frame_valid.device)
    spatial[oh:oh + H, ow:ow + W] = True
    return frame_valid[:, :, None, None] & spatial


def clip_window(window: tuple[int, int], H: int, W: int) -> tuple[int, int]:
    """The window clipped to the grid (a window larger than the grid is the whole grid)."""
    return min(window[0], H), min(window[1], W)


# ------------------------------------------------------------------------------------------ the kinds


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_valid: torch.Tensor | None = None,
                   extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Full attention over each group; ``extra`` = (q, k, v) ``(N, heads, F, h, w, d)`` joins the sequence.

    ``extra`` is how the ``token_concat`` LR branch adds its LR tokens. Returns (out, extra_out).
    """
    N, heads, Fr, H, W, d = q.shape
    qs, ks, vs = (t.reshape(N, heads, Fr * H * W, d) for t in (q, k, v))
    valid = None if frame_valid is None else frame_valid.repeat_interleave(H * W, dim=1)  # (N, L)
    n_extra = 0
    if extra is not None:
        eq, ek, ev = extra
        h, w = eq.shape[3:5]
        n_extra = Fr * h * w
        qs, ks, vs = (torch.cat([a, b.reshape(N, heads, n_extra, d)], dim=2)
                      for a, b in ((qs, eq), (ks, ek), (vs, ev)))
        if valid is not None:
            valid = torch.cat([valid, frame_valid.repeat_interleave(h * w, dim=1)], dim=1)
    mask = None if valid is None else valid[:, None, None, :]  # (N, 1, 1, L)
    out = _sdpa(qs, ks, vs, mask)  # (N, heads, L, d)
    main = out[:, :, : Fr * H * W].reshape(N, heads, Fr, H, W, d)
    extra_out = None
    if extra is not None:
        extra_out = out[:, :, Fr * H * W:].reshape(N, heads, Fr, *extra[0].shape[3:5], d)
    return main, extra_out


def swin_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_valid: torch.Tensor,
                   window: tuple[int, int], shift: bool, path: str = "fast") -> torch.Tensor:
    """Windowed attention with 3D windows (all frames × ``window``), optionally shifted by half a window."""
    N, heads, Fr, H, W, d = q.shape
    wh, ww = clip_window(window, H, W)
    # Shift only along axes the window does not already cover.
    offset = (wh // 2 if shift and wh < H else 0, ww // 2 if shift and ww < W else 0)
    valid = _token_valid(frame_valid, H, W, (wh, ww), offset)  # (N, F, Hp, Wp)
    qp, kp, vp = (_pad_grid(t, (wh, ww), offset) for t in (q, k, v))  # (N, h, F, Hp, Wp, d)
    Hp, Wp = qp.shape[3:5]
    if path == "reference":
        win_id = (torch.arange(Hp, device=q.device)[:, None] // wh) * (Wp // ww) + \
            torch.arange(Wp, device=q.device)[None, :] // ww  # (Hp, Wp)
        win_id = win_id.expand(Fr, Hp, Wp).reshape(-1)  # (L,)
        mask = (win_id[:, None] == win_id[None, :])[None, None] & valid.reshape(N, 1, 1, -1)  # (N, 1, L, L)
        out = _sdpa(*(t.reshape(N, heads, -1, d) for t in (qp, kp, vp)), mask)
        out = out.reshape(N, heads, Fr, Hp, Wp, d)
    else:
        part = "n h f (a p) (b q) d -> (n a b) h (f p q) d"
        qw, kw, vw = (rearrange(t, part, p=wh, q=ww) for t in (qp, kp, vp))
        mask = rearrange(valid, "n f (a p) (b q) -> (n a b) 1 1 (f p q)", p=wh, q=ww)
        out = _sdpa(qw, kw, vw, mask)
        out = rearrange(out, "(n a b) h (f p q) d -> n h f (a p) (b q) d", n=N, a=Hp // wh, f=Fr, p=wh, q=ww)
    return out[:, :, :, offset[0]:offset[0] + H, offset[1]:offset[1] + W]


def select_units(q_units: torch.Tensor, k_units: torch.Tensor, unit_valid: torch.Tensor,
                 token_valid: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MoBA-style unit selection: for each query unit, itself plus its ``topk`` best other units.

    ``q_units, k_units``: ``(N, h, U, S, d)``; ``token_valid`` ``(N, U, S)``; ``unit_valid`` ``(N, U)``.
    Returns ``index`` ``(N, h, U, 1+k)`` (column 0 is the unit itself) and ``ok`` ``(N, h, U, 1+k)``
    (False where fewer than k valid candidates existed; such slots repeat the unit itself).
    """
    N, heads, U = q_units.shape[:3]
    w = token_valid[:, None, :, :, None].to(q_units.dtype)  # (N, 1, U, S, 1)
    count = w.sum(dim=3).clamp(min=1)  # (N, 1, U, 1)
    q_mean = (q_units * w).sum(dim=3) / count  # (N, h, U, d)
    k_mean = (k_units * w).sum(dim=3) / count  # (N, h, U, d)
    score = q_mean @ k_mean.transpose(-1, -2)  # (N, h, U, U)
    eye = torch.eye(U, dtype=torch.bool, device=score.device)
    blocked = eye | ~unit_valid[:, None, None, :]  # self is added separately; empty units never
    score = score.masked_fill(blocked, float("-inf"))
    k = min(topk, U - 1)
    top = score.topk(k, dim=-1)  # (N, h, U, k)
    self_idx = torch.arange(U, device=score.device).view(1, 1, U, 1).expand(N, heads, U, 1)
    ok = torch.cat([torch.ones_like(self_idx, dtype=torch.bool), torch.isfinite(top.values)], dim=-1)
    # A slot with no valid candidate points at the unit itself (always allowed), never at a blocked unit.
    index = torch.where(ok, torch.cat([self_idx, top.indices], dim=-1), self_idx)  # (N, h, U, 1+k)
    return index, ok


def sparse_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_valid: torch.Tensor,
                           window: tuple[int, int], topk: int, path: str = "fast") -> torch.Tensor:
    """Each 2D window unit attends to itself plus its ``topk`` most relevant units in the group."""
    N, heads, Fr, H, W, d = q.shape
    wh, ww = clip_window(window, H, W)
    valid = _token_valid(frame_valid, H, W, (wh, ww), (0, 0))  # (N, F, Hp, Wp)
    part = "n h f (a p) (b q) d -> n h (f a b) (p q) d"
    qu, ku, vu = (rearrange(_pad_grid(t, (wh, ww), (0, 0)), part, p=wh, q=ww)
                  for t in (q, k, v))  # (N, h, U, S, d)
    token_valid = rearrange(valid, "n f (a p) (b q) -> n (f a b) (p q)", p=wh, q=ww)  # (N, U, S)
    unit_valid = token_valid.any(dim=-1)  # (N, U)
    U, S = qu.shape[2:4]
    index, ok = select_units(qu, ku, unit_valid, token_valid, topk)  # (N, h, U, 1+k)
    if path == "reference":
        allowed = torch.zeros(N, heads, U, U, dtype=torch.bool, device=q.device)
        allowed.scatter_(-1, index, True)  # (N, h, U, U)
        mask = allowed.repeat_interleave(S, dim=2).repeat_interleave(S, dim=3)  # (N, h, L, L)
        mask = mask & token_valid.reshape(N, 1, 1, U * S)
        out = _sdpa(*(t.reshape(N, heads, U * S, d) for t in (qu, ku, vu)), mask)
        out = out.reshape(N, heads, U, S, d)
    else:
        kk = index.shape[-1]
        gather_idx = index.reshape(N, heads, U * kk, 1, 1).expand(-1, -1, -1, S, d)
        kg = torch.gather(ku, 2, gather_idx).reshape(N, heads, U, kk * S, d)  # (N, h, U, (1+k)S, d)
        vg = torch.gather(vu, 2, gather_idx).reshape(N, heads, U, kk * S, d)
        kv_valid = torch.gather(token_valid[:, None].expand(-1, heads, -1, -1), 2,
                                index.reshape(N, heads, U * kk, 1).expand(-1, -1, -1, S))
        kv_valid = (kv_valid.reshape(N, heads, U, kk, S) & ok[..., None]).reshape(N, heads, U, 1, kk * S)
        out = _sdpa(qu, kg, vg, kv_valid)  # (N, h, U, S, d)
    out = rearrange(out, "n h (f a b) (p q) d -> n h f (a p) (b q) d", f=Fr, a=-(-H // wh), p=wh, q=ww)
    return out[:, :, :, :H, :W]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
           frame_valid: torch.Tensor | None = None, shift: bool = False) -> torch.Tensor:
    """Attention of the kind in ``spec`` over groups ``(N, heads, F, H, W, d)``; returns the same shape.

    ``shift`` (alternating blocks) moves the ``swin`` windows by half a window; the other kinds ignore it.
    """
    if frame_valid is None:
        frame_valid = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
    if spec.kind == "full":
        return full_attention(q, k, v, frame_valid)[0]
    if spec.kind == "swin":
        return swin_attention(q, k, v, frame_valid, spec.window, shift, spec.path)
    return sparse_local_attention(q, k, v, frame_valid, spec.window, spec.topk, spec.path)


# ------------------------------------------------------------------------------------------------ FLOPs


def attention_flops(kind: str, frames: int, height: int, width: int, dim: int,
                    window: tuple[int, int] = (9, 12), topk: int = 1) -> int:
    """Matmul FLOPs of one attention call over one group of ``frames × height × width`` tokens.

    ``dim`` = heads × head_dim. Counts QKᵀ and AV over what is actually computed (padding included), and
    for ``sparse_local`` the unit scoring; projections are counted by the model, not here.
    """
    L = frames * height * width
    if kind == "full":
        return 4 * L * L * dim
    wh, ww = clip_window(window, height, width)
    nh, nw = math.ceil(height / wh), math.ceil(width / ww)
    if kind == "swin":
        S = frames * wh * ww
        return nh * nw * 4 * S * S * dim
    if kind == "sparse_local":
        S, U = wh * ww, frames * nh * nw
        kk = 1 + min(topk, U - 1)
        return U * 4 * S * (kk * S) * dim + 2 * U * U * dim
    raise ValueError(f"unknown attention kind '{kind}'; choose from {list(ATTENTION_KINDS)}")
