"""Measurements 1 and 2 of issue 7: our CLI and engine against the fp32 eager tile loop and ncnn.

Whole image: our CLI in fresh processes (auto; --compile on with a cold, then a warm cache), and our
engine in fp32 as the reference output for PSNR. Per tile, side by side: our engine (eager and
compiled) against the fp32 eager NCHW tile loop and ncnn, on the same windows of the default plan
(all the same shape), interleaved; the baselines' whole-image time is their per-tile time times
the number of tiles.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import load_avg, upscale_with_stats
from upscale import metrics, tiling
from upscale.engine import Engine, EngineOptions, Workload
from upscale.io import read_image

from .flops import conv_macs, peak_flops, rates
from .inputs import converted_model, load, make_input, wheel_param
from .procs import cli_env, run_process, upscale_cli
from .runners import NCNN_VARIANTS, TileRunner, interleaved_tiles, ncnn_runner, sample_windows, torch_fp32_runner

BASELINE = "(a) fp32 eager NCHW, one tile at a time"


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model_path = converted_model(args, workdir)
    model = load(model_path)
    image_path, pixels, source = make_input(Path(args.photo), args.size, args.size, workdir)
    h, w = pixels.shape[:2]
    eager = Engine(model, EngineOptions(compile="off", threads=args.threads))
    plan = eager.plan_for(h, w)              # the defaults in force, as the engine resolves them
    tile_flop = 2 * conv_macs(model.module, model.in_channels, plan.tile_h, plan.tile_w)
    image_flop = 2 * conv_macs(model.module, model.in_channels, h, w)
    peak = peak_flops(args.threads)
    executed = tile_flop * plan.num_tiles

    cache = workdir / f"cache-compile-{args.net}"
    whole_rows, cli_out = cli_rows(args, workdir, image_path, model_path, cache, executed, peak)
    whole_rows.append(reference_row(model, pixels, args.threads, executed, peak, cli_out, whole_rows))
    os.environ["UPSCALE_CACHE"] = str(cache)          # the compiled runner reuses the CLI's warm cache
    windows = sample_windows(plan, args.sample_tiles)
    tile_rows = tile_table(args, model, eager, plan, pixels, windows, tile_flop, peak)
    for row in tile_rows:
        if not row["method"].startswith("ours"):
            est = row["median_tile_s"] * plan.num_tiles
            whole_rows.append({"method": row["method"], "seconds": est, "timed": f"median tile x {plan.num_tiles} "
                               "tiles (estimate)", **rates(executed, est, peak)})
    return {"model": f"{args.net} ({model.arch}, {model.hparams})", "model_file": str(model_path),
            "input": f"{w}x{h} from {source}", "output": f"{w * model.scale}x{h * model.scale}",
            "tile_plan": {"tile": [plan.tile_h, plan.tile_w], "tiles": plan.num_tiles, "overlap_px": plan.overlap_px,
                          "computed_px_ratio": plan.num_tiles * plan.tile_h * plan.tile_w / (h * w),
                          "windows_timed": [v.index for v in windows], "rounds": args.rounds},
            "gflop_per_tile": tile_flop / 1e9, "gflop_executed": executed / 1e9,
            "gflop_whole_image_untiled": image_flop / 1e9, "peak": peak,
            "rows": whole_rows, "tile_rows": tile_rows, "summary": compare_summary(whole_rows, tile_rows)}


def cli_rows(args: argparse.Namespace, workdir: Path, image_path: Path, model_path: Path, cache: Path,
             executed: float, peak: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Whole image through the CLI, fresh processes; the two compile-on runs share one new cache
    folder (the first really starts cold). Returns the rows and each run's output file."""
    shutil.rmtree(cache, ignore_errors=True)
    base = upscale_cli() + [str(image_path), "-m", str(model_path), "--threads", str(args.threads), "-q", "--force"]
    rows, outputs = [], {}
    runs = [("ours CLI auto", [], workdir / "cache-eager")]
    if not args.no_compile:
        runs += [("ours CLI auto --compile on, cold cache", ["--compile", "on"], cache),
                 ("ours CLI auto --compile on, warm cache", ["--compile", "on"], cache)]
    if args.tuned_cache:  # a cache `upscale tune -m MODEL` filled on this machine: auto uses what it chose
        runs += [("ours CLI after upscale tune, 1st process", [], args.tuned_cache),
                 ("ours CLI after upscale tune, 2nd process", [], args.tuned_cache)]
    for label, flags, cache_dir in runs:
        out = workdir / f"cli_{len(outputs)}.png"
        r = run_process(base + flags + ["-o", str(out)], cli_env(cache_dir))
        outputs[label] = out
        rows.append({"method": label, "seconds": r["wall_s"], "timed": "whole process (start-up, load, "
                     "tiles, stitch, PNG write)", "maxrss_mb": r["maxrss_mb"], **rates(executed, r["wall_s"], peak),
                     "loadavg_before": r["loadavg_before"], "loadavg_after": r["loadavg_after"]})
    return rows, outputs


def reference_row(model: Any, pixels: np.ndarray, threads: int, executed: float, peak: dict[str, Any],
                  cli_out: dict[str, Path], cli_rows_: list[dict[str, Any]]) -> dict[str, Any]:
    """Our engine in fp32, the PSNR reference of the CLI runs (their rows get ``psnr_vs_fp32_db``)."""
    engine = Engine(model, EngineOptions(precision="fp32", compile="off", threads=threads))
    before = load_avg()
    reference, stats = upscale_with_stats(engine, pixels)
    del engine
    row = {"method": "ours engine fp32 (channels_last): the PSNR reference", "seconds": stats.total_s,
           "timed": "Engine.upscale, first call", **rates(executed, stats.total_s, peak),
           "loadavg_before": before, "loadavg_after": load_avg()}
    for cli_row in cli_rows_:
        cli_row["psnr_vs_fp32_db"] = metrics.psnr(read_image(cli_out[cli_row["method"]]).pixels, reference, 0,
                                                  y_channel=False)
    return row


def tile_runners(args: argparse.Namespace, model: Any, eager: Engine,
                 plan: tiling.TilePlan) -> tuple[dict[str, TileRunner], dict[str, dict[str, bool]]]:
    """Ours (eager; compiled for the eager plan's window shape, each window run whole, so that no
    padding is added), the fp32 tile loop and the ncnn variants; and each ncnn variant's options."""
    runners: dict[str, TileRunner] = {"ours engine auto (eager)": eager.upscale}
    if not args.no_compile:
        window = (plan.tile_h, plan.tile_w)
        compiled = Engine(model, EngineOptions(compile="on", tile_px=0, threads=args.threads),
                          work=Workload(window[0] * window[1], window))
        runners["ours engine auto, compiled"] = compiled.upscale
    runners[BASELINE] = torch_fp32_runner(model)
    ncnn_options = {}
    for variant in () if args.no_ncnn else NCNN_VARIANTS:
        runner, ncnn_options[variant] = ncnn_runner(wheel_param(args.net), variant, args.threads)
        runners[f"(b) ncnn {variant}"] = runner
    return runners, ncnn_options


def tile_table(args: argparse.Namespace, model: Any, eager: Engine, plan: tiling.TilePlan, pixels: np.ndarray,
               windows: list[tiling.Window], tile_flop: float, peak: dict[str, Any]) -> list[dict[str, Any]]:
    """Per tile, side by side on the same windows, interleaved; PSNR against the fp32 tile loop."""
    runners, ncnn_options = tile_runners(args, model, eager, plan)
    h, w = pixels.shape[:2]
    padded = np.pad(pixels, ((0, plan.height - h), (0, plan.width - w), (0, 0)), mode="reflect")
    crops = [np.ascontiguousarray(padded[v.y0:v.y0 + plan.tile_h, v.x0:v.x0 + plan.tile_w]) for v in windows]
    timed = interleaved_tiles(runners, crops, args.rounds, args.warmup)
    ref_tiles = np.stack(timed[BASELINE]["outputs"])
    rows = []
    for name, res in timed.items():
        secs = res["seconds"]
        rows.append({"method": name, "calls": len(secs), "median_tile_s": float(np.median(secs)),
                     "best_tile_s": min(secs), **rates(tile_flop, float(np.median(secs)), peak),
                     "psnr_vs_a_db": metrics.psnr(np.stack(res["outputs"]), ref_tiles, 0, y_channel=False),
                     "loadavg_first_last": [res["loadavg"][0], res["loadavg"][-1]]})
    for variant, options in ncnn_options.items():
        next(r for r in rows if r["method"] == f"(b) ncnn {variant}")["ncnn_options"] = options
    return rows


def compare_summary(whole_rows: list[dict[str, Any]], tile_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed-ups of ours over each baseline: per tile (median and best, side by side) for our engine,
    and whole image (CLI wall time vs the baseline's per-tile median x tiles) for our CLI."""
    out: dict[str, Any] = {}
    base_tile = [r for r in tile_rows if not r["method"].startswith("ours")]
    base_whole = [r for r in whole_rows if not r["method"].startswith("ours")]
    for r in tile_rows:
        if r["method"].startswith("ours"):
            entry = {f"x_vs_{_short(b)}_median": b["median_tile_s"] / r["median_tile_s"] for b in base_tile}
            entry.update({f"x_vs_{_short(b)}_best": b["best_tile_s"] / r["best_tile_s"] for b in base_tile})
            entry["psnr_db"] = r["psnr_vs_a_db"]
            out[f"{r['method']}, per tile"] = entry
    for r in whole_rows:
        if r["method"].startswith("ours CLI"):
            entry = {f"x_vs_{_short(b)}_median": b["seconds"] / r["seconds"] for b in base_whole}
            entry["psnr_db"] = r.get("psnr_vs_fp32_db")
            out[f"{r['method']}, whole image"] = entry
    for entry in out.values():
        ratios = [v for k, v in entry.items() if k.endswith("_median")]
        entry["target_8x_met"] = bool(ratios) and min(ratios) >= 8.0
        entry["target_50db_met"] = (entry["psnr_db"] or 0.0) >= 50.0
    return out


def _short(row: dict[str, Any]) -> str:
    """'a' for the fp32 tile loop, 'ncnn_fp32' etc. for the ncnn rows."""
    return "a" if row["method"] == BASELINE else row["method"].removeprefix("(b) ").replace(" ", "_")
