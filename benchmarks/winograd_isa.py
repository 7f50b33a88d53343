"""The winograd kernels built for this CPU (-march=native) and for a CPU without AVX-512 (-march=haswell:
AVX2 and FMA), side by side on one x4plus-shaped dense block (64 channels in, four grown maps of 32,
five convolutions), fp32: milliseconds per dense block, best of --runs, and the largest difference
from the native build's output.

    python benchmarks/winograd_isa.py --side 256 --runs 4 --json docs/perf/winograd_fused/isa.json
    python benchmarks/winograd_isa.py --source OLD.c --source src/upscale/backends/winograd.c   # two sources

(--source: builds whose ``winograd_conv`` has the current signature; docs/perf/winograd_fused/isa.json
compared dfd23f3's source with an earlier version of this script, before the ``act`` argument.)

Each (source, -march) is compiled here with `cc` and the product's flags (`winograd_native.FLAGS`, its
-march replaced) into a temporary folder and loaded with ctypes; the running CPU must have the
instructions of every -march named.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import publish
from upscale.backends.winograd import weight_transform
from upscale.backends.winograd_native import ACTIVATIONS, FLAGS, WIDE_FLAGS, declared

SOURCE = Path(__file__).resolve().parents[1] / "src" / "upscale" / "backends" / "winograd.c"
GROW, FEAT, CONVS = 32, 64, 5
_I, _P = ctypes.c_int64, ctypes.c_void_p


def build(source: Path, march: str, folder: Path) -> ctypes.CDLL:
    out = folder / f"{source.stem}-{abs(hash(str(source)))}-{march}.so"
    flags = [f"-march={march}" if flag == "-march=native" else flag for flag in FLAGS]
    wide = list(WIDE_FLAGS) if march == "native" else []
    subprocess.run(["cc", *flags, *wide, str(source), "-o", str(out)], check=True)
    return declared(ctypes.CDLL(str(out)))


def dense_block(lib: ctypes.CDLL, side: int, block: int, threads: int, runs: int) -> tuple[float, torch.Tensor]:
    """(best seconds of one dense block, its output) with fixed random weights and input."""
    torch.manual_seed(0)
    us = [weight_transform(torch.randn(GROW if i < CONVS - 1 else FEAT, FEAT + GROW * i, 3, 3) * 0.03)
          for i in range(CONVS)]
    biases = [torch.randn(u.shape[-1]) * 0.1 for u in us]
    x = torch.randn(1, side, side, FEAT)
    grown = [torch.empty(1, side, side, GROW) for _ in range(CONVS - 1)]
    out = torch.empty(1, side, side, FEAT)
    scratch = torch.empty(lib.winograd_scratch_floats(block, FEAT, threads))

    def run() -> None:
        sources = [x]
        for i, (u, bias) in enumerate(zip(us, biases)):
            y = grown[i] if i < CONVS - 1 else out
            pointers = (_P * len(sources))(*(s.data_ptr() for s in sources))
            channels = (_I * len(sources))(*(s.shape[3] for s in sources))
            lib.winograd_conv(pointers, channels, len(sources), u.data_ptr(), u.shape[-1], bias.data_ptr(),
                              y.data_ptr(), x.data_ptr() if y is out else None, 1, side, side, y.shape[3], side, side,
                              ACTIVATIONS["leaky"], None, 0.2 if y is out else 1.0, scratch.data_ptr(), block, threads)
            sources.append(y)

    run()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best, out.clone()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, action="append", help="winograd.c files (default: the project's)")
    p.add_argument("--march", nargs="+", default=["native", "haswell"])
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--block", type=int, default=48, help="tiles per block (a multiple of 24)")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.source or [SOURCE]:
            for march in args.march:
                seconds, out = dense_block(build(source, march, Path(tmp)), args.side, args.block, args.threads,
                                           args.runs)
                reference = out if reference is None else reference
                rows.append({"source": source.name if source == SOURCE else str(source), "march": march,
                             "ms_per_dense_block": round(seconds * 1000, 1),
                             "max_diff_vs_first": float((out - reference).abs().max())})
                print(rows[-1], flush=True)
    publish("winograd_isa.py", argv, args.json, env_extra={"threads": args.threads, "dtype": "fp32",
                                                         "side": args.side, "block": args.block}, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
