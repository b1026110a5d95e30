"""End to end on a real clip: a tiny model fits one LR/HR pair, then ``cascadevsr upscale`` runs it.

One module-scoped fit (500 steps of 4 crops on the CPU) serves every test here. The pair is 9 frames of
cityCC0 (night city, fine detail), 24x24 HR crop, LR by 4x area downscaling. The fit sees 5-frame, 16x16
crops on the codec's grid, so the clip is longer than the training length and, run in tiles of the
training size, larger than one tile.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import real_crop

from cascadevsr.cli import main as cli_main
from cascadevsr.latent import PixelCodec, make_codec
from cascadevsr.train import flow
from cascadevsr.train.inference import InferenceConfig, to_float_frames, upscale_frames, windows
from cascadevsr.train.model import build_model, load_checkpoint, model_config, save_checkpoint
from cascadevsr.train.objective import training_loss
from cascadevsr.train.overfit import FitConfig, fit_pair
from cascadevsr.video import read_frames, write_video

SCALE = 4
# 3 latent frames in windows of 2 (the training length), a 12x12 HR latent in tiles of 8 (the training size)
TILING = ["--window", "2", "--window-overlap", "1", "--tile", "8", "--tile-overlap", "2"]
# Most training steps at high and mid noise, where a sample's structure is decided: the argument of the
# paper's detail-aware sampler, here as a logit-normal shifted towards noise.
SAMPLER = {"name": "logit_normal", "m": 1.5, "s": 1.0}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def eval_loss(model, codec, hr, lr) -> float:
    """Training loss on the four corner crops, 4 fixed draws of (t, noise, s) each: same draws before and after."""
    sampler = flow.make_timestep_sampler(SAMPLER["name"], m=SAMPLER["m"], s=SAMPLER["s"])
    g = torch.Generator().manual_seed(123)
    losses = []
    with torch.no_grad():
        for y in (0, 8):
            for x in (0, 8):
                hr_latent = codec.encode(to_float_frames(hr[:5, y:y + 16, x:x + 16])[None])
                ly, lx = y // SCALE, x // SCALE
                lr_latent = codec.encode(to_float_frames(lr[:5, ly:ly + 4, lx:lx + 4])[None])
                losses += [training_loss(model, hr_latent, lr_latent, sampler, g).item() for _ in range(4)]
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(checkpoint path, codec, HR uint8 (9, 24, 24, 3), LR uint8 (9, 6, 6, 3), loss before, loss after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine runs small ops far faster on one thread
    try:
        torch.manual_seed(0)
        hr = real_crop("cityCC0.mpg", 40, 9, 140, 300, (24, 24))
        lr = np.stack([cv2.resize(f, (24 // SCALE, 24 // SCALE), interpolation=cv2.INTER_AREA) for f in hr])
        cfg = model_config("tiny", scale=float(SCALE))
        codec = make_codec(cfg.codec)
        model = build_model(cfg)
        before = eval_loss(model, codec, hr, lr)
        fit = FitConfig(steps=500, batch=4, lr=2e-3, clip=100.0, crop_frames=5, crop_size=16,
                        sampler=SAMPLER["name"], sampler_options={"m": SAMPLER["m"], "s": SAMPLER["s"]})
        fit_pair(model, codec, hr, lr, fit)
        after = eval_loss(model, codec, hr, lr)
        path = tmp_path_factory.mktemp("fit") / "checkpoint.pt"
        save_checkpoint(path, model, step=fit.steps)
        yield path, codec, hr, lr, before, after
    finally:
        torch.set_num_threads(threads)


def test_tiny_model_overfits_a_real_clip_pair(fitted):
    _, _, _, _, before, after = fitted
    assert before / after >= 10, f"loss {before:.3f} -> {after:.3f}"


def test_upscale_command_beats_bicubic_on_the_fitted_clip(fitted, tmp_path, capsys):
    path, _, hr, lr, _, _ = fitted
    lr_video = tmp_path / "lr.mkv"
    write_video(lr_video, lr, fps=25, codec="ffv1")  # lossless, so the model sees exactly the LR it fitted
    out = tmp_path / "sr.mkv"
    code = cli_main(["upscale", str(lr_video), "--checkpoint", str(path), "--out", str(out), "--steps", "20",
                     "--codec", "ffv1", *TILING])
    assert code == 0
    printed = capsys.readouterr().out
    assert "s/frame" in printed and "peak memory" in printed
    sr = read_frames(out)
    assert sr.shape == hr.shape
    bicubic = np.stack([cv2.resize(f, (24, 24), interpolation=cv2.INTER_CUBIC) for f in lr])
    assert psnr(sr, hr) > psnr(bicubic, hr) + 1.0, (psnr(sr, hr), psnr(bicubic, hr))
    config = json.loads((tmp_path / "sr.config.json").read_text())
    assert config["inference"]["steps"] == 20 and config["output_size"] == [24, 24]


def test_streamed_segments_are_blended_into_one_video(fitted, tmp_path):
    path, _, hr, lr, _, _ = fitted
    lr_video = tmp_path / "lr.mkv"
    write_video(lr_video, lr, fps=25, codec="ffv1")
    out = tmp_path / "segments.mkv"
    # segments of 2 latent frames (5 video frames) sharing one: frames 0-4 and 4-8, blended at frame 4
    assert cli_main(["upscale", str(lr_video), "--checkpoint", str(path), "--out", str(out), "--steps", "20",
                     "--codec", "ffv1", "--segment", "2", "--segment-overlap", "1", *TILING]) == 0
    sr = read_frames(out)
    assert sr.shape == hr.shape
    bicubic = np.stack([cv2.resize(f, (24, 24), interpolation=cv2.INTER_CUBIC) for f in lr])
    assert psnr(sr, hr) > psnr(bicubic, hr) + 1.0, (psnr(sr, hr), psnr(bicubic, hr))


def _band_mask(length: int, spans: list[tuple[int, int]], factor: int) -> np.ndarray:
    """True where an output pixel lies in the overlap of two latent spans (``factor`` pixels per latent)."""
    count = np.zeros(length * factor, dtype=int)
    for s, e in spans:
        count[s * factor:e * factor] += 1
    return count > 1


def test_windows_and_tiles_leave_no_seams(fitted):
    path, codec, hr, lr, _, _ = fitted
    model, _ = load_checkpoint(path)
    icfg = InferenceConfig(steps=20, window=2, window_overlap=1, tile=8, tile_overlap=2)  # = TILING
    sr = (upscale_frames(model, codec, lr, icfg).clamp(0, 1) * 255).round().numpy()  # (9, 3, 24, 24)
    err = (sr - hr.transpose(0, 3, 1, 2).astype(np.float64)) ** 2
    space = _band_mask(12, windows(12, 8, 2), codec.space_factor)  # (24,) HR pixels in a tile overlap
    time_band = np.zeros(9, dtype=bool)
    time_band[1:5] = True  # latent frame 1 (video frames 1-4) is shared by both windows
    border = time_band[:, None, None] | space[None, :, None] | space[None, None, :]  # (9, 24, 24)
    border_err, interior_err = err.mean(axis=1)[border].mean(), err.mean(axis=1)[~border].mean()
    assert border.mean() > 0.3 and (~border).mean() > 0.1
    print(f"seams: border MSE {border_err:.1f}, interior MSE {interior_err:.1f}")
    assert border_err <= 1.1 * interior_err, (border_err, interior_err)
    bicubic = np.stack([cv2.resize(f, (24, 24), interpolation=cv2.INTER_CUBIC) for f in lr])
    assert psnr(sr.transpose(0, 2, 3, 1), hr) > psnr(bicubic, hr)


def test_upscale_reads_an_lr_latent_npy(fitted, tmp_path):
    path, codec, _, lr, _, _ = fitted
    latent = codec.encode(to_float_frames(lr)[None])[0].numpy()  # (C, 3, 3, 3)
    np.save(tmp_path / "lr.npy", latent)
    out = tmp_path / "from_latent.mkv"
    assert cli_main(["upscale", str(tmp_path / "lr.npy"), "--checkpoint", str(path), "--out", str(out),
                     "--steps", "4", "--codec", "ffv1"]) == 0
    assert read_frames(out).shape == (9, 24, 24, 3)


def test_upscale_refuses_bad_input_with_one_sentence(fitted, tmp_path, capsys):
    path = fitted[0]
    assert cli_main(["upscale", str(tmp_path / "absent.mp4"), "--checkpoint", str(path),
                     "--out", str(tmp_path / "o.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 2, 4, 4), np.float32))
    assert cli_main(["upscale", str(bad), "--checkpoint", str(path), "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert "must hold a latent" in err and err.count("\n") == 1  # no progress bar started
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00" * 64)
    assert cli_main(["upscale", str(corrupt), "--checkpoint", str(path), "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert "cannot read video" in err and err.count("\n") == 1
    assert cli_main(["upscale", str(bad), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o.mp4")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_pixel_codec_is_the_tiny_models_codec():
    assert make_codec(model_config("tiny").codec).spec() == PixelCodec(space_factor=2).spec()
