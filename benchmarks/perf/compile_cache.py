"""Measurement 5 of issue 7: two fresh processes with --compile on sharing one (initially empty)
cache folder. Each reports when its first output was ready (from the parent's spawn) and what
compiling cost it (compiled minus eager engine construction, plus first minus second call).

The child is this script again, as ``perf_cpu.py _first-output`` (``first_output`` below)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _common import seconds
from upscale.engine import Engine, EngineOptions, Workload
from upscale.io import read_image

from .inputs import converted_model, load, make_input
from .procs import cli_env, folder_mb, run_process

PERF_CPU = Path(__file__).resolve().parents[1] / "perf_cpu.py"


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model_path = converted_model(args, workdir)
    image_path, _, source = make_input(Path(args.photo), args.size, args.size, workdir)
    cache = workdir / f"cache-compile-probe-{args.net}"
    shutil.rmtree(cache, ignore_errors=True)           # process 1 must really start cold
    rows = []
    for label in ("process 1 (cold cache)", "process 2 (warm cache)"):
        spawn = time.time()
        r = run_process([sys.executable, str(PERF_CPU), "_first-output", "--model", str(model_path),
                         "--image", str(image_path), "--threads", str(args.threads)], cli_env(cache))
        child = json.loads(r["stdout"].strip().splitlines()[-1])
        rows.append(process_row(label, spawn, child, r, cache))
    cold, warm = rows
    return {"model": args.net, "input": f"{args.size}x{args.size} from {source}", "rows": rows,
            "summary": {"cold_compile_overhead_s": cold["compile_overhead_s"],
                        "warm_time_to_first_output_s": warm["time_to_first_output_s"],
                        "warm_first_output_over_cold_compile": warm["time_to_first_output_s"]
                        / cold["compile_overhead_s"]}}


def process_row(label: str, spawn: float, child: dict[str, Any], r: dict[str, Any], cache: Path) -> dict[str, Any]:
    # what compiling adds: building the compiled engine instead of an eager one, plus any extra
    # time of its first call over its second
    overhead = (child.get("compiled_init_s", 0.0) - child.get("eager_init_s", 0.0)
                + child["first_call_s"] - child["second_call_s"])
    return {"process": label, "time_to_first_output_s": child["first_output_at"] - spawn,
            "import_and_load_s": child.get("loaded_at", child["ready_at"]) - spawn,
            "eager_engine_init_s": child.get("eager_init_s"),
            "compiled_engine_init_s": child.get("compiled_init_s"), "first_call_s": child["first_call_s"],
            "second_call_s": child["second_call_s"], "compile_overhead_s": overhead,
            "process_wall_s": r["wall_s"], "cache_mb": folder_mb(cache), "loadavg_before": r["loadavg_before"],
            "loadavg_after": r["loadavg_after"]}


def first_output(args: argparse.Namespace) -> dict[str, float]:
    """(The child.) Load the model, build an eager engine and then a compiled one (which may compile
    while it is built), upscale twice with the compiled one; timestamps and durations."""
    torch.set_num_threads(args.threads)
    model = load(Path(args.model))
    pixels = read_image(args.image).pixels
    loaded = time.time()
    eager_init = seconds(lambda: Engine(model, EngineOptions(compile="off", threads=args.threads)))
    t0 = time.perf_counter()
    h, w = pixels.shape[:2]   # told the image size, as the CLI tells it: the compiled tile fits the image
    engine = Engine(model, EngineOptions(compile="on", threads=args.threads), work=Workload(h * w, (h, w)))
    compiled_init = time.perf_counter() - t0
    ready = time.time()
    first = seconds(lambda: engine.upscale(pixels))
    first_output_at = time.time()
    second = seconds(lambda: engine.upscale(pixels))
    return {"loaded_at": loaded, "ready_at": ready, "first_output_at": first_output_at,
            "eager_init_s": eager_init, "compiled_init_s": compiled_init, "first_call_s": first,
            "second_call_s": second}
