"""Checks behind the shipped default models (issue 8): bf16 safety and CPU speed.

    python benchmarks/default_models.py --images ../shared/data/Set5 --photo ../shared/data/BSD200/100075.png

1. bf16 safety: for each packaged model, PSNR between the fp32 and the auto-precision (bf16 autocast
   on CPUs with avx512_bf16 or AMX) outputs on natural images; a model is flagged ``bf16_safe`` in
   models.toml only when every image agrees to >= 50 dB.
2. Speed: a 1000x750 photo (the --photo image resized with Lanczos, read by path, never copied) x4 with
   default-x4 in auto precision: model time from the engine's counters (best of --repeats after a
   warm-up), and the whole `upscale` command's wall time in a fresh process (import, load, read,
   upscale, write).

Prints a markdown table and, with --json, the raw figures with device, dtype, threads and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from upscale import metrics, registry
from upscale.api import Upscaler, load_model
from upscale.dataprep import list_images
from upscale.engine import EngineOptions, RunStats
from upscale.io import read_image
from upscale.machine import environment
from upscale.registry import PackageSource


def bf16_agreement(images: list[Path]) -> list[dict]:
    rows = []
    for spec in registry.all_models():
        if not isinstance(spec.source, PackageSource):
            continue
        model = load_model(spec.name)
        fp32 = Upscaler(model, EngineOptions(precision="fp32", compile="off"))
        auto = Upscaler(model, EngineOptions(precision="bf16", compile="off"))   # bf16 itself, whatever the flag
        worst = float("inf")
        for path in images:
            px = read_image(path).pixels
            if px.shape[2] == 1:
                px = np.repeat(px, 3, axis=2)
            worst = min(worst, metrics.psnr(fp32.engine.upscale(px), auto.engine.upscale(px), 0, y_channel=False))
        rows.append({"model": spec.name, "auto_dtype": auto.engine.dtype.__repr__().replace("torch.", ""),
                     "min_psnr_fp32_vs_auto_db": round(worst, 2), "bf16_safe": bool(worst >= 50.0)})
    return rows


def speed(photo: Path, repeats: int, threads: int | None) -> dict:
    with PILImage.open(photo) as im:
        big = im.convert("RGB").resize((1000, 750), PILImage.Resampling.LANCZOS)
    pixels = np.asarray(big)
    model = load_model("default-x4")
    up = Upscaler(model, EngineOptions(precision="auto", compile="off", threads=threads))
    up.engine.upscale(pixels)  # warm-up
    times, totals = [], []
    for _ in range(repeats):
        stats = RunStats()
        up.engine.upscale(pixels, stats=stats)
        times.append(stats.forward_s)
        totals.append(stats.total_s)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photo_1000x750.png"
        big.save(src)
        cmd = [sys.executable, "-m", "upscale", str(src), "-q", "-o", str(Path(tmp) / "out.png")]
        if threads:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
    return {"input": "1000x750", "output": "4000x3000", "model": "default-x4", "precision": "auto",
            "dtype": str(up.engine.dtype).replace("torch.", ""), "tile_px": up.options.tile_px,
            "tile_shape": stats.tile_shape, "tiles": stats.tiles, "backend": stats.backend,
            "model_time_s_best": round(min(times), 3), "model_time_s_all": [round(t, 3) for t in times],
            "engine_total_s_best": round(min(totals), 3),
            "cli_wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of natural images for the bf16 check")
    ap.add_argument("--photo", type=Path, required=True, help="a photo, resized to 1000x750 for the speed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--speed-only", action="store_true",
                    help="skip the bf16 check (on a CPU without native bf16, torch emulates it: very slow)")
    args = ap.parse_args()
    images = list_images(args.images)
    result = {
        "env": {**environment(), "threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2)},
        "bf16": [] if args.speed_only else bf16_agreement(images),
        "speed": speed(args.photo, args.repeats, args.threads),
    }
    result["env"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| model | auto dtype | min PSNR fp32 vs auto (dB) | bf16-safe |\n|---|---|---|---|")
    for r in result["bf16"]:
        print(f"| {r['model']} | {r['auto_dtype']} | {r['min_psnr_fp32_vs_auto_db']} | {r['bf16_safe']} |")
    s = result["speed"]
    print(f"\n1000x750 -> 4000x3000 with default-x4 ({s['dtype']}, tile {s['tile_px']}: {s['tiles']} x "
          f"{s['tile_shape']}): model time {s['model_time_s_best']} s (best of {len(s['model_time_s_all'])}), "
          f"engine incl. tiling and stitching {s['engine_total_s_best']} s, whole command {s['cli_wall_s']} s")
    print(f"\nenv: {json.dumps(result['env'])}")


if __name__ == "__main__":
    main()
