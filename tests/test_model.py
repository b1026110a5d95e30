"""The VSR model: config validation, variants, noise augmentation, temporal units, checkpoints, FLOPs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cascadevsr.errors import UserError
from cascadevsr.latent import PixelCodec
from cascadevsr.train import flow
from cascadevsr.train.attention import temporal_units
from cascadevsr.train.lr_branch import bilinear_frames
from cascadevsr.train.model import (
    MODEL_SIZES,
    ModelConfig,
    build_model,
    count_parameters,
    load_checkpoint,
    model_config,
    model_flops,
    rope_angles,
    save_checkpoint,
)
from cascadevsr.train.objective import training_loss


def _real_latents(frames, codec=None, hr=16, scale=4):
    """HR and LR pixel-codec latents of a real crop: HR ``hr`` px square, LR by area downscaling."""
    codec = codec or PixelCodec(space_factor=2)
    x = torch.from_numpy(frames[:5, :hr, :hr].copy()).permute(0, 3, 1, 2).float() / 255  # (5, 3, hr, hr)
    lr = torch.nn.functional.avg_pool2d(x, scale)
    return codec.encode(x[None]), codec.encode(lr[None])


def test_config_validation_names_every_bad_field():
    with pytest.raises(UserError) as err:
        ModelConfig(lr_branch="nope", attention="dense", heads=5, noise_aug=(0.6, 0.3), topk=-1)
    text = str(err.value)
    for name in ("lr_branch", "attention", "heads", "noise_aug", "topk"):
        assert name in text
    with pytest.raises(UserError, match="token_concat needs attention='full'"):
        ModelConfig(lr_branch="token_concat", attention="swin")
    with pytest.raises(UserError, match="unknown key 'hiden'"):
        ModelConfig.from_dict({"hiden": 3})
    with pytest.raises(UserError, match="depth: expected"):
        ModelConfig.from_dict({"depth": "2"})
    with pytest.raises(UserError, match="unknown model size"):
        model_config("huge")


def test_config_round_trips_through_its_dict_form():
    cfg = model_config("tiny", attention="sparse_local", window=(3, 5))
    again = ModelConfig.from_dict(dataclasses.asdict(cfg))
    assert again == cfg and again.window == (3, 5)
    assert cfg.latent_channels == PixelCodec(space_factor=2).channels == 48


def test_base_size_is_about_one_billion_parameters():
    with torch.device("meta"):
        model = build_model(model_config("base"))
    assert 0.8e9 < count_parameters(model) < 1.2e9
    assert set(MODEL_SIZES) == {"tiny", "small", "base"}


@pytest.mark.parametrize("overrides", [
    {},
    {"lr_branch": "res3d_temporal"},
    {"lr_branch": "interp"},
    {"lr_branch": "token_concat"},
    {"attention": "swin", "window": (3, 3)},
    {"attention": "sparse_local", "window": (2, 3), "topk": 1},
    {"text_dim": 16, "text_len": 3, "embed_noise_level": True},
    {"patch": 2},
])
def test_every_variant_maps_real_latents_to_a_velocity_and_trains(overrides, city_frames):
    cfg = model_config("tiny", **overrides)
    model = build_model(cfg)
    hr, lr = _real_latents(city_frames, hr=24)  # HR latent 12x12 (not a window multiple), LR 3x3
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 3, 16, generator=g) if cfg.text_dim else None
    loss = training_loss(model, hr, lr, flow.make_timestep_sampler("uniform"), g, text=text)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(gr is not None for gr in grads)
    assert model.final.weight.grad.abs().sum() > 0  # the zero-initialised head gets a signal
    eps = torch.randn(model.cond_shape(lr.shape, (12, 12)), generator=g)
    v = model(hr, torch.tensor([0.5]), lr, 0.4, eps)
    assert v.shape == hr.shape


def test_lr_branches_start_as_bilinear_and_handle_non_integer_factors(city_frames):
    _, lr = _real_latents(city_frames, hr=32)  # LR latent 4x4
    size = (11, 9)  # 2.75x and 2.25x
    for kind in ("conv_bilinear_conv", "res3d_temporal", "interp"):
        model = build_model(model_config("tiny", lr_branch=kind))
        up = model.lr_branch(lr, size)
        assert up.shape == (*lr.shape[:3], *size)
        torch.testing.assert_close(up, bilinear_frames(lr, size))  # learned parts start at zero


def test_noise_augmentation_blends_the_upsampled_latent_with_noise(city_frames):
    model = build_model(model_config("tiny", lr_branch="interp"))
    _, lr = _real_latents(city_frames, hr=32)
    eps = torch.randn(model.cond_shape(lr.shape, (16, 16)), generator=torch.Generator().manual_seed(0))
    c = bilinear_frames(lr, (16, 16))
    torch.testing.assert_close(model.condition(lr, (16, 16), 0.0, eps), c)
    torch.testing.assert_close(model.condition(lr, (16, 16), 1.0, eps), eps)
    mixed = model.condition(lr, (16, 16), torch.tensor([0.35]), eps)
    torch.testing.assert_close(mixed, 0.65 * c + 0.35 * eps)


def test_noise_level_reaches_the_network_only_when_embedded(city_frames):
    hr, lr = _real_latents(city_frames)
    for embed in (False, True):
        model = build_model(model_config("tiny", embed_noise_level=embed))
        torch.nn.init.normal_(model.final.weight, std=0.1)
        cond = torch.zeros(model.cond_shape(lr.shape, hr.shape[-2:]))
        a = model.velocity(hr, torch.tensor([0.5]), cond, 0.3)
        b = model.velocity(hr, torch.tensor([0.5]), cond, 0.6)
        assert torch.equal(a, b) != embed


def test_temporal_unit_borders_move_on_alternating_blocks_and_gradients_cross_them():
    cfg = model_config("tiny", depth=2, unit=5)
    model = build_model(cfg)
    first, second = model.blocks
    T = 10
    assert temporal_units(T, cfg.unit, first.time_shift) == [(0, 5), (5, 10)]
    assert temporal_units(T, cfg.unit, second.time_shift) == [(0, 2), (2, 7), (7, 10)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, T, 3, 3, cfg.hidden, generator=g, requires_grad=True)  # tokens (B, T, H, W, D)
    mod = torch.randn(1, 9, cfg.hidden, generator=g) * 0.1
    angles = rope_angles(T, 3, 3, cfg.hidden // cfg.heads, x.device)
    one, _ = first(x, mod, angles)
    (grad_one,) = torch.autograd.grad(one[:, 5].sum(), x, retain_graph=True)
    assert grad_one[:, 4].abs().max() == 0  # frames 4 and 5 sit in different units of block 0
    assert grad_one[:, 5:].abs().sum() > 0
    two, _ = second(one, mod, angles)
    (grad_two,) = torch.autograd.grad(two[:, 5].sum(), x)
    assert grad_two[:, 4].abs().max() > 0  # block 1's shifted unit [2, 7) carries it across
    assert grad_two[:, 0].abs().max() > 0  # and through block 0's unit [0, 5) further still


def test_checkpoint_round_trip_rebuilds_the_same_model_and_prefers_ema(tmp_path, city_frames):
    model = build_model(model_config("tiny", attention="sparse_local", window=(3, 3)))
    torch.nn.init.normal_(model.final.weight, std=0.1)
    ema = build_model(model.cfg)
    torch.nn.init.normal_(ema.final.weight, std=0.1)
    save_checkpoint(tmp_path / "run" / "step-00000010" / "checkpoint.pt", model, ema=ema, step=10)
    hr, lr = _real_latents(city_frames)
    eps = torch.randn(model.cond_shape(lr.shape, hr.shape[-2:]))
    for prefer_ema, reference in ((True, ema), (False, model)):
        loaded, state = load_checkpoint(tmp_path / "run", prefer_ema=prefer_ema)  # the folder resolves
        assert state["step"] == 10 and loaded.cfg == model.cfg
        with torch.no_grad():
            torch.testing.assert_close(loaded(hr, torch.tensor([0.4]), lr, 0.3, eps),
                                       reference(hr, torch.tensor([0.4]), lr, 0.3, eps))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent")


def test_text_dropout_of_one_trains_on_the_null_embedding(city_frames):
    model = build_model(model_config("tiny", text_dim=8, text_len=2, text_dropout=1.0))
    hr, lr = _real_latents(city_frames)
    text = torch.randn(1, 2, 8)
    sampler = flow.make_timestep_sampler("uniform")
    with_text = training_loss(model, hr, lr, sampler, torch.Generator().manual_seed(3), text=text)
    null = training_loss(model, hr, lr, sampler, torch.Generator().manual_seed(3), text=None)
    torch.testing.assert_close(with_text, null)


def test_model_flops_of_sparse_local_are_a_quarter_of_full_at_the_papers_shape():
    # 77 frames at 1080p through an 8x VAE (16 channels): 20 latent frames of 136x240 (padded), 2x2 patches
    cfg = model_config("base", codec={"name": "wan", "path": "unused"}, latent_channels=16)
    full = model_flops(cfg, 20, 136, 240, attention="full")
    sparse = model_flops(cfg, 20, 136, 240, attention="sparse_local")
    swin = model_flops(cfg, 20, 136, 240, attention="swin")
    assert sparse["other"] == full["other"] == swin["other"]
    assert sparse["total"] / full["total"] <= 0.25
    assert sparse["attention"] < swin["attention"] < full["attention"]
