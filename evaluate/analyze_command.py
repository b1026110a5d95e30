"""``cascadevsr analyze``: the paper's two analyses of a trained model.

    cascadevsr analyze timesteps --checkpoint CKPT --lr DIR_OR_VIDEOS [--steps 50] [--cutoff 0.5] --out DIR
    cascadevsr analyze noise-aug --checkpoint NAME=CKPT[@LO-HI] ... --lr DIR [--gt DIR] \
        [--levels 0,0.15,...,0.9] [--metrics lr_psnr,lr_lpips,niqe] [--steps 50] --out results.parquet

``timesteps`` (timesteps.py) measures the high-frequency detail each sampling step adds and writes the
detail-aware sampler's density; ``noise-aug`` (noise_sweep.py) scores checkpoints trained with different
noise-augmentation ranges at several test noise levels. Both resume: rerunning an interrupted or finished
command computes only what it had not finished, and one whose settings would change the existing numbers is
refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cascadevsr.devices import resolve_device
from cascadevsr.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr analyze`` and its two analyses."""
    sub = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    ts = sub.add_parser("timesteps", help="detail variation of x̂0 across the sampling steps → detail-aware pdf",
                        description="Run a (uniform-trained) checkpoint's N-step inference on LR clips, measure "
                                    "the DCT high-frequency change of x̂0 across every step, and write the "
                                    "detail-aware timestep density (SimpleGVR §4.3, Fig. 5). Each finished "
                                    "clip is kept in OUT.parts/ until the outputs are written, and the outputs "
                                    "keep every clip's curve, so a rerun with the same curve settings "
                                    "analyses only the clips missing from both (none when the analysis "
                                    "finished; only the new ones when given more clips); --floor and "
                                    "--max-clips may change.")
    ts.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    ts.add_argument("--lr", required=True, nargs="+", action="extend", metavar="DIR_OR_VIDEO",
                    help="LR clips: folders of clips and/or video files")
    ts.add_argument("--steps", type=int, default=50, help="Euler steps of the analysed inference (default 50)")
    ts.add_argument("--noise-level", type=float, default=None,
                    help="fixed LR noise-augmentation level (default: the checkpoint's)")
    ts.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    ts.add_argument("--frames", help="frame range A:B (half-open) of every clip (default: whole clips)")
    ts.add_argument("--max-clips", type=int, default=None, help="only the first N clips in name order")
    ts.add_argument("--cutoff", type=float, default=0.5,
                    help="high-pass cut-off on the normalised radial DCT frequency sqrt((u/H)²+(v/W)²) "
                         "(1 = Nyquist along one axis; default 0.5)")
    ts.add_argument("--floor", type=float, default=0.0,
                    help="weight of the uniform density mixed into the derived one, so every t keeps some "
                         "training mass (default 0: the literal density, no mass on the last step's interval)")
    ts.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda, auto; default cpu)")
    ts.add_argument("--out", required=True,
                    help="output folder (a rerun reuses the clips finished here and in OUT.parts/)")

    na = sub.add_parser("noise-aug", help="checkpoints × test noise levels → metrics parquet (Fig. 7)",
                        description="Run checkpoints trained with different noise-augmentation ranges on LR "
                                    "clips at several test noise levels and score them: LR consistency "
                                    "(lr_psnr, lr_lpips: the output downsampled against the LR input), "
                                    "reference-free and, with --gt, full-reference metrics.")
    na.add_argument("--checkpoint", required=True, action="append", metavar="NAME=CKPT[@LO-HI]",
                    help="a checkpoint and, optionally, its training range (default: read from the "
                         "checkpoint); repeatable")
    na.add_argument("--lr", required=True, help="folder of LR clips")
    na.add_argument("--gt", help="ground-truth folder (needed by full-reference metrics such as psnr)")
    na.add_argument("--levels", default="0,0.15,0.3,0.45,0.6,0.75,0.9",
                    help="comma-separated test noise levels in [0, 1] (default 0,0.15,...,0.9)")
    na.add_argument("--metrics",
                    help="comma-separated metrics: lr_<full-reference metric> (against the LR input), "
                         "reference-free metrics, full-reference metrics with --gt (default "
                         "lr_psnr,lr_lpips,niqe, plus psnr,lpips with --gt; NIQE is left out of the default "
                         "when outputs are too small for it)")
    na.add_argument("--steps", type=int, default=50, help="Euler steps (default 50)")
    na.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    na.add_argument("--frames", help="frame range A:B (half-open) of every clip (default: whole clips)")
    na.add_argument("--max-clips", type=int, default=None, help="only the first N clips in name order")
    na.add_argument("--crop-border", type=int, default=0,
                    help="pixels cropped on each side by PSNR/SSIM/NIQE, at the size they see (default 0)")
    na.add_argument("--batch-size", type=int, default=4, help="frames per metric call (default 4)")
    na.add_argument("--device", default="cpu", help="torch device (default cpu)")
    na.add_argument("--weights-dir", help="metric weights folder (default $CASCADEVSR_HOME/weights)")
    na.add_argument("--save-outputs", metavar="DIR",
                    help="also write every output as DIR/NAME@LEVEL/CLIP.mp4 (lossless; `evaluate --pred` reads it)")
    na.add_argument("--out", required=True, help="results parquet (resumed when it exists)")


def run(args: argparse.Namespace) -> int:
    """Run ``cascadevsr analyze``."""
    from cascadevsr.evaluate.command import parse_frames

    start, end = parse_frames(args.frames)
    args.device = str(resolve_device(args.device))
    if args.analysis == "timesteps":
        from cascadevsr.evaluate.timesteps import TimestepConfig, run_timestep_analysis

        cfg = TimestepConfig(checkpoint=Path(args.checkpoint).expanduser(), lr=[Path(p) for p in args.lr],
                             out=Path(args.out).expanduser(), steps=args.steps, noise_level=args.noise_level,
                             seed=args.seed, start=start, end=end, max_clips=args.max_clips, cutoff=args.cutoff,
                             floor=args.floor, device=args.device)
        result = run_timestep_analysis(cfg)
        mean = result.rows[result.rows["clip"] == "mean"]
        peak = mean.loc[mean["variation"].idxmax()]
        print(f"largest mean detail variation at step {int(peak['step'])} "
              f"(t {peak['t_from']:.3f} → {peak['t_to']:.3f}); train with it: cascadevsr train ... "
              f"--set sampler=detail_aware --set sampler_options.pdf_file={cfg.out / 'density.json'}")
        return 0
    if args.analysis == "noise-aug":
        from cascadevsr.evaluate.noise_sweep import (
            SweepConfig,
            parse_checkpoint_arg,
            parse_levels,
            run_noise_sweep,
            summary,
        )

        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else []
        cfg = SweepConfig(checkpoints=[parse_checkpoint_arg(c) for c in args.checkpoint],
                          lr=Path(args.lr).expanduser(), out=Path(args.out).expanduser(),
                          levels=parse_levels(args.levels), metrics=metrics,
                          gt=Path(args.gt).expanduser() if args.gt else None, steps=args.steps, seed=args.seed,
                          start=start, end=end, max_clips=args.max_clips, crop_border=args.crop_border,
                          batch_size=args.batch_size, device=args.device,
                          weights_dir=Path(args.weights_dir).expanduser() if args.weights_dir else None,
                          save_outputs=Path(args.save_outputs).expanduser() if args.save_outputs else None)
        result = run_noise_sweep(cfg)
        table = summary(result.rows)
        if not table.empty:
            print(table.to_string(float_format=lambda v: f"{v:.4f}"))
        print(f"wrote {cfg.out} ({len(result.rows)} rows; computed {len(result.computed)} "
              f"(checkpoint, level, clip, metric) row set(s) in this run)")
        return 0
    raise UserError(f"unknown analysis '{args.analysis}'; choose from timesteps, noise-aug.")
