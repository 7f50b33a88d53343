"""Text and PNG colour metadata: a PNG's tEXt/zTXt/iTXt chunks (an AI image's ``parameters``, an
``Author``, a ``Comment``) and a JPEG's comment, read as (keyword, text) pairs, a PNG's gAMA/cHRM/sRGB
chunks as they stood, and how PNG and JPEG write them back. Works on what Pillow already parsed (no
import of PIL here)."""

from __future__ import annotations

import struct
import zlib

from .xmp import PNG_KEYWORD

JPEG_COMMENT = "Comment"        # the keyword a JPEG's COM segment is kept under (ImageMagick's too)
# Carried elsewhere (XMP) or copies of metadata the record holds upright (ImageMagick's hex EXIF, XMP,
# ICC): written back, their orientation would turn the upright pixels a second time.
_SKIPPED = (PNG_KEYWORD.decode("latin-1"), "Raw profile type ")
_COMPRESS_OVER = 1024           # bytes of text from which a chunk is deflated
JPEG_MAX_COMMENT = 65533        # one COM segment, less its length field


def text_of(im) -> tuple[tuple[str, str], ...]:
    """The text an opened (and loaded) Pillow image carries: every PNG text chunk but XMP's and raw
    profiles, in file order, or a JPEG's comment as ``Comment``."""
    if im.format == "PNG":
        return tuple((str(k), str(v)) for k, v in getattr(im, "text", {}).items()
                     if not str(k).startswith(_SKIPPED))
    comment = im.info.get("comment") if im.format == "JPEG" else None
    if isinstance(comment, (bytes, bytearray)) and comment:
        try:
            return ((JPEG_COMMENT, bytes(comment).decode("utf-8")),)
        except UnicodeDecodeError:
            return ((JPEG_COMMENT, bytes(comment).decode("latin-1")),)
    return ()


def png_colour_of(im) -> tuple[tuple[bytes, bytes], ...]:
    """A PNG's gAMA, cHRM and sRGB chunks (type, data) rebuilt from what Pillow parsed: how its
    samples are meant to be shown, which still holds for the upscaled ones."""
    if im.format != "PNG":
        return ()
    chunks = []
    try:
        if im.info.get("gamma") is not None:
            chunks.append((b"gAMA", struct.pack(">I", round(float(im.info["gamma"]) * 100000))))
        if im.info.get("chromaticity") is not None:
            chunks.append((b"cHRM", struct.pack(">8I", *(round(float(v) * 100000) for v in im.info["chromaticity"]))))
        if im.info.get("srgb") is not None:
            chunks.append((b"sRGB", bytes([int(im.info["srgb"])])))
    except (TypeError, ValueError, struct.error):
        return ()
    return tuple(chunks)


def png_text_chunks(text: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    """(type, data) of the chunks carrying ``text``: tEXt where Latin-1 holds it, else iTXt (UTF-8),
    deflated when long. A keyword PNG cannot hold (1..79 Latin-1 characters) is left out."""
    chunks = []
    for keyword, value in text:
        try:
            key = keyword.encode("latin-1")
        except UnicodeEncodeError:
            continue
        if not 1 <= len(key) <= 79 or b"\x00" in key:
            continue
        try:
            data = value.encode("latin-1")
            if len(data) <= _COMPRESS_OVER:
                chunks.append((b"tEXt", key + b"\x00" + data))
                continue
        except UnicodeEncodeError:
            pass
        data = value.encode("utf-8")
        packed = len(data) > _COMPRESS_OVER
        chunks.append((b"iTXt", key + b"\x00" + bytes([packed, 0]) + b"\x00\x00"
                       + (zlib.compress(data) if packed else data)))
    return chunks


def jpeg_comment(text: tuple[tuple[str, str], ...]) -> bytes | None:
    """The JPEG comment among ``text`` (``Comment``), UTF-8, or None (also where one COM segment
    cannot hold it)."""
    for keyword, value in text:
        if keyword == JPEG_COMMENT and len(value.encode("utf-8")) <= JPEG_MAX_COMMENT:
            return value.encode("utf-8")
    return None
