"""Tile geometry and streaming stitching, in numpy only (no torch, no devices, no models).

Layout (per axis, input pixels of the image padded to the model's size multiple):

- ``tile_px`` is the *core* of a window: the stride at which windows advance. Each window adds
  ``overlap_px`` of *context* on both sides of its core (as Real-ESRGAN's ``tile_pad``), so every window
  is ``tile_px + 2 * overlap_px`` px (both rounded up to the size multiple) and all windows have one
  shape and stack into batches. A window never reaches outside the image: at a border it slides
  inwards, its core taking the context it does not need there. Along an axis of length ``L`` that the
  window does not cover whole, ``n = ceil((L - 2 * overlap_px) / tile_px)`` windows are spread evenly
  from 0 to ``L - window``, so neighbours advance by at most ``tile_px`` and the pixels computed per
  image pixel stay below ``(tile_px + 2 * overlap_px) / tile_px`` per axis (plus at most one window).
  A small ``tile_px`` only costs more; it never reduces the context. An axis no longer than one
  window is one window over the whole axis.
- Blend weights live in output (upscaled) coordinates and are separable: ``w(y, x) = wy(y) * wx(x)``.
  Along an axis, a window's weight is 0 on the ``margin_px * scale`` output pixels next to an interior
  edge (context it only needed to compute its neighbours' pixels; ``margin_px <= overlap_px``), 1 in its
  core, and a raised-cosine cross-fade where it meets a neighbour: the fade spans everything the two
  windows share beyond both margins (``2 * (overlap_px - margin_px)`` px at least, plus the slack of the
  even spread), so it lies inside the context, unless windows are packed so densely that it would run
  into the next fade. Inside a fade one neighbour's weight is one minus the other's, so the weights of
  the windows covering a pixel always sum to 1. At the image borders the weight stays 1: a window there
  sees the same zero padding the untiled network sees.

Why this is exact, and seam-free where it cannot be exact:

- Exact: a pixel more than the receptive radius away from a window's interior edges is computed from
  the same inputs as in the untiled pass. With ``margin_px >= receptive radius`` every pixel with a
  non-zero weight is such a pixel, so the blend is a convex mix of identical values: tiled == untiled.
  The engine passes ``margin_px = min(overlap_px, receptive radius)``: exact whenever the context holds
  the receptive field, and the rest of the context is cross-faded.
- For large receptive fields (RRDBNet's is ~350 px) the engine's context is capped: a window's error
  grows towards its edges, and we never use its last ``margin_px`` pixels; what the neighbours share
  beyond that is cross-faded.

``BandStitcher`` accumulates weighted tiles into a float32 band that only spans the rows of one row of
windows, and converts each finished band straight into the preallocated output array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class Window:
    """One tile: its place in row-major order and its top-left corner in padded input pixels."""

    index: int
    row: int
    col: int
    y0: int
    x0: int


@dataclass(frozen=True)
class TilePlan:
    """Window positions (input px) and per-axis blend weights (output px) for one image."""

    height: int                     # padded input height (a multiple of ``multiple``)
    width: int
    tile_h: int                     # window shape, input px (core + context); the same for every window
    tile_w: int
    scale: int
    overlap_px: int                 # context on each side of a core, input px
    margin_px: int                  # context never used at an interior edge (weight 0), input px
    ys: tuple[int, ...]             # top edge of each row of windows
    xs: tuple[int, ...]             # left edge of each column of windows
    row_weights: tuple[np.ndarray, ...]   # per row of windows: (tile_h * scale,) float32
    col_weights: tuple[np.ndarray, ...]   # per column: (tile_w * scale,) float32

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def windows(self) -> Iterator[Window]:
        """All windows in row-major order, the order ``BandStitcher`` needs."""
        for r, y0 in enumerate(self.ys):
            for c, x0 in enumerate(self.xs):
                yield Window(r * len(self.xs) + c, r, c, y0, x0)


def padded_length(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple``."""
    return -(-length // multiple) * multiple


def window_px(tile_px: int, overlap_px: int, multiple: int = 1) -> int:
    """The side of a window for a core of ``tile_px`` and ``overlap_px`` of context on each side, both
    rounded up to ``multiple`` (0 when ``tile_px`` is 0: whole images)."""
    if tile_px == 0:
        return 0
    return padded_length(tile_px, multiple) + 2 * padded_length(overlap_px, multiple)


def plan_tiles(height: int, width: int, tile_px: int, overlap_px: int, multiple: int = 1, scale: int = 1,
               *, margin_px: int | None = None, fit: bool = True) -> TilePlan:
    """Plan windows over an image of ``height`` x ``width`` input pixels.

    ``tile_px`` is the core (stride) of each window (0 = one window over the whole image), any size
    >= 1; ``overlap_px`` the context added on each side of a core; ``margin_px`` (default
    ``overlap_px``, at most that) the context discarded at every interior window edge; ``multiple`` the
    model's size multiple; ``scale`` its upscaling factor (weights are in output pixels). The image is
    taken as padded (bottom/right) to a multiple of ``multiple``: ``plan.height``/``plan.width`` are the
    sizes the caller must feed. ``fit``: shrink the windows so their cores just cover the image (see
    ``_axis_layout``); the engine fits only where tiling is exact (context >= the receptive radius),
    because a full-size window's extra shared context is what hides the seams of a network whose
    receptive field exceeds its context (realesrgan-x4plus, 512x512, tiles of 128: 62.2 dB vs the
    untiled result unfitted, 52.2 dB fitted). Raises ValueError on negative or inconsistent arguments.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if tile_px < 0 or overlap_px < 0 or multiple < 1 or scale < 1:
        raise ValueError("tile_px and overlap_px must be >= 0, multiple and scale >= 1")
    margin = overlap_px if margin_px is None else margin_px
    if not 0 <= margin <= overlap_px:
        raise ValueError(f"margin_px must be between 0 and overlap_px ({overlap_px}), not {margin}")
    ph, pw = padded_length(height, multiple), padded_length(width, multiple)
    side = window_px(tile_px, overlap_px, multiple)
    tile_h, ys = _axis_layout(ph, side, tile_px, overlap_px, multiple, fit)
    tile_w, xs = _axis_layout(pw, side, tile_px, overlap_px, multiple, fit)
    return TilePlan(
        height=ph, width=pw, tile_h=tile_h, tile_w=tile_w, scale=scale, overlap_px=overlap_px,
        margin_px=margin, ys=ys, xs=xs,
        row_weights=_axis_weights(ys, tile_h, margin, scale),
        col_weights=_axis_weights(xs, tile_w, margin, scale),
    )


def _axis_layout(length: int, side: int, tile_px: int, overlap_px: int,
                 multiple: int, fit: bool) -> tuple[int, tuple[int, ...]]:
    """Window size and start positions along one axis (px, multiples of ``multiple``): as few windows
    as cores of ``tile_px`` need, each (with ``fit``) shrunk to the smallest side whose cores still cover
    the image in that many steps (at most ``side``), spread evenly from 0 to the end. Without the
    shrinking, a 512-px image in windows of 384 with 32 px of context computes 768 px per axis (2.25x
    the work in 2-D); fitted, 2 windows of 224 + 2 x 32 = 576 px."""
    size, count = axis_extent(length, side, tile_px, overlap_px, multiple, fit)
    if count == 1:
        return size, (0,)
    n_len, n_side = length // multiple, size // multiple
    return size, tuple(i * (n_len - n_side) // (count - 1) * multiple for i in range(count))


def axis_extent(length: int, side: int, tile_px: int, overlap_px: int, multiple: int,
                fit: bool) -> tuple[int, int]:
    """(window size, number of windows) along one axis of ``length`` padded px, as ``_axis_layout``
    lays them out, in constant time (planners compare many candidate plans without building them)."""
    if side == 0 or side >= length:
        return length, 1
    unit = multiple
    n_len, n_side = length // unit, side // unit
    n_core = padded_length(tile_px, unit) // unit
    n_context = padded_length(overlap_px, unit) // unit
    count = -(-(n_len - 2 * n_context) // n_core)     # >= 2, as side < length
    if fit:
        n_side = min(n_side, -(-(n_len - 2 * n_context) // count) + 2 * n_context)
    return n_side * unit, count


def plan_extent(height: int, width: int, tile_px: int, overlap_px: int, multiple: int = 1, *,
                fit: bool = True) -> tuple[int, int, int]:
    """(window height, window width, number of windows) of ``plan_tiles`` with these arguments,
    without computing positions or weights."""
    side = window_px(tile_px, overlap_px, multiple)
    th, rows = axis_extent(padded_length(height, multiple), side, tile_px, overlap_px, multiple, fit)
    tw, cols = axis_extent(padded_length(width, multiple), side, tile_px, overlap_px, multiple, fit)
    return th, tw, rows * cols


def _axis_weights(starts: tuple[int, ...], size: int, margin_px: int, scale: int) -> tuple[np.ndarray, ...]:
    """Per-window 1-D weights in output pixels: 0 in discarded margins, 1 in the core, and a cosine
    cross-fade between neighbours. The fade between windows i and i+1 is centred in what they share
    beyond both margins and, where windows are packed densely, narrowed so that it never meets the
    next fade: every output pixel then lies in at most one fade, and the weights sum to 1."""
    # fade k (between windows k and k+1): centre and half-width in output px
    lows = [(b + margin_px) * scale for b in starts[1:]]
    highs = [(a + size - margin_px) * scale for a in starts[:-1]]
    centres = [(lo + hi) // 2 for lo, hi in zip(lows, highs)]
    halves = [(hi - lo) // 2 for lo, hi in zip(lows, highs)]
    for k in range(len(centres)):
        if k > 0:
            halves[k] = min(halves[k], (centres[k] - centres[k - 1]) // 2)
        if k + 1 < len(centres):
            halves[k] = min(halves[k], (centres[k + 1] - centres[k]) // 2)
    out = []
    for i, start in enumerate(starts):
        w = np.ones(size * scale, dtype=np.float32)
        origin = start * scale
        if i > 0:   # fade in from window i-1
            lo, hi = centres[i - 1] - halves[i - 1] - origin, centres[i - 1] + halves[i - 1] - origin
            w[:lo] = 0.0
            w[lo:hi] = _fade(hi - lo)
        if i + 1 < len(starts):   # fade out into window i+1
            lo, hi = centres[i] - halves[i] - origin, centres[i] + halves[i] - origin
            w[lo:hi] = 1.0 - _fade(hi - lo)
            w[hi:] = 0.0
        out.append(w)
    return tuple(out)


def _fade(length: int) -> np.ndarray:
    """Raised-cosine ramp rising from ~0 to ~1 over ``length`` pixel centres (float32)."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)


class NumpyOps:
    """How ``BandStitcher`` does its arithmetic: the default, numpy arrays in host memory.

    A stitcher only asks its ops for these six things, so another array library can stand in
    (``upscale.engine`` passes torch ops that keep tiles and the band on the model's device and move
    each finished band to the host once, already in the output dtype)."""

    def zeros(self, shape: tuple[int, ...]):
        return np.zeros(shape, dtype=np.float32)

    def asarray(self, weights: np.ndarray):
        """A 1-D float32 weight vector as this library's array (where tiles live)."""
        return weights

    def outer(self, a, b):
        return np.outer(a, b)

    def accumulate(self, acc, tile, weight) -> None:
        """``acc += tile * weight`` for an (h, w, C) region and its (h, w) weight."""
        acc += tile * weight[:, :, None]

    def shift(self, arr, n: int) -> None:
        """Move rows [n:] of ``arr`` to the top and zero the rest (rows may overlap)."""
        keep = arr.shape[0] - n
        if keep > 0:
            arr[:keep] = arr[n:]
        arr[max(keep, 0):] = 0.0

    def store(self, band, dest: np.ndarray, *, own: bool) -> None:
        """Write the float ``band`` into the host array ``dest``, clamped to [0, 1] and rounded to
        nearest for integer dtypes. ``own``: the band may be overwritten (else it is copied first)."""
        _store(band if own else np.array(band, dtype=np.float32), dest)


class BandStitcher:
    """Blend tiles (given in row-major order) into ``out``, one horizontal band of rows at a time.

    ``out`` is the preallocated (H_out, W_out, C) result, uint8, uint16 or float32, with H_out and W_out
    at most the plan's padded size times the scale (the padding is cropped away here). Only one window
    row of float32 rows is held; each band is clamped to [0, 1], scaled, rounded and written as soon as
    no later window can touch it. The blend weights are normalised once, per axis, when the stitcher is
    made (they are separable and every row of windows has the same columns, so the sum of the weights
    at a pixel is the product of the per-axis sums): tiles are only multiplied and added. ``ops`` (default
    ``NumpyOps()``) says where the band lives and how it is written out; tiles must be arrays of that
    kind.
    """

    def __init__(self, plan: TilePlan, out: np.ndarray, ops=None) -> None:
        if out.ndim != 3 or out.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"out must be (H, W, C) uint8, uint16 or float32, not {out.shape} {out.dtype}")
        if out.shape[0] > plan.height * plan.scale or out.shape[1] > plan.width * plan.scale:
            raise ValueError(f"out {out.shape[:2]} is larger than the plan's {plan.height * plan.scale}x"
                             f"{plan.width * plan.scale}")
        self.plan = plan
        self.out = out
        self.ops = ops if ops is not None else NumpyOps()
        # one window over the whole image: nothing to blend, tiles go straight to ``out``
        self._single = plan.num_tiles == 1
        band_rows = 0 if self._single else plan.tile_h * plan.scale
        self._acc = self.ops.zeros((band_rows, plan.width * plan.scale, out.shape[2]))
        self._row_w = _normalised(plan.row_weights, plan.ys, plan.scale, self.ops)
        self._col_w = _normalised(plan.col_weights, plan.xs, plan.scale, self.ops)
        self._top = 0          # output row held in the accumulator's first row
        self._next = 0         # index of the window expected next
        self._count = plan.num_tiles

    @property
    def accumulator_rows(self) -> int:
        """Rows of float32 the stitcher holds (the band), whatever the image height; 0 for a
        single-window plan, whose output is written directly."""
        return self._acc.shape[0]

    def add(self, window: Window, tile) -> None:
        """Blend one tile's output, (tile_h * scale, tile_w * scale, C) float, into the band."""
        if window.index != self._next:
            raise ValueError(f"tiles must arrive in row-major order: expected {self._next}, got {window.index}")
        s = self.plan.scale
        th, tw = self.plan.tile_h * s, self.plan.tile_w * s
        if tuple(tile.shape) != (th, tw, self.out.shape[2]):
            raise ValueError(f"tile shape {tuple(tile.shape)} != {(th, tw, self.out.shape[2])}")
        if self._single:
            h, w = self.out.shape[:2]
            self.ops.store(tile[:h, :w], self.out, own=False)
            self._next = 1
            return
        y0 = window.y0 * s
        if window.col == 0 and y0 > self._top:
            self._flush(y0)
        r0, x0 = y0 - self._top, window.x0 * s
        weight = self.ops.outer(self._row_w[window.row], self._col_w[window.col])
        self.ops.accumulate(self._acc[r0:r0 + th, x0:x0 + tw], tile, weight)
        self._next += 1
        if self._next == self._count:
            self._flush(self.plan.height * s)

    def _flush(self, upto: int) -> None:
        """Write output rows [top, upto) and shift the accumulator so it starts at ``upto``."""
        rows = min(upto, self.out.shape[0]) - self._top
        if rows > 0:
            self.ops.store(self._acc[:rows, :self.out.shape[1]], self.out[self._top:self._top + rows], own=True)
        self.ops.shift(self._acc, upto - self._top)
        self._top = upto


def _normalised(weights: tuple[np.ndarray, ...], starts: tuple[int, ...], scale: int, ops) -> list:
    """Per-window 1-D weights divided by the sum of all windows' weights at each output pixel, as
    ``ops`` arrays."""
    total = np.zeros(starts[-1] * scale + len(weights[-1]), dtype=np.float64)
    for start, w in zip(starts, weights):
        total[start * scale:start * scale + len(w)] += w
    return [ops.asarray((w / np.maximum(total[start * scale:start * scale + len(w)], 1e-12)).astype(np.float32))
            for start, w in zip(starts, weights)]


def _store(band: np.ndarray, dest: np.ndarray) -> None:
    """Clamp a float band (in [0, 1] nominally) to [0, 1] and write it into ``dest``'s dtype, rounding
    to nearest for integers. ``band`` is overwritten."""
    if dest.dtype == np.float32:
        np.clip(band, 0.0, 1.0, out=dest)
        return
    peak = 255.0 if dest.dtype == np.uint8 else 65535.0
    np.multiply(band, peak, out=band)
    np.clip(band, 0.0, peak, out=band)
    np.rint(band, out=band)
    np.copyto(dest, band, casting="unsafe")
