"""What a caller asks of an engine: ``EngineOptions`` (validated on construction, errors naming the
parameter) and ``Workload`` (what will go through it), with the documented defaults."""

from __future__ import annotations

import numbers

from dataclasses import dataclass

from .. import errors, tuned
from ..device import DEVICES, PRECISIONS

COMPILE_MODES = ("auto", "on", "off")
BACKENDS = ("auto", *tuned.BACKENDS)   # see ``upscale.backends``

# Default tile = "auto": the window ``upscale tune`` measured fastest on the running machine
# (``upscale.tune``, read by ``cost.fitting_window_px``). When it has no entry, these FALLBACK constants:
# a *window* side (core + context), the fastest measured for the model's family on this project's CPU (docs/perf.md, ``benchmarks/speed_core.py --sweep``:
# whole-image seconds per window size), reduced where the memory available could not hold one batch of
# its activations; the core is that window less the context on both sides, and images no larger than
# one window run whole. RRDBNet x4plus, 512x512, bf16, 2 threads: window 192 41.2 s, 256 26.0 s,
# 384 20.8 s, whole (512) 22.9 s -- its 64-channel layers at 4x resolution get slower per pixel as
# windows grow, so mid-sized windows beat one pass. default-x4 (compact 48x12), 768x768: 192 0.87 s,
# 256 0.74 s, 384 0.80 s, 512 0.63 s, whole 1.01 s. The compact cap is 496, not 512: a 64-channel bf16
# activation of a 512 px window is 33.5 MB, just over glibc's 32 MiB mmap ceiling, so every layer's
# output would be a fresh mmap (page faults on every pass); realesr-animevideov3 (64 ch, PReLU) took
# 1.27 s per 512 px window against 0.59 s at 496.
DEFAULT_TILE_PX: int | str = "auto"
BEST_TILE_PX = {"compact": 496}      # window side by family; the others get the fallback (measured best or
                                     # within 12%: rrdbnet, srresnet, srcnn, tiny; docs/perf.md)
BEST_TILE_FALLBACK_PX = 384
MIN_AUTO_CORE_PX = 64           # "auto" never picks a core smaller than this
DEFAULT_OVERLAP_PX = 8          # smallest default context: used when the model's receptive radius is smaller
# Default context = the model's receptive radius (exact tiling) capped here. Measured with the real
# realesrgan-x4plus weights (RRDBNet 23 blocks, radius ~350 px) on a 256x256 BSD200 crop, fp32, window
# 192 (the old geometry, which discarded the overlap at each edge as the new one does): overlap 8 ->
# 41.3 dB vs untiled, 16 -> 44.9 dB, 32 -> 57.1 dB.
AUTO_OVERLAP_MAX_PX = 32
DEFAULT_BATCH = 1
MEMORY_FRACTION = 0.5           # share of available memory "auto" lets one batch's activations use

TILE_HELP = ("tile_px is the core of each window (the stride, input px); overlap_px of context is added "
             "on every side (default: the model's receptive radius, 8 to 32 px), so a window is "
             "tile_px + 2 x overlap_px, a pixel costs at most ((tile_px + 2 x overlap_px) / tile_px)^2 "
             "passes, and a small tile only costs time, never seams; 0 = whole image, auto = per image, the "
             "plan of the fewest seconds by what upscale tune measured here (else the family's fallback window; on "
             "backend winograd one window of the whole image where it fits in memory)")


@dataclass(frozen=True)
class Workload:
    """What a caller plans to run through an engine: ``pixels``, the input pixels of all images (for
    ``compile="auto"``), and ``shape``, the (height, width) every image has, when they all have the same
    one (a compiled engine then compiles the window shape of that size)."""

    pixels: int = 0
    shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model.

    ``tile_px``: the core of each window, i.e. the stride at which windows advance (input px, any whole
    number >= 1), 0 = the whole image in one pass, "auto" (default) = per image, the plan of the fewest
    estimated seconds from the seconds per window side ``upscale tune`` measured on this machine
    (``Engine.estimate_s``), else the family's fallback window (``BEST_TILE_PX``) less the context,
    and the whole image when that is no larger (on backend winograd, the fewest pixels that fit in
    memory: ``cost.largest_window``); no side larger than the memory available can hold.
    ``overlap_px``: context added on each side of every core (None: the model's receptive radius
    within [8, 32] px), so a window is
    ``tile_px + 2 * overlap_px`` px and a pixel is computed at most ``((tile_px + 2 * overlap_px) /
    tile_px)^2`` times; neighbouring windows cross-fade inside the context, a small tile never reduces
    the context (it only costs time), and tiled == untiled exactly once the context reaches
    ``Model.receptive_radius``. ``batch``: windows per forward pass; ``threads``: torch intra-op threads
    (None = all cores); ``device``/``precision``: see ``upscale.device``; ``compile``: auto/on/off (see
    ``upscale.engine.compiling``); ``backend``: what computes the windows, auto/torch/openvino/winograd
    (see ``upscale.backends``: auto is torch unless the tuner measured another faster for this model here).
    """

    device: str = "auto"
    precision: str = "auto"
    tile_px: int | str = DEFAULT_TILE_PX
    overlap_px: int | None = None
    batch: int = DEFAULT_BATCH
    threads: int | None = None
    compile: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("compile", self.compile, COMPILE_MODES)
        _choice("backend", self.backend, BACKENDS)
        if self.tile_px != "auto" and not _whole(self.tile_px, 0):
            raise errors.UsageError(f"tile_px must be a whole number of pixels >= 0 or 'auto', not {self.tile_px!r}",
                                    params=("tile_px",))
        if self.overlap_px is not None and not _whole(self.overlap_px, 0):
            raise errors.UsageError(f"overlap_px must be a whole number of pixels >= 0, not {self.overlap_px!r}",
                                    params=("overlap_px",))
        if not _whole(self.batch, 1, MAX_COUNT):
            raise errors.UsageError(f"batch must be a whole number from 1 to {MAX_COUNT}, not {self.batch!r}",
                                    params=("batch",))
        if self.threads is not None and not _whole(self.threads, 1, MAX_COUNT):
            raise errors.UsageError(f"threads must be a whole number from 1 to {MAX_COUNT}, not {self.threads!r}",
                                    params=("threads",))
        for name in ("tile_px", "overlap_px", "batch", "threads"):    # numpy's integers, as plain ints
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and type(value) is not int:
                object.__setattr__(self, name, int(value))


MAX_COUNT = 4096    # tiles per pass, threads: far beyond any machine, short of an overflow in torch


def _whole(value: object, least: int, most: int | None = None) -> bool:
    """An integer (numpy's too; not a bool) within [least, most]."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least
            and (most is None or value <= most))


def _choice(param: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise errors.UsageError(f"{param} must be one of {', '.join(allowed)}, not {value!r}", params=(param,))
