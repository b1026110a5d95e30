"""Stage what ``metrics_throughput.py`` needs on a GPU machine that has torch but no PyAV, pyiqa or weights.

The files go in two folders under ``.device/`` (ignored by git), so that each copy to the remote machine
stays small: ``big/`` holds the VGG16 pickle (56 MiB) alone, ``small/`` the rest (frames as ``.npy``, the
AlexNet pickle, LPIPS/DISTS/NIQE parameters, the pyiqa package).

    python benchmarks/device/stage.py      # on a machine with the fetched data and the reference extra

On the GPU machine, from the repository root, once both folders are there:

    sh benchmarks/device/metrics.sh        # DEVICE=cuda FRAMES=4 by default

It installs cascadevsr without dependencies when it is not importable, assembles the weights folder and
runs the benchmark with 1 and 4 methods per ground truth, printing one JSON line each.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from cascadevsr.evaluate.weights import weight_path
from cascadevsr.paths import clips_dir, weights_dir
from cascadevsr.video import read_frames

SMALL_WEIGHTS = ("alexnet", "lpips_lin_alex", "dists_alpha_beta", "niqe_pris_params")


def copy_weight(key: str, home: Path) -> None:
    """Copy a verified weight file to the same place under ``home/weights``."""
    src = weight_path(key)
    dest = home / "weights" / src.relative_to(weights_dir())
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".device", help="staging folder (default .device)")
    ap.add_argument("--frames", type=int, default=4, help="720p frames of bigbuckbunny to write (default 4)")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    copy_weight("vgg16", out / "big" / "home")
    small = out / "small"
    for key in SMALL_WEIGHTS:
        copy_weight(key, small / "home")
    np.save(small / "frames.npy", read_frames(clips_dir() / "bigbuckbunny.mp4", 30, 30 + args.frames))
    import pyiqa

    shutil.copytree(Path(pyiqa.__file__).parent, small / "site" / "pyiqa",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("big", "small"):
        size = sum(f.stat().st_size for f in (out / part).rglob("*") if f.is_file())
        print(f"{out / part}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
