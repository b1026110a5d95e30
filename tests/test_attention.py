"""Attention kinds: equivalences with full attention, reference vs fast path, selection, FLOPs."""

from __future__ import annotations

import pytest
import torch

from cascadevsr.latent import PixelCodec
from cascadevsr.train.attention import (
    AttentionSpec,
    attend,
    attention_flops,
    group_frames,
    select_units,
    temporal_units,
    ungroup_frames,
)


def _qkv(shape=(2, 2, 3, 7, 10, 8), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


def _real_qkv(frames, heads=2, d=8):
    """q, k, v (1, heads, F, H, W, d) projected from the pixel-codec latent of a real clip crop."""
    x = torch.from_numpy(frames[:7].copy()).permute(0, 3, 1, 2).float() / 255  # (7, 3, 128, 128)
    z = PixelCodec(space_factor=8, time_factor=3).encode(x).double()  # (576, 3, 16, 16)
    tokens = z.permute(1, 2, 3, 0)  # (3, 16, 16, 576)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        w = torch.randn(576, heads * d, generator=g, dtype=torch.float64) / 576**0.5
        out.append((tokens @ w).reshape(1, 3, 16, 16, heads, d).permute(0, 4, 1, 2, 3, 5).contiguous())
    return out


# padding frames (a short unit at a clip's end) must be ignored as keys
FRAME_VALID = torch.tensor([[True, True, True], [True, True, False]])


def _valid_close(a, b, frame_valid=FRAME_VALID, tol=1e-10):
    keep = frame_valid[:, None, :, None, None, None].expand_as(a)
    assert (a - b)[keep].abs().max() < tol


@pytest.mark.parametrize("path", ["reference", "fast"])
def test_sparse_local_with_topk_all_units_equals_full(path):
    q, k, v = _qkv()
    full = attend(q, k, v, AttentionSpec("full"), FRAME_VALID)
    spec = AttentionSpec("sparse_local", window=(3, 4), topk=10_000, path=path)
    sparse = attend(q, k, v, spec, FRAME_VALID)
    _valid_close(sparse, full)


@pytest.mark.parametrize("path", ["reference", "fast"])
def test_swin_with_one_window_equals_full(path):
    q, k, v = _qkv()
    full = attend(q, k, v, AttentionSpec("full"), FRAME_VALID)
    for window in ((7, 10), (50, 50)):  # exactly the grid, and larger than it (clipped)
        swin = attend(q, k, v, AttentionSpec("swin", window=window, path=path), FRAME_VALID, shift=True)
        _valid_close(swin, full)


@pytest.mark.parametrize("kind", ["swin", "sparse_local"])
@pytest.mark.parametrize("shift", [False, True])
def test_fast_path_matches_reference_path(kind, shift):
    q, k, v = _qkv()  # 7x10 grid: windows of 3x4 do not divide it, so padding is exercised
    ref = attend(q, k, v, AttentionSpec(kind, window=(3, 4), topk=2, path="reference"), FRAME_VALID, shift)
    fast = attend(q, k, v, AttentionSpec(kind, window=(3, 4), topk=2, path="fast"), FRAME_VALID, shift)
    _valid_close(fast, ref)
    assert not torch.isnan(fast).any()


def test_fast_path_matches_reference_on_real_clip_tokens_in_float32(city_frames):
    q, k, v = (t.float() for t in _real_qkv(city_frames))
    ones = torch.ones(1, 3, dtype=torch.bool)
    for kind in ("swin", "sparse_local"):
        ref = attend(q, k, v, AttentionSpec(kind, window=(4, 4), topk=1, path="reference"), ones, True)
        fast = attend(q, k, v, AttentionSpec(kind, window=(4, 4), topk=1, path="fast"), ones, True)
        torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)


def test_sparse_local_output_depends_only_on_itself_and_its_topk_units(city_frames):
    q, k, v = _real_qkv(city_frames)
    v.requires_grad_(True)
    spec = AttentionSpec("sparse_local", window=(4, 4), topk=1)
    out = attend(q, k, v, spec)  # 3 frames x 4x4 units of 4x4 tokens = 48 units
    unit = 5  # frame 0, unit row 1, col 1 -> tokens rows 4..7, cols 4..7
    out[:, :, 0, 4:8, 4:8].sum().backward()
    used = v.grad.abs().sum(dim=(0, 1, 5)) > 0  # (F, H, W)
    used_units = used.reshape(3, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(48, 16).any(dim=1)
    qu = q.reshape(1, 2, 3, 4, 4, 4, 4, 8).permute(0, 1, 2, 3, 5, 4, 6, 7).reshape(1, 2, 48, 16, 8)
    ku = k.reshape(1, 2, 3, 4, 4, 4, 4, 8).permute(0, 1, 2, 3, 5, 4, 6, 7).reshape(1, 2, 48, 16, 8)
    units, tokens = torch.ones(1, 48, dtype=torch.bool), torch.ones(1, 48, 16, dtype=torch.bool)
    index, _ = select_units(qu, ku, units, tokens, 1)
    expected = torch.zeros(48, dtype=torch.bool)
    expected[index[0, :, unit].flatten()] = True  # itself plus one unit per head
    assert torch.equal(used_units, expected)
    assert expected.sum() <= 3 and expected[unit]


def test_sparse_local_can_pick_a_unit_in_another_frame():
    # unit 0 of frame 0 is built to match unit 3 of frame 1 best: relevance spans the whole group
    q, k, _ = _qkv((1, 1, 2, 4, 4, 8), seed=3)
    k[:, :, 1, 2:4, 2:4] = q[:, :, 0, 0:2, 0:2].mean(dim=(2, 3), keepdim=True) * 10
    qu = q.reshape(1, 1, 2, 2, 2, 2, 2, 8).permute(0, 1, 2, 3, 5, 4, 6, 7).reshape(1, 1, 8, 4, 8)
    ku = k.reshape(1, 1, 2, 2, 2, 2, 2, 8).permute(0, 1, 2, 3, 5, 4, 6, 7).reshape(1, 1, 8, 4, 8)
    units, tokens = torch.ones(1, 8, dtype=torch.bool), torch.ones(1, 8, 4, dtype=torch.bool)
    index, ok = select_units(qu, ku, units, tokens, 1)
    assert index[0, 0, 0].tolist() == [0, 7] and ok.all()


def test_temporal_groups_round_trip_and_follow_the_shifted_partition():
    assert temporal_units(20, 5, 0) == [(0, 5), (5, 10), (10, 15), (15, 20)]
    assert temporal_units(20, 5, 2) == [(0, 2), (2, 7), (7, 12), (12, 17), (17, 20)]
    assert temporal_units(5, 5, 2) == [(0, 5)]  # one unit stays whole (17-frame training)
    x = torch.arange(2 * 20 * 3, dtype=torch.float32).reshape(2, 20, 3)
    for shift in (0, 2):
        groups, valid = group_frames(x, 5, shift)
        spans = temporal_units(20, 5, shift)
        assert groups.shape[0] == 2 * len(spans) and valid.sum() == 40
        first = groups[1][valid[1]]  # first group holds exactly the first span's frames
        assert torch.equal(first, x[0, spans[1][0]:spans[1][1]])
        assert torch.equal(ungroup_frames(groups, 20, 5, shift), x)


def test_flops_counter_orders_the_kinds_and_meets_the_papers_saving():
    # one 17-frame group at 1080p through an 8x VAE and 2x2 patches: 68x120 tokens, 5 latent frames
    full = attention_flops("full", 5, 68, 120, 1536)
    swin = attention_flops("swin", 5, 68, 120, 1536, window=(8, 8))
    sparse = attention_flops("sparse_local", 5, 68, 120, 1536, window=(9, 12), topk=1)
    assert sparse < swin < full
    assert sparse / full < 0.25
    one_window = attention_flops("swin", 5, 68, 120, 64, window=(68, 120))
    assert one_window == attention_flops("full", 5, 68, 120, 64)
    assert attention_flops("sparse_local", 1, 18, 24, 64, (9, 12), topk=3) == \
        4 * 4 * 108 * 432 * 64 + 2 * 16 * 64  # 4 units x (108 queries x 4 units of keys), plus scoring
    with pytest.raises(ValueError, match="unknown attention kind"):
        attention_flops("nope", 1, 2, 2, 8)
