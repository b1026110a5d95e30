"""Attention kinds side by side: FLOPs at the paper's shapes, wall time on this machine; one JSON line.

    python benchmarks/attention.py --flops-only      # seconds: FLOPs of full / swin / sparse_local
    python benchmarks/attention.py                   # + CPU wall time at a moderate size (+ GPU if present)

FLOPs are counted for the ``base`` model (~1B) at 17 and 77 frames of 1080p video, through the pixel
codec (4x space, 4x time, 192 channels) and through a Wan-like 8x VAE (16 channels), 2x2 patches. Both
the attention cores alone and the whole forward pass are reported; the paper's Table 2 says sparse local
attention costs 23.4% of full attention (whole-model or attention-only is not stated).

Timing compares one spatio-temporal attention layer (all temporal units of the clip, batch 1): full
attention by SDPA against the fast (gathered-block SDPA) path of swin and sparse_local; on a GPU at the
77-frame Wan-like shape, on the CPU at a smaller grid. Ratios come from one run of this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from cascadevsr.train.attention import AttentionSpec, attend, attention_flops
from cascadevsr.train.model import model_config, model_flops

KINDS = ("full", "swin", "sparse_local")


def latent_grid(frames: int, height: int, width: int, space: int, time_factor: int, patch: int
                ) -> tuple[int, int, int]:
    """(latent frames, token rows, token cols) of a video through a codec and a patchify."""
    t = (frames - 1) // time_factor + 1
    h = -(-height // space)
    w = -(-width // space)
    return t, -(-h // patch), -(-w // patch)


def flops_table() -> dict:
    """FLOPs of every kind at the paper's shapes, absolute and relative to full attention."""
    codecs = {
        "pixel4": ({"name": "pixel", "space_factor": 4, "time_factor": 4}, 0, 4),
        "wan8": ({"name": "wan", "path": "(Wan-like 8x VAE)"}, 16, 8),
    }
    out = {}
    for codec_name, (spec, channels, space) in codecs.items():
        cfg = model_config("base", codec=spec, latent_channels=channels)
        for frames in (17, 77):
            t, h, w = latent_grid(frames, 1080, 1920, space, 4, cfg.patch)
            rows = {}
            for kind in KINDS:
                f = model_flops(cfg, t, h * cfg.patch, w * cfg.patch, attention=kind)
                rows[kind] = {"attention_gflops": f["attention"] / 1e9, "total_gflops": f["total"] / 1e9}
            for kind in ("swin", "sparse_local"):
                rows[f"{kind}_over_full_total"] = rows[kind]["total_gflops"] / rows["full"]["total_gflops"]
                rows[f"{kind}_over_full_attention"] = (rows[kind]["attention_gflops"]
                                                       / rows["full"]["attention_gflops"])
            out[f"{codec_name}_{frames}f"] = {"latent_tokens": [t, h, w], **rows}
    return out


def time_call(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_kinds(groups: int, frames: int, height: int, width: int, heads: int, head_dim: int,
               device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """Wall time (and GPU peak memory) of one unit-attention layer per kind, fast path."""
    g = torch.Generator(device=device).manual_seed(0)
    shape = (groups, heads, frames, height, width, head_dim)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
    result = {"shape": list(shape), "dtype": str(dtype).replace("torch.", "")}
    for kind in KINDS:
        spec = AttentionSpec(kind, window=(9, 12), topk=1, path="fast")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            seconds = time_call(lambda spec=spec: attend(q, k, v, spec), repeats, device)
        row = {"seconds": seconds,
               "gflops": groups * attention_flops(kind, frames, height, width, heads * head_dim) / 1e9}
        if device.type == "cuda":
            row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result[kind] = row
    for kind in ("swin", "sparse_local"):
        result[f"{kind}_speedup_over_full"] = result["full"]["seconds"] / result[kind]["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops-only", action="store_true", help="only count FLOPs (seconds)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per kind (median)")
    args = parser.parse_args()
    report: dict = {"benchmark": "attention", "torch": torch.__version__, "machine": platform.machine(),
                    "cpu_threads": torch.get_num_threads(), "flops": flops_table()}
    if not args.flops_only:
        # CPU: 2 units of 5 latent frames on a 36x48 token grid (a 4x-downscaled 1080p Wan-like latent)
        report["cpu"] = time_kinds(2, 5, 36, 48, heads=4, head_dim=32, device=torch.device("cpu"),
                                   dtype=torch.float32, repeats=args.repeats)
        if torch.cuda.is_available():
            device = torch.device("cuda")
            report["gpu_name"] = torch.cuda.get_device_name(device)
            # 77 frames of 1080p, Wan-like: 4 temporal units of 5 latent frames, 68x120 tokens, base width
            report["gpu"] = time_kinds(4, 5, 68, 120, heads=24, head_dim=64, device=device,
                                       dtype=torch.bfloat16, repeats=args.repeats)
        else:
            report["gpu"] = "not measured: no GPU available"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
