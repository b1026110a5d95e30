"""Video I/O: probe, read and write clips as ``uint8`` RGB arrays ``(T, H, W, 3)``.

Reading: decord first (fast random access by frame index), PyAV where decord cannot be trusted.
Both were compared frame by frame on every fetched clip (decord 0.6.0 with the FFmpeg it bundles,
PyAV 18.1 with libavcodec 62):

* H.264 (bikes, carphone, bigbuckbunny, jwpIntro, earth), and HEVC, VP8, VP9, FFV1 files written by
  PyAV: identical pixels. ``auto`` uses decord for these codecs (``_DECORD_CODECS``).
* MPEG-2 (cityCC0.mpg, an MPEG program stream with open GOPs): decord reports the right count (190)
  but its frame i is roughly PyAV's frame i + 12 (one GOP late) and not even equal to that. PyAV
  decodes in presentation order from the start and is right, so ``auto`` uses PyAV and a forced
  ``backend="decord"`` is refused for MPEG-1/2.
* MPEG-4 Part 2 (testMovie.mp4): decord differs from PyAV by at most 1 grey level from frame 1 on,
  presumably a different IDCT in the two FFmpeg builds (MPEG-4 Part 2 lets decoders differ). ``auto``
  uses PyAV, the newer decoder, so that every MPEG-4 read gives the same pixels whether or not decord
  is installed; a forced ``backend="decord"`` is allowed.
* Any codec: if decord fails to open a file or counts a different number of frames than the
  container's packets, ``auto`` falls back to PyAV.

Writing goes through PyAV. ``codec="libx264"`` (default) writes near-lossless H.264 in ``yuv444p``,
so chroma is not subsampled. ``codec="ffv1"`` writes FFV1 (``bgr0``) in the same ``.mp4`` container:
a bit-exact RGB round trip, every frame a keyframe, readable by both backends; it was chosen over
``libx264rgb`` at ``crf=0`` (also bit-exact and readable by both) because it was smaller (11.0 MB vs
13.0 MB for 32 frames of cityCC0 at 720x405; 1.27 vs 2.19 MB on bikes) and about 3x faster to
encode. Lossless libx264 in
``yuv444p`` (``crf=0``) is *not* bit-exact for RGB input: the RGB↔YUV conversion loses up to 2
grey levels. Every encoder runs with one thread so that the same frames always give the same bytes
(x264's output depends on its thread count), and nothing time-dependent is written into the file.

Bad files (missing, empty, not a video, truncated) raise :class:`~cascadevsr.errors.UserError` with
one sentence; no PyAV or decord exception escapes this module.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from cascadevsr.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
# Codecs whose decord frames were checked equal to PyAV's (see the module docstring).
_DECORD_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "ffv1"})
# Codecs decord demonstrably misreads (cityCC0.mpg): a forced decord read is refused.
_DECORD_WRONG = frozenset({"mpeg1video", "mpeg2video"})

Source = str | os.PathLike | bytes  # a file path, or a whole encoded video in memory


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` finds out about a video."""

    path: str  # as given; "<bytes>" for an in-memory video
    num_frames: int  # decoded frames (counted by decoding when the container has no count)
    fps: float  # average frame rate; 0.0 if the container gives none
    width: int
    height: int
    codec: str  # FFmpeg decoder name: h264, mpeg2video, mpeg4, vp8, ffv1, ...
    duration: float  # seconds, num_frames / fps (container duration when fps is unknown)
    pix_fmt: str  # stored pixel format, e.g. yuv420p, yuv444p, gbrp, bgr0


# ----------------------------------------------------------------------------------------- helpers


def _label(src: Source) -> str:
    return "<bytes>" if isinstance(src, bytes | bytearray) else str(src)


def _fail(src: Source, why: str) -> UserError:
    return UserError(f"cannot read video '{_label(src)}': {why}")


def _av_message(e: BaseException) -> str:
    """The human part of an FFmpeg error: ``Invalid data found when processing input``."""
    return getattr(e, "strerror", None) or str(e).split(":")[0] or type(e).__name__


def _span(start: int, end: int | None) -> str:
    return f"[{start}, {'end' if end is None else end})"


def _check_source(src: Source) -> None:
    """Refuse what no backend can read, with the plain reason."""
    if isinstance(src, bytes | bytearray):
        if not src:
            raise _fail(src, "it is empty (0 bytes)")
        return
    path = Path(src)
    if not path.exists():
        raise _fail(src, "no such file")
    if path.is_dir():
        raise _fail(src, "it is a directory")
    if path.stat().st_size == 0:
        raise _fail(src, "file is empty")
    if not os.access(path, os.R_OK):
        raise _fail(src, "permission denied")


def _open_av(src: Source) -> Any:
    """An open PyAV input container for a path or bytes, with its first video stream checked."""
    _check_source(src)
    target = io.BytesIO(src) if isinstance(src, bytes | bytearray) else str(src)
    try:
        container = av.open(target, "r")
    except (av.FFmpegError, OSError) as e:
        why = f"FFmpeg cannot open it ({_av_message(e)}); it is truncated, corrupt or not a video"
        raise _fail(src, why) from e
    if not container.streams.video:
        container.close()
        raise _fail(src, "it has no video stream")
    return container


@dataclass(frozen=True)
class _Header:
    """Cheap facts from the container: no decoding, one pass over the packets."""

    codec: str
    width: int
    height: int
    pix_fmt: str
    fps: float
    index_frames: int  # the container's own frame count (0 when it keeps none, e.g. MPEG-PS, WebM)
    packets: int  # video packets carrying data; equals the frame count for every clip we read
    container_duration: float


def _header(src: Source) -> _Header:
    """Read the stream header and count packets; a file shorter than its own index is truncated."""
    container = _open_av(src)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        try:
            packets = sum(1 for p in container.demux(stream) if p.size > 0)
        except (av.FFmpegError, OSError) as e:
            raise _fail(src, f"the file is corrupt ({_av_message(e)})") from e
        header = _Header(
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            pix_fmt=ctx.pix_fmt or (stream.format.name if stream.format else "unknown"),
            fps=float(rate) if rate else 0.0,
            index_frames=int(stream.frames or 0),
            packets=packets,
            container_duration=(container.duration or 0) / av.time_base,
        )
    finally:
        container.close()
    if header.index_frames > header.packets:
        raise _fail(
            src,
            f"the file is truncated (its index lists {header.index_frames} frames "
            f"but only {header.packets} are in the file)",
        )
    if header.packets == 0:
        raise _fail(src, "its video stream has no frames")
    return header


def _pyav_frames(src: Source, start: int, end: int | None) -> Iterator[np.ndarray]:
    """Decode frames ``[start, end)`` in presentation order, one ``(H, W, 3)`` array at a time.

    Decodes from the first frame (frames before ``start`` are decoded but not converted to RGB):
    correct for every container, including MPEG program streams, which cannot seek exactly.
    """
    container = _open_av(src)
    index = 0
    try:
        for frame in container.decode(container.streams.video[0]):
            if end is not None and index >= end:
                break
            if index >= start:
                yield frame.to_ndarray(format="rgb24")
            index += 1
    except (av.FFmpegError, OSError) as e:
        raise _fail(
            src, f"decoding failed after {index} frames ({_av_message(e)}); the file is corrupt"
        ) from e
    finally:
        container.close()
    if index < start or (end is not None and index < end):
        raise UserError(f"cannot read frames {_span(start, end)} of '{_label(src)}': it has {index} frames")


def _count_decoded(src: Source) -> int:
    """Number of frames the decoder outputs (no RGB conversion)."""
    container = _open_av(src)
    n = 0
    try:
        for _ in container.decode(container.streams.video[0]):
            n += 1
    except (av.FFmpegError, OSError) as e:
        raise _fail(src, f"decoding failed after {n} frames ({_av_message(e)}); the file is corrupt") from e
    finally:
        container.close()
    return n


def _decord_reader(src: Source) -> Any | None:
    """A decord ``VideoReader``, or None when decord is missing or cannot open the file."""
    try:
        import decord
    except ImportError:
        return None
    target = io.BytesIO(src) if isinstance(src, bytes | bytearray) else str(src)
    try:
        return decord.VideoReader(target, ctx=decord.cpu(0))
    except Exception as e:  # decord raises RuntimeError, DECORDError or AssertionError here
        log.debug("decord cannot open %s (%s); using PyAV", _label(src), e)
        return None


def _decord_batch(reader: Any, src: Source, start: int, end: int) -> np.ndarray:
    try:
        batch = reader.get_batch(list(range(start, end)))
    except Exception as e:  # decord's DECORDError does not derive from a public base class
        why = f"decord failed on frames [{start}, {end}) ({str(e).splitlines()[0][:200]})"
        raise _fail(src, why) from e
    # Another module may have switched decord's bridge to torch; accept any array-like result.
    arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _check_range(src: Source, start: int, end: int | None, available: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise UserError(f"invalid frame range {_span(start, end)} for '{_label(src)}'")
    if available is not None and (start > available or (end is not None and end > available)):
        raise UserError(
            f"cannot read frames {_span(start, end)} of '{_label(src)}': it has {available} frames"
        )


def _pick_reader(src: Source, backend: str) -> Any | None:
    """decord ``VideoReader`` to use, or None for PyAV, following the backend policy above."""
    if backend not in BACKENDS:
        raise UserError(f"unknown video backend '{backend}'; choose from {list(BACKENDS)}")
    header = _header(src)  # also refuses unreadable and truncated files, whatever the backend
    if backend == "pyav":
        return None
    if backend == "decord":
        if header.codec in _DECORD_WRONG:
            raise _fail(
                src, f"decord misreads {header.codec} (frames out of place); use backend='auto' or 'pyav'"
            )
        reader = _decord_reader(src)
        if reader is None:
            raise _fail(src, "decord cannot open it; use backend='auto' or 'pyav'")
        return reader
    if header.codec not in _DECORD_CODECS:
        return None
    reader = _decord_reader(src)
    if reader is not None and len(reader) != header.packets:
        log.debug(
            "decord counts %d frames in %s, the container %d; using PyAV",
            len(reader),
            _label(src),
            header.packets,
        )
        return None
    return reader


# -------------------------------------------------------------------------------------- public: read


def probe(path: Source) -> VideoInfo:
    """Describe a video without loading its frames.

    The frame count is the container's own count when its packets agree with it; otherwise (MPEG
    program streams, WebM, any disagreement) frames are counted by decoding them, without RGB
    conversion. Raises :class:`UserError` for a missing, empty, unreadable or truncated file.
    """
    header = _header(path)
    if header.index_frames and header.index_frames == header.packets:
        num_frames = header.index_frames
    else:
        num_frames = _count_decoded(path)
    fps = header.fps
    duration = num_frames / fps if fps else header.container_duration
    return VideoInfo(
        path=_label(path),
        num_frames=num_frames,
        fps=fps,
        width=header.width,
        height=header.height,
        codec=header.codec,
        duration=duration,
        pix_fmt=header.pix_fmt,
    )


def iter_frames(
    path: Source, start: int = 0, end: int | None = None, chunk: int = 16, *, backend: str = "auto"
) -> Iterator[np.ndarray]:
    """Yield frames ``[start, end)`` as ``uint8`` RGB chunks ``(t, H, W, 3)``, ``t <= chunk``.

    For long videos: at most one chunk is in memory. ``end=None`` reads to the last frame. The file is
    opened and the range checked before this returns, so bad input raises here, not at the first
    ``next()``. Decode errors further into the file raise :class:`UserError` while iterating.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    reader = _pick_reader(path, backend)
    if reader is not None:
        available = len(reader)
        _check_range(path, start, end, available)
        return _decord_chunks(reader, path, start, available if end is None else end, chunk,
                              fallback=backend == "auto")
    _check_range(path, start, end, None)
    return _pyav_chunks(path, start, end, chunk)


def _decord_chunks(reader: Any, src: Source, start: int, end: int, chunk: int,
                   fallback: bool) -> Iterator[np.ndarray]:
    for a in range(start, end, chunk):
        try:
            yield _decord_batch(reader, src, a, min(a + chunk, end))
        except UserError:
            if not fallback:
                raise
            # decord opens some files it then cannot convert (e.g. FFV1 frames whose width is not a
            # multiple of its row alignment); PyAV decodes them, so finish the range with it.
            log.debug("decord failed on %s at frame %d; continuing with PyAV", _label(src), a)
            yield from _pyav_chunks(src, a, end, chunk)
            return


def _pyav_chunks(src: Source, start: int, end: int | None, chunk: int) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for frame in _pyav_frames(src, start, end):
        buf.append(frame)
        if len(buf) == chunk:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def read_frames(path: Source, start: int = 0, end: int | None = None, *, backend: str = "auto") -> np.ndarray:
    """Frames ``[start, end)`` of a video as ``uint8`` RGB ``(T, H, W, 3)``; ``end=None`` reads to the end.

    ``backend``: ``"auto"`` (decord where it was checked to match PyAV, else PyAV), ``"decord"`` or
    ``"pyav"``. A range past the last frame raises :class:`UserError` naming the frame count.
    """
    chunks = list(iter_frames(path, start, end, chunk=64, backend=backend))
    if not chunks:  # an empty range, e.g. start == end
        header = _header(path)
        return np.zeros((0, header.height, header.width, 3), np.uint8)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def decode_video(data: bytes, *, backend: str = "auto") -> np.ndarray:
    """Decode a whole in-memory video (e.g. an ``.mp4`` from a shard) to ``uint8`` RGB ``(T, H, W, 3)``."""
    return read_frames(bytes(data), backend=backend)


# ------------------------------------------------------------------------------------- public: write


@dataclass(frozen=True)
class _CodecSpec:
    """How to drive one encoder."""

    pix_fmt: str  # default stored pixel format
    quality: str | None  # encoder option that receives ``crf``; None: the codec has no CRF mode
    options: tuple[tuple[str, str], ...] = ()  # always-set encoder options


# Written out by hand; `write_video`'s docstring says what each is for.
_CODECS: dict[str, _CodecSpec] = {
    # mbtree off: with x264's macroblock-tree rate control, identical frames can encode to different bytes
    # depending on what the process encoded before; near-lossless storage loses nothing measurable without it.
    "libx264": _CodecSpec("yuv444p", "crf", (("x264-params", "mbtree=0"),)),
    "libx264rgb": _CodecSpec("rgb24", "crf"),  # stored as gbrp; crf=0 is a bit-exact RGB round trip
    "libx265": _CodecSpec("yuv420p", "crf", (("x265-params", "log-level=error"),)),
    "ffv1": _CodecSpec("bgr0", None),  # lossless: crf is ignored
    "mpeg4": _CodecSpec("yuv420p", None),  # rate set by bit_rate / options
    "libvpx": _CodecSpec("yuv420p", None),
    "libvpx-vp9": _CodecSpec("yuv420p", "crf", (("b", "0"),)),  # b=0 makes crf a constant-quality mode
}
_X264_LIKE = frozenset({"libx264", "libx264rgb", "libx265"})
_CHROMA_SUBSAMPLED = frozenset({"yuv420p", "yuvj420p", "nv12", "yuv422p", "yuvj422p"})
_SUFFIX_FORMATS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
}
# BT.601, limited range: what PyAV's RGB->YUV conversion uses and what both readers assume for an
# untagged file. Tagging it keeps other players from guessing BT.709 for HD sizes.
_BT601 = {"colorspace": 6, "color_primaries": 6, "color_trc": 6, "color_range": 1}


def _codec_spec(codec: str) -> _CodecSpec:
    if codec not in _CODECS:
        raise UserError(f"unknown video codec '{codec}'; choose from {sorted(_CODECS)}")
    return _CODECS[codec]


def _fps_fraction(fps: float | Fraction) -> Fraction:
    if fps <= 0:
        raise UserError(f"fps must be positive, got {fps}")
    # 1001 keeps NTSC rates exact (30000/1001) and turns 29.97 into 2997/100.
    return Fraction(fps).limit_denominator(1001)


def _as_chunks(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Frames as ``(t, H, W, 3)`` uint8 chunks, from one array or an iterable of frames or chunks."""
    items = [frames] if isinstance(frames, np.ndarray) else frames
    for item in items:
        arr = np.asarray(item)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"frames must be (T, H, W, 3) or (H, W, 3) RGB, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {arr.dtype}")
        yield arr


def _encode_to(
    target: Any,
    fmt: str,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction,
    codec: str,
    crf: int | None,
    pix_fmt: str | None,
    preset: str,
    bit_rate: int | None,
    options: dict[str, str] | None,
) -> int:
    """Encode ``frames`` into ``target`` (a path or a binary file object); return the frame count."""
    spec = _codec_spec(codec)
    pix_fmt = pix_fmt or spec.pix_fmt
    rate = _fps_fraction(fps)
    opts = dict(spec.options)
    if codec in _X264_LIKE:
        opts["preset"] = preset
    if spec.quality and crf is not None and bit_rate is None:
        opts[spec.quality] = str(crf)
    opts.update(options or {})
    count = 0
    with av.open(target, "w", format=fmt) as out:
        stream = None
        for chunk in _as_chunks(frames):
            if stream is None:
                height, width = chunk.shape[1:3]
                if pix_fmt in _CHROMA_SUBSAMPLED and (width % 2 or height % 2):
                    raise UserError(
                        f"{pix_fmt} needs an even width and height, got {width}x{height}; "
                        "use pix_fmt='yuv444p' or codec='ffv1', or crop"
                    )
                stream = out.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
                # One thread: x264's bitstream depends on its thread count, so this makes the bytes
                # depend only on the frames and the settings, not on the machine.
                stream.codec_context.thread_count = 1
                if pix_fmt.startswith(("yuv", "nv")):
                    for key, value in _BT601.items():
                        setattr(stream.codec_context, key, value)
                if bit_rate is not None:
                    stream.codec_context.bit_rate = int(bit_rate)
                stream.options = opts
            if chunk.shape[1:3] != (stream.height, stream.width):
                size = f"{stream.height}x{stream.width}"
                raise ValueError(f"frame size changed from {size} to {chunk.shape[1]}x{chunk.shape[2]}")
            for arr in chunk:
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                frame.pts = count
                frame.time_base = 1 / rate
                out.mux(stream.encode(frame))
                count += 1
        if stream is None:
            raise ValueError("no frames to write")
        out.mux(stream.encode(None))
    return count


def encode_video(
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction,
    *,
    codec: str = "libx264",
    crf: int | None = 18,
    pix_fmt: str | None = None,
    container: str = "mp4",
    preset: str = "medium",
    bit_rate: int | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode ``uint8`` RGB frames ``(T, H, W, 3)`` to the bytes of a video file (see :func:`write_video`).

    ``container`` is an FFmpeg muxer name: ``mp4`` (default), ``matroska``, ``webm``, ``avi``, ``mov``.
    Same frames and settings give identical bytes.
    """
    buf = io.BytesIO()
    _encode_to(buf, container, frames, fps, codec, crf, pix_fmt, preset, bit_rate, options)
    return buf.getvalue()


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction,
    *,
    codec: str = "libx264",
    crf: int | None = 18,
    pix_fmt: str | None = None,
    preset: str = "medium",
    bit_rate: int | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Write ``uint8`` RGB frames to a video file; the container follows the suffix (.mp4, .mkv, .webm, ...).

    ``frames``: one ``(T, H, W, 3)`` array, or an iterable of frames or chunks (streamed, for long videos).
    ``codec``:
      * ``libx264`` (default): H.264 in ``yuv444p`` (no chroma subsampling) at ``crf`` (0-51; 0-18 is
        near-lossless, 18 the default). ``crf=0`` is lossless in YUV, not in RGB (±2 grey levels).
      * ``ffv1``: lossless FFV1 (``bgr0``), bit-exact for any size including odd ones; ``crf`` is ignored.
        The choice for an exact ``.mp4``.
      * ``libx264rgb``: H.264 on RGB; ``crf=0`` is also bit-exact (larger and slower than FFV1).
      * ``libx265``, ``libvpx-vp9`` (``crf``), ``mpeg4``, ``libvpx`` (rate from ``bit_rate``/``options``).
    ``pix_fmt`` overrides the stored format (``yuv420p`` needs even sizes). ``bit_rate`` (bits/s) switches
    to bitrate control; ``options`` are passed to the encoder last. The file is written under a
    temporary name and renamed, so ``path`` never holds half a video.
    """
    path = Path(path)
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot write video '{path}': unknown suffix; use one of {sorted(_SUFFIX_FORMATS)}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            _encode_to(f, fmt, frames, fps, codec, crf, pix_fmt, preset, bit_rate, options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
