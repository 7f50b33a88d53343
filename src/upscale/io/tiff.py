"""Our TIFF encoder: little-endian baseline TIFF, 8 or 16 bit, deflate strips with the horizontal
predictor, unassociated alpha, ICC profile, XMP, resolution."""

from __future__ import annotations

import os
import struct
import zlib
from fractions import Fraction
from typing import BinaryIO

import numpy as np

from .image import DEFAULT_DPI

# TIFF tag numbers and field types used by the writer.
_BYTE, _SHORT, _LONG, _RATIONAL, _UNDEFINED = 1, 3, 4, 5, 7


def write_tiff(f: BinaryIO, pixels: np.ndarray, alpha: np.ndarray | None, icc: bytes | None,
               xmp: bytes | None = None, dpi: tuple[float, float] | None = None) -> None:
    """A little-endian baseline TIFF: deflate strips, horizontal predictor, unassociated alpha, ICC, XMP,
    resolution (``dpi``, in inches; 72 where unknown, since baseline TIFF requires one, as BMP's
    writer does)."""
    samples = pixels if alpha is None else np.dstack([pixels, alpha])
    h, w, spp = samples.shape
    bits = 8 * samples.dtype.itemsize
    predicted = samples.copy()
    predicted[:, 1:] -= samples[:, :-1]  # predictor 2: differences along the row, wrapping
    rows = predicted.astype(samples.dtype.newbyteorder("<")).view(np.uint8).reshape(h, -1)
    rows_per_strip = max(1, (1 << 20) // max(1, rows.shape[1]))

    f.write(b"II*\x00\x00\x00\x00\x00")  # IFD offset patched at the end
    offsets, counts = [], []
    for start in range(0, h, rows_per_strip):
        data = zlib.compress(rows[start:start + rows_per_strip].tobytes(), 6)
        offsets.append(f.tell())
        counts.append(len(data))
        f.write(data)

    entries: list[tuple[int, int, list[int] | bytes]] = [
        (256, _LONG, [w]), (257, _LONG, [h]), (258, _SHORT, [bits] * spp), (259, _SHORT, [8]),
        (262, _SHORT, [2 if pixels.shape[2] == 3 else 1]), (273, _LONG, offsets), (277, _SHORT, [spp]),
        (278, _LONG, [rows_per_strip]), (279, _LONG, counts), (284, _SHORT, [1]), (317, _SHORT, [2]),
    ]
    if alpha is not None:
        entries.append((338, _SHORT, [2]))  # ExtraSamples: unassociated alpha
    if xmp:
        entries.append((700, _BYTE, xmp))   # XMLPacket
    if icc:
        entries.append((34675, _UNDEFINED, icc))
    for tag, value in zip((282, 283), dpi or DEFAULT_DPI):   # X/YResolution, as numerator and denominator
        ratio = Fraction(value).limit_denominator(10000)
        entries.append((tag, _RATIONAL, [ratio.numerator, ratio.denominator]))
    entries.append((296, _SHORT, [2]))                     # ResolutionUnit: inch
    entries.sort(key=lambda entry: entry[0])      # an IFD lists its tags in ascending order

    packed: list[bytes] = []
    for tag, kind, values in entries:
        data = values if isinstance(values, bytes) else struct.pack(
            f"<{len(values)}{'H' if kind == _SHORT else 'I'}", *values)
        count = len(values) // 2 if kind == _RATIONAL else len(values)
        if len(data) <= 4:
            packed.append(struct.pack("<HHI", tag, kind, count) + data.ljust(4, b"\x00"))
            continue
        if f.tell() % 2:
            f.write(b"\x00")
        packed.append(struct.pack("<HHII", tag, kind, count, f.tell()))
        f.write(data)
    if f.tell() % 2:
        f.write(b"\x00")
    ifd = f.tell()
    if ifd + 2 + 12 * len(packed) + 4 > 0xFFFFFFFF:
        raise OSError("image too large for a classic TIFF (over 4 GiB)")
    f.write(struct.pack("<H", len(packed)) + b"".join(packed) + b"\x00\x00\x00\x00")
    f.seek(4)
    f.write(struct.pack("<I", ifd))
    f.seek(0, os.SEEK_END)
