"""``cascadevsr degrade``: one real video in, one reproducible LR/HR pair out."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cascadevsr import __version__
from cascadevsr.errors import UserError

log = logging.getLogger(__name__)


def parse_frames(text: str | None, available: int) -> tuple[int, int]:
    """``A:B`` (either side optional) → a half-open frame range checked against ``available`` frames."""
    if text is None:
        return 0, available
    try:
        a, _, b = text.partition(":")
        start = int(a) if a.strip() else 0
        end = int(b) if b.strip() else available
    except ValueError:
        raise UserError(f"--frames must look like A:B (e.g. 0:17), got '{text}'.") from None
    if not _ or start < 0 or end <= start:
        raise UserError(f"--frames must look like A:B with 0 <= A < B, got '{text}'.")
    if end > available:
        raise UserError(f"the video has {available} frames, so --frames {text} asks for frames that do not exist.")
    return start, end


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` → ``(height, width)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"sizes are written WxH (e.g. 320x180), got '{text}'.") from None
    if w <= 0 or h <= 0:
        raise UserError(f"sizes must be positive, got '{text}'.")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr degrade``."""
    parser.add_argument("input", nargs="?", help="video file to degrade")
    parser.add_argument("--preset", default="realesrgan", help="preset name or YAML file (default realesrgan)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical LR bytes")
    parser.add_argument("--strength", type=float, default=1.0, help="severity in [0, 1]; 1 = published ranges")
    parser.add_argument("--frames", help="frame range A:B, half-open (default: the whole video)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="downscaling factor HR/LR (default 4)")
    size.add_argument("--lr-size", help="LR size WxH instead of --scale (non-integer factors allowed)")
    parser.add_argument("--out", help="output folder for hr.mp4, lr.mp4, params.json (and lr_latent.npy after a "
                        "model_guided step)")
    parser.add_argument("--base-model", metavar="SPEC",
                        help="base video model for the model_guided step: wan:DIR (DIR holds transformer/ and vae/)")
    parser.add_argument("--preview", action="store_true", help="also write preview.png (HR | LR up | motion)")
    parser.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")


def list_presets_text() -> str:
    """One line per shipped preset: name and description."""
    from cascadevsr.degrade.pipeline import list_presets, load_preset

    lines = []
    for name in list_presets():
        p = load_preset(name)
        lines.append(f"{name:<16} {p.description}")
    return "\n".join(lines)


def _package_versions() -> dict[str, str]:
    import av
    import cv2
    import numpy

    return {"cascadevsr": __version__, "numpy": numpy.__version__, "opencv": cv2.__version__,
            "av": av.__version__, "python": sys.version.split()[0]}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cascadevsr degrade``."""
    if args.list_presets:
        print(list_presets_text())
        return 0
    if not args.input or not args.out:
        raise UserError("give an input video and --out DIR (or --list-presets).")
    lr_size = parse_size(args.lr_size) if args.lr_size else None
    degrade_video(args.input, args.out, preset=args.preset, seed=args.seed, strength=args.strength,
                  frames=args.frames, scale=args.scale, lr_size=lr_size, preview=args.preview,
                  base_model=args.base_model)
    return 0


def degrade_video(input_path: str | Path, out: str | Path, *, preset: str = "realesrgan", seed: int = 0,
                  strength: float = 1.0, frames: str | None = None, scale: float | None = None,
                  lr_size: tuple[int, int] | None = None, preview: bool = False,
                  base_model: str | None = None) -> dict[str, Any]:
    """Degrade one video into folder ``out`` (``hr.mp4``, ``lr.mp4``, ``params.json``, ``preview.png``).

    When the LR frames are the decoding of the model-guided step's denoised latent (no later step changed
    them), that latent is saved as ``lr_latent.npy`` (float32 ``(C, t, h, w)``) and described in the record
    under ``lr_latent``: file, source, shape and the spec of the base model's VAE it lives in.

    Everything is written to a temporary folder beside ``out`` and moved in at the end, so a failure
    leaves nothing half-written. Returns the params record. ``lr_size`` is ``(height, width)``; without
    it and without ``scale`` the factor is 4. ``base_model`` is a spec for
    ``cascadevsr.base_model.load_base_model`` (``wan:DIR``), needed by presets with a model-guided step.
    """
    from cascadevsr.degrade.model_guided import check_base_model
    from cascadevsr.degrade.pipeline import degrade_clip, load_preset
    from cascadevsr.video import probe, read_frames, write_video

    pipeline = load_preset(preset)
    check_base_model(pipeline, base_model)
    model = None
    if base_model is not None:
        from cascadevsr.base_model import load_base_model

        model = load_base_model(base_model)
    info = probe(input_path)
    start, end = parse_frames(frames, info.num_frames)
    if lr_size is None and scale is None:
        scale = 4.0
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder.")
    print(f"degrade {info.path} frames {start}:{end} ({info.width}x{info.height}, {info.codec}) "
          f"with preset '{pipeline.name}', seed {seed}, strength {strength} -> {out}/", flush=True)

    t0 = time.perf_counter()
    hr_frames = read_frames(input_path, start, end)
    from tqdm import tqdm

    with tqdm(desc="degrading", unit="step", leave=False, disable=None) as bar:
        pair = degrade_clip(hr_frames, pipeline, seed, strength=strength, scale=scale, lr_size=lr_size,
                            fps=info.fps, progress=lambda op: bar.update(1), base_model=model)
    record: dict[str, Any] = {
        "source": {"path": str(Path(input_path).resolve()), "frames": [start, end], "fps": info.fps,
                   "codec": info.codec, "size": [info.height, info.width]},
        **pair.record,
        "versions": _package_versions(),
    }
    if pair.lr_latent is not None:
        record["lr_latent"] = {"file": "lr_latent.npy", "source": "model_guided",
                               "shape": list(pair.lr_latent.shape), "codec": pair.lr_latent_codec}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_video(tmp / "hr.mp4", pair.hr, info.fps, codec="libx264", crf=4)
        write_video(tmp / "lr.mp4", pair.lr, info.fps, codec="ffv1")
        (tmp / "params.json").write_text(json.dumps(record, indent=1) + "\n")
        if pair.lr_latent is not None:
            import numpy as np

            np.save(tmp / "lr_latent.npy", pair.lr_latent, allow_pickle=False)
        if preview:
            from cascadevsr.degrade.preview import write_preview

            write_preview(tmp / "preview.png", pair.hr, pair.lr)
        out.mkdir(exist_ok=True)
        if pair.lr_latent is None:
            (out / "lr_latent.npy").unlink(missing_ok=True)  # an earlier run's latent would not match lr.mp4
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    h, w = pair.lr.shape[1:3]
    log.debug("degrade record: %s", record["steps"])
    extras = (", lr_latent.npy (the model-guided denoised latent)" if pair.lr_latent is not None else "") + (
        ", preview.png" if preview else "")
    print(f"wrote {out}/hr.mp4, lr.mp4 ({w}x{h}, {len(pair.lr)} frames), params.json{extras} "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return record
