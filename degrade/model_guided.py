"""Model-guided degradation (SimpleGVR §4.2.2, Fig. 4): noise the LR latent to level α, let a base model
denoise it back to 0, decode.

    LR frames --codec.encode--> z_0 --(1 - α)·z_0 + α·ε--> z_α --base_model.denoise(α -> 0)--> ẑ_0 --decode--> LR

The LR frames then carry the base text-to-video model's own look (its textures, its temporal smoothing)
while keeping the source's structure; larger α gives more of the model and less of the source. The paper
samples α in [0.3, 0.4]; it gives neither the number of denoising steps, the prompt nor the guidance, so
``steps`` is ours (see :class:`ModelGuidedConfig`) and the condition is whatever the base model was given.

The paper keeps the denoised latent ẑ_0 (its ĉ0) itself as the LR input of the VSR model: decoding it and
encoding the frames again would lose detail and is not what the base model hands the VSR model at inference.
So besides the frames, :func:`apply_model_guided_latent` returns ẑ_0 as a :class:`DenoisedLatent` (float32
``(C, t, h, w)`` and the spec of the VAE it lives in); the pipeline passes it on as
``DegradedPair.lr_latent`` only while no later step changes the frames, and the corpus builder stores it as
``lr_latent.npy`` when the corpus's ``--latent-codec`` is that same VAE (``cascadevsr.latent.same_codec``).

The base model is not part of the params: it arrives in ``ctx.base_model`` (``--base-model wan:DIR``), and
``degrade_clip`` stores its description beside the steps. ε comes from a ``torch.Generator`` seeded from the
params and the codec and denoiser run in float32 on the CPU with one thread, so a record replays to the same
frames and the same latent (given the same base model and torch build).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cascadevsr.degrade.base import Context, new_seed, uniform
from cascadevsr.errors import UserError

NO_BASE_MODEL = ("the 'model_guided' step needs a base model: pass --base-model wan:DIR "
                 "(a folder with transformer/ and vae/)")


@dataclass(frozen=True)
class ModelGuidedConfig:
    """Ranges of the model-guided step (mild -> severe)."""

    alpha: tuple[float, float] = (0.3, 0.4)
    """Noise level the latent is taken to; the paper's range. ``strength`` scales it from 0.3 upwards."""
    steps: int = 8
    """Euler steps from α to 0 (ours: the paper does not say; 8 steps of at most 0.05 each are enough for a
    straight-path flow model at this short distance, and keep a CPU run affordable)."""

    def __post_init__(self) -> None:
        if len(self.alpha) != 2 or not all(0.0 <= float(a) <= 1.0 for a in self.alpha):
            raise ValueError(f"alpha must be [mild, severe] within [0, 1], got {list(self.alpha)}")
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class ModelGuidedParams:
    """One resolved draw: noise level, Euler steps, and the seed of the noise ε."""

    alpha: float
    steps: int
    seed: int


def sample_model_guided(rng: np.random.Generator, cfg: ModelGuidedConfig, strength: float,
                        num_frames: int) -> ModelGuidedParams:
    """Draw α from the strength-scaled range and a seed for ε."""
    return ModelGuidedParams(alpha=uniform(rng, cfg.alpha, strength), steps=int(cfg.steps), seed=new_seed(rng))


def draw_noise(shape: tuple[int, ...], seed: int) -> Any:
    """The ε of a params record: standard normal float32 of ``shape`` from a CPU generator seeded ``seed``."""
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


@dataclass(frozen=True)
class DenoisedLatent:
    """The base model's denoised latent ẑ_0 of one clip and the codec it lives in."""

    latent: np.ndarray
    """float32 ``(C, t, h, w)``; ``h, w`` are the clip's sides over the codec's space factor."""
    codec: dict[str, Any]
    """JSON-ready spec of the base model's VAE (``cascadevsr.latent.codec_description``)."""


def apply_model_guided(frames: np.ndarray, params: ModelGuidedParams, ctx: Context) -> np.ndarray:
    """Float frames ``(T, H, W, 3)`` -> the same shape after encode, noise to α, denoise, decode.

    ``T`` must be ``1 + k·time_factor`` of the base model's codec. Sides that are not a multiple of the
    model's size multiple are padded by edge replication and cropped back afterwards.
    """
    return apply_model_guided_latent(frames, params, ctx)[0]


def apply_model_guided_latent(frames: np.ndarray, params: ModelGuidedParams,
                              ctx: Context) -> tuple[np.ndarray, DenoisedLatent | None]:
    """:func:`apply_model_guided` that also returns the denoised latent ẑ_0 the frames were decoded from.

    The frames are the same bytes :func:`apply_model_guided` gives. When the sides were padded, ẑ_0 covers
    the padded frame and is cropped to its top-left ``(H / s, W / s)`` cells (the padding sits at the bottom
    and right, and the latent grid is aligned with the pixel grid); when a side is not a multiple of the
    codec's space factor ``s`` no latent covers the clip exactly and the latent is None.
    """
    model = ctx.base_model
    if model is None:
        raise UserError(NO_BASE_MODEL + ".")
    import torch

    codec = model.codec
    num_frames, height, width = frames.shape[:3]
    if num_frames < 1 or (num_frames - 1) % codec.time_factor:
        from cascadevsr.latent import valid_length

        raise UserError(f"the 'model_guided' step needs 1 + k*{codec.time_factor} frames for its base model's "
                        f"codec, got {num_frames} (the next length that fits is "
                        f"{valid_length(num_frames, codec.time_factor)}).")
    multiple = int(getattr(model, "size_multiple", codec.space_factor))
    pad_h, pad_w = -height % multiple, -width % multiple
    # The VAE reads [0, 1]; earlier steps may overshoot it slightly (the pipeline clips only at the end).
    x = np.clip(frames, 0.0, 1.0).astype(np.float32)
    if pad_h or pad_w:
        x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    # One intra-op thread: torch's CPU reductions split work by thread count and round differently (we
    # measured 5e-7 between 1 and 4 threads on the tiny Wan), which could flip a uint8 level and break replay.
    # A corpus task already runs on one core, so this costs the corpus nothing.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out, z = _model_guided(x, params, model, height, width)
    finally:
        torch.set_num_threads(threads)
    s = codec.space_factor
    if height % s or width % s:
        return out, None
    from cascadevsr.latent import codec_description

    latent = np.ascontiguousarray(z[:, :, : height // s, : width // s], dtype=np.float32)  # (C, t, h, w)
    return out, DenoisedLatent(latent, codec_description(codec))


def _model_guided(x: np.ndarray, params: ModelGuidedParams, model: Any, height: int,
                  width: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode, noise, denoise, decode padded frames ``x``; returns the frames cropped back to ``(height,
    width)`` and the denoised latent ``(C, t, h', w')`` of the padded frames."""
    import torch

    codec = model.codec
    with torch.inference_mode():
        video = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).unsqueeze(0)  # (1, T, 3, H, W)
        z0 = codec.encode(video).float()  # (1, C, t, h, w)
        alpha = float(params.alpha)
        z = (1.0 - alpha) * z0 + alpha * draw_noise(tuple(z0.shape), params.seed)
        generator = torch.Generator().manual_seed(int(params.seed) ^ 0x5EED)
        z = model.denoise(z, alpha, int(params.steps), generator)  # (1, C, t, h, w): ẑ_0
        out = codec.decode(z)[0].permute(0, 2, 3, 1).float().numpy()  # (T, H', W', 3)
        latent = z[0].float().cpu().numpy()  # (C, t, h, w)
    return np.ascontiguousarray(out[:, :height, :width], dtype=np.float32), latent


def uses_model_guided(pipeline: Any) -> bool:
    """Whether a parsed ``Pipeline`` has a model-guided step (at top level or inside a shuffle group)."""
    return "model_guided" in pipeline.op_names()


def check_base_model(pipeline: Any, base_model: str | None) -> None:
    """Refuse, before any work, a pipeline with a model-guided step when no base model was given."""
    if base_model is None and uses_model_guided(pipeline):
        raise UserError(NO_BASE_MODEL + ".")
