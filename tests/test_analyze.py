"""``cascadevsr analyze``: the timestep analysis and the noise-augmentation sweep, on real clips.

One module-scoped fit serves every test: a tiny model (×2, noise augmentation U[0, 0.3], uniform timestep
sampler) fitted for 250 steps to one real pair, 5 frames of cityCC0 at 64×64 (LR 32×32 by area
downscaling, large enough for LPIPS). The LR folder holds that clip and a bikes crop it has not seen.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import scipy.fft
import torch
from conftest import real_crop

from cascadevsr import __version__
from cascadevsr.cli import main
from cascadevsr.errors import UserError
from cascadevsr.evaluate.noise_sweep import COLUMNS as SWEEP_COLUMNS
from cascadevsr.evaluate.noise_sweep import SweepCheckpoint, SweepConfig, read_sweep, run_noise_sweep
from cascadevsr.evaluate.run import parts_dir
from cascadevsr.evaluate.timesteps import (
    COLUMNS,
    TimestepConfig,
    dct2,
    density_from_curve,
    detail_variation,
    high_pass_mask,
    run_timestep_analysis,
)
from cascadevsr.fetch import sha256_file
from cascadevsr.train import flow
from cascadevsr.train.config import load_config
from cascadevsr.video import write_video

SCALE = 2
CLIPS = {"city": ("cityCC0.mpg", 40, 140, 300), "bikes": ("bikes.mp4", 10, 72, 200)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, Path]:
    """``checkpoint``, ``lr`` and ``gt`` folders (lossless 5-frame clips ``city`` and ``bikes``)."""
    from cascadevsr.latent import make_codec
    from cascadevsr.train.model import build_model, model_config, save_checkpoint
    from cascadevsr.train.overfit import FitConfig, fit_pair

    root = tmp_path_factory.mktemp("analyze")
    pairs = {}
    for name, (video, start, top, left) in CLIPS.items():
        hr = real_crop(video, start, 5, top, left, (64, 64))
        lr = np.stack([cv2.resize(f, (64 // SCALE, 64 // SCALE), interpolation=cv2.INTER_AREA) for f in hr])
        pairs[name] = hr, lr
        for sub, frames in (("gt", hr), ("lr", lr)):
            (root / sub).mkdir(exist_ok=True)
            write_video(root / sub / f"{name}.mkv", frames, 25, codec="ffv1")
    torch.manual_seed(0)
    cfg = model_config("tiny", scale=float(SCALE), noise_aug=(0.0, 0.3), noise_level=0.0, hidden=48, heads=2,
                       lr_hidden=16)
    model = build_model(cfg)
    fit_pair(model, make_codec(cfg.codec), *pairs["city"],
             FitConfig(steps=250, batch=4, lr=3e-3, clip=100.0, crop_frames=5, crop_size=16))
    ckpt = root / "checkpoint.pt"
    # The run config's crop size (LR px) makes inference use tiles of the training size, as for trainer runs.
    save_checkpoint(ckpt, model, step=250, config={"data": {"crop_size": 8}})
    return {"checkpoint": ckpt, "lr": root / "lr", "gt": root / "gt"}


# ------------------------------------------------------------------------------------------ timesteps


def test_timestep_analysis_writes_a_density_the_detail_aware_sampler_trains_with(fitted, tmp_path):
    out = tmp_path / "ts"
    assert main(["analyze", "timesteps", "--checkpoint", str(fitted["checkpoint"]), "--lr", str(fitted["lr"]),
                 "--steps", "6", "--out", str(out)]) == 0
    grid = flow.timestep_grid(6)
    density = json.loads((out / "density.json").read_text())
    assert density["edges"] == list(reversed(grid))  # the inference grid, increasing from 0 to 1
    rows = pd.read_parquet(out / "timesteps.parquet")
    assert list(rows.columns) == list(COLUMNS)
    assert set(rows["clip"]) == {"city", "bikes", "mean"}
    by_clip = {c: g.sort_values("step") for c, g in rows.groupby("clip")}
    for clip in ("city", "bikes"):
        g = by_clip[clip]
        assert g["step"].tolist() == list(range(6))
        assert g["t_from"].tolist() == grid[:-1] and g["t_to"].tolist() == grid[1:]
        assert (g["variation"].iloc[:-1] > 0).all()
        assert g["variation"].iloc[-1] == 0.0  # the last Euler step lands on its own x̂0
    mean = (by_clip["city"]["variation"].to_numpy() + by_clip["bikes"]["variation"].to_numpy()) / 2
    np.testing.assert_allclose(by_clip["mean"]["variation"], mean, rtol=1e-12)
    np.testing.assert_allclose(density["pdf"], (mean / mean.sum())[::-1], rtol=1e-12)

    # The density is the trainer's detail_aware sampler as `cascadevsr train --set` configures it.
    cfg = load_config("tiny", overrides=["sampler=detail_aware", f"sampler_options.pdf_file={out / 'density.json'}"])
    sampler = flow.make_timestep_sampler(cfg.sampler, **cfg.sampler_options)
    t = sampler.sample(20000, torch.Generator().manual_seed(0)).numpy()
    assert t.min() >= 0 and t.max() <= 1
    freq = np.histogram(t, bins=density["edges"])[0] / len(t)
    np.testing.assert_allclose(freq, density["pdf"], atol=0.015)
    assert freq[0] == 0  # no mass below the last step, where 6-step inference never runs the model

    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["checkpoint"]["sha256"] == sha256_file(fitted["checkpoint"])
    assert (analysis["steps"], analysis["cutoff"], analysis["seed"]) == (6, 0.5, 0)
    assert [c["name"] for c in analysis["clips"]] == ["bikes", "city"]
    assert analysis["packages"]["cascadevsr"] == __version__
    assert analysis["config"]["steps"] == 6


def test_dct_is_the_orthonormal_dct_ii_and_the_cutoff_keeps_only_what_lies_above_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 12, 16, generator=g, dtype=torch.float64)  # (C, T, H, W)
    np.testing.assert_allclose(dct2(x).numpy(), scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1)),
                               atol=1e-12)
    # A constant (DC-only) x̂0 whose level changes has no high-frequency variation (to float64 rounding).
    np.testing.assert_allclose(detail_variation([torch.full((2, 1, 12, 16), v) for v in (0.1, 0.5, 0.9)]), 0.0,
                               atol=1e-12)

    def with_coefficient(u: int, v: int, amounts: list[float]) -> list[torch.Tensor]:
        """x plus ``a`` × the unit-norm DCT basis image (u, v) in channel 0, for each ``a``."""
        one_hot = np.zeros((12, 16))
        one_hot[u, v] = 1.0
        basis = torch.from_numpy(scipy.fft.idctn(one_hot, type=2, norm="ortho"))
        out = []
        for a in amounts:
            y = x.clone()
            y[0, 0] += a * basis
            out.append(y)
        return out

    # Coefficient (5, 3) of a 12x16 frame sits at radial frequency sqrt((5/12)² + (3/16)²) ≈ 0.457.
    seq = with_coefficient(5, 3, [0.0, 1.0, 3.0])
    kept = 2 * int(high_pass_mask(12, 16, 0.4).sum())  # kept coefficients × channels
    np.testing.assert_allclose(detail_variation(seq, cutoff=0.4), [1 / kept**0.5, 2 / kept**0.5], rtol=1e-9)
    np.testing.assert_allclose(detail_variation(seq, cutoff=0.46), 0.0, atol=1e-12)
    # A low frequency (1, 0) changing is invisible at the default cut-off, visible below 1/12.
    low = with_coefficient(1, 0, [0.0, 1.0])
    assert detail_variation(low, cutoff=0.5)[0] < 1e-12 < detail_variation(low, cutoff=0.08)[0]
    mask = high_pass_mask(12, 16, 0.5)
    brute = [[(u / 12) ** 2 + (v / 16) ** 2 > 0.25 for v in range(16)] for u in range(12)]
    assert mask.tolist() == brute


def test_the_same_seed_gives_identical_variations_and_another_seed_does_not(fitted, tmp_path):
    def analyse(seed: int, name: str) -> pd.DataFrame:
        cfg = TimestepConfig(checkpoint=fitted["checkpoint"], lr=[fitted["lr"] / "city.mkv"], out=tmp_path / name,
                             steps=4, seed=seed)
        run_timestep_analysis(cfg)
        return pd.read_parquet(tmp_path / name / "timesteps.parquet")

    first, again, other = analyse(0, "a"), analyse(0, "b"), analyse(1, "c")
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["variation"].iloc[:-1], other["variation"].iloc[:-1])


def _interrupted_after_first_clip(cfg: TimestepConfig) -> None:
    def stop(name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_timestep_analysis(cfg, on_clip_done=stop)
    assert not cfg.out.exists() and len(list(parts_dir(cfg.out).glob("*.clip.json"))) == 1


def test_an_interrupted_timestep_analysis_resumes_to_the_bytes_of_an_uninterrupted_one(fitted, tmp_path):
    out = tmp_path / "ts"

    def config() -> TimestepConfig:
        return TimestepConfig(checkpoint=fitted["checkpoint"], lr=[fitted["lr"]], out=out, steps=3)

    assert run_timestep_analysis(config()).computed == ["bikes", "city"]
    uninterrupted = tmp_path / "uninterrupted"
    out.rename(uninterrupted)  # the outputs record --out, so both runs write to the same path

    _interrupted_after_first_clip(config())
    resumed = run_timestep_analysis(config())
    assert resumed.computed == ["city"]  # bikes came from its part
    for name in ("timesteps.parquet", "density.json", "analysis.json"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in uninterrupted.iterdir())
    assert not parts_dir(out).exists()


def _curve_changes(fitted) -> list[tuple[list[str], str]]:
    """Reruns of a 2-step analysis of ``fitted["lr"]`` that would change its curves, each with what the refusal
    must name."""
    lr = ["--lr", str(fitted["lr"]), "--steps", "2"]
    return [(["--lr", str(fitted["lr"]), "--steps", "3"], "--steps 2, but this run has 3"),
            ([*lr, "--seed", "1"], "--seed"),
            ([*lr, "--cutoff", "0.6"], "--cutoff"),
            ([*lr, "--frames", "0:3"], "--frames"),
            ([*lr, "--noise-level", "0.2"], "--noise-level"),
            (["--lr", str(fitted["gt"]), "--steps", "2"], str(fitted["gt"] / "bikes.mkv"))]


def test_resuming_with_settings_that_change_the_curves_is_refused_in_one_sentence(fitted, tmp_path, capsys):
    out = tmp_path / "ts"
    _interrupted_after_first_clip(TimestepConfig(checkpoint=fitted["checkpoint"], lr=[fitted["lr"]], out=out,
                                                 steps=2))
    base = ["analyze", "timesteps", "--checkpoint", str(fitted["checkpoint"]), "--out", str(out)]
    capsys.readouterr()
    for change, named in _curve_changes(fitted):
        assert main([*base, *change]) == 2, change
        err = capsys.readouterr().err
        assert named in err and "new --out" in err and err.count("\n") == 1, err
    assert not out.exists() and len(list(parts_dir(out).glob("*.clip.json"))) == 1
    # --floor only shapes the density: the same curves resume under another one.
    assert main([*base, "--lr", str(fitted["lr"]), "--steps", "2", "--floor", "0.1"]) == 0
    assert "resuming: 1 of 2 clip(s)" in capsys.readouterr().out


OUTPUTS = ("timesteps.parquet", "density.json", "analysis.json")


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def test_rerunning_a_finished_timestep_analysis_computes_nothing_and_writes_the_same_bytes(fitted, tmp_path):
    out = tmp_path / "ts"

    def config(**changes) -> TimestepConfig:
        return TimestepConfig(checkpoint=fitted["checkpoint"], lr=[fitted["lr"]], out=out, steps=3, **changes)

    assert run_timestep_analysis(config()).computed == ["bikes", "city"]
    finished = _outputs(out)
    assert run_timestep_analysis(config()).computed == []
    assert _outputs(out) == finished
    assert not parts_dir(out).exists()

    # --floor only shapes the density: the finished curves give the new one.
    floored = run_timestep_analysis(config(floor=0.2))
    assert floored.computed == []
    rows = pd.read_parquet(out / "timesteps.parquet")
    pd.testing.assert_frame_equal(rows, pd.read_parquet(io.BytesIO(finished["timesteps.parquet"])))
    mean = rows[rows["clip"] == "mean"].sort_values("step")
    assert json.loads((out / "density.json").read_text())["pdf"] == density_from_curve(
        flow.timestep_grid(3), mean["variation"].tolist(), floor=0.2)[1]
    # --max-clips only chooses clips: the first one is read back, not analysed again.
    one = run_timestep_analysis(config(max_clips=1))
    assert one.computed == [] and set(one.rows["clip"]) == {"bikes", "mean"}
    # Stopped after timesteps.parquet, before analysis.json: a clip listed without rows is analysed again.
    (out / "analysis.json").write_bytes(finished["analysis.json"])
    assert run_timestep_analysis(config()).computed == ["city"]
    assert _outputs(out) == finished


def test_a_finished_timestep_analysis_given_more_clips_analyses_only_those(fitted, tmp_path):
    out = tmp_path / "ts"

    def config(lr: Path) -> TimestepConfig:
        return TimestepConfig(checkpoint=fitted["checkpoint"], lr=[lr], out=out, steps=3)

    run_timestep_analysis(config(fitted["lr"]))
    uninterrupted = _outputs(out)
    for name in OUTPUTS:
        (out / name).unlink()

    assert run_timestep_analysis(config(fitted["lr"] / "bikes.mkv")).computed == ["bikes"]
    assert run_timestep_analysis(config(fitted["lr"])).computed == ["city"]
    assert _outputs(out) == uninterrupted

    # Interrupted after the added clip: its part and the finished outputs are both read, and nothing is
    # analysed twice.
    for name in OUTPUTS:
        (out / name).unlink()
    run_timestep_analysis(config(fitted["lr"] / "bikes.mkv"))
    analysed = []

    def stop(name: str) -> None:
        analysed.append(name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_timestep_analysis(config(fitted["lr"]), on_clip_done=stop)
    assert analysed == ["city"] and len(list(parts_dir(out).glob("*.clip.json"))) == 1
    assert [c["name"] for c in json.loads((out / "analysis.json").read_text())["clips"]] == ["bikes"]
    assert run_timestep_analysis(config(fitted["lr"])).computed == []
    assert _outputs(out) == uninterrupted
    assert not parts_dir(out).exists()


def test_rerunning_a_finished_analysis_with_settings_that_change_the_curves_is_refused(fitted, tmp_path, capsys):
    out = tmp_path / "ts"
    run_timestep_analysis(TimestepConfig(checkpoint=fitted["checkpoint"], lr=[fitted["lr"]], out=out, steps=2))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    base = ["analyze", "timesteps", "--checkpoint", str(fitted["checkpoint"]), "--out", str(out)]
    capsys.readouterr()
    for change, named in _curve_changes(fitted):
        assert main([*base, *change]) == 2, change
        err = capsys.readouterr().err
        assert named in err and "new --out" in err and f"delete the outputs in {out}" in err, err
        assert err.count("\n") == 1, err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert not parts_dir(out).exists()
    assert main([*base, "--lr", str(fitted["lr"]), "--steps", "2", "--floor", "0.1"]) == 0
    assert f"resuming: 2 of 2 clip(s) already analysed (2 in {out})" in capsys.readouterr().out

    # Outputs that do not record their curve settings cannot be checked, so they are not reused either.
    analysis = json.loads((out / "analysis.json").read_text())
    del analysis["curve_settings"]
    (out / "analysis.json").write_text(json.dumps(analysis))
    with pytest.raises(UserError, match="does not record the settings of its curves"):
        run_timestep_analysis(TimestepConfig(checkpoint=fitted["checkpoint"], lr=[fitted["lr"]], out=out, steps=2))


# ---------------------------------------------------------------------------------------- noise sweep


def test_noise_sweep_writes_one_row_set_per_checkpoint_level_clip_and_metric(fitted, tmp_path):
    out = tmp_path / "sweep.parquet"
    ckpt = fitted["checkpoint"]
    assert main(["analyze", "noise-aug", "--checkpoint", f"fit={ckpt}", "--checkpoint", f"relabelled={ckpt}@0.3-0.6",
                 "--lr", str(fitted["lr"]), "--gt", str(fitted["gt"]), "--levels", "0,0.9",
                 "--metrics", "lr_psnr,lr_lpips,psnr", "--steps", "4", "--out", str(out)]) == 0
    rows, protocol = read_sweep(out)
    assert list(rows.columns) == list(SWEEP_COLUMNS)
    key = ["method", "test_level", "clip", "metric"]
    sets = rows.groupby(key)
    assert sets.ngroups == 2 * 2 * 2 * 3
    for _, g in sets:  # five frames and the clip-level mean of each
        assert sorted(g["frame"].dropna().tolist()) == [0, 1, 2, 3, 4] and g["frame"].isna().sum() == 1
        assert g.loc[g["frame"].isna(), "value"].item() == pytest.approx(g["value"].dropna().iloc[:5].mean())
    ranges = rows.groupby("method")["train_range"].unique()
    assert ranges["fit"].tolist() == ["0-0.3"] and ranges["relabelled"].tolist() == ["0.3-0.6"]
    assert protocol["checkpoints"]["fit"]["train_range_source"] == "checkpoint"
    assert protocol["checkpoints"]["relabelled"]["train_range_source"] == "command line"
    assert protocol["checkpoints"]["fit"]["sha256"] == sha256_file(ckpt)
    clip_level = rows[rows["frame"].isna()].set_index(key)["value"]
    # The model learned to rebuild this clip from its conditioning at levels 0-0.3. At 0.9 the conditioning
    # keeps a tenth of the LR latent under nine times as much noise, a level it never saw, so its output
    # cannot follow the input as closely: LR consistency must drop, and by far.
    assert clip_level[("fit", 0.0, "city", "lr_psnr")] > clip_level[("fit", 0.9, "city", "lr_psnr")] + 3
    assert clip_level[("fit", 0.0, "city", "lr_lpips")] < clip_level[("fit", 0.9, "city", "lr_lpips")]
    # A label changes no number: the same file at the same level gives the same scores.
    fit, relabelled = clip_level.xs("fit"), clip_level.xs("relabelled")
    pd.testing.assert_series_equal(fit, relabelled)


def test_saved_sweep_outputs_score_the_same_through_evaluate(fitted, tmp_path):
    saved = tmp_path / "outputs"
    sweep = run_noise_sweep(SweepConfig(checkpoints=[SweepCheckpoint("fit", fitted["checkpoint"])],
                                        lr=fitted["lr"], gt=fitted["gt"], out=tmp_path / "sweep.parquet",
                                        levels=[0.3], metrics=["psnr"], steps=2, save_outputs=saved))
    assert sorted(p.name for p in (saved / "fit@0.3").iterdir()) == ["bikes.mp4", "city.mp4"]
    results = tmp_path / "eval.parquet"
    assert main(["evaluate", "--pred", f"fit@0.3={saved / 'fit@0.3'}", "--gt", str(fitted["gt"]),
                 "--metrics", "psnr", "--out", str(results)]) == 0
    from cascadevsr.evaluate.run import read_results

    scored = read_results(results)[0].dropna(subset=["frame"]).set_index(["clip", "frame"])["value"]
    swept = sweep.rows.dropna(subset=["frame"]).set_index(["clip", "frame"])["value"]
    pd.testing.assert_series_equal(scored.sort_index(), swept.sort_index(), check_names=False)


def test_an_interrupted_sweep_resumes_and_computes_nothing_twice(fitted, tmp_path):
    out = tmp_path / "sweep.parquet"

    def config() -> SweepConfig:
        return SweepConfig(checkpoints=[SweepCheckpoint("fit", fitted["checkpoint"])], lr=fitted["lr"], out=out,
                           levels=[0.0, 0.9], metrics=["lr_psnr"], steps=2)

    finished = []

    def stop_after_two(name: str, level: float, clip: str) -> None:
        finished.append((name, level, clip))
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_noise_sweep(config(), on_job_done=stop_after_two)
    assert not out.exists() and len(list(parts_dir(out).glob("*.parquet"))) == 2
    resumed = run_noise_sweep(config())
    first = {(n, lv, c, "lr_psnr") for n, lv, c in finished}
    everything = {("fit", lv, c, "lr_psnr") for lv in (0.0, 0.9) for c in CLIPS}
    assert not first & set(resumed.computed) and first | set(resumed.computed) == everything
    assert not resumed.rows.duplicated(["method", "test_level", "clip", "frame", "metric"]).any()
    assert not parts_dir(out).exists()
    assert run_noise_sweep(config()).computed == []
    # Another number of steps would change the stored numbers: refused rather than mixed in.
    with pytest.raises(UserError, match="steps=2"):
        run_noise_sweep(SweepConfig(checkpoints=config().checkpoints, lr=fitted["lr"], out=out, levels=[0.0],
                                    metrics=["lr_psnr"], steps=3))


# ------------------------------------------------------------------------------------------ bad input


def test_a_floor_mixes_the_uniform_density_in_so_every_interval_keeps_mass():
    grid = flow.timestep_grid(4)  # 1 -> 0
    variation = [0.6, 0.3, 0.1, 0.0]  # the last step (the output) never changes x̂0
    edges, literal = density_from_curve(grid, variation)
    assert edges == sorted(edges) and literal == pytest.approx([0.0, 0.1, 0.3, 0.6])
    _, floored = density_from_curve(grid, variation, floor=0.2)
    assert floored == pytest.approx([0.05, 0.13, 0.29, 0.53]) and sum(floored) == pytest.approx(1.0)


@pytest.mark.parametrize("args, message", [
    (["timesteps", "--checkpoint", "{tmp}/none.pt", "--lr", "{lr}", "--out", "{tmp}/o"], "does not exist"),
    (["timesteps", "--checkpoint", "{ckpt}", "--lr", "{lr}", "--floor", "1", "--out", "{tmp}/o"], "--floor"),
    (["timesteps", "--checkpoint", "{ckpt}", "--lr", "{lr}", "--cutoff", "1.5", "--out", "{tmp}/o"], "--cutoff"),
    (["noise-aug", "--checkpoint", "a={tmp}/none.pt", "--lr", "{lr}", "--metrics", "lr_psnr",
      "--out", "{tmp}/r.parquet"], "does not exist"),
    (["noise-aug", "--checkpoint", "a={ckpt}", "--lr", "{lr}", "--levels", "0,1.5", "--out", "{tmp}/r.parquet"],
     "1.5 is outside [0, 1]"),
    (["noise-aug", "--checkpoint", "a={ckpt}", "--lr", "{lr}", "--metrics", "lr_psnr,psnr",
      "--out", "{tmp}/r.parquet"], "give --gt"),
    (["noise-aug", "--checkpoint", "a={ckpt}@0.6-0.3", "--lr", "{lr}", "--out", "{tmp}/r.parquet"], "LO-HI"),
    (["noise-aug", "--checkpoint", "a={ckpt}", "--lr", "{lr}", "--metrics", "niqe", "--out", "{tmp}/r.parquet"],
     "NIQE needs frames"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(fitted, tmp_path, capsys, args, message):
    filled = [a.format(tmp=tmp_path, lr=fitted["lr"], ckpt=fitted["checkpoint"]) for a in args]
    assert main(["analyze", *filled]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.parquet").exists() and not (tmp_path / "o").exists()
