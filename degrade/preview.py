"""A quick-look PNG for a degraded pair: rows of HR | LR (upsampled) | motion magnitude."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def preview_rows(num_frames: int, rows: int = 3) -> list[int]:
    """Indices of the frames shown: first, middle and last (fewer for short clips)."""
    return sorted({round(i) for i in np.linspace(0, num_frames - 1, min(rows, num_frames))})


def write_preview(path: str | Path, hr: np.ndarray, lr: np.ndarray, rows: int = 3) -> None:
    """Write a PNG strip for uint8 ``hr`` ``(T, H, W, 3)`` and ``lr`` ``(T, h, w, 3)``.

    The LR clip is shown bicubic-upsampled to the HR size so the two compare pixel for pixel; the
    motion column is the DIS flow magnitude of the HR clip (px/frame) that the flow degradation uses.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cascadevsr.degrade.flow import motion_magnitude

    idx = preview_rows(len(hr), rows)
    H, W = hr.shape[1:3]
    motion = motion_magnitude(hr[: max(idx) + 1])
    vmax = max(2.0, float(np.percentile(motion[idx], 99)))
    fig, axes = plt.subplots(len(idx), 3, figsize=(3 * W / 100 + 0.6, len(idx) * H / 100 + 0.6), dpi=100,
                             squeeze=False)
    for r, t in enumerate(idx):
        up = cv2.resize(lr[t], (W, H), interpolation=cv2.INTER_CUBIC)
        panels = [(hr[t], f"HR frame {t}"), (up, f"LR {lr.shape[2]}x{lr.shape[1]} (bicubic up)"),
                  (motion[t], f"motion |flow| (0-{vmax:.0f} px)")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            if img.ndim == 2:
                ax.imshow(img, cmap="magma", vmin=0, vmax=vmax)
            else:
                ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    plt.close(fig)
