"""`upscale bench`: quality and speed of models against classic interpolation on a test set.

The pipeline is the one behind the published super-resolution tables, so the bicubic row reproduces
them within 0.02 dB (Set5 x4: 28.43 dB / 0.8111 here, 28.42 / 0.8104 published):

1. each HR image is read as 8-bit and mod-cropped to a multiple of the scale;
2. its LR input is MATLAB's ``imresize(HR, 1/s, 'bicubic')`` (antialiased; rows then columns, each
   pass rounded to 8 bits as MATLAB does for uint8 images), or the file of the same stem in ``--lr``;
3. every method maps LR (8-bit) to an 8-bit image of exactly the HR size: nearest, bilinear and
   Lanczos with Pillow, bicubic with the MATLAB-compatible ``resize.imresize``, models through
   ``api.Upscaler`` (a model of another native scale is Lanczos-resized to the asked scale; the row's
   note says so);
4. PSNR/SSIM (``metrics``) compare it with HR on the Y channel (or RGB with ``y_channel=False``),
   cropping ``scale`` pixels from each side, per image, then averaged over images.

Grayscale HR images (Set14's bridge): with ``gray="y"`` (default) the gray plane is its own luma, as in
the MATLAB evaluation scripts behind the published tables; models get it repeated to RGB and their
output is averaged back to one plane (``api.Upscaler``). With ``gray="rgb"`` the image is repeated to RGB
first and its BT.601 Y (16..235) is compared, as BasicSR's Python metrics do; on Set14 this gives
0.09 dB more for every method (bridge alone gains 20 log10(255/219) = 1.32 dB).

Speed: each method first runs ``warmup_runs`` times on the first image, untimed; then every image is
timed with ``time.perf_counter`` around the call that produces the 8-bit output (models: the whole
``Upscaler.upscale``, which returns host memory, so GPU work has finished). Peak memory is the growth
of this process's resident set (RSS) over its value just before the method's timed images, sampled
every 2 ms by a thread while they run (Linux /proc only; ``None`` elsewhere). It covers numpy, Pillow
and torch CPU buffers alike, but memory an allocator kept from an earlier method is not counted again,
so read it as an order of magnitude. On CUDA the row also reports ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import math
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from . import errors, metrics
from .io import Image, read_image
from .resample import resize_array
from .resize import imresize, round_like_matlab

log = logging.getLogger("upscale")

SCHEMA = "upscale.bench/1"
BASELINES = ("nearest", "bilinear", "bicubic", "lanczos")
GRAY_MODES = ("y", "rgb")
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SHEET_TILE_PX = 192   # each crop is enlarged (nearest neighbour) to about this many pixels on a side

Method = Callable[[np.ndarray], np.ndarray]   # LR uint8 (h, w, C) -> SR uint8 (h*s, w*s, C)


# --- results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr_db: float
    ssim: float
    lpips: float | None
    seconds: float


@dataclass(frozen=True)
class MethodRow:
    scale: int
    method: str
    kind: str                        # "baseline" or "model"
    psnr_db: float                   # mean over images
    ssim: float
    lpips: float | None
    seconds_per_image: float
    output_mp_per_s: float           # output megapixels per second over all timed images
    peak_memory_mib: float | None    # RSS growth during the timed images (see module docstring)
    peak_device_mib: float | None    # CUDA only: torch.cuda.max_memory_allocated
    device: str
    dtype: str
    note: str
    per_image: tuple[ImageScore, ...]


@dataclass(frozen=True)
class ImageInfo:
    name: str
    width: int           # as read, before the per-scale mod-crop
    height: int
    channels: int


@dataclass(frozen=True)
class SheetCell:
    label: str
    pixels: np.ndarray   # (h, w, 3) uint8 crop


@dataclass(frozen=True)
class SheetRow:
    title: str
    cells: tuple[SheetCell, ...]


CSV_FIELDS = ("scale", "method", "kind", "psnr_db", "ssim", "lpips", "seconds_per_image", "output_mp_per_s",
              "peak_memory_mib", "peak_device_mib", "device", "dtype", "note")


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class BenchResult:
    data: str
    lr_source: str
    metric: dict[str, Any]
    timing: dict[str, Any]
    environment: dict[str, Any]
    images: tuple[ImageInfo, ...]
    rows: tuple[MethodRow, ...]
    sheet_rows: tuple[SheetRow, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema ``upscale.bench/1``, documented in docs/bench.md)."""
        rows = []
        for row in self.rows:
            d = asdict(row)
            for key in ("psnr_db", "ssim", "lpips"):
                d[key] = _finite_or_none(d[key])
            d["per_image"] = [{**s, "psnr_db": _finite_or_none(s["psnr_db"]), "ssim": _finite_or_none(s["ssim"]),
                               "lpips": _finite_or_none(s["lpips"])} for s in d["per_image"]]
            rows.append(d)
        return {"schema": SCHEMA, "data": self.data, "lr_source": self.lr_source, "metric": dict(self.metric),
                "timing": dict(self.timing), "environment": dict(self.environment),
                "images": [asdict(i) for i in self.images], "rows": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        buf = _stdio.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.to_dict()["rows"]:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_FIELDS})
        return buf.getvalue()

    def to_markdown(self) -> str:
        space = "Y" if self.metric["y_channel"] else "RGB"
        header = ["scale", "method", f"PSNR-{space} (dB)", f"SSIM-{space}", "LPIPS", "s/image", "MP/s",
                  "peak MiB", "note"]
        lines = [header]
        for r in self.rows:
            lpips = "n/a" if r.lpips is None else f"{r.lpips:.4f}"
            mem = "n/a" if r.peak_memory_mib is None else f"{r.peak_memory_mib:.1f}"
            lines.append([f"x{r.scale}", r.method, f"{r.psnr_db:.2f}", f"{r.ssim:.4f}", lpips,
                          f"{r.seconds_per_image:.4f}", f"{r.output_mp_per_s:.2f}", mem, r.note])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

        def fmt(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

        out = [fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [fmt(line) for line in lines[1:]]
        if self.metric.get("lpips_missing"):
            out.append(f"\nLPIPS n/a: {self.metric['lpips_missing']}")
        return "\n".join(out) + "\n"


# --- inputs --------------------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (manifests and checksum files are skipped)."""
    if not folder.is_dir():
        raise errors.DataError("not a folder", path=folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise errors.DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder", path=folder)
    return files


def to_uint8(image: Image, gray: str) -> np.ndarray:
    """An ``Image``'s pixels as 8-bit (H, W, 1 or 3); alpha dropped; gray repeated to RGB if ``gray='rgb'``."""
    pixels = image.pixels
    if pixels.dtype == np.uint16:
        pixels = np.floor(pixels.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise errors.DataError(f"unsupported pixel type {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1 and gray == "rgb":
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(hr, 1/scale, 'bicubic')`` of an 8-bit image, as 8-bit."""
    return round_like_matlab(imresize(hr, 1.0 / scale, round_between_passes=True)).astype(np.uint8)


def matlab_bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(lr, scale, 'bicubic')`` of an 8-bit image, as 8-bit (the papers' bicubic row)."""
    return round_like_matlab(imresize(lr, float(scale), round_between_passes=True)).astype(np.uint8)


def _pillow_method(name: str, scale: int) -> Method:
    def run(lr: np.ndarray) -> np.ndarray:
        h, w = lr.shape[:2]
        return resize_array(lr, (w * scale, h * scale), name)
    return run


def _baseline(name: str, scale: int) -> tuple[Method, str]:
    """(method, dtype it computes in)."""
    if name == "bicubic":
        return (lambda lr: matlab_bicubic(lr, scale)), "float64"
    return _pillow_method(name, scale), "float32"


# --- models --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    label: str
    native_scale: int
    upscaler: Any          # api.Upscaler
    device: str
    dtype: str


def load_models(specs: Sequence[str], engine_options: Any) -> list[LoadedModel]:
    """Load each ``-m`` (registry name or file) once and prepare it on its device."""
    if not specs:
        return []
    from .api import Upscaler, load_model

    loaded, labels = [], set()
    for spec in specs:
        model = load_model(spec)
        label = model.name or Path(spec).stem
        base, n = label, 1
        while label in labels or label in BASELINES:
            n += 1
            label = f"{base}#{n}"
        labels.add(label)
        up = Upscaler(model, engine_options)
        loaded.append(LoadedModel(label, model.scale, up, str(up.engine.device),
                                  str(up.engine.dtype).replace("torch.", "")))
    return loaded


def _model_method(m: LoadedModel, scale: int) -> Method:
    def run(lr: np.ndarray) -> np.ndarray:
        image = Image(pixels=lr, alpha=None, icc_profile=None, exif=None, source_format="PNG",
                      source_mode="L" if lr.shape[2] == 1 else "RGB")
        out = m.upscaler.upscale(image, outscale=float(scale)).pixels
        return out[..., None] if out.ndim == 2 else out
    return run


# --- measurement ---------------------------------------------------------------------------------
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """Context manager: peak growth of resident memory over its value at entry, sampled by a thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak_growth_bytes: int | None = None
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRss":
        start = _rss_bytes()
        if start is not None:
            self._start, self.peak_growth_bytes = start, 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _update(self) -> None:
        rss = _rss_bytes()
        if rss is not None and self.peak_growth_bytes is not None:
            self.peak_growth_bytes = max(self.peak_growth_bytes, rss - self._start)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._update()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._update()


def _cuda_peak_reset(device: str) -> bool:
    if not device.startswith("cuda"):
        return False
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return True


# --- options and the run -------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchOptions:
    scales: tuple[int, ...] = (4,)
    baselines: tuple[str, ...] = BASELINES
    lr_dir: Path | None = None
    y_channel: bool = True
    gray: str = "y"
    warmup_runs: int = 1
    lpips: bool = True
    sheet_images: tuple[str, ...] | None = None   # stems for the contact sheet; () = first image; None = no sheet
    sheet_crop_px: int = 64                         # HR pixels on a side
    progress: bool = False


def _check_options(options: BenchOptions, n_models: int) -> None:
    if not options.scales or any(s < 1 for s in options.scales):
        raise errors.UsageError(f"scales must be integers >= 1, got {list(options.scales)}")
    unknown = [b for b in options.baselines if b not in BASELINES]
    if unknown:
        raise errors.UsageError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    if options.gray not in GRAY_MODES:
        raise errors.UsageError(f"--gray must be one of {', '.join(GRAY_MODES)}, not {options.gray!r}")
    if options.lr_dir is not None and len(options.scales) != 1:
        raise errors.UsageError("--lr pairs belong to one scale; give a single -s with --lr")
    if not options.baselines and not n_models:
        raise errors.UsageError("nothing to benchmark: no baselines and no -m models")
    if options.warmup_runs < 0:
        raise errors.UsageError(f"--warmup must be >= 0, got {options.warmup_runs}")


def _lr_files(lr_dir: Path) -> dict[str, Path]:
    """LR images by stem; two files with one stem are an error."""
    by_stem: dict[str, Path] = {}
    for p in list_images(lr_dir):
        if p.stem in by_stem:
            raise errors.DataError(f"two LR images with stem {p.stem!r}: {by_stem[p.stem].name}, {p.name}",
                                   path=lr_dir)
        by_stem[p.stem] = p
    return by_stem


def _read_lr(lr_files: dict[str, Path], lr_dir: Path, stem: str, expected_hw: tuple[int, int],
             hr_channels: int, gray: str) -> np.ndarray:
    if stem not in lr_files:
        raise errors.DataError(f"no LR image with stem {stem!r} for the HR image of that name", path=lr_dir)
    path = lr_files[stem]
    lr = to_uint8(read_image(path), gray)
    if lr.shape[:2] != expected_hw:
        raise errors.DataError(f"LR is {lr.shape[1]}x{lr.shape[0]}, expected {expected_hw[1]}x{expected_hw[0]} "
                               "(HR mod-cropped, divided by the scale)", path=path)
    if lr.shape[2] != hr_channels:
        if lr.shape[2] == 1:
            lr = np.repeat(lr, hr_channels, axis=2)
        else:
            raise errors.DataError(f"LR has {lr.shape[2]} channels, its HR image {hr_channels}", path=path)
    return lr


def _best_crop(hr: np.ndarray, crop_px: int) -> tuple[int, int, int]:
    """(top, left, size) of the crop_px square with the most luma gradient energy (coarse grid search)."""
    size = min(crop_px, hr.shape[0], hr.shape[1])
    plane = hr.astype(np.float64).mean(axis=2)
    energy = np.zeros_like(plane)
    energy[:, 1:] += np.abs(np.diff(plane, axis=1))
    energy[1:, :] += np.abs(np.diff(plane, axis=0))
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    step = max(1, size // 4)
    best = (-1.0, 0, 0)
    for top in range(0, hr.shape[0] - size + 1, step):
        for left in range(0, hr.shape[1] - size + 1, step):
            total = (integral[top + size, left + size] - integral[top, left + size]
                     - integral[top + size, left] + integral[top, left])
            if total > best[0]:
                best = (total, top, left)
    return best[1], best[2], size


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def environment(models: Sequence[LoadedModel]) -> dict[str, Any]:
    """Versions and machine facts recorded with every figure."""
    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "upscale": pkg("upscale"), "numpy": np.__version__, "pillow": pkg("pillow"),
        "torch": pkg("torch"), "torch_threads": None, "models": {},
    }
    if "torch" in sys.modules:
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    for m in models:
        env["models"][m.label] = {"source": m.upscaler.model.source, "arch": m.upscaler.model.arch,
                                  "native_scale": m.native_scale, "device": m.device, "dtype": m.dtype}
    return env


def run_bench(data_dir: str | Path, options: BenchOptions, models: Sequence[LoadedModel] = ()) -> BenchResult:
    """Benchmark the baselines and ``models`` on the HR images in ``data_dir``; see the module docstring."""
    _check_options(options, len(models))
    data_dir = Path(data_dir)
    files = list_images(data_dir)
    hr_images = [(p.stem, to_uint8(read_image(p), options.gray)) for p in files]
    infos = tuple(ImageInfo(stem, px.shape[1], px.shape[0], px.shape[2]) for stem, px in hr_images)
    lr_files = _lr_files(options.lr_dir) if options.lr_dir is not None else {}

    lpips_net, lpips_missing = (None, "not requested (--no-lpips)")
    if options.lpips:
        lpips_net, lpips_missing = metrics.Lpips.create()

    sheet_stems: list[str] = []
    if options.sheet_images is not None:
        sheet_stems = list(options.sheet_images) or [hr_images[0][0]]
        missing = [s for s in sheet_stems if s not in dict(hr_images)]
        if missing:
            raise errors.UsageError(f"--sheet-image {missing[0]!r} is not an image stem in {data_dir}")

    method_names = [*options.baselines, *(m.label for m in models)]
    total = len(options.scales) * len(method_names) * len(hr_images)
    rows: list[MethodRow] = []
    sheet_rows: list[SheetRow] = []
    with tqdm(total=total, disable=not options.progress, desc="bench", unit="img", file=sys.stderr) as bar:
        for scale in options.scales:
            pairs = []
            for stem, hr in hr_images:
                hr = metrics.mod_crop(hr, scale)
                if min(hr.shape[:2]) // scale < 1 or min(hr.shape[:2]) - 2 * scale < metrics.SSIM_WINDOW_PX:
                    raise errors.DataError(f"{hr.shape[1]}x{hr.shape[0]} is too small to benchmark at x{scale}",
                                           path=data_dir / stem)
                if options.lr_dir is not None:
                    lr = _read_lr(lr_files, options.lr_dir, stem, (hr.shape[0] // scale, hr.shape[1] // scale),
                                  hr.shape[2], options.gray)
                else:
                    lr = make_lr(hr, scale)
                pairs.append((stem, hr, lr))
            crops = {stem: _best_crop(hr, options.sheet_crop_px) for stem, hr, _ in pairs if stem in sheet_stems}
            cells: dict[str, list[SheetCell]] = {stem: [] for stem in crops}

            methods: list[tuple[str, str, Method, str, str, str]] = []
            for name in options.baselines:
                fn, dtype = _baseline(name, scale)
                note = "MATLAB imresize" if name == "bicubic" else "Pillow"
                methods.append((name, "baseline", fn, "cpu", dtype, note))
            for m in models:
                note = "" if m.native_scale == scale else f"native x{m.native_scale}, Lanczos-resized to x{scale}"
                methods.append((m.label, "model", _model_method(m, scale), m.device, m.dtype, note))

            for name, kind, fn, device, dtype, note in methods:
                for _ in range(options.warmup_runs):
                    fn(pairs[0][2])
                on_cuda = _cuda_peak_reset(device)
                scores: list[ImageScore] = []
                seconds_total, out_pixels = 0.0, 0
                with PeakRss() as mem:
                    for stem, hr, lr in pairs:
                        t0 = time.perf_counter()
                        sr = fn(lr)
                        dt = time.perf_counter() - t0
                        if sr.shape != hr.shape or sr.dtype != np.uint8:
                            raise errors.UpscaleError(f"{name} returned {sr.shape} {sr.dtype} for an HR image of "
                                                      f"{hr.shape} uint8", path=data_dir / stem)
                        seconds_total += dt
                        out_pixels += sr.shape[0] * sr.shape[1]
                        p = metrics.psnr(sr, hr, scale, options.y_channel)
                        s = metrics.ssim(sr, hr, scale, options.y_channel)
                        lp = lpips_net(sr, hr, scale) if lpips_net is not None else None
                        scores.append(ImageScore(stem, p, s, lp, dt))
                        if stem in crops:
                            top, left, size = crops[stem]
                            cells[stem].append(SheetCell(f"{name} {p:.2f} dB",
                                                         _as_rgb(sr[top:top + size, left:left + size])))
                        bar.update(1)
                device_mib = None
                if on_cuda:
                    import torch
                    device_mib = torch.cuda.max_memory_allocated() / 2 ** 20
                rows.append(MethodRow(
                    scale=scale, method=name, kind=kind,
                    psnr_db=float(np.mean([x.psnr_db for x in scores])),
                    ssim=float(np.mean([x.ssim for x in scores])),
                    lpips=None if lpips_net is None else float(np.mean([x.lpips for x in scores])),
                    seconds_per_image=seconds_total / len(scores),
                    output_mp_per_s=out_pixels / 1e6 / seconds_total if seconds_total > 0 else float("inf"),
                    peak_memory_mib=None if mem.peak_growth_bytes is None else mem.peak_growth_bytes / 2 ** 20,
                    peak_device_mib=device_mib, device=device, dtype=dtype, note=note, per_image=tuple(scores)))
            hr_by_stem = {stem: hr for stem, hr, _ in pairs}
            for stem in sheet_stems:
                top, left, size = crops[stem]
                hr_cell = SheetCell("HR", _as_rgb(hr_by_stem[stem][top:top + size, left:left + size]))
                title = f"{stem} x{scale}: {size}px crop at x={left}, y={top}; dB = PSNR of the whole image"
                sheet_rows.append(SheetRow(title, (hr_cell, *cells[stem])))

    metric = {"y_channel": options.y_channel, "crop_border": "scale", "gray": options.gray,
              "psnr": "10*log10(255^2/MSE), float64, per image then mean",
              "ssim": "Gaussian 11x11 sigma 1.5, valid region, C1=(0.01*255)^2, C2=(0.03*255)^2",
              "lpips": "alex" if lpips_net is not None else None,
              "lpips_missing": None if lpips_net is not None else lpips_missing}
    timing = {"warmup_runs": options.warmup_runs, "clock": "time.perf_counter per image",
              "memory": "peak RSS growth during the timed images, sampled every 2 ms"}
    lr_source = "matlab-bicubic" if options.lr_dir is None else f"dir:{options.lr_dir}"
    return BenchResult(str(data_dir), lr_source, metric, timing, environment(models), infos, tuple(rows),
                       tuple(sheet_rows))


# --- contact sheet -------------------------------------------------------------------------------
def render_sheet(sheet_rows: Sequence[SheetRow]) -> Any:
    """A labelled grid (one row per image and scale, one column per method) as a Pillow image."""
    from PIL import Image as PILImage, ImageDraw

    if not sheet_rows:
        raise errors.UsageError("the contact sheet has no rows")
    pad, label_h = 6, 14
    size = max(c.pixels.shape[0] for r in sheet_rows for c in r.cells)
    zoom = max(1, SHEET_TILE_PX // size)
    tile = size * zoom
    columns = max(len(r.cells) for r in sheet_rows)
    row_h = label_h * 2 + tile + pad
    sheet = PILImage.new("RGB", (pad + columns * (tile + pad), pad + len(sheet_rows) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(sheet_rows):
        y = pad + i * row_h
        draw.text((pad, y), row.title, fill="black")
        for j, cell in enumerate(row.cells):
            x = pad + j * (tile + pad)
            draw.text((x, y + label_h), cell.label, fill="black")
            crop = PILImage.fromarray(np.ascontiguousarray(cell.pixels))
            crop = crop.resize((cell.pixels.shape[1] * zoom, cell.pixels.shape[0] * zoom),
                               PILImage.Resampling.NEAREST)
            sheet.paste(crop, (x, y + 2 * label_h))
    return sheet


def write_sheet(sheet_rows: Sequence[SheetRow], path: str | Path) -> None:
    """Render the sheet and write it as PNG atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        render_sheet(sheet_rows).save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
    except OSError as err:
        raise errors.ImageWriteError(f"cannot write the contact sheet: {err.strerror or err}", path=path) from err
    finally:
        if tmp.exists():
            tmp.unlink()
