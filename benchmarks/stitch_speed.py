"""Stitching alone: ``tiling.BandStitcher`` with its numpy ops vs the engine's torch ops, on the CPU,
same plan, same random tiles, interleaved.

    python benchmarks/stitch_speed.py --threads 2 --rounds 3

Cases are x4 plans of the default window shapes: 1000x750 input in windows of 192 and 496 px, and
4000x3000 in 496 px windows (a 192 MP output); ``--tile`` is the window's core, so each case gives
the core (window less 16 px of context on both sides). Tiles are random floats (stitching cost does not depend on content). Prints a
markdown table (seconds per whole image, median and min) and the largest difference between the two
outputs in 8-bit steps; ``--json`` writes the figures with the environment.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import publish  # noqa: E402

from upscale import tiling  # noqa: E402
from upscale.engine import TorchStitchOps  # noqa: E402

CASES = [(750, 1000, 160, 16), (750, 1000, 464, 16), (3000, 4000, 464, 16)]   # h, w, core, context
SCALE = 4


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for h, w, tile, overlap in CASES:
        plan = tiling.plan_tiles(h, w, tile, overlap, 1, SCALE)
        shape = (plan.tile_h * SCALE, plan.tile_w * SCALE, 3)
        tiles = [rng.random(shape, dtype=np.float32) for _ in range(2)]     # alternated over the windows
        runners = {"numpy ops": (None, tiles),
                   "torch ops": (TorchStitchOps(torch.device("cpu")), [torch.from_numpy(t) for t in tiles])}
        times: dict[str, list[float]] = {name: [] for name in runners}
        outs = {}
        for _ in range(args.rounds):
            for name, (ops, arrays) in runners.items():
                out = np.empty((h * SCALE, w * SCALE, 3), np.uint8)
                stitcher = tiling.BandStitcher(plan, out, ops)
                t0 = time.perf_counter()
                for win in plan.windows():
                    stitcher.add(win, arrays[win.index % 2])
                times[name].append(time.perf_counter() - t0)
                outs[name] = out
        diff = int(np.abs(outs["numpy ops"].astype(np.int16) - outs["torch ops"]).max())
        for name, t in times.items():
            rows.append({"input": f"{w}x{h}", "tile": tile, "window": plan.tile_h, "windows": plan.num_tiles, "ops": name,
                         "median_s": statistics.median(t), "min_s": min(t), "runs": len(t),
                         "max_diff_8bit": diff})
    publish("stitch_speed.py", argv, args.json, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
