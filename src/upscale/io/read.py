"""Reading: an image file -> ``Image`` (the rules are in the package docstring), and its size from the
header alone. Every failure is an ``ImageReadError`` naming the file."""

from __future__ import annotations

import contextlib
import logging
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .. import errors
from .decode import check_layout, decode, tile_rawmode
from .exif import exif_dpi, exif_of, orient
from .image import Image
from .opening import PillowWarning, load_pixels, open_image, pillow_warnings
from .text import png_colour_of, text_of
from .xmp import xmp_of

log = logging.getLogger(__name__)

# Extra pictures of these formats are previews or depth maps of the same photo, not frames: no warning.
_NOT_FRAMES = {"MPO"}


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The input pixel limit ``read_image(max_pixels=...)`` applies: ``max_pixels``, else Pillow's
    decompression-bomb limit as it stands now (None where the user switched it off)."""
    from PIL import Image as PILImage

    return max_pixels if max_pixels is not None else PILImage.MAX_IMAGE_PIXELS


def read_image(path: str | Path, *, max_pixels: int | None = None) -> Image:
    """Decode ``path`` fully into an ``Image``; ``ImageReadError`` for anything wrong with the file.

    ``max_pixels`` replaces Pillow's decompression-bomb limit for this call (None: the global
    ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    if max_pixels is not None and max_pixels <= 0:
        raise errors.UsageError(f"max_pixels must be a positive number of pixels, not {max_pixels}",
                                params=("max_pixels",))
    path = Path(path)
    check_file(path)
    im, default_limit, opened = open_image(path)
    with im:
        limit = max_pixels if max_pixels is not None else default_limit
        w, h = im.size
        if limit is not None and w * h > limit:
            raise errors.ImageReadError(
                f"{w}x{h} = {w * h:,} pixels is over the limit of {limit:,} pixels (decompression-bomb "
                "guard); raise max_pixels if you trust this file", path=path, params=("max_pixels",))
        source_format = im.format or "unknown"
        turned_on_load = _pillow_turns(im)
        check_layout(im, path)
        with _out_of_memory(path, w, h):
            rawmode = tile_rawmode(im)
            load_pixels(im, path)
            pixels, alpha, source_mode, icc = decode(im, path, rawmode)
        orientation, exif = _metadata(im, path, opened)
        dpi = dpi_of(im, max(orientation, turned_on_load))
        xmp, problem = xmp_of(im)
        if problem:
            log.warning("%s: %s", path, problem)
        frames = _frame_count(im, path)
        text, png_colour = text_of(im), png_colour_of(im)
    with _out_of_memory(path, w, h):
        pixels = np.ascontiguousarray(orient(pixels, orientation))
        alpha = None if alpha is None else np.ascontiguousarray(orient(alpha, orientation))
    return Image(pixels, alpha, icc, exif, source_format, source_mode, frames, xmp, dpi, text, png_colour)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as ``read_image`` will return it (EXIF orientation applied: 5-8 swap the sides),
    from the file's header without decoding pixels; ``ImageReadError`` if the header cannot be read.
    Logs nothing about the file's metadata: ``read_image`` of the same file does."""
    path = Path(path)
    check_file(path)
    im, _, _ = open_image(path)
    with im:
        w, h = im.size
        with pillow_warnings():
            orientation, _, _ = exif_of(im)
        if _pillow_turns(im):       # its size is already the turned one
            orientation = 1
    return (h, w) if orientation >= 5 else (w, h)


def _pillow_turns(im: PILImage.Image) -> int:
    """The orientation (2..8) Pillow itself applies when it loads ``im``, else 0: a TIFF's
    Orientation tag, which Pillow turns the pixels by (and reports the turned size for, already at
    open) and then drops, so ``exif_of`` after loading sees 1."""
    if im.format != "TIFF":
        return 0
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except (TypeError, ValueError, OSError, SyntaxError):
        return 0
    return orientation if orientation in range(2, 9) else 0


def check_file(path: Path) -> None:
    """``ImageReadError`` naming ``path`` when it is missing, unreadable, a folder, not a regular file
    or empty."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise errors.ImageReadError("file not found", path=path) from None
    except OSError as err:
        raise errors.ImageReadError(f"cannot access the file ({err.strerror or err})", path=path) from None
    if path.is_dir():
        raise errors.ImageReadError("is a folder, not an image file", path=path)
    if not stat.S_ISREG(st.st_mode):    # a pipe or device: read more than once, it would come empty
        raise errors.ImageReadError("is not a regular file (a pipe or a device); save the image to a file first",
                                    path=path)
    if st.st_size == 0:
        raise errors.ImageReadError("file is empty (0 bytes)", path=path)


@contextlib.contextmanager
def _out_of_memory(path: Path, w: int, h: int) -> Iterator[None]:
    """A MemoryError while decoding an image under the pixel limit becomes a message naming the file."""
    try:
        yield
    except MemoryError:
        raise errors.ImageReadError(f"not enough memory to decode {w} x {h} pixels", path=path) from None


def _metadata(im: PILImage.Image, path: Path, opened: list[PillowWarning]) -> tuple[int, bytes | None]:
    """``exif_of``, and what went wrong opening the file or parsing its EXIF, logged as at most one
    line about the EXIF and one about the rest, each naming the file. An EXIF block Pillow warned
    about is dropped; the orientation it could still read is kept."""
    with pillow_warnings() as caught:
        orientation, exif, problem = exif_of(im)
    # Pillow parses EXIF with its TIFF code; in a TIFF file that code reads the file's own tags.
    about_exif = [w for w in opened if w.module == "TiffImagePlugin" and im.format != "TIFF"] + caught
    rest = [w for w in opened if w not in about_exif]
    if rest:
        log.warning("%s: %s", path, "; ".join(w.text for w in rest))
    if about_exif:
        problem, exif = f"corrupt EXIF dropped ({'; '.join(w.text for w in about_exif)})", None
    if problem:
        log.warning("%s: %s", path, problem)
    return orientation, exif


def dpi_of(im: PILImage.Image, orientation: int) -> tuple[float, float] | None:
    """The file's pixels per inch (Pillow's ``info["dpi"]``: PNG pHYs in metres, JPEG JFIF, TIFF
    resolution; else its EXIF's, as Pillow's JPEG reader does), x and y swapped where the orientation
    turns the image a quarter; None when absent or not two positive numbers."""
    dpi = im.info.get("dpi") or exif_dpi(im)
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    if not (0 < x < 1e6 and 0 < y < 1e6):
        return None
    return (y, x) if orientation >= 5 else (x, y)


def _frame_count(im: PILImage.Image, path: Path) -> int:
    """How many frames or pages the file holds (1 when it cannot tell); one warning when over 1."""
    try:
        frames = int(getattr(im, "n_frames", 1) or 1)
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error, zlib.error):
        return 1
    if frames > 1 and im.format not in _NOT_FRAMES:
        log.warning("%s: %d frames; only the first is read", path, frames)
    return frames
