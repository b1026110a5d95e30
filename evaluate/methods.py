"""Methods that produce outputs from LR clips: built-in baselines and any callable upscaler.

An *upscaler* is anything with

    name: str
    __call__(lr: uint8 (T, h, w, 3), size: (H, W)) -> uint8 (T, H, W, 3)
    describe() -> dict          # JSON-ready: what ran, with which settings and weights

The evaluation run feeds it each LR clip (in chunks of frames), times it, and scores its output like any
folder of results; the seconds per frame land in the results as the clip-level metric
``runtime_s_per_frame``. The baselines below are upscalers; a trained cascadevsr checkpoint plugs in the
same way through :func:`checkpoint_upscaler`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np
import torch

from cascadevsr.errors import UserError
from cascadevsr.evaluate.weights import weight_hashes


class Upscaler(Protocol):
    """The callable-method interface (see the module docstring)."""

    name: str

    def __call__(self, lr: np.ndarray, size: tuple[int, int]) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class InterpolationUpscaler:
    """Bicubic (OpenCV, a = −0.75) or Lanczos-4 resize of every frame to the target size."""

    FLAGS: ClassVar[dict[str, int]] = {"bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}

    def __init__(self, kind: str) -> None:
        if kind not in self.FLAGS:
            raise UserError(f"unknown interpolation '{kind}'; choose from {sorted(self.FLAGS)}.")
        self.name = kind
        self.kind = kind

    def __call__(self, lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        return np.stack([cv2.resize(f, (w, h), interpolation=self.FLAGS[self.kind]) for f in lr])

    def describe(self) -> dict[str, Any]:
        return {"kind": "interpolation", "method": self.kind, "implementation": f"opencv {cv2.__version__}"}


class RealESRGANUpscaler:
    """A Real-ESRGAN ×4 generator (PyTorch, ncnn weights), tiled; resized to the target when it is not 4×."""

    def __init__(self, model_name: str, device: str = "cpu", weights_dir: str | Path | None = None,
                 tile: int = 192, tile_pad: int = 10) -> None:
        from cascadevsr.evaluate import realesrgan

        self.name = model_name
        self.device = torch.device(device)
        self.model = realesrgan.load_model(model_name, weights_dir).to(self.device)
        self.tile, self.tile_pad = tile, tile_pad
        self._weights = realesrgan.MODELS[model_name][1]

    def __call__(self, lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        from cascadevsr.evaluate.realesrgan import upscale_tiled

        x = torch.from_numpy(lr).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, h, w)
        with torch.inference_mode():
            y = torch.cat([upscale_tiled(self.model, x[i:i + 1], self.tile, self.tile_pad)
                           for i in range(len(x))])
        out = (y * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        h, w = size
        if out.shape[1:3] != (h, w):
            # Non-×4 targets: the network gives ×4, bicubic takes it the rest of the way (recorded below).
            out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in out])
        return out

    def describe(self) -> dict[str, Any]:
        keys = (f"{self._weights}.param", f"{self._weights}.bin")
        return {"kind": "realesrgan", "model": self.name, "native_scale": 4, "tile": self.tile,
                "tile_pad": self.tile_pad, "non_x4_targets": "bicubic resize of the x4 output",
                "weights": weight_hashes(keys), "device": str(self.device)}


# name -> constructor(device, weights_dir, tile). Written out by hand.
BASELINES: dict[str, Any] = {
    "bicubic": lambda device, weights_dir, tile: InterpolationUpscaler("bicubic"),
    "lanczos": lambda device, weights_dir, tile: InterpolationUpscaler("lanczos"),
    "realesrgan-x4plus": lambda device, weights_dir, tile: RealESRGANUpscaler(
        "realesrgan-x4plus", device, weights_dir, tile),
    "realesr-animevideov3": lambda device, weights_dir, tile: RealESRGANUpscaler(
        "realesr-animevideov3", device, weights_dir, tile),
}


def baseline(name: str, device: str = "cpu", weights_dir: str | Path | None = None,
             tile: int = 192) -> Upscaler:
    """Build baseline ``name``; unknown names raise ``UserError`` listing the choices."""
    if name not in BASELINES:
        raise UserError(f"unknown baseline '{name}'; choose from {sorted(BASELINES)}.")
    return BASELINES[name](device, weights_dir, tile)


# The trainer's inference module provides this function once checkpoints exist; the evaluation calls it
# as ``load_upscaler(path, steps=, noise_level=, device=) -> Upscaler``.
CHECKPOINT_LOADER = ("cascadevsr.train.inference", "load_upscaler")


def checkpoint_upscaler(name: str, path: str | Path, steps: int, noise_level: float, device: str) -> Upscaler:
    """An upscaler running a trained cascadevsr checkpoint (``--checkpoint NAME=CKPT``).

    Raises:
        UserError: the checkpoint is missing, or this installation has no checkpoint loader yet.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint {path} for method '{name}' does not exist.")
    module_name, attr = CHECKPOINT_LOADER
    try:
        loader = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise UserError(f"--checkpoint needs {module_name}.{attr}(path, steps=, noise_level=, device=), "
                        "which this version of cascadevsr does not have yet; evaluate the checkpoint's saved "
                        "outputs with --pred NAME=DIR instead.") from None
    upscaler = loader(path, steps=steps, noise_level=noise_level, device=device)
    upscaler.name = name
    return upscaler
