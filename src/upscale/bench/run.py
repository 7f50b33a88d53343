"""The bench run: options -> HR images -> per scale, LR/HR pairs (and the HR images' own NIQE when
asked) -> per method, warm-up, timed images, scores -> rows (and the contact sheet's cells). See the
package docstring for the conventions."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from .. import errors, metrics, niqe
from ..dataprep import bicubic_down, check_eval_size, list_images, mod_crop, read_uint8
from ..machine import environment as machine_environment
from .measure import PeakRss, cuda_peak_mib, cuda_peak_reset
from .methods import BASELINES, LoadedModel, MethodSpec, methods_for
from .results import BenchResult, HrReference, ImageInfo, ImageScore, MethodRow, SheetCell, SheetRow
from .sheet import as_rgb, best_crop

GRAY_MODES = ("y", "rgb")
PROGRESS_MODES = ("bar", "lines", "none")
log = logging.getLogger(__name__)
Pair = tuple[str, np.ndarray, np.ndarray]   # (stem, HR mod-cropped, LR), 8-bit


@dataclass(frozen=True)
class BenchOptions:
    scales: tuple[int, ...] = (4,)
    baselines: tuple[str, ...] = BASELINES
    lr_dir: Path | None = None
    y_channel: bool = True
    gray: str = "y"
    warmup_runs: int = 1
    lpips: bool = True
    niqe: bool = False                              # NIQE of every output and of HR (no reference, numpy)
    sheet_images: tuple[str, ...] | None = None   # stems for the contact sheet; () = first image; None = no sheet
    sheet_crop_px: int = 64                         # HR pixels on a side
    # "bar" (tqdm, a terminal), "lines" (one plain line per method and image, for a log file: a bar's
    # redraws would pile up in it) or "none"; True/False are "bar"/"none" (as train.progress)
    progress: bool | str = False


def _check_options(options: BenchOptions, n_models: int) -> None:
    if not options.scales or any(s < 1 for s in options.scales):
        raise errors.UsageError(f"scales must be integers >= 1, got {list(options.scales)}")
    unknown = [b for b in options.baselines if b not in BASELINES]
    if unknown:
        raise errors.UsageError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    if options.gray not in GRAY_MODES:
        raise errors.UsageError(f"gray must be one of {', '.join(GRAY_MODES)}, not {options.gray!r}",
                                params=("gray",))
    if options.lr_dir is not None and len(options.scales) != 1:
        raise errors.UsageError("lr_dir pairs belong to one scale; give a single scale with lr_dir",
                                params=("lr_dir", "scale"))
    if not options.baselines and not n_models:
        raise errors.UsageError("nothing to benchmark: no baselines and no models")
    if options.warmup_runs < 0:
        raise errors.UsageError(f"warmup must be >= 0, got {options.warmup_runs}", params=("warmup",))
    if _progress_mode(options) not in PROGRESS_MODES:
        raise errors.UsageError(f"progress must be one of {', '.join(PROGRESS_MODES)} or a bool, not "
                                f"{options.progress!r}")


def _progress_mode(options: BenchOptions) -> str:
    progress = options.progress
    return {True: "bar", False: "none"}[progress] if isinstance(progress, bool) else str(progress)


def _files_by_stem(folder: Path, kind: str) -> dict[str, Path]:
    """The images of ``folder`` by stem (results and ``--lr`` pairing name images by stem); two files
    with one stem are an error."""
    by_stem: dict[str, Path] = {}
    for p in list_images(folder):
        if p.stem in by_stem:
            raise errors.DataError(f"two {kind} images with stem {p.stem!r}: {by_stem[p.stem].name}, {p.name}",
                                   path=folder)
        by_stem[p.stem] = p
    return by_stem


def _read_lr(lr_files: dict[str, Path], lr_dir: Path, stem: str, expected_hw: tuple[int, int],
             hr_channels: int, gray: str) -> np.ndarray:
    if stem not in lr_files:
        raise errors.DataError(f"no LR image with stem {stem!r} for the HR image of that name", path=lr_dir)
    path = lr_files[stem]
    lr = read_uint8(path, rgb=gray == "rgb")
    if lr.shape[:2] != expected_hw:
        raise errors.DataError(f"LR is {lr.shape[1]}x{lr.shape[0]}, expected {expected_hw[1]}x{expected_hw[0]} "
                               "(HR mod-cropped, divided by the scale)", path=path)
    if lr.shape[2] != hr_channels:
        if lr.shape[2] == 1:
            lr = np.repeat(lr, hr_channels, axis=2)
        else:
            raise errors.DataError(f"LR has {lr.shape[2]} channels, its HR image {hr_channels}", path=path)
    return lr


def _pairs_for_scale(hr_images: list[tuple[str, np.ndarray]], scale: int, options: BenchOptions,
                     lr_files: dict[str, Path], hr_files: dict[str, Path]) -> list[Pair]:
    """Each HR image mod-cropped, with its LR: MATLAB bicubic, or the file of the same stem in lr_dir."""
    pairs = []
    for stem, hr in hr_images:
        h, w = hr.shape[:2]
        hr = mod_crop(hr, scale)
        try:
            check_eval_size(hr, scale, hr_files[stem])
        except errors.DataError as err:
            raise errors.DataError(f"{w}x{h} (mod-cropped: {err.message})", path=hr_files[stem]) from None
        if options.niqe:
            try:
                niqe.check_size(hr.shape[0], hr.shape[1], crop_border=scale)
            except ValueError as err:
                raise errors.DataError(f"{err} (mod-cropped for x{scale})", path=hr_files[stem]) from None
        if options.lr_dir is not None:
            lr = _read_lr(lr_files, options.lr_dir, stem, (hr.shape[0] // scale, hr.shape[1] // scale),
                          hr.shape[2], options.gray)
        else:
            lr = bicubic_down(hr, scale)
        pairs.append((stem, hr, lr))
    return pairs


def _sheet_stems(options: BenchOptions, hr_images: list[tuple[str, np.ndarray]], data_dir: Path) -> list[str]:
    if options.sheet_images is None:
        return []
    stems = list(options.sheet_images) or [hr_images[0][0]]
    missing = [s for s in stems if s not in dict(hr_images)]
    if missing:
        raise errors.UsageError(f"sheet_image {missing[0]!r} is not an image stem in {data_dir}",
                                params=("sheet_image",))
    return stems


class _Sheet:
    """The contact sheet's crops and cells for one scale."""

    def __init__(self, pairs: list[Pair], stems: list[str], crop_px: int) -> None:
        self.pairs, self.stems = pairs, stems
        self.crops = {stem: best_crop(hr, crop_px) for stem, hr, _ in pairs if stem in stems}
        self.cells: dict[str, list[SheetCell]] = {stem: [] for stem in self.crops}

    def add(self, stem: str, label: str, sr: np.ndarray) -> None:
        if stem in self.crops:
            top, left, size = self.crops[stem]
            self.cells[stem].append(SheetCell(label, as_rgb(sr[top:top + size, left:left + size])))

    def rows(self, scale: int) -> list[SheetRow]:
        hr_by_stem = {stem: hr for stem, hr, _ in self.pairs}
        out = []
        for stem in self.stems:
            top, left, size = self.crops[stem]
            hr_cell = SheetCell("HR", as_rgb(hr_by_stem[stem][top:top + size, left:left + size]))
            title = f"{stem} x{scale}: {size}px crop at x={left}, y={top}; dB = PSNR of the whole image"
            out.append(SheetRow(title, (hr_cell, *self.cells[stem])))
        return out


def _score(method: MethodSpec, pair: Pair, scale: int, options: BenchOptions, lpips_net: Any,
           hr_path: Path) -> tuple[ImageScore, np.ndarray]:
    """Time ``method`` on one LR image and score its output against HR."""
    stem, hr, lr = pair
    t0 = time.perf_counter()
    sr = method.fn(lr)
    dt = time.perf_counter() - t0
    if sr.shape != hr.shape or sr.dtype != np.uint8:
        raise errors.UpscaleError(f"{method.name} returned {sr.shape} {sr.dtype} for an HR image of "
                                  f"{hr.shape} uint8", path=hr_path)
    p = metrics.psnr(sr, hr, scale, options.y_channel)
    s = metrics.ssim(sr, hr, scale, options.y_channel)
    lp = lpips_net(sr, hr, scale) if lpips_net is not None else None
    nq = niqe.niqe(sr, crop_border=scale) if options.niqe else None
    return ImageScore(stem, p, s, lp, dt, nq), sr


def _measure(method: MethodSpec, pairs: list[Pair], scale: int, options: BenchOptions, lpips_net: Any,
             sheet: _Sheet, bar: Any, hr_files: dict[str, Path], done: int) -> MethodRow:
    """Warm up, then time and score every image: one row of the table (``done``: images of earlier rows)."""
    for _ in range(options.warmup_runs):
        method.fn(pairs[0][2])
    if method.backends is not None:     # the note names what computed the measured images only
        method.backends.clear()
    on_cuda = cuda_peak_reset(method.device)
    scores: list[ImageScore] = []
    out_pixels = 0
    with PeakRss() as mem:
        for pair in pairs:
            score, sr = _score(method, pair, scale, options, lpips_net, hr_files[pair[0]])
            scores.append(score)
            out_pixels += sr.shape[0] * sr.shape[1]
            sheet.add(pair[0], f"{method.name} {score.psnr_db:.2f} dB", sr)
            bar.update(1)
            if _progress_mode(options) == "lines":
                log.info("bench %d/%d: x%d %s on %s: %.2f s, %.2f dB", done + len(scores), bar.total, scale,
                         method.name, hr_files[pair[0]].name, score.seconds, score.psnr_db)
    seconds_total = sum(score.seconds for score in scores)
    return MethodRow(
        scale=scale, method=method.name, kind=method.kind,
        psnr_db=float(np.mean([x.psnr_db for x in scores])),
        ssim=float(np.mean([x.ssim for x in scores])),
        lpips=None if lpips_net is None else float(np.mean([x.lpips for x in scores])),
        seconds_per_image=seconds_total / len(scores),
        output_mp_per_s=out_pixels / 1e6 / seconds_total if seconds_total > 0 else float("inf"),
        peak_memory_mib=mem.peak_mib, peak_device_mib=cuda_peak_mib() if on_cuda else None,
        device=method.device, dtype=method.dtype, note=method.full_note(), per_image=tuple(scores),
        niqe=float(np.mean([x.niqe for x in scores])) if options.niqe else None)


def _hr_reference(pairs: list[Pair], scale: int) -> HrReference:
    """The HR images' own NIQE, with the border the methods' outputs lose."""
    per_image = tuple((stem, niqe.niqe(hr, crop_border=scale)) for stem, hr, _ in pairs)
    return HrReference(scale, float(np.mean([v for _, v in per_image])), per_image)


def environment(models: Sequence[LoadedModel]) -> dict[str, Any]:
    """``upscale.machine.environment()`` plus the keys docs/bench.md documents (``cpu_count``,
    ``torch_threads`` null when no model ran) and each model's source, arch, scale, device, dtype."""
    env = machine_environment()
    env["cpu_count"] = os.cpu_count()
    env["torch_threads"] = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    env["models"] = {m.label: {"source": m.upscaler.model.source, "arch": m.upscaler.model.arch,
                               "native_scale": m.native_scale, "device": m.device, "dtype": m.dtype}
                     for m in models}
    return env


def _metric(options: BenchOptions, lpips_net: Any, lpips_missing: str) -> dict[str, Any]:
    return {"y_channel": options.y_channel, "crop_border": "scale", "gray": options.gray,
            "psnr": "10*log10(255^2/MSE), float64, per image then mean",
            "ssim": "Gaussian 11x11 sigma 1.5, valid region, C1=(0.01*255)^2, C2=(0.03*255)^2",
            "lpips": "alex" if lpips_net is not None else None,
            "lpips_missing": None if lpips_net is not None else lpips_missing,
            **_niqe_metric(options)}


def _niqe_metric(options: BenchOptions) -> dict[str, Any]:
    if not options.niqe:
        return {"niqe": None, "niqe_model_sha256": None}
    record = niqe.describe()
    return {"niqe": record["niqe"] + "; crop border = scale", "niqe_model_sha256": record["niqe_model_sha256"]}


def run_bench(data_dir: str | Path, options: BenchOptions, models: Sequence[LoadedModel] = ()) -> BenchResult:
    """Benchmark the baselines and ``models`` on the HR images in ``data_dir``; see the package docstring."""
    _check_options(options, len(models))
    data_dir = Path(data_dir)
    hr_files = _files_by_stem(data_dir, "HR")
    hr_images = [(stem, read_uint8(p, rgb=options.gray == "rgb")) for stem, p in hr_files.items()]
    infos = tuple(ImageInfo(stem, px.shape[1], px.shape[0], px.shape[2]) for stem, px in hr_images)
    lr_files = _files_by_stem(options.lr_dir, "LR") if options.lr_dir is not None else {}
    lpips_net, lpips_missing = (None, "not requested (--no-lpips)")
    if options.lpips:
        lpips_net, lpips_missing = metrics.Lpips.create()
    sheet_stems = _sheet_stems(options, hr_images, data_dir)

    total = len(options.scales) * (len(options.baselines) + len(models)) * len(hr_images)
    rows: list[MethodRow] = []
    sheet_rows: list[SheetRow] = []
    hr_reference: list[HrReference] = []
    with tqdm(total=total, disable=_progress_mode(options) != "bar", desc="bench", unit="img", file=sys.stderr) as bar:
        for scale in options.scales:
            pairs = _pairs_for_scale(hr_images, scale, options, lr_files, hr_files)
            sheet = _Sheet(pairs, sheet_stems, options.sheet_crop_px)
            if options.niqe:
                hr_reference.append(_hr_reference(pairs, scale))
            for method in methods_for(options.baselines, models, scale):
                rows.append(_measure(method, pairs, scale, options, lpips_net, sheet, bar, hr_files,
                                     len(rows) * len(pairs)))
            sheet_rows += sheet.rows(scale)

    timing = {"warmup_runs": options.warmup_runs, "clock": "time.perf_counter per image",
              "memory": "peak RSS growth during the timed images, sampled every 2 ms"}
    lr_source = "matlab-bicubic" if options.lr_dir is None else f"dir:{options.lr_dir}"
    return BenchResult(str(data_dir), lr_source, _metric(options, lpips_net, lpips_missing), timing,
                       environment(models), infos, tuple(rows), tuple(sheet_rows), tuple(hr_reference))
