"""``cascadevsr upscale``: run a trained VSR checkpoint on a video (or an LR latent) and write the HR video.

    cascadevsr upscale --checkpoint CKPT INPUT --out OUT.mp4 [--steps 50] [--noise-level s] [--seed 0]
                       [--tile-batch 8]

INPUT is a video file, or a ``.npy`` LR latent ``(C, t, h, w)`` in the checkpoint codec's space (the
cascade's own case: the base model's latent goes straight in; it is upscaled as one segment).
Videos are streamed in segments, and the model runs over temporal windows and spatial tiles with
blended overlaps (see ``inference.py``), so any length and size fits in memory. The resolved settings
are written next to the output as ``OUT.config.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cascadevsr.devices import resolve_device
from cascadevsr.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr upscale`` (no heavy imports here: the CLI parser must stay fast)."""
    parser.add_argument("input", help="LR video, or an LR latent .npy (C, t, h, w) in the codec's space")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint file, or a run folder (checkpoint.pt or the latest step-*/)")
    parser.add_argument("--out", required=True, help="output video (.mp4, .mkv, .webm, ...)")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps (default 50)")
    parser.add_argument("--noise-level", type=float, default=None,
                        help="fixed LR noise-augmentation level s (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--scale", type=float, default=None,
                        help="upscaling factor (default: the checkpoint's)")
    parser.add_argument("--window", type=int, default=20, help="latent frames per temporal window")
    parser.add_argument("--window-overlap", type=int, default=5, help="latent frames shared by windows")
    parser.add_argument("--tile", type=int, default=96, help="tile side in HR latent pixels")
    parser.add_argument("--tile-overlap", type=int, default=16, help="HR latent pixels shared by tiles")
    parser.add_argument("--tile-batch", type=int, default=8,
                        help="window x tile chunks per model call: faster while memory lasts, same result "
                             "(default 8)")
    parser.add_argument("--segment", type=int, default=60, help="latent frames per streamed segment")
    parser.add_argument("--segment-overlap", type=int, default=5, help="latent frames shared by segments")
    parser.add_argument("--fps", type=float, default=None,
                        help="output frame rate (default: the input's; 24 for .npy)")
    parser.add_argument("--codec", default="libx264",
                        help="output video codec (libx264, ffv1 for lossless, ...; see cascadevsr.video)")
    parser.add_argument("--crf", type=int, default=18,
                        help="H.264 quality of the output (0-51, lower is better)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="use the raw weights even if EMA weights exist")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def peak_memory_mb(device: Any) -> float:
    """Peak memory of this run in MiB: CUDA allocator peak on a GPU, process peak RSS on the CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def upscale_file(input_path: str | Path, out: str | Path, checkpoint: str | Path, icfg: Any,
                 scale: float | None = None, fps: float | None = None, video_codec: str = "libx264", crf: int = 18,
                 prefer_ema: bool = True, device: str = "auto", show_progress: bool = True) -> dict[str, Any]:
    """Upscale ``input_path`` (video or ``.npy`` LR latent) into the video ``out``; returns a run summary."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from cascadevsr import video
    from cascadevsr.latent import make_codec
    from cascadevsr.train.inference import (
        hr_latent_size,
        model_evaluations,
        segment_spans,
        to_uint8_frames,
        upscale_latent,
        upscale_stream,
    )
    from cascadevsr.train.model import load_checkpoint

    input_path, out = Path(input_path), Path(out)
    if not input_path.is_file():
        raise UserError(f"input {input_path} does not exist")
    dev = resolve_device(device)
    model, state = load_checkpoint(checkpoint, device=dev, prefer_ema=prefer_ema)
    codec = make_codec(model.cfg.codec, device=dev)
    if codec.channels != model.cfg.latent_channels:
        raise UserError(f"checkpoint expects {model.cfg.latent_channels} latent channels, "
                        f"its codec gives {codec.channels}")
    scale = model.cfg.scale if scale is None else scale
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # The input is checked before the progress bar starts, so a bad file is one line on the terminal.
    if input_path.suffix == ".npy":
        try:
            lr_latent = torch.from_numpy(np.load(input_path)).float()
        except (ValueError, OSError, EOFError) as err:
            raise UserError(f"cannot read {input_path} as a .npy latent ({err})") from None
        lr_latent = lr_latent[None] if lr_latent.dim() == 4 else lr_latent
        if lr_latent.dim() != 5 or lr_latent.shape[:2] != (1, codec.channels):
            raise UserError(f"{input_path} must hold a latent (C, t, h, w) with C = {codec.channels}, "
                            f"got shape {tuple(lr_latent.shape)}")
    else:
        info = video.probe(input_path)
    started = time.perf_counter()
    bar = tqdm(total=0, unit="eval", desc="upscale", disable=not show_progress)

    def progress(n: int) -> None:
        bar.update(n)

    if input_path.suffix == ".npy":
        size = hr_latent_size(tuple(lr_latent.shape[-2:]), scale)
        bar.total = model_evaluations(lr_latent.shape[2], size, icfg)
        hr = upscale_latent(model, lr_latent.to(dev), size, icfg, progress=progress)
        frames = to_uint8_frames(codec.decode(hr)[0])
        num_frames, fps = frames.shape[0], fps or 24.0
        video.write_video(out, frames, fps, codec=video_codec, crf=crf)
        in_size = (lr_latent.shape[-2] * codec.space_factor, lr_latent.shape[-1] * codec.space_factor)
    else:
        num_frames, fps = info.num_frames, fps or info.fps or 24.0
        in_size = (info.height, info.width)
        sf, tf = codec.space_factor, codec.time_factor
        lat = (-(-info.height // sf), -(-info.width // sf))
        size = hr_latent_size(lat, scale)
        bar.total = sum(model_evaluations(-(-(b - a - 1) // tf) + 1, size, icfg)
                        for a, b in segment_spans(num_frames, icfg, tf))
        chunks = upscale_stream(model, codec, lambda a, b: video.read_frames(input_path, a, b),
                                num_frames, icfg, scale, progress, dev)
        video.write_video(out, chunks, fps, codec=video_codec, crf=crf)
    bar.close()
    seconds = time.perf_counter() - started
    out_size = (round(in_size[0] * scale), round(in_size[1] * scale))
    return {"input": str(input_path), "out": str(out), "checkpoint": str(checkpoint),
            "step": state.get("step"), "weights": "ema" if prefer_ema and state.get("ema") else "raw",
            "frames": num_frames, "fps": fps, "input_size": list(in_size), "output_size": list(out_size),
            "scale": scale, "device": str(dev), "seconds": seconds, "seconds_per_frame": seconds / num_frames,
            "peak_memory_mb": peak_memory_mb(dev), "model_config": state["model_config"],
            "inference": dict(vars(icfg))}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cascadevsr upscale``."""
    from cascadevsr.train.inference import InferenceConfig

    icfg = InferenceConfig(steps=args.steps, noise_level=args.noise_level, seed=args.seed,
                           window=args.window, window_overlap=args.window_overlap, tile=args.tile,
                           tile_overlap=args.tile_overlap, tile_batch=args.tile_batch, segment=args.segment,
                           segment_overlap=args.segment_overlap)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"upscale {args.input} -> {out} with {args.checkpoint}: {icfg.steps} Euler steps, "
          f"seed {icfg.seed}, windows of {icfg.window} latent frames, tiles of {icfg.tile} latent pixels, "
          f"{icfg.tile_batch} chunks per model call")
    summary = upscale_file(args.input, out, args.checkpoint, icfg, scale=args.scale, fps=args.fps,
                           video_codec=args.codec, crf=args.crf, prefer_ema=not args.raw_weights,
                           device=args.device)
    config_path = out.with_name(out.stem + ".config.json")
    config_path.write_text(json.dumps(summary, indent=2))
    h, w = summary["output_size"]
    print(f"wrote {out} ({summary['frames']} frames, {w}x{h}): "
          f"{summary['seconds_per_frame']:.3f} s/frame, peak memory {summary['peak_memory_mb']:.0f} MiB "
          f"on {summary['device']}; settings in {config_path}")
    return 0
