"""``cascadevsr demo``: the main job end to end on real clips, as far as cascadevsr goes today.

Current chain: for each shipped degradation preset, degrade 17 frames of a real clip (cityCC0: a night
city pan with fine detail) into an LR/HR pair with a preview strip, build a small training corpus from the
fetched clips, train the ``tiny`` preset on it briefly, upscale the held-out clips with it and score them
against bicubic and Real-ESRGAN, report the scores with ``cascadevsr report``, run the timestep analysis and
a noise-augmentation sweep of the checkpoint on the held-out LR clips (their figures by the same report),
then write ``index.md`` (with the results table read back from parquet) listing what was made and how long
each step took. It lives in ``reports`` because that stage may import every other.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cascadevsr.errors import UserError
from cascadevsr.paths import clips_dir

DEMO_CLIP = "cityCC0.mpg"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr demo``."""
    parser.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    parser.add_argument("--clip", default=None, help=f"video to use (default the fetched {DEMO_CLIP})")
    parser.add_argument("--frames", default="0:17", help="frame range A:B (default 0:17)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def corpus_stage(out: Path, seed: int) -> list[str]:
    """Build a small real training corpus from every fetched clip under ``out/corpus``; its index lines."""
    import shutil

    from cascadevsr.datasets import CorpusConfig, build_corpus, summarize, write_previews

    cfg = CorpusConfig(inputs=(str(clips_dir()),), out=str(out / "corpus"), preset="realbasicvsr",
                       clip_frames=17, max_clips_per_video=2, hr_size=(192, 320), samples_per_shard=4,
                       seed=seed)
    shutil.rmtree(cfg.out, ignore_errors=True)  # rebuilt from scratch so it reflects the clips fetched now
    t0 = time.perf_counter()
    build_corpus(cfg)
    previews = write_previews(cfg.out, 2, seed=seed)
    return ["", "## Training corpus", "",
            f"`cascadevsr build-corpus` over every fetched clip in {time.perf_counter() - t0:.1f} s: "
            f"17-frame clips (at most 2 per video), HR 320x192, x4, `realbasicvsr`, shards in `corpus/`.", "",
            "```", summarize(cfg.out), "```", "", *[f"![]({p.relative_to(out)})" for p in previews]]


def train_stage(out: Path, seed: int) -> list[str]:
    """Train the ``tiny`` preset for a short run on the demo corpus; its index lines (curves, validation)."""
    import csv
    import shutil

    from cascadevsr.train.config import load_config
    from cascadevsr.train.plot import plot_run
    from cascadevsr.train.trainer import train

    run = out / "train"
    shutil.rmtree(run, ignore_errors=True)
    cfg = load_config("tiny", overrides=["steps=120", "val.every=40", "ckpt_every=40", f"seed={seed}",
                                         "data.holdout_shards=1"])
    cfg.data.shards = str(out / "corpus")
    t0 = time.perf_counter()
    summary = train(cfg, run)
    curves = plot_run(run)
    with open(run / "val.csv", newline="") as f:
        val = list(csv.DictReader(f))
    rows = [f"| {r['step']} | {float(r['val_loss']):.4f} | {float(r['val_psnr']):.2f} | "
            f"{float(r['bicubic_psnr']):.2f} |" for r in val]
    return ["", "## Training", "",
            f"`cascadevsr train --preset tiny` on `corpus/` for {summary['step']} steps in "
            f"{time.perf_counter() - t0:.1f} s (final loss {summary['loss']:.4f}); run folder `train/` "
            "(config, checkpoints, metrics.csv, samples/).", "",
            "| step | validation loss | PSNR (dB) | bicubic PSNR (dB) |", "|---|---|---|---|", *rows, "",
            f"![]({curves.relative_to(out)})"]


def held_out_clips(out: Path, limit: int = 2) -> tuple[Path, Path]:
    """Copy up to ``limit`` HR/LR clips of the held-out shard (the last one, kept out of training) into
    ``eval/gt`` and ``eval/lr`` as one video per clip, byte for byte, for the evaluation stage."""
    import shutil
    import tarfile

    gt, lr = out / "eval" / "gt", out / "eval" / "lr"
    for folder in (gt, lr):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    last = sorted((out / "corpus").glob("shard-*.tar"))[-1]
    keys: list[str] = []
    with tarfile.open(last) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            if key not in keys:
                keys.append(key)
            if ext in ("hr.mp4", "lr.mp4") and key in keys[:limit]:
                data = tar.extractfile(member).read()
                ((gt if ext == "hr.mp4" else lr) / f"{key}.mp4").write_bytes(data)
    return gt, lr


def evaluate_stage(out: Path, seed: int) -> list[str]:
    """Score the trained checkpoint and two baselines on the held-out clips; a results table from parquet."""
    import shutil

    from cascadevsr.cli import main as cli_main

    gt, lr = held_out_clips(out)
    results = out / "eval" / "results.parquet"
    results.unlink(missing_ok=True)
    shutil.rmtree(out / "eval" / "results.parquet.parts", ignore_errors=True)
    metrics = ["psnr", "ssim", "lpips"]
    t0 = time.perf_counter()
    code = cli_main(["evaluate", "--gt", str(gt), "--lr", str(lr), "--baseline", "bicubic,realesrgan-x4plus",
                     "--checkpoint", f"tiny={out / 'train'}", "--steps", "4", "--frames", "0:9",
                     "--metrics", ",".join(metrics), "--out", str(results)])
    if code:
        raise UserError("the evaluation stage of the demo failed (see the message above).")
    seconds = time.perf_counter() - t0
    report = report_stage(results, out / "eval" / "report", metrics)
    clips = len(list(gt.glob("*.mp4")))
    return ["", "## Evaluation", "",
            f"`cascadevsr evaluate` on frames 0-8 of {clips} held-out clip(s) (the last shard, not trained on) in "
            f"{seconds:.1f} s: the tiny checkpoint (4 Euler steps, tiles of its training crop) against bicubic and "
            "Real-ESRGAN x4plus (PyTorch, from its ncnn weights). Table by `cascadevsr report` from "
            "`eval/results.parquet`; the full report (LaTeX, CSV, HTML leaderboard, protocol) is "
            "[`eval/report/`](eval/report/index.md).", "", *report]


def analysis_stage(out: Path, seed: int, steps: int = 10) -> list[str]:
    """The paper's two analyses of the trained checkpoint on the held-out LR clips — the timestep analysis
    (SimpleGVR §4.3) and a noise-augmentation sweep (§4, one training range here) — and their figures by
    ``cascadevsr report``; their index lines."""
    import shutil

    from cascadevsr.cli import main as cli_main
    from cascadevsr.reports.command import ReportConfig, build_report

    shutil.rmtree(out / "analysis", ignore_errors=True)
    timesteps, sweep = out / "analysis" / "timesteps", out / "analysis" / "noise_sweep.parquet"
    common = ["--lr", str(out / "eval" / "lr"), "--frames", "0:9", "--seed", str(seed)]
    t0 = time.perf_counter()
    code = cli_main(["analyze", "timesteps", "--checkpoint", str(out / "train"), *common, "--steps", str(steps),
                     "--out", str(timesteps)])
    t1 = time.perf_counter()
    code = code or cli_main(["analyze", "noise-aug", "--checkpoint", f"tiny={out / 'train'}", *common,
                             "--gt", str(out / "eval" / "gt"), "--levels", "0,0.45,0.9", "--steps", "4",
                             "--metrics", "lr_psnr,psnr", "--out", str(sweep)])
    if code:
        raise UserError("the analysis stage of the demo failed (see the message above).")
    t2 = time.perf_counter()
    report = out / "analysis" / "report"
    build_report(ReportConfig(inputs=[timesteps / "timesteps.parquet", sweep], out=report, formats=["md", "csv"],
                              title="cascadevsr demo: analyses"))
    figures = sorted(report.glob("*.png"))
    return ["", "## Analyses", "",
            f"`cascadevsr analyze timesteps` of the tiny checkpoint over {steps} Euler steps on the held-out LR "
            f"clips in {t1 - t0:.1f} s: how much the DCT high frequencies of the predicted clean latent change at "
            "each step, and the detail-aware training density made from it (`analysis/timesteps/density.json`, "
            "usable as `--set sampler=detail_aware --set sampler_options.pdf_file=...`). `cascadevsr analyze "
            f"noise-aug` in {t2 - t1:.1f} s: the same checkpoint at test noise levels 0, 0.45 and 0.9, scored "
            "for LR consistency (`lr_psnr`: the output downsampled against the LR input) and against the ground "
            "truth. Report: [`analysis/report/`](analysis/report/index.md). A 120-step tiny model is far from "
            "the paper's, so the figures show the mechanics, not the paper's findings.", "",
            *[f"![]({p.relative_to(out)})" for p in figures]]


def report_stage(results: Path, folder: Path, metrics: list[str]) -> list[str]:
    """Write ``cascadevsr report``'s tables and plots for ``results`` into ``folder``; its index lines."""
    from cascadevsr.reports.command import ReportConfig, build_report

    result = build_report(ReportConfig(inputs=[results], out=folder, metrics=metrics, per_clip=True,
                                       baseline="bicubic", title="cascadevsr demo: evaluation"))
    bars = folder / "bars.png"
    return [result.leaderboard_markdown or "", "", f"![]({bars.relative_to(folder.parent.parent)})"]


def run(args: argparse.Namespace) -> int:
    """Degrade a real clip with every preset and write an index of the results."""
    from cascadevsr.degrade.command import degrade_video
    from cascadevsr.degrade.model_guided import uses_model_guided
    from cascadevsr.degrade.pipeline import list_presets, load_preset

    clip = Path(args.clip) if args.clip else clips_dir() / DEMO_CLIP
    if not clip.exists():
        raise UserError(f"the demo clip {clip} is missing; run `cascadevsr fetch-data` first.")
    out = Path(args.out)
    # A preset with a model-guided step needs a base video model's weights, which no offline package has.
    presets = [p for p in list_presets() if not uses_model_guided(load_preset(p))]
    skipped = [p for p in list_presets() if p not in presets]
    print(f"demo: {clip.name} frames {args.frames}, presets {', '.join(presets)} -> {out}/", flush=True)
    rows = []
    for name in presets:
        t0 = time.perf_counter()
        record = degrade_video(clip, out / "degrade" / name, preset=name, seed=args.seed, frames=args.frames,
                               scale=4.0, preview=True)
        rows.append((name, load_preset(name).description, record["lr_size"], time.perf_counter() - t0))
    lines = ["# cascadevsr demo", "", f"Clip: `{clip.name}`, frames {args.frames}, seed {args.seed}, scale 4.", "",
             "| preset | description | LR size (h, w) | seconds | preview |", "|---|---|---|---|---|"]
    for name, desc, size, dt in rows:
        lines.append(f"| {name} | {desc} | {size[0]}x{size[1]} | {dt:.1f} | ![](degrade/{name}/preview.png) |")
    if skipped:
        lines += ["", f"Not run: {', '.join(f'`{p}`' for p in skipped)} (needs a base video model: "
                      "`cascadevsr degrade --preset model_guided --base-model wan:DIR`; no base model's weights "
                      "install offline)."]
    lines += corpus_stage(out, args.seed)
    lines += train_stage(out, args.seed)
    lines += evaluate_stage(out, args.seed)
    lines += analysis_stage(out, args.seed)
    (out / "index.md").write_text("\n".join(lines) + "\n")
    (out / "demo.json").write_text(json.dumps({"clip": str(clip), "frames": args.frames, "seed": args.seed,
                                               "presets": presets}, indent=1) + "\n")
    print(f"demo done: {out}/index.md")
    return 0
