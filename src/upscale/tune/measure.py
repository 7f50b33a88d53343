"""The measurements of ``upscale tune``: short timed probes of one network on this machine.

Every probe goes through the real ``Engine`` (autocast, channels_last, stitching, the chosen backend)
on a synthetic textured image, one warm-up call, then the best of ``runs`` timed calls:

- window side W (``WINDOWS_PX``, those with a core of at least ``MIN_AUTO_CORE_PX``): one W x W image
  at a core of W less the context, i.e. exactly one window; its cost per megapixel of a large image is
  that time over the core's area (what each window adds to the output);
- the whole probe image (the largest window measured) in one pass, for reference;
- batch 2 at the winning window (two windows side by side in one forward pass);
- torch.compile on/off at the winning window (CPU only, not with ``quick``, skipped when the compile
  is estimated to take longer than ``COMPILE_LIMIT_S``);
- backend torch vs each of ``ALTERNATIVES`` at the winning window (CPU only: openvino where it
  imports, winograd for RRDBNet, SRVGGNetCompact, SPAN and SRResNet in fp32); where one wins there or trails by less
  than ``CURVE_MARGIN``, every window side again with it (without the big-network cap: its per-pixel
  cost grows differently with the window). The backend whose best window gives the fewer estimated seconds
  for ``REFERENCE_SHAPE`` is chosen (torch's estimate is its eager one).

The result keeps the whole table (seconds per window side, and what each side's first call added):
the engine plans each image from it, so a 512x512 photo may run as one window where a 1000x750 one
runs in tiles.

The window is chosen by the estimated seconds of a ``REFERENCE_SHAPE`` image (window count from
``upscale.tiling`` times the measured seconds per window), which weighs both the per-pixel cost and
the context every window recomputes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .. import errors, tiling, tuned
from ..backends import openvino_installed, winograd_supports
from ..device import NAMES
from ..engine import Engine, EngineOptions, RunStats, Workload
from ..engine.compiling import COMPILE_GAIN, compile_estimates
from ..engine.cost import default_window_px, memory_window_px
from ..engine.options import MIN_AUTO_CORE_PX
from ..model import Model

log = logging.getLogger(__name__)

WINDOWS_PX = (128, 192, 256, 384, 496, 512)
REFERENCE_SHAPE = (750, 1000)      # (height, width) of the image the choice and the time saved are for
BIG_NET_MACS_PER_PX = 2e6          # above this, windows stop at BIG_NET_MAX_WINDOW_PX (probes of seconds each)
BIG_NET_MAX_WINDOW_PX = 384
COMPILE_LIMIT_S = 120.0            # compile probes estimated to take longer are skipped
BATCH_GAIN_MIN = 0.03              # batch 2 must be this much faster per window to be chosen
CURVE_MARGIN = 0.25       # another backend up to this much slower at torch's window still gets its own curve
RUNS = 3


@dataclass
class Row:
    """One measured candidate: ``seconds`` per call; ``s_per_mp`` the seconds per megapixel it costs
    (per core area for a window, per image area for the whole image)."""

    candidate: str
    seconds: float
    s_per_mp: float
    window_px: int = 0
    batch: int = 1
    backend: str = "torch"
    compiled: bool = False
    chosen: bool = False


@dataclass
class TuneReport:
    key: dict[str, Any]
    label: str
    rows: list[Row]
    result: dict[str, Any]                  # what goes in the cache (see upscale.tuned)
    old: dict[str, Any]                     # the fallback constants' choices and their estimates
    reference: dict[str, Any]               # estimated seconds of REFERENCE_SHAPE: chosen vs old
    notes: list[str] = field(default_factory=list)


def textured(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A synthetic photo-like uint8 image: smooth gradients, stripes of several frequencies, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for c in range(channels):
        f = 0.02 + 0.05 * c
        plane = (0.5 + 0.25 * np.sin(x * f + y * f * 0.7) + 0.15 * np.cos(x * 0.31 - y * 0.17 * (c + 1))
                 + 0.1 * (x / max(width, 1) - y / max(height, 1)))
        planes.append(plane)
    img = np.stack(planes, axis=-1) + rng.normal(0, 0.05, (height, width, channels))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def best_seconds(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    """(seconds of the warm-up call, fewest seconds of ``runs`` timed calls after it)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, min(times)


def _run(engine: Engine, image: np.ndarray) -> Callable[[], Any]:
    return lambda: engine.upscale(image, stats=RunStats())


def reference_windows(engine: Engine, window_px: int, shape: tuple[int, int] = REFERENCE_SHAPE) -> int:
    """How many windows an image of ``shape`` needs at ``window_px`` (1 when it fits in one)."""
    model = engine.model
    context = tiling.padded_length(engine.overlap_px, model.size_multiple)
    core = 0 if window_px >= max(shape) else max(MIN_AUTO_CORE_PX, window_px - 2 * context)
    return tiling.plan_tiles(*shape, core, engine.overlap_px, model.size_multiple, model.scale,
                             margin_px=engine.margin_px).num_tiles


class Prober:
    """The probes of one network with one set of options (device, precision, threads fixed)."""

    def __init__(self, model: Model, base: EngineOptions, runs: int) -> None:
        self.model, self.runs = model, runs
        self.base = dataclasses.replace(base, compile="off", batch=1)
        self.engine = Engine(model, self.base)          # resolves device, dtype, threads; owns the cost
        self.context = tiling.padded_length(self.engine.overlap_px, model.size_multiple)

    def core(self, window_px: int) -> int:
        return window_px - 2 * self.context

    def window(self, window_px: int, *, batch: int = 1, **changes: Any) -> tuple[float, float]:
        """(warm-up seconds, best seconds) per window of side ``window_px`` (``batch`` windows side by
        side in one pass, the time divided among them)."""
        core = self.core(window_px)
        opts = dataclasses.replace(self.base, tile_px=core, batch=batch, **changes)
        width = window_px + (batch - 1) * core
        work = Workload(pixels=window_px * width, shape=(window_px, width)) if opts.compile == "on" else None
        engine = Engine(self.model, opts, work=work)
        first, best = best_seconds(_run(engine, textured(window_px, width, self.model.in_channels)), self.runs)
        return first / batch, best / batch

    def whole(self, side: int) -> float:
        engine = Engine(self.model, dataclasses.replace(self.base, tile_px=0))
        return best_seconds(_run(engine, textured(side, side, self.model.in_channels)), self.runs)[1]


def candidate_windows(prober: Prober, windows: tuple[int, ...] | None, *, cap_big: bool = True) -> list[int]:
    """The window sides to measure: ``windows``, else ``WINDOWS_PX`` (for a big network only up to
    ``BIG_NET_MAX_WINDOW_PX`` unless ``cap_big`` is off), those that fit the model and memory (one
    window at a time, as they are probed and as the engine runs them; the batch-2 probe checks its own)."""
    cost, engine = prober.engine.cost, prober.engine
    limit = memory_window_px(cost, engine.dtype, engine.device, 1)
    if windows is None:
        windows = WINDOWS_PX
        if cap_big and cost.macs_per_px > BIG_NET_MACS_PER_PX:
            windows = tuple(w for w in windows if w <= BIG_NET_MAX_WINDOW_PX)
    multiple = prober.model.size_multiple
    chosen = sorted({w for w in windows if w % multiple == 0 and prober.core(w) >= MIN_AUTO_CORE_PX and w <= limit})
    if not chosen:
        raise errors.UsageError(f"no window to measure: each must be a multiple of {multiple} with a core of at "
                                f"least {MIN_AUTO_CORE_PX} px beside {prober.context} px of context, and fit in "
                                f"memory ({limit} px)", params=("windows",))
    return chosen


def measure_windows(prober: Prober, windows: list[int], backend: str = "torch",
                    known: dict[int, tuple[float, float]] | None = None
                    ) -> tuple[list[Row], dict[int, float], dict[int, float]]:
    """One row per window (with ``backend``), plus the whole probe image for torch; (rows, seconds
    per window, seconds the first call added per window: OpenVINO's compile of that shape, a new
    shape's buffers). ``known``: windows already measured, {side: (first-call seconds, best
    seconds)}, not measured again."""
    rows, per_window, setup = [], {}, {}
    changes = {} if backend == "torch" else {"backend": backend}
    tag = "" if backend == "torch" else f" {backend}"
    for w in windows:
        first, seconds = (known or {}).get(w) or prober.window(w, **changes)
        per_window[w], setup[w] = seconds, max(0.0, first - seconds)
        rows.append(Row(f"window {w}{tag}", seconds, seconds / prober.core(w) ** 2 * 1e6, window_px=w,
                        backend=backend))
        log.info("tune: window %d%s: %.3f s (%.3f s/MP)", w, tag, seconds, rows[-1].s_per_mp)
    if backend == "torch":
        side = windows[-1]
        rows.append(Row(f"whole {side}x{side}", per_window[side], per_window[side] / side**2 * 1e6, window_px=side))
    return rows, per_window, setup


def pick_window(prober: Prober, per_window: dict[int, float]) -> tuple[int, float]:
    """(window, estimated seconds of REFERENCE_SHAPE) with the fewest estimated seconds."""
    estimates = {w: reference_windows(prober.engine, w) * s for w, s in per_window.items()}
    best = min(estimates, key=lambda w: (estimates[w], -w))
    return best, estimates[best]


def curve_wanted(other_s: float, torch_s: float) -> bool:
    """Whether another backend's own window curve is worth measuring, given its and torch's seconds at
    torch's chosen window: where it is faster there or within ``CURVE_MARGIN`` behind. Its cost per
    pixel grows differently with the window (OpenVINO f32's is flat on an AVX2 EPYC, where torch's rises
    39% from 128 to 384), so a window where it trails can hide a larger one where its plan wins."""
    return other_s < torch_s * (1 + CURVE_MARGIN)


def measure_batch(prober: Prober, window_px: int, batch1_s: float, notes: list[str]) -> tuple[Row | None, int]:
    """Batch 2 at ``window_px``: (its row, the batch chosen); (None, 1) with a note when two such
    windows do not fit in memory."""
    engine = prober.engine
    if memory_window_px(engine.cost, engine.dtype, engine.device, 2) < window_px:
        notes.append(f"batch 2: not measured (two {window_px}-px windows do not fit in memory)")
        return None, 1
    seconds = prober.window(window_px, batch=2)[1]
    row = Row(f"window {window_px} batch 2", seconds, seconds / prober.core(window_px) ** 2 * 1e6,
              window_px=window_px, batch=2)
    return row, 2 if seconds < batch1_s * (1 - BATCH_GAIN_MIN) else 1


def measure_compile(prober: Prober, window_px: int, batch: int, eager_s: float,
                    notes: list[str]) -> tuple[Row | None, dict[str, float] | None]:
    """torch.compile at ``window_px``: (its row, {"gain", "compile_s"}) or (None, None) with a note."""
    engine = prober.engine
    _, estimate = compile_estimates(engine.cost, engine.dtype, torch.get_num_threads(), 0)
    if estimate > COMPILE_LIMIT_S:
        notes.append(f"compile: skipped (estimated {estimate:.0f} s to compile, over {COMPILE_LIMIT_S:.0f} s)")
        return None, None
    try:
        first, seconds = prober.window(window_px, batch=batch, compile="on")
    except errors.UsageError as err:   # compile on raises one when torch.compile fails here
        notes.append(f"compile: skipped ({err.message})")
        return None, None
    compile_s = max(0.0, first - seconds)
    row = Row(f"window {window_px} batch {batch} compiled", seconds, seconds / prober.core(window_px) ** 2 * 1e6,
              window_px=window_px, batch=batch, compiled=True)
    return row, {"gain": round(1 - seconds / eager_s, 4), "compile_s": round(compile_s, 2)}


ALTERNATIVES = tuned.BACKENDS[1:]    # backends measured beside torch (``upscale.backends``)


def backend_unavailable(prober: Prober, wanted: str, name: str) -> str | None:
    """Why backend ``name`` (one of ``ALTERNATIVES``) cannot be measured here (None: it can), given the
    ``wanted`` backend ("auto" measures every one that can run)."""
    if wanted not in ("auto", name):
        return f"only backend {wanted} was asked for"
    if "backend" not in {f.name for f in dataclasses.fields(EngineOptions)}:
        return "this build's engine has no backend option yet"
    if prober.engine.device.type != "cpu":
        return f"{name} runs on the CPU only, not {prober.engine.device.type}"
    if name == "openvino" and not openvino_installed():
        return "openvino is not installed (pip install 'upscale[openvino]')"
    if name == "winograd" and not winograd_supports(prober.engine.model, precision_name(prober)):
        return (f"it computes RRDBNet, SRVGGNetCompact, SPAN and SRResNet in fp32 only, not "
                f"{prober.engine.model.arch} in {precision_name(prober)}")
    return None


def measure_backends(prober: Prober, window_px: int, wanted: str, notes: list[str],
                     strict: bool = True) -> dict[str, tuple[float, float]]:
    """Each alternative backend that can run here at ``window_px`` (batch 1): {name: (first-call
    seconds, best seconds)}; a note for each skipped or failed (``wanted`` itself: an error, unless
    not ``strict``)."""
    measured = {}
    for name in ALTERNATIVES:
        why = backend_unavailable(prober, wanted, name)
        if why is None:
            try:
                measured[name] = prober.window(window_px, backend=name)
            except errors.BackendError as exc:      # e.g. no C compiler for winograd's kernels
                if wanted == name and strict:
                    raise
                notes.append(f"backend {name}: failed ({exc})")
        elif wanted in ("auto", name):      # a required one that cannot run was refused before (check_measurable)
            notes.append(f"backend {name}: skipped ({why})")
    return measured


def check_measurable(prober: Prober, wanted: str, strict: bool = True) -> None:
    """A ``UsageError`` when ``strict`` and backend ``wanted`` (one of ``ALTERNATIVES``) cannot be
    measured here; called before anything is measured, and again where it would be."""
    why = backend_unavailable(prober, wanted, wanted) if wanted in ALTERNATIVES else None
    if why is not None and strict:
        raise errors.UsageError(f"backend {wanted} cannot be measured: {why}", params=("backend",))


def old_choices(prober: Prober, per_window: dict[int, float], reference_px: int,
                setup: dict[int, float]) -> tuple[dict[str, Any], Row | None]:
    """What the fallback constants pick for this network here, with their own estimates; and the row
    of the old window when it was not among the candidates (measured now, and added to ``per_window``
    and ``setup``)."""
    engine = prober.engine
    window = min(default_window_px(engine.model.arch), memory_window_px(engine.cost, engine.dtype, engine.device, 1))
    row = None
    if window not in per_window and prober.core(window) >= MIN_AUTO_CORE_PX:
        first, seconds = prober.window(window)
        per_window[window], setup[window] = seconds, max(0.0, first - seconds)
        row = Row(f"window {window} (default)", seconds, seconds / prober.core(window) ** 2 * 1e6, window_px=window)
    eager_s, compile_s = compile_estimates(engine.cost, engine.dtype, torch.get_num_threads(), reference_px)
    return {"window_px": window, "batch": 1, "backend": "torch",
            "compile": engine.device.type == "cpu" and eager_s * COMPILE_GAIN >= compile_s,
            "compile_gain": COMPILE_GAIN, "compile_s_estimate": round(compile_s, 1)}, row


def precision_name(prober: Prober) -> str:
    return NAMES[prober.engine.dtype]
