"""Training throughput (iterations/s) of ``upscale train``'s step on this machine.

Runs the real ``Trainer.step`` (g_step + Adam + EMA) on random uint8 batches, so data loading is not
measured (it is a few ms per batch from the in-memory cache). Warm-up iterations first (compile
happens there), then timed iterations: the fastest (what the machine can do) and the median. Prints a Markdown table and one JSON line per
configuration with device, dtype, threads and versions.

    python benchmarks/train_speed.py                       # compact + rrdbnet, fp32 vs bf16, eager
    python benchmarks/train_speed.py --compile --iters 5   # also torch.compile'd
    python benchmarks/train_speed.py --arch compact --hparams '{"num_feat": 48, "act_type": "lrelu"}'
    python benchmarks/train_speed.py --precision fp32 --precision bf16 --precision auto   # what auto picks

``--precision auto`` is the run's own choice (on a CPU with native bf16, measured at the Trainer's start
and kept in the tuning cache: point UPSCALE_CACHE at an empty folder to see it measured); its row
says which dtype it trained in and the Trainer's note why.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from upscale.machine import environment
from upscale.train.config import build_config
from upscale.train.loop import Trainer

NETS = {
    "compact": {"num_feat": 64, "num_conv": 16, "act_type": "prelu"},   # realesr-general-x4v3 size
    "rrdbnet": {"num_feat": 64, "num_block": 23, "num_grow_ch": 32},    # ESRGAN
}


def measure(arch: str, hparams: dict, precision: str, compile_: bool, *, batch: int, gt_px: int, scale: int,
            warmup: int, iters: int, channels_last: bool) -> dict:
    cfg = build_config("psnr", {"data": ["unused"], "arch": arch, "hparams": hparams, "scale": scale,
                                "gt_size": gt_px, "batch_size": batch, "precision": precision,
                                "compile": compile_, "channels_last": channels_last, "out": "/tmp/unused"})
    # Trainer() writes nothing (the run folder is prepared by run(), which is not called here).
    trainer = Trainer(cfg, progress=False)
    trainer.settle_precision()           # precision auto's measured choice, before the timed steps
    g = torch.Generator().manual_seed(0)
    lr_px = gt_px // scale
    lr = torch.randint(0, 256, (batch, 3, lr_px, lr_px), dtype=torch.uint8, generator=g)
    hr = torch.randint(0, 256, (batch, 3, gt_px, gt_px), dtype=torch.uint8, generator=g)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.step(lr, hr)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        trainer.step(lr, hr)
        times.append(time.perf_counter() - t0)
    # The minimum is the machine's capability; the median shows what sharing the cores costs.
    step_s, median_s = min(times), sorted(times)[len(times) // 2]
    return {"arch": arch, "hparams": hparams, "params_M": round(sum(p.numel() for p in trainer.gen.parameters()) / 1e6, 3),
            "precision": precision, "compile": compile_, "channels_last": channels_last, "batch": batch,
            "gt_px": gt_px, "scale": scale, "s_per_it": round(step_s, 4), "median_s_per_it": round(median_s, 4), "it_per_s": round(1 / step_s, 4),
            "warmup_s": round(warm_s, 2), "threads": torch.get_num_threads(), "device": str(trainer.rt.device),
            "dtype": str(trainer.rt.amp.dtype or torch.float32).replace("torch.", ""), "auto_note": trainer.precision_note,
            **environment()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(NETS), action="append")
    ap.add_argument("--hparams", type=json.loads, default=None, help="JSON overriding the net's hparams")
    ap.add_argument("--precision", action="append", choices=("fp32", "bf16", "fp16", "auto"))
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gt-px", type=int, default=128)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-channels-last", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for arch in args.arch or sorted(NETS):
        hp = {**NETS[arch], **(args.hparams or {})}
        for precision in args.precision or ["fp32", "bf16"]:
            for comp in ([False, True] if args.compile else [False]):
                r = measure(arch, hp, precision, comp, batch=args.batch, gt_px=args.gt_px, scale=args.scale,
                            warmup=args.warmup, iters=args.iters, channels_last=not args.no_channels_last)
                print(json.dumps(r), flush=True)
                rows.append(r)
    print("\n| arch | params (M) | precision (dtype run) | compiled | s/it (best) | s/it (median) | it/s (best) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['params_M']} | {r['precision']} ({r['dtype']}) | {'yes' if r['compile'] else 'no'} | "
              f"{r['s_per_it']:.3f} | {r['median_s_per_it']:.3f} | {r['it_per_s']:.3f} |")
    for r in rows:
        if r["auto_note"]:
            print(f"{r['arch']}: {r['auto_note']}")


if __name__ == "__main__":
    main()
