"""Degradation pipelines: presets are data, a pipeline run is ``sample`` then ``apply``.

A preset (``degrade/presets/NAME.yaml``) is an ordered list of steps::

    name: realesrgan
    description: one line
    hr_transform: usm            # what the HR side gets (the training target): none | usm
    steps:
      - {op: blur, prob: 1.0, sigma: [0.2, 3.0], ...}    # keys other than op/prob are the op's config
      - {op: shuffle, groups: [[{op: resize_to_target}, {op: sinc, prob: 0.8}], [{op: jpeg}]]}
      - {op: preset, name: one_order}                   # inline another preset's steps

Running a pipeline on a clip is two pure phases:

1. ``sample_pipeline(pipeline, rng, strength, num_frames)`` draws every random choice once per clip and
   returns a *record*: a JSON-ready list with, per step, whether it was applied and its resolved params.
2. ``apply_record(frames, record, ctx)`` applies the record. It draws nothing, so replaying a record saved
   in ``params.json`` regenerates the LR clip bit for bit, with or without the seed.

``degrade_clip`` wraps both with the frame conversions and the HR transform. When the LR frames are the
decoding of a latent (the model-guided step's ẑ_0, the paper's ĉ0) and nothing changed them after that step,
the pair also carries that latent (``DegradedPair.lr_latent``): see ``apply_record_with_latent``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cascadevsr.degrade import classical, codec, flow, model_guided, sharpen
from cascadevsr.degrade.base import Context, config_from_dict
from cascadevsr.errors import UserError

PRESETS_DIR = Path(str(resources.files("cascadevsr.degrade") / "presets"))
# The smallest LR side we accept: below it the flow and codec steps have nothing to work on.
MIN_LR_SIDE = 16


@dataclass(frozen=True)
class Op:
    """One degradation operation: its config type and its two pure functions."""

    config: type
    sample: Callable[..., Any]
    apply: Callable[..., np.ndarray]
    params: type
    apply_latent: Callable[..., tuple[np.ndarray, Any]] | None = None
    """For a step whose frames are decoded from a latent: ``apply`` that also returns that latent (a
    ``model_guided.DenoisedLatent`` or None), giving the same frames."""


OPS: dict[str, Op] = {
    "blur": Op(classical.BlurConfig, classical.sample_blur, classical.apply_blur, classical.BlurParams),
    "sinc": Op(classical.SincConfig, classical.sample_sinc, classical.apply_sinc, classical.SincParams),
    "resize": Op(classical.ResizeConfig, classical.sample_resize, classical.apply_resize,
                 classical.ResizeParams),
    "resize_to_target": Op(classical.ResizeToTargetConfig, classical.sample_resize_to_target,
                           classical.apply_resize_to_target, classical.ResizeToTargetParams),
    "noise": Op(classical.NoiseConfig, classical.sample_noise, classical.apply_noise, classical.NoiseParams),
    "jpeg": Op(classical.JpegConfig, classical.sample_jpeg, classical.apply_jpeg, classical.JpegParams),
    "codec": Op(codec.CodecConfig, codec.sample_codec, codec.apply_codec, codec.CodecParams),
    "flow": Op(flow.FlowConfig, flow.sample_flow, flow.apply_flow, flow.FlowParams),
    "model_guided": Op(model_guided.ModelGuidedConfig, model_guided.sample_model_guided,
                       model_guided.apply_model_guided, model_guided.ModelGuidedParams,
                       model_guided.apply_model_guided_latent),
}

HR_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "none": None,
    "usm": sharpen.usm_sharpen,
}


@dataclass(frozen=True)
class StepSpec:
    """A validated step of a pipeline: an op with its application probability and config."""

    op: str
    prob: float
    config: Any


@dataclass(frozen=True)
class ShuffleSpec:
    """Groups of steps run in a random order (Real-ESRGAN's final [resize + sinc] / [JPEG])."""

    groups: tuple[tuple[StepSpec, ...], ...]


@dataclass(frozen=True)
class Pipeline:
    """A parsed, validated preset."""

    name: str
    description: str
    hr_transform: str
    steps: tuple[StepSpec | ShuffleSpec, ...]
    source: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def op_names(self) -> list[str]:
        """Every step's op name in order, shuffle groups flattened (they hold plain steps only)."""
        return [s.op for step in self.steps
                for s in ([x for g in step.groups for x in g] if isinstance(step, ShuffleSpec) else [step])]


# ----------------------------------------------------------------------------------------------- presets


def list_presets() -> list[str]:
    """Names of the presets shipped with cascadevsr."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_preset_file(name_or_path: str) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESETS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise UserError(f"unknown preset '{name_or_path}'; choose from {list_presets()} or give a YAML file.")
    elif not path.exists():
        raise UserError(f"preset file '{name_or_path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"preset file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise UserError(f"preset '{path}' must be a mapping with a 'steps' list.")
    return data, str(path)


def load_preset(name_or_path: str) -> Pipeline:
    """Load and validate a preset by name (shipped) or by YAML path; bad content raises ``UserError``."""
    data, where = _read_preset_file(name_or_path)
    unknown = sorted(set(data) - {"name", "description", "hr_transform", "steps"})
    if unknown:
        raise UserError(f"preset '{where}': unknown key(s) {unknown}.")
    hr_transform = data.get("hr_transform", "none")
    if hr_transform not in HR_TRANSFORMS:
        raise UserError(f"preset '{where}': unknown hr_transform '{hr_transform}'; choose from {list(HR_TRANSFORMS)}.")
    steps = _parse_steps(data["steps"], where, seen=(Path(where).stem,))
    return Pipeline(
        name=str(data.get("name", Path(where).stem)),
        description=str(data.get("description", "")),
        hr_transform=hr_transform,
        steps=tuple(steps),
        source=data,
    )


def _parse_steps(items: list[Any], where: str, seen: tuple[str, ...]) -> list[StepSpec | ShuffleSpec]:
    steps: list[StepSpec | ShuffleSpec] = []
    for i, item in enumerate(items):
        at = f"preset '{where}' step {i + 1}"
        if not isinstance(item, dict) or "op" not in item:
            raise UserError(f"{at}: each step must be a mapping with an 'op' key.")
        item = dict(item)
        op = item.pop("op")
        if op == "preset":
            name = item.get("name")
            if name in seen:
                raise UserError(f"{at}: preset '{name}' includes itself.")
            data, inner_where = _read_preset_file(str(name))
            steps.extend(_parse_steps(data["steps"], inner_where, (*seen, str(name))))
        elif op == "shuffle":
            groups = item.pop("groups", None)
            if item or not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
                raise UserError(f"{at}: a shuffle step takes only 'groups', a list of step lists.")
            parsed = []
            for g in groups:
                inner = _parse_steps(g, where, seen)
                if any(isinstance(s, ShuffleSpec) for s in inner):
                    raise UserError(f"{at}: shuffle groups cannot nest another shuffle.")
                parsed.append(tuple(inner))
            steps.append(ShuffleSpec(tuple(parsed)))
        elif op in OPS:
            prob = item.pop("prob", 1.0)
            if not isinstance(prob, int | float) or not 0.0 <= prob <= 1.0:
                raise UserError(f"{at} ({op}): prob must be a number in [0, 1], got {prob!r}.")
            steps.append(StepSpec(op, float(prob), config_from_dict(OPS[op].config, item, f"{at} ({op})")))
        else:
            raise UserError(f"{at}: unknown op '{op}'; choose from {[*OPS, 'shuffle', 'preset']}.")
    return steps


# ------------------------------------------------------------------------------------------ sample / apply


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts (e.g. corpus seed, source path, frame range); stable across runs
    and machines, unlike Python's ``hash``."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _sample_step(spec: StepSpec, rng: np.random.Generator, strength: float, num_frames: int) -> dict[str, Any]:
    # Draw the coin even when prob is 1, so that editing one probability does not shift every later draw.
    applied = bool(rng.random() < spec.prob)
    if not applied:
        return {"op": spec.op, "applied": False}
    params = OPS[spec.op].sample(rng, spec.config, strength, num_frames)
    return {"op": spec.op, "applied": True, "params": dataclasses.asdict(params)}


def sample_pipeline(pipeline: Pipeline, rng: np.random.Generator, strength: float,
                    num_frames: int) -> list[dict[str, Any]]:
    """Draw every random choice of ``pipeline`` for one clip; returns the JSON-ready record."""
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"strength must be in [0, 1], got {strength}.")
    record: list[dict[str, Any]] = []
    for step in pipeline.steps:
        if isinstance(step, ShuffleSpec):
            order = [int(i) for i in rng.permutation(len(step.groups))]
            groups = [[_sample_step(s, rng, strength, num_frames) for s in g] for g in step.groups]
            record.append({"op": "shuffle", "order": order, "groups": groups})
        else:
            record.append(_sample_step(step, rng, strength, num_frames))
    return record


def _apply_step(frames: np.ndarray, entry: dict[str, Any], ctx: Context,
                latent: Any) -> tuple[np.ndarray, Any]:
    """One record entry; the latent the frames are the decoding of after it (None once a pixel op ran)."""
    if not entry["applied"]:
        return frames, latent  # a skipped step leaves the frames, and so their latent, as they were
    op = OPS[entry["op"]]
    params = op.params(**entry["params"])
    if op.apply_latent is not None:
        return op.apply_latent(frames, params, ctx)
    return op.apply(frames, params, ctx), None


def apply_record(frames: np.ndarray, record: list[dict[str, Any]], ctx: Context,
                 progress: Callable[[str], None] | None = None, *, base_model: Any = None) -> np.ndarray:
    """Apply a sampled record to float32 frames ``(T, H, W, 3)`` in [0, 1]; returns LR float32 frames.

    If the record does not end at ``ctx.lr_size`` a final area resize gets it there, so every preset
    produces exactly the requested size. ``base_model`` (if given) replaces ``ctx.base_model`` for the
    model-guided step.
    """
    return apply_record_with_latent(frames, record, ctx, progress, base_model=base_model)[0]


def apply_record_with_latent(frames: np.ndarray, record: list[dict[str, Any]], ctx: Context,
                             progress: Callable[[str], None] | None = None, *,
                             base_model: Any = None) -> tuple[np.ndarray, Any]:
    """:func:`apply_record` that also returns the latent the LR frames are the decoding of, or None.

    That latent is the model-guided step's ``DenoisedLatent`` when that step was the last one to change
    the frames: any applied step after it (resize, blur, noise, codec, ...) and the final resize to
    ``ctx.lr_size`` make it stale, so it is dropped. Steps that were not applied change nothing.
    """
    if base_model is not None:
        ctx = dataclasses.replace(ctx, base_model=base_model)
    latent = None
    for entry in record:
        if entry["op"] == "shuffle":
            for gi in entry["order"]:
                for inner in entry["groups"][gi]:
                    frames, latent = _apply_step(frames, inner, ctx, latent)
                    if progress:
                        progress(inner["op"])
        else:
            frames, latent = _apply_step(frames, entry, ctx, latent)
            if progress:
                progress(entry["op"])
    if frames.shape[1:3] != tuple(ctx.lr_size):
        frames = classical.resize_frames(frames, ctx.lr_size, "area")
        latent = None  # the latent covers the frames before this resize
    return frames, latent


def record_length(record: list[dict[str, Any]]) -> int:
    """Number of steps ``apply_record`` reports progress for."""
    return sum(sum(len(g) for g in e["groups"]) if e["op"] == "shuffle" else 1 for e in record)


# ------------------------------------------------------------------------------------------------ clips


def to_float(frames: np.ndarray) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` → float32 in [0, 1]; divides by 255 (not × 1/255) to match basicsr's last bit."""
    return np.true_divide(frames, np.float32(255.0), dtype=np.float32)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float ``(T, H, W, 3)`` → uint8, clipped and rounded half to even (Real-ESRGAN's final clamp/round)."""
    return classical.quantize_levels(np.ascontiguousarray(frames, dtype=np.float32))


def lr_size_for(hr_size: tuple[int, int], scale: float | None = None,
                lr_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """LR ``(height, width)`` from the HR size and either an integer-or-not ``scale`` or an explicit size."""
    if (scale is None) == (lr_size is None):
        raise UserError("give exactly one of scale or lr_size.")
    if lr_size is None:
        if scale <= 0:
            raise UserError(f"scale must be positive, got {scale}.")
        lr_size = (int(hr_size[0] / scale), int(hr_size[1] / scale))
    h, w = lr_size
    if min(h, w) < MIN_LR_SIDE:
        raise UserError(
            f"frames of {hr_size[1]}x{hr_size[0]} are too small for this output: the LR clip would be "
            f"{w}x{h}, and each side must be at least {MIN_LR_SIDE} px."
        )
    if h > hr_size[0] or w > hr_size[1]:
        raise UserError(f"LR size {w}x{h} is larger than the HR frames ({hr_size[1]}x{hr_size[0]}).")
    return h, w


@dataclass(frozen=True)
class DegradedPair:
    """An LR/HR training pair: uint8 ``(T, H, W, 3)`` frames and the JSON-ready record that made it.

    ``lr_latent`` is set when the LR frames are the decoding of a latent that no later step changed: the
    model-guided step's denoised latent ẑ_0 (the paper's ĉ0), which is the LR input the paper trains on.
    ``lr`` is then its decoding (cropped back where the step padded the frames) rounded to uint8."""

    hr: np.ndarray
    lr: np.ndarray
    record: dict[str, Any]
    lr_latent: np.ndarray | None = None
    """float32 ``(C, t, h, w)``: the LR latent as the base model produced it, or None."""
    lr_latent_codec: dict[str, Any] | None = None
    """Spec of the VAE ``lr_latent`` lives in (``{"name": "wan", "path": ".../vae"}``), or None."""


def degrade_clip(frames: np.ndarray, pipeline: Pipeline, seed: int, *, strength: float = 1.0,
                 scale: float | None = None, lr_size: tuple[int, int] | None = None, fps: float = 25.0,
                 progress: Callable[[str], None] | None = None, base_model: Any = None) -> DegradedPair:
    """Degrade a clip of uint8 frames ``(T, H, W, 3)`` into an LR/HR pair, reproducibly from ``seed``.

    With ``scale``, HR is cropped (top-left anchored) to a multiple of the scale so that ``HR = scale × LR``
    exactly; with ``lr_size`` (h, w) the HR frames are kept whole and the factor may be non-integer.
    ``base_model`` (a ``cascadevsr.base_model.BaseModel``) is what a model-guided step denoises with; the
    record then describes it under ``base_model``, and the pair carries the step's denoised latent when no
    later step changed the frames (see :class:`DegradedPair`).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}.")
    hr_size = frames.shape[1:3]
    target = lr_size_for(hr_size, scale, lr_size)
    if scale is not None and float(scale).is_integer():
        frames = frames[:, : target[0] * int(scale), : target[1] * int(scale)]
        hr_size = frames.shape[1:3]
    ctx = Context(hr_size=(int(hr_size[0]), int(hr_size[1])), lr_size=target, fps=float(fps),
                  base_model=base_model)
    record = sample_pipeline(pipeline, np.random.default_rng(seed), strength, len(frames))
    hr_float = _transformed_hr(frames, pipeline.hr_transform)
    lr_float, latent = apply_record_with_latent(hr_float, record, ctx, progress)
    lr = to_uint8(lr_float)
    hr = np.ascontiguousarray(frames) if pipeline.hr_transform == "none" else to_uint8(hr_float)
    full_record = {
        "preset": pipeline.name,
        "preset_spec": pipeline.source,
        "seed": int(seed),
        "strength": float(strength),
        "hr_size": list(ctx.hr_size),
        "lr_size": list(ctx.lr_size),
        "fps": ctx.fps,
        "hr_transform": pipeline.hr_transform,
        "steps": record,
    }
    if base_model is not None:
        from cascadevsr.base_model import describe_base_model

        full_record["base_model"] = describe_base_model(base_model)
    if latent is None:
        return DegradedPair(hr=hr, lr=lr, record=full_record)
    return DegradedPair(hr=hr, lr=lr, record=full_record, lr_latent=latent.latent, lr_latent_codec=latent.codec)


def _transformed_hr(frames: np.ndarray, hr_transform: str) -> np.ndarray:
    """The float HR clip that is both the training target and the input of the degradation: Real-ESRGAN and
    RealBasicVSR sharpen the ground truth first and degrade the sharpened frames."""
    hr = to_float(frames)
    transform = HR_TRANSFORMS[hr_transform]
    return transform(hr) if transform else hr


def replay(frames: np.ndarray, record: dict[str, Any], *, base_model: Any = None) -> np.ndarray:
    """Regenerate the LR uint8 clip from the source uint8 frames and a saved record, drawing no random numbers.

    A record with a model-guided step needs the same ``base_model`` it was made with."""
    hr_size = tuple(record["hr_size"])
    frames = frames[:, : hr_size[0], : hr_size[1]]
    ctx = Context(hr_size=hr_size, lr_size=tuple(record["lr_size"]), fps=float(record["fps"]),
                  base_model=base_model)
    return to_uint8(apply_record(_transformed_hr(frames, record["hr_transform"]), record["steps"], ctx))
