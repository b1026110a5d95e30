"""``cascadevsr build-corpus``: videos in, WebDataset shards of LR/HR training pairs out.

    cascadevsr build-corpus --input ~/videos --out corpus/ --clip-frames 17 --hr-size 1280x720 --scale 4
    cascadevsr build-corpus --config corpus.yaml [--out other/] [--set seed=1 ...] [--dry-run]
    cascadevsr build-corpus --config corpus/config.json          # resume or rebuild a corpus from its folder
    cascadevsr build-corpus --inspect corpus/ --preview 4
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cascadevsr.datasets.config import CorpusConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr build-corpus``.

    Settings flags default to None ("not given") so that a ``--config`` file's value stands unless the flag
    is given; the defaults themselves live in ``CorpusConfig``.
    """
    io = parser.add_argument_group("input and output")
    io.add_argument("--config", metavar="FILE",
                    help="YAML file of settings (the keys of CorpusConfig; a corpus's config.json is one); "
                         "flags given explicitly override it")
    io.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting last, e.g. --set clip_frames=9 --set hr_size=640x360 (repeatable)")
    io.add_argument("--dry-run", action="store_true", help="print the resolved settings as YAML and exit")
    io.add_argument("--input", nargs="+", metavar="PATH",
                    help="folders (searched recursively), video files, globs or .txt lists of paths")
    io.add_argument("--out", help="corpus folder (rerunning the same command into it resumes)")
    io.add_argument("--inspect", metavar="DIR", help="print a summary of the corpus in DIR and exit")
    io.add_argument("--preview", type=int, metavar="N",
                    help="with --inspect (or after a build): write HR/LR PNG strips of N random samples")
    io.add_argument("--preview-out", metavar="DIR", help="folder for --preview (default CORPUS/preview)")

    clips = parser.add_argument_group("clips")
    clips.add_argument("--clip-frames", type=int, help="frames per clip (default 17)")
    clips.add_argument("--stride", type=int, help="frames between clip starts (default --clip-frames)")
    clips.add_argument("--max-clips-per-video", type=int, help="at most N clips per video, evenly spread")
    clips.add_argument("--hr-size", help="HR size WxH (default 1280x720)")
    clips.add_argument("--hr-mode", choices=["resize", "crop"],
                       help="resize: scale to cover + centre crop (default); crop: native-resolution crop")
    clips.add_argument("--allow-upscale", action=argparse.BooleanOptionalAction,
                       help="accept sources smaller than --hr-size (default no)")
    clips.add_argument("--scene-cut-threshold", type=float,
                       help="histogram distance that starts a new shot (default 0.2)")

    deg = parser.add_argument_group("degradation")
    deg.add_argument("--preset", help="preset name or YAML file (default realbasicvsr)")
    size = deg.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="HR/LR factor (default 4)")
    size.add_argument("--lr-size", help="LR size WxH instead of --scale")
    deg.add_argument("--strength", type=float, help="severity in [0, 1] (default 1)")
    deg.add_argument("--seed", type=int, help="corpus seed (default 0)")
    deg.add_argument("--latent-codec", metavar="SPEC",
                     help="also store latents: pixel, NAME:PATH (local diffusers VAE) or a JSON spec")
    deg.add_argument("--base-model", metavar="SPEC",
                     help="base video model for the model_guided step: wan:DIR (DIR holds transformer/ and vae/)")

    filt = parser.add_argument_group("filters (SimpleGVR section 5.1)")
    filt.add_argument("--min-brightness", type=float, help="mean luma floor (default 20)")
    filt.add_argument("--max-brightness", type=float, help="mean luma ceiling (default 235)")
    filt.add_argument("--min-laplacian", type=float, help="Laplacian variance floor (default 30)")
    filt.add_argument("--min-musiq", type=float, help="MUSIQ floor when weights exist (default 40)")
    filt.add_argument("--musiq-weights", help="MUSIQ checkpoint (default: the weights cache, else skipped)")

    run = parser.add_argument_group("execution")
    run.add_argument("--samples-per-shard", type=int, help="clips per shard (default 64)")
    run.add_argument("--workers", type=int,
                     help="parallel tasks (default all local cores / all cluster CPUs); 0 = no Ray")
    run.add_argument("--address", help="join this Ray cluster (auto or HOST:PORT) instead of starting one")
    run.add_argument("--shard-retries", type=int, help="retries of a failed shard task (default 1)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def flags_given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags on this command line, by ``CorpusConfig`` field name."""
    from cascadevsr.datasets.config import FLAGS

    given = {}
    for field, flag in FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            given[field] = value
    return given


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    """The validated config: defaults < ``--config`` file < flags given < ``--set`` (paths made absolute so
    reruns match)."""
    from cascadevsr.datasets.config import load_corpus_config

    return load_corpus_config(args.config, flags_given(args), args.overrides)


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
    if args.dry_run:
        from cascadevsr.datasets.config import to_yaml

        print(to_yaml(cfg), end="")
        return 0
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
