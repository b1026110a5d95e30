"""``cascadevsr build-corpus``: videos in, WebDataset shards of LR/HR training pairs out."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cascadevsr.errors import UserError

if TYPE_CHECKING:
    from cascadevsr.datasets.config import CorpusConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr build-corpus``."""
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", nargs="+", metavar="PATH",
                    help="folders (searched recursively), video files, globs or .txt lists of paths")
    io.add_argument("--out", help="corpus folder (rerunning the same command into it resumes)")
    io.add_argument("--inspect", metavar="DIR", help="print a summary of the corpus in DIR and exit")
    io.add_argument("--preview", type=int, metavar="N",
                    help="with --inspect (or after a build): write HR/LR PNG strips of N random samples")
    io.add_argument("--preview-out", metavar="DIR", help="folder for --preview (default CORPUS/preview)")

    clips = parser.add_argument_group("clips")
    clips.add_argument("--clip-frames", type=int, default=17, help="frames per clip (default 17)")
    clips.add_argument("--stride", type=int, help="frames between clip starts (default --clip-frames)")
    clips.add_argument("--max-clips-per-video", type=int, help="at most N clips per video, evenly spread")
    clips.add_argument("--hr-size", default="1280x720", help="HR size WxH (default 1280x720)")
    clips.add_argument("--hr-mode", choices=["resize", "crop"], default="resize",
                       help="resize: scale to cover + centre crop (default); crop: native-resolution crop")
    clips.add_argument("--allow-upscale", action="store_true", help="accept sources smaller than --hr-size")
    clips.add_argument("--scene-cut-threshold", type=float, default=0.2,
                       help="histogram distance that starts a new shot (default 0.2)")

    deg = parser.add_argument_group("degradation")
    deg.add_argument("--preset", default="realbasicvsr",
                     help="preset name or YAML file (default realbasicvsr)")
    size = deg.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="HR/LR factor (default 4)")
    size.add_argument("--lr-size", help="LR size WxH instead of --scale")
    deg.add_argument("--strength", type=float, default=1.0, help="severity in [0, 1] (default 1)")
    deg.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    deg.add_argument("--latent-codec", metavar="SPEC",
                     help="also store latents: pixel, NAME:PATH (local diffusers VAE) or a JSON spec")

    filt = parser.add_argument_group("filters (SimpleGVR section 5.1)")
    filt.add_argument("--min-brightness", type=float, default=20.0, help="mean luma floor (default 20)")
    filt.add_argument("--max-brightness", type=float, default=235.0, help="mean luma ceiling (default 235)")
    filt.add_argument("--min-laplacian", type=float, default=30.0,
                      help="Laplacian variance floor (default 30)")
    filt.add_argument("--min-musiq", type=float, default=40.0,
                      help="MUSIQ floor when weights exist (default 40)")
    filt.add_argument("--musiq-weights", help="MUSIQ checkpoint (default: the weights cache, else skipped)")

    run = parser.add_argument_group("execution")
    run.add_argument("--samples-per-shard", type=int, default=64, help="clips per shard (default 64)")
    run.add_argument("--workers", type=int,
                     help="parallel tasks (default all local cores / all cluster CPUs); 0 = no Ray")
    run.add_argument("--address", help="join this Ray cluster (auto or HOST:PORT) instead of starting one")
    run.add_argument("--shard-retries", type=int, default=1,
                     help="retries of a failed shard task (default 1)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    """Build the validated config from parsed arguments (paths made absolute so reruns match)."""
    from cascadevsr.datasets.config import CorpusConfig
    from cascadevsr.degrade.command import parse_size

    if not args.input or not args.out:
        raise UserError("give --input PATHS and --out DIR (or --inspect DIR).")
    preset = args.preset
    if Path(preset).suffix in (".yaml", ".yml"):
        preset = str(Path(preset).resolve())
    return CorpusConfig(
        inputs=tuple(str(Path(p).expanduser().absolute()) for p in args.input),
        out=str(Path(args.out).expanduser().absolute()),
        preset=preset, clip_frames=args.clip_frames, stride=args.stride,
        max_clips_per_video=args.max_clips_per_video, hr_size=parse_size(args.hr_size), hr_mode=args.hr_mode,
        allow_upscale=args.allow_upscale,
        scale=None if args.lr_size else (args.scale if args.scale is not None else 4.0),
        lr_size=parse_size(args.lr_size) if args.lr_size else None, strength=args.strength, seed=args.seed,
        latent_codec=args.latent_codec,
        samples_per_shard=args.samples_per_shard, scene_cut_threshold=args.scene_cut_threshold,
        min_brightness=args.min_brightness, max_brightness=args.max_brightness,
        min_laplacian_var=args.min_laplacian, min_musiq=args.min_musiq, musiq_weights=args.musiq_weights,
        workers=args.workers, address=args.address, shard_retries=args.shard_retries,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cascadevsr build-corpus``."""
    from cascadevsr.datasets.summary import summarize, write_previews

    if args.inspect:
        print(summarize(args.inspect))
        if args.preview:
            paths = write_previews(args.inspect, args.preview, args.preview_out, seed=0)
            print(f"wrote {len(paths)} preview(s) to {paths[0].parent}/")
        return 0
    from cascadevsr.datasets.builder import build_corpus

    cfg = config_from_args(args)
    print(cfg.summary(), flush=True)
    report = build_corpus(cfg, show_progress=not args.no_progress)
    print(summarize(cfg.out))
    if args.preview:
        paths = write_previews(cfg.out, args.preview, args.preview_out, seed=cfg.seed)
        print(f"wrote {len(paths)} preview(s) to {paths[0].parent}/")
    if not report.complete:
        print(f"cascadevsr build-corpus: {len(report.failed_shards)} shard(s) failed "
              f"({', '.join(report.failed_shards[:5])}); rerun the same command to retry them.",
              file=sys.stderr)
        return 1
    return 0
