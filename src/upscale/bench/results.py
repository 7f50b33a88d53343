"""The bench's records: per-image scores, one row per scale and method, the HR images' own
no-reference scores, and the whole result with its ``--json`` (schema ``upscale.bench/1``,
docs/bench.md), CSV and Markdown forms."""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA = "upscale.bench/1"


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr_db: float
    ssim: float
    lpips: float | None
    seconds: float
    niqe: float | None = None        # no-reference, lower is better; None unless asked for


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
    niqe: float | None = None        # mean over images; None unless asked for


@dataclass(frozen=True)
class HrReference:
    """The HR images' own NIQE at one scale (mod-cropped, border = scale, like the methods' outputs):
    the reference the methods' NIQE is read against."""

    scale: int
    niqe: float
    per_image: tuple[tuple[str, float], ...]   # (image name, NIQE)


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


CSV_FIELDS = ("scale", "method", "kind", "psnr_db", "ssim", "lpips", "niqe", "seconds_per_image",
              "output_mp_per_s", "peak_memory_mib", "peak_device_mib", "device", "dtype", "note")


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
    hr_reference: tuple[HrReference, ...] = ()     # one per scale when NIQE was asked for

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema ``upscale.bench/1``, documented in docs/bench.md)."""
        rows = []
        for row in self.rows:
            d = asdict(row)
            for key in ("psnr_db", "ssim", "lpips", "niqe"):
                d[key] = _finite_or_none(d[key])
            d["per_image"] = [{**s, **{k: _finite_or_none(s[k]) for k in ("psnr_db", "ssim", "lpips", "niqe")}}
                              for s in d["per_image"]]
            rows.append(d)
        hr = [{"scale": h.scale, "niqe": _finite_or_none(h.niqe),
               "per_image": [{"name": name, "niqe": _finite_or_none(v)} for name, v in h.per_image]}
              for h in self.hr_reference]
        return {"schema": SCHEMA, "data": self.data, "lr_source": self.lr_source, "metric": dict(self.metric),
                "timing": dict(self.timing), "environment": dict(self.environment),
                "images": [asdict(i) for i in self.images], "rows": rows, "hr_reference": hr}

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
        """The table; a NIQE column, and an HR row heading each scale, only when NIQE was computed."""
        space = "Y" if self.metric["y_channel"] else "RGB"
        with_niqe = bool(self.hr_reference)
        hr_niqe = {h.scale: h.niqe for h in self.hr_reference}
        header = ["scale", "method", f"PSNR-{space} (dB)", f"SSIM-{space}", *(["NIQE"] if with_niqe else []),
                  "LPIPS", "s/image", "MP/s", "peak MiB", "note"]
        lines = [header]
        for i, r in enumerate(self.rows):
            if with_niqe and (i == 0 or self.rows[i - 1].scale != r.scale) and r.scale in hr_niqe:
                lines.append([f"x{r.scale}", "HR", "", "", f"{hr_niqe[r.scale]:.2f}", "", "", "", "",
                              "the HR images themselves (reference)"])
            lpips = "n/a" if r.lpips is None else f"{r.lpips:.4f}"
            mem = "n/a" if r.peak_memory_mib is None else f"{r.peak_memory_mib:.1f}"
            niqe = ["n/a" if r.niqe is None else f"{r.niqe:.2f}"] if with_niqe else []
            lines.append([f"x{r.scale}", r.method, f"{r.psnr_db:.2f}", f"{r.ssim:.4f}", *niqe, lpips,
                          f"{r.seconds_per_image:.4f}", f"{r.output_mp_per_s:.2f}", mem, r.note])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

        def fmt(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

        out = [fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [fmt(line) for line in lines[1:]]
        if with_niqe:
            out.append(f"\nNIQE: lower is more natural (no reference; {self.metric['niqe']}).")
        if self.metric.get("lpips_missing"):
            out.append(f"\nLPIPS n/a: {self.metric['lpips_missing']}")
        return "\n".join(out) + "\n"
