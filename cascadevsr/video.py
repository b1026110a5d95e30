"""Video I/O (minimal first version; to be extended: probe, decord backend, writers)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def read_frames(path: str | Path, start: int = 0, end: int | None = None) -> np.ndarray:
    """Decode frames ``[start, end)`` of a video as ``uint8`` RGB ``(T, H, W, 3)``."""
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if end is not None and i >= end:
                break
            if i >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
    return np.stack(frames)
