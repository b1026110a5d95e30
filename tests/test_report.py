"""``cascadevsr report`` on real evaluation results: tables, plots, leaderboard page and analysis figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import real_crop

from cascadevsr.cli import main
from cascadevsr.degrade.pipeline import degrade_clip, load_preset
from cascadevsr.evaluate.run import PROTOCOL_KEY, EvalConfig, MethodSource, read_results, run_evaluation
from cascadevsr.reports import inputs
from cascadevsr.video import write_video

# Two real crops of cityCC0, 3 frames of 96×192; LR from the realesrgan preset at ×4.
CLIPS = {"city_a": (40, 150, 300), "city_b": (100, 220, 420)}
SIZE = (96, 192)
METRICS = "ssim,tdiff,psnr"  # tdiff is lower-is-better; not in name order, which is how rows are stored


def _write_clips(folder: Path, clips: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frames in clips.items():
        write_video(folder / f"{name}.mp4", frames, 25, codec="ffv1")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Real results files from ``cascadevsr evaluate``.

    ``a``: bicubic and lanczos run by the harness (measured runtimes); ``b``: a submission ``blur_x4``
    (blurred ground truth) with a self-reported runtime, under the same protocol; ``c``: lanczos with a
    crop border of 4, a different protocol. Also the GT and bicubic folders for the analysis inputs.
    """
    root = tmp_path_factory.mktemp("report")
    hr = {n: real_crop("cityCC0.mpg", s, 3, t, left, SIZE) for n, (s, t, left) in CLIPS.items()}
    lr = {n: degrade_clip(f, load_preset("realesrgan"), seed=7, scale=4).lr for n, f in hr.items()}
    gt, lr_dir = _write_clips(root / "gt", hr), _write_clips(root / "lr", lr)
    sub = _write_clips(root / "blur_x4", {n: np.stack([cv2.GaussianBlur(x, (0, 0), 1.5) for x in f])
                                          for n, f in hr.items()})
    (sub / "meta.json").write_text(json.dumps({"method": "blur_x4", "runtime_s_per_frame": 0.5}))
    common = ["evaluate", "--gt", str(gt), "--metrics", METRICS]
    assert main([*common, "--lr", str(lr_dir), "--baseline", "bicubic,lanczos", "--out", str(root / "a.parquet")]) == 0
    assert main([*common, "--submission", str(sub), "--out", str(root / "b.parquet")]) == 0
    assert main([*common, "--lr", str(lr_dir), "--baseline", "lanczos", "--crop-border", "4",
                 "--out", str(root / "c.parquet")]) == 0
    return {"root": root, "a": root / "a.parquet", "b": root / "b.parquet", "c": root / "c.parquet", "gt": gt,
            "lr": lr_dir, "hr": hr, "lr_frames": lr}


@pytest.fixture(scope="module")
def report(runs) -> Path:
    out = runs["root"] / "rep"
    assert main(["report", str(runs["a"]), str(runs["b"]), "--out", str(out), "--per-clip",
                 "--baseline", "bicubic"]) == 0
    return out


def _markdown_table(text: str) -> pd.DataFrame:
    """The first Markdown table of ``text`` as strings (header → columns)."""
    lines = [ln for ln in text.split("\n\n")[0].splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def _number(cell: str) -> float:
    return float(cell.strip("*†"))


def _clip_means(*paths: Path) -> pd.DataFrame:
    rows = pd.concat([read_results(p)[0] for p in paths])
    return rows[rows["frame"].isna()].groupby(["method", "metric"])["value"].mean().unstack("metric")


def test_markdown_table_holds_the_clip_means_of_the_results(runs, report):
    text = (report / "leaderboard.md").read_text()
    table = _markdown_table(text.split("\n", 2)[2]).set_index("method")
    expected = _clip_means(runs["a"], runs["b"])
    assert list(table.index) == ["bicubic", "lanczos", "blur_x4"]
    assert list(table.columns) == ["ssim ↑", "tdiff ↓", "psnr ↑", "runtime_s_per_frame ↓"]  # as asked
    for col in table.columns:
        metric = col.split()[0]
        for method, cell in table[col].items():
            decimals = len(cell.strip("*†").split(".")[1])
            want = 0.5 if (metric, method) == ("runtime_s_per_frame", "blur_x4") else expected.loc[method, metric]
            assert _number(cell) == pytest.approx(want, abs=0.51 * 10**-decimals)
    assert table.loc["blur_x4", "runtime_s_per_frame ↓"].endswith("†")  # reported, not measured
    assert "mean over clips of the clip-level values" in text and "2 clip(s) per method" in text
    # the protocol is printed under the table
    assert "Crop border: 0 px" in text and "Y of BT.601" in text and "Metric tdiff: version 1" in text


def test_best_cell_is_bold_on_the_right_side_for_each_direction(runs, report):
    text = (report / "leaderboard.md").read_text()
    table = _markdown_table(text.split("\n", 2)[2]).set_index("method")
    expected = _clip_means(runs["a"], runs["b"])
    bold = {col: [m for m, c in table[col].items() if c.startswith("**")] for col in table.columns}
    assert bold["tdiff ↓"] == [expected["tdiff"].idxmin()]
    assert bold["psnr ↑"] == [expected["psnr"].idxmax()]
    assert expected["tdiff"].idxmin() != expected["tdiff"].idxmax()
    per_clip = _markdown_table((report / "per_clip.md").read_text().split("\n", 2)[2])
    for _, group in per_clip.groupby("clip"):
        assert sum(c.startswith("**") for c in group["psnr ↑"]) == 1  # best per clip, not overall


def test_csv_round_trips_through_pandas(runs, report):
    table = pd.read_csv(report / "leaderboard.csv").set_index("method")
    expected = _clip_means(runs["a"], runs["b"])
    for metric in ("psnr", "ssim", "tdiff"):
        assert table[metric].to_dict() == pytest.approx(expected[metric].to_dict(), rel=1e-12)
    delta = pd.read_csv(report / "vs_bicubic.csv").set_index("method")
    want = expected.loc["lanczos", "psnr"] - expected.loc["bicubic", "psnr"]
    assert delta.loc["lanczos", "psnr"] == pytest.approx(want)
    assert "bicubic" not in delta.index


def test_latex_is_booktabs_with_escaped_names_and_balanced_braces(report):
    tex = (report / "leaderboard.tex").read_text()
    body = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("%"))
    unescaped = body.replace(r"\{", "").replace(r"\}", "")
    assert unescaped.count("{") == unescaped.count("}")
    assert re.search(r"(?<!\\)_", body) is None  # every underscore escaped
    assert r"blur\_x4" in body and r"runtime\_s\_per\_frame $\downarrow$" in body
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrrr}", r"\end{table}"):
        assert cmd in body
    rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert len(rows) == 4 and all(ln.count("&") == 4 for ln in rows)
    assert r"\textbf{" in body
    assert "% Crop border: 0 px" in tex  # the protocol, as comments


def test_html_leaderboard_is_self_contained(report):
    page = (report / "leaderboard.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # bars and quality-vs-speed embedded
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "//" not in text and "http" not in text.lower()  # no URL of any kind, nothing to fetch
    assert "<link" not in text and "<script src" not in text
    for method in ("bicubic", "lanczos", "blur_x4"):
        assert f"<td>{method}</td>" in page
    assert 'class="num best"' in page and "sortable" in page


def test_plots_are_non_empty_pngs_and_index_links_every_output(report):
    for name in ("bars.png", "quality_vs_speed.png"):
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert cv2.imread(str(report / name)) is not None
    index = (report / "index.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", index)
    assert {"bars.png", "quality_vs_speed.png", "leaderboard.html", "leaderboard.tex", "per_clip.csv",
            "report.json"} <= set(links)
    assert all((report / link).is_file() for link in links)
    record = json.loads((report / "report.json").read_text())
    assert record["command"][:2] == ["cascadevsr", "report"] and "--per-clip" in record["command"]
    assert record["command"][record["command"].index("--baseline") + 1] == "bicubic"
    assert record["metrics"]["results"] == ["ssim", "tdiff", "psnr"]
    assert {i["kind"] for i in record["inputs"]} == {"results"}


def test_mixed_protocols_are_refused_unless_allowed(runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["report", str(runs["a"]), str(runs["c"]), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "a.parquet and c.parquet" in err and "crop_border (0 vs 4)" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    # the same method in two files with different numbers cannot be merged even when protocols may mix
    assert main(["report", str(runs["a"]), str(runs["c"]), "--out", str(tmp_path / "r"),
                 "--allow-mixed-protocols"]) == 2
    assert "'lanczos' has different" in capsys.readouterr().err
    assert main(["report", str(runs["b"]), str(runs["c"]), "--out", str(tmp_path / "r"),
                 "--allow-mixed-protocols", "--format", "md"]) == 0
    text = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "0 px (applies to ssim, psnr) (b.parquet); 4 px" in text


def test_bad_input_is_one_sentence_and_exit_2(runs, tmp_path, capsys):
    capsys.readouterr()
    missing = tmp_path / "nope.parquet"
    assert main(["report", str(missing), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"input file {missing} does not exist." in err and err.count("\n") == 1
    (tmp_path / "junk.parquet").write_text("not parquet")
    assert main(["report", str(tmp_path / "junk.parquet"), "--out", str(tmp_path / "r")]) == 2
    assert "cannot read" in capsys.readouterr().err
    for extra, message in ((["--baseline", "nearest"], "'nearest' is not a method"),
                           (["--metrics", "psnr,musiq"], "'musiq' is not in the inputs"),
                           (["--format", "md,docx"], "unknown format(s) ['docx']")):
        assert main(["report", str(runs["a"]), "--out", str(tmp_path / "r"), *extra]) == 2
        assert message in capsys.readouterr().err


def test_a_metric_from_another_tool_renders_without_arrow_or_bold(runs, tmp_path):
    rows = read_results(runs["a"])[0]
    other = rows[rows["metric"] == "psnr"].assign(metric="vendor_score", value=lambda d: d["value"] / 10)
    path = tmp_path / "vendor.parquet"
    pq.write_table(pa.Table.from_pandas(other, preserve_index=False), path)  # no protocol recorded
    assert main(["report", str(runs["a"]), str(path), "--out", str(tmp_path / "r"), "--metrics",
                 "vendor_score,psnr", "--format", "md,csv", "--no-plots"]) == 0
    table = _markdown_table((tmp_path / "r" / "leaderboard.md").read_text().split("\n", 2)[2])
    assert list(table.columns)[:3] == ["method", "vendor_score", "psnr ↑"]
    assert not any(c.startswith("**") for c in table["vendor_score"])
    assert not (tmp_path / "r" / "bars.png").exists()


def test_names_shared_with_the_evaluation_stage_match():
    from cascadevsr.evaluate import noise_sweep, timesteps

    assert inputs.PROTOCOL_KEY == PROTOCOL_KEY
    assert (*inputs.RESULTS_COLUMNS, *inputs.NOISE_COLUMNS) == noise_sweep.COLUMNS
    assert inputs.TIMESTEP_MEAN_CLIP == timesteps.MEAN_CLIP
    assert inputs.TIMESTEP_COLUMNS == timesteps.COLUMNS


# ------------------------------------------------------------------------------------- analysis inputs


def _timestep_rows(hr: dict[str, np.ndarray], steps: int = 10) -> tuple[pd.DataFrame, dict]:
    """A small real timestep analysis: the 'predicted clean frame' at t is the real frame blurred with
    σ = 4t, and the variation is the change of its high-frequency DCT coefficients between steps."""
    ts = np.linspace(1.0, 0.0, steps + 1)

    def high(frame: np.ndarray, t: float) -> np.ndarray:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
        blurred = cv2.GaussianBlur(gray, (0, 0), 4 * t) if t > 0 else gray
        coef = cv2.dct(blurred)
        u, v = np.meshgrid(np.arange(coef.shape[1]), np.arange(coef.shape[0]))
        return coef[(u + v) > min(coef.shape) // 2]

    records = []
    for clip, frames in hr.items():
        for i in range(steps):
            d = np.linalg.norm(high(frames[0], ts[i + 1]) - high(frames[0], ts[i]))
            records.append((clip, i, float(ts[i]), float(ts[i + 1]), float(d)))
    rows = pd.DataFrame.from_records(records, columns=list(inputs.TIMESTEP_COLUMNS))
    mean = rows.groupby("step", as_index=False).agg(t_from=("t_from", "first"), t_to=("t_to", "first"),
                                                     variation=("variation", "mean"))
    rows = pd.concat([rows, mean.assign(clip=inputs.TIMESTEP_MEAN_CLIP)], ignore_index=True)  # as analyze writes
    weights = mean["variation"].to_numpy()[::-1]  # bins in ascending t
    return rows, {"edges": ts[::-1].tolist(), "pdf": (weights / weights.sum()).tolist()}


def _noise_rows(runs: dict, tmp_path: Path) -> Path:
    """A small real noise-augmentation sweep: a 'model' per training range whose bicubic output carries
    noise growing with the test level (scaled by the range), scored by a real evaluation run."""
    methods, levels = [], {}
    for rng, scale in (("0.0-0.3", 1.0), ("0.3-0.6", 0.6), ("0.6-0.9", 0.3)):
        for level in (0.1, 0.5, 0.8):
            name = f"na{rng}@{level}"
            gen = np.random.default_rng(0)
            outs = {}
            for clip, lr in runs["lr_frames"].items():
                up = np.stack([cv2.resize(f, SIZE[::-1], interpolation=cv2.INTER_CUBIC) for f in lr]).astype(float)
                outs[clip] = np.clip(up + gen.normal(0, 40 * level * scale, up.shape), 0, 255).astype(np.uint8)
            methods.append(MethodSource(name, "folder", folder=_write_clips(tmp_path / name, outs)))
            levels[name] = (rng, level)
    out = tmp_path / "noise.parquet"
    result = run_evaluation(EvalConfig(out=out, metrics=["psnr", "tdiff"], gt=runs["gt"]), methods)
    rows = result.rows.assign(train_range=[levels[m][0] for m in result.rows["method"]],
                              test_level=[levels[m][1] for m in result.rows["method"]])
    table = pa.Table.from_pandas(rows, preserve_index=False)
    table = table.replace_schema_metadata({PROTOCOL_KEY: json.dumps(result.protocol).encode()})
    sweep = tmp_path / "noise_sweep.parquet"
    pq.write_table(table, sweep)
    return sweep


def test_analysis_outputs_get_their_figures_and_tables(runs, tmp_path):
    rows, density = _timestep_rows(runs["hr"])
    ana = tmp_path / "analysis"
    ana.mkdir()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), ana / "timesteps.parquet")
    (ana / "density.json").write_text(json.dumps(density))
    sweep = _noise_rows(runs, tmp_path)
    out = tmp_path / "r"
    assert main(["report", str(ana / "timesteps.parquet"), str(sweep), "--out", str(out)]) == 0
    for png in ("timesteps.png", "noise_sweep.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and (out / png).stat().st_size > 5000
    # timesteps: mean variation per step, and each step's probability under the sampling pdf (sums to 1)
    ts = pd.read_csv(out / "timesteps.csv")
    per_clip = rows[rows["clip"] != inputs.TIMESTEP_MEAN_CLIP]
    assert ts["variation"].tolist() == pytest.approx(per_clip.groupby("step")["variation"].mean().tolist())
    assert ts["variation_std"].tolist() == pytest.approx(per_clip.groupby("step")["variation"].std(ddof=0).tolist())
    assert ts["p_detail_aware"].sum() == pytest.approx(1.0) and ts["p_uniform"].sum() == pytest.approx(1.0)
    # the density was made from this curve with one bin per step, so each step's probability is its share
    assert ts["p_detail_aware"].tolist() == pytest.approx((ts["variation"] / ts["variation"].sum()).tolist())
    # noise sweep: one row per (training range, test level), clip means averaged over clips
    na = pd.read_csv(out / "noise_sweep.csv")
    assert na["train_range"].tolist() == ["0.0-0.3"] * 3 + ["0.3-0.6"] * 3 + ["0.6-0.9"] * 3
    sweep_rows = pd.read_parquet(sweep)
    means = sweep_rows[sweep_rows["frame"].isna() & (sweep_rows["metric"] == "psnr")]
    want = means.groupby(["train_range", "test_level"])["value"].mean()
    assert na.set_index(["train_range", "test_level"])["psnr"].to_dict() == pytest.approx(want.to_dict())
    md = (out / "noise_sweep.md").read_text()
    assert "psnr ↑" in md and "tdiff ↓" in md
    assert "timesteps.png" in (out / "index.md").read_text()
    assert not (out / "leaderboard.md").exists()  # no evaluation results among the inputs
