"""Video-codec round trip: encode a clip with libx264 or MPEG-4 part 2 at a sampled bitrate, decode it back.

This is RealBasicVSR's ``RandomVideoCompression`` (mmagic) done in memory with PyAV, with three deliberate
differences, each for a reason:

* **Real timing.** mmagic opens its stream with ``rate=1``, so its "bits per second" are really bits per
  frame. We encode at the clip's frame rate (``ctx.fps``), so ``bitrate`` means what it says; the bits each
  frame gets are ``bitrate / fps``. The same number is therefore ~25× more severe here than in mmagic.
* **Constrained rate control.** Plain one-pass ABR (mmagic's setting) misses its target badly on short clips:
  measured on 8–32-frame real crops, libx264 spent 0.3–0.9× the target. A VBV buffer (``maxrate = bitrate``,
  ``bufsize = vbv_buffer_s · bitrate``) keeps libx264 within 0.9–1.3× and MPEG-4 within 1.9× on 8 frames
  (1.25× on 32), as long as the target is reachable: a codec spends less once it reaches its finest
  quantiser, and more when even its coarsest one needs more (x264 then sends near-flat grey frames; e.g.
  1e4 bits/s at 25 fps on a 128×128 crop is 0.02 bit/pixel). ``vbv_buffer_s = 0`` restores plain ABR.
* **Determinism.** The encoder runs on one thread (x264's output depends on its thread count, which would
  otherwise follow the machine's core count) with x264's macroblock-tree rate control off, and decoder
  packets carry FFmpeg's zeroed input padding: without the last two, identical input gave different bytes
  (x264) or frames (MPEG-4 decoding) from run to run.

Config ranges follow ``degrade/base.py``: written mild → severe, scaled by ``strength``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from cascadevsr.degrade import base

# Encoders this step may use. "h264" is accepted because mmagic lists it beside "libx264"; in PyAV the
# H.264 encoder *is* libx264, so both names run the same encoder.
ENCODERS = {"libx264": "libx264", "h264": "libx264", "mpeg4": "mpeg4"}
DECODERS = {"libx264": "h264", "mpeg4": "mpeg4"}
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)


@dataclass(frozen=True)
class CodecConfig:
    """Ranges for the codec step (a preset's ``codec`` entry).

    ``codec_prob``: relative probability of each encoder, keys from ``libx264``, ``h264`` (= libx264) and
    ``mpeg4``. mmagic draws libx264, h264 and mpeg4 with 1/3 each, i.e. H.264 2/3 and MPEG-4 1/3.
    ``bitrate``: target bits per second, ``[mild, severe]``; mmagic's range is 1e4..1e5.
    ``bitrate_per_pixel`` (ours): when true, ``bitrate`` is the rate for a ``reference_size`` frame and is
    scaled by the clip's pixel area, so a given severity means the same bits per pixel at any resolution
    (at 384×672, 1e4..1e5 becomes 0.63..6.3 Mbit/s). When false the bitrate is absolute, as in mmagic.
    ``reference_size`` (ours): ``[height, width]`` the per-pixel mode refers to; 64×64 is the LR patch size
    at which RealBasicVSR's second-order compression runs (256-px GT crops, ×4).
    ``vbv_buffer_s`` (ours): VBV buffer in seconds of ``bitrate`` (see the module docstring); 0 = plain ABR.
    ``x264_preset``: libx264 speed preset; ``medium`` is x264's default and what mmagic gets.
    """

    codec_prob: dict[str, float] = field(default_factory=lambda: {"libx264": 0.667, "mpeg4": 0.333})
    bitrate: list[float] = field(default_factory=lambda: [100000.0, 10000.0])
    bitrate_per_pixel: bool = False
    reference_size: list[int] = field(default_factory=lambda: [64, 64])
    vbv_buffer_s: float = 0.5
    x264_preset: str = "medium"

    def __post_init__(self) -> None:
        problems = []
        unknown = sorted(set(self.codec_prob) - set(ENCODERS))
        if unknown:
            problems.append(f"codec_prob: unknown codec(s) {unknown}; choose from {sorted(ENCODERS)}")
        weights = list(self.codec_prob.values())
        if not weights or min(weights) < 0 or sum(weights) <= 0:
            problems.append("codec_prob: needs non-negative weights with a positive sum")
        if len(self.bitrate) != 2 or min(self.bitrate) <= 0:
            problems.append(f"bitrate: expected [mild, severe] bits/s > 0, got {self.bitrate}")
        if len(self.reference_size) != 2 or min(self.reference_size) <= 0:
            problems.append(f"reference_size: expected [height, width] > 0, got {self.reference_size}")
        if self.vbv_buffer_s < 0:
            problems.append(f"vbv_buffer_s: must be >= 0 seconds, got {self.vbv_buffer_s}")
        if self.x264_preset not in X264_PRESETS:
            problems.append(f"x264_preset: unknown '{self.x264_preset}'; choose from {list(X264_PRESETS)}")
        if problems:
            raise ValueError("invalid codec config: " + "; ".join(problems))


@dataclass(frozen=True)
class CodecParams:
    """One resolved codec draw.

    ``codec``: ``libx264`` or ``mpeg4``. ``bitrate``: target bits/s; when ``reference_area > 0`` it is the
    rate for a frame of that many pixels and is scaled by the clip's area at apply time (see
    :func:`effective_bitrate`). ``vbv_buffer_s`` and ``x264_preset`` as in :class:`CodecConfig`.
    """

    codec: str
    bitrate: int
    reference_area: int = 0
    vbv_buffer_s: float = 0.5
    x264_preset: str = "medium"


def sample_codec(rng: np.random.Generator, cfg: CodecConfig, strength: float, num_frames: int) -> CodecParams:
    """Draw an encoder and a bitrate (uniform on the strength-scaled range) for one clip."""
    del num_frames  # one encode per clip: nothing varies per frame
    codec = ENCODERS[base.choice(rng, cfg.codec_prob)]
    bitrate = round(base.uniform(rng, cfg.bitrate, strength))
    area = cfg.reference_size[0] * cfg.reference_size[1] if cfg.bitrate_per_pixel else 0
    return CodecParams(codec=codec, bitrate=bitrate, reference_area=area,
                       vbv_buffer_s=float(cfg.vbv_buffer_s), x264_preset=cfg.x264_preset)


# libx264 takes its rate in kbit/s and FFmpeg truncates bits/s to that unit: below 1000 bits/s it passes 0,
# and x264 refuses to open (an ABR or VBV rate of 0). Per-pixel scaling reaches that on tiny LR crops.
X264_MIN_BITRATE = 1000


def effective_bitrate(params: CodecParams, height: int, width: int) -> int:
    """Target bits/s for a ``height × width`` clip: ``bitrate``, scaled by area in per-pixel mode, and for
    libx264 at least :data:`X264_MIN_BITRATE`, the lowest rate it accepts."""
    if params.reference_area <= 0:
        rate = int(params.bitrate)
    else:
        rate = max(1, round(params.bitrate * height * width / params.reference_area))
    return max(rate, X264_MIN_BITRATE) if params.codec == "libx264" else rate


def apply_codec(frames: np.ndarray, params: CodecParams, ctx: base.Context) -> np.ndarray:
    """Encode and decode ``frames`` (float32 ``(T, H, W, 3)`` RGB in [0, 1]) at ``ctx.fps``.

    The clip is clipped to [0, 1] and quantised to uint8 (a codec sees 8-bit video); odd sizes are padded by
    edge replication to the even size yuv420p needs and cropped back. Returns float32 ``(T, H, W, 3)`` in
    [0, 1] with the same frame count. Deterministic: the same frames and params give the same bytes.
    """
    _, height, width, _ = frames.shape
    u8 = np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    packets = encode_clip(u8, params, ctx.fps)
    decoded = decode_clip(packets, params.codec, len(u8))
    return decoded[:, :height, :width].astype(np.float32) * np.float32(1 / 255)


def encode_clip(frames_u8: np.ndarray, params: CodecParams, fps: float) -> list[bytes]:
    """Encode uint8 ``(T, H, W, 3)`` RGB frames; returns the packets' bytes in decode order.

    Frames with odd height or width are padded to even by repeating the last row/column. The stream's total
    size divided by ``T / fps`` is its measured bitrate.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if params.codec not in DECODERS:
        raise ValueError(f"unknown codec '{params.codec}'; choose from {sorted(DECODERS)}")
    frames_u8 = _pad_even(frames_u8)
    _, height, width, _ = frames_u8.shape
    rate = Fraction(fps).limit_denominator(1001)
    bitrate = effective_bitrate(params, height, width)

    enc = av.CodecContext.create(params.codec, "w")
    enc.width, enc.height = width, height
    enc.pix_fmt = "yuv420p"
    enc.time_base = 1 / rate
    enc.framerate = rate
    enc.bit_rate = bitrate
    enc.thread_count = 1  # x264's output depends on its thread count; one thread is the same everywhere
    options = {}
    if params.vbv_buffer_s > 0:
        options.update(maxrate=str(bitrate), bufsize=str(max(1, round(bitrate * params.vbv_buffer_s))))
    if params.codec == "libx264":
        # mbtree off: with it, identical input gave different bytes from run to run (x264's asm mbtree
        # code; asm=0 or mbtree=0 are both stable over 80 runs, mbtree=0 costs far less). On clips of
        # 8-77 frames mbtree's look-ahead gain is small anyway.
        options.update(preset=params.x264_preset, **{"x264-params": "mbtree=0"})
    enc.options = options

    packets: list[bytes] = []
    for index, image in enumerate(frames_u8):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        packets.extend(bytes(p) for p in enc.encode(frame))
    # Flush: libx264 holds frames back for B-frame reordering and lookahead.
    packets.extend(bytes(p) for p in enc.encode(None))
    return packets


def decode_clip(packets: list[bytes], codec: str, num_frames: int) -> np.ndarray:
    """Decode packets from :func:`encode_clip` to uint8 ``(T, H, W, 3)`` RGB in display order.

    Raises ``RuntimeError`` when the decoder does not return exactly ``num_frames`` frames.
    """
    dec = av.CodecContext.create(DECODERS[codec], "r")
    dec.thread_count = 1  # one core per worker: corpus building already runs a process per core
    frames = []
    for data in packets:
        frames.extend(dec.decode(_padded_packet(data)))
    frames.extend(dec.decode(None))
    if len(frames) != num_frames:
        raise RuntimeError(f"{codec} round trip returned {len(frames)} frames for {num_frames}")
    return np.stack([f.to_ndarray(format="rgb24") for f in frames])


def _padded_packet(data: bytes) -> av.Packet:
    """A packet holding a copy of ``data`` followed by FFmpeg's zeroed input padding.

    FFmpeg requires ``AV_INPUT_BUFFER_PADDING_SIZE`` readable bytes after a packet's data (its bitstream
    readers fetch whole words past the end). ``av.Packet(bytes)`` points at the Python buffer without that
    padding; we saw an MPEG-4 decode of identical bytes corrupt one frame in some runs and not in others.
    ``av.Packet(size)`` allocates the padding.
    """
    packet = av.Packet(len(data))
    packet.update(data)
    return packet


def _pad_even(frames_u8: np.ndarray) -> np.ndarray:
    """Pad ``(T, H, W, 3)`` to even H and W by edge replication (yuv420p halves the chroma planes)."""
    _, height, width, _ = frames_u8.shape
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return np.ascontiguousarray(frames_u8)
    return np.pad(frames_u8, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
