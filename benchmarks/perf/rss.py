"""Measurement 4 of issue 7: peak RSS of one CLI process upscaling a 4000x3000 input, by
/usr/bin/time -v (and the kernel's wait4 figure for the same process tree)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from .inputs import converted_model, make_input
from .procs import cli_env, run_process, upscale_cli


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model_path = converted_model(args, workdir)
    width, height = args.rss_size
    image_path, pixels, source = make_input(Path(args.photo), width, height, workdir)
    del pixels
    out = workdir / f"rss_out.{args.format}"
    cmd = upscale_cli() + [str(image_path), "-m", str(model_path), "--threads", str(args.threads), "-q",
                           "--format", args.format, "-o", str(out)]
    gnu_time = shutil.which("time") or "/usr/bin/time"
    r = run_process([gnu_time, "-v"] + cmd, cli_env(workdir / "cache-eager"))
    fields = {}
    for line in r["stderr"].splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    maxrss_kb = int(fields["Maximum resident set size (kbytes)"])
    out_bytes = out.stat().st_size
    out.unlink()
    row = {"command": " ".join(cmd), "output_format": args.format,
           "output_px": f"{width * 4}x{height * 4}", "output_file_mb": out_bytes / 1e6,
           "output_array_mb": width * 4 * height * 4 * 3 / 1e6, "max_rss_mb_time_v": maxrss_kb / 1024,
           "max_rss_mb_wait4": r.get("maxrss_mb"), "wall_s": r["wall_s"],
           "elapsed_time_v": fields.get("Elapsed (wall clock) time (h:mm:ss or m:ss)"),
           "loadavg_before": r["loadavg_before"], "loadavg_after": r["loadavg_after"]}
    return {"model": args.net, "input": f"{width}x{height} from {source}", "rows": [row],
            "summary": {"max_rss_gb": maxrss_kb * 1024 / 1e9, "target_3gb_met": maxrss_kb * 1024 <= 3e9}}
