"""``cascadevsr train``: fit the VSR model on corpus shards (one process, torchrun DDP, or Ray Train).

    cascadevsr train --preset tiny --data corpus/ --out runs/tiny [--set optim.lr=1e-4 ...] [--resume auto]
    torchrun --nproc-per-node 8 -m cascadevsr train --preset stage1 --data corpus/ --out runs/stage1
    cascadevsr train --config run.yaml --data corpus/ --out runs/x --ray --num-workers 16 --address HEAD:6379
    cascadevsr train --plot runs/tiny
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cascadevsr.errors import UserError

log = logging.getLogger(__name__)

PRESET_NAMES = ("tiny", "small", "stage1", "stage2", "stage3")  # train.config.PRESETS, without importing it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr train`` (no heavy imports: the CLI parser must stay fast)."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=PRESET_NAMES, help="a named training config")
    src.add_argument("--config", metavar="FILE", help="a YAML config (may name its base with 'preset: NAME')")
    src.add_argument("--plot", metavar="RUN", help="draw RUN's loss and validation curves to RUN/curves.png")
    parser.add_argument("--data", metavar="SHARDS",
                        help="training corpus: folder, shard pattern (dir/shard-{000000..000009}.tar) or a,b,c list")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder (config, checkpoints, logs, samples)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 --set model.depth=4 (repeatable)")
    parser.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                        help="auto: continue from RUN_DIR's latest checkpoint if any (default); never: refuse a "
                             "run folder that has checkpoints; PATH: a checkpoint file or folder")
    parser.add_argument("--ray", action="store_true", help="run on Ray Train workers (TorchTrainer)")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--address", help="Ray cluster to join (auto or HOST:PORT); default: a local Ray")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cascadevsr train``."""
    if args.plot:
        from cascadevsr.train.plot import plot_run

        path = plot_run(args.plot)
        print(f"wrote {path}")
        return 0
    if not (args.preset or args.config):
        raise UserError("give --preset NAME or --config FILE (or --plot RUN)")
    from cascadevsr.train.config import load_config

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.shards={args.data}")
    cfg = load_config(args.preset, args.config, overrides)
    if args.data:  # paths verbatim (not parsed as YAML scalars)
        cfg.data.shards = args.data
    if args.dry_run:
        print(cfg.summary())
        return 0
    if not args.out:
        raise UserError("give --out RUN_DIR")
    if not cfg.data.shards:
        raise UserError("give --data SHARDS (or data.shards in the config file)")
    if args.ray:
        from cascadevsr.train.distributed import launch_ray

        if args.num_workers < 1:
            raise UserError("--num-workers must be >= 1")
        launch_ray(cfg, args.out, args.resume, args.num_workers, args.address, show_progress=not args.no_progress)
        print(f"done: {Path(args.out).absolute()}")
        return 0
    from cascadevsr.train.trainer import train

    summary = train(cfg, args.out, resume=args.resume, metrics=getattr(args, "validation_metrics", dict)(),
                    show_progress=not args.no_progress)
    import os

    if int(os.environ.get("RANK", 0)) == 0:
        best = summary["best"]
        print(f"done: step {summary['step']}, loss {summary['loss']:.4f}"
              + (f", best {best['metric']} {best['value']:.4g} at step {best['step']}" if best else "")
              + (f", {summary['skipped']} bad sample(s) skipped" if summary["skipped"] else ""))
        weights = f"{args.out}/best" if best else args.out
        print(f"next: cascadevsr train --plot {args.out}; "
              f"cascadevsr upscale LR.mp4 --checkpoint {weights} --out HR.mp4")
    return 0
