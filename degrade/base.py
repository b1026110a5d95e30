"""What every degradation step shares: the frame convention, the context, and strength-scaled ranges.

Frame convention inside ``degrade``: ``float32`` numpy arrays ``(T, H, W, 3)``, RGB, values in ``[0, 1]``
(values may leave that interval between steps, as in Real-ESRGAN; the pipeline clips and quantises at the
end). We use HWC numpy rather than CHW torch tensors here because every step is an OpenCV/numpy kernel
and this layout needs no copies between them.

A step is a module with a config dataclass (ranges, read from a preset's YAML), a frozen params dataclass
(one fully resolved draw, JSON-serialisable) and two functions::

    sample_params(rng: np.random.Generator, cfg: Config, strength: float, num_frames: int) -> Params
    apply(frames: np.ndarray, params: Params, ctx: Context) -> np.ndarray

``apply`` is pure: the same frames and params give the same output bytes; any randomness it needs (noise)
comes from a seed stored in ``params``.

Ranges are written **mild → severe** (``jpeg quality: [95, 30]``, ``noise sigma: [1, 30]``): a strength
``s`` keeps the part ``[mild, mild + s·(severe − mild)]``, so ``s = 1`` is the published range and ``s = 0``
the mildest setting. Probabilities are not scaled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascadevsr.errors import UserError


@dataclass(frozen=True)
class Context:
    """Sizes a step may need. ``hr_size`` and ``lr_size`` are ``(height, width)`` of the clean HR input
    and of the final LR output; ``fps`` is the clip's frame rate (codec steps need it); ``base_model`` is the
    ``cascadevsr.base_model.BaseModel`` the model-guided step denoises with (``None`` when none was given)."""

    hr_size: tuple[int, int]
    lr_size: tuple[int, int]
    fps: float = 25.0
    base_model: Any = field(default=None, compare=False, repr=False)


def scaled_range(bounds: Sequence[float], strength: float) -> tuple[float, float]:
    """Return the sub-range of ``bounds = [mild, severe]`` that ``strength`` in [0, 1] allows."""
    mild, severe = float(bounds[0]), float(bounds[1])
    return mild, mild + strength * (severe - mild)


def uniform(rng: np.random.Generator, bounds: Sequence[float], strength: float) -> float:
    """Draw uniformly from the strength-scaled ``[mild, severe]`` range."""
    lo, hi = scaled_range(bounds, strength)
    return float(rng.uniform(min(lo, hi), max(lo, hi))) if lo != hi else lo


def choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    """Draw one key of ``probs`` with the given (unnormalised) probabilities."""
    keys = list(probs)
    p = np.asarray([probs[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def drift(rng: np.random.Generator, start: float, step: float, num_frames: int,
          bounds: Sequence[float]) -> list[float]:
    """A per-frame random walk from ``start`` with increments U[-step, step], clipped to ``bounds``.

    RealBasicVSR varies some parameters slightly from frame to frame this way so that a clip's
    degradation is coherent but not frozen. ``step = 0`` gives a constant list.
    """
    lo, hi = min(bounds), max(bounds)
    values = [start]
    for _ in range(num_frames - 1):
        values.append(float(np.clip(values[-1] + rng.uniform(-step, step), lo, hi)) if step else values[-1])
    return values


def new_seed(rng: np.random.Generator) -> int:
    """A fresh 63-bit seed for randomness used inside ``apply`` (noise fields, codec choices)."""
    return int(rng.integers(0, 2**63 - 1))


def config_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build config dataclass ``cls`` from a preset mapping; unknown keys are a ``UserError`` naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown parameter(s) {unknown}; known: {sorted(names)}.")
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from None


def params_to_json(params: Any) -> dict[str, Any]:
    """A params dataclass as a plain JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(params)
