"""What a network costs and whether it fits: conv MACs and peak activation per input pixel from one
small probe pass, the window side for ``tile_px="auto"`` (the one ``upscale tune`` measured fastest on
this machine, else the documented fallback constants), capped by the memory available, the table of
measured window sides the engine plans each image from. (Whether an output fits in memory at all,
checked before a model loads, is ``fits``.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import errors
from ..archs import get_family
from ..device import NAMES, available_memory_bytes
from ..model import Model
from .options import BEST_TILE_FALLBACK_PX, BEST_TILE_PX, MEMORY_FRACTION


@dataclass(frozen=True)
class ModelCost:
    """Per input pixel costs of a network, from one small probe pass."""

    macs_per_px: float            # multiply-accumulates in its convolutions
    activation_per_px: float      # elements in the largest conv input + output (peak activation proxy)
    num_convs: int
    compiled_convs: int           # convs torch.compile traces: repeated blocks (compile_regions) count once
    arch: str = ""                # the network measured, for the tuning cache's key
    hparams: str = ""             # its hparams as canonical JSON ("" = not known: no tuning looked up)
    label: str = ""               # its registry name or file, for messages


def region_blocks(module: nn.Module, arch: str) -> list[nn.Module]:
    """The repeated identical blocks of ``module`` (its family's ``compile_regions``), in order."""
    return [blk for name in get_family(arch).compile_regions for blk in getattr(module, name, ())]


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
    in_blocks = [sum(isinstance(m, nn.Conv2d) for m in blk.modules()) for blk in region_blocks(module, model.arch)]
    traced = convs - sum(in_blocks) + (in_blocks[0] if in_blocks else 0)
    from ..tuned import canonical

    return ModelCost(macs / side**2, peak / side**2, convs, traced, arch=model.arch,
                     hparams=canonical(model.hparams), label=model.name or model.source)


def tuned(cost: ModelCost, dtype: torch.dtype, device: torch.device) -> dict | None:
    """What ``upscale tune`` measured for this network, precision, device and torch's thread count on
    this machine (``upscale.tuned``), or None, said once per process at info level."""
    if not cost.hparams:
        return None
    from ..tuned import lookup_or_note, tuning_key

    key = tuning_key(cost.arch, cost.hparams, NAMES.get(dtype, str(dtype)), device, torch.get_num_threads())
    return lookup_or_note(key, cost.label)


def default_window_px(arch: str) -> int:
    """The fallback window side when nothing was tuned: ``BEST_TILE_PX`` by family, else
    ``BEST_TILE_FALLBACK_PX`` (measured on this project's AMD EPYC Zen 5 CPU, 2 threads, bf16;
    engine/options.py says how)."""
    return BEST_TILE_PX.get(arch, BEST_TILE_FALLBACK_PX)


def activation_bytes(cost: ModelCost, dtype: torch.dtype, pixels: int, live: int) -> float:
    """Bytes of ``live`` copies of the network's largest activation for ``pixels`` input pixels (all the
    windows of one batch) in ``dtype``: what a batch's forward pass holds at its peak."""
    return live * cost.activation_per_px * (torch.finfo(dtype).bits // 8) * pixels


def memory_window_px(cost: ModelCost, dtype: torch.dtype, device: torch.device, batch: int) -> int:
    """The largest window side (a multiple of 8) whose activations for one batch (three live copies,
    a margin on the two a forward pass holds) fit in MEMORY_FRACTION of the memory available now."""
    budget = MEMORY_FRACTION * available_memory_bytes(device)
    return int(math.sqrt(budget / activation_bytes(cost, dtype, batch, live=3))) // 8 * 8


def fitting_window_px(cost: ModelCost, arch: str, dtype: torch.dtype, device: torch.device, batch: int) -> int:
    """The window side for ``tile_px="auto"``: the one ``upscale tune`` measured fastest here for this
    network, precision, device and thread count, else ``default_window_px(arch)``; in both cases no
    larger than ``memory_window_px`` allows."""
    result = tuned(cost, dtype, device)
    window = int(result["window_px"]) if result else default_window_px(arch)
    return min(memory_window_px(cost, dtype, device, batch), window)


def largest_window(cost: ModelCost, dtype: torch.dtype, device: torch.device, batch: int, height: int, width: int,
                   extra_bytes: Callable[[int, int, int], int]) -> int:
    """The window side that computes the fewest pixels of a height x width image within
    ``MEMORY_FRACTION`` of the memory available now: the image's own longer side where one window of the
    whole image fits (a batch of one: the image's only window), else the largest square side (a
    multiple of 8) whose batch of ``batch`` fits; the need of ``n`` windows of h x w is two live
    activations (as ``Engine`` checks) plus ``extra_bytes(n, h, w)`` (a backend's workspace; a
    ``BackendError`` there: the backend cannot run here, no window fits).

    For backends whose cost per computed pixel does not grow with the window (winograd: its kernels
    take blocks of tiles that fit the core's L2 cache, whatever the map's size; its tuner curves are
    flat within noise, docs/perf.md), fewer pixels is faster: this is their fallback where nothing was
    measured, instead of torch's window constants (which would compute a 1000x750 image 2.4 times)."""
    budget = MEMORY_FRACTION * available_memory_bytes(device)

    def fits(n: int, h: int, w: int) -> bool:
        try:
            return activation_bytes(cost, dtype, n * h * w, live=2) + extra_bytes(n, h, w) <= budget
        except errors.BackendError:
            return False

    if fits(1, height, width):
        return max(height, width)
    if not fits(batch, 8, 8):
        return 8
    lo, hi = 1, max(height, width) // 8           # the largest multiple of 8 that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(batch, 8 * mid, 8 * mid) else (lo, mid - 1)
    return 8 * lo


def measured_windows(cost: ModelCost, dtype: torch.dtype, device: torch.device, batch: int,
                     backend: str = "torch") -> dict[int, tuple[float, float]] | None:
    """What ``upscale tune`` measured per window side here with ``backend``: {window side: (seconds
    per window, seconds its first call added: compiling that shape)}, only the sides whose activations
    fit in memory now (``memory_window_px``); None when nothing was measured with that backend (or
    only a single window, as entries written before the table existed). Entries keep every measured
    backend's curve (``tables``); older ones only the chosen backend's."""
    result = tuned(cost, dtype, device)
    if not result:
        return None
    if result.get("window_backend", "torch") == backend:
        measured = result      # the chosen backend's curve
    else:                      # another measured backend's (entries since the winograd backend keep all)
        measured = (result.get("tables") or {}).get(backend)
    if not measured or not measured.get("window_seconds"):
        return None
    limit = memory_window_px(cost, dtype, device, batch)
    setup = measured.get("window_setup_s") or {}
    table = {int(side): (float(seconds), float(setup.get(side, 0.0)))
             for side, seconds in measured["window_seconds"].items() if int(side) <= limit}
    return table or None


EXTRAPOLATE_MAX = 1.5   # one window up to this many times the largest measured side may be estimated
MAX_LOG_GROWTH = 20.0   # an extrapolated cost per pixel grown more than e^20-fold is no plan at all
TREND_SPAN = 0.75       # ... from the trend between the largest side and the largest at most this fraction of it


def whole_window(table: dict[int, tuple[float, float]], side: int,
                 reach: float | None = None) -> tuple[float, float] | None:
    """An estimate, in ``table``'s terms (seconds of one window, seconds its first call adds), of one
    window of ``side`` beyond the largest measured side (up to ``EXTRAPOLATE_MAX`` times it), so an
    image a little larger than every measured window can be planned as one window instead of several
    overlapping ones. The cost per pixel is the largest side's, grown as it grew from the largest side
    at most ``TREND_SPAN`` of it (sides closer together make a noisy trend: 496 and 512 measured 10%
    apart per pixel here); a cost per pixel that fell with the side is not extrapolated downward. The
    first call's seconds grow with the area. ``reach``: how far beyond the largest side (a factor; None:
    ``EXTRAPOLATE_MAX``; winograd's flat cost per pixel goes further). None when ``side`` is measured
    or out of range, or no side lies far enough below the largest."""
    largest = max(table, default=0)
    below = [s for s in table if s <= TREND_SPAN * largest]
    if not below or side in table or not largest < side <= (reach or EXTRAPOLATE_MAX) * largest:
        return None
    prev = max(below)
    per_px_prev, per_px = table[prev][0] / prev**2, table[largest][0] / largest**2
    log_growth = math.log(max(1.0, per_px / per_px_prev)) * (side - largest) / (largest - prev)
    if log_growth > MAX_LOG_GROWTH:     # far beyond any plan's cost (and beyond a float, further out)
        return None
    return per_px * math.exp(log_growth) * side**2, table[largest][1] * (side / largest) ** 2
