"""``cascadevsr demo``: the main job end to end on real clips, as far as cascadevsr goes today.

Current chain: for each shipped degradation preset, degrade 17 frames of a real clip (cityCC0: a night
city pan with fine detail) into an LR/HR pair with a preview strip, build a small training corpus from the
fetched clips, train the ``tiny`` preset on it briefly, then write ``index.md`` listing what was made and
how long each step took. It lives in ``reports`` because that stage may import every other.
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
    cfg = load_config("tiny", overrides=["steps=120", "val.every=40", "ckpt_every=40", f"seed={seed}"])
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


def run(args: argparse.Namespace) -> int:
    """Degrade a real clip with every preset and write an index of the results."""
    from cascadevsr.degrade.command import degrade_video
    from cascadevsr.degrade.pipeline import list_presets, load_preset

    clip = Path(args.clip) if args.clip else clips_dir() / DEMO_CLIP
    if not clip.exists():
        raise UserError(f"the demo clip {clip} is missing; run `cascadevsr fetch-data` first.")
    out = Path(args.out)
    presets = list_presets()
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
    lines += corpus_stage(out, args.seed)
    lines += train_stage(out, args.seed)
    (out / "index.md").write_text("\n".join(lines) + "\n")
    (out / "demo.json").write_text(json.dumps({"clip": str(clip), "frames": args.frames, "seed": args.seed,
                                               "presets": presets}, indent=1) + "\n")
    print(f"demo done: {out}/index.md")
    return 0
