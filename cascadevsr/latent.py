"""Latent codecs: the space shared by the degradations, the corpus builder and the VSR model.

A codec turns frames into a latent and back::

    encode(frames)  float frames (B, T, 3, H, W) in [0, 1]  ->  latent (B, C, t, h, w)
    decode(latent)  latent (B, C, t, h, w)                  ->  float frames (B, T, 3, H, W)

Unbatched input ``(T, 3, H, W)`` gives an unbatched latent ``(C, t, h, w)`` and the other way round.
The first frame is coded on its own and every later latent frame holds ``time_factor`` frames, as in the
causal video VAEs the paper builds on: ``t = (T - 1) / time_factor + 1`` (17 frames -> 5 latent frames,
77 -> 20), ``h = H / space_factor``, ``w = W / space_factor``. Lengths and sizes that do not fit raise a
``ValueError``; :func:`valid_length` gives the next length that does.

Codecs (``make_codec(spec)``, spec = ``{"name": ..., **options}``):

* ``pixel`` -- weightless and exactly invertible: space-to-depth by ``space_factor`` and temporal folding
  by ``time_factor`` (the first frame repeated ``time_factor`` times, so every latent frame has the same
  channels), values mapped from [0, 1] to [-2, 2] (``4x - 2``). ``C = 3 * time_factor * space_factor**2``.
  The offline default: it needs no weights, and a model trained on it learns the same latent-to-latent
  problem shape as with a VAE (4x temporal compression, separate first frame). The scale is ours: natural
  video (pixel std ≈ 0.25) gets latents of about unit variance, like a normalised VAE latent, so the
  diffusion noise and the LR noise augmentation have the strength they were designed for.
* ``wan`` / ``cogvideox`` / ``hunyuanvideo`` -- adapters for diffusers video VAEs loaded from a local
  folder (``{"name": "wan", "path": "/weights/wan-vae"}``; never the network). Latents are normalised the
  way each model's own pipeline does it (per-channel mean/std for Wan, ``scaling_factor`` for the others).
  Our choice: ``encode`` returns the posterior mean (deterministic, so cached latents are reproducible);
  pass ``generator=`` to sample from the posterior instead.

:func:`same_codec` tells whether two specs give the same latents (a VAE named by two paths to one folder,
or by two folders with identical files, is one codec), so a latent made by one part of the system (the
model-guided degradation's base model) can stand in for an encode by another (the corpus's codec).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from einops import rearrange

from cascadevsr.errors import UserError


@runtime_checkable
class LatentCodec(Protocol):
    """What every codec offers (see the module docstring for shapes and ranges)."""

    name: str
    time_factor: int
    space_factor: int
    channels: int

    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float frames ``(B, T, 3, H, W)`` in [0, 1] -> latent ``(B, C, t, h, w)``."""
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, C, t, h, w)`` -> float frames ``(B, T, 3, H, W)``, nominally in [0, 1]."""
        ...

    def spec(self) -> dict[str, Any]:
        """JSON-ready ``{"name": ..., **options}`` that :func:`make_codec` turns back into this codec."""
        ...


def latent_frames(num_frames: int, time_factor: int) -> int:
    """Latent length of ``num_frames`` frames: ``(T - 1) / time_factor + 1``; raises if it does not divide."""
    if num_frames < 1 or (num_frames - 1) % time_factor:
        nxt = valid_length(num_frames, time_factor)
        raise ValueError(f"{num_frames} frames do not fit a codec with time factor {time_factor}: "
                         f"need 1 + {time_factor}*k frames (next valid: {nxt})")
    return (num_frames - 1) // time_factor + 1


def pixel_frames(num_latent: int, time_factor: int) -> int:
    """Frames decoded from ``num_latent`` latent frames: ``(t - 1) * time_factor + 1``."""
    return (num_latent - 1) * time_factor + 1


def valid_length(num_frames: int, time_factor: int) -> int:
    """The smallest length ``>= num_frames`` of the form ``1 + time_factor * k``."""
    k = -(-max(num_frames - 1, 0) // time_factor)
    return 1 + time_factor * k


def _batched(x: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
    if x.dim() == 4:
        return x.unsqueeze(0), True
    if x.dim() != 5:
        raise ValueError(f"{what} must be 4-D (unbatched) or 5-D (batched), got shape {tuple(x.shape)}")
    return x, False


def _check_frames(frames: torch.Tensor, time_factor: int, space_factor: int) -> None:
    if frames.shape[2] != 3:
        raise ValueError(f"frames must be (B, T, 3, H, W), got shape {tuple(frames.shape)}")
    latent_frames(frames.shape[1], time_factor)
    height, width = frames.shape[-2:]
    if height % space_factor or width % space_factor:
        raise ValueError(f"frame size {height}x{width} is not a multiple of the codec's "
                         f"space factor {space_factor}")


class PixelCodec:
    """Weightless, exactly invertible space-to-depth codec with temporal folding.

    The round trip is exact for any float32 frame on the 2**-24 grid (so for ``torch.rand``) and within one
    float32 ulp otherwise; ``uint8`` frames divided by 255 come back exactly after ``round(x * 255)``.
    """

    name = "pixel"

    def __init__(self, space_factor: int = 4, time_factor: int = 4) -> None:
        if space_factor < 1 or time_factor < 1:
            raise ValueError("pixel codec factors must be >= 1")
        self.space_factor = space_factor
        self.time_factor = time_factor
        self.channels = 3 * time_factor * space_factor**2

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "space_factor": self.space_factor, "time_factor": self.time_factor}

    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float frames ``(B, T, 3, H, W)`` in [0, 1] -> latent ``(B, C, t, h, w)`` in [-2, 2]."""
        frames, unbatched = _batched(frames, "frames")
        _check_frames(frames, self.time_factor, self.space_factor)
        f, s = self.time_factor, self.space_factor
        # The first frame stands alone; repeating it fills its latent frame without inventing content.
        first = frames[:, :1].expand(-1, f, -1, -1, -1)  # (B, f, 3, H, W)
        folded = torch.cat([first, frames[:, 1:]], dim=1)  # (B, t*f, 3, H, W)
        latent = rearrange(folded, "b (t f) c (h p) (w q) -> b (f c p q) t h w", f=f, p=s, q=s)
        latent = (latent - 0.5) * 4  # (B, C, t, h, w)
        return latent[0] if unbatched else latent

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, C, t, h, w)`` -> frames ``(B, T, 3, H, W)``; the first frame averages its copies."""
        latent, unbatched = _batched(latent, "latent")
        f, s = self.time_factor, self.space_factor
        if latent.shape[1] != self.channels:
            raise ValueError(f"pixel codec expects {self.channels} latent channels, got {latent.shape[1]}")
        frames = rearrange(latent * 0.25 + 0.5, "b (f c p q) t h w -> b t f c (h p) (w q)", f=f, c=3, p=s, q=s)
        first = _mean_of_copies(frames[:, 0])  # (B, 3, H, W)
        rest = rearrange(frames[:, 1:], "b t f c h w -> b (t f) c h w")
        out = torch.cat([first.unsqueeze(1), rest], dim=1)  # (B, T, 3, H, W)
        return out[0] if unbatched else out


def _mean_of_copies(x: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1; pairwise halving for powers of two, so identical copies come back bit-exact."""
    while x.shape[1] > 1 and x.shape[1] % 2 == 0:
        x = (x[:, 0::2] + x[:, 1::2]) * 0.5
    return x.mean(dim=1)


@dataclass(frozen=True)
class VaeKind:
    """How to drive one diffusers video-VAE class."""

    class_name: str
    normalization: str  # "mean_std": per-channel latents_mean/std in the config; "scaling": scaling_factor


VAE_KINDS: dict[str, VaeKind] = {
    "wan": VaeKind("AutoencoderKLWan", "mean_std"),
    "cogvideox": VaeKind("AutoencoderKLCogVideoX", "scaling"),
    "hunyuanvideo": VaeKind("AutoencoderKLHunyuanVideo", "scaling"),
}


def vae_factors(config: Any) -> tuple[int, int]:
    """(time_factor, space_factor) from a diffusers VAE config.

    Architecture fields win over the informational ``scale_factor_*`` ones, which the Wan class stores
    as given (8 by default) even when ``dim_mult`` builds a different encoder.
    """
    cfg = dict(config)
    if "temperal_downsample" in cfg:  # Wan: one 2x per True, one 2x per level, optional patchify
        time_factor = 2 ** sum(bool(x) for x in cfg["temperal_downsample"])
        space_factor = 2 ** (len(cfg["dim_mult"]) - 1) * int(cfg.get("patch_size") or 1)
        return time_factor, space_factor
    time_factor = cfg.get("temporal_compression_ratio") or cfg.get("scale_factor_temporal")
    space_factor = cfg.get("spatial_compression_ratio") or 2 ** (len(cfg["block_out_channels"]) - 1)
    return int(time_factor), int(space_factor)


class DiffusersVideoCodec:
    """A diffusers video VAE behind the :class:`LatentCodec` interface.

    ``vae`` is an instance of the class named in ``VAE_KINDS[kind]``; ``path`` (if it was loaded from a
    folder) is kept so :meth:`spec` can rebuild the codec. The factors come from the VAE's config; our
    tests check them against real encodes.
    """

    def __init__(self, kind: str, vae: torch.nn.Module, path: str | None = None) -> None:
        self.name = kind
        self.kind = lookup_vae_kind(kind)
        self.vae = vae.eval().requires_grad_(False)
        self.path = path
        self.time_factor, self.space_factor = vae_factors(vae.config)
        cfg = dict(vae.config)
        self.channels = int(cfg.get("z_dim") or cfg.get("latent_channels"))
        if self.kind.normalization == "mean_std":
            self._mean = torch.tensor(cfg["latents_mean"], dtype=torch.float32).view(1, -1, 1, 1, 1)
            self._std = torch.tensor(cfg["latents_std"], dtype=torch.float32).view(1, -1, 1, 1, 1)
        else:
            self._mean = torch.zeros(1, self.channels, 1, 1, 1)
            self._std = torch.full((1, self.channels, 1, 1, 1), 1.0 / float(cfg.get("scaling_factor", 1.0)))

    def spec(self) -> dict[str, Any]:
        if self.path is None:
            raise ValueError("this VAE codec was built in memory; save the VAE to a folder to get a spec")
        return {"name": self.name, "path": self.path}

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float frames ``(B, T, 3, H, W)`` in [0, 1] -> normalised latent ``(B, C, t, h, w)``."""
        frames, unbatched = _batched(frames, "frames")
        _check_frames(frames, self.time_factor, self.space_factor)
        p = self._param
        x = rearrange(frames * 2 - 1, "b t c h w -> b c t h w").to(p.device, p.dtype)  # (B, 3, T, H, W)
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if generator is not None else dist.mode()  # (B, C, t, h, w)
        z = (z.float() - self._mean.to(z.device)) / self._std.to(z.device)
        return z[0] if unbatched else z

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent ``(B, C, t, h, w)`` -> frames ``(B, T, 3, H, W)`` clamped to [0, 1]."""
        latent, unbatched = _batched(latent, "latent")
        p = self._param
        z = latent.float() * self._std.to(latent.device) + self._mean.to(latent.device)
        x = self.vae.decode(z.to(p.device, p.dtype)).sample  # (B, 3, T, H, W) in [-1, 1]
        frames = rearrange((x.float().clamp(-1, 1) + 1) * 0.5, "b c t h w -> b t c h w")
        return frames[0] if unbatched else frames


def lookup_vae_kind(kind: str) -> VaeKind:
    """The :class:`VaeKind` named ``kind``; unknown names raise with the choices."""
    try:
        return VAE_KINDS[kind]
    except KeyError:
        raise UserError(f"unknown VAE kind '{kind}'; choose from {sorted(VAE_KINDS)}") from None


def load_vae_codec(kind: str, path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> DiffusersVideoCodec:
    """A VAE codec from a local diffusers folder (``config.json`` + weights); never touches the network."""
    vae_kind = lookup_vae_kind(kind)
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"no diffusers VAE at {folder} (expected {folder / 'config.json'}); "
                        "pass the folder that holds the VAE's config.json and weights")
    import diffusers  # deferred: importing diffusers costs seconds

    cls = getattr(diffusers, vae_kind.class_name)
    vae = cls.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype).to(device)
    return DiffusersVideoCodec(kind, vae, path=str(folder))


def make_codec(spec: dict[str, Any] | str, device: str | torch.device = "cpu") -> LatentCodec:
    """Build a codec from its spec (``{"name": "pixel", "space_factor": 4}`` or just ``"pixel"``)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name == "pixel":
        return PixelCodec(**spec)
    if name in VAE_KINDS:
        if "path" not in spec:
            raise UserError(f"codec '{name}' needs a 'path' to a local diffusers VAE folder")
        return load_vae_codec(name, spec.pop("path"), device=device, **spec)
    raise UserError(f"unknown codec '{name}'; choose from {['pixel', *sorted(VAE_KINDS)]}")


def codec_description(codec: LatentCodec) -> dict[str, Any]:
    """JSON-ready description of ``codec``: its :meth:`~LatentCodec.spec`, or just ``{"name": ...}`` for a VAE
    built in memory (which has no spec to rebuild it from, and so matches no other codec in :func:`same_codec`)."""
    try:
        return dict(codec.spec())
    except ValueError:
        return {"name": codec.name}


def same_codec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether codec specs ``a`` and ``b`` give the same latents.

    Pixel codecs: the same factors (defaults filled in). VAEs: the same kind and options, and either the
    same folder once links and relative paths are resolved, or two folders whose config and weight files
    are byte-identical (:func:`vae_folder_sha256`; only hashed when the folders differ). A VAE spec without a
    path, or a folder that does not exist, matches nothing: the caller then falls back to encoding.
    """
    a, b = dict(a), dict(b)
    name = a.pop("name", None)
    if name != b.pop("name", None):
        return False
    if name == "pixel":
        try:
            return PixelCodec(**a).spec() == PixelCodec(**b).spec()
        except (TypeError, ValueError):
            return False
    if name not in VAE_KINDS:
        return False
    path_a, path_b = a.pop("path", None), b.pop("path", None)
    if not isinstance(path_a, str) or not isinstance(path_b, str) or a != b:
        return False
    folder_a, folder_b = Path(path_a).expanduser().resolve(), Path(path_b).expanduser().resolve()
    if folder_a == folder_b:
        return (folder_a / "config.json").is_file()
    digest_a = vae_folder_sha256(folder_a)
    return digest_a is not None and digest_a == vae_folder_sha256(folder_b)


# What a diffusers model folder's latents depend on: its config and its (possibly sharded) weights.
VAE_FILE_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def vae_folder_sha256(folder: str | Path) -> str | None:
    """SHA-256 over the names and contents of a VAE folder's config and weight files (``VAE_FILE_PATTERNS``),
    or None when the folder has no ``config.json``. Read in 1 MiB chunks, so a large VAE costs no memory."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    files = sorted({f for pattern in VAE_FILE_PATTERNS for f in folder.glob(pattern) if f.is_file()})
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())  # name and length: no two files blur into one
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
