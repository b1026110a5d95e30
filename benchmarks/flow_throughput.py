"""Cost of the flow degradation relative to the DIS flow it is built on, one thread, on real frames.

For each size (640×360 and 320×180) and each real clip, times on the same frames, alternating:

* ``flow``: the op's own flow computation alone (luma conversion + DIS ``fast`` for every adjacent pair,
  ``flow._flows_to_previous``), and ``dis_only``: DIS ``calc`` on pre-converted luma;
* ``total``: ``apply_flow`` with severe settings (6 ellipses of the largest size, ``blend_strength``
  0.75, ``length_scale`` 1: the worst case of the default ranges), and ``typical``: the mean over draws of
  ``sample_flow`` at strength 1.

and reports ``ratio = total / flow`` (target ≤ 1.5) plus per-frame milliseconds of CPU time (one thread).
``ratio_range`` is the lowest and highest ``total / flow`` of a single repeat (each repeat times both
back to back): on a shared machine it shows how far the load moved the numbers.
Clips: bikes' walking man (frames 196+, a person moving in front of a still street), bikes' board (0+,
a large moving object), bikes' street traffic (66+, everything moves) and bigbuckbunny (0+, little
motion); each is resized to the target size with INTER_AREA (bikes is 640×272: its aspect changes).
Medians over ``repeats``. Prints one JSON line; :func:`measure_flow` returns the same dict for reuse.

    python benchmarks/flow_throughput.py [--frames 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import cv2
import numpy as np

from cascadevsr.degrade import base, flow
from cascadevsr.paths import clips_dir
from cascadevsr.video import read_frames

CLIPS = {"walker": ("bikes.mp4", 196), "board": ("bikes.mp4", 0), "traffic": ("bikes.mp4", 66),
         "bunny": ("bigbuckbunny.mp4", 0)}
SIZES = ((640, 360), (320, 180))
TARGET_RATIO = 1.5


def load_clips(num_frames: int) -> dict[str, np.ndarray]:
    """uint8 ``(T, H, W, 3)`` frames of each benchmark clip at its native size."""
    return {name: read_frames(clips_dir() / file, start, start + num_frames)
            for name, (file, start) in CLIPS.items()}


def severe_params() -> flow.FlowParams:
    """The worst case of the default ranges: most, largest ellipses, full blend and full-length blur."""
    ellipses = [[0.12, 0.12 / 1.5, 30.0 * i] for i in range(6)]
    return flow.FlowParams(seed=1, blend=True, blur=True, ellipses=ellipses, blend_strength=0.75,
                           sample_sigma=3.0, length_scale=1.0)


def _seconds(run, repeats: int) -> list[float]:
    """CPU seconds of each of ``repeats`` runs: on a shared machine, wall time also counts the time slices
    other processes take, CPU time does not (one thread, so CPU time is the wall time of a quiet machine)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return times


def measure_flow(clips: dict[str, np.ndarray] | None = None, sizes=SIZES, num_frames: int = 16,
                 repeats: int = 5, draws: int = 4) -> dict:
    """Time the flow op against its DIS flow on ``clips`` at ``sizes`` ((width, height)); one thread.

    Returns ``{"bench": "flow_throughput", ..., "sizes": {"640x360": {"ratio": median over clips, "clips":
    {name: {...}}}}}`` with seconds per frame pair converted to ms per frame.
    """
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        clips = clips if clips is not None else load_clips(num_frames)
        params = severe_params()
        typical = [flow.sample_flow(np.random.default_rng(seed), flow.FlowConfig(), 1.0, num_frames)
                   for seed in range(draws)]
        result = {}
        for width, height in sizes:
            per_clip = {}
            for name, frames_u8 in clips.items():
                frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
                                   for f in frames_u8[:num_frames]]).astype(np.float32) / 255.0
                ctx = base.Context(hr_size=(height, width), lr_size=(height, width), fps=25.0)
                grey = [flow._grey_u8(f) for f in frames]
                dis = cv2.DISOpticalFlow_create(flow.DIS_PRESETS[params.dis_preset])
                flow_s, dis_s, total_s, typical_s = [], [], [], []
                flow.apply_flow(frames, params, ctx)  # warm-up: first-call costs (caches, lazy imports)
                for _ in range(repeats):  # alternate, so that load on the machine hits all alike
                    flow_s += _seconds(lambda fr=frames: list(flow._flows_to_previous(fr, "fast")), 1)
                    dis_s += _seconds(lambda g=grey, d=dis: [d.calc(g[t], g[t - 1], None)
                                                             for t in range(1, len(g))], 1)
                    total_s += _seconds(lambda fr=frames, c=ctx: flow.apply_flow(fr, params, c), 1)
                    typical_s += _seconds(lambda fr=frames, c=ctx: [flow.apply_flow(fr, p, c)
                                                                    for p in typical], 1)
                frames_n = len(frames)
                flow_med = statistics.median(flow_s)
                total_med = statistics.median(total_s)
                typical_med = statistics.median(typical_s) / len(typical)
                moving = float(np.mean(flow.motion_magnitude(frames) > params.motion_threshold))
                per_repeat = [total / flow_time for total, flow_time in zip(total_s, flow_s, strict=True)]
                per_clip[name] = {
                    "moving_fraction": round(moving, 3),
                    "flow_ms_per_frame": round(1000 * flow_med / frames_n, 3),
                    "dis_only_ms_per_frame": round(1000 * statistics.median(dis_s) / frames_n, 3),
                    "total_ms_per_frame": round(1000 * total_med / frames_n, 3),
                    "typical_ms_per_frame": round(1000 * typical_med / frames_n, 3),
                    "ratio": round(total_med / flow_med, 3),
                    "ratio_range": [round(min(per_repeat), 3), round(max(per_repeat), 3)],
                    "ratio_typical": round(typical_med / flow_med, 3),
                }
            ratios = [c["ratio"] for c in per_clip.values()]
            typical_ratios = [c["ratio_typical"] for c in per_clip.values()]
            result[f"{width}x{height}"] = {
                "ratio_median": round(statistics.median(ratios), 3),
                "ratio_max": max(ratios),
                "ratio_typical_median": round(statistics.median(typical_ratios), 3),
                "clips": per_clip,
            }
    finally:
        cv2.setNumThreads(previous_threads)
    return {
        "bench": "flow_throughput",
        "threads": 1,
        "frames": num_frames,
        "repeats": repeats,
        "dis_preset": "fast",
        "target_ratio": TARGET_RATIO,
        "opencv": cv2.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "sizes": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure_flow(num_frames=args.frames, repeats=args.repeats)))


if __name__ == "__main__":
    main()
