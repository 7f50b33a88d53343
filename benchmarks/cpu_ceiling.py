"""What this CPU can do at all, so the engine's figures can be judged against it (docs/perf.md).

    python benchmarks/cpu_ceiling.py [--threads 2] [--json PATH]

1. GEMM ceilings: torch.mm of n x n matrices, bf16 and fp32 (best of 3 after a warm-up).
2. Single 3x3 convolutions of the shapes our networks use, bf16 and fp32 channels_last (oneDNN), in GFLOP/s.
3. One network, every execution mode side by side: RRDBNet (6 blocks, x4, random weights) on a
   128x128 input -- fp32 NCHW (plain PyTorch), fp32 channels_last, bf16 autocast + channels_last,
   bf16 weights + channels_last (no autocast), and both bf16 variants under torch.compile with
   freezing. Best of 3 after two warm-up calls; the compile time is reported separately.

bf16 is measured in full only where the CPU has native bf16 (AMX or avx512_bf16). Elsewhere torch
emulates it (0.3-1.3 GFLOP/s for a GEMM on an AVX2-only EPYC: a 4096^3 mm would take minutes), so only
one small GEMM records the emulated rate, and the network modes that use bf16 are skipped.

Prints markdown tables with the CPU name, its bf16/AMX flags, torch version and threads. Torch is
loaded only after the arguments are parsed, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from _common import EMULATED_BF16_N, best_of, environment, markdown


def _dtypes(native_bf16: bool) -> tuple:
    import torch

    return (torch.bfloat16, torch.float32) if native_bf16 else (torch.float32,)


def gemm_rows(native_bf16: bool) -> list[dict]:
    import torch

    rows = []
    if not native_bf16:
        n = EMULATED_BF16_N
        a, b = torch.rand(n, n).to(torch.bfloat16), torch.rand(n, n).to(torch.bfloat16)
        rows.append({"op": f"mm {n}^3 (emulated)", "dtype": "bfloat16",
                     "gflops": 2 * n**3 / best_of(lambda: torch.mm(a, b)) / 1e9})
    for dtype in _dtypes(native_bf16):
        for n in (1024, 2048, 4096):
            a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
            rows.append({"op": f"mm {n}^3", "dtype": str(dtype).split(".")[1],
                         "gflops": 2 * n**3 / best_of(lambda: torch.mm(a, b)) / 1e9})
    return rows


def conv_rows(native_bf16: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    rows = []
    shapes = ((64, 32, 128), (192, 64, 128), (64, 64, 512), (48, 48, 512), (48, 48, 1000))
    with torch.inference_mode():
        for dtype in _dtypes(native_bf16):
            for cin, cout, side in shapes:
                x = torch.rand(1, cin, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
                w = torch.rand(cout, cin, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
                t = best_of(lambda: F.conv2d(x, w, padding=1))
                rows.append({"op": f"conv3x3 {cin}->{cout} at {side}x{side}", "dtype": str(dtype).split(".")[1],
                             "gflops": 2 * cin * cout * 9 * side * side / t / 1e9})
    return rows


MODES = {   # name: (channels_last, autocast bf16, bf16 weights, compile)
    "fp32 NCHW (plain PyTorch)": (False, False, False, False),
    "fp32 channels_last": (True, False, False, False),
    "bf16 autocast + channels_last (our eager auto)": (True, True, False, False),
    "bf16 weights + channels_last": (True, False, True, False),
    "bf16 autocast + channels_last, compiled (freezing)": (True, True, False, True),
    "bf16 weights + channels_last, compiled (freezing)": (True, False, True, True),
}


def network_rows(side: int, no_compile: bool, native_bf16: bool) -> list[dict]:
    import torch

    from upscale.archs import build_module

    torch.manual_seed(0)
    net = build_module("rrdbnet", {"num_feat": 64, "num_block": 6, "num_grow_ch": 32, "scale": 4}).eval()
    x0 = torch.rand(1, 3, side, side)
    rows, base = [], None
    with torch.inference_mode():
        for name, (cl, autocast, half, compiled) in MODES.items():
            if (compiled and no_compile) or ((autocast or half) and not native_bf16):
                continue
            module, x = copy.deepcopy(net), x0
            if cl:
                module = module.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            if half:
                module, x = module.to(torch.bfloat16), x.to(torch.bfloat16)
            fn = torch.compile(module, dynamic=False, options={"freezing": True}) if compiled else module

            def run() -> torch.Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    return fn(x)

            t0 = time.perf_counter()
            run()
            first = time.perf_counter() - t0
            seconds = best_of(run)
            base = base or seconds
            rows.append({"mode": name, "seconds": seconds, "speedup_vs_fp32_nchw": base / seconds,
                         "first_call_s": first})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--side", type=int, default=128, help="input side for the network modes (default 128)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from upscale.device import cpu_native_bf16

    native = cpu_native_bf16()
    env = environment(device="cpu", native_bf16=native)
    result = {"environment": env, "gemm": gemm_rows(native), "conv": conv_rows(native),
              "network": network_rows(args.side, args.no_compile, native)}
    print(", ".join(f"{k}: {v}" for k, v in env.items()) + "\n")
    for key in ("gemm", "conv", "network"):
        print(f"{key}:\n\n{markdown(result[key])}\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
