"""Running a ``Model`` over an image: devices, precisions, channels_last, torch.compile, batched tiles.

This is the only module that knows devices and dtypes. ``Engine`` prepares the network once (a copy
on its device, eval, channels_last, optionally compiled); ``Engine.upscale`` plans tiles
(``upscale.tiling``), converts each horizontal band of the input to float once, stacks tiles into
batches of ``EngineOptions.batch`` (NHWC memory, so the batch is channels_last without a copy), runs
them under autocast and streams the outputs into the result through ``tiling.BandStitcher``.

Precision (``precision="auto"``): fp16 autocast on CUDA; bf16 autocast on CPUs with native bf16 dot
products (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo); fp32 otherwise, and fp32 whenever the model
is not flagged ``bf16_safe``. Explicit choices: fp16 on CPU is refused (``PrecisionError``); bf16 on a
CPU without those instructions is allowed (PyTorch emulates it) with a warning that it is likely slower
than fp32.

Compilation (``compile="auto"``) is considered on CPU only, where it was measured (docs/perf.md): it
is turned on when the caller announces enough work (``Engine(..., work=Workload(pixels, shape))``) that the
estimated time saved repays the estimated compile time. Compiled engines use one fixed tile shape and
full batches, so a single graph serves every tile of every image: the shape eager tiling would choose
when the caller says every image has one size (``Workload.shape``: a single image, or a folder of
same-sized photos), else the ``tile_px`` square (smaller images padded up to it). The inductor cache
lives under ``$UPSCALE_CACHE/inductor`` so a second process compiles much faster.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import errors, tiling
from .archs import get_family
from .model import Model

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("auto", "on", "off")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}

# Default tile = "auto": the fastest tile side measured for the model's family on this project's CPU
# (docs/perf.md, ``benchmarks/speed_core.py --sweep``: whole-image seconds per tile size, overlap
# included), reduced where the memory available could not hold one batch of its activations; images no
# larger than that run whole. RRDBNet x4plus, 512x512, bf16, 2 threads: tile 192 41.2 s, 256 26.0 s,
# 384 20.8 s, whole (512) 22.9 s -- its 64-channel layers at 4x resolution get slower per pixel as tiles
# grow, so mid-sized tiles beat one pass. default-x4 (compact 48x12), 768x768: 192 0.87 s, 256 0.74 s,
# 384 0.80 s, 512 0.63 s, whole 1.01 s. The compact cap is 496, not 512: a 64-channel bf16 activation
# of a 512 px tile is 33.5 MB, just over glibc's 32 MiB mmap ceiling, so every layer's output would be
# a fresh mmap (page faults on every pass); realesr-animevideov3 (64 ch, PReLU) took 1.27 s per 512 px
# tile against 0.59 s at 496.
DEFAULT_TILE_PX: int | str = "auto"
BEST_TILE_PX = {"compact": 496}      # by family; the others get the fallback (measured best or within 12%:
                                     # rrdbnet, srresnet, srcnn, tiny; docs/perf.md)
BEST_TILE_FALLBACK_PX = 384
DEFAULT_OVERLAP_PX = 8          # smallest default: used when the model's receptive radius is smaller
# Default overlap = the model's receptive radius (exact tiling) capped here. Measured with the real
# realesrgan-x4plus weights (RRDBNet 23 blocks, radius ~350 px) on a 256x256 BSD200 crop, fp32, tile 192:
# overlap 8 -> 41.3 dB vs untiled, 16 -> 44.9 dB, 32 -> 57.1 dB.
AUTO_OVERLAP_MAX_PX = 32
DEFAULT_BATCH = 1
MEMORY_FRACTION = 0.5           # share of available memory "auto" lets one batch's activations use

# compile="auto": on when the compile time is repaid by what it saves, i.e. when the estimated eager
# seconds of the announced work times COMPILE_GAIN reach the estimated compile time. Measured on this
# project's CPU (AMD EPYC Zen 5, avx512_bf16, no AMX; docs/perf.md): compiling saves ~5-13% per pixel
# in bf16 (oneDNN's eager convolutions already run near the bf16 GEMM ceiling; more for PReLU nets,
# whose activation it fuses), and a cold compile takes about COMPILE_BASE_S plus COMPILE_PER_CONV_S per
# traced conv (repeated blocks are compiled once: realesrgan-x4plus ~16 s, realesr-animevideov3 ~13 s).
# Eager conv throughput per thread is EAGER_CPU_MACS_PER_S (RRDBNet x4: ~0.34 TMAC/s bf16, 0.17 fp32, 2 threads).
COMPILE_GAIN = 0.05
COMPILE_BASE_S = 10.0
COMPILE_PER_CONV_S = 0.3
EAGER_CPU_MACS_PER_S = {torch.bfloat16: 1.7e11, torch.float32: 8.5e10}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Workload:
    """What a caller plans to run through an engine: ``pixels``, the input pixels of all images (for
    ``compile="auto"``), and ``shape``, the (height, width) every image has, when they all have the same
    one (a compiled engine then fits its single tile shape to it)."""

    pixels: int = 0
    shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model. ``tile_px``: window side in input px, 0 = whole image, "auto" (default) = the
    fastest measured side for the model's family (``BEST_TILE_PX``), smaller if the memory available
    cannot hold one batch of it, and the whole image when that is no larger; ``overlap_px``: context discarded at
    each interior tile edge (tiled == untiled exactly once it reaches ``Model.receptive_radius``);
    ``batch``: tiles per forward pass; ``threads``: torch intra-op threads (None = all cores)."""

    device: str = "auto"
    precision: str = "auto"
    tile_px: int | str = DEFAULT_TILE_PX
    overlap_px: int | None = None   # None: the model's receptive radius, capped at AUTO_OVERLAP_MAX_PX
    batch: int = DEFAULT_BATCH
    threads: int | None = None
    compile: str = "auto"

    def __post_init__(self) -> None:
        _choice("--device", self.device, DEVICES)
        _choice("--precision", self.precision, PRECISIONS)
        _choice("--compile", self.compile, COMPILE_MODES)
        if self.tile_px != "auto" and not (isinstance(self.tile_px, int) and self.tile_px >= 0):
            raise errors.UsageError(f"--tile must be a whole number of pixels >= 0 or 'auto', not {self.tile_px!r}")
        if self.overlap_px is not None and not (isinstance(self.overlap_px, int) and self.overlap_px >= 0):
            raise errors.UsageError(f"--overlap must be a whole number of pixels >= 0, not {self.overlap_px!r}")
        if (self.overlap_px is not None and isinstance(self.tile_px, int) and self.tile_px
                and self.tile_px <= 3 * self.overlap_px):
            raise errors.UsageError(f"--tile {self.tile_px} is too small for --overlap {self.overlap_px}: "
                                    f"tiles must be larger than 3 x overlap ({3 * self.overlap_px} px)")
        if not (isinstance(self.batch, int) and self.batch >= 1):
            raise errors.UsageError(f"--batch must be a whole number >= 1, not {self.batch!r}")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise errors.UsageError(f"--threads must be a whole number >= 1, not {self.threads!r}")


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise errors.UsageError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")


# --- device and precision --------------------------------------------------------------------------
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 instruction sets this CPU reports (``amx_bf16``, ``avx512_bf16``), from
    /proc/cpuinfo; empty where that file is missing (non-Linux) or lists neither."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in ("amx_bf16", "avx512_bf16") if f in flags)
    return ()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is not there -> ``DeviceError``."""
    cuda_ok = torch.cuda.is_available()
    mps_ok = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda_ok else "mps" if mps_ok else "cpu")
    if name == "cuda" and not cuda_ok:
        raise errors.DeviceError("--device cuda: no CUDA GPU is available to this PyTorch "
                                 f"({torch.__version__}); use --device cpu")
    if name == "mps" and not mps_ok:
        raise errors.DeviceError("--device mps: Apple's Metal backend is not available here; use --device cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, model: Model) -> torch.dtype:
    """The compute dtype for ``name`` on ``device`` (see the module docstring for the rules)."""
    label = model.name or model.source or model.arch
    if name == "auto":
        if device.type == "cuda":
            wanted = torch.float16
        elif device.type == "cpu" and cpu_bf16_flags():
            wanted = torch.bfloat16
        else:
            return torch.float32
        if not model.bf16_safe:
            log.info("precision auto: %s is not flagged safe in %s (fp32 and %s outputs not measured >= 50 dB "
                     "apart); using fp32 (--precision %s forces it)", label, NAMES[wanted], NAMES[wanted],
                     NAMES[wanted])
            return torch.float32
        return wanted
    if name == "fp16" and device.type == "cpu":
        raise errors.PrecisionError("--precision fp16 is not supported on the CPU (PyTorch has no fast fp16 "
                                    "convolutions there); use --precision bf16 or fp32, or --device cuda")
    if name == "bf16" and device.type == "cpu" and not cpu_bf16_flags():
        log.warning("--precision bf16: this CPU has no avx512_bf16/amx_bf16; bf16 is emulated and "
                    "likely slower than fp32")
    return DTYPES[name]


# --- model probing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCost:
    """Per input pixel costs of a network, from one small probe pass."""

    macs_per_px: float            # multiply-accumulates in its convolutions
    activation_per_px: float      # elements in the largest conv input + output (peak activation proxy)
    num_convs: int
    compiled_convs: int           # convs torch.compile traces: repeated blocks (compile_regions) count once


def probe_cost(model: Model) -> ModelCost:
    """Count conv MACs and the largest activation per input pixel on a small CPU probe input."""
    side = 8 * model.size_multiple
    module = model.module
    macs = 0
    peak = 0
    convs = 0

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs, peak, convs
        weight = mod.weight
        macs += out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        peak = max(peak, inputs[0].numel() + out.numel())
        convs += 1

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        param = next(module.parameters())
        with torch.inference_mode():
            module(torch.zeros(1, model.in_channels, side, side, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    in_blocks = [sum(isinstance(m, nn.Conv2d) for m in blk.modules()) for blk in _region_blocks(module, model.arch)]
    traced = convs - sum(in_blocks) + (in_blocks[0] if in_blocks else 0)
    return ModelCost(macs / side**2, peak / side**2, convs, traced)


def available_memory_bytes(device: torch.device) -> int:
    """Free memory for activations: the GPU's free memory, else MemAvailable from /proc/meminfo."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def inductor_cache_dir() -> Path:
    """``$UPSCALE_CACHE/inductor`` (default ``~/.cache/upscale/inductor``) for compiled graphs."""
    root = os.environ.get("UPSCALE_CACHE")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "upscale"
    return base.expanduser() / "inductor"


def compile_estimates(cost: ModelCost, dtype: torch.dtype, threads: int, expected_px: int) -> tuple[float, float]:
    """(eager seconds for ``expected_px`` input pixels, seconds to compile) on this CPU, from the
    measured constants above."""
    eager_s = expected_px * cost.macs_per_px / (EAGER_CPU_MACS_PER_S.get(dtype, 5e10) * threads)
    return eager_s, COMPILE_BASE_S + COMPILE_PER_CONV_S * cost.compiled_convs


# --- the engine ------------------------------------------------------------------------------------
class Engine:
    """A network prepared once for ``options``; ``upscale`` runs images through it.

    ``work``: what the caller plans to run (``Workload``); used only when compiling, to judge whether
    it pays off (``compile="auto"``) and to fit the compiled tile shape.
    """

    def __init__(self, model: Model, options: EngineOptions | None = None, *,
                 work: Workload | None = None) -> None:
        self.model = model
        self.options = options or EngineOptions()
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        self.device = resolve_device(self.options.device)
        self.dtype = resolve_precision(self.options.precision, self.device, model)
        self.cost = probe_cost(model)
        module = copy.deepcopy(model.module).eval().to(self.device)
        self.module: nn.Module = module.to(memory_format=torch.channels_last)
        work = work or Workload()
        self.compiled = self._want_compile(work.pixels)
        # compiled engines run one fixed (height, width) tile shape (None: whole images, one graph per
        # image size)
        self.compiled_shape: tuple[int, int] | None = None
        self._compile_pending = False
        self._eager_module: nn.Module | None = None
        if self.compiled:
            self._compile(work.shape)
        log.debug("engine: %s, %s, %d threads, compile %s", self.device, NAMES[self.dtype],
                 torch.get_num_threads(), "on" if self.compiled else "off")

    @property
    def overlap_px(self) -> int:
        """The overlap in force: as given, or the model's receptive radius within [8, 32] px."""
        if self.options.overlap_px is not None:
            return self.options.overlap_px
        return max(DEFAULT_OVERLAP_PX, min(self.model.receptive_radius, AUTO_OVERLAP_MAX_PX))

    def overlap_px_for(self, tile_px: int) -> int:
        """``overlap_px``, shrunk for a chosen default when a small tile could not hold it."""
        if self.options.overlap_px is not None or tile_px <= 0:
            return self.overlap_px
        return max(0, min(self.overlap_px, (tile_px - 8) // 3))

    # -- preparation --
    def _want_compile(self, expected_px: int) -> bool:
        mode = self.options.compile
        if mode != "auto":
            return mode == "on"
        if self.device.type != "cpu":
            log.info("compile auto: off on %s (only measured on CPU); use --compile on to force",
                     self.device.type)
            return False
        if not expected_px:
            log.debug("compile auto: off (amount of work not known)")
            return False
        eager_s, compile_s = compile_estimates(self.cost, self.dtype, torch.get_num_threads(), expected_px)
        decision = eager_s * COMPILE_GAIN >= compile_s
        # said when it turns on (it changes what the user waits for); a debug line when it stays off
        log.log(logging.INFO if decision else logging.DEBUG,
                "compile auto: %s (would save ~%.0f s of an estimated %.0f s eager run; compiling takes ~%.0f s)",
                "on" if decision else "off", eager_s * COMPILE_GAIN, eager_s, compile_s)
        return decision

    def _compile(self, image_shape: tuple[int, int] | None) -> None:
        """Wrap the module for torch.compile. Compiling itself happens on the first batch (no separate
        dummy pass, whose compute would be thrown away: for RRDBNet that doubled the time to the first
        output); if it fails there, ``compile="auto"`` falls back to the eager module and
        ``compile="on"`` raises a UsageError (see ``_forward``)."""
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
        tile = self.options.tile_px
        side = self._fitting_tile_px() if tile == "auto" else int(tile)
        multiple = self.model.size_multiple
        if side and image_shape:   # the windows eager tiling would use for that size: no padding waste
            plan = tiling.plan_tiles(*image_shape, side, self.overlap_px_for(side), multiple)
            self.compiled_shape = (plan.tile_h, plan.tile_w)
        elif side:
            self.compiled_shape = (max(side // multiple, 1) * multiple,) * 2
        self._eager_module = self.module   # what a failed compile falls back to
        self.module = _compiled_module(self.module, self.model.arch)
        self._compile_pending = True

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module on one batch; the first call of a compiled engine compiles (or falls back)."""
        if not self._compile_pending:
            return self.module(x)
        t0 = time.perf_counter()
        try:
            y = self.module(x)
        except Exception as exc:   # compiler missing or failing: many exception types, all mean the same
            if self.options.compile == "on":
                raise errors.UsageError(f"--compile on: torch.compile failed here ({type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}); use --compile off") from exc
            log.warning("compile auto: torch.compile failed (%s); running eagerly", type(exc).__name__)
            self.module, self.compiled = self._eager_module, False
            y = self.module(x)
        else:
            log.info("compiled for %s tiles, batch %d, in %.1f s (first batch included)",
                     f"{x.shape[2]}x{x.shape[3]}", x.shape[0], time.perf_counter() - t0)
        self._compile_pending, self._eager_module = False, None
        return y

    # -- running --
    def _fitting_tile_px(self) -> int:
        """The family's measured best tile side, or the largest side (multiple of 8, at least 64) whose
        activations for one batch fit in MEMORY_FRACTION of the memory available now, if smaller."""
        elem = torch.finfo(self.dtype).bits // 8
        budget = MEMORY_FRACTION * available_memory_bytes(self.device)
        per_px = 3 * self.cost.activation_per_px * elem * self.options.batch
        fit = int(math.sqrt(budget / per_px)) // 8 * 8
        best = BEST_TILE_PX.get(self.model.arch, BEST_TILE_FALLBACK_PX)
        return max(64, min(fit, best), 3 * self.overlap_px + 8)

    def tile_px_for(self, height: int, width: int) -> int:
        """The (largest) tile side used for an image of this size (0 = whole image; resolves ``"auto"``)."""
        if self.compiled:
            return max(self.compiled_shape) if self.compiled_shape else 0
        tile = self.options.tile_px
        if tile != "auto":
            return int(tile)
        side = self._fitting_tile_px()
        return 0 if side >= max(height, width) else side

    def upscale(self, pixels: np.ndarray, progress: Progress | None = None,
                stats: dict | None = None) -> np.ndarray:
        """(H, W, C) uint8/uint16/float32 in [0, 1] -> (H*s, W*s, C_out) of the same dtype.

        ``progress(done_tiles, total_tiles)`` is called after each batch. ``stats``, when given, is
        filled with this call's figures: forward_s, stitch_s, total_s, tiles, batches, tile_shape,
        device, precision, compiled.
        """
        start = time.perf_counter()
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
        s = model.scale
        tile = self.tile_px_for(h, w)
        fixed = self.compiled_shape if self.compiled else None
        try:
            plan = tiling.plan_tiles(h, w, tile, self.overlap_px_for(tile), model.size_multiple, s,
                                     fixed_shape=fixed)
        except ValueError as exc:
            raise errors.UsageError(f"{label}: {exc}") from None
        padded = _pad(pixels, plan.height, plan.width)
        out = np.empty((h * s, w * s, model.out_channels), dtype=pixels.dtype)
        # tiles stay where the model ran (the GPU's memory on CUDA) until blended; each finished band
        # reaches the host once, already clamped and in the output dtype
        stitcher = tiling.BandStitcher(plan, out, TorchStitchOps(self.device))
        forward_s = stitch_s = 0.0
        batches = 0
        windows = list(plan.windows())
        full = self.options.batch
        pin = self.device.type == "cuda"
        th, tw = plan.tile_h, plan.tile_w
        batch_in = torch.zeros((full, th, tw, c), dtype=torch.float32, pin_memory=pin)
        band_row, band = -1, None
        with torch.inference_mode(), self._autocast():
            for first in range(0, len(windows), full):
                group = windows[first:first + full]
                for i, win in enumerate(group):
                    if win.row != band_row:
                        band_row, band = win.row, _to_float(padded[win.y0:win.y0 + th])
                    batch_in[i].copy_(band[:, win.x0:win.x0 + tw])
                n = full if self.compiled else len(group)   # compiled graphs keep one static batch size
                t0 = time.perf_counter()
                x = batch_in[:n].to(self.device, non_blocking=True).permute(0, 3, 1, 2)
                y = self._forward(x).float().permute(0, 2, 3, 1)  # NHWC view; contiguous if channels_last
                _synchronize(self.device)   # so forward_s is the forward pass (and batch_in may be refilled)
                t1 = time.perf_counter()
                for i, win in enumerate(group):
                    stitcher.add(win, y[i])
                stitch_s += time.perf_counter() - t1
                forward_s += t1 - t0
                batches += 1
                if progress is not None:
                    progress(first + len(group), len(windows))
        if stats is not None:
            # counters add up, so one dict can follow several calls (e.g. an image and its alpha)
            for key, value in (("forward_s", forward_s), ("stitch_s", stitch_s),
                               ("total_s", time.perf_counter() - start), ("tiles", len(windows)),
                               ("batches", batches)):
                stats[key] = stats.get(key, 0) + value
            stats.update(tile_shape=(th, tw), device=str(self.device), precision=NAMES[self.dtype],
                         compiled=self.compiled)
        return out

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


class TorchStitchOps:
    """``tiling.BandStitcher`` arithmetic (the six methods of ``tiling.NumpyOps``) in torch on ``device``: tiles are blended where the model left
    them (no per-tile copy to the host on CUDA), fused (``addcmul_``) and with torch's intra-op threads
    on the CPU, and each finished band is clamped, rounded and cast to the output's integer type on the device
    before one copy (through a reused pinned staging buffer on CUDA) into the host array."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._staging: torch.Tensor | None = None     # pinned host bytes, CUDA only

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def asarray(self, weights: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(weights).to(self.device)

    def outer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.outer(a, b)

    def accumulate(self, acc: torch.Tensor, tile: torch.Tensor, weight: torch.Tensor) -> None:
        acc.addcmul_(tile, weight[:, :, None])    # fused: no temporary the size of the tile

    def shift(self, arr: torch.Tensor, n: int) -> None:
        keep = arr.shape[0] - n
        if keep > 0:
            arr[:keep] = arr[n:].clone()    # torch refuses overlapping in-place copies
        arr[max(keep, 0):] = 0.0

    def store(self, band: torch.Tensor, dest: np.ndarray, *, own: bool) -> None:
        band = band if own else band.to(torch.float32, copy=True)
        if dest.dtype == np.float32:
            result = band.clamp_(0.0, 1.0)
        else:
            peak = 255.0 if dest.dtype == np.uint8 else 65535.0
            # rounds half to even, like numpy's rint; uint16 travels as int32 (CUDA has no uint16 casts)
            result = band.mul_(peak).clamp_(0.0, peak).round_().to(
                torch.uint8 if dest.dtype == np.uint8 else torch.int32)
        if result.device.type == "cpu":
            torch.from_numpy(dest).copy_(result)
            return
        if result.device.type == "cuda":
            host = self._pinned(result)
            host.copy_(result, non_blocking=True)
            _synchronize(result.device)
        else:
            host = result.cpu()
        np.copyto(dest, host.numpy(), casting="unsafe")

    def _pinned(self, like: torch.Tensor) -> torch.Tensor:
        """A pinned host tensor shaped and typed like ``like``, reusing one growing buffer."""
        nbytes = like.numel() * like.element_size()
        if self._staging is None or self._staging.numel() < nbytes:
            self._staging = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return self._staging[:nbytes].view(like.dtype).view(like.shape)


def _region_blocks(module: nn.Module, arch: str) -> list[nn.Module]:
    """The repeated identical blocks of ``module`` (its family's ``compile_regions``), in order."""
    return [blk for name in get_family(arch).compile_regions for blk in getattr(module, name, ())]


def _compiled_module(module: nn.Module, arch: str) -> nn.Module:
    """``module`` compiled for inference; ``module`` itself is left as it was. Deep networks made of
    repeated identical blocks (RRDBNet's 23 RRDBs) are compiled block by block, on a copy: one graph is traced and compiled for the first
    block and reused by the others, which cut realesrgan-x4plus' cold compile from ~73 s to ~16 s
    (warm cache: ~6 s) at the same speed (docs/perf.md). Blocks keep their weights as graph inputs, so
    they are not frozen. Small networks are compiled whole with freezing (weights folded in as
    constants); freezing measured no faster here, but costs nothing for them."""
    if not _region_blocks(module, arch):
        return torch.compile(module, dynamic=False, options={"freezing": True})
    module = copy.deepcopy(module)   # nn.Module.compile works in place
    for blk in _region_blocks(module, arch):
        blk.compile(dynamic=False)
    return module


def _pad(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad the bottom/right of an (H, W, C) array to (height, width); no copy if it fits."""
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels
    return np.pad(pixels, ((0, height - h), (0, width - w), (0, 0)), mode="reflect")


def _to_float(rows: np.ndarray) -> torch.Tensor:
    """An (h, W, C) band of pixels as a float32 tensor in [0, 1] (integer types scaled by their peak)."""
    if rows.dtype == np.float32:
        return torch.from_numpy(np.ascontiguousarray(rows))
    band = rows.astype(np.float32)
    band *= 1.0 / (255.0 if rows.dtype == np.uint8 else 65535.0)
    return torch.from_numpy(band)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
