"""`upscale batch` against one `upscale IMAGE` process per image, and the model-busy fraction of batch.

Two measurements, each through the real command line in fresh processes (start-up included, as a
user would see it):

1. Small images: ``--small`` images of ``--small-px`` square through one ``upscale batch``, against
   separate ``upscale IMAGE`` invocations. Running all of them separately takes minutes, so by default
   the first ``--separate`` images are run one process each and the per-image mean is multiplied by
   ``--small`` (the report says when it is extrapolated); ``--separate 100`` runs them all. The
   outputs of both ways are compared byte for byte.
2. Large images: ``--large`` images of ``--large-px`` square through ``upscale batch``; the summary's
   ``model_s`` (time inside forward passes, from the engine's stats) over its ``elapsed_s`` (wall time
   of the decode | model | encode pipeline) is the fraction of time the model was busy.

The network has random weights of a real model's size (default: compact, realesr-general-x4v3's
64 features x 32 convs, x4); speed does not depend on the weights' values. Prints a Markdown table
and one JSON line with device, precision, threads and versions.

    python benchmarks/batch_speed.py
    python benchmarks/batch_speed.py --separate 100 --large 8 --large-px 768 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

NETS = {
    "compact": {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 32, "scale": 4, "act_type": "prelu"},
    "rrdbnet": {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 23, "num_grow_ch": 32, "scale": 4},
}


def synthetic_photo(size_px: int, seed: int) -> PILImage.Image:
    """Smooth shapes plus a little noise: compresses and decodes roughly like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    coarse = PILImage.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((size_px, size_px), PILImage.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-6, 7, smooth.shape, dtype=np.int16)
    return PILImage.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def upscale_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "upscale", *map(str, args)]


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds of one command (which must succeed) and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return wall, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=100, help="number of small images")
    ap.add_argument("--small-px", type=int, default=128)
    ap.add_argument("--separate", type=int, default=10, help="how many of them to run as separate processes")
    ap.add_argument("--large", type=int, default=6, help="number of large images")
    ap.add_argument("--large-px", type=int, default=512)
    ap.add_argument("--arch", choices=sorted(NETS), default="compact")
    ap.add_argument("--model", default=None, help="registry name or weights file instead of random weights")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here (default: temp)")
    opts = ap.parse_args()

    import torch

    from upscale import machine
    from upscale.archs import build_module
    from upscale.loading import save_model

    work = opts.workdir or Path(tempfile.mkdtemp(prefix="batch_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    model = opts.model
    if model is None:
        torch.manual_seed(0)
        hp = NETS[opts.arch]
        model = str(work / f"{opts.arch}.safetensors")
        save_model(model, build_module(opts.arch, hp).state_dict(), opts.arch, hp)
    engine = ["-m", model, "--precision", opts.precision, "--compile", opts.compile, "-q"]

    small, large = work / "small", work / "large"
    for folder, count, size_px in ((small, opts.small, opts.small_px), (large, opts.large, opts.large_px)):
        folder.mkdir(exist_ok=True)
        for i in range(count):
            synthetic_photo(size_px, i).save(folder / f"img{i:03d}.png")

    # 1. small images: one batch process against one process per image
    batch_s, out = timed(upscale_cmd("batch", small, "--out", work / "small_batch", "--overwrite", "--json",
                                     "--workers", opts.workers, *engine))
    assert json.loads(out)["done"] == opts.small
    separate_dir = work / "small_separate"
    separate_dir.mkdir(exist_ok=True)
    names = sorted(p.name for p in small.iterdir())[: opts.separate]
    per_image = []
    for name in names:
        target = separate_dir / name.replace(".png", "_x4.png")
        wall, _ = timed(upscale_cmd(small / name, "-o", target, "--force", *engine))
        per_image.append(wall)
        if target.read_bytes() != (work / "small_batch" / target.name).read_bytes():
            raise SystemExit(f"{name}: batch and single-image outputs differ")
    separate_s = float(np.mean(per_image)) * opts.small
    extrapolated = len(names) < opts.small

    # 2. large images: how much of the batch's wall time the model is computing
    large_s, out = timed(upscale_cmd("batch", large, "--out", work / "large_batch", "--overwrite", "--json",
                                     "--workers", opts.workers, *engine))
    large_summary = json.loads(out)
    busy = large_summary["model_s"] / large_summary["elapsed_s"]

    # the machine facts every benchmark records (upscale.machine), and this run's settings
    env = {**machine.environment("torch"), "precision": opts.precision, "compile": opts.compile,
           "arch": opts.arch if opts.model is None else opts.model, "workers": opts.workers}
    how = f"{len(names)} run, mean x {opts.small}" if extrapolated else f"all {opts.small} run"
    print("| measurement | value |\n|---|---|")
    print(f"| {opts.small} x {opts.small_px}px: one `upscale batch` | {batch_s:.1f} s |")
    print(f"| {opts.small} x {opts.small_px}px: separate `upscale IMAGE` ({how}) | {separate_s:.1f} s |")
    print(f"| speed-up of batch | {separate_s / batch_s:.1f}x |")
    print(f"| {opts.large} x {opts.large_px}px: batch pipeline wall time | {large_summary['elapsed_s']:.1f} s "
          f"({large_s:.1f} s with start-up) |")
    print(f"| {opts.large} x {opts.large_px}px: time in forward passes | {large_summary['model_s']:.1f} s |")
    print(f"| model-busy fraction | {busy:.1%} |")
    print(json.dumps({"small": {"count": opts.small, "px": opts.small_px, "batch_s": round(batch_s, 2),
                                "separate_s": round(separate_s, 2), "separate_run": len(names),
                                "separate_per_image_s": [round(s, 2) for s in per_image],
                                "speedup": round(separate_s / batch_s, 2)},
                      "large": {"count": opts.large, "px": opts.large_px, "wall_s": round(large_s, 2),
                                **{k: large_summary[k] for k in ("elapsed_s", "model_s", "megapixels_per_s")},
                                "model_busy_fraction": round(busy, 4)},
                      "env": env}))


if __name__ == "__main__":
    main()
