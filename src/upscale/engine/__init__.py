"""Running a ``Model`` over an image: the only package that knows devices and dtypes.

``Engine`` prepares the network once (a copy on its device, eval, channels_last, optionally compiled);
``Engine.upscale`` plans windows (``upscale.tiling``), batches them through the model under autocast and
stitches the outputs on the model's device. Its rooms:

- ``options``: ``EngineOptions`` and ``Workload``, validated, with the documented defaults;
- ``upscale.device`` (shared with training): device and precision resolution, free memory;
- ``precision``: what ``precision="auto"`` computes in where the rule says bf16 on the CPU: what
  ``upscale tune`` measured for the model, else the machine's own one-convolution probe (cached);
- ``cost``: the probe of a network's MACs and activations, the window ``auto`` uses (the one
  ``upscale tune`` measured fastest here, else the documented fallback; capped by memory);
- ``fits``: ``check_output_fits`` (is there memory for the output at all; callable before loading a
  model);
- ``compiling``: the torch.compile policy, the inductor cache, which windows use the compiled graph;
- ``core``: ``Engine`` and its run loop, ``RunStats``;
- ``stitch_ops``: ``TorchStitchOps``, the stitcher's arithmetic in torch;
- ``upscale.backends``: what computes the windows (torch, OpenVINO's CPU plugin, or winograd).

Importing the package is light: ``options`` and ``fits`` (no torch) load with it, the other rooms
(and torch) when one of their names is first used, so the CLI checks its options and refuses bad
input before torch loads.
"""

from __future__ import annotations

import importlib
from typing import Any

from .fits import check_output_fits
from .options import (AUTO_OVERLAP_MAX_PX, BACKENDS, BEST_TILE_FALLBACK_PX, BEST_TILE_PX, COMPILE_MODES, DEFAULT_BATCH,
                      DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX, TILE_HELP, EngineOptions, Workload)

# names of the rooms that import torch: where each lives, imported on first use (PEP 562)
_LAZY = {
    **dict.fromkeys(("DEVICES", "DTYPES", "NAMES", "PRECISIONS", "available_memory_bytes", "cpu_bf16_flags",
                     "resolve_device", "resolve_precision"), "..device"),
    "inductor_cache_dir": "..machine",
    **dict.fromkeys(("COMPILE_GAIN", "compile_estimates", "uses_compiled"), ".compiling"),
    **dict.fromkeys(("Engine", "Progress", "RunStats"), ".core"),
    **dict.fromkeys(("ModelCost", "probe_cost"), ".cost"),
    "TorchStitchOps": ".stitch_ops",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(where, __name__), name)


__all__ = ["AUTO_OVERLAP_MAX_PX", "BACKENDS", "BEST_TILE_FALLBACK_PX", "BEST_TILE_PX", "COMPILE_GAIN", "COMPILE_MODES",
           "DEFAULT_BATCH", "DEFAULT_OVERLAP_PX", "DEFAULT_TILE_PX", "DEVICES", "DTYPES", "NAMES", "PRECISIONS",
           "TILE_HELP", "Engine", "EngineOptions", "ModelCost", "Progress", "RunStats", "TorchStitchOps",
           "Workload", "available_memory_bytes", "check_output_fits", "compile_estimates", "cpu_bf16_flags",
           "inductor_cache_dir", "probe_cost", "resolve_device", "resolve_precision", "uses_compiled"]
