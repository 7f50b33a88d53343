"""Our streaming BMP encoder: uncompressed, 24-bit RGB or 8-bit gray with a palette, written in blocks
of rows so a large output is never copied whole."""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

from .image import DEFAULT_DPI, dots_per_metre


def write_bmp(f: BinaryIO, pixels: np.ndarray, dpi: tuple[float, float] | None = None) -> None:
    """An uncompressed BMP, 24-bit (RGB) or 8-bit with a gray palette (L), written bottom-up in blocks
    of rows (no full-size copy); its resolution is ``dpi`` (default 72 dpi)."""
    h, w, c = pixels.shape
    bpp = 24 if c == 3 else 8
    palette = b"" if c == 3 else bytes(b for v in range(256) for b in (v, v, v, 0))
    stride = (w * c + 3) // 4 * 4
    offset = 14 + 40 + len(palette)
    size = offset + stride * h
    if size >= 1 << 32:
        raise ValueError(f"{w}x{h} is too large for BMP (4 GB limit)")
    f.write(struct.pack("<2sIHHI", b"BM", size, 0, 0, offset))
    f.write(struct.pack("<IiiHHIIiiII", 40, w, h, 1, bpp, 0, stride * h, *dots_per_metre(dpi or DEFAULT_DPI),
                        256 if c == 1 else 0, 0))
    f.write(palette)
    block = max(1, (4 << 20) // stride)
    for top in range(h, 0, -block):                       # BMP rows run from the bottom up
        rows = pixels[max(0, top - block):top][::-1]
        out = np.zeros((len(rows), stride), np.uint8)
        out[:, :w * c] = (rows[..., ::-1] if c == 3 else rows).reshape(len(rows), w * c)   # RGB -> BGR
        f.write(out.tobytes())
