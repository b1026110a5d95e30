"""Base models: a latent codec plus a flow model that denoises a partly noised latent back to t = 0.

Model-guided degradation (SimpleGVR §4.2.2) noises an LR latent to a level ``t`` and lets the base
text-to-video model denoise it, so the LR input carries that model's own artefacts. Degradation code sees
only the small :class:`BaseModel` protocol; this module supplies :class:`FlowBaseModel` (any velocity
function) and :func:`load_base_model` for local diffusers weights (``wan:DIR``).

Convention (rectified flow, as in ``cascadevsr``'s training code and diffusers' flow-matching scheduler)::

    z_t = (1 - t) * z_0 + t * eps,      v = dz_t/dt = eps - z_0,      t in [0, 1]

``denoise`` integrates ``dz/dt = v(z, t)`` with Euler from ``t_start`` down to 0 over uniform steps.

``import cascadevsr.base_model`` imports torch; ``import cascadevsr`` does not import this module.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from cascadevsr.errors import UserError
from cascadevsr.latent import LatentCodec

# Wan (and diffusers' FlowMatchEulerDiscreteScheduler) feed the transformer ``timestep = sigma * 1000``.
NUM_TRAIN_TIMESTEPS = 1000
BASE_MODEL_KINDS = ("wan",)

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class BaseModel(Protocol):
    """What model-guided degradation needs: a codec for pixels <-> latents and a partial denoiser."""

    codec: LatentCodec

    def denoise(self, z_t: torch.Tensor, t_start: float, steps: int,
                generator: torch.Generator) -> torch.Tensor:
        """Latent ``(B, C, t, h, w)`` at noise level ``t_start`` -> latent at level 0 after ``steps`` steps."""
        ...


class FlowBaseModel:
    """A :class:`BaseModel` from a codec and a velocity function ``v(z_t, t) -> v``.

    ``velocity_fn`` takes the latent ``(B, C, t, h, w)`` and the noise level per batch item ``(B,)`` and
    returns ``eps - z_0`` (our sign; see the module docstring). ``size_multiple`` is the frame side the
    model accepts a multiple of (the codec's space factor times any patch size); ``info`` is a JSON-ready
    description stored in each degradation record.
    """

    def __init__(self, codec: LatentCodec, velocity_fn: VelocityFn, *, size_multiple: int | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.codec = codec
        self.velocity_fn = velocity_fn
        self.size_multiple = int(size_multiple or codec.space_factor)
        self.info = dict(info or {"type": type(self).__name__})

    @torch.no_grad()
    def denoise(self, z_t: torch.Tensor, t_start: float, steps: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Euler from ``t_start`` to 0 over ``steps`` uniform steps: ``z <- z + (t_next - t) * v(z, t)``.

        Deterministic (``generator`` is part of the protocol for stochastic samplers; Euler draws nothing).
        With the exact velocity of a straight path the result is ``z_0`` up to float rounding.
        """
        if not 0.0 <= t_start <= 1.0:
            raise ValueError(f"t_start must be in [0, 1], got {t_start}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        z = z_t.float()
        if t_start == 0.0:
            return z
        # Python floats for the grid so every platform steps through the same levels.
        levels = [t_start * (1.0 - i / steps) for i in range(steps + 1)]
        for t, t_next in itertools.pairwise(levels):
            t_batch = torch.full((z.shape[0],), t, dtype=torch.float32, device=z.device)
            z = z + (t_next - t) * self.velocity_fn(z, t_batch).float()
        return z


def describe_base_model(model: Any) -> dict[str, Any]:
    """JSON-ready description of a base model for a degradation record (its ``info``, else its type)."""
    info = getattr(model, "info", None)
    return dict(info) if isinstance(info, dict) else {"type": type(model).__name__}


class WanVelocity:
    """Velocity of a diffusers ``WanTransformer3DModel`` in our convention.

    diffusers' Wan pipeline calls the transformer with ``timestep = sigma * 1000`` and steps
    ``x <- x + (sigma_next - sigma) * pred`` with ``x_sigma = (1 - sigma) x_0 + sigma eps``, so ``pred`` is
    ``dx/dsigma = eps - x_0``: the same sign as ours, with ``t = sigma``. Only the timestep is rescaled.
    """

    def __init__(self, transformer: torch.nn.Module, prompt_embeds: torch.Tensor) -> None:
        self.transformer = transformer.eval().requires_grad_(False)
        self.prompt_embeds = prompt_embeds  # (L, D)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = next(self.transformer.parameters())
        context = self.prompt_embeds.to(p.device, p.dtype).unsqueeze(0).expand(z.shape[0], -1, -1)
        pred = self.transformer(hidden_states=z.to(p.device, p.dtype), timestep=(t * NUM_TRAIN_TIMESTEPS).to(p.device),
                                encoder_hidden_states=context, return_dict=False)[0]
        return pred.float().to(z.device)


_CACHE: dict[str, BaseModel] = {}


def load_base_model(spec: str) -> BaseModel:
    """The base model named by ``spec`` (``wan:DIR``), loaded once per process on the CPU in float32.

    ``DIR`` holds diffusers subfolders ``transformer/`` (``WanTransformer3DModel``) and ``vae/``
    (``AutoencoderKLWan``), and optionally ``prompt_embeds.pt``: a tensor ``(L, D)`` of text-encoder states
    used as the condition of every call. Without it the condition is one token of zeros of the
    transformer's text width ``D``, i.e. an empty condition (not the encoding of an empty prompt, which a
    real text encoder maps to non-zero states). Missing parts raise :class:`UserError` naming the path.
    Models are cached by spec, since a corpus worker degrades many clips with one model.
    """
    if spec not in _CACHE:
        _CACHE[spec] = _load(spec)
    return _CACHE[spec]


def parse_base_model_spec(spec: str) -> tuple[str, Path]:
    """``KIND:DIR`` -> ``(kind, absolute folder)``; an unknown kind or a missing folder is a ``UserError``."""
    kind, sep, path = spec.partition(":")
    if not sep or not path or kind not in BASE_MODEL_KINDS:
        raise UserError(f"a base model is written KIND:DIR with KIND one of {list(BASE_MODEL_KINDS)} "
                        f"(e.g. wan:/weights/wan), got '{spec}'.")
    return kind, Path(path).expanduser().absolute()


def check_base_model_folder(spec: str) -> tuple[str, Path]:
    """Parse ``spec`` and check its folder's layout without loading anything; returns ``(kind, folder)``.

    Cheap, so a command can refuse a bad ``--base-model`` before its workers start.
    """
    kind, folder = parse_base_model_spec(spec)
    needs = "a folder with transformer/ (WanTransformer3DModel) and vae/ (AutoencoderKLWan) diffusers subfolders"
    if not folder.is_dir():
        raise UserError(f"the base model folder {folder} does not exist; give {needs}.")
    for sub in ("transformer", "vae"):
        if not (folder / sub / "config.json").is_file():
            raise UserError(f"the base model folder {folder} has no {sub}/config.json; give {needs}.")
    return kind, folder


def base_vae_spec(spec: str) -> dict[str, Any]:
    """The latent-codec spec (``cascadevsr.latent.make_codec``) of the VAE inside base model ``spec``, without
    loading anything: ``wan:DIR`` -> ``{"name": "wan", "path": "DIR/vae"}``, the codec :func:`load_base_model`
    builds and the one whose latent the model-guided step hands back."""
    kind, folder = parse_base_model_spec(spec)
    return {"name": kind, "path": str(folder / "vae")}


def check_clip_frames(spec: str, num_frames: int) -> None:
    """Refuse, from the base model's VAE config alone, a clip length its latent codec cannot encode
    (``1 + time_factor·k`` frames), before a corpus job starts workers that would fail on every clip."""
    import json

    from cascadevsr.latent import latent_frames, vae_factors

    _, folder = check_base_model_folder(spec)
    time_factor, _ = vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
    try:
        latent_frames(num_frames, time_factor)
    except ValueError as err:
        raise UserError(f"--clip-frames {num_frames} does not fit the base model's VAE: {err}.") from None


def _load(spec: str) -> FlowBaseModel:
    kind, folder = check_base_model_folder(spec)
    import diffusers  # deferred: importing diffusers costs seconds

    from cascadevsr.latent import load_vae_codec

    codec = load_vae_codec(kind, folder / "vae")
    transformer = _load_transformer(diffusers.WanTransformer3DModel, folder / "transformer")
    text_dim = int(transformer.config.text_dim)
    embeds_path = folder / "prompt_embeds.pt"
    if embeds_path.is_file():
        embeds = torch.load(embeds_path, map_location="cpu", weights_only=True)
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2 or embeds.shape[1] != text_dim:
            raise UserError(f"{embeds_path} must hold one tensor of shape (L, {text_dim}) "
                            f"(the transformer's text width), got {getattr(embeds, 'shape', type(embeds))}.")
        embeds = embeds.float()
    else:
        embeds = torch.zeros(1, text_dim)
    patch = int(transformer.config.patch_size[1])
    info = {
        "spec": f"{kind}:{folder}",
        "transformer_config_sha256": _sha256(folder / "transformer" / "config.json"),
        "vae_config_sha256": _sha256(folder / "vae" / "config.json"),
        "prompt_embeds_sha256": _sha256(embeds_path) if embeds_path.is_file() else None,
    }
    return FlowBaseModel(codec, WanVelocity(transformer, embeds), size_multiple=codec.space_factor * patch,
                         info=info)


def _load_transformer(cls: Any, folder: Path) -> torch.nn.Module:
    """A diffusers model from its folder's config and safetensors file(s), in float32.

    Built by hand because ``from_pretrained`` refuses models with fp32-pinned modules (Wan's) unless
    ``accelerate`` is installed; every ``*.safetensors`` shard is read, so single and sharded saves load.
    """
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"the base model folder {folder} has no *.safetensors weights; save the model there "
                        "with diffusers' save_pretrained.")
    model = cls.from_config(cls.load_config(str(folder)))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

