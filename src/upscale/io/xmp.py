"""XMP: the packet of a decoded file (ratings, keywords, rights, edit history), with its
``tiff:Orientation`` set to 1 as EXIF's is (the pixels are already upright), and how each writer
carries it. Works on what Pillow already parsed (no import of PIL here)."""

from __future__ import annotations

import re

PNG_KEYWORD = b"XML:com.adobe.xmp"           # the iTXt keyword XMP's PNG embedding names
JPEG_MAX_XMP = 65533 - len(b"http://ns.adobe.com/xap/1.0/\x00")   # one APP1 segment (no extended XMP)

# tiff:Orientation as an attribute (tiff:Orientation="6") or an element (<tiff:Orientation>6</...>,
# possibly with attributes of its own, such as rdf:datatype)
_ORIENTATION = re.compile(rb"""(tiff:Orientation\s*=\s*["']|<tiff:Orientation(?:\s[^>]*)?>\s*)[1-8](?=\s*["'<])""")


def xmp_of(im) -> tuple[bytes | None, str | None]:
    """(the XMP packet of an opened Pillow image, with any ``tiff:Orientation`` set to 1, or None; what
    was wrong with it, or None). Pillow fills ``info["xmp"]`` for JPEG, PNG, WebP, TIFF and AVIF. XMP is
    UTF-8 by its specification (PNG's iTXt chunk requires it): a packet that is not is dropped."""
    raw = im.info.get("xmp")
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return None, None
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None, "XMP packet dropped (not UTF-8)"
    return _ORIENTATION.sub(rb"\g<1>1", bytes(raw)), None


def png_itxt(xmp: bytes) -> bytes:
    """The data of the iTXt chunk that carries ``xmp`` in a PNG: keyword, uncompressed, no language."""
    return PNG_KEYWORD + b"\x00\x00\x00\x00\x00" + xmp
