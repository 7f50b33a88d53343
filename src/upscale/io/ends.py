"""Whether an image file is whole: it ends where its own format says it ends, found from a few bytes
(no pixel is decoded). Batch resume asks it of existing outputs, so an output cut short (a copy that
stopped, a disk that filled, a file damaged after our atomic write) is redone instead of skipped.

Per format, what "whole" means:

- PNG (and APNG): the last 12 bytes are the ``IEND`` chunk.
- JPEG: the last two bytes are the EOI marker ``FF D9``.
- WebP: the RIFF header's length is the file's length less 8.
- BMP: the header's file size is the file's size.
- TIFF: the first image's directory, its tags' values and every strip or tile it names lie inside
  the file.
- AVIF (ISO BMFF): the top-level boxes, walked by their sizes, end exactly at the end of the file.

Anything else (a format we never write) counts as whole: its header read, which is all that was
checked before.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"
_TIFF_PARTS = ((273, 279), (324, 325))      # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)
_TIFF_PART_TAGS = {tag for pair in _TIFF_PARTS for tag in pair}
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}


def is_whole(path: str | Path) -> bool:
    """Whether ``path`` ends where its format says (see the module); False when it cannot be read."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 12))
            tail = f.read(12)
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                return tail == PNG_END
            if head.startswith(b"\xff\xd8"):
                return tail.endswith(JPEG_END)
            if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
                return struct.unpack("<I", head[4:8])[0] + 8 == size
            if head.startswith(b"BM"):
                return struct.unpack("<I", head[2:6])[0] == size
            if head[4:8] == b"ftyp":
                return _boxes_end_at(f, size)
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                return _tiff_parts_inside(f, size)
    except (OSError, struct.error):
        return False
    return True


def _boxes_end_at(f, size: int) -> bool:
    """ISO BMFF: walk the top-level boxes; whole when the last one ends at ``size``."""
    at = 0
    while at < size:
        f.seek(at)
        header = f.read(16)
        if len(header) < 8:
            return False
        length = struct.unpack(">I", header[:4])[0]
        if length == 1:             # 64-bit size follows the type
            if len(header) < 16:
                return False
            length = struct.unpack(">Q", header[8:16])[0]
        elif length == 0:           # "to the end of the file"
            return True
        if length < 8:
            return False
        at += length
    return at == size


def _tiff_parts_inside(f, size: int) -> bool:
    """Classic TIFF: the first IFD, every tag value stored outside it, and every strip or tile it
    names end inside the file (BigTIFF, which we never write, counts as whole)."""
    f.seek(0)
    head = f.read(8)
    order = "<" if head[:2] == b"II" else ">"
    if struct.unpack(order + "H", head[2:4])[0] != 42:
        return True
    ifd = struct.unpack(order + "I", head[4:8])[0]
    f.seek(ifd)
    count = struct.unpack(order + "H", f.read(2))[0]
    ends = [ifd + 2 + 12 * count + 4]
    values: dict[int, tuple[int, ...]] = {}
    entries = f.read(12 * count)
    for i in range(count):
        tag, kind, n, raw = struct.unpack(order + "HHI4s", entries[12 * i:12 * i + 12])
        width = _TIFF_TYPE_BYTES.get(kind, 1) * n
        at = struct.unpack(order + "I", raw)[0] if width > 4 else None
        if at is not None:
            ends.append(at + width)
        if tag in _TIFF_PART_TAGS and kind in (3, 4):
            code = "H" if kind == 3 else "I"
            if at is None:
                data = raw[:width]
            else:
                f.seek(at)
                data = f.read(width)
            values[tag] = struct.unpack(f"{order}{n}{code}", data)
    for offsets_tag, counts_tag in _TIFF_PARTS:
        if offsets_tag in values and counts_tag in values:
            ends.extend(o + c for o, c in zip(values[offsets_tag], values[counts_tag]))
    return max(ends) <= size
