"""The ``cascadevsr`` command: one entry point, one subcommand per job.

This is the only core module that imports the stage packages; each command lives with its stage and
exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any

from cascadevsr import __version__
from cascadevsr.errors import UserError

# name -> (module with add_arguments/run, one-line help). Command modules keep heavy imports (torch, ray)
# inside run(), so building the parser stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-data": ("cascadevsr.fetch", "fetch the real clips and offline weights into $CASCADEVSR_HOME"),
    "degrade": ("cascadevsr.degrade.command", "turn a real video into a reproducible LR/HR pair"),
    "build-corpus": ("cascadevsr.datasets.command", "build LR/HR training pairs into WebDataset shards"),
    "train": ("cascadevsr.train.command", "fit the VSR model on corpus shards (one process, torchrun or Ray Train)"),
    "upscale": ("cascadevsr.train.upscale", "upscale a video or an LR latent with a trained VSR checkpoint"),
    "evaluate": ("cascadevsr.evaluate.command", "score methods' outputs against ground truth into parquet"),
    "analyze": ("cascadevsr.evaluate.analyze_command", "timestep detail analysis and noise-augmentation sweep"),
    "report": ("cascadevsr.reports.command", "tables, plots and an HTML leaderboard from results parquet"),
    "bench": ("cascadevsr.bench", "list and run the benchmarks of a source checkout, collecting their JSON lines"),
    "demo": ("cascadevsr.reports.demo", "run the end-to-end demo on real clips"),
}


def validation_metrics() -> dict[str, Any]:
    """LPIPS for ``cascadevsr train``'s validation clips when its offline weights are cached, else nothing.

    The metric lives in the evaluation stage, which the training stage may not import; this module is where
    stages are wired, so it builds the metric and hands it to the trainer as a plain function.
    """
    try:
        from cascadevsr.evaluate.metrics import create_metric

        return {"lpips": create_metric("lpips", device="cpu")}
    except Exception as err:  # missing weights or package: validation reports PSNR only
        logging.getLogger(__name__).info("validation without LPIPS: %s", err)
        return {}


# command -> attributes set on its parsed arguments: objects one stage gets from a later one.
WIRING: dict[str, dict[str, Any]] = {
    "train": {"validation_metrics": validation_metrics},
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands' own arguments included)."""
    parser = argparse.ArgumentParser(prog="cascadevsr", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cascadevsr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input prints one sentence on stderr and returns 2."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for name, value in WIRING.get(args.command, {}).items():
        setattr(args, name, value)
    run: Callable[[argparse.Namespace], int] = import_module(args._module).run
    try:
        return int(run(args) or 0)
    except UserError as err:
        print(f"cascadevsr {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"cascadevsr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
