"""Writing: ``Image`` -> a file, atomically through ``upscale.atomic`` (the per-format rules are in the
package docstring). ``check_output`` is the whole up-front check, for callers that want to refuse a bad
output before the slow work."""

from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image as PILImage

from .. import atomic, errors
from ..atomic import atomic_file
from .bmp import write_bmp
from .exif import JPEG_MAX_EXIF, fit_exif
from .xmp import JPEG_MAX_XMP
from .image import DEFAULT_QUALITY, FORMAT_BY_EXT, MAX_SIDE, SUPPORTED_EXTENSIONS, Image, one_line, to_uint8
from .png import png_workers, write_png
from .text import jpeg_comment
from .tiff import write_tiff

log = logging.getLogger(__name__)


def output_format_for(path: str | Path, format: str | None = None) -> str:
    """Pillow format name ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "AVIF") from ``format`` or else the extension.

    A ``format`` that contradicts a known extension of ``path`` (``y.png`` as jpg) is a ``UsageError``;
    the same format spelled otherwise (jpg/jpeg, tif/tiff) is fine, and so is a path whose extension
    is not an image format's.
    """
    suffix = Path(path).suffix
    by_ext = FORMAT_BY_EXT.get(suffix.lower().lstrip("."))
    key = (format if format else suffix).lower().lstrip(".")
    if key not in FORMAT_BY_EXT:
        what = f"format {format!r}" if format else f"extension {suffix or '(none)'!r}"
        raise errors.ImageWriteError(
            f"unknown output {what}; use one of {', '.join(sorted(SUPPORTED_EXTENSIONS))}", path=path)
    fmt = FORMAT_BY_EXT[key]
    if by_ext is not None and by_ext != fmt:
        raise errors.UsageError(
            f"output_format {format!r} contradicts the file's extension {suffix!r} ({by_ext}); "
            f"name the file .{key} or leave output_format out", path=path, params=("output_format",))
    return fmt


def check_output(path: str | Path, format: str | None = None, quality: int | None = None,
                 size: tuple[int, int] | None = None) -> str:
    """Everything ``write_image`` checks before it encodes: a known format that agrees with the
    extension, ``quality`` in 1..100, an existing folder, a target that is not a folder and, given the
    output's (width, height), a size the format holds (``MAX_SIDE``). Returns the Pillow format name;
    raises ``ImageWriteError`` / ``UsageError`` naming the file."""
    path = Path(path)
    fmt = check_size(path, format, size)
    if quality is not None and not 1 <= quality <= 100:
        raise errors.UsageError(f"quality must be between 1 and 100, not {quality}", params=("quality",))
    problem = atomic.folder_problem(path.parent)
    if problem:
        raise errors.ImageWriteError(problem, path=path)
    if _is_dir(path):
        raise errors.ImageWriteError("is a folder; name an image file to write", path=path)
    return fmt


def check_size(path: str | Path, format: str | None, size: tuple[int, int] | None) -> str:
    """The output's format (``output_format_for``), and ``ImageWriteError`` naming ``path`` when an
    output of ``size`` (width, height) is more than it holds (``MAX_SIDE``); the folder is not looked
    at (a batch makes its sub-folders as it writes)."""
    fmt = output_format_for(path, format)
    if size is not None and max(size) > MAX_SIDE.get(fmt, max(size)):
        raise errors.ImageWriteError(f"{fmt} holds at most {MAX_SIDE[fmt]} px a side; the output would be "
                                     f"{size[0]} x {size[1]} (write .png or .tif)", path=path)
    return fmt


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False




def write_image(image: Image, path: str | Path, *, format: str | None = None,
                quality: int | None = None, threads: int | None = None) -> None:
    """Write ``image`` to ``path`` atomically; ``ImageWriteError`` if it cannot be written.

    ``format`` (png, jpg/jpeg, webp, tif/tiff, bmp, avif) is for a path without an image extension (it
    must agree with one that has); ``quality`` (1..100) is for JPEG, WebP and AVIF; ``threads`` is how many
    threads PNG encoding may use (None: every CPU this process may run on; a caller that already
    encodes several images at once passes 1).
    """
    path = Path(path)
    if not isinstance(image, Image):    # an array or a Pillow image has no metadata to write: save it with Pillow
        raise errors.UsageError(f"write_image takes an upscale Image, not {type(image).__module__}."
                                f"{type(image).__qualname__}; save arrays and Pillow images with Pillow",
                                path=path, params=("image",))
    h, w = image.pixels.shape[:2]
    fmt = check_output(path, format, quality, (w, h))
    try:
        with atomic_file(path, "wb") as f:
            _encode(image, f, fmt, quality, path, threads)
    except OSError as err:
        raise errors.ImageWriteError(f"cannot write ({err.strerror or one_line(err)})", path=path) from None
    except (ValueError, RuntimeError) as err:  # Pillow's encoders report impossible images so (AVIF: Runtime)
        raise errors.ImageWriteError(f"cannot encode as {fmt} ({one_line(err)})", path=path) from None


def _encode(image: Image, f: BinaryIO, fmt: str, quality: int | None, path: Path, threads: int | None) -> None:
    alpha = image.alpha
    if alpha is not None and fmt in ("JPEG", "BMP"):
        log.warning("%s: %s has no alpha channel; transparency dropped", path, fmt)
        alpha = None
    if fmt == "TIFF":
        write_tiff(f, image.pixels, alpha, image.icc_profile, image.xmp, image.dpi)
        return
    h, w = image.pixels.shape[:2]     # (TIFF carries no EXIF)
    exif = fit_exif(image.exif, w, h) if image.exif else None   # its sizes are the output's, no old thumbnail
    if fmt == "PNG":   # streamed by our own writer: no second copy of a large output in Pillow's memory
        write_png(f, image.pixels, alpha, image.icc_profile, exif, threads or png_workers(), image.xmp,
                  image.dpi, image.text, image.png_colour)
        return
    pixels = to_uint8(image.pixels)
    if fmt == "BMP":
        write_bmp(f, pixels, image.dpi)
        return
    if fmt == "WEBP" and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    stack = pixels if alpha is None else np.dstack([pixels, to_uint8(alpha)])
    pil = PILImage.fromarray(stack[..., 0] if stack.shape[2] == 1 else stack)
    params: dict[str, object] = {}
    if image.icc_profile:
        params["icc_profile"] = image.icc_profile
    if exif:
        if fmt == "JPEG" and len(exif) > JPEG_MAX_EXIF:
            log.warning("%s: EXIF block of %d bytes is too large for JPEG; not written", path, len(exif))
        else:
            params["exif"] = exif
    if image.xmp:
        if fmt == "JPEG" and len(image.xmp) > JPEG_MAX_XMP:
            log.warning("%s: XMP packet of %d bytes is too large for JPEG; not written", path, len(image.xmp))
        else:
            params["xmp"] = image.xmp
    if fmt in DEFAULT_QUALITY:
        params["quality"] = quality if quality is not None else DEFAULT_QUALITY[fmt]
    if fmt == "JPEG":
        params["subsampling"] = 0
        if image.dpi:
            params["dpi"] = tuple(round(v) for v in image.dpi)   # JFIF holds whole dots per inch
        comment = jpeg_comment(image.text)
        if comment:
            params["comment"] = comment
    if fmt == "AVIF":
        params["subsampling"] = "4:4:4"   # an upscaled image's chroma is as sharp as its luma
    save_whole(pil, f, format=fmt, **params)


def save_whole(picture: PILImage.Image, f: BinaryIO, **params: object) -> None:
    """``picture.save(f, ...)`` through memory: some of Pillow's encoders (JPEG) write straight to the
    file's descriptor and ignore a short write (a full disk, a file size limit), which would leave a
    cut file to be renamed into place. Encoded into a buffer first, the file gets one Python
    ``write``, which writes it all or raises."""
    buffer = io.BytesIO()
    picture.save(buffer, **params)
    f.write(buffer.getbuffer())
