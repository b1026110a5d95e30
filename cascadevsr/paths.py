"""Where cascadevsr keeps fetched data and weights."""

from __future__ import annotations

import os
from pathlib import Path


def cascadevsr_home() -> Path:
    """The cache folder: ``$CASCADEVSR_HOME``, default ``~/.cache/cascadevsr``."""
    env = os.environ.get("CASCADEVSR_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cascadevsr"


def clips_dir() -> Path:
    """Folder of fetched real video clips."""
    return cascadevsr_home() / "clips"


def weights_dir() -> Path:
    """Folder of fetched offline weights."""
    return cascadevsr_home() / "weights"


def images_dir() -> Path:
    """Folder of fetched real still images (metric calibration pairs)."""
    return cascadevsr_home() / "images"
