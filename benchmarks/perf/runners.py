"""One window at a time, ours and the baselines side by side: each runner takes an (th, tw, 3) uint8
window and returns the (th*s, tw*s, 3) uint8 result; ``interleaved_tiles`` times them round-robin."""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from _common import load_avg
from upscale import tiling

if TYPE_CHECKING:
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
    import torch   # here, not at import: the ncnn baseline's process never loads torch

    module = copy.deepcopy(model.module).float().eval()

    def run(window: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _to_uint8(module(torch.from_numpy(_chw(window))[None])[0].numpy())

    return run


class NcnnPools:
    """One blob pool and one workspace pool for every ncnn net of a run.

    An ``ncnn.Net`` given no allocators makes its own two pools, and a pool keeps every buffer it
    ever handed out until the net is freed. x4plus peaks at ~62 KB per input pixel of a window
    (fp32; measured 250 MB at 64x64, 563 MB at 96x96), so the three variants of the per-window table
    held three peaks at once: 3 x ~9 GB at the 384-px windows of the current fallback plan, the
    24 GB OOM of issue 14's ``compare --tuned-cache`` runs. Shared, the pools hold one peak: each
    variant reuses the buffers the previous one freed. Size compare ratio 0 as in ncnn's own pools
    (any free buffer large enough is reused)."""

    def __init__(self) -> None:
        import ncnn

        self.blob, self.workspace = ncnn.PoolAllocator(), ncnn.PoolAllocator()
        for pool in (self.blob, self.workspace):
            pool.set_size_compare_ratio(0.0)

    def clear(self) -> None:
        """Give the pooled buffers back (only when no net is running)."""
        self.blob.clear()
        self.workspace.clear()


def _ncnn_net(param: Path, variant: str, threads: int, pools: NcnnPools | None) -> tuple[Any, dict[str, bool]]:
    """An ncnn.Net on the CPU with the options of ``variant`` set (and ``pools``' allocators, when
    given), and those options as a dict."""
    import ncnn

    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = threads
    if pools is not None:
        opt.blob_allocator, opt.workspace_allocator = pools.blob, pools.workspace
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


def ncnn_blobs(param: Path) -> tuple[str, str]:
    """The (input, output) blob names of an ncnn model (parses the whole pair: seconds for x4plus)."""
    from upscale.ncnn import inspect_ncnn

    blobs = inspect_ncnn(param)
    return blobs.input_blob, blobs.output_blob


def ncnn_runner(param: Path, variant: str, threads: int, pools: NcnnPools | None = None,
                blobs: tuple[str, str] | None = None) -> tuple[TileRunner, dict[str, bool]]:
    """The PyPI ncnn package running the original .param/.bin on the CPU, one window per call.
    ``fp32``: fp16 and bf16 storage/arithmetic off; ``default``: ncnn's default options (fp16 storage
    and arithmetic allowed where the CPU supports them); ``bf16``: bf16 storage on, fp16 off. Give
    every runner of one process the same ``pools`` (see ``NcnnPools``); None: the net's own pools.
    ``blobs``: (input, output) blob names, when known (else read from ``param``)."""
    import ncnn

    in_blob, out_blob = blobs or ncnn_blobs(param)
    net, options = _ncnn_net(param, variant, threads, pools)

    def run(window: np.ndarray) -> np.ndarray:
        chw = _chw(window)   # ncnn.Mat wraps this buffer without copying: keep it alive until extract
        extractor = net.create_extractor()
        extractor.input(in_blob, ncnn.Mat(chw))
        ret, out = extractor.extract(out_blob)
        if ret != 0:
            sys.exit(f"ncnn extract failed ({ret}) for {param}")
        return _to_uint8(np.array(out))

    run.pools = pools          # type: ignore[attr-defined]  # the runner keeps its allocators alive
    return run, options


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def check_ncnn_memory(run: TileRunner, window_px: int, what: str, probe_px: int = 64) -> dict[str, float]:
    """Refuse (exit with a message) before timing when one ``window_px``-pixel window through ``run``
    would need more than the memory available: ncnn's peak per pixel is measured on a ``probe_px``
    square (the pools keep it resident, so the RSS growth is the peak) and scaled linearly (it is:
    x4plus 250 MB at 64², 563 MB at 96²). Returns the figures."""
    import torch

    from upscale.device import available_memory_bytes

    before = rss_bytes()
    run(np.zeros((probe_px, probe_px, 3), dtype=np.uint8))
    per_px = max(0, rss_bytes() - before) / probe_px**2
    need, free = per_px * window_px, available_memory_bytes(torch.device("cpu"))
    if need > 0.9 * free:
        sys.exit(f"{what}: ncnn would need ~{need / 1e9:.1f} GB for one {window_px}-px window "
                 f"({per_px / 1e3:.0f} KB per pixel, measured at {probe_px}x{probe_px}); {free / 1e9:.1f} GB "
                 "available. Use smaller windows (--size, --baseline-tile) or --no-ncnn.")
    return {"ncnn_bytes_per_px": per_px, "ncnn_window_need_gb": need / 1e9, "available_gb": free / 1e9}


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
