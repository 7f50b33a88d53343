"""EXIF: the orientation of a decoded file, the block with its Orientation reset to 1, and applying an
orientation to pixel arrays. Works on what Pillow already parsed (duck-typed; no import of PIL here)."""

from __future__ import annotations

import struct

import numpy as np

from .image import one_line

ORIENTATION_TAG = 0x0112
JPEG_MAX_EXIF = 65533  # one APP1 segment, less its length field
EXIF_PREFIX = b"Exif\x00\x00"


def exif_of(im) -> tuple[int, bytes | None, str | None]:
    """(EXIF orientation 1..8, EXIF block with Orientation set to 1 or None, what was wrong or None) of
    an opened Pillow image. Logs nothing: the reader words the problem as one line naming the file."""
    problem = None
    try:
        orientation = int(im.getexif().get(ORIENTATION_TAG, 1))
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on malformed EXIF
        orientation, problem = 1, f"unreadable EXIF ({one_line(err)}); orientation ignored"
    if orientation not in range(1, 9):
        orientation = 1
    raw = im.info.get("exif") if im.format != "TIFF" else None
    if not raw:
        return orientation, None, problem
    try:
        return orientation, reset_orientation(bytes(raw)), problem
    except (ValueError, struct.error) as err:
        return orientation, None, problem or f"malformed EXIF block dropped ({one_line(err)})"


def reset_orientation(exif: bytes) -> bytes:
    """Set the Orientation entry of IFD0 to 1 in place; everything else stays byte-identical."""
    tiff = bytearray(exif[len(EXIF_PREFIX):] if exif.startswith(EXIF_PREFIX) else exif)
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None or struct.unpack_from(order + "H", tiff, 2)[0] != 42:
        raise ValueError("no TIFF header")
    ifd = struct.unpack_from(order + "I", tiff, 4)[0]
    count = struct.unpack_from(order + "H", tiff, ifd)[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag != ORIENTATION_TAG:
            continue
        if n != 1 or kind not in (3, 4):  # SHORT or LONG
            raise ValueError("odd Orientation entry")
        struct.pack_into(order + ("H" if kind == 3 else "I"), tiff, entry + 8, 1)
        break
    return EXIF_PREFIX + bytes(tiff)


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W[, C]) array, as ImageOps.exif_transpose does."""
    swap = (1, 0, *range(2, arr.ndim))
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.transpose(swap)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].transpose(swap)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr
