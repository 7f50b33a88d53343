"""The run loop: ``Engine`` prepares a network once; ``Engine.upscale`` checks the input and the
output's size, plans windows (``upscale.tiling``), converts each band of rows of the input to float
once, stacks windows into batches (NHWC memory, so the batch is channels_last without a copy), runs
them under autocast (or through another backend, OpenVINO or winograd, ``upscale.backends``, which
computes the same windows) and streams the outputs into the result through ``tiling.BandStitcher``."""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .. import errors, tiling
from ..backends import choose_backend
from ..device import NAMES, available_memory_bytes, resolve_device, synchronize
from ..model import Model
from .compiling import compiled_module, uses_compiled, want_compile
from .cost import (activation_bytes, fitting_window_px, largest_window, measured_windows,
                   memory_window_px, probe_cost, whole_window)
from .fits import check_output_fits
from .options import AUTO_OVERLAP_MAX_PX, DEFAULT_OVERLAP_PX, MIN_AUTO_CORE_PX, EngineOptions, Workload
from .precision import resolve_dtype
from .runners import Runners
from .stitch_ops import TorchStitchOps, to_float

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class RunStats:
    """Figures of ``Engine.upscale`` calls. Pass one in to have it filled; the counters add up, so one
    record can follow several calls (an image and its alpha); the descriptive fields are the last call's."""

    forward_s: float = 0.0        # seconds in forward passes (device synchronised)
    stitch_s: float = 0.0         # seconds blending tiles into the output
    total_s: float = 0.0          # seconds of the whole call
    tiles: int = 0                # windows run through the model
    batches: int = 0              # forward passes
    tile_shape: tuple[int, int] | None = None   # window (height, width), input px
    device: str = ""
    precision: str = ""           # "fp32", "bf16" or "fp16"
    compiled: bool = False        # whether the windows went through the compiled graph
    backend: str = ""             # what computed the windows: "torch", "openvino" or "winograd"


class Engine:
    """A network prepared once for ``options``; ``upscale`` runs images through it.

    ``work``: what the caller plans to run (``Workload``); used only when compiling, to judge whether
    it pays off (``compile="auto"``) and to choose the window shape to compile.
    """

    def __init__(self, model: Model, options: EngineOptions | None = None, *,
                 work: Workload | None = None) -> None:
        model = model.inference_form()      # e.g. SPAN's trained branches collapsed once, not per call
        self.model = model
        self.options = options or EngineOptions()
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        self.device = resolve_device(self.options.device)
        threads = torch.get_num_threads()
        self.dtype = resolve_dtype(self.options.precision, self.device, model, threads)
        self.cost = probe_cost(model)
        self.backend = choose_backend(self.options.backend, model, self.device.type, NAMES[self.dtype], threads,
                                      self.options.compile)
        # the other backends' window computers: the chosen one made now (OpenVINO converts, winograd
        # transforms the weights), others when ``auto`` first picks them for an image
        self.runners = Runners(model, NAMES[self.dtype], threads)
        self.runners.get(self.backend)
        work = work or Workload()
        self.compiled = self.backend == "torch" and want_compile(self.options.compile, self.device, self.cost,
                                                               self.dtype, work.pixels)
        # ``auto`` plans each image over every backend measured here (``runners``), unless torch compiles
        self._per_image = self.options.backend == "auto" and self.device.type == "cpu" and not self.compiled
        # the one (height, width) window shape compiled (None: whole images, one graph per image size)
        self.compiled_shape: tuple[int, int] | None = None
        self._compiled_module: nn.Module | None = None
        self._compile_pending = False
        self._said_depth = False     # whether the 16-bit note (``_note_depth``) was given
        if self.compiled:
            self._prepare_compile(work.shape)
        self._note_cost()
        log.debug("engine: %s, %s, %d threads, backend %s, compile %s", self.device, NAMES[self.dtype],
                  threads, self.backend, "on" if self.compiled else "off")

    @property
    def openvino(self) -> Any | None:
        """The OpenVINO windows, where that backend has run or was chosen (else None)."""
        return self.runners.made("openvino")

    @property
    def winograd(self) -> Any | None:
        """The winograd windows, where that backend has run or was chosen (else None)."""
        return self.runners.made("winograd")

    @functools.cached_property
    def module(self) -> nn.Module:
        """The eager torch module, channels_last on the device: a copy made on first use, so a run on
        another backend never copies weights it does not use (67 MB for x4plus)."""
        module = copy.deepcopy(self.model.module).eval().to(self.device)
        return module.to(memory_format=torch.channels_last)

    # -- geometry --
    @property
    def overlap_px(self) -> int:
        """The context in force: as given, or the model's receptive radius within [8, 32] px."""
        if self.options.overlap_px is not None:
            return self.options.overlap_px
        return max(DEFAULT_OVERLAP_PX, min(self.model.receptive_radius, AUTO_OVERLAP_MAX_PX))

    @property
    def margin_px(self) -> int:
        """Context discarded at interior window edges: all of it, or just the receptive radius when the
        context holds more (exact tiling; the rest is cross-faded)."""
        return min(self.overlap_px, self.model.receptive_radius)

    @property
    def fits_windows(self) -> bool:
        """Whether windows are fitted to the image (``tiling.plan_tiles(fit=...)``): only where the
        context covers the receptive radius, so tiling is exact either way."""
        return self.overlap_px >= self.model.receptive_radius

    def tile_px_for(self, height: int, width: int) -> int:
        """The core (stride) used for an image of this size (0 = whole image; resolves ``"auto"``:
        the cheapest plan by what ``upscale tune`` measured here, else the fallback window)."""
        return self._choice(height, width)[1]

    def backend_for(self, height: int, width: int) -> str:
        """The backend that computes an image of this size: the engine's, or under ``auto`` the one
        whose measured plan is cheapest for it (``runners``)."""
        return self._choice(height, width)[0]

    def expected_s(self, height: int, width: int) -> float | None:
        """The estimated seconds of the model part of an image of this size, in the plan ``--tile auto``
        picks, by what ``upscale tune`` measured here; None where nothing was measured or the tile was
        given."""
        return self._choice(height, width)[2]

    def _choice(self, height: int, width: int) -> tuple[str, int, float | None]:
        """(backend, core, estimated seconds or None) for an image of this size: with ``tile_px`` auto,
        the measured (backend, window side) of the fewest estimated seconds, over this engine's backend
        or, under ``backend="auto"``, every backend measured here; else the given tile, or the
        fallback window, on the engine's backend (one of flat cost: the fewest pixels that fit in memory)."""
        tile = self.options.tile_px
        if tile != "auto":
            return self.backend, int(tile), None
        best: tuple[str, int, float | None] | None = None
        for backend in self.runners.choosable() if self._per_image else [self.backend]:
            table = self._planning_table(height, width, backend)
            if table:
                estimates = self.estimate_s(height, width, table, backend)
                side = min(estimates, key=lambda s: (estimates[s], -s))
                if best is None or estimates[side] < best[2]:
                    best = (backend, self._core_of(side, height, width), estimates[side])
        if best is not None:
            return best
        if self.runners.flat_cost(self.backend):    # nothing measured: fewest pixels (``cost.largest_window``)
            window = self._fewest_pixels_window(self.backend, height, width)
        else:
            window = fitting_window_px(self.cost, self.model.arch, self.dtype, self.device, self.options.batch)
        return self.backend, self._core_of(window, height, width), None

    def _planning_table(self, height: int, width: int, backend: str) -> dict[int, tuple[float, float]] | None:
        """What ``--tile auto`` plans an image of this size from on ``backend``: the measured window
        sides (and one window a little beyond them, ``_with_whole_image``), or None where nothing was
        measured."""
        table = measured_windows(self.cost, self.dtype, self.device, self.options.batch, backend)
        return self._with_whole_image(table, height, width, backend) if table else None

    def _fewest_pixels_window(self, backend: str, height: int, width: int) -> int:
        """The window side of the fewest computed pixels that fit in memory on ``backend``."""
        return largest_window(self.cost, self.dtype, self.device, self.options.batch, height, width,
                              functools.partial(self.runners.extra_bytes, backend))

    def _core_of(self, window: int, height: int, width: int) -> int:
        """The core of windows of side ``window`` (0 when the image fits in one)."""
        if window >= max(height, width):
            return 0
        context = tiling.padded_length(self.overlap_px, self.model.size_multiple)
        return max(MIN_AUTO_CORE_PX, window - 2 * context)

    def _with_whole_image(self, table: dict[int, tuple[float, float]], height: int, width: int,
                          backend: str) -> dict[int, tuple[float, float]]:
        """``table`` plus, for an image a little larger than every measured window that fits in memory
        as one, that one window, estimated from the measured sides (``cost.whole_window``). On a
        backend whose cost per computed pixel does not grow with the window (``Runners.flat_cost``),
        any larger image that fits in memory as one window, estimated the same way."""
        multiple = self.model.size_multiple
        side = -(-max(height, width) // multiple) * multiple
        if self.runners.flat_cost(backend):
            fits, reach = self._fewest_pixels_window(backend, height, width) >= max(height, width), math.inf
        else:
            fits, reach = side <= memory_window_px(self.cost, self.dtype, self.device, self.options.batch), None
        extra = whole_window(table, side, reach) if fits else None
        return table if extra is None else {**table, side: extra}

    def estimate_s(self, height: int, width: int, table: dict[int, tuple[float, float]],
                   backend: str | None = None) -> dict[int, float]:
        """Estimated seconds of the model part of an image of this size for each measured window side
        (``table``: side -> (seconds per window, first-call seconds)): the pixels its plan computes at
        that side's measured cost per pixel (so an image that fits in one window, or fitted windows,
        count their own area), plus the first call's setup where another backend is cold (OpenVINO:
        a shape compiled neither in this process nor, through its model cache, an earlier one;
        winograd: its runner not yet made in this process)."""
        estimates = {}
        for side, (seconds, setup) in table.items():
            core = self._core_of(side, height, width)
            th, tw, count = tiling.plan_extent(height, width, core, self.overlap_px, self.model.size_multiple,
                                               fit=self.fits_windows)
            warm = self.runners.is_warm(backend or self.backend, (self.options.batch, th, tw, self.model.in_channels))
            estimates[side] = count * th * tw * seconds / side**2 + (0.0 if warm else setup)
        return estimates

    def plan_for(self, height: int, width: int) -> tiling.TilePlan:
        """The windows and blend weights for an image of this size."""
        return self._plan(height, width, self.tile_px_for(height, width))

    def _plan(self, height: int, width: int, core: int) -> tiling.TilePlan:
        model = self.model
        return tiling.plan_tiles(height, width, core, self.overlap_px, model.size_multiple, model.scale,
                                 margin_px=self.margin_px, fit=self.fits_windows)

    # -- preparation --
    def _prepare_compile(self, image_shape: tuple[int, int] | None) -> None:
        """Wrap the module for torch.compile and choose the window shape it serves. Compiling itself
        happens on the first batch of that shape (no separate dummy pass, whose compute would be thrown
        away: for RRDBNet that doubled the time to the first output); if it fails there,
        ``compile="auto"`` falls back to the eager module and ``compile="on"`` raises a UsageError."""
        if self.options.tile_px == 0:
            self.compiled_shape = None
        elif image_shape:
            plan = self.plan_for(*image_shape)
            self.compiled_shape = (plan.tile_h, plan.tile_w)
        else:   # the full window, as an image larger than any window gets
            side = tiling.window_px(self.tile_px_for(1 << 30, 1 << 30), self.overlap_px, self.model.size_multiple)
            self.compiled_shape = (side, side) if side else None
        self._compiled_module = compiled_module(self.module, self.model.arch)
        self._compile_pending = True

    def _note_cost(self) -> None:
        tile = self.options.tile_px
        if isinstance(tile, int) and tile > 0:
            factor = (tiling.window_px(tile, self.overlap_px, self.model.size_multiple)
                      / tiling.padded_length(tile, self.model.size_multiple)) ** 2
            if factor > 4:
                log.info("tile_px %d with %d px of context on each side computes each pixel up to ~%.0f times",
                         tile, self.overlap_px, factor, extra={"params": ("tile_px",)})

    # -- running --
    def upscale(self, pixels: np.ndarray, progress: Progress | None = None,
                stats: RunStats | None = None) -> np.ndarray:
        """(H, W, C) uint8/uint16/float32 in [0, 1] -> (H*s, W*s, C_out) of the same dtype.

        ``progress(done_tiles, total_tiles)`` is called after each batch. ``stats``, when given, has
        this call's figures added to it (``RunStats``). An output too large for the memory available is
        an ``errors.ResourceError`` before anything is allocated.
        """
        start = time.perf_counter()
        self._check_input(pixels)
        self._note_depth(pixels)
        h, w = pixels.shape[:2]
        s = self.model.scale
        check_output_fits(h, w, self.model.out_channels, s, pixels.dtype)
        backend, core, _ = self._choice(h, w)         # one estimate per image: backend and plan together
        plan = self._plan(h, w, core)
        out = np.empty((h * s, w * s, self.model.out_channels), dtype=pixels.dtype)
        # tiles stay where the model ran (the GPU's memory on CUDA) until blended; each finished band
        # reaches the host once, already clamped and in the output dtype
        stitcher = tiling.BandStitcher(plan, out, TorchStitchOps(self.device))
        compiled = self.compiled and uses_compiled(self.compiled_shape, (plan.tile_h, plan.tile_w))
        # another backend's runner is made the first time it is chosen: here, so that its setup (a
        # conversion, a build) is not counted in the windows' forward seconds
        self.runners.get(backend)
        self._check_activations(plan, compiled, backend)
        try:
            forward_s, stitch_s, batches = self._run_windows(_pad(pixels, plan.height, plan.width), plan,
                                                             stitcher, compiled, progress, backend)
        except (MemoryError, RuntimeError) as err:     # torch's allocators say so in a RuntimeError
            if not _out_of_memory(err):
                raise
            raise errors.ResourceError(f"not enough memory to run {self._windows_text(plan, compiled)}"
                                       f"{self._memory_advice(plan, compiled)}", params=("tile_px", "batch")) from None
        if stats is not None:
            stats.forward_s += forward_s
            stats.stitch_s += stitch_s
            stats.total_s += time.perf_counter() - start
            stats.tiles += plan.num_tiles
            stats.batches += batches
            stats.tile_shape, stats.device = (plan.tile_h, plan.tile_w), str(self.device)
            stats.precision, stats.compiled = NAMES[self.dtype], compiled and self.compiled
            stats.backend = backend
        return out

    def _note_depth(self, pixels: np.ndarray) -> None:
        """Say once per engine that a 16-bit image computed in bf16/fp16 comes out 16-bit but with less
        precision: the network's values have 8 (bf16) or 11 (fp16) significant bits. Measured, a
        256x256 16-bit output, bf16 vs fp32: default-x4 (SPAN) 53.1 dB, its low byte took 15 values of
        256; default-x4-v1 (compact, whose output adds the fp32 input) 65.6 dB."""
        if pixels.dtype == np.uint16 and self.dtype != torch.float32 and not self._said_depth:
            self._said_depth = True
            log.info("16-bit input computed in %s, whose %d significant bits limit the output's accuracy "
                     "(its low byte may be mostly rounding); precision fp32 keeps all 16 bits",
                     NAMES[self.dtype], 8 if self.dtype == torch.bfloat16 else 11, extra={"params": ("precision",)})

    def _check_activations(self, plan: tiling.TilePlan, compiled: bool, backend: str = "torch") -> None:
        """``ResourceError`` before any work when one batch of these windows needs more memory for its
        activations than there is (``--tile 0`` on a large image: the kernel would kill the process
        with no word). Two live activations per largest layer (``memory_window_px`` budgets three, and a
        fraction of the memory, for ``tile_px="auto"``, which so never trips this): default-x4 on one
        2000x1500 window is estimated at 5.4 GiB, and peaked at 5.3 GB (RSS of the whole process)."""
        rows = self._rows(plan, compiled)
        need = activation_bytes(self.cost, self.dtype, rows * plan.tile_h * plan.tile_w, live=2)
        need += self.runners.extra_bytes(backend, rows, plan.tile_h, plan.tile_w)
        free = available_memory_bytes(self.device)
        if need > free:
            raise errors.ResourceError(f"{self._windows_text(plan, compiled)} need about {need / 2**30:.1f} GiB for "
                                       f"the model's activations; {free / 2**30:.1f} GiB free"
                                       f"{self._memory_advice(plan, compiled)}", params=("tile_px", "batch"))

    def _rows(self, plan: tiling.TilePlan, static: bool) -> int:
        """Windows per forward pass: never more than the image has, except for a compiled graph, which
        keeps its one batch size."""
        return self.options.batch if static else min(self.options.batch, plan.num_tiles)

    def _windows_text(self, plan: tiling.TilePlan, compiled: bool) -> str:
        rows = self._rows(plan, compiled)
        return (f"one {plan.tile_w}x{plan.tile_h} window" if plan.num_tiles == 1 and rows == 1
                else f"{plan.tile_w}x{plan.tile_h} windows, {rows} per pass")

    def _memory_advice(self, plan: tiling.TilePlan, compiled: bool) -> str:
        """What to lower, where lowering it helps: the batch above 1, a window beyond the auto size."""
        fixes = (["batch 1"] if self._rows(plan, compiled) > 1 else []) + (
            ["tile_px auto"] if self.options.tile_px != "auto" else [])
        return f"; use {' and '.join(fixes)}" if fixes else "; free some memory or close other programs"

    def _check_input(self, pixels: np.ndarray) -> None:
        model = self.model
        label = model.name or model.source or model.arch
        if pixels.ndim != 3 or pixels.dtype not in (np.uint8, np.uint16, np.float32):
            raise errors.UsageError(f"{label}: expected an (H, W, C) uint8, uint16 or float32 array, "
                                    f"got {pixels.shape} {pixels.dtype}")
        h, w, c = pixels.shape
        if c != model.in_channels:
            raise errors.UsageError(f"{label} takes {model.in_channels}-channel input, the image has {c}")
        if h < 1 or w < 1:
            raise errors.UsageError(f"{label}: empty image ({h}x{w})")

    def _run_windows(self, padded: np.ndarray, plan: tiling.TilePlan, stitcher: tiling.BandStitcher,
                     compiled: bool, progress: Progress | None, backend: str = "torch") -> tuple[float, float, int]:
        """Every window of ``plan`` through the model (on ``backend``; torch: the compiled graph if
        ``compiled``) and into the stitcher; returns (forward seconds, stitch
        seconds, batches)."""
        forward_s = stitch_s = 0.0
        batches = 0
        total = plan.num_tiles
        with torch.inference_mode(), self._autocast():
            for done, group, x in self._batches(padded, plan, static=compiled):
                t0 = time.perf_counter()
                y = self._compute(x, compiled, backend)
                synchronize(self.device)   # so forward_s is the forward pass (and the input may be refilled)
                t1 = time.perf_counter()
                for i, win in enumerate(group):
                    stitcher.add(win, y[i])
                stitch_s += time.perf_counter() - t1
                forward_s += t1 - t0
                batches += 1
                if progress is not None:
                    progress(done, total)
        return forward_s, stitch_s, batches

    def _batches(self, padded: np.ndarray, plan: tiling.TilePlan, *,
                 static: bool) -> Iterator[tuple[int, list[tiling.Window], torch.Tensor]]:
        """(windows done after this batch, its windows, its NCHW input on the device), batch after batch.
        Each band of rows is converted to float once; ``static``: always a full batch (compiled graphs
        keep one batch size; the rows past the last window are ignored)."""
        th, tw = plan.tile_h, plan.tile_w
        windows = list(plan.windows())
        full = self._rows(plan, static)
        batch_in = torch.zeros((full, th, tw, padded.shape[2]), dtype=torch.float32,
                               pin_memory=self.device.type == "cuda")
        band_row, band = -1, None
        for first in range(0, len(windows), full):
            group = windows[first:first + full]
            for i, win in enumerate(group):
                if win.row != band_row:
                    band_row, band = win.row, to_float(padded[win.y0:win.y0 + th])
                batch_in[i].copy_(band[:, win.x0:win.x0 + tw])
            n = full if static else len(group)
            yield first + len(group), group, batch_in[:n].to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def _compute(self, x: torch.Tensor, compiled: bool, backend: str) -> torch.Tensor:
        """One batch (NCHW view of NHWC memory) -> its output as an NHWC float32 tensor, from the torch
        module (a view: contiguous if channels_last) or another backend's runner (``Runners.compute``)."""
        if backend == "torch":
            return self._forward(x, compiled).float().permute(0, 2, 3, 1)
        return self.runners.compute(backend, x)

    def _forward(self, x: torch.Tensor, compiled: bool) -> torch.Tensor:
        """One batch through the eager module, or the compiled one; the first compiled call compiles
        (or falls back to the eager module)."""
        if not (compiled and self.compiled):
            return self.module(x)
        if not self._compile_pending:
            return self._compiled_module(x)
        t0 = time.perf_counter()
        try:
            y = self._compiled_module(x)
        except Exception as exc:   # compiler missing or failing: many exception types, all mean the same
            if self.options.compile == "on":
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise errors.UsageError(f"compile on: torch.compile failed here ({type(exc).__name__}: {first}); "
                                        "use compile off", params=("compile",)) from exc
            log.warning("compile auto: torch.compile failed (%s); running eagerly", type(exc).__name__)
            self.compiled, self._compiled_module = False, None
            y = self.module(x)
        else:
            log.info("compiled for %s tiles, batch %d, in %.1f s (first batch included)",
                     f"{x.shape[2]}x{x.shape[3]}", x.shape[0], time.perf_counter() - t0)
        self._compile_pending = False
        return y

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


def _pad(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad the bottom/right of an (H, W, C) array to (height, width); no copy if it fits."""
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels
    return np.pad(pixels, ((0, height - h), (0, width - w), (0, 0)), mode="reflect")


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed: a MemoryError, or torch's RuntimeError saying so
    (host or device)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()
