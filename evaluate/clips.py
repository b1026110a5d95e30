"""Finding and reading the clips of a method, ground truth or LR folder.

A folder holds one entry per clip, and the clip's name is the entry's name without suffix:

    DIR/city.mp4            a video file (.mp4 .mkv .webm .avi .mov .mpg .mpeg .m4v)
    DIR/bikes/00000.png …   or a folder of frames (.png .jpg .jpeg .bmp .tif .tiff .webp), in name order

Anything else in the folder (``meta.json``, hidden files, notes) is ignored. Two entries with one name
(``city.mp4`` and ``city/``) are an error, as is a frame folder with frames of different sizes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cascadevsr import video
from cascadevsr.errors import UserError

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".m4v"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Clip:
    """One clip on disk: a video file or a folder of frames."""

    name: str
    path: Path
    is_video: bool

    def frame_files(self) -> list[Path]:
        """The frame images of a frame folder, in name order."""
        return sorted(p for p in self.path.iterdir()
                      if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))

    def info(self) -> tuple[int, int, int]:
        """``(frames, height, width)`` without decoding the whole clip; probed once per ``Clip``."""
        return self._info

    @functools.cached_property
    def _info(self) -> tuple[int, int, int]:
        # A run asks several times (planning, memory grouping); the file is opened once.
        if self.is_video:
            i = video.probe(self.path)
            return i.num_frames, i.height, i.width
        files = self.frame_files()
        if not files:
            raise UserError(f"clip '{self.name}': frame folder {self.path} holds no images.")
        first = _read_image(files[0])
        return len(files), first.shape[0], first.shape[1]

    def read(self, start: int = 0, end: int | None = None, step: int = 1) -> np.ndarray:
        """Frames ``[start, end)`` every ``step`` as ``uint8`` RGB ``(T, H, W, 3)``."""
        if self.is_video:
            # Clips are read front to back, where PyAV is as fast as decord; decord was seen to fail on
            # narrow frames (a 48-px-wide FFV1 clip: "size must exactly match"), which LR clips often are.
            frames = video.read_frames(self.path, start, end, backend="pyav")
            return np.ascontiguousarray(frames[::step])
        files = self.frame_files()[start:end:step]
        frames = [_read_image(p) for p in files]
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:
            raise UserError(f"clip '{self.name}': frames in {self.path} differ in size ({sorted(sizes)}).")
        if not frames:
            raise UserError(f"clip '{self.name}': no frames in range {start}:{end} of {self.path}.")
        return np.stack(frames)


def _read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"cannot read image {path}.")
    if img.dtype != np.uint8:
        raise UserError(f"image {path} is {img.dtype}; frames must be 8-bit.")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2))
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img[..., ::-1])  # BGR → RGB


def discover(folder: str | Path, what: str) -> dict[str, Clip]:
    """Clips in ``folder`` by name; ``what`` names the folder in error messages ("ground truth", …)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist.")
    clips: dict[str, Clip] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            clip = Clip(entry.name, entry, is_video=False)
        elif entry.suffix.lower() in VIDEO_SUFFIXES:
            clip = Clip(entry.stem, entry, is_video=True)
        else:
            continue
        if clip.name in clips:
            raise UserError(f"{what} folder {folder} has two entries for clip '{clip.name}' "
                            f"({clips[clip.name].path.name} and {entry.name}); keep one.")
        clips[clip.name] = clip
    if not clips:
        raise UserError(f"{what} folder {folder} holds no clips (video files or folders of frames).")
    return clips
