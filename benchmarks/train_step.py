"""Training step time with cached latents vs decoding and re-encoding every step, and input-pipeline wait.

Builds (or reuses, ``--corpus``) a corpus from the fetched clips, then measures for each latent mode
(``encode``: decode the videos, crop, encode every step; ``cache``: whole-clip latents read from the cache
beside the shards, filled by one warm-up pass):

* ``pipeline``: micro-batches/s of the input pipeline alone, latents included (what a fast accelerator
  would ask of it);
* ``train``: median step time and the share of it spent waiting for data (``data_wait``), from the
  trainer's own ``metrics.csv`` after a warm-up.

Codecs (``--codec``): ``pixel`` (the preset's weightless codec: encoding is a reshape, nearly free) or
``wan-arch``: a diffusers ``AutoencoderKLWan`` with its default (Wan 2.1) architecture, random-initialised
from a fixed seed and saved to a temporary folder, used as ``model.codec = {"name": "wan", "path": ...}``.
The real Wan weights are not available offline; random weights of the same architecture cost the same
compute per encode, which is all this benchmark measures (the latents are meaningless, the losses too).
``--wan-base-dim`` narrows it (96 is Wan 2.1's width) for machines where the full encoder is too slow.

Prints one JSON line per measurement and a summary line with the ratios (targets: cache ≥ 2× faster per
step, data wait < 10% of the step).

    python benchmarks/train_step.py [--corpus DIR] [--steps 30] [--preset tiny|small] [--device cpu|cuda]
                                    [--codec pixel|wan-arch] [--wan-base-dim 96]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cascadevsr  # noqa: F401  (installs the torchvision import shim before diffusers imports torchvision)


def build(out: Path, hr: int, frames: int, clips_per_video: int) -> Path:
    from cascadevsr.datasets.builder import build_corpus
    from cascadevsr.datasets.config import CorpusConfig
    from cascadevsr.paths import clips_dir

    names = ["bikes.mp4", "cityCC0.mpg", "bigbuckbunny.mp4", "earth.mp4", "jwpIntro.mp4", "testMovie.mp4"]
    inputs = tuple(str(clips_dir() / n) for n in names if (clips_dir() / n).exists())
    cfg = CorpusConfig(inputs=inputs, out=str(out), preset="realbasicvsr", clip_frames=frames,
                       max_clips_per_video=clips_per_video, hr_size=(hr, hr), scale=4.0, samples_per_shard=4,
                       workers=0)
    build_corpus(cfg, show_progress=False, announce=None)
    return out


def wan_arch_codec(folder: Path, base_dim: int, seed: int = 0) -> tuple[list[str], dict]:
    """Save a random-initialised ``AutoencoderKLWan`` (default architecture, width ``base_dim``) to ``folder``;
    returns the config overrides that train with it and a description of the VAE."""
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=base_dim)
    vae.save_pretrained(folder)
    # The config reads the latent channel count from the saved folder (see train/config.py).
    overrides = [f"model.codec={json.dumps({'name': 'wan', 'path': str(folder)})}"]
    info = {"vae": "AutoencoderKLWan", "vae_base_dim": base_dim, "vae_init_seed": seed,
            "latent_channels": vae.config.z_dim,
            "vae_encoder_params_m": round(sum(p.numel() for p in vae.encoder.parameters()) / 1e6, 2)}
    return overrides, info


def pipeline_rate(cfg, batches: int) -> float:
    """Micro-batches per second of the input pipeline, latents computed, no model."""
    import torch

    from cascadevsr.latent import make_codec
    from cascadevsr.train.trainer import BatchStream, batch_latents, make_dataset, resolve_urls

    urls = resolve_urls(cfg.data.shards)
    codec = make_codec(cfg.model.codec)
    cache = str(Path(cfg.data.cache_dir))
    per_worker = cfg.micro_batch * batches
    stream = BatchStream(make_dataset(urls, cfg, rank=0, world_size=1, seed=0, flips=True, cache_dir=cache,
                                      use_stored=False, per_worker=per_worker), cfg.micro_batch,
                         cfg.data.num_workers)
    threads = torch.get_num_threads()
    # The trainer's thread count, so the encode here runs as it does in a training step.
    torch.set_num_threads(cfg.cpu_threads or threads)
    try:
        # Worker start-up and the codec's first call (a VAE's kernel set-up) are not throughput.
        batch_latents(next(stream), codec, torch.device("cpu"))
        t = time.perf_counter()
        for _ in range(batches - 1):
            batch_latents(next(stream), codec, torch.device("cpu"))
        rate = (batches - 1) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
        stream.close()
    return rate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="existing corpus folder (default: build one in a temp folder)")
    parser.add_argument("--hr", type=int, default=256, help="HR side of the built corpus (default 256)")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    parser.add_argument("--crop", type=int, default=16, help="LR crop side (default 16: 64x64 HR crops)")
    parser.add_argument("--preset", default="tiny", help="training preset (default tiny)")
    parser.add_argument("--steps", type=int, default=30, help="measured training steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the statistics")
    parser.add_argument("--workers", type=int, default=1, help="loader workers (default 1)")
    parser.add_argument("--device", default="auto", help="training device (default auto)")
    parser.add_argument("--codec", choices=("pixel", "wan-arch"), default="pixel",
                        help="pixel (the preset's) or wan-arch (Wan 2.1 VAE architecture, random weights)")
    parser.add_argument("--wan-base-dim", type=int, default=96, help="wan-arch width (default 96: Wan 2.1)")
    parser.add_argument("--clips-per-video", type=int, default=4, help="clips per fetched video in the corpus")
    parser.add_argument("--pipeline-batches", type=int, default=16, help="micro-batches timed per pipeline rate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    args = parser.parse_args()
    if args.codec == "wan-arch" and args.crop % 8:
        parser.error(f"--crop {args.crop}: the Wan VAE needs crops that are a multiple of its space factor 8")
    return args


def measure(mode: str, cfg, args: argparse.Namespace, run: Path, codec_info: dict) -> dict:
    """Pipeline rate, then a training run; the JSON row of one latent mode."""
    import pandas as pd
    import torch

    from cascadevsr.train.trainer import train

    rate = pipeline_rate(cfg, args.pipeline_batches)
    train(cfg, run, show_progress=False)
    df = pd.read_csv(run / "metrics.csv").iloc[args.warmup:]
    return {"bench": "train_step", "mode": mode, "preset": args.preset, "codec": args.codec, **codec_info,
            "device": str(cfg.device), "torch": torch.__version__, "hr": args.hr, "frames": args.frames,
            "crop": cfg.data.crop_size, "micro_batch": cfg.micro_batch, "global_batch": cfg.global_batch,
            "loader_workers": args.workers, "pipeline_batches_per_s": rate,
            "step_time_s": statistics.median(df.step_time), "data_wait": float(df.data_wait.mean()),
            "samples_per_s": float(df.samples_per_s.median()), "tokens_per_s": float(df.tokens_per_s.median())}


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="train-step-"))
    try:
        run_all(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # corpus, caches and a ~500 MB VAE for --codec wan-arch


def run_all(args: argparse.Namespace, tmp: Path) -> None:
    """Build the corpus, then measure both latent modes in ``tmp`` and print the JSON lines."""
    from cascadevsr.train.config import load_config

    t0 = time.perf_counter()
    corpus = Path(args.corpus) if args.corpus else build(tmp / "corpus", args.hr, args.frames,
                                                         args.clips_per_video)
    build_s = time.perf_counter() - t0
    codec_overrides, codec_info = ([], {"vae": None})
    if args.codec == "wan-arch":
        codec_overrides, codec_info = wan_arch_codec(tmp / "wan-vae", args.wan_base_dim)
    base = [*codec_overrides, f"data.num_frames={args.frames}", f"data.crop_size={args.crop}",
            f"data.num_workers={args.workers}", "val.every=0", f"steps={args.warmup + args.steps}",
            "ckpt_every=100000", "log_every=1000", f"device={args.device}", f"data.cache_dir={tmp / 'cache'}",
            "data.samples_per_epoch=64", *args.overrides, f"data.shards={corpus}"]
    results = {}
    for mode in ("encode", "cache"):
        cfg = load_config(args.preset, overrides=[*base, f"data.latents={mode}"])
        if mode == "cache":  # fill the cache: one pass over every clip
            fill = load_config(args.preset, overrides=[*base, "data.latents=cache", "data.samples_per_epoch=512"])
            t = time.perf_counter()
            pipeline_rate(fill, 512 // fill.micro_batch)
            results["cache_fill_s"] = time.perf_counter() - t
        results[mode] = measure(mode, cfg, args, tmp / f"run-{mode}", codec_info)
        print(json.dumps(results[mode]), flush=True)
    enc, cac = results["encode"], results["cache"]
    print(json.dumps({"bench": "train_step", "summary": True, "codec": args.codec, "corpus_build_s": build_s,
                      "cache_fill_s": results["cache_fill_s"],
                      "step_speedup_cache_vs_encode": enc["step_time_s"] / cac["step_time_s"],
                      "pipeline_speedup_cache_vs_encode": cac["pipeline_batches_per_s"] / enc["pipeline_batches_per_s"],
                      "data_wait_encode": enc["data_wait"], "data_wait_cache": cac["data_wait"]}), flush=True)


if __name__ == "__main__":
    main()
