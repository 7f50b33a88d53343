"""The contact sheet: the same crop (the most detailed square of the HR image) from HR and every
method, labelled with each method's PSNR, written as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import errors
from ..atomic import atomic_file
from .results import SheetRow

SHEET_TILE_PX = 192   # each crop is enlarged (nearest neighbour) to about this many pixels on a side


def best_crop(hr: np.ndarray, crop_px: int) -> tuple[int, int, int]:
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


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


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
    """Render the sheet and write it as PNG atomically (``upscale.atomic``)."""
    path = Path(path)
    try:
        with atomic_file(path, "wb") as f:
            render_sheet(sheet_rows).save(f, format="PNG", optimize=True)
    except OSError as err:
        raise errors.ImageWriteError(f"cannot write the contact sheet: {err.strerror or err}", path=path) from err
