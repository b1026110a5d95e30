"""``cascadevsr evaluate``: score methods' outputs against ground truth (or without it) into parquet.

Sources of methods, any mix:

* ``--pred NAME=DIR``: a folder of outputs (one video or frame folder per clip, named like the GT clips);
* ``--baseline bicubic|lanczos|realesrgan-x4plus|realesr-animevideov3``: run on the ``--lr`` clips;
* ``--checkpoint NAME=CKPT --steps N --noise-level S``: a trained cascadevsr model on the ``--lr`` clips;
* ``--submission DIR``: a leaderboard entry (a folder of outputs plus an optional ``meta.json``), validated,
  evaluated and appended to ``--out`` without touching the methods already there.

``meta.json`` of a submission (every key optional)::

    {"method": "MyVSR", "description": "...", "url": "...", "params": {...}, "runtime_s_per_frame": 0.8}
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from cascadevsr.devices import resolve_device
from cascadevsr.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_METRICS_GT = "psnr,ssim,lpips,niqe,warp_error,tdiff"
DEFAULT_METRICS_NR = "niqe,ewarp"
META_KEYS = {"method": str, "description": str, "url": str, "params": dict,
             "runtime_s_per_frame": (int, float)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr evaluate``."""
    src = parser.add_argument_group("methods")
    src.add_argument("--pred", action="append", default=[], metavar="NAME=DIR",
                     help="a method's outputs: one video or frame folder per clip (repeatable)")
    src.add_argument("--baseline", action="append", default=[], metavar="NAME",
                     help="run a baseline on the --lr clips: bicubic, lanczos, realesrgan-x4plus, "
                          "realesr-animevideov3 (repeatable, or comma-separated)")
    src.add_argument("--checkpoint", action="append", default=[], metavar="NAME=CKPT",
                     help="run a trained cascadevsr checkpoint on the --lr clips (repeatable)")
    src.add_argument("--steps", type=int, default=50, help="sampling steps for --checkpoint (default 50)")
    src.add_argument("--noise-level", type=float, default=0.0, help="test-time noise level for --checkpoint")
    src.add_argument("--submission", action="append", default=[], metavar="DIR",
                     help="a leaderboard submission folder (outputs + optional meta.json), appended to --out")
    src.add_argument("--replace", action="store_true",
                     help="let a --submission replace a method of the same name already in --out")
    data = parser.add_argument_group("data")
    data.add_argument("--gt", help="ground-truth folder (needed by full-reference metrics)")
    data.add_argument("--lr", help="LR folder (needed by --baseline and --checkpoint)")
    data.add_argument("--scale", type=float, default=4.0,
                      help="output = LR size × scale for executed methods when there is no --gt (default 4)")
    data.add_argument("--frames", help="frame subset A:B (half-open), the same for every clip")
    data.add_argument("--frame-step", type=int, default=1,
                      help="use every Nth frame of the subset (default 1)")
    proto = parser.add_argument_group("protocol")
    proto.add_argument("--metrics",
                       help=f"comma-separated metrics (default {DEFAULT_METRICS_GT} with --gt, "
                            f"{DEFAULT_METRICS_NR} without; an existing --out keeps its own list)")
    proto.add_argument("--crop-border", type=int, default=0,
                       help="pixels cropped on each side for PSNR/SSIM/NIQE (basicsr's crop_border; "
                            "default 0)")
    proto.add_argument("--no-align-check", dest="align_check", action="store_false",
                       help="skip the global-shift check against the ground truth")
    proto.add_argument("--align-tolerance", type=float, default=1.0,
                       help="flag outputs shifted by at least this many px (default 1.0)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", help="results parquet (resumed when it exists)")
    run.add_argument("--weights-dir", help="weights folder (default $CASCADEVSR_HOME/weights)")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    run.add_argument("--batch-size", type=int, default=4, help="frames per metric call (default 4)")
    run.add_argument("--threads", type=int, default=0,
                     help="torch intra-op threads (default: torch's choice; 1 is faster on a busy machine)")
    run.add_argument("--workers", type=int, default=2, help="clips decoded ahead, in threads (default 2)")
    run.add_argument("--tile", type=int, default=192, help="LR tile size for Real-ESRGAN (0 = whole frames)")
    run.add_argument("--save-outputs", help="also write the outputs of executed methods here (lossless .mp4)")
    run.add_argument("--strict-clips", action="store_true",
                     help="a --pred folder with clips the ground truth lacks is an error, not a warning")
    run.add_argument("--list-metrics", action="store_true", help="list the metrics and exit")


def parse_named(values: list[str], flag: str) -> dict[str, Path]:
    """``NAME=PATH`` pairs → dict; a missing ``=`` or a repeated name is a ``UserError``."""
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"{flag} takes NAME=PATH, got '{v}'.")
        if name in out:
            raise UserError(f"{flag}: method name '{name}' is given twice.")
        out[name.strip()] = Path(path.strip()).expanduser()
    return out


def parse_frames(text: str | None) -> tuple[int, int | None]:
    """``A:B`` → (start, end); either side may be empty."""
    if text is None:
        return 0, None
    a, sep, b = text.partition(":")
    try:
        start = int(a) if a.strip() else 0
        end = int(b) if b.strip() else None
    except ValueError:
        raise UserError(f"--frames must look like A:B (e.g. 0:16), got '{text}'.") from None
    if not sep:
        raise UserError(f"--frames must look like A:B (e.g. 0:16), got '{text}'.")
    return start, end


def read_submission(folder: Path) -> tuple[str, dict[str, Any]]:
    """Method name and metadata of a submission folder; a bad ``meta.json`` is a ``UserError``."""
    if not folder.is_dir():
        raise UserError(f"submission folder {folder} does not exist.")
    meta_path = folder / "meta.json"
    meta: dict[str, Any] = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{meta_path} is not valid JSON ({err.msg} at line {err.lineno}).") from None
        if not isinstance(meta, dict):
            raise UserError(f"{meta_path} must hold a JSON object.")
        unknown = sorted(set(meta) - set(META_KEYS))
        if unknown:
            raise UserError(f"{meta_path}: unknown key(s) {unknown}; allowed: {sorted(META_KEYS)}.")
        for key, kind in META_KEYS.items():
            if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
                raise UserError(f"{meta_path}: '{key}' has the wrong type ({type(meta[key]).__name__}).")
    name = meta.get("method", folder.name)
    if not name.strip():
        raise UserError(f"{meta_path}: 'method' is empty.")
    return name, meta


def _list_metrics_text() -> str:
    from cascadevsr.evaluate.metrics import METRICS
    from cascadevsr.evaluate.pyiqa_bridge import list_pyiqa_metrics

    lines = [f"{'name':<12} {'ref':<4} {'better':<7} description"]
    for s in METRICS.values():
        lines.append(f"{s.name:<12} {'FR' if s.needs_reference else 'NR':<4} "
                     f"{'lower' if s.lower_better else 'higher':<7} {s.description}")
    extra = list_pyiqa_metrics()
    if extra:
        lines.append(f"\npyiqa metrics (weights from <weights-dir>/pyiqa): {', '.join(extra)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``cascadevsr evaluate``."""
    if args.list_metrics:
        print(_list_metrics_text())
        return 0
    if not args.out:
        raise UserError("--out is required (a .parquet file).")
    from cascadevsr.evaluate import methods as M
    from cascadevsr.evaluate.run import EvalConfig, MethodSource, read_results, run_evaluation, summary

    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}.")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    existing_protocol: dict[str, Any] = {}
    existing_methods: set[str] = set()
    if out.exists():
        rows, existing_protocol = read_results(out)
        existing_methods = set(rows["method"].unique())

    args.device = str(resolve_device(args.device))
    sources: list[MethodSource] = []
    for name, folder in parse_named(args.pred, "--pred").items():
        sources.append(MethodSource(name, "folder", folder=folder))
    for folder in args.submission:
        folder = Path(folder).expanduser()
        name, meta = read_submission(folder)
        if name in existing_methods and not args.replace:
            raise UserError(f"{out} already has a method named '{name}'; rename it in meta.json or pass "
                            "--replace.")
        sources.append(MethodSource(name, "submission", folder=folder, meta=meta))
    baselines = [b.strip() for v in args.baseline for b in v.split(",") if b.strip()]
    for b in baselines:
        up = M.baseline(b, args.device, args.weights_dir, args.tile)
        sources.append(MethodSource(b, "baseline", upscaler=up))
    for name, ckpt in parse_named(args.checkpoint, "--checkpoint").items():
        up = M.checkpoint_upscaler(name, ckpt, args.steps, args.noise_level, args.device)
        sources.append(MethodSource(name, "checkpoint", upscaler=up,
                                    meta={"checkpoint": str(ckpt), "steps": args.steps,
                                          "noise_level": args.noise_level}))

    if args.metrics:
        metric_names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    elif existing_protocol.get("metrics"):
        metric_names = list(existing_protocol["metrics"])
    else:
        metric_names = (DEFAULT_METRICS_GT if args.gt else DEFAULT_METRICS_NR).split(",")
    start, end = parse_frames(args.frames)
    cfg = EvalConfig(
        out=out, metrics=metric_names, gt=Path(args.gt).expanduser() if args.gt else None,
        lr=Path(args.lr).expanduser() if args.lr else None, scale=args.scale, crop_border=args.crop_border,
        start=start, end=end, step=args.frame_step, batch_size=args.batch_size, device=args.device,
        weights_dir=Path(args.weights_dir).expanduser() if args.weights_dir else None, workers=args.workers,
        align_check=args.align_check, align_tolerance=args.align_tolerance,
        save_outputs=Path(args.save_outputs).expanduser() if args.save_outputs else None,
        strict_clips=args.strict_clips,
    )
    replaced = [s.name for s in sources if s.kind == "submission" and s.name in existing_methods]
    if replaced:
        _drop_methods(out, replaced)
    print(f"evaluate: {len(sources)} method(s) [{', '.join(s.name for s in sources)}] on "
          f"{cfg.gt or cfg.lr or 'their own clips'}; metrics {', '.join(metric_names)}; "
          f"crop border {cfg.crop_border}; frames {start}:{'' if end is None else end} step {cfg.step} "
          f"→ {out}")
    result = run_evaluation(cfg, sources)
    table = summary(result.rows, [*metric_names, "runtime_s_per_frame"])
    if not table.empty:
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    for (meth, clip), (dx, dy) in result.misaligned.items():
        print(f"MISALIGNED: {meth} / {clip}: shifted by ({dx:+.2f}, {dy:+.2f}) px against the ground truth")
    print(f"wrote {out} ({len(result.rows)} rows; computed {len(result.computed)} (method, clip, metric) "
          f"triple(s) in this run)")
    return 0


def _drop_methods(out: Path, names: list[str]) -> None:
    """Rewrite ``out`` without the rows of ``names`` (``--replace``)."""
    from cascadevsr.evaluate.run import read_results, write_results

    rows, protocol = read_results(out)
    rows = rows[~rows["method"].isin(names)].reset_index(drop=True)
    for n in names:
        protocol.get("methods", {}).pop(n, None)
    write_results(rows, out, protocol)
    log.info("removed the rows of %s from %s", ", ".join(names), out)
