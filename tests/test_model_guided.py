"""Model-guided degradation (SimpleGVR §4.2.2) on real clips with a tiny random Wan base model: the noise and
Euler arithmetic, exact reproducibility, the CLI and corpus paths, and clear refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import clip_path, real_crop

from cascadevsr.base_model import FlowBaseModel, WanVelocity, load_base_model
from cascadevsr.degrade.base import Context
from cascadevsr.degrade.model_guided import ModelGuidedParams, apply_model_guided, draw_noise
from cascadevsr.degrade.pipeline import degrade_clip, load_preset, replay, to_float
from cascadevsr.errors import UserError
from cascadevsr.latent import PixelCodec
from cascadevsr.video import read_frames

diffusers = pytest.importorskip("diffusers")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cascadevsr", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory) -> Path:
    """A tiny random Wan base model as diffusers saves one: transformer/ and vae/ (4x time, 4x space, 4 ch)."""
    folder = tmp_path_factory.mktemp("wan") / "tiny-wan"
    torch.manual_seed(0)
    diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[True, True], latents_mean=[0.1, -0.2, 0.0, 0.3],
                               latents_std=[1.5, 2.0, 1.0, 0.5]).save_pretrained(folder / "vae")
    diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                    in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                    num_layers=1, rope_max_seq_len=32).save_pretrained(folder / "transformer")
    return folder


@pytest.fixture(scope="module")
def lr_frames() -> np.ndarray:
    """9 real frames of bikes (street scene with motion), 32x32 crop, float32 (T, H, W, 3) in [0, 1]."""
    return to_float(real_crop("bikes.mp4", 10, 9, 72, 200, (32, 32)))


def _video(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).unsqueeze(0)  # (1, T, 3, H, W)


# ----------------------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("t_start", [0.05, 0.3, 0.4, 1.0])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_euler_with_the_exact_velocity_returns_the_clean_latent(t_start, steps):
    g = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(2, 48, 3, 4, 4, generator=g), torch.randn(2, 48, 3, 4, 4, generator=g)
    levels = []

    def velocity(z, t):
        assert t.shape == (2,)
        levels.append(float(t[0]))
        return eps - z0  # d/dt of (1 - t) z0 + t eps

    model = FlowBaseModel(PixelCodec(), velocity)
    out = model.denoise((1 - t_start) * z0 + t_start * eps, t_start, steps, torch.Generator())
    torch.testing.assert_close(out, z0, atol=1e-5, rtol=0)
    np.testing.assert_allclose(levels, np.linspace(t_start, 0, steps + 1)[:-1], atol=1e-7)


def test_a_perfect_base_model_gives_back_the_codec_round_trip(wan_dir, lr_frames):
    codec = load_base_model(f"wan:{wan_dir}").codec
    z0 = codec.encode(_video(lr_frames))
    round_trip = codec.decode(z0)[0].permute(0, 2, 3, 1).numpy()
    for alpha in (0.0, 0.35):
        params = ModelGuidedParams(alpha=alpha, steps=4, seed=11)
        # The exact velocity of the straight path from z0 to this params' noise: only right if the op mixes
        # (1 - alpha) z0 + alpha eps with eps = draw_noise(seed).
        eps = draw_noise(tuple(z0.shape), params.seed)
        perfect = FlowBaseModel(codec, lambda z, t, eps=eps: (eps - z0).expand_as(z))
        out = apply_model_guided(lr_frames, params, Context((32, 32), (32, 32), base_model=perfect))
        np.testing.assert_allclose(out, round_trip, atol=1e-5)


def test_the_wan_velocity_is_the_transformer_output_at_1000_t(wan_dir):
    # diffusers' Wan pipeline: timestep = 1000 sigma and x <- x + (sigma_next - sigma) * pred, so pred is
    # eps - x0 like ours and only the time axis is rescaled.
    velocity = load_base_model(f"wan:{wan_dir}").velocity_fn
    assert isinstance(velocity, WanVelocity)
    z = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    want = velocity.transformer(hidden_states=z, timestep=torch.tensor([350.0]),
                                encoder_hidden_states=torch.zeros(1, 1, 16), return_dict=False)[0]
    torch.testing.assert_close(velocity(z, torch.tensor([0.35])), want)


# ----------------------------------------------------------------------------------------- the op


def test_the_op_keeps_the_shape_changes_the_frames_and_repeats_exactly(wan_dir, lr_frames):
    ctx = Context((32, 32), (32, 32), base_model=load_base_model(f"wan:{wan_dir}"))
    params = ModelGuidedParams(alpha=0.35, steps=4, seed=5)
    out = apply_model_guided(lr_frames, params, ctx)
    assert out.shape == lr_frames.shape and out.dtype == lr_frames.dtype == np.float32
    assert np.array_equal(out, apply_model_guided(lr_frames, params, ctx))
    # the same bytes whatever thread count the caller runs torch with (reductions round per thread split)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert np.array_equal(out, apply_model_guided(lr_frames, params, ctx))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert np.abs(out - lr_frames).mean() > 0.01
    # a side that is no multiple of the model's 8 px is padded and cropped back
    odd = apply_model_guided(lr_frames[:, :28, :30], params, ctx)
    assert odd.shape == (9, 28, 30, 3)
    with pytest.raises(UserError, match=r"1 \+ k\*4 frames .* got 8 .* 9"):
        apply_model_guided(lr_frames[:8], params, ctx)


def test_a_record_replays_bit_for_bit_and_names_its_base_model(wan_dir):
    hr = real_crop("carphone_pristine.mp4", 0, 9, 40, 50, (64, 64))
    model = load_base_model(f"wan:{wan_dir}")
    pair = degrade_clip(hr, load_preset("model_guided"), 3, scale=2, base_model=model)
    assert pair.lr.shape == (9, 32, 32, 3) and pair.lr.dtype == np.uint8
    record = json.loads(json.dumps(pair.record))
    assert record["base_model"]["spec"] == f"wan:{wan_dir}"
    assert len(record["base_model"]["transformer_config_sha256"]) == 64
    step = record["steps"][1]
    assert step["op"] == "model_guided" and 0.3 <= step["params"]["alpha"] <= 0.4
    assert np.array_equal(replay(hr, record, base_model=model), pair.lr)
    with pytest.raises(UserError, match="needs a base model: pass --base-model wan:DIR"):
        replay(hr, record)


def test_a_missing_or_incomplete_base_model_folder_is_one_sentence(tmp_path, wan_dir):
    absent = tmp_path / "absent"
    with pytest.raises(UserError) as err:
        load_base_model(f"wan:{absent}")
    assert str(absent) in str(err.value) and "transformer/" in str(err.value) and "\n" not in str(err.value)
    half = tmp_path / "half"
    (half / "transformer").mkdir(parents=True)
    (half / "transformer" / "config.json").write_text((wan_dir / "transformer" / "config.json").read_text())
    with pytest.raises(UserError, match=r"has no vae/config\.json"):
        load_base_model(f"wan:{half}")
    with pytest.raises(UserError, match="KIND:DIR"):
        load_base_model(str(wan_dir))
    bad = tmp_path / "bad-embeds"
    shutil.copytree(wan_dir, bad)
    torch.save(torch.zeros(3, 7), bad / "prompt_embeds.pt")
    with pytest.raises(UserError, match=r"must hold one tensor of shape \(L, 16\)"):
        load_base_model(f"wan:{bad}")


# ----------------------------------------------------------------------------------------- commands


def test_degrade_command_runs_with_a_base_model_and_refuses_without_one(wan_dir, tmp_path):
    clip = str(clip_path("carphone_pristine.mp4"))
    out = tmp_path / "pair"
    res = cli("degrade", clip, "--preset", "model_guided", "--base-model", f"wan:{wan_dir}", "--frames", "0:9",
              "--out", str(out))
    assert res.returncode == 0, res.stderr
    params = json.loads((out / "params.json").read_text())
    assert params["base_model"]["spec"] == f"wan:{wan_dir}"
    assert [s["op"] for s in params["steps"]] == ["resize_to_target", "model_guided"]
    assert params["lr_size"] == [36, 44]  # 144x176 / 4: not a multiple of 8, padded inside the op
    lr = replay(read_frames(clip, 0, 9), params, base_model=load_base_model(f"wan:{wan_dir}"))
    assert np.array_equal(read_frames(out / "lr.mp4"), lr)

    res = cli("degrade", clip, "--preset", "model_guided", "--frames", "0:9", "--out", str(tmp_path / "no"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "the 'model_guided' step needs a base model: pass --base-model wan:DIR" in res.stderr
    assert not (tmp_path / "no").exists()


def test_build_corpus_with_a_base_model_records_it_in_every_sample(wan_dir, tmp_path):
    out = tmp_path / "corpus"
    res = cli("build-corpus", "--input", str(clip_path("carphone_pristine.mp4")), "--out", str(out),
              "--workers", "0", "--hr-size", "64x64", "--scale", "2", "--clip-frames", "9",
              "--max-clips-per-video", "1", "--preset", "model_guided", "--base-model", f"wan:{wan_dir}",
              "--no-progress")
    assert res.returncode == 0, res.stderr
    tars = sorted(out.glob("shard-*.tar"))
    assert len(tars) == 1
    with tarfile.open(tars[0]) as tar:
        files = {m.name.partition(".")[2]: tar.extractfile(m).read() for m in tar}
    params = json.loads(files["params.json"])
    assert params["base_model"]["spec"] == f"wan:{wan_dir}"
    assert params["steps"][1]["op"] == "model_guided" and params["steps"][1]["applied"]
    from cascadevsr.datasets.loader import decode_clip

    assert decode_clip(files["lr.mp4"]).shape == (9, 32, 32, 3)
    assert decode_clip(files["hr.mp4"]).shape == (9, 64, 64, 3)
    assert json.loads((out / "config.json").read_text())["base_model"] == f"wan:{wan_dir}"


def test_build_corpus_refuses_a_model_guided_preset_without_a_base_model_before_any_work(wan_dir, tmp_path):
    common = ["build-corpus", "--input", str(clip_path("carphone_pristine.mp4")), "--workers", "0",
              "--hr-size", "64x64", "--scale", "2", "--clip-frames", "9", "--preset", "model_guided"]
    res = cli(*common, "--out", str(tmp_path / "none"))
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "the 'model_guided' step needs a base model" in res.stderr
    res = cli(*common, "--out", str(tmp_path / "absent"), "--base-model", f"wan:{tmp_path / 'nowhere'}")
    assert res.returncode == 2 and f"{tmp_path / 'nowhere'} does not exist" in res.stderr
    # 8 frames cannot be encoded by a VAE with a 4x time factor: refused from its config, not clip by clip.
    short = [*common[:-3], "8", "--preset", "model_guided"]
    res = cli(*short, "--out", str(tmp_path / "short"), "--base-model", f"wan:{wan_dir}")
    assert res.returncode == 2 and "--clip-frames 8 does not fit the base model's VAE" in res.stderr
    assert not any((tmp_path / d).exists() for d in ("none", "absent", "short"))
