"""Running a ``Model`` over an image: the only package that knows devices and dtypes.

``Engine`` prepares the network once (a copy on its device, eval, channels_last, optionally compiled);
``Engine.upscale`` plans windows (``upscale.tiling``), batches them through the model under autocast and
stitches the outputs on the model's device. Its rooms:

- ``options``: ``EngineOptions`` and ``Workload``, validated, with the documented defaults;
- ``upscale.device`` (shared with training): device and precision resolution, free memory;
- ``precision``: what ``precision="auto"`` computes in where the rule says bf16 on the CPU: what
  ``upscale tune`` measured for the model, else the machine's own one-convolution probe (cached);
- ``cost``: the probe of a network's MACs and activations, the window ``auto`` uses (the one
  ``upscale tune`` measured fastest here, else the documented fallback; capped by memory), and
  ``check_output_fits`` (is there memory for the output at all; callable before loading a model);
- ``compiling``: the torch.compile policy, the inductor cache, which windows use the compiled graph;
- ``core``: ``Engine`` and its run loop, ``RunStats``;
- ``stitch_ops``: ``TorchStitchOps``, the stitcher's arithmetic in torch;
- ``upscale.backends``: what computes the windows (torch, OpenVINO's CPU plugin, or winograd).
"""

from __future__ import annotations

from ..device import (DEVICES, DTYPES, NAMES, PRECISIONS, available_memory_bytes, cpu_bf16_flags, resolve_device,
                      resolve_precision)
from ..machine import inductor_cache_dir
from .compiling import COMPILE_GAIN, compile_estimates, uses_compiled
from .core import Engine, Progress, RunStats
from .cost import ModelCost, check_output_fits, probe_cost
from .options import (AUTO_OVERLAP_MAX_PX, BACKENDS, BEST_TILE_FALLBACK_PX, BEST_TILE_PX, COMPILE_MODES, DEFAULT_BATCH,
                      DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX, TILE_HELP, EngineOptions, Workload)
from .stitch_ops import TorchStitchOps

__all__ = ["AUTO_OVERLAP_MAX_PX", "BACKENDS", "BEST_TILE_FALLBACK_PX", "BEST_TILE_PX", "COMPILE_GAIN", "COMPILE_MODES",
           "DEFAULT_BATCH", "DEFAULT_OVERLAP_PX", "DEFAULT_TILE_PX", "DEVICES", "DTYPES", "NAMES", "PRECISIONS",
           "TILE_HELP", "Engine", "EngineOptions", "ModelCost", "Progress", "RunStats", "TorchStitchOps",
           "Workload", "available_memory_bytes", "check_output_fits", "compile_estimates", "cpu_bf16_flags",
           "inductor_cache_dir", "probe_cost", "resolve_device", "resolve_precision", "uses_compiled"]
