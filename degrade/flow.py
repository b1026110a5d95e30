"""Flow-based degradation (SimpleGVR §4.2.1): the motion artifacts of base text-to-video models.

At low resolution, base T2V outputs show two motion-dependent artifacts: local blur along the motion and
colours of the previous frame bleeding into the current one. One op, ``flow``, reproduces both from a
single optical-flow computation per frame pair (``blend`` and ``blur`` switch the two stages):

1. **Flow.** DIS optical flow (OpenCV) from frame ``t`` to frame ``t-1``: ``flow[y, x] = (dx, dy)`` maps
   ``(x, y)`` in frame ``t`` to ``(x + dx, y + dy)`` in frame ``t-1``, in pixels per frame. Frame 0 has no
   previous frame: it gets no colour blending, and its blur uses the flow 1 → 0, which describes the same
   motion up to sign (a line kernel is symmetric). Only ``T-1`` flows are computed.
2. **Motion mask.** On a grid of ``mask_cell_px`` cells (each cell's flow: the mean of its central 2×2
   pixels; DIS flow is smooth at that scale): ``|flow| > motion_threshold``, opened (drops specks of flow
   noise) and closed (fills holes in moving objects). Its bilinear upsampling is the soft per-pixel mask:
   1 inside, fading to 0 over one cell at the edges.
3. **Colour blending** (``blend``). Per frame, one elliptical region per entry of ``ellipses`` (shapes fixed
   for the clip), centred on a random moving pixel. Inside it the current colour moves toward the previous
   frame's colour at the flow-corresponding position, Gaussian-sampled: the previous frame warped onto the
   current one by the flow (to the nearest pixel when ``sample_sigma >= 1.5``), then averaged with a
   Gaussian of ``sample_sigma`` px, so colours from around the corresponding point bleed in. Weight:
   ``blend_strength · (1 - r²)²`` (``r`` the elliptical radius: 1 at the centre, smoothly 0 at the
   boundary) times the soft motion mask; blended in RGB. Overlapping ellipses compound as if blended one
   after another: the weight is ``1 - Π_i (1 - m·w_i)``.
4. **Motion blur** (``blur``). Per ``block_size`` block, the mean flow (averaged with its moving
   neighbours, ``block_smoothing``) gives a direction and a length ``clip(length_scale · |v|, 1,
   max_length)``; blocks that do not move stay sharp. Lengths are quantised geometrically, directions into
   ``angle_bins``, at most ``max_kernels`` kinds per frame (isolated blocks join their neighbours). Each
   kind's line kernel blurs only the connected groups of blocks that use it; its per-pixel weight is its
   block indicator times the motion mask on the cell grid, upsampled bilinearly: one kernel fades into the
   next over one cell (no seams), and still pixels inside a moving block stay sharp. The result is
   ``Σ_k w_k·blur_k + (1 - Σ_k w_k)·frame``. ``length_scale`` reads as a camera's shutter fraction: 1
   smears over the whole displacement between frames.

Colours are taken from the input (undegraded) previous frame, and flows are computed on the input frames.
The paper gives none of these numbers; every default is ours (see :class:`FlowConfig`). DIS output is
deterministic for a given OpenCV build: flows were identical with ``cv2.setNumThreads`` 1, 2 and 8 for all
three presets, so the result does not depend on a worker's thread count.

Cost. The op is meant to cost little next to its own DIS flow (``benchmarks/flow_throughput.py``). Both
stages therefore work on boxes around what they change, never on whole frames: the blend on clusters of
nearby ellipse boxes shrunk to where the mask moves, the blur on one box per kernel kind and group of
blocks. Nearby boxes are merged when that costs fewer pixels than the fixed cost of another round of calls
(:data:`BLEND_CALL_PX`, :data:`BLUR_CALL_PX`); how boxes are grouped changes no output value by more than
1e-5 (float rounding, and ``cv2.blendLinear``'s 1e-5 in its denominator where a box's weight is zero).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from cascadevsr.degrade import base

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
MIN_SIDE = 16  # DIS rejects frames much smaller than its patches and pyramid
DIS_MIN_ROWS = 32  # shorter frames are padded for DIS (see ``_flows_to_previous``)
# cv2.filter2D switches to a whole-image DFT once kernel rows·cols reaches 130 (50 without SSE3) and then
# costs ~20× more; longer line kernels are split into short factors that stay on the direct, sparse path.
MAX_DIRECT_KERNEL_AREA = 121
# The fixed cost of the calls that process one box (slicing, weights, sampling or filtering, blending), in
# pixels of the box's own per-pixel work: nearby boxes are merged when the pixels added cost less. Measured
# on one core at 320×180 and 640×360: ~25 µs per blend cluster at ~10 ns per pixel, ~20 µs per blur job at
# ~5 ns per pixel. They only decide how work is grouped (see the module docstring).
BLEND_CALL_PX = 2500
BLUR_CALL_PX = 4000
NEAREST_SAMPLING_SIGMA = 1.5  # px: from this ``sample_sigma`` up, the colour sampling warps to whole pixels


@dataclass(frozen=True)
class FlowConfig:
    """Settings of the ``flow`` op. Ranges are ``[mild, severe]`` and strength-scaled (``degrade/base.py``).

    The paper publishes none of these values; all are our choices, for LR frames of roughly 256–512 px on
    the short side (the resolution base T2V models generate at).

    Stages:
      ``blend``, ``blur``: run colour blending / motion blur. Both use the same flow.
    Flow and motion mask:
      ``dis_preset``: ``ultrafast`` | ``fast`` | ``medium``. ``fast``: ~4 ms per 640×360 pair on one core,
      sub-pixel accurate on textured motion; ``medium`` is ~6× slower.
      ``motion_threshold``: px/frame above which a cell or block counts as moving. 1 px is above DIS's
      noise on still texture (0.1–0.5 px) and below motion a viewer calls movement.
      ``mask_cell_px``: resolution of the motion mask (cells of the flow) — 4 px.
      ``mask_open_cells``, ``mask_close_cells``: diameters (in cells) of the elliptical elements that open
      (remove moving specks under ~12 px) and close (fill holes under ~20 px) the mask — 3 and 5; ≤1 skips.
    Colour blending (centres on moving pixels):
      ``num_ellipses``: ellipses per frame (integers) — [1, 6].
      ``ellipse_size``: semi-major axis as a fraction of the frame's short side — [0.04, 0.12] (15–46 px
      at 384 px, the size of a hand or a face there).
      ``ellipse_aspect``: semi-major / semi-minor — [1, 2.5]; orientation uniform in [0°, 180°).
      ``blend_strength``: weight of the previous frame's colour at an ellipse centre — [0, 0.75] (0 = none;
      above ~0.75 the previous frame's structure, not just its hue, shows through).
      ``sample_sigma``: px, sigma of the Gaussian that samples the previous frame's colour — [1, 3].
    Motion blur:
      ``block_size``: px per block of the motion field, a multiple of ``mask_cell_px`` — 16 (two DIS
      patches: stable means that still follow object boundaries).
      ``block_smoothing``: blocks averaged (over moving blocks only) before a kernel is chosen — 3 (3×3);
      1 = off. Damps DIS noise so neighbouring blocks share kernels.
      ``length_scale``: blur length per px/frame of motion — [0, 1] (shutter fraction; 0 = no blur).
      ``max_length``: px cap on the blur length — 24.
      ``angle_bins``: kernel directions over 180° — 12 (15° apart).
      ``length_steps_per_octave``: kernel lengths per doubling — 2 (2, 2.8, 4, 5.7, 8, … px).
      ``max_kernels``: distinct kernels per frame; rarer ones are replaced by the nearest kept one — 4.
      Each kernel costs a pass over the blocks that use it; 4 covers a moving object and its background
      motion, and bounds the cost for frames where everything moves (see benchmarks/flow_throughput.py).
    """

    blend: bool = True
    blur: bool = True
    dis_preset: str = "fast"
    motion_threshold: float = 1.0
    mask_cell_px: int = 4
    mask_open_cells: int = 3
    mask_close_cells: int = 5
    num_ellipses: list[int] = field(default_factory=lambda: [1, 6])
    ellipse_size: list[float] = field(default_factory=lambda: [0.04, 0.12])
    ellipse_aspect: list[float] = field(default_factory=lambda: [1.0, 2.5])
    blend_strength: list[float] = field(default_factory=lambda: [0.0, 0.75])
    sample_sigma: list[float] = field(default_factory=lambda: [1.0, 3.0])
    block_size: int = 16
    block_smoothing: int = 3
    length_scale: list[float] = field(default_factory=lambda: [0.0, 1.0])
    max_length: float = 24.0
    angle_bins: int = 12
    length_steps_per_octave: int = 2
    max_kernels: int = 4

    def __post_init__(self) -> None:
        problems = []
        if self.dis_preset not in DIS_PRESETS:
            problems.append(f"dis_preset: unknown '{self.dis_preset}'; choose from {sorted(DIS_PRESETS)}")
        if self.motion_threshold < 0:
            problems.append(f"motion_threshold: must be >= 0 px/frame, got {self.motion_threshold}")
        if self.mask_cell_px < 1:
            problems.append(f"mask_cell_px: must be >= 1 px, got {self.mask_cell_px}")
        for name in ("mask_open_cells", "mask_close_cells", "block_smoothing", "angle_bins",
                     "length_steps_per_octave", "max_kernels"):
            if getattr(self, name) < (0 if name.startswith("mask") else 1):
                problems.append(f"{name}: must be >= {0 if name.startswith('mask') else 1}, "
                                f"got {getattr(self, name)}")
        ranges = {
            "num_ellipses": (0, None), "ellipse_size": (1e-6, 1.0), "ellipse_aspect": (1.0, None),
            "blend_strength": (0.0, 1.0), "sample_sigma": (0.0, None), "length_scale": (0.0, None),
        }
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if len(value) != 2 or min(value) < lo or (hi is not None and max(value) > hi):
                bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                problems.append(f"{name}: expected [mild, severe] {bound}, got {value}")
        if self.block_size < 2 or self.mask_cell_px < 1 or self.block_size % self.mask_cell_px:
            problems.append(f"block_size: must be a multiple (>= 2) of mask_cell_px={self.mask_cell_px}, "
                            f"got {self.block_size}")
        if not 1.0 <= self.max_length <= 128.0:
            problems.append(f"max_length: must be in [1, 128] px, got {self.max_length}")
        if problems:
            raise ValueError("invalid flow config: " + "; ".join(problems))


@dataclass(frozen=True)
class FlowParams:
    """One resolved draw of the ``flow`` op; every field ``apply_flow`` reads is here.

    ``seed`` drives the per-frame ellipse centres. ``ellipses``: ``[semi_major, semi_minor, angle_deg]`` per
    ellipse drawn in every frame (axes as fractions of the short side; angle from +x toward +y, i.e.
    clockwise on screen). ``blend_strength``, ``sample_sigma`` (px) and ``length_scale`` are the clip's
    draws; the other fields copy the config (see :class:`FlowConfig`).
    """

    seed: int
    blend: bool
    blur: bool
    ellipses: list[list[float]]
    blend_strength: float
    sample_sigma: float
    length_scale: float
    dis_preset: str = "fast"
    motion_threshold: float = 1.0
    mask_cell_px: int = 4
    mask_open_cells: int = 3
    mask_close_cells: int = 5
    block_size: int = 16
    block_smoothing: int = 3
    max_length: float = 24.0
    angle_bins: int = 12
    length_steps_per_octave: int = 2
    max_kernels: int = 4


def sample_flow(rng: np.random.Generator, cfg: FlowConfig, strength: float, num_frames: int) -> FlowParams:
    """Draw one clip's flow-degradation settings (ellipse shapes, blend and blur strengths, a seed)."""
    del num_frames  # settings hold for the whole clip; ellipse centres change per frame (from the seed)
    lo, hi = base.scaled_range(cfg.num_ellipses, strength)
    count = int(rng.integers(round(min(lo, hi)), round(max(lo, hi)) + 1))
    ellipses = []
    for _ in range(count):
        semi_major = base.uniform(rng, cfg.ellipse_size, strength)
        aspect = base.uniform(rng, cfg.ellipse_aspect, strength)
        ellipses.append([semi_major, semi_major / aspect, float(rng.uniform(0.0, 180.0))])
    return FlowParams(
        seed=base.new_seed(rng),
        blend=bool(cfg.blend),
        blur=bool(cfg.blur),
        ellipses=ellipses,
        blend_strength=base.uniform(rng, cfg.blend_strength, strength),
        sample_sigma=base.uniform(rng, cfg.sample_sigma, strength),
        length_scale=base.uniform(rng, cfg.length_scale, strength),
        dis_preset=cfg.dis_preset,
        motion_threshold=float(cfg.motion_threshold),
        mask_cell_px=int(cfg.mask_cell_px),
        mask_open_cells=int(cfg.mask_open_cells),
        mask_close_cells=int(cfg.mask_close_cells),
        block_size=int(cfg.block_size),
        block_smoothing=int(cfg.block_smoothing),
        max_length=float(cfg.max_length),
        angle_bins=int(cfg.angle_bins),
        length_steps_per_octave=int(cfg.length_steps_per_octave),
        max_kernels=int(cfg.max_kernels),
    )


def apply_flow(frames: np.ndarray, params: FlowParams, ctx: base.Context) -> np.ndarray:
    """Blend previous-frame colours into moving regions, then blur them along their motion.

    ``frames``: float32 ``(T, H, W, 3)`` RGB in [0, 1] (other values pass through; the flow is computed on
    the clipped frames). Returns float32 ``(T, H, W, 3)``; every output pixel is a convex combination of
    input pixels. Deterministic given ``frames`` and ``params``. ``ctx`` is unused: sizes are relative to
    the frames themselves.
    """
    del ctx
    frames = _check_frames(frames)
    do_blend = params.blend and params.blend_strength > 0 and len(params.ellipses) > 0
    do_blur = params.blur and params.length_scale > 0
    if len(frames) < 2 or not (do_blend or do_blur):
        return frames.copy()
    out = np.empty_like(frames)
    height, width = frames.shape[1:3]
    templates = _ellipse_templates(params, min(height, width)) if do_blend else []
    # Every frame's centre draws at once (row t for frame t): they depend on the seed and t only, and one
    # generator per clip costs less than one per frame.
    draws = np.random.default_rng(params.seed).random((len(frames), len(templates), 3), dtype=np.float64)
    grid = np.dstack(np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)))
    for t, flow in _flows_to_previous(frames, params.dis_preset):
        out[t] = frames[t]  # copied just before it is worked on, while it is still in cache
        field = _MotionField.measure(flow, params)
        if do_blend and t > 0:
            _blend_previous_colours(out[t], frames[t - 1], field, templates, params, draws[t], grid)
        if do_blur:
            _motion_blur(out[t], field, params)
    return out


def motion_magnitude(frames: np.ndarray, dis_preset: str = "fast") -> np.ndarray:
    """Per-pixel motion in px/frame: ``|flow|`` with the ``flow`` op's DIS settings.

    ``frames``: ``(T, H, W, 3)`` RGB, float in [0, 1] or uint8. Returns float32 ``(T, H, W)``; frame 0
    uses the flow 1 → 0 (as the op does); a single frame gives zeros.
    """
    if np.asarray(frames).dtype == np.uint8:
        frames = np.asarray(frames, np.float32) * np.float32(1 / 255)
    frames = _check_frames(frames)
    magnitude = np.zeros(frames.shape[:3], np.float32)
    for t, flow in _flows_to_previous(frames, dis_preset):
        magnitude[t] = cv2.magnitude(flow[..., 0], flow[..., 1])
    return magnitude


# --- flow and motion field ---------------------------------------------------------------------------


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if len(frames) > 1 and min(frames.shape[1:3]) < MIN_SIDE:
        raise ValueError(f"flow needs frames of at least {MIN_SIDE}×{MIN_SIDE} px, got {frames.shape[1:3]}")
    return frames


def _grey_u8(frame: np.ndarray) -> np.ndarray:
    """float RGB ``(H, W, 3)`` → uint8 luma ``(H, W)``, the input DIS takes."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.convertScaleAbs(grey, alpha=255.0)  # rounds and saturates to [0, 255]


def _flows_to_previous(frames: np.ndarray, preset: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(t, flow)`` for every frame: ``flow`` float32 ``(H, W, 2)`` maps frame t to frame t-1.

    Frame 0 gets the flow 1 → 0, computed once and yielded again for frame 1.
    """
    if preset not in DIS_PRESETS:
        raise ValueError(f"unknown dis_preset '{preset}'; choose from {sorted(DIS_PRESETS)}")
    if len(frames) < 2:
        return
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])  # one per call: nothing shared across threads
    height = frames.shape[1]
    # DIS (OpenCV 5.0, presets ultrafast and fast) crashes the process on frames under 32 rows that are 80 px
    # or wider: such frames get their last row repeated up to 32 rows, and the flow is cropped back.
    pad = DIS_MIN_ROWS - height if height < DIS_MIN_ROWS else 0

    def grey(frame: np.ndarray) -> np.ndarray:
        luma = _grey_u8(frame)
        return cv2.copyMakeBorder(luma, 0, pad, 0, 0, cv2.BORDER_REPLICATE) if pad else luma

    previous = grey(frames[0])
    for t in range(1, len(frames)):
        current = grey(frames[t])
        flow = dis.calc(current, previous, None)
        if pad:
            flow = np.ascontiguousarray(flow[:height])
        if t == 1:
            yield 0, flow
        yield t, flow
        previous = current


@functools.lru_cache(maxsize=16)
def _disc(diameter: int) -> np.ndarray:
    """The elliptical structuring element of ``diameter`` cells (cached: it is the same every frame)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))


@dataclass(frozen=True)
class _MotionField:
    """One frame's flow with its cell and block averages and the cleaned motion mask.

    ``flow``: float32 ``(H, W, 2)``. ``blocks``: float32 ``(rows, cols, 2)`` mean flow per block (the
    frame is edge-padded to whole blocks). ``mask``: float32 ``(rows·k, cols·k)`` in {0, 1} per cell,
    ``k = block_size / mask_cell_px``; ``moving``: the same as uint8.
    """

    flow: np.ndarray
    blocks: np.ndarray
    mask: np.ndarray
    moving: np.ndarray
    cell: int

    @classmethod
    def measure(cls, flow: np.ndarray, params: FlowParams) -> _MotionField:
        height, width = flow.shape[:2]
        size, cell = params.block_size, params.mask_cell_px
        per = size // cell
        # Pixels are padded to whole cells and cells to whole blocks, both by repeating the edge: padding
        # the small cell grid instead of the flow saves a copy of the flow whenever the frame size is a
        # multiple of the cell (as it usually is).
        cell_rows, cell_cols = -(-height // cell), -(-width // cell)
        padded = flow
        if cell_rows * cell != height or cell_cols * cell != width:
            padded = cv2.copyMakeBorder(flow, 0, cell_rows * cell - height, 0, cell_cols * cell - width,
                                        cv2.BORDER_REPLICATE)
        # Each cell's flow is the mean of its central 2×2 pixels (INTER_LINEAR at an integer factor): DIS
        # interpolates its flow from 8-px patches 4 px apart, so it is smooth within a cell, and this reads
        # a quarter of the flow that a full mean (INTER_AREA) reads, at a quarter of the cost.
        cells = cv2.resize(padded, (cell_cols, cell_rows), interpolation=cv2.INTER_LINEAR)
        rows, cols = -(-cell_rows // per), -(-cell_cols // per)
        if rows * per != cell_rows or cols * per != cell_cols:
            cells = cv2.copyMakeBorder(cells, 0, rows * per - cell_rows, 0, cols * per - cell_cols,
                                       cv2.BORDER_REPLICATE)
        blocks = cv2.resize(cells, (cols, rows), interpolation=cv2.INTER_AREA)  # exact means of cells
        mask = np.greater(cv2.magnitude(*cv2.split(cells)), params.motion_threshold).view(np.uint8)
        for diameter, op in ((params.mask_open_cells, cv2.MORPH_OPEN),
                             (params.mask_close_cells, cv2.MORPH_CLOSE)):
            if diameter > 1:
                mask = cv2.morphologyEx(mask, op, _disc(diameter))
        return cls(flow=flow, blocks=blocks, mask=mask.astype(np.float32), moving=mask, cell=cell)

    def moving_part(self, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int, int, int] | None:
        """The part of the pixel box where the soft mask is not zero, as a box, or None.

        Bilinear upsampling spreads a moving cell over half a cell around it.
        """
        cell, half = self.cell, (self.cell + 1) // 2
        r0, c0 = max((y0 - half) // cell, 0), max((x0 - half) // cell, 0)
        left, top, span_x, span_y = cv2.boundingRect(self.moving[r0 : -(-(y1 + half) // cell),
                                                                 c0 : -(-(x1 + half) // cell)])
        if not span_x:
            return None
        return (max(y0, (r0 + top) * cell - half), min(y1, (r0 + top + span_y) * cell + half),
                max(x0, (c0 + left) * cell - half), min(x1, (c0 + left + span_x) * cell + half))

    def soft_mask(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """float32 ``(y1-y0, x1-x0)``: the mask upsampled bilinearly, cropped to the pixel box.

        Equal to cropping a whole-frame upsampling: the cell sub-grid keeps one cell of context per side.
        """
        cell = self.cell
        rows, cols = self.mask.shape
        r0, r1 = max(y0 // cell - 1, 0), min(-(-y1 // cell) + 1, rows)
        c0, c1 = max(x0 // cell - 1, 0), min(-(-x1 // cell) + 1, cols)
        up = cv2.resize(self.mask[r0:r1, c0:c1], ((c1 - c0) * cell, (r1 - r0) * cell),
                        interpolation=cv2.INTER_LINEAR)
        return up[y0 - r0 * cell : y1 - r0 * cell, x0 - c0 * cell : x1 - c0 * cell]


# --- colour blending ---------------------------------------------------------------------------------


def _ellipse_templates(params: FlowParams, short_side: int) -> list[np.ndarray]:
    """Per ellipse, float32 ``(2·hy + 1, 2·hx + 1)``: ``blend_strength · (1 - r²)²`` around the centre."""
    templates = []
    for semi_major, semi_minor, angle_deg in params.ellipses:
        a, b = max(semi_major * short_side, 0.5), max(semi_minor * short_side, 0.5)
        theta = math.radians(angle_deg)
        cos, sin = math.cos(theta), math.sin(theta)
        half_x = math.ceil(math.sqrt((a * cos) ** 2 + (b * sin) ** 2))
        half_y = math.ceil(math.sqrt((a * sin) ** 2 + (b * cos) ** 2))
        dy = np.arange(-half_y, half_y + 1, dtype=np.float32)[:, None]
        dx = np.arange(-half_x, half_x + 1, dtype=np.float32)[None, :]
        r2 = np.square((dx * cos + dy * sin) / a) + np.square((dy * cos - dx * sin) / b)
        templates.append(np.square(np.clip(1.0 - r2, 0.0, 1.0)) * np.float32(params.blend_strength))
    return templates


def _blend_previous_colours(frame: np.ndarray, previous: np.ndarray, field: _MotionField,
                            templates: list[np.ndarray], params: FlowParams, draws: np.ndarray,
                            grid: np.ndarray) -> None:
    """Blend Gaussian-sampled colours of ``previous`` into elliptical moving regions of ``frame``, in place.

    ``frame``, ``previous``: float32 ``(H, W, 3)``; ``field`` holds the flow from ``frame`` to
    ``previous``; ``draws``: ``(len(templates), 3)`` uniforms in [0, 1) placing each centre (which moving
    cell, then the pixel inside it); ``grid``: float32 ``(H, W, 2)`` pixel coordinates ``(x, y)``.

    Every ellipse pulls toward the same sampled colour ``S``, so blending them one after another is one
    blend with the combined weight ``W = 1 - Π_i (1 - m·w_i)`` (``m`` the soft mask, ``w_i`` the
    templates): ``S + (frame - S)·Π_i (1 - m·w_i)``. Ellipses are processed in clusters of nearby boxes
    (:func:`_merge_boxes`), each with one sampling and one blend, so the cost follows the area they cover.
    """
    moving = cv2.findNonZero(field.moving)  # moving cells (x, y) in row-major order, or None
    if moving is None:
        return
    moving = moving.reshape(-1, 2)  # OpenCV 4 returns (n, 1, 2), OpenCV 5 (n, 2)
    height, width = frame.shape[:2]
    cell = field.cell
    picks = moving[(draws[:, 0] * len(moving)).astype(np.int64)].tolist()
    offsets = (draws[:, 1:] * cell).astype(np.int64).tolist()
    boxes = []
    for template, (col, row), (oy, ox) in zip(templates, picks, offsets, strict=True):
        cy, cx = min(row * cell + oy, height - 1), min(col * cell + ox, width - 1)
        half_y, half_x = template.shape[0] // 2, template.shape[1] // 2
        boxes.append((cy - half_y, cy + half_y + 1, cx - half_x, cx + half_x + 1))  # may leave the frame
    margin = _gaussian_margin(params.sample_sigma)
    clipped = [(max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)) for y0, y1, x0, x1 in boxes]
    for members, cluster in _merge_boxes(clipped, margin, BLEND_CALL_PX, disjoint=False):
        box = field.moving_part(*cluster)  # where m > 0: nothing changes outside
        if box is None:
            continue
        y0, y1, x0, x1 = box
        soft = field.soft_mask(y0, y1, x0, x1)
        keep = np.ones((y1 - y0, x1 - x0), np.float32)  # Π_i (1 - m·w_i): the current colour's share
        for i in members:
            by0, by1 = max(clipped[i][0], y0), min(clipped[i][1], y1)
            bx0, bx1 = max(clipped[i][2], x0), min(clipped[i][3], x1)
            if by0 >= by1 or bx0 >= bx1:
                continue
            ty, tx = by0 - boxes[i][0], bx0 - boxes[i][2]  # the box's offset in the template
            weight = templates[i][ty : ty + by1 - by0, tx : tx + bx1 - bx0] * soft[by0 - y0 : by1 - y0,
                                                                                 bx0 - x0 : bx1 - x0]
            part = keep[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
            part -= part * weight
        sampled = _sample_previous(previous, field.flow, grid, box, margin, params.sample_sigma)
        region = frame[y0:y1, x0:x1]
        cv2.blendLinear(sampled, region, 1.0 - keep, keep, dst=region)  # writes through to ``frame``


def _gaussian_margin(sigma: float) -> int:
    """Radius (px) of the sampling Gaussian: cut at 2.5σ (1.2% of its mass; OpenCV's default is 4σ), which
    halves its cost."""
    return math.ceil(2.5 * sigma) if sigma > 0 else 0


def _sample_previous(previous: np.ndarray, flow: np.ndarray, grid: np.ndarray, box: tuple[int, int, int, int],
                     margin: int, sigma: float) -> np.ndarray:
    """Previous-frame colours at the flow-corresponding positions of ``box``, Gaussian-averaged.

    The previous frame is warped onto the current one over ``box`` plus ``margin`` px, then blurred with
    ``sigma`` px: each pixel gets a Gaussian-weighted mean of the colours corresponding to its neighbours
    (from ``σ =`` :data:`NEAREST_SAMPLING_SIGMA` up, the colour at the nearest whole pixel to each).
    A pixel's value does not depend on the box it is computed in (the margin is the Gaussian's radius).
    """
    y0, y1, x0, x1 = box
    height, width = flow.shape[:2]
    ey0, ey1 = max(y0 - margin, 0), min(y1 + margin, height)
    ex0, ex1 = max(x0 - margin, 0), min(x1 + margin, width)
    positions = flow[ey0:ey1, ex0:ex1] + grid[ey0:ey1, ex0:ex1]  # (h, w, 2): where each pixel was
    # Under a Gaussian of σ >= 1.5 px, rounding the positions to whole pixels (at most half a pixel, < σ/3)
    # changes the sampled colours little (>= 49 dB on the changed pixels of the benchmark clips, at most 9/255)
    # and the nearest-pixel remap costs a third of the bilinear one.
    interpolation = cv2.INTER_NEAREST if sigma >= NEAREST_SAMPLING_SIGMA else cv2.INTER_LINEAR
    warped = cv2.remap(previous, positions, None, interpolation, borderMode=cv2.BORDER_REPLICATE)
    if margin:
        warped = cv2.GaussianBlur(warped, (2 * margin + 1, 2 * margin + 1), sigma)
    return warped[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]


def _merge_boxes(boxes: list[tuple[int, int, int, int]], margin: int, call_cost: int,
                 disjoint: bool) -> list[tuple[list[int], tuple[int, int, int, int]]]:
    """Cluster boxes ``(y0, y1, x0, x1)`` that are cheaper to process as one: ``(member indices, union)``.

    Each box is processed with ``margin`` extra on every side, and each cluster costs as much as
    ``call_cost`` more of that area (the fixed cost of its calls). Two clusters merge when their union
    costs no more than both apart, and always when they overlap if ``disjoint``. Deterministic: the result
    depends on the boxes and their order only.
    """
    clusters: list[list] = []  # [members, y0, y1, x0, x1, cost]
    for index, (y0, y1, x0, x1) in enumerate(boxes):
        members, cost = [index], (y1 - y0 + 2 * margin) * (x1 - x0 + 2 * margin)
        j = 0
        while j < len(clusters):
            other, oy0, oy1, ox0, ox1, other_cost = clusters[j]
            uy0, uy1 = (y0 if y0 < oy0 else oy0), (y1 if y1 > oy1 else oy1)
            ux0, ux1 = (x0 if x0 < ox0 else ox0), (x1 if x1 > ox1 else ox1)
            union_cost = (uy1 - uy0 + 2 * margin) * (ux1 - ux0 + 2 * margin)
            if union_cost <= cost + other_cost + call_cost or (
                    disjoint and y0 < oy1 and oy0 < y1 and x0 < ox1 and ox0 < x1):
                members, y0, y1, x0, x1, cost = other + members, uy0, uy1, ux0, ux1, union_cost
                del clusters[j]
                j = 0  # the grown box may now merge with clusters it passed before
            else:
                j += 1
        clusters.append([members, y0, y1, x0, x1, cost])
    return [(sorted(c[0]), (c[1], c[2], c[3], c[4])) for c in clusters]


# --- motion blur -------------------------------------------------------------------------------------


def _motion_blur(frame: np.ndarray, field: _MotionField, params: FlowParams) -> None:
    """Blur ``frame`` (float32 ``(H, W, 3)``, in place) along the block-wise motion of ``field``.

    A kind's weight ``w_k`` is its block indicator times the motion mask, both on the mask's cell grid,
    upsampled bilinearly: it fades over one cell where the kind changes or the motion stops. One job per
    kind and box: the connected groups of the kind's blocks plus the half cell their weight reaches past
    them, nearby boxes merged (:func:`_merge_boxes`; boxes of one kind never overlap, so each pixel takes
    a kind's weight once). All blurs are computed from the unchanged frame first, then merged kind by kind
    with ``cv2.blendLinear`` under a running normalisation: the result is ``Σ_k w_k·blur_k + (1 - Σ_k
    w_k)·frame``.
    """
    height, width = frame.shape[:2]
    ids, kinds = _block_kernel_ids(field, params)
    if not kinds:
        return
    cell, size = field.cell, params.block_size
    cell_rows, cell_cols = field.mask.shape
    # Each cell's kind index, -1 where the cleaned mask is still: the weights of every job come from it.
    cell_ids = cv2.resize(ids, (cell_cols, cell_rows), interpolation=cv2.INTER_NEAREST)
    cell_ids[field.moving == 0] = -1
    half = (cell + 1) // 2  # how far past its cells a kind's weight reaches (bilinear upsampling)
    jobs = []
    for k, kind in enumerate(kinds):
        level, angle_bin = divmod(kind, params.angle_bins)
        kernels = _line_kernels(level, angle_bin, params.angle_bins, params.length_steps_per_octave)
        reach = _reach(kernels)
        _, _, stats, _ = cv2.connectedComponentsWithStats((ids == k).astype(np.uint8), connectivity=8)
        # The group's pixels and the half cell its weight fades over, within the frame.
        groups = [(max(top * size - half, 0), min((top + span_y) * size + half, height),
                   max(left * size - half, 0), min((left + span_x) * size + half, width))
                  for left, top, span_x, span_y, _ in stats[1:].tolist()]
        for _, (y0, y1, x0, x1) in _merge_boxes(groups, max(reach), BLUR_CALL_PX, disjoint=True):
            # Bilinear upsampling of a cell sub-grid equals cropping the whole-grid upsampling where the
            # sub-grid holds every cell the box's pixels interpolate from (at the grid's border both
            # replicate the edge cell).
            r0, r1 = max(y0 // cell - 1, 0), min((y1 - 1) // cell + 2, cell_rows)
            c0, c1 = max(x0 // cell - 1, 0), min((x1 - 1) // cell + 2, cell_cols)
            around = cell_ids[r0:r1, c0:c1]
            members = (around == k).astype(np.float32)
            if not members.any():
                continue  # the cleaned motion mask says still: nothing to blur
            crop = (slice(y0 - r0 * cell, y1 - r0 * cell), slice(x0 - c0 * cell, x1 - c0 * cell))
            grid_size = ((c1 - c0) * cell, (r1 - r0) * cell)
            weight = cv2.resize(members, grid_size, interpolation=cv2.INTER_LINEAR)[crop]
            # Kind k is merged after kinds 0..k-1: the weight still on the frame is 1 - Σ_{j>=k} w_j, the
            # upsampling of the cells that are still or of an earlier kind.
            rest = cv2.resize((around < k).astype(np.float32), grid_size, interpolation=cv2.INTER_LINEAR)[crop]
            jobs.append(((y0, y1, x0, x1), _line_blur(frame, (y0, y1, x0, x1), kernels, reach), weight, rest))
    for (y0, y1, x0, x1), blurred, weight, rest in jobs:
        target = frame[y0:y1, x0:x1]
        # (w·blur + S·current) / (w + S) with S the weight merged so far; blendLinear adds 1e-5 to the
        # denominator (a relative error ≤ 1e-5).
        cv2.blendLinear(blurred, target, weight, rest, dst=target)


def _line_blur(image: np.ndarray, box: tuple[int, int, int, int], kernels: tuple[np.ndarray, ...],
               reach: tuple[int, int]) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` filtered by ``kernels`` in turn (``reach``: their total reach, rows and
    columns), the frame's edges replicated.

    Each pass is computed on the box plus the reach of the passes still to come only.
    """
    y0, y1, x0, x1 = box
    height, width = image.shape[:2]
    ry, rx = reach
    oy, ox = max(y0 - ry, 0), max(x0 - rx, 0)  # origin of ``out`` in ``image``
    out = image[oy : min(y1 + ry, height), ox : min(x1 + rx, width)]
    for kernel in kernels:
        out = cv2.filter2D(out, -1, kernel, borderType=cv2.BORDER_REPLICATE)
        ry, rx = ry - kernel.shape[0] // 2, rx - kernel.shape[1] // 2
        ny, nx = max(y0 - ry, 0), max(x0 - rx, 0)
        out = out[ny - oy : min(y1 + ry, height) - oy, nx - ox : min(x1 + rx, width) - ox]
        oy, ox = ny, nx
    return out


def _reach(kernels: tuple[np.ndarray, ...]) -> tuple[int, int]:
    """How far (px; rows, columns) applying ``kernels`` in turn reads from a pixel."""
    return sum(kernel.shape[0] // 2 for kernel in kernels), sum(kernel.shape[1] // 2 for kernel in kernels)


def _block_kernel_ids(field: _MotionField, params: FlowParams) -> tuple[np.ndarray, list[int]]:
    """``(index, kinds)``: each block's line kernel as an index into ``kinds`` (-1 for none), and the kinds'
    ids ``level · angle_bins + angle_bin``, commonest first.

    Blocks at or below the motion threshold, or whose quantised length is under 2 px, get none. Moving
    blocks take the mean vector of their moving neighbours (``block_smoothing``). When more than
    ``max_kernels`` ids occur, the rarer ones become the nearest kept id (distance in octaves of length and
    in 22.5° steps of direction), and isolated blocks join their neighbours: both bound the work per frame.
    """
    bx, by = cv2.split(field.blocks)
    speed = cv2.magnitude(bx, by)
    moving = speed > params.motion_threshold
    steps, bins = params.length_steps_per_octave, params.angle_bins
    edges = _level_edges(steps, params.max_length)
    # A mean of vectors is no longer than the longest: if that one stays under 2 px, no block blurs.
    if not moving.any() or len(edges) < steps or params.length_scale * float(speed.max()) < edges[steps - 1]:
        return np.full(moving.shape, -1, np.int32), []
    count: float | np.ndarray = 1.0
    if params.block_smoothing > 1:
        window = (params.block_smoothing, params.block_smoothing)
        weight = moving.astype(np.float32)
        # (x·w, y·w, w) summed over the window in one pass; a moving block counts itself, so w > 0 there.
        total = cv2.blur(cv2.merge((bx * weight, by * weight, weight)), window, borderType=cv2.BORDER_REPLICATE)
        bx, by, count = cv2.split(total)
        count = np.maximum(count, 1e-6)
    # The mean vector's direction does not depend on the division by the count; its length does.
    speed, angle = cv2.cartToPolar(bx, by, angleInDegrees=True)  # angle within ~0.3°, in [0°, 360°)
    # rint(steps · log2(clip(length, 1, max_length))) as a table look-up.
    level = np.searchsorted(edges, speed * (params.length_scale / count))
    # A line kernel is symmetric, so directions are taken modulo 180° (360° is 2·bins bins).
    angle_bin = np.rint(angle * (bins / 180.0)).astype(np.int64) % bins
    ids = np.where(moving & (level >= steps), level * bins + angle_bin, -1)
    counts = np.bincount(ids.ravel() + 1)[1:]
    order = np.argsort(-counts, kind="stable")[: params.max_kernels].tolist()  # most blocks first, ties by id
    kept = tuple(kind for kind in order if counts[kind])
    if not kept:
        return np.full(moving.shape, -1, np.int32), []
    index = _nearest_kept(kept, counts.size, bins, steps)
    return _absorb_isolated(index[ids + 1], len(kept)), list(kept)


@functools.lru_cache(maxsize=256)
def _nearest_kept(kept: tuple[int, ...], num_ids: int, bins: int, steps: int) -> np.ndarray:
    """int ``(num_ids + 1,)``: at ``id + 1``, the index in ``kept`` of the kept id nearest to ``id`` (distance in
    octaves of length and in 22.5° steps of direction); -1 at 0, for "no kernel".

    Cached: the kept ids mostly repeat from frame to frame of a clip.
    """
    ids = np.arange(num_ids)[:, None]
    targets = np.asarray(kept)[None, :]
    d_level = (ids // bins - targets // bins) / steps
    d_angle = np.abs(ids % bins - targets % bins)
    d_angle = np.minimum(d_angle, bins - d_angle) * (180.0 / bins) / 22.5
    table = np.concatenate(([-1], np.argmin(d_level**2 + d_angle**2, axis=1))).astype(np.int32)
    table.flags.writeable = False  # shared by every caller of the cache
    return table


@functools.lru_cache(maxsize=16)
def _level_edges(steps: int, max_length: float) -> np.ndarray:
    """Lengths (px) where the quantised level steps up: level ``l`` covers ``[2^((l-½)/steps),
    2^((l+½)/steps))``, the top level also every length above ``max_length``."""
    top = round(steps * math.log2(max_length))
    return 2.0 ** ((np.arange(1, top + 1) - 0.5) / steps)


def _absorb_isolated(index: np.ndarray, kinds: int) -> np.ndarray:
    """Give a moving block that shares its kind with none of its 8 neighbours the commonest neighbouring kind.

    ``index``: int ``(rows, cols)``, kind index in ``[0, kinds)`` or -1. Such blocks are mostly DIS noise at
    object boundaries; each would otherwise cost a job of its own. Only kinds held by at least two
    neighbours are taken (ties go to the lower index, the commoner kind); static blocks (-1) neither change
    nor spread.
    """
    rows, cols = index.shape
    onehot = (index[..., None] == np.arange(kinds)).astype(np.float32)
    # Per block and kind: how many of the 3×3 blocks around it (itself included) hold that kind.
    around = cv2.boxFilter(onehot, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    around = around.reshape(rows, cols, kinds)
    own = (around * onehot).sum(axis=-1)
    isolated = (index >= 0) & (own < 1.5)
    if not isolated.any():
        return index
    votes = around.max(axis=-1)
    return np.where(isolated & (votes >= 2), around.argmax(axis=-1), index).astype(np.int32)

@functools.lru_cache(maxsize=1024)
def _line_kernels(level: int, angle_bin: int, angle_bins: int, steps: int) -> tuple[np.ndarray, ...]:
    """Kernels whose successive application is a centred box blur along a line.

    The line has length ``2 ** (level / steps)`` px and direction ``angle_bin · 180° / angle_bins``. A
    kernel larger than :data:`MAX_DIRECT_KERNEL_AREA` is split as box(L) = box(L/2) ∗ {two taps at ±L/4},
    recursively, so every factor stays on ``filter2D``'s direct, sparse path.
    """
    length = 2.0 ** (level / steps)
    theta = angle_bin * math.pi / angle_bins
    direction = (math.cos(theta), math.sin(theta))
    taps: list[np.ndarray] = []
    while True:
        kernel = _splat(direction, _box_positions(length))
        if kernel.size <= MAX_DIRECT_KERNEL_AREA:
            break
        taps.append(_splat(direction, np.array([-length / 4, length / 4])))
        length /= 2
    return (kernel, *taps)


def _box_positions(length: float) -> np.ndarray:
    """Offsets along the line sampling a box of ``length`` px, at most a quarter pixel apart."""
    count = max(2, math.ceil(4 * length))
    return (np.arange(count) + 0.5) * (length / count) - length / 2


def _splat(direction: tuple[float, float], offsets: np.ndarray) -> np.ndarray:
    """Equal-weight points at ``offsets`` along ``direction``, splatted bilinearly into an odd-sized kernel.

    Returns float32 ``(2·hy + 1, 2·hx + 1)`` summing to 1, centred on the origin.
    """
    # Rounding keeps axis-aligned lines exactly on the axis (cos 90° is 6e-17, not 0).
    xs, ys = np.round(offsets * direction[0], 9), np.round(offsets * direction[1], 9)
    half_x, half_y = math.ceil(np.abs(xs).max()), math.ceil(np.abs(ys).max())
    xs, ys = xs + half_x, ys + half_y
    fx, fy = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    wx, wy = xs - fx, ys - fy
    kernel = np.zeros((2 * half_y + 1, 2 * half_x + 1), np.float64)
    for oy, weight_y in ((0, 1 - wy), (1, wy)):
        for ox, weight_x in ((0, 1 - wx), (1, wx)):
            # Where a weight is 0 the neighbour may lie outside the kernel: clamp the index, add nothing.
            rows, cols = np.minimum(fy + oy, 2 * half_y), np.minimum(fx + ox, 2 * half_x)
            np.add.at(kernel, (rows, cols), weight_y * weight_x)
    return (kernel / kernel.sum()).astype(np.float32)
