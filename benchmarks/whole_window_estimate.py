"""One window beyond the largest measured side vs the measured sides' tiles: is the planner's estimate
(``engine.cost.whole_window``) right, and what does the choice save?

    python benchmarks/whole_window_estimate.py --model x4plus.safetensors --photo ../shared/data/Set14/man.png \
        --sizes 600 --rounds 2 --json docs/perf/whole_window_x4plus.json

Run after ``upscale tune -m MODEL`` (the tuning cache's table of seconds per window side is what the
planner estimates from; ``UPSCALE_CACHE`` chooses the cache). For each square centre crop of the
photo (read, never copied; it must be at least that large), the engine in ``--precision auto`` prints the planner's estimate for every candidate side, with
and without the extrapolated one window, then times the model part of both plans (the estimate's
cheapest measured side, and one window) alternately, ``--rounds`` times each, after one warm-up of
each (an OpenVINO shape's compile is not timed), and the PSNR between the two outputs (exact tiling:
both compute the same function where the context covers the receptive radius).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _common import publish
from upscale.engine import Engine, EngineOptions
from upscale.engine.cost import measured_windows
from upscale.io import read_image
from upscale.loading import load_model
from upscale.metrics import psnr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="weights file or registry name")
    ap.add_argument("--photo", required=True, type=Path)
    ap.add_argument("--sizes", default="600", help="comma-separated crop sides")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    pixels = read_image(args.photo).pixels
    auto = Engine(model, EngineOptions(device="cpu", precision="auto"))
    table = measured_windows(auto.cost, auto.dtype, auto.device, auto.options.batch, auto.backend)
    if not table:
        raise SystemExit(f"nothing tuned for {args.model} here: run `upscale tune -m {args.model}` first")
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        if min(pixels.shape[:2]) < side:
            raise SystemExit(f"{args.photo} is smaller than {side} px")
        y, x = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
        image = pixels[y:y + side, x:x + side]
        measured = auto.estimate_s(side, side, table)
        extended = auto.estimate_s(side, side, auto._with_whole_image(table, side, side))
        tiled_side = min(measured, key=lambda s: (measured[s], -s))
        plans = {"tiles": auto._core_of(tiled_side, side, side), "one window": 0}
        engines = {name: Engine(model, EngineOptions(device="cpu", precision="auto", tile_px=core))
                   for name, core in plans.items()}
        outputs = {name: engine.upscale(image) for name, engine in engines.items()}     # warm-up, compiles
        times: dict[str, list[float]] = {name: [] for name in plans}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                t0 = time.perf_counter()
                engine.upscale(image)
                times[name].append(time.perf_counter() - t0)
        auto_core = auto.tile_px_for(side, side)
        for name, core in plans.items():
            rows.append({"crop": side, "plan": name, "tile_px": core,
                         "estimate_s": round(measured[tiled_side], 1) if core else
                         (round(extended[side], 1) if side in extended else None),   # None: not beyond the table
                         "median_s": round(statistics.median(times[name]), 2), "min_s": round(min(times[name]), 2),
                         "auto_picks": core == auto_core})
        rows.append({"crop": side, "plan": "psnr tiles vs one window (dB)",
                     "median_s": round(psnr(outputs["tiles"], outputs["one window"], crop_border=0, y_channel=False), 2)})
        print({s: round(v, 1) for s, v in sorted(extended.items())})
    publish("whole_window_estimate.py", argv, args.json, rows=rows,
            env_extra={"model": str(args.model), "backend": auto.backend, "precision": str(auto.dtype),
                       "table_sides": sorted(table)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
