"""What a network costs and whether it fits: conv MACs and peak activation per input pixel from one
small probe pass, the window side that fits in memory, and the up-front check that an output array
fits in the memory available (``check_output_fits``, callable before any model is loaded)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import errors
from ..archs import get_family
from ..device import available_memory_bytes
from ..model import Model
from .options import BEST_TILE_FALLBACK_PX, BEST_TILE_PX, MEMORY_FRACTION


@dataclass(frozen=True)
class ModelCost:
    """Per input pixel costs of a network, from one small probe pass."""

    macs_per_px: float            # multiply-accumulates in its convolutions
    activation_per_px: float      # elements in the largest conv input + output (peak activation proxy)
    num_convs: int
    compiled_convs: int           # convs torch.compile traces: repeated blocks (compile_regions) count once


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
    return ModelCost(macs / side**2, peak / side**2, convs, traced)


def fitting_window_px(cost: ModelCost, arch: str, dtype: torch.dtype, device: torch.device, batch: int) -> int:
    """The family's measured best window side, or the largest side (a multiple of 8) whose activations
    for one batch fit in MEMORY_FRACTION of the memory available now, if smaller."""
    elem = torch.finfo(dtype).bits // 8
    budget = MEMORY_FRACTION * available_memory_bytes(device)
    per_px = 3 * cost.activation_per_px * elem * batch
    fit = int(math.sqrt(budget / per_px)) // 8 * 8
    return min(fit, BEST_TILE_PX.get(arch, BEST_TILE_FALLBACK_PX))


def check_output_fits(height: int, width: int, channels: int, scale: float, dtype: np.dtype | type) -> int:
    """Raise ``errors.ResourceError`` when an (height*scale, width*scale, channels) array of ``dtype``
    would not fit in the host memory available now; else return its size in bytes. Cheap: call it
    before loading a model (``scale`` may be a float outscale)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise errors.UsageError(f"scale must be a positive number, not {scale!r}", params=("scale",))
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    need = out_h * out_w * channels * np.dtype(dtype).itemsize
    free = available_memory_bytes(torch.device("cpu"))
    if need > free:
        raise errors.ResourceError(f"output {out_w} x {out_h} x {channels} needs {_size(need)}; "
                                   f"{_size(free)} free")
    return need


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.0f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
