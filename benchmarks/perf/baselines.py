"""The two whole-command baselines of issue 14, Must show 1, each run in a fresh process of its own
(``perf_cpu.py _baseline``, started and timed by ``compare --whole-baselines``):

- ``ncnn``: the PyPI ``ncnn`` package running the original .param/.bin on the CPU;
- ``loop``: Real-ESRGAN's ``RealESRGANer.tile_process`` done by hand: the image as a float32 NCHW
  tensor, cut into ``tile`` x ``tile`` cores plus ``pad`` px of context (clipped at the image edges,
  as Real-ESRGAN's ``tile_pad``), each window through the eager fp32 network, its core pasted.

Both read the PNG with Pillow, tile the image the same way (``tile_boxes``: Real-ESRGAN's loop; the
defaults, tile 200 and pad 10, are realesrgan-ncnn-vulkan's on a GPU with > 1.9 GB, and its
``prepadding``), and write the PNG with Pillow, so each process is the whole command a user of that
tool runs. ``tile`` 0: the whole image in one window (Real-ESRGAN's own default). The ncnn process
never imports torch.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from .runners import TileRunner, ncnn_runner, torch_fp32_runner

DEFAULT_TILE_PX = 200
DEFAULT_PAD_PX = 10


def tile_boxes(height: int, width: int, tile: int, pad: int) -> Iterator[tuple[slice, slice, slice, slice]]:
    """Real-ESRGAN's tiles: (window rows, window cols, core rows within the window, core cols within
    the window), input px. The cores cover the image exactly once; ``tile`` 0 = one whole window."""
    if tile <= 0:
        yield slice(0, height), slice(0, width), slice(0, height), slice(0, width)
        return
    for ty in range(math.ceil(height / tile)):
        for tx in range(math.ceil(width / tile)):
            y0, x0 = ty * tile, tx * tile
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            wy0, wx0 = max(y0 - pad, 0), max(x0 - pad, 0)
            wy1, wx1 = min(y1 + pad, height), min(x1 + pad, width)
            yield (slice(wy0, wy1), slice(wx0, wx1), slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0))


def computed_px(height: int, width: int, tile: int, pad: int) -> int:
    """Input pixels the windows of ``tile_boxes`` add up to (>= height x width: the context)."""
    return sum((r.stop - r.start) * (c.stop - c.start) for r, c, _, _ in tile_boxes(height, width, tile, pad))


def tile_loop(pixels: np.ndarray, run: TileRunner, scale: int, tile: int, pad: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H*s, W*s, 3) uint8, window by window, cores pasted (no blending)."""
    h, w = pixels.shape[:2]
    out = np.empty((h * scale, w * scale, 3), dtype=np.uint8)
    for rows, cols, core_r, core_c in tile_boxes(h, w, tile, pad):
        y = run(np.ascontiguousarray(pixels[rows, cols]))
        out[(rows.start + core_r.start) * scale:(rows.start + core_r.stop) * scale,
            (cols.start + core_c.start) * scale:(cols.start + core_c.stop) * scale] = \
            y[core_r.start * scale:core_r.stop * scale, core_c.start * scale:core_c.stop * scale]
    return out


def run_baseline(args: argparse.Namespace) -> dict[str, object]:
    """The child process: read ``args.image``, upscale it with ``args.method``, write ``args.output``."""
    from PIL import Image

    with Image.open(args.image) as im:
        pixels = np.asarray(im.convert("RGB"))
    if args.method == "ncnn":
        run, options = ncnn_runner(Path(args.param), args.variant, args.threads, blobs=tuple(args.blobs))
        scale = args.scale
    else:
        import torch

        from upscale.api import load_model

        torch.set_num_threads(args.threads)
        model = load_model(args.model)
        run, options, scale = torch_fp32_runner(model), {}, model.scale
    out = tile_loop(pixels, run, scale, args.tile, args.pad)
    Image.fromarray(out).save(args.output)
    h, w = pixels.shape[:2]
    return {"method": args.method, "options": options, "tile": args.tile, "pad": args.pad,
            "computed_px_ratio": computed_px(h, w, args.tile, args.pad) / (h * w)}
