"""Two levers that could beat fp32 on a CPU without AMX, measured: (1) fp16 compute where the CPU has
avx512_fp16 (torch channels_last convolution, OpenVINO's f16 inference precision), (2) Winograd
F(4x4, 3x3) written with torch ops (its batched GEMMs alone, the part that must beat the direct
convolution for the whole to pay).

    python benchmarks/f16_and_winograd.py --threads 2 --json docs/perf/f16_and_winograd.json

Best of 5 after 2 warm-ups, one process, 2 threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from _common import publish


def best(fn: Callable[[], object], runs: int = 5) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def torch_convs(side: int) -> list[dict]:
    rows = []
    x = torch.randn(1, 64, side, side).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    flops = 2 * 64 * 64 * 9 * side * side
    with torch.inference_mode():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            c, xx = conv.to(dtype), x.to(dtype)
            s = best(lambda: c(xx))
            rows.append({"what": f"torch conv3x3 64->64 {side}x{side} channels_last", "dtype": name,
                         "ms": round(s * 1e3, 2), "gflops": round(flops / s / 1e9)})
    return rows


def openvino_convs(side: int, threads: int) -> list[dict]:
    try:
        import numpy as np
        import openvino as ov
    except ImportError:
        return []
    net = torch.nn.Sequential(*[m for _ in range(6) for m in (torch.nn.Conv2d(64, 64, 3, padding=1),
                                                              torch.nn.LeakyReLU(0.2))]).eval()
    x = torch.randn(1, 64, side, side)
    graph = ov.convert_model(net, example_input=x)
    core, flops, rows = ov.Core(), 6 * 2 * 64 * 64 * 9 * side * side, []
    for hint in ("f32", "bf16", "f16"):
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                     "INFERENCE_NUM_THREADS": threads})
        request, xn = compiled.create_infer_request(), x.numpy()
        s = best(lambda: request.infer([xn]))
        rows.append({"what": f"OpenVINO 6 x conv3x3 64->64 {side}x{side}", "dtype": hint,
                     "ms": round(s * 1e3, 1), "gflops": round(flops / s / 1e9)})
    del np
    return rows


def winograd_gemms(side: int) -> list[dict]:
    """F(4x4, 3x3) turns a 3x3 convolution into 36 GEMMs of [tiles, C_in] x [C_in, C_out] with a quarter
    of the multiplications: against the direct convolution of the same layer (RRDBNet's 64->32)."""
    tiles = (side // 4) ** 2
    rows = []
    with torch.inference_mode():
        for cin, cout in ((64, 32), (192, 64)):
            x = torch.randn(1, cin, side, side).contiguous(memory_format=torch.channels_last)
            conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=torch.channels_last)
            direct = best(lambda: conv(x))
            v, u = torch.randn(36, tiles, cin), torch.randn(36, cin, cout)
            gemms = best(lambda: torch.bmm(v, u))
            rows.append({"layer": f"{cin}->{cout} at {side}x{side}", "direct conv ms": round(direct * 1e3, 2),
                         "Winograd's 36 GEMMs alone ms": round(gemms * 1e3, 2),
                         "GEMM GFLOP/s": round(2 * 36 * tiles * cin * cout / gemms / 1e9),
                         "direct GFLOP/s": round(2 * cin * cout * 9 * side * side / direct / 1e9)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--side", type=int, default=192)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    publish("f16_and_winograd.py", argv, args.json, env_extra={"threads": args.threads},
            precisions=torch_convs(args.side) + openvino_convs(args.side, args.threads),
            winograd=winograd_gemms(args.side))
    return 0


if __name__ == "__main__":
    sys.exit(main())
