"""Rectified flow: ``x_t = (1 - t)·x0 + t·ε``, t ∈ [0, 1], t = 0 is data and t = 1 is noise.

The network predicts the velocity ``v = dx_t/dt = ε - x0`` (the training target, paper Eq. 3); from a
velocity the clean estimate is ``x̂0 = x_t - t·v`` and one Euler step from t to s is ``x_s = x_t + (s - t)·v``.
Sampling integrates from t = 1 to t = 0 over N steps (default 50) on a uniform grid.

Everything here is a pure function or a stateless object. Every random draw takes an explicit
``torch.Generator``. The timestep *density* (which t training sees: ``uniform``, ``logit_normal``,
``detail_aware``) and the loss *weighting* (how much each t counts: ``none``) are separate settings, and
unknown names raise.

The ``detail_aware`` density file (written by the timestep analysis, read here) is JSON::

    {"edges": [0.0, 0.02, ..., 1.0],   # K+1 increasing values from 0 to 1
     "pdf":   [w_1, ..., w_K]}          # K non-negative weights, one per bin (normalised on load)

i.e. a piecewise-constant density on [0, 1]; :func:`write_density_file` writes it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cascadevsr.errors import UserError

# --------------------------------------------------------------------------------------------- the path


def _bcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``t`` of shape (B,) (or a scalar) viewed as (B, 1, ..., 1) to broadcast against ``like``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``x_t = (1 - t)·x0 + t·noise``; ``t`` is a scalar or one value per batch item."""
    t = _bcast(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``ε - x0``."""
    return noise - x0


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Clean estimate ``x̂0 = x_t - t·v``."""
    return x_t - _bcast(t, x_t) * velocity


def step_to(velocity: torch.Tensor, x_t: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """One Euler step of the flow ODE from time ``t`` to time ``s`` (s < t when denoising)."""
    return x_t + (s - t) * velocity


# --------------------------------------------------------------------------------------------- the loss

LOSS_WEIGHTINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # the paper's Eq. 3: every t counts the same
    "none": lambda t: torch.ones_like(t),
}


def flow_loss(velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
              weighting: str = "none") -> torch.Tensor:
    """Mean over the batch of ``w(t)·mean‖(ε - x0) - v‖²`` (per-item mean over all latent elements)."""
    if weighting not in LOSS_WEIGHTINGS:
        raise UserError(f"unknown loss weighting '{weighting}'; choose from {sorted(LOSS_WEIGHTINGS)}")
    err = (velocity_target(x0, noise) - velocity).float().pow(2)
    per_item = err.reshape(err.shape[0], -1).mean(dim=1)  # (B,)
    return (LOSS_WEIGHTINGS[weighting](t.float()) * per_item).mean()


# ------------------------------------------------------------------------------------------ the sampler


def timestep_grid(steps: int, shift: float = 1.0) -> list[float]:
    """``steps + 1`` times from 1 down to 0, uniform or warped by ``t' = shift·t / (1 + (shift-1)·t)``.

    ``shift = 1`` (default) is the plain uniform grid, which the paper's detail analysis assumes; the warp
    (shift > 1 spends more steps at high noise) is offered for experiments.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = [1.0 - i / steps for i in range(steps + 1)]
    return [shift * t / (1 + (shift - 1) * t) for t in grid]


@dataclass(frozen=True)
class EulerStep:
    """What the sampler reports after each step: the step index, its times, x_t before the step, x̂0."""

    index: int
    t: float
    s: float
    x_t: torch.Tensor
    x0_hat: torch.Tensor


def euler_sample(velocity_fn: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor,
                 steps: int = 50, shift: float = 1.0,
                 callback: Callable[[EulerStep], None] | None = None) -> torch.Tensor:
    """Integrate the flow ODE from ``noise`` (t = 1) to t = 0 with ``steps`` Euler steps.

    ``velocity_fn(x_t, t) -> v`` is evaluated once per step; ``callback`` sees x̂0 at every step (the
    timestep analysis reads it). Returns x at t = 0.
    """
    grid = timestep_grid(steps, shift)
    x = noise
    for i, (t, s) in enumerate(itertools.pairwise(grid)):
        v = velocity_fn(x, t)
        if callback is not None:
            callback(EulerStep(i, t, s, x, predict_x0(x, v, t)))
        x = step_to(v, x, t, s)
    return x


# ------------------------------------------------------------------------------------ timestep samplers


class TimestepSampler:
    """A density on [0, 1] for training timesteps: ``sample`` draws, ``cdf`` describes (for tests/plots)."""

    name: str

    def sample(self, n: int, generator: torch.Generator, device: str | torch.device = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def cdf(self, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class UniformSampler(TimestepSampler):
    """t ~ U[0, 1] (the paper's baseline)."""

    name = "uniform"

    def sample(self, n: int, generator: torch.Generator, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device)

    def cdf(self, t: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)


class LogitNormalSampler(TimestepSampler):
    """t = sigmoid(u), u ~ N(m, s²) (SD3's logit-normal; not in the paper, offered for comparison)."""

    name = "logit_normal"

    def __init__(self, m: float = 0.0, s: float = 1.0) -> None:
        if s <= 0:
            raise UserError(f"logit_normal needs s > 0, got {s}")
        self.m, self.s = float(m), float(s)

    def sample(self, n: int, generator: torch.Generator, device: str | torch.device = "cpu") -> torch.Tensor:
        u = torch.randn(n, generator=generator, device=device) * self.s + self.m
        return torch.sigmoid(u)

    def cdf(self, t: np.ndarray) -> np.ndarray:
        t = np.clip(np.asarray(t, dtype=np.float64), 1e-12, 1 - 1e-12)
        z = (np.log(t / (1 - t)) - self.m) / (self.s * math.sqrt(2.0))
        return 0.5 * (1 + np.vectorize(math.erf)(z))


class PiecewiseConstantSampler(TimestepSampler):
    """A piecewise-constant density: pick bin i with probability ``w_i``, then t uniform inside it.

    This is the ``detail_aware`` sampler (SimpleGVR §4.3) when the weights come from the detail-variation
    curve of a uniform-trained model; bins are the inference step intervals.
    """

    name = "detail_aware"

    def __init__(self, edges: Sequence[float], weights: Sequence[float]) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        problems = []
        if self.edges.ndim != 1 or len(self.edges) != len(w) + 1:
            problems.append(f"need K+1 edges for K weights, got {len(self.edges)} edges and {len(w)} weights")
        elif not (np.all(np.diff(self.edges) > 0) and self.edges[0] == 0.0 and self.edges[-1] == 1.0):
            problems.append("edges must increase strictly from 0 to 1")
        if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            problems.append("weights must be finite, non-negative and not all zero")
        if problems:
            raise UserError("bad piecewise-constant density: " + "; ".join(problems))
        self.probs = w / w.sum()
        self._cum = np.concatenate([[0.0], np.cumsum(self.probs)])

    @classmethod
    def from_file(cls, path: str | Path) -> PiecewiseConstantSampler:
        """Read the JSON density file described in the module docstring."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"detail-aware density file {path} does not exist; "
                            "run the timestep analysis first")
        data = json.loads(path.read_text())
        if "edges" not in data or "pdf" not in data:
            raise UserError(f"{path} must be a JSON object with 'edges' and 'pdf'")
        return cls(data["edges"], data["pdf"])

    def sample(self, n: int, generator: torch.Generator, device: str | torch.device = "cpu") -> torch.Tensor:
        probs = torch.as_tensor(self.probs, dtype=torch.float64)
        bins = torch.multinomial(probs, n, replacement=True, generator=generator)  # (n,)
        edges = torch.as_tensor(self.edges, dtype=torch.float64)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        t = edges[bins] + u * (edges[bins + 1] - edges[bins])
        return t.float().to(device)

    def cdf(self, t: np.ndarray) -> np.ndarray:
        t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
        i = np.clip(np.searchsorted(self.edges, t, side="right") - 1, 0, len(self.probs) - 1)
        frac = (t - self.edges[i]) / (self.edges[i + 1] - self.edges[i])
        return self._cum[i] + frac * self.probs[i]


def write_density_file(path: str | Path, edges: Sequence[float], weights: Sequence[float]) -> None:
    """Write a piecewise-constant density in the format :meth:`PiecewiseConstantSampler.from_file` reads."""
    PiecewiseConstantSampler(edges, weights)  # validate before writing
    data = {"edges": [float(e) for e in edges], "pdf": [float(w) for w in weights]}
    Path(path).write_text(json.dumps(data))


TIMESTEP_SAMPLERS: dict[str, Callable[..., TimestepSampler]] = {
    "uniform": UniformSampler,
    "logit_normal": LogitNormalSampler,
    "detail_aware": lambda pdf_file: PiecewiseConstantSampler.from_file(pdf_file),
}


def make_timestep_sampler(name: str, **options) -> TimestepSampler:
    """``uniform`` | ``logit_normal(m=0, s=1)`` | ``detail_aware(pdf_file=...)``."""
    if name not in TIMESTEP_SAMPLERS:
        raise UserError(f"unknown timestep sampler '{name}'; choose from {sorted(TIMESTEP_SAMPLERS)}")
    try:
        return TIMESTEP_SAMPLERS[name](**options)
    except TypeError as err:
        raise UserError(f"bad options {options} for timestep sampler '{name}': {err}") from None
