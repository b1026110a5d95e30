"""Model-guided degradation (SimpleGVR §4.2.2) on real clips with a tiny random Wan base model: the noise and
Euler arithmetic, exact reproducibility, the denoised latent kept as the LR latent, the CLI and corpus paths,
and clear refusals."""

from __future__ import annotations

import io
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
from cascadevsr.datasets.builder import build_corpus
from cascadevsr.datasets.config import CorpusConfig
from cascadevsr.datasets.loader import decode_clip
from cascadevsr.degrade.base import Context
from cascadevsr.degrade.model_guided import (
    ModelGuidedParams,
    apply_model_guided,
    apply_model_guided_latent,
    draw_noise,
)
from cascadevsr.degrade.pipeline import degrade_clip, load_preset, replay, to_float
from cascadevsr.errors import UserError
from cascadevsr.latent import PixelCodec, same_codec
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


# ----------------------------------------------------------------------------------------- the denoised latent


def _one_thread(fn):
    """``fn()`` with one torch thread, as the op runs (reductions round differently per thread split)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def _encode(codec, frames: np.ndarray) -> np.ndarray:
    """Float ``(T, H, W, 3)`` in [0, 1] or uint8 frames -> latent ``(C, t, h, w)`` with ``codec``."""
    x = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames
    return _one_thread(lambda: codec.encode(_video(x))[0].numpy())


def test_the_op_hands_back_its_denoised_latent_not_the_encoding_of_its_frames(wan_dir, lr_frames):
    model = load_base_model(f"wan:{wan_dir}")
    ctx = Context((32, 32), (32, 32), base_model=model)
    params = ModelGuidedParams(alpha=0.35, steps=4, seed=5)
    frames, denoised = apply_model_guided_latent(lr_frames, params, ctx)
    assert np.array_equal(frames, apply_model_guided(lr_frames, params, ctx))
    assert denoised.codec == {"name": "wan", "path": str(wan_dir / "vae")}
    assert denoised.latent.dtype == np.float32 and denoised.latent.shape == (4, 3, 8, 8)

    def by_hand():  # encode, mix with the params' noise, Euler from 0.35 down to 0
        z0 = model.codec.encode(_video(lr_frames))
        z = 0.65 * z0 + 0.35 * draw_noise(tuple(z0.shape), params.seed)
        return model.denoise(z, 0.35, 4, torch.Generator())[0].numpy()

    np.testing.assert_array_equal(denoised.latent, _one_thread(by_hand))
    # Decoding and encoding again gives another latent: what storing the denoised latent itself avoids.
    again = _encode(model.codec, frames)
    assert np.abs(again - denoised.latent).mean() > 0.1 * np.abs(denoised.latent).mean()

    # 28 rows are no multiple of the model's 8: the op pads to 32, and the latent is cut back to 28 / 4 rows.
    _, cropped = apply_model_guided_latent(lr_frames[:, :28, :24], params, ctx)
    padded = np.pad(lr_frames[:, :28, :24], ((0, 0), (0, 4), (0, 0), (0, 0)), mode="edge")
    _, whole = apply_model_guided_latent(padded, params, ctx)
    assert cropped.latent.shape == (4, 3, 7, 6)
    np.testing.assert_array_equal(cropped.latent, whole.latent[:, :, :7])
    # 30 is no multiple of the codec's 4: no latent covers the clip exactly.
    assert apply_model_guided_latent(lr_frames[:, :30, :32], params, ctx)[1] is None


def _preset(tmp_path: Path, name: str, steps: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nsteps:\n{steps}")
    return load_preset(str(path))


RESIZE = "  - {op: resize_to_target, interpolation_prob: {area: 0.34, bilinear: 0.33, bicubic: 0.33}}\n"
GUIDED = "  - {op: model_guided, alpha: [0.3, 0.4], steps: 8}\n"


def test_the_pair_keeps_the_latent_only_while_no_later_step_changes_the_frames(wan_dir, tmp_path):
    hr = real_crop("carphone_pristine.mp4", 0, 9, 40, 50, (64, 64))
    model = load_base_model(f"wan:{wan_dir}")
    pair = degrade_clip(hr, load_preset("model_guided"), 3, scale=2, base_model=model)
    assert pair.lr_latent.shape == (4, 3, 8, 8) and pair.lr_latent.dtype == np.float32
    assert pair.lr_latent_codec == {"name": "wan", "path": str(wan_dir / "vae")}
    decoded = _one_thread(lambda: model.codec.decode(torch.from_numpy(pair.lr_latent))).permute(0, 2, 3, 1)
    assert np.abs(decoded.numpy() * 255 - pair.lr).max() <= 0.5 + 1e-3  # the LR clip is its rounded decoding

    # a skipped step changes nothing (the same draws as the shipped preset: coins are drawn for every step)
    skipped = degrade_clip(hr, _preset(tmp_path, "skipped", RESIZE + GUIDED + "  - {op: noise, prob: 0.0}\n"), 3,
                           scale=2, base_model=model)
    assert np.array_equal(skipped.lr_latent, pair.lr_latent) and np.array_equal(skipped.lr, pair.lr)
    # any pixel step after the model-guided one makes the latent stale
    after = degrade_clip(hr, _preset(tmp_path, "after", RESIZE + GUIDED + "  - {op: noise}\n"), 3, scale=2,
                         base_model=model)
    assert after.lr_latent is None and after.lr_latent_codec is None
    # and so does the final resize to the LR size after a model-guided step run at the HR size
    at_hr = degrade_clip(hr, _preset(tmp_path, "at_hr", GUIDED), 3, scale=2, base_model=model)
    assert at_hr.lr.shape == (9, 32, 32, 3) and at_hr.lr_latent is None
    # presets without a model-guided step never carry one
    assert degrade_clip(hr, load_preset("one_order"), 3, scale=2).lr_latent is None


def test_same_codec_compares_vae_folders_by_resolved_path_or_identical_files(wan_dir, tmp_path):
    vae = {"name": "wan", "path": str(wan_dir / "vae")}
    link = tmp_path / "link"
    link.symlink_to(wan_dir)
    assert same_codec(vae, {"name": "wan", "path": str(link / "vae")})
    copy = tmp_path / "copy"
    shutil.copytree(wan_dir / "vae", copy)
    assert same_codec(vae, {"name": "wan", "path": str(copy)})
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "latents_std": [1.0, 1.0, 1.0, 1.0]}))
    assert not same_codec(vae, {"name": "wan", "path": str(copy)})
    assert not same_codec(vae, {"name": "cogvideox", "path": str(wan_dir / "vae")})
    assert not same_codec(vae, {"name": "wan"})  # a VAE built in memory matches nothing
    assert not same_codec(vae, {"name": "wan", "path": str(tmp_path / "nowhere")})
    assert not same_codec(vae, {"name": "pixel"})
    assert same_codec({"name": "pixel"}, {"name": "pixel", "space_factor": 4, "time_factor": 4})
    assert not same_codec({"name": "pixel"}, {"name": "pixel", "space_factor": 2})


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
    model = load_base_model(f"wan:{wan_dir}")
    lr = replay(read_frames(clip, 0, 9), params, base_model=model)
    assert np.array_equal(read_frames(out / "lr.mp4"), lr)
    # the denoised latent beside the clips: 36x44 was padded to 40x48 in the op and its latent cut to 9x11
    pair = degrade_clip(read_frames(clip, 0, 9), load_preset("model_guided"), 0, scale=4, base_model=model)
    assert params["lr_latent"] == {"file": "lr_latent.npy", "source": "model_guided", "shape": [4, 3, 9, 11],
                                   "codec": {"name": "wan", "path": str(wan_dir / "vae")}}
    assert np.array_equal(np.load(out / "lr_latent.npy"), pair.lr_latent)
    assert "lr_latent.npy" in res.stdout
    res = cli("degrade", clip, "--preset", "one_order", "--frames", "0:9", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert not (out / "lr_latent.npy").exists() and "lr_latent" not in json.loads((out / "params.json").read_text())

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
    assert "lr_latent_source" not in params  # no latents asked for
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


# ----------------------------------------------------------------------------------------- corpus latents


def _build(tmp_path: Path, name: str, wan_dir: Path, preset: str, latent_codec: str,
           clips: int = 1) -> tuple[list[dict[str, bytes]], list[str]]:
    """A corpus of ``clips`` native 64x64 windows of carphone (9 frames, LR 32x32), one per shard; returns its
    samples' members by extension and the lines the build announced."""
    cfg = CorpusConfig(inputs=(str(clip_path("carphone_pristine.mp4")),), out=str(tmp_path / name), preset=preset,
                       base_model=f"wan:{wan_dir}", latent_codec=latent_codec, clip_frames=9,
                       max_clips_per_video=clips, hr_size=(64, 64), hr_mode="crop", scale=2.0, samples_per_shard=1,
                       workers=0)
    said: list[str] = []
    report = build_corpus(cfg, show_progress=False, announce=said.append)
    assert report.complete and report.stats["clips"]["samples"] == clips
    samples = []
    for tar_path in sorted((tmp_path / name).glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            samples.append({m.name.partition(".")[2]: tar.extractfile(m).read() for m in tar})
    return samples, said


def _latent(sample: dict[str, bytes], side: str) -> np.ndarray:
    return np.load(io.BytesIO(sample[f"{side}_latent.npy"]))


def _source_window(params: dict) -> np.ndarray:
    """The HR frames the worker degraded: a native window of the source (``--hr-mode crop``)."""
    top, left, h, w = params["hr_framing"]["crop"]
    return read_frames(params["source"]["path"], *params["source"]["frames"])[:, top : top + h, left : left + w]


def test_a_corpus_with_the_base_models_vae_stores_the_denoised_latent_and_the_trainer_reads_it(wan_dir, tmp_path):
    from cascadevsr.train.config import load_config
    from cascadevsr.train.trainer import train

    link = tmp_path / "same-wan"  # another path to the same folder is the same codec
    link.symlink_to(wan_dir)
    codec_text = f"wan:{link}/vae"
    samples, said = _build(tmp_path, "corpus", wan_dir, "model_guided", codec_text, clips=2)
    assert not [line for line in said if "latent" in line]
    model = load_base_model(f"wan:{wan_dir}")
    for sample in samples:
        params = json.loads(sample["params.json"])
        assert params["lr_latent_source"] == "model_guided"
        hr = _source_window(params)
        assert decode_clip(sample["hr.mp4"]).shape == hr.shape == (9, 64, 64, 3)
        pair = degrade_clip(hr, load_preset("model_guided"), params["seed"], scale=2, fps=params["source"]["fps"],
                            base_model=model)
        assert np.array_equal(decode_clip(sample["lr.mp4"]), pair.lr)  # the same clip as the worker's
        stored = _latent(sample, "lr")
        assert stored.dtype == np.float32 and stored.shape == (4, 3, 8, 8)
        assert np.array_equal(stored, pair.lr_latent)  # the op's denoised latent, bit for bit
        encoded = _encode(model.codec, decode_clip(sample["lr.mp4"]))
        assert np.abs(stored - encoded).mean() > 0.1 * np.abs(stored).mean()  # not the re-encoding
        np.testing.assert_allclose(_latent(sample, "hr"), _encode(model.codec, hr), atol=1e-5)  # HR: as before

    # The trainer takes such shards' latents as they are (same codec: nothing is encoded into its cache).
    cache = tmp_path / "cache"
    codec = json.dumps({"name": "wan", "path": f"{link}/vae"})
    cfg = load_config("tiny", overrides=[
        "cpu_threads=1", "model.hidden=48", "model.heads=2", "model.lr_hidden=16", f"model.codec={codec}",
        "model.scale=2", "data.num_frames=9", "data.num_workers=0", "data.latents=cache",
        f"data.cache_dir={cache}", f"data.shards={tmp_path / 'corpus'}", "steps=2", "val.every=0",
        "global_batch=2", "micro_batch=2"])
    summary = train(cfg, tmp_path / "run", show_progress=False)
    assert summary["step"] == 2 and summary["skipped"] == 0
    assert not cache.exists()


def test_a_step_after_the_model_guided_one_makes_the_corpus_encode_the_lr_frames(wan_dir, tmp_path):
    preset = tmp_path / "guided_then_noise.yaml"
    preset.write_text("name: guided_then_noise\nsteps:\n" + RESIZE + GUIDED + "  - {op: noise}\n")
    (sample,), said = _build(tmp_path, "corpus", wan_dir, str(preset), f"wan:{wan_dir}/vae")
    assert not [line for line in said if "latent" in line]
    params = json.loads(sample["params.json"])
    assert params["lr_latent_source"] == "encoded"
    codec = load_base_model(f"wan:{wan_dir}").codec
    np.testing.assert_allclose(_latent(sample, "lr"), _encode(codec, decode_clip(sample["lr.mp4"])), atol=1e-5)


def test_a_corpus_whose_latent_codec_is_not_the_base_models_vae_encodes_and_says_so_once(wan_dir, tmp_path):
    samples, said = _build(tmp_path, "corpus", wan_dir, "model_guided", "pixel", clips=2)
    notes = [line for line in said if "latent" in line]
    assert len(notes) == 1
    assert "--latent-codec pixel is not the base model's VAE" in notes[0] and f"wan:{wan_dir}/vae" in notes[0]
    for sample in samples:
        assert json.loads(sample["params.json"])["lr_latent_source"] == "encoded"
        lr = _latent(sample, "lr")
        assert lr.shape == (192, 3, 8, 8)
        back = PixelCodec().decode(torch.from_numpy(lr)).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
        assert np.array_equal(np.rint(back * 255).astype(np.uint8), decode_clip(sample["lr.mp4"]))
