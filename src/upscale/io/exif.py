"""EXIF: the orientation of a decoded file, the block with its Orientation reset to 1, and applying an
orientation to pixel arrays. Works on what Pillow already parsed (duck-typed; no import of PIL here)."""

from __future__ import annotations

import struct

import numpy as np

from .image import one_line

ORIENTATION_TAG = 0x0112
EXIF_IFD_TAG = 0x8769
PIXEL_X_TAG, PIXEL_Y_TAG = 0xA002, 0xA003   # PixelXDimension, PixelYDimension (in the Exif IFD)
THUMBNAIL_OFFSET_TAG, THUMBNAIL_LENGTH_TAG = 0x0201, 0x0202   # in IFD1
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


def exif_dpi(im) -> tuple[float, float] | None:
    """The resolution an opened Pillow image's EXIF gives (X/YResolution in ResolutionUnit inch or
    cm) as pixels per inch, or None: for formats with no resolution field of their own (WebP, AVIF,
    HEIC), whose photos say it there."""
    try:
        exif = im.getexif()
        x, y, unit = exif.get(0x011A), exif.get(0x011B), int(exif.get(0x0128, 2))
        per_inch = {2: 1.0, 3: 2.54}[unit]
        return float(x) * per_inch, float(y) * per_inch
    except Exception:  # noqa: BLE001 - absent, no absolute unit, or malformed: no resolution
        return None


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


def fit_exif(exif: bytes, width: int, height: int) -> bytes:
    """``exif`` for an image of ``width`` x ``height`` pixels: PixelXDimension/PixelYDimension set to
    them (where the block has them) and the thumbnail (IFD1, a picture of the image before it was
    turned and upscaled) dropped, its bytes cut off the end of the block or else zeroed. Everything
    else stays byte-identical; a block this cannot parse is returned as it is."""
    tiff = bytearray(exif[len(EXIF_PREFIX):] if exif.startswith(EXIF_PREFIX) else exif)
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(tiff[:2])]
        ifd0 = struct.unpack_from(order + "I", tiff, 4)[0]
        exif_ifd = _entries(tiff, order, ifd0).get(EXIF_IFD_TAG)
        if exif_ifd is not None:
            sub = struct.unpack_from(order + "I", tiff, exif_ifd + 8)[0]
            for tag, entry in _entries(tiff, order, sub).items():
                if tag in (PIXEL_X_TAG, PIXEL_Y_TAG):
                    # LONG whatever it was: a SHORT holds no side over 65535
                    struct.pack_into(order + "HII", tiff, entry + 2, 4, 1, width if tag == PIXEL_X_TAG else height)
        _drop_thumbnail(tiff, order, ifd0)
    except (KeyError, struct.error):
        return exif
    return EXIF_PREFIX + bytes(tiff)


def _entries(tiff: bytearray, order: str, ifd: int) -> dict[int, int]:
    """tag -> offset of its 12-byte entry, for the IFD at ``ifd``."""
    count = struct.unpack_from(order + "H", tiff, ifd)[0]
    return {struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i)[0]: ifd + 2 + 12 * i for i in range(count)}


def _drop_thumbnail(tiff: bytearray, order: str, ifd0: int) -> None:
    """Unlink IFD1 from IFD0 and remove the thumbnail it points to (truncated where it ends the block)."""
    link = ifd0 + 2 + 12 * struct.unpack_from(order + "H", tiff, ifd0)[0]
    ifd1 = struct.unpack_from(order + "I", tiff, link)[0]
    if not ifd1:
        return
    struct.pack_into(order + "I", tiff, link, 0)
    entries = _entries(tiff, order, ifd1)
    where = [entries.get(THUMBNAIL_OFFSET_TAG), entries.get(THUMBNAIL_LENGTH_TAG)]
    if None not in where and all(struct.unpack_from(order + "H", tiff, e + 2)[0] == 4 for e in where):  # LONG
        start, length = (struct.unpack_from(order + "I", tiff, e + 8)[0] for e in where)
        if start + length >= len(tiff):
            del tiff[start:]
        else:
            tiff[start:start + length] = bytes(length)


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
