"""Issue 2, Must show 1: tiled (default tile and overlap, plus any ``--overlaps``) vs one
whole-image pass at the same precision, PSNR on a natural image; also each precision's whole-image
output against fp32 when fp32 is among ``--precisions``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import load_avg, upscale_with_stats
from upscale import metrics
from upscale.engine import Engine, EngineOptions
from upscale.model import Model

from .inputs import converted_model, load, make_input


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model = load(converted_model(args, workdir))
    _, pixels, source = make_input(Path(args.photo), args.size, args.size, workdir)
    overlaps: list[int | None] = [None, *args.overlaps]   # None: the engine's default
    rows, wholes = [], {}
    for precision in args.precisions:
        wholes[precision] = Engine(model, EngineOptions(precision=precision, compile="off", tile_px=0,
                                                        threads=args.threads)).upscale(pixels)
        for overlap in overlaps:
            rows.append(seam_row(model, pixels, wholes[precision], precision, overlap, args.threads))
    result = {"model": f"{args.net} ({model.arch}, {model.hparams})",
              "input": f"{args.size}x{args.size} from {source}", "rows": rows}
    if "fp32" in wholes:
        result["summary"] = {f"whole_{p}_vs_whole_fp32_db": metrics.psnr(img, wholes["fp32"], 0, y_channel=False)
                             for p, img in wholes.items() if p != "fp32"}
    return result


def seam_row(model: Model, pixels: np.ndarray, whole: np.ndarray, precision: str, overlap: int | None,
             threads: int) -> dict[str, Any]:
    """One tiled run (default tile, ``overlap`` or the default) against the whole-image output."""
    before = load_avg()
    engine = Engine(model, EngineOptions(precision=precision, compile="off", overlap_px=overlap, threads=threads))
    tiled, stats = upscale_with_stats(engine, pixels)
    tile_px = engine.tile_px_for(*pixels.shape[:2])
    psnr = metrics.psnr(tiled, whole, 0, y_channel=False)
    return {"precision": stats.precision, "tile_px": tile_px,
            "overlap_px": engine.overlap_px, "default": overlap is None,
            "tiles": stats.tiles, "tile_shape": stats.tile_shape,
            "receptive_radius_px": model.receptive_radius, "psnr_tiled_vs_whole_db": psnr,
            "max_abs_diff": int(np.abs(tiled.astype(np.int16) - whole).max()),
            "target_45db_met": psnr >= 45.0, "loadavg_before": before, "loadavg_after": load_avg()}
