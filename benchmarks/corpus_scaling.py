"""Corpus builder scaling and loader throughput, side by side on the same real input.

Builds the same corpus four times from ``bigbuckbunny.mp4`` (1280×720, the 720p clip of the cache):
17-frame clips (starts every 4 frames, ``--clips`` of them evenly spread), HR 1280×720, x4,
``realbasicvsr``, one clip per shard:

* (a) ``--workers 0``: the plain single-process loop over ``process_shard`` (no Ray at all);
* (b) ``--workers 1``: one Ray worker;
* (c) ``--workers 2``: two Ray workers;
* (d) the same shard tasks in two plain spawned OS processes (``ProcessPoolExecutor``, no Ray): what
  the machine itself gives two parallel copies of this work, the ceiling for (c).

and reports Ray's overhead ``b / a`` and the two-worker speedup ``b / c``, both on the whole build's wall
time (Ray start and shutdown included) and on the shard phase alone, plus the plain two-process speedup
``a / d`` and Ray's share of it, and clip pairs/s/core. The four corpora must be byte-identical (checked).
720p frame processing is memory-bound, so two cores of a VM sharing one memory system can give well below
2× even with no scheduler in between; (d) measures that ceiling in the same run.

Then the loader: clips/s through ``pair_loader`` from the
shards (decode HR + LR, 64-px LR crops; 32 with --quick) against decoding the same 17-frame ranges from
the source video, and against decoding plus synthesising the pair on the fly.

Each run also reports the mean wall and CPU time of one shard task and how busy the whole machine was
(``/proc/stat``):
on a shared machine, a two-worker run whose tasks take twice as long as the one-worker run's did not get
two free cores. Every task runs on one thread (``threads_per_task = 1``; ``OMP_NUM_THREADS=1``), so a worker is a core.
Prints two JSON lines.

    python benchmarks/corpus_scaling.py [--clips 8] [--quick]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import torch  # noqa: E402

from cascadevsr.datasets.builder import build_corpus, load_plan  # noqa: E402
from cascadevsr.datasets.config import CorpusConfig  # noqa: E402
from cascadevsr.datasets.loader import pair_loader  # noqa: E402
from cascadevsr.paths import clips_dir  # noqa: E402
from cascadevsr.video import read_frames  # noqa: E402

SOURCE = "bigbuckbunny.mp4"


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat: on a shared machine the busy share during a
    run says whether the cores a run asked for were free."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class PoolRunner:
    """The builder's tasks in ``workers`` plain spawned processes: no Ray, no progress reporting."""

    def __init__(self, workers: int) -> None:
        self.parallelism = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))

    def map(self, fn, items, on_result, report=None) -> None:
        futures = {self.pool.submit(fn, item): item for item in items}
        for future in as_completed(futures):
            on_result(futures[future], future.result())

    def close(self) -> None:
        self.pool.shutdown()


def build(workdir: Path, name: str, workers: int, clips: int, hr_size: tuple[int, int],
          pool: int = 0) -> dict:
    """One full build: wall time of ``build_corpus``, its phase timings, the mean time of one shard task and
    how busy the whole machine was meanwhile (1.0 = every core busy, ours or not). ``pool`` > 0 runs the
    tasks in that many plain processes instead of the builder's own runner."""
    cfg = CorpusConfig(inputs=(str(clips_dir() / SOURCE),), out=str(workdir / name), preset="realbasicvsr",
                       clip_frames=17, stride=4, max_clips_per_video=clips, hr_size=hr_size, scale=4.0,
                       samples_per_shard=1, workers=workers, seed=0)
    busy0, total0 = machine_cpu()
    t0 = time.perf_counter()
    factory = (lambda _cfg: PoolRunner(pool)) if pool else None
    report = build_corpus(cfg, show_progress=False, announce=None, runner_factory=factory)
    wall = time.perf_counter() - t0
    busy1, total1 = machine_cpu()
    shards = [json.loads(p.read_text()) for p in (workdir / name).glob("shard-*.json")]
    assert report.complete and report.stats["clips"]["samples"] == clips, report.stats
    tp = report.stats["throughput"]
    return {"wall_s": round(wall, 2), "shard_s": tp["shard_seconds"], "scan_s": tp["scan_seconds"],
            "mean_task_s": round(sum(s["seconds"] for s in shards) / len(shards), 2),
            "mean_task_cpu_s": round(sum(s["cpu_seconds"] for s in shards) / len(shards), 2),
            "machine_busy": round((busy1 - busy0) / max(1, total1 - total0), 3)}


def differing(a: Path, b: Path) -> list[str]:
    """Shard tars of ``b`` whose bytes differ from (or are missing in) ``a``."""
    tars = sorted({p.name for p in a.glob("shard-*.tar")} | {p.name for p in b.glob("shard-*.tar")})
    return [f"{b.name}/{t}" for t in tars
            if not (a / t).exists() or not (b / t).exists() or (a / t).read_bytes() != (b / t).read_bytes()]


def loader_rate(corpus: Path, passes: int, crop: int) -> float:
    """Clips/s through pair_loader (main process, LR crops of ``crop`` px)."""
    loader = pair_loader(corpus, batch_size=1, num_workers=0, crop_size=crop, shuffle_buffer=1)
    n, t0 = 0, time.perf_counter()
    for _ in range(passes):
        for batch in loader:
            n += len(batch["__key__"])
    return n / (time.perf_counter() - t0)


def source_rate(corpus: Path, passes: int) -> float:
    """Clips/s decoding the same frame ranges from the source video (what a loader without shards reads)."""
    clips, _ = load_plan(corpus)
    n, t0 = 0, time.perf_counter()
    for _ in range(passes):
        for c in clips:
            read_frames(c.source, c.start, c.end)
            n += 1
    return n / (time.perf_counter() - t0)


def on_the_fly_rate(corpus: Path) -> float:
    """Clips/s decoding the source ranges and synthesising the pair (a loader without a corpus)."""
    import numpy as np

    from cascadevsr.datasets.sources import fit_hr
    from cascadevsr.degrade.pipeline import degrade_clip, load_preset

    clips, _ = load_plan(corpus)
    cfg = json.loads((corpus / "config.json").read_text())
    preset = load_preset(cfg["preset"])
    t0 = time.perf_counter()
    for c in clips:
        hr, _ = fit_hr(read_frames(c.source, c.start, c.end), tuple(cfg["hr_size"]), "resize", False,
                       np.random.default_rng(0))
        degrade_clip(hr, preset, c.seed, scale=cfg["scale"], fps=c.fps)
    return len(clips) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8, help="clips (= shards) per build; even (default 8)")
    parser.add_argument("--quick", action="store_true", help="HR 320x180 instead of 1280x720 (smoke run)")
    parser.add_argument("--keep", help="build in this folder and keep the corpora (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    hr_size = (180, 320) if args.quick else (720, 1280)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    if args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    try:
        runs = {name: build(workdir, name, w, args.clips, hr_size, pool)
                for name, w, pool in (("loop", 0, 0), ("ray1", 1, 0), ("ray2", 2, 0), ("pool2", 0, 2))}
        # A difference between runs means the code changed under the benchmark (a shared, live tree) or a
        # nondeterminism; ray1 vs ray2 tells the two apart when the loop run alone differs.
        diff = [t for other in ("ray1", "ray2", "pool2") for t in differing(workdir / "loop", workdir / other)]
        diff += [f"vs ray1: {t}" for t in differing(workdir / "ray1", workdir / "ray2")]
        a, b, c, d = runs["loop"], runs["ray1"], runs["ray2"], runs["pool2"]
        print(json.dumps({
            "bench": "corpus_scaling", "source": SOURCE, "preset": "realbasicvsr", "clip_frames": 17,
            "hr_size": f"{hr_size[1]}x{hr_size[0]}", "clips": args.clips, "cores": os.cpu_count(),
            "runs": runs, "identical_outputs": not diff, "differing_shards": diff,
            "ray_overhead_wall": round(b["wall_s"] / a["wall_s"], 3),
            "ray_overhead_shards": round(b["shard_s"] / a["shard_s"], 3),
            "speedup_2_workers_wall": round(b["wall_s"] / c["wall_s"], 3),
            "speedup_2_workers_shards": round(b["shard_s"] / c["shard_s"], 3),
            "speedup_2_plain_processes_shards": round(a["shard_s"] / d["shard_s"], 3),
            "ray2_share_of_plain_2_process_speedup": round((b["shard_s"] / c["shard_s"])
                                                           / (a["shard_s"] / d["shard_s"]), 3),
            "pairs_per_s_per_core_loop": round(args.clips / a["shard_s"], 4),
            "pairs_per_s_per_core_ray2": round(args.clips / c["shard_s"] / 2, 4),
            "machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"),
        }), flush=True)
        corpus = workdir / "loop"
        crop = 32 if args.quick else 64
        from_shards, from_source, on_the_fly = loader_rate(corpus, 2, crop), source_rate(corpus, 2), \
            on_the_fly_rate(corpus)
        print(json.dumps({
            "bench": "loader_throughput", "hr_size": f"{hr_size[1]}x{hr_size[0]}", "clip_frames": 17,
            "lr_crop": crop,
            "loader_clips_per_s": round(from_shards, 3), "source_decode_clips_per_s": round(from_source, 3),
            "source_decode_and_degrade_clips_per_s": round(on_the_fly, 3),
            "loader_vs_source_decode": round(from_shards / from_source, 3),
            "loader_vs_on_the_fly": round(from_shards / on_the_fly, 3),
        }), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
