"""One window at a time, ours and the baselines side by side: each runner takes an (th, tw, 3) uint8
window and returns the (th*s, tw*s, 3) uint8 result; ``interleaved_tiles`` times them round-robin."""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from _common import load_avg
from upscale import tiling
from upscale.model import Model

TileRunner = Callable[[np.ndarray], np.ndarray]   # (th, tw, 3) uint8 window -> (th*s, tw*s, 3) uint8
NCNN_VARIANTS = ("fp32", "default", "bf16")


def sample_windows(plan: tiling.TilePlan, count: int) -> list[tiling.Window]:
    """``count`` windows spread evenly over the plan (all of them when ``count`` is 0 or too large)."""
    windows = list(plan.windows())
    if count <= 0 or count >= len(windows):
        return windows
    picks = sorted({int(round(i)) for i in np.linspace(0, len(windows) - 1, count)})
    return [windows[i] for i in picks]


def _chw(window: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(window.transpose(2, 0, 1), dtype=np.float32) / 255.0


def _to_uint8(chw: np.ndarray) -> np.ndarray:
    return np.clip(chw.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def torch_fp32_runner(model: Model) -> TileRunner:
    """What Real-ESRGAN's ``tile_process`` does per tile: the window as a (1, 3, h, w) float32 NCHW
    tensor in [0, 1] through the fp32 eager network (default memory format, no autocast), then back
    to uint8 for pasting (the paste itself, a copy of the tile's core, is left out)."""
    module = copy.deepcopy(model.module).float().eval()

    def run(window: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _to_uint8(module(torch.from_numpy(_chw(window))[None])[0].numpy())

    return run


def _ncnn_net(param: Path, variant: str, threads: int) -> tuple[Any, dict[str, bool]]:
    """An ncnn.Net on the CPU with the options of ``variant`` set, and those options as a dict."""
    import ncnn

    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = threads
    if variant in ("fp32", "bf16"):
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = variant == "bf16"
        if hasattr(opt, "use_bf16_packed"):
            opt.use_bf16_packed = variant == "bf16"
    options = {k: bool(getattr(opt, k)) for k in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                                                  "use_bf16_storage", "use_bf16_packed", "use_packing_layout")
               if hasattr(opt, k)}
    if net.load_param(str(param)) != 0 or net.load_model(str(param.with_suffix(".bin"))) != 0:
        sys.exit(f"ncnn could not load {param}")
    return net, options


def ncnn_runner(param: Path, variant: str, threads: int) -> tuple[TileRunner, dict[str, bool]]:
    """The PyPI ncnn package running the original .param/.bin on the CPU, one window per call.
    ``fp32``: fp16 and bf16 storage/arithmetic off; ``default``: ncnn's default options (fp16 storage
    and arithmetic allowed where the CPU supports them); ``bf16``: bf16 storage on, fp16 off."""
    import ncnn

    from upscale.ncnn import inspect_ncnn

    blobs = inspect_ncnn(param)
    net, options = _ncnn_net(param, variant, threads)

    def run(window: np.ndarray) -> np.ndarray:
        chw = _chw(window)   # ncnn.Mat wraps this buffer without copying: keep it alive until extract
        extractor = net.create_extractor()
        extractor.input(blobs.input_blob, ncnn.Mat(chw))
        ret, out = extractor.extract(blobs.output_blob)
        if ret != 0:
            sys.exit(f"ncnn extract failed ({ret}) for {param}")
        return _to_uint8(np.array(out))

    return run, options


def interleaved_tiles(runners: dict[str, TileRunner], windows: list[np.ndarray], rounds: int,
                      warmup: int) -> dict[str, dict[str, Any]]:
    """Time every runner on every window, round-robin (runner inside window inside round) so that all
    of them see the same changes in machine load; ``warmup`` untimed calls each on the first window
    first (this is where a compiled runner compiles). Returns per runner: seconds per call, outputs of
    the first round, and the load average at the start of each round."""
    for run in runners.values():
        for _ in range(warmup):
            run(windows[0])
    res: dict[str, dict[str, Any]] = {k: {"seconds": [], "outputs": [], "loadavg": []} for k in runners}
    for r in range(rounds):
        for window in windows:
            for name, run in runners.items():
                res[name]["loadavg"].append(load_avg())
                t0 = time.perf_counter()
                y = run(window)
                res[name]["seconds"].append(time.perf_counter() - t0)
                if r == 0:
                    res[name]["outputs"].append(y)
    return res
