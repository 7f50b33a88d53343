"""Training curves drawn with Pillow (no plotting library): loss terms on a log axis on the left,
validation PSNR-Y per set on the right, both against iterations, read from ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_file

PANEL_W, PANEL_H = 560, 360
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 16, 28, 40
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207))


Series = dict[str, list[tuple[int, float]]]


def read_series(metrics_path: str | Path) -> tuple[Series, Series, dict[str, float]]:
    """({loss name: [(iter, value)]}, {val set: [(iter, psnr)]}, {val set: bicubic psnr}) from a
    metrics.jsonl file."""
    losses: Series = {}
    psnrs: Series = {}
    bicubic: dict[str, float] = {}
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        it = int(rec["iter"])
        for key, value in rec.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if key.startswith("loss/"):
                losses.setdefault(key[5:], []).append((it, float(value)))
            elif key.startswith("val/") and key.endswith("/psnr"):
                psnrs.setdefault(key[4:-5], []).append((it, float(value)))
            elif key.startswith("bicubic/") and key.endswith("/psnr"):
                bicubic[key[8:-5]] = float(value)
    return losses, psnrs, bicubic


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """log10 positions of 1, 2, 3, 5 x 10^k inside [lo, hi] (log10 units); evenly spaced if too few."""
    ticks = [math.log10(m) + k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 3, 5)]
    inside = [t for t in ticks if lo <= t <= hi]
    return inside if len(inside) >= 2 else _nice_ticks(lo, hi)


def _panel(title: str, series: Series, log_y: bool, y_label: str,
           references: dict[str, float] | None = None) -> Image.Image:
    """One chart; ``references`` are drawn as grey horizontal lines (e.g. the bicubic PSNR)."""
    references = references or {}
    img = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((MARGIN_L, 6), title, fill="black", font=font)
    x0, y0, x1, y1 = MARGIN_L, MARGIN_T, PANEL_W - MARGIN_R, PANEL_H - MARGIN_B
    draw.rectangle((x0, y0, x1, y1), outline="black")
    points = [(i, v) for s in series.values() for i, v in s if not log_y or v > 0]
    if not points:
        draw.text((x0 + 10, (y0 + y1) // 2), "no data yet", fill="gray", font=font)
        return img
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    it_lo, it_hi = min(p[0] for p in points), max(p[0] for p in points)
    values = [fy(p[1]) for p in points] + [fy(v) for v in references.values()]
    v_lo, v_hi = min(values), max(values)
    if it_hi == it_lo:
        it_hi = it_lo + 1
    pad = 0.05 * (v_hi - v_lo) or 0.5
    v_lo, v_hi = v_lo - pad, v_hi + pad

    def to_px(it: float, v: float) -> tuple[float, float]:
        return (x0 + (it - it_lo) / (it_hi - it_lo) * (x1 - x0), y1 - (fy(v) - v_lo) / (v_hi - v_lo) * (y1 - y0))

    for t in _nice_ticks(it_lo, it_hi):
        x = x0 + (t - it_lo) / (it_hi - it_lo) * (x1 - x0)
        draw.line((x, y1, x, y1 + 4), fill="black")
        draw.text((x - 12, y1 + 6), f"{t:g}", fill="black", font=font)
    for t in (_log_ticks(v_lo, v_hi) if log_y else _nice_ticks(v_lo, v_hi)):
        y = y1 - (t - v_lo) / (v_hi - v_lo) * (y1 - y0)
        draw.line((x0 - 4, y, x1, y), fill=(230, 230, 230))
        draw.text((4, y - 6), f"{10 ** t:.3g}" if log_y else f"{t:.4g}", fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 20, PANEL_H - 16), "iteration", fill="black", font=font)
    draw.text((x0 + 4, y0 + 4), y_label, fill="gray", font=font)
    for name, value in sorted(references.items()):
        y = to_px(it_lo, value)[1]
        draw.line((x0, y, x1, y), fill=(150, 150, 150))
        draw.text((x0 + 6, y - 12), f"bicubic {name} {value:.2f}", fill=(120, 120, 120), font=font)
    for k, (name, pts) in enumerate(sorted(series.items())):
        colour = COLOURS[k % len(COLOURS)]
        xy = [to_px(i, v) for i, v in pts if not log_y or v > 0]
        if len(xy) == 1:
            draw.ellipse((xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2), fill=colour)
        elif xy:
            draw.line(xy, fill=colour, width=2)
        draw.text((x1 - 150, y0 + 6 + 12 * k), name, fill=colour, font=font)
    return img


def draw_curves(metrics_path: str | Path, png_path: str | Path) -> None:
    """Write the loss and PSNR curves of a run as one PNG (atomically)."""
    losses, psnrs, bicubic = read_series(metrics_path)
    sheet = Image.new("RGB", (2 * PANEL_W, PANEL_H), "white")
    sheet.paste(_panel("training loss", losses, True, "loss (log)"), (0, 0))
    sheet.paste(_panel("validation PSNR-Y (EMA model)", psnrs, False, "dB", bicubic), (PANEL_W, 0))
    with atomic_file(Path(png_path), "wb", durable=False) as f:
        sheet.save(f, format="PNG")
