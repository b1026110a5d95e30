"""The metric table: every metric is a spec (metadata + factory) behind one constructor, ``create_metric``.

A metric scores RGB frames given as float tensors ``(N, 3, H, W)`` in [0, 1] (``pred``, and ``ref`` when
``needs_reference``) and returns one float64 score per frame, shape ``(N,)``, on the CPU. Temporal metrics
(``temporal=True``) read the N frames as consecutive frames of one clip and return NaN for the first.
Defaults are those of the reference implementations (basicsr for PSNR/SSIM/NIQE, the official LPIPS and
DISTS); options given to ``create_metric`` override them and are recorded in ``describe()``.

Names not in the table but known to pyiqa (``musiq``, ``clipiqa``, ``maniqa``, ``topiq_nr``…), or written
``pyiqa:NAME``, go through the pyiqa bridge (weights from a local folder only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cascadevsr.errors import UserError
from cascadevsr.evaluate import nets, niqe, pixel, temporal
from cascadevsr.evaluate.weights import weight_hashes

ScoreFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is, independent of how it is configured.

    Attributes:
        name: the name used on the command line and in result rows.
        build: ``build(options, device, weights_dir) -> fn(pred, ref) -> (N,) scores``.
        needs_reference: full-reference (True) or no-reference (False).
        lower_better: True when a smaller value is better (reports use it for arrows and bolding).
        score_range: typical (min, max) of the values.
        defaults: options and their default values; ``create_metric`` accepts exactly these keys.
        weights: keys of :data:`cascadevsr.evaluate.weights.WEIGHT_FILES` the metric loads.
        temporal: frames are consecutive frames of one clip; the first score is NaN.
        version: bumped whenever the numbers a metric produces may change.
        description: one line for ``--list-metrics``.
        size_problem: ``f(height, width, options) -> None | str``, the reason frames of that size cannot be
            scored (checked before a run computes anything).
    """

    name: str
    build: Callable[[dict[str, Any], torch.device, Path | None], ScoreFn]
    needs_reference: bool
    lower_better: bool
    score_range: tuple[float, float]
    defaults: dict[str, Any] = field(default_factory=dict)
    weights: tuple[str, ...] = ()
    temporal: bool = False
    version: str = "1"
    description: str = ""
    size_problem: Callable[[int, int, dict[str, Any]], str | None] | None = None


def _pixel_builder(kind: str) -> Callable[[dict[str, Any], torch.device, Path | None], ScoreFn]:
    fn = pixel.psnr if kind == "psnr" else pixel.ssim

    def build(opts: dict[str, Any], device: torch.device, weights_dir: Path | None) -> ScoreFn:
        def score(pred: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
            a = pixel.prepare(pred, opts["channel"], opts["crop_border"], opts["y_matrix"], opts["round_y"])
            b = pixel.prepare(ref, opts["channel"], opts["crop_border"], opts["y_matrix"], opts["round_y"])
            return fn(a, b)

        return score

    return build


def _with_precision(model: torch.nn.Module, precision: str, device: torch.device) -> ScoreFn:
    """The model's score function; it takes a prepared reference and carries ``prepare_ref`` to make one."""

    # bfloat16 convolutions (float32 statistics after them): single 720p VGG layers ran 2-3x faster on this
    # AVX512-BF16 CPU, but scores move by up to 2% (DISTS on the Kodak pairs), so it is opt-in and recorded.
    def cast() -> contextlib.AbstractContextManager:
        if precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def score(pred: torch.Tensor, prepared: Any) -> torch.Tensor:
        with cast():
            return model.distance(pred, prepared)

    def prepare(ref: torch.Tensor) -> Any:
        with cast():
            return model.reference(ref)

    score.prepare_ref = prepare  # type: ignore[attr-defined]
    return score


def _build_lpips(net: str):
    def build(opts: dict[str, Any], device: torch.device, weights_dir: Path | None) -> ScoreFn:
        return _with_precision(nets.LPIPS(net, weights_dir).to(device), opts["precision"], device)

    return build


def _build_dists(opts: dict[str, Any], device: torch.device, weights_dir: Path | None) -> ScoreFn:
    return _with_precision(nets.DISTS(weights_dir).to(device), opts["precision"], device)


def _build_niqe(opts: dict[str, Any], device: torch.device, weights_dir: Path | None) -> ScoreFn:
    from cascadevsr.evaluate.weights import weight_path

    path = weight_path("niqe_pris_params", weights_dir)  # verified once, here
    return lambda pred, ref: niqe.niqe(pred, params_path=path, crop_border=opts["crop_border"],
                                       y_matrix=opts["y_matrix"])


def _build_warp(relative: bool):
    def build(opts: dict[str, Any], device: torch.device, weights_dir: Path | None) -> ScoreFn:
        flows = temporal.FlowCache(opts["flow_preset"])
        return lambda pred, ref: temporal.warp_error(pred, ref, flows, relative=relative)

    return build


def _niqe_size_problem(h: int, w: int, opts: dict[str, Any]) -> str | None:
    c = 2 * opts.get("crop_border", 0)
    if ((h - c) // niqe.BLOCK) * ((w - c) // niqe.BLOCK) < 2:
        return (f"NIQE needs frames holding two {niqe.BLOCK}×{niqe.BLOCK} blocks (e.g. {2 * niqe.BLOCK}×"
                f"{niqe.BLOCK}) after cropping, got {w - c}×{h - c}")
    return None


def _build_tdiff(opts: dict[str, Any], device: torch.device, weights_dir: Path | None) -> ScoreFn:
    return lambda pred, ref: temporal.frame_diff_error(pred, ref)


_PIXEL_DEFAULTS = {"channel": "y", "crop_border": 0, "y_matrix": "bt601_studio", "round_y": False}

# name -> spec, written out by hand.
METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec("psnr", _pixel_builder("psnr"), True, False, (0.0, 60.0), dict(_PIXEL_DEFAULTS),
                       description="PSNR on Y (BT.601 studio), basicsr convention"),
    "psnr_rgb": MetricSpec("psnr_rgb", _pixel_builder("psnr"), True, False, (0.0, 60.0),
                           {**_PIXEL_DEFAULTS, "channel": "rgb"}, description="PSNR on RGB"),
    "ssim": MetricSpec("ssim", _pixel_builder("ssim"), True, False, (0.0, 1.0), dict(_PIXEL_DEFAULTS),
                       description="SSIM on Y (BT.601 studio), basicsr convention"),
    "ssim_rgb": MetricSpec("ssim_rgb", _pixel_builder("ssim"), True, False, (0.0, 1.0),
                           {**_PIXEL_DEFAULTS, "channel": "rgb"},
                           description="SSIM on RGB, mean of channels"),
    "lpips": MetricSpec("lpips", _build_lpips("alex"), True, True, (0.0, 1.0), {"precision": "fp32"},
                        weights=("alexnet", "lpips_lin_alex"), description="LPIPS v0.1, AlexNet"),
    "lpips_vgg": MetricSpec("lpips_vgg", _build_lpips("vgg"), True, True, (0.0, 1.0), {"precision": "fp32"},
                            weights=("vgg16", "lpips_lin_vgg"), description="LPIPS v0.1, VGG16"),
    "dists": MetricSpec("dists", _build_dists, True, True, (0.0, 1.0), {"precision": "fp32"},
                        weights=("vgg16", "dists_alpha_beta"), description="DISTS"),
    "niqe": MetricSpec("niqe", _build_niqe, False, True, (0.0, 100.0),
                       {"crop_border": 0, "y_matrix": "bt601_studio"}, weights=("niqe_pris_params",),
                       description="NIQE, basicsr parameters (no reference)", size_problem=_niqe_size_problem),
    "warp_error": MetricSpec("warp_error", _build_warp(True), True, True, (0.0, 1.0),
                             {"flow_preset": "medium"}, temporal=True,
                             description="flow warping error relative to GT (GT DIS flow, occlusion-masked)"),
    "ewarp": MetricSpec("ewarp", _build_warp(False), False, True, (0.0, 1.0), {"flow_preset": "medium"},
                        temporal=True, description="classic warping error E_warp, flow from the output"),
    "tdiff": MetricSpec("tdiff", _build_tdiff, True, True, (0.0, 1.0), temporal=True,
                        description="frame-difference error |ΔP − ΔG| (no flow)"),
}


def _check_frames(x: Any, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a float tensor in [0, 1], got {x.dtype}")
    if x.numel() and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
        lo, hi = float(x.min()), float(x.max())
        raise ValueError(f"{what} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")


@dataclass(frozen=True)
class Reference:
    """Reference frames of shape ``shape`` in the form a metric scores against (frames or features)."""

    shape: tuple[int, ...]
    data: Any


class Metric:
    """A configured metric: ``metric(pred, ref=None) -> (N,)`` float64 per-frame scores on the CPU."""

    def __init__(self, spec: MetricSpec, options: dict[str, Any], device: torch.device,
                 weights_dir: Path | None, fn: ScoreFn, extra: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.options = options
        self.device = device
        self.weights_dir = weights_dir
        self._fn = fn
        self._extra = extra or {}

    name = property(lambda self: self.spec.name)
    needs_reference = property(lambda self: self.spec.needs_reference)
    lower_better = property(lambda self: self.spec.lower_better)
    higher_is_better = property(lambda self: not self.spec.lower_better)
    temporal = property(lambda self: self.spec.temporal)

    def __call__(self, pred: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        _check_frames(pred, f"{self.name}: pred")
        if self.needs_reference:
            if ref is None:
                raise ValueError(f"{self.name} is a full-reference metric: pass ref")
            return self.score(pred, self.reference(ref))
        if ref is not None and ref.shape != pred.shape:
            ref = None  # no-reference metrics ignore a reference of another size
        return self._run(pred, ref.to(self.device) if ref is not None else None)

    def reference(self, ref: torch.Tensor) -> Reference:
        """``ref`` prepared once for scoring several predictions against it with :meth:`score`.

        Network metrics (LPIPS, DISTS) keep the reference's features, so each further prediction costs one
        network pass instead of two; the others keep the frames.
        """
        _check_frames(ref, f"{self.name}: ref")
        ref = ref.to(self.device)
        prepare = getattr(self._fn, "prepare_ref", None)
        if prepare is None:
            return Reference(tuple(ref.shape), ref)
        with torch.inference_mode():
            return Reference(tuple(ref.shape), prepare(ref))

    def score(self, pred: torch.Tensor, reference: Reference) -> torch.Tensor:
        """Per-frame scores ``(N,)`` of ``pred`` against a prepared :meth:`reference` of the same shape."""
        _check_frames(pred, f"{self.name}: pred")
        if tuple(pred.shape) != reference.shape:
            raise ValueError(f"{self.name}: pred {tuple(pred.shape)} and ref {reference.shape} differ in shape")
        return self._run(pred, reference.data)

    def _run(self, pred: torch.Tensor, ref: Any) -> torch.Tensor:
        pred = pred.to(self.device)
        with torch.inference_mode():
            out = self._fn(pred, ref)
        out = torch.as_tensor(out).to(torch.float64).reshape(-1).cpu()
        if len(out) != len(pred):
            raise RuntimeError(f"{self.name} returned {len(out)} scores for {len(pred)} frames")
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of what produced the numbers: name, version, options, weight hashes."""
        return {
            "name": self.name,
            "version": self.spec.version,
            "needs_reference": self.needs_reference,
            "lower_better": self.lower_better,
            "temporal": self.temporal,
            "options": dict(self.options),
            "weights": weight_hashes(self.spec.weights),
            **self._extra,
        }


def list_metrics() -> list[str]:
    """Names of the built-in metrics."""
    return list(METRICS)


def metric_spec(name: str) -> MetricSpec:
    """The spec of a built-in metric, or of a pyiqa metric (``pyiqa:NAME`` or a pyiqa-only name)."""
    if name in METRICS:
        return METRICS[name]
    from cascadevsr.evaluate import pyiqa_bridge

    spec = pyiqa_bridge.spec_for(name)
    if spec is None:
        raise UserError(f"unknown metric '{name}'; choose from {list(METRICS)} or any pyiqa metric "
                        f"(e.g. pyiqa:musiq; `cascadevsr evaluate --list-metrics` lists them).")
    return spec


def create_metric(name: str, *, device: str | torch.device = "cpu", weights_dir: str | Path | None = None,
                  **options: Any) -> Metric:
    """Build metric ``name`` on ``device``; ``options`` override the spec's defaults.

    Raises:
        UserError: unknown metric or option, or a weight file that is missing or corrupt.
    """
    spec = metric_spec(name)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise UserError(f"metric '{name}' has no option(s) {unknown}; it accepts {sorted(spec.defaults)}.")
    merged = {**spec.defaults, **options}
    for key in ("crop_border",):
        if key in merged and (not isinstance(merged[key], int) or merged[key] < 0):
            raise UserError(f"metric '{name}': {key} must be a non-negative integer, got {merged[key]!r}.")
    if "channel" in merged and merged["channel"] not in ("y", "rgb"):
        raise UserError(f"metric '{name}': channel must be 'y' or 'rgb', got {merged['channel']!r}.")
    if "y_matrix" in merged and merged["y_matrix"] not in pixel.Y_MATRICES:
        raise UserError(f"metric '{name}': y_matrix must be one of {sorted(pixel.Y_MATRICES)}.")
    if "precision" in merged and merged["precision"] not in ("fp32", "bf16"):
        raise UserError(f"metric '{name}': precision must be 'fp32' or 'bf16', got {merged['precision']!r}.")
    if "flow_preset" in merged and merged["flow_preset"] not in temporal.FLOW_PRESETS:
        raise UserError(f"metric '{name}': flow_preset must be one of {sorted(temporal.FLOW_PRESETS)}.")
    dev = torch.device(device)
    wdir = Path(weights_dir).expanduser() if weights_dir is not None else None
    fn = spec.build(merged, dev, wdir)
    extra = getattr(fn, "describe_extra", None)
    return Metric(spec, merged, dev, wdir, fn, extra() if callable(extra) else None)

