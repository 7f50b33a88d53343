"""Measurement 3 of issue 7: default tiling vs one whole-image pass (--tile 0), auto precision,
eager, alternating ``--rounds`` times; best and median of each."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import load_avg, upscale_with_stats
from upscale import metrics
from upscale.engine import Engine, EngineOptions

from .inputs import converted_model, load, make_input

TILED, WHOLE = "default tiling", "whole image (--tile 0)"


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model = load(converted_model(args, workdir))
    _, pixels, source = make_input(Path(args.photo), args.size, args.size, workdir)
    engines = {TILED: Engine(model, EngineOptions(compile="off", threads=args.threads)),
               WHOLE: Engine(model, EngineOptions(compile="off", tile_px=0, threads=args.threads))}
    times: dict[str, list[float]] = {k: [] for k in engines}
    loads: dict[str, list] = {k: [] for k in engines}
    info: dict[str, dict] = {}
    outputs = {}
    for engine in engines.values():
        for _ in range(args.warmup):
            engine.upscale(pixels)
    for _ in range(args.rounds):
        for label, engine in engines.items():
            loads[label].append(load_avg())
            outputs[label], stats = upscale_with_stats(engine, pixels)
            times[label].append(stats.total_s)
            tile_px = engine.tile_px_for(*pixels.shape[:2])
            info[label] = {"tiles": stats.tiles, "tile_shape": stats.tile_shape,
                           "overlap_px": engine.overlap_px if tile_px else 0,
                           "precision": stats.precision}
    rows = [{"method": k, **info[k], "best_s": min(v), "median_s": float(np.median(v)), "all_s": v,
             "loadavg_before_each": loads[k]} for k, v in times.items()]
    return {"model": f"{args.net} ({model.arch})", "input": f"{pixels.shape[1]}x{pixels.shape[0]} from {source}",
            "rows": rows, "summary": summary(*rows, outputs)}


def summary(tiled: dict[str, Any], whole: dict[str, Any], outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    ratio = tiled["best_s"] / whole["best_s"]
    return {"tiled_over_whole_best": ratio, "tiled_over_whole_median": tiled["median_s"] / whole["median_s"],
            "target_10pct_met": ratio <= 1.10,
            "psnr_tiled_vs_whole_db": metrics.psnr(outputs[TILED], outputs[WHOLE], 0, y_channel=False)}
