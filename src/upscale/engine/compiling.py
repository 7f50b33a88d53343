"""The torch.compile policy: whether to compile (``compile="auto"`` weighs the estimated time saved
against the estimated compile time), how (repeated blocks compiled once), where compiled graphs are
cached (``machine.inductor_cache_dir()``), and which windows may use the compiled graph.

Compilation is considered on CPU only, where it was measured (docs/perf.md). A compiled engine
compiles one window shape with one static batch size: the window shape tiling gives for the size the
caller announces (``Workload.shape``: a single image, or a folder of same-sized photos), else the full
window of the tile (core + context on both sides). Windows of any other shape (images smaller than a
window, or of another size) run through the eager module, so the output never depends on compiling:
nothing is ever padded up to the compiled shape.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..machine import use_inductor_cache
from .cost import ModelCost, region_blocks, tuned

log = logging.getLogger(__name__)

# compile="auto": on when the compile time is repaid by what it saves, i.e. when the eager seconds of the
# announced work times the gain reach the compile time. Where ``upscale tune`` measured this network here
# (``upscale.tune``), its figures are used: eager seconds per megapixel, the gain of the compiled graph and
# the seconds its compile took. Otherwise these fallbacks, measured on this project's CPU (AMD EPYC Zen 5,
# avx512_bf16, no AMX, 2 threads; docs/perf.md): compiling saves ~5-13% per pixel in bf16 (oneDNN's
# eager convolutions already run near the bf16 GEMM ceiling; more for PReLU nets, whose activation it
# fuses), and a cold compile takes about COMPILE_BASE_S plus COMPILE_PER_CONV_S per traced conv (repeated
# blocks are compiled once: realesrgan-x4plus ~16 s, realesr-animevideov3 ~13 s). Eager conv throughput
# per thread is EAGER_CPU_MACS_PER_S (RRDBNet x4: ~0.34 TMAC/s bf16, 0.17 fp32, 2 threads). On a CPU
# with AMX these are known to be wrong (issue 14): tune there.
COMPILE_GAIN = 0.05
COMPILE_BASE_S = 10.0
COMPILE_PER_CONV_S = 0.3
EAGER_CPU_MACS_PER_S = {torch.bfloat16: 1.7e11, torch.float32: 8.5e10}


def compile_estimates(cost: ModelCost, dtype: torch.dtype, threads: int, expected_px: int) -> tuple[float, float]:
    """(eager seconds for ``expected_px`` input pixels, seconds to compile) on this CPU, from the
    fallback constants above (what ``want_compile`` uses when nothing was tuned)."""
    eager_s = expected_px * cost.macs_per_px / (EAGER_CPU_MACS_PER_S.get(dtype, 5e10) * threads)
    return eager_s, COMPILE_BASE_S + COMPILE_PER_CONV_S * cost.compiled_convs


def compile_figures(cost: ModelCost, dtype: torch.dtype, device: torch.device,
                    expected_px: int) -> tuple[float, float, float, str]:
    """(eager seconds for ``expected_px`` input pixels, gain, compile seconds, where they come from):
    what ``upscale tune`` measured for this network here, else the fallback constants."""
    result = tuned(cost, dtype, device)
    measured = result.get("compile") if result else None
    if measured:
        eager_s = expected_px * float(result["s_per_mp"]) / 1e6
        return eager_s, float(measured["gain"]), float(measured["compile_s"]), "tuned"
    eager_s, compile_s = compile_estimates(cost, dtype, torch.get_num_threads(), expected_px)
    return eager_s, COMPILE_GAIN, compile_s, "defaults"


def want_compile(mode: str, device: torch.device, cost: ModelCost, dtype: torch.dtype, expected_px: int) -> bool:
    """The decision for ``compile=mode`` ("auto", "on", "off") given the work announced."""
    if mode != "auto":
        return mode == "on"
    if device.type != "cpu":
        log.info("compile auto: off on %s (only measured on CPU); use compile on to force", device.type)
        return False
    if not expected_px:
        log.debug("compile auto: off (amount of work not known)")
        return False
    eager_s, gain, compile_s, source = compile_figures(cost, dtype, device, expected_px)
    decision = eager_s * gain >= compile_s
    # said when it turns on (it changes what the user waits for); a debug line when it stays off
    log.log(logging.INFO if decision else logging.DEBUG,
            "compile auto: %s (would save ~%.0f s of an estimated %.0f s eager run; compiling takes ~%.0f s; %s)",
            "on" if decision else "off", eager_s * gain, eager_s, compile_s, source)
    return decision


def uses_compiled(compiled_shape: tuple[int, int] | None, window_shape: tuple[int, int]) -> bool:
    """Whether windows of ``window_shape`` run through the compiled graph: only the one shape it was
    compiled for (any other would be padded or recompiled; it runs eagerly, with the same result).
    ``compiled_shape`` None (whole images, no window shape fixed): every shape, one graph per size."""
    return compiled_shape is None or tuple(window_shape) == tuple(compiled_shape)


def compiled_module(module: nn.Module, arch: str) -> nn.Module:
    """``module`` compiled for inference; ``module`` itself is left as it was. Deep networks made of
    repeated identical blocks (RRDBNet's 23 RRDBs) are compiled block by block, on a copy: one graph is
    traced and compiled for the first block and reused by the others, which cut realesrgan-x4plus' cold
    compile from ~73 s to ~16 s (warm cache: ~6 s) at the same speed (docs/perf.md). Blocks keep their
    weights as graph inputs, so they are not frozen. Small networks are compiled whole with freezing
    (weights folded in as constants); freezing measured no faster here, but costs nothing for them.
    Compiling itself happens on the first call."""
    use_inductor_cache()
    if not region_blocks(module, arch):
        return torch.compile(module, dynamic=False, options={"freezing": True})
    module = copy.deepcopy(module)   # nn.Module.compile works in place
    for blk in region_blocks(module, arch):
        blk.compile(dynamic=False)
    return module
