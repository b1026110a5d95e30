"""Tile batching in ``upscale``: one (window, tile) chunk per model call vs ``tile_batch`` per call.

Default workload: 9 frames of cityCC0 cropped to 48×80 LR pixels (the demo's held-out LR clip size),
upscaled ×4 by the ``tiny`` model with random weights (every weight perturbed, so no output layer is zero)
in tiles of 16 HR latent pixels sharing 4 (what the demo's checkpoint runs with: its 8-pixel training
crop), 4 Euler steps: 13 × 7 = 91 chunks per step. Both settings run in one process, alternating, after
one warm-up each; medians over ``repeats`` of wall and CPU time. ``max_abs_diff`` is the largest
difference between the two float outputs (values in [0, 1]). ``--sweep`` also times other batch sizes
(0 = every chunk of a step in one call).

``--checkpoint RUN --lr-dir DIR`` times a trained checkpoint as ``evaluate --checkpoint`` runs it
(``load_upscaler`` on every ``*.mp4`` in ``DIR``, frames ``0:9``), e.g. the demo's
``demo-out/train`` on ``demo-out/eval/lr``.

    python benchmarks/upscale_tiles.py [--repeats 5] [--threads 1] [--sweep 2,4,16,0] [--tile 16 --tile-overlap 4]
    python benchmarks/upscale_tiles.py --checkpoint demo-out/train --lr-dir demo-out/eval/lr --steps 4

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cascadevsr.latent import make_codec
from cascadevsr.paths import clips_dir
from cascadevsr.train.inference import InferenceConfig, load_upscaler, model_evaluations, upscale_frames
from cascadevsr.train.model import build_model, model_config
from cascadevsr.video import read_frames

CLIP, START, FRAMES, TOP, LEFT, LR_SIZE = "cityCC0.mpg", 40, 9, 140, 300, (48, 80)


def random_tiny_model() -> torch.nn.Module:
    """``tiny`` with seeded random weights, all perturbed (the zero-initialised output layers too)."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny")).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def clip_crop() -> np.ndarray:
    """The benchmark's real LR clip: uint8 ``(9, 48, 80, 3)``."""
    frames = read_frames(clips_dir() / CLIP, START, START + FRAMES)
    h, w = LR_SIZE
    return np.ascontiguousarray(frames[:, TOP:TOP + h, LEFT:LEFT + w])


def timed(runs: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, dict[str, float]], dict]:
    """Median wall and CPU seconds of each run (one warm-up each, then ``repeats`` rounds in turn)."""
    outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs to compare
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():  # alternating, so load changes hit every setting alike
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return ({name: {"wall_s": round(statistics.median(wall[name]), 4),
                    "cpu_s": round(statistics.median(cpu[name]), 4)} for name in runs}, outputs)


def max_abs_diff(a: object, b: object) -> float:
    """Largest absolute difference between two outputs (float tensors or uint8 arrays)."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def bench_model(repeats: int, steps: int, sweep: list[int], tile: int = 16, tile_overlap: int = 4) -> dict:
    """Sequential vs batched (and ``sweep`` batch sizes) on the real crop with the random tiny model."""
    model, lr = random_tiny_model(), clip_crop()
    codec = make_codec(model.cfg.codec)
    base = InferenceConfig(steps=steps, tile=tile, tile_overlap=tile_overlap)
    chunks_per_step = model_evaluations(3, (LR_SIZE[0] * 2, LR_SIZE[1] * 2), base) // steps

    def run_with(batch: int) -> Callable[[], torch.Tensor]:
        icfg = dataclasses.replace(base, tile_batch=batch or chunks_per_step)
        return lambda: upscale_frames(model, codec, lr, icfg)

    batches = {"sequential": 1, "batched": base.tile_batch} | {f"tile_batch={b}": b for b in sweep}
    times, outputs = timed({name: run_with(b) for name, b in batches.items()}, repeats)
    diffs = {name: max_abs_diff(outputs[name], outputs["sequential"]) for name in batches}
    return {"workload": f"{CLIP} frames {START}:{START + FRAMES}, LR {LR_SIZE[1]}x{LR_SIZE[0]}, x4, tiny "
                        f"(random), tile {tile}/{tile_overlap}, {steps} steps, "
                        f"{chunks_per_step} chunks per step",
            "tile_batch": base.tile_batch, "sequential": times["sequential"], "batched": times["batched"],
            "ratio_wall": round(times["sequential"]["wall_s"] / times["batched"]["wall_s"], 3),
            "ratio_cpu": round(times["sequential"]["cpu_s"] / times["batched"]["cpu_s"], 3),
            "max_abs_diff": diffs["batched"],
            "sweep": {name: {**times[name], "max_abs_diff": diffs[name]}
                      for name in batches if name.startswith("tile_batch=")}}


def bench_checkpoint(checkpoint: Path, lr_dir: Path, repeats: int, steps: int) -> dict:
    """Sequential vs batched for a trained checkpoint as the evaluation harness runs it (uint8 output)."""
    clips = [read_frames(p, 0, 9) for p in sorted(lr_dir.glob("*.mp4"))]
    default = InferenceConfig().tile_batch
    upscalers = {"sequential": load_upscaler(checkpoint, steps=steps, tile_batch=1),
                 "batched": load_upscaler(checkpoint, steps=steps, tile_batch=default)}
    scale = upscalers["batched"].model.cfg.scale

    def run_with(name: str) -> Callable[[], np.ndarray]:
        up = upscalers[name]
        return lambda: np.concatenate([up(c, (round(c.shape[1] * scale), round(c.shape[2] * scale)))
                                       for c in clips])

    times, outputs = timed({name: run_with(name) for name in upscalers}, repeats)
    icfg = upscalers["batched"].icfg
    return {"workload": f"{checkpoint} on {len(clips)} clip(s) of {lr_dir} (frames 0:9, "
                        f"{'x'.join(map(str, clips[0].shape[1:3]))} LR), tile {icfg.tile}/{icfg.tile_overlap}, "
                        f"{steps} steps", "tile_batch": default,
            "sequential": times["sequential"], "batched": times["batched"],
            "ratio_wall": round(times["sequential"]["wall_s"] / times["batched"]["wall_s"], 3),
            "ratio_cpu": round(times["sequential"]["cpu_s"] / times["batched"]["cpu_s"], 3),
            "max_abs_diff": max_abs_diff(outputs["batched"], outputs["sequential"])}


def main() -> None:
    """Parse arguments, run one benchmark, print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--sweep", default="", help="more tile_batch values to time, e.g. 2,4,16,0 (0 = all)")
    parser.add_argument("--tile", type=int, default=16, help="tile side in HR latent pixels (default 16)")
    parser.add_argument("--tile-overlap", type=int, default=4, help="HR latent pixels tiles share (default 4)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="time this checkpoint instead")
    parser.add_argument("--lr-dir", type=Path, default=None, help="LR clips (*.mp4) for --checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        if args.lr_dir is None:
            parser.error("--checkpoint needs --lr-dir")
        result = bench_checkpoint(args.checkpoint, args.lr_dir, args.repeats, args.steps)
    else:
        result = bench_model(args.repeats, args.steps, [int(b) for b in args.sweep.split(",") if b],
                             args.tile, args.tile_overlap)
    print(json.dumps({"bench": "upscale_tiles", **result, "repeats": args.repeats, "threads": args.threads,
                      "torch": torch.__version__, "python": platform.python_version()}))


if __name__ == "__main__":
    main()
