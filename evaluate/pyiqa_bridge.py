"""Bridge to pyiqa's metrics (MUSIQ, CLIP-IQA, MANIQA, TOPIQ, …) with weights from a local folder only.

pyiqa downloads its weights on first use into ``$TORCH_HOME/hub/pyiqa`` (and torchvision backbones into
``$TORCH_HOME/hub/checkpoints``). While a pyiqa metric is being built we point both at the weights folder
(``--weights-dir``, default ``$CASCADEVSR_HOME/weights``):

    <weights>/pyiqa/<file>                    pyiqa's own weight files, named as in their download URLs
    <weights>/torch_hub/checkpoints/<file>    torchvision backbones some pyiqa metrics start from

and replace the download function by one that raises, so a missing file becomes one ``UserError`` naming
the file, the folder to put it in and the URL it comes from. pyiqa names its files with the first hex
digits of their SHA-256 (``musiq_koniq_ckpt-e95806b9.pth``); those are verified before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from cascadevsr.errors import UserError
from cascadevsr.evaluate.weights import sha256_cached, weights_root

PREFIX = "pyiqa:"
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


class _MissingWeightError(Exception):
    def __init__(self, url: str, dst: str) -> None:
        super().__init__(url)
        self.url, self.dst = url, dst


def _pyiqa_configs() -> dict[str, dict[str, Any]]:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    import cascadevsr  # noqa: F401  (installs the torchvision import shim before pyiqa imports it)

    return DEFAULT_CONFIGS


def pyiqa_name(name: str) -> str | None:
    """The pyiqa metric a name refers to, or None: ``pyiqa:X`` always means pyiqa's X."""
    bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
    try:
        configs = _pyiqa_configs()
    except ImportError:
        return None
    return bare if bare in configs else None


def list_pyiqa_metrics() -> list[str]:
    """Every metric name pyiqa knows (empty when pyiqa is not installed)."""
    try:
        return sorted(_pyiqa_configs())
    except ImportError:
        return []


@contextlib.contextmanager
def offline_weights(root: Path) -> Iterator[None]:
    """Within the block, pyiqa and torch.hub read weights from ``root`` and never download."""
    import pyiqa.utils.download_util as dl

    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise _MissingWeightError(url, dst)

    saved = (dl.DEFAULT_CACHE_DIR, dl.download_url_to_file, torch.hub.download_url_to_file,
             torch.hub.get_dir())
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    dl.DEFAULT_CACHE_DIR = str(root / "pyiqa")
    dl.download_url_to_file = refuse
    torch.hub.download_url_to_file = refuse
    torch.hub.set_dir(str(root / "torch_hub"))
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        yield
    finally:
        dl.DEFAULT_CACHE_DIR, dl.download_url_to_file, torch.hub.download_url_to_file = saved[:3]
        torch.hub.set_dir(saved[3])
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _verify_named_hashes(folder: Path) -> dict[str, str]:
    """Check files whose names carry a SHA-256 prefix; return ``{relpath: sha256}`` of every file."""
    hashes: dict[str, str] = {}
    if not folder.is_dir():
        return hashes
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = sha256_cached(path)
        m = _HASH_SUFFIX.search(path.name)
        if m and not digest.startswith(m.group(1)):
            raise UserError(f"weight file {path} does not match the SHA-256 prefix in its name "
                            f"({m.group(1)}); delete it and copy it again.")
        hashes[str(path.relative_to(folder.parent))] = digest
    return hashes


def build_pyiqa(name: str, device: torch.device, weights_dir: Path | None):
    """A score function ``fn(pred, ref) -> (N,)`` for pyiqa metric ``name`` with offline weights."""
    import pyiqa

    root = weights_root(weights_dir)
    try:
        with offline_weights(root):
            model = pyiqa.create_metric(name, device=device, as_loss=False)
    except _MissingWeightError as err:
        fname = os.path.basename(urlparse(err.url).path)
        raise UserError(f"pyiqa metric '{name}' needs the weight file {fname}: put it at {err.dst} (it is "
                        f"downloaded from {err.url}; nothing is fetched at run time).") from None
    except UserError:
        raise
    except Exception as err:  # pyiqa raises whatever its dependencies raise (ImportError, OSError, …)
        hint = (" (its architecture failed to import; a dependency such as timm may be missing)"
                if isinstance(err, KeyError) and "registry" in str(err) else "")
        raise UserError(f"pyiqa metric '{name}' cannot be built offline: {type(err).__name__}: "
                        f"{str(err).strip(chr(34)).rstrip('.')}{hint}.") from None
    hashes = _verify_named_hashes(root / "pyiqa")

    def score(pred: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        out = model(pred, ref) if ref is not None and model.metric_mode == "FR" else model(pred)
        return torch.as_tensor(out).reshape(-1)

    score.describe_extra = lambda: {"implementation": f"pyiqa {pyiqa.__version__}", "pyiqa_weights": hashes}
    return score


def spec_for(name: str):
    """A :class:`MetricSpec` for a pyiqa metric, or None when pyiqa does not know ``name``."""
    from cascadevsr.evaluate.metrics import MetricSpec

    bare = pyiqa_name(name)
    if bare is None:
        return None
    cfg = _pyiqa_configs()[bare]
    lo, hi = _parse_range(cfg.get("score_range", ""))
    opts = cfg.get("metric_opts", {})

    def build(opts: dict[str, Any], device: torch.device, weights_dir: Path | None):
        return build_pyiqa(bare, device, weights_dir)

    return MetricSpec(
        name=name, build=build, needs_reference=cfg.get("metric_mode") == "FR",
        lower_better=bool(cfg.get("lower_better", False)), score_range=(lo, hi),
        version=f"pyiqa-{hashlib.sha1(repr(sorted(opts.items())).encode()).hexdigest()[:8]}",
        description=f"pyiqa {bare}",
    )


def _parse_range(text: str) -> tuple[float, float]:
    nums = re.findall(r"-?\d+(?:\.\d+)?", str(text))
    if len(nums) >= 2:
        return float(nums[0]), float(nums[1])
    return float("nan"), float("nan")
