"""Training curves of a run folder: loss (raw and smoothed) and the validation numbers, one PNG."""

from __future__ import annotations

import csv
from pathlib import Path

from cascadevsr.errors import UserError


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns of a CSV log as floats (empty cells become NaN)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: [float(r[k]) if r.get(k) not in (None, "") else float("nan") for r in rows] for k in rows[0]}


def ema_smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight**i))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``metrics.csv`` and ``val.csv`` of ``run_dir`` into ``out`` (default ``RUN/curves.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    train = read_csv(run_dir / "metrics.csv")
    val = read_csv(run_dir / "val.csv")
    if not train and not val:
        raise UserError(f"{run_dir} holds no metrics.csv or val.csv; is it a training run folder?")
    panels = [k for k in ("val_psnr", "val_lpips") if k in val]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(5.5 * (1 + len(panels)), 4), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot(train["step"], train["loss"], color="tab:blue", alpha=0.25, lw=0.8, label="train loss")
        ax.plot(train["step"], ema_smooth(train["loss"]), color="tab:blue", lw=1.5, label="train loss (smoothed)")
    if "val_loss" in val:
        ax.plot(val["step"], val["val_loss"], "o-", color="tab:red", ms=3, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    for ax, key in zip(axes[0][1:], panels, strict=True):
        ax.plot(val["step"], val[key], "o-", color="tab:green", ms=3, label=key.replace("val_", "model "))
        if key == "val_psnr" and "bicubic_psnr" in val:
            ax.plot(val["step"], val["bicubic_psnr"], "--", color="gray", label="bicubic")
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("val_", "").upper() + (" (dB)" if key == "val_psnr" else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
