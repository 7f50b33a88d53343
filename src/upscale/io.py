"""Image files <-> the ``Image`` record (numpy pixels + alpha + colour metadata). Pillow only; no torch.

Reading (``read_image``):

- The bit depth comes from the file's own mode, never from pixel values. 16-bit grayscale PNG/TIFF
  (Pillow modes ``I;16``/``I;16B``, or ``I`` decoded from unsigned 16-bit samples) become ``uint16``.
  Pillow opens 16-bit RGB(A) PNGs and TIFFs as 8-bit ``RGB``/``RGBA`` (it keeps only the high byte),
  so for those the file is decoded a second time with the opposite-endian unpacker, which yields the
  low byte; ``high << 8 | low`` restores the exact samples. 16-bit gray+alpha PNGs are decoded once
  as raw bytes. Every other file is 8-bit (``uint8``).
- Modes: ``1``/``L`` -> gray (C=1); ``LA``/``La`` -> gray + alpha; ``P``/``PA`` -> RGB, or RGB + alpha
  when the palette has transparency; ``RGB``/``RGBX``/``YCbCr``/``HSV`` -> RGB; ``RGBA``/``RGBa`` ->
  RGB + alpha; a ``tRNS`` colour key becomes an alpha channel; ``CMYK`` -> RGB through the file's ICC
  profile when it has one (the CMYK profile is then dropped), otherwise Pillow's conversion. 32-bit
  integer (``I`` from signed or 32-bit samples) and float (``F``) images are refused: there is no
  unambiguous mapping of their values to [0, 1]. 16-bit premultiplied-alpha TIFFs are refused too.
- The EXIF Orientation is applied to the pixels (ImageOps.exif_transpose semantics) and the EXIF block
  is kept byte for byte except that Orientation is set to 1. TIFF inputs carry no separate EXIF block
  (their tags describe the file itself), so their ``exif`` is None; their orientation is still applied.
  Only the first frame of an animated or multi-page file is read.
- Pillow's decompression-bomb limit stays on: an image with more pixels than ``max_pixels`` (default
  ``PIL.Image.MAX_IMAGE_PIXELS`` as set when the call starts) is refused before it is decoded. The
  limit of one call does not change any other call's.
- Every failure is an ``ImageReadError`` naming the file; truncated data is never padded
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone, False by default) because the whole image is
  decoded with ``load()`` before it is returned.

Writing (``write_image``) is atomic: the file is written to ``temp_path_for(path)`` in the same folder
(``.{name}.upscale-tmp``), flushed to disk and renamed over ``path``; on any failure the temporary
file is removed. Per format:

======  ==========  =====  ===  ====  =============================================================
format  16-bit      alpha  ICC  EXIF  notes
======  ==========  =====  ===  ====  =============================================================
PNG     kept        kept   yes  yes   16-bit written by the small encoder below (Pillow cannot)
TIFF    kept        kept   yes  no    written by the small encoder below, deflate + predictor 2
JPEG    -> 8 bit    drop   yes  yes   quality 95 by default, 4:4:4 chroma
WebP    -> 8 bit    kept   yes  yes   lossy, quality 95 by default; grayscale is stored as RGB
BMP     -> 8 bit    drop   no   no
======  ==========  =====  ===  ====  =============================================================

16 -> 8 bit rounds (``round(v * 255 / 65535)``); dropping alpha logs a warning. A 16-bit gray+alpha
TIFF is valid but Pillow (and so ``read_image``) cannot read that layout back.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import struct
import sys
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image as PILImage
from PIL import ImageCms, UnidentifiedImageError

from . import errors

log = logging.getLogger(__name__)

# Output formats: extension -> Pillow format name.
_FORMAT_BY_EXT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF",
                  "tiff": "TIFF", "bmp": "BMP"}
SUPPORTED_EXTENSIONS = frozenset(f".{ext}" for ext in _FORMAT_BY_EXT)
# zlib level of our PNG writer (8 and 16 bit). Measured with Pillow's encoder on a 4000x3000 upscaled
# photo: level 6 (Pillow's default) 2.8 s, 7.9 MB; level 3 1.05 s, 9.0 MB; level 1 0.77 s, 9.8 MB.
# Encoding at 6 took longer than the model.
PNG_COMPRESS_LEVEL = 3
PNG_BLOCK_BYTES = 4 << 20    # filtered and deflated independently, in parallel (``_png_zlib_stream``)
DEFAULT_QUALITY = {"JPEG": 95, "WEBP": 95}

TEMP_SUFFIX = ".upscale-tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)" + re.escape(TEMP_SUFFIX) + r"$")

# Image.open reads the global MAX_IMAGE_PIXELS; it is switched off only while this lock is held (for
# the header parse) and our own per-call limit is applied instead.
_OPEN_LOCK = threading.Lock()

_ORIENTATION_TAG = 0x0112
_JPEG_MAX_EXIF = 65533  # one APP1 segment, less its length field
_EXIF_PREFIX = b"Exif\x00\x00"


@dataclass(frozen=True, eq=False)
class Image:
    """Decoded pixels with what is needed to write them back faithfully."""

    pixels: np.ndarray            # (H, W, C), C in {1, 3}; uint8 or uint16 as the file's mode says
    alpha: np.ndarray | None      # (H, W), same dtype as pixels, or None
    icc_profile: bytes | None = None
    exif: bytes | None = None     # Orientation reset to 1 (the pixels are already upright)
    source_format: str = ""       # "PNG", "JPEG", ...
    source_mode: str = ""         # Pillow's mode of the file; "RGB;16"/"RGBA;16"/"LA;16" for 16-bit colour

    def __post_init__(self) -> None:
        p = self.pixels
        if p.ndim != 3 or p.shape[2] not in (1, 3) or p.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be (H, W, 1|3) uint8/uint16, got {p.shape} {p.dtype}")
        if self.alpha is not None and (self.alpha.shape != p.shape[:2] or self.alpha.dtype != p.dtype):
            raise ValueError(f"alpha must be {p.shape[:2]} {p.dtype}, got {self.alpha.shape} {self.alpha.dtype}")

    @property
    def bit_depth(self) -> int:
        """8 or 16 bits per sample."""
        return 16 if self.pixels.dtype == np.uint16 else 8


# --- value helpers ---------------------------------------------------------------------------------

def to_float(arr: np.ndarray) -> np.ndarray:
    """uint8 / uint16 samples -> float32 in [0, 1] (divided by 255 / 65535)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(65535)
    raise TypeError(f"expected uint8 or uint16 samples, got {arr.dtype}")


def from_float(arr: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """float samples in [0, 1] -> uint8 / uint16 (clipped, rounded to nearest)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        raise TypeError(f"expected uint8 or uint16 as the target, got {dtype}")
    top = np.float32(np.iinfo(dtype).max)
    return np.rint(np.clip(arr, 0.0, 1.0) * top).astype(dtype)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 unchanged; uint16 rounded to 8 bits (exact integer rounding of v * 255 / 65535)."""
    if arr.dtype == np.uint8:
        return arr
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# --- names -----------------------------------------------------------------------------------------

def output_format_for(path: str | Path, format: str | None = None) -> str:
    """Pillow format name ("PNG", "JPEG", "WEBP", "TIFF", "BMP") from ``format`` or else the extension."""
    key = (format if format else Path(path).suffix).lower().lstrip(".")
    if key not in _FORMAT_BY_EXT:
        what = f"format {format!r}" if format else f"extension {Path(path).suffix or '(none)'!r}"
        raise errors.ImageWriteError(
            f"unknown output {what}; use one of {', '.join(sorted(SUPPORTED_EXTENSIONS))}", path=path)
    return _FORMAT_BY_EXT[key]


def temp_path_for(path: str | Path) -> Path:
    """The temporary file ``write_image`` uses for ``path``: ``.{name}.upscale-tmp`` in the same folder.

    The name depends only on ``path``, so a later run can find and remove what a killed run left.
    """
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def is_temp_file(path: str | Path) -> bool:
    """True when ``path`` is named like one of ``write_image``'s temporary files."""
    return _TEMP_NAME.match(Path(path).name) is not None


# --- reading ---------------------------------------------------------------------------------------

def read_image(path: str | Path, *, max_pixels: int | None = None) -> Image:
    """Decode ``path`` fully into an ``Image``; ``ImageReadError`` for anything wrong with the file.

    ``max_pixels`` replaces Pillow's decompression-bomb limit for this call (None: the global
    ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    if max_pixels is not None and max_pixels <= 0:
        raise errors.UsageError(f"--max-pixels must be a positive number of pixels, not {max_pixels}")
    path = Path(path)
    _check_file(path)
    im, default_limit = _open(path)
    with im:
        limit = max_pixels if max_pixels is not None else default_limit
        w, h = im.size
        if limit is not None and w * h > limit:
            raise errors.ImageReadError(
                f"{w}x{h} = {w * h:,} pixels is over the limit of {limit:,} pixels (decompression-bomb "
                "guard); raise it with --max-pixels if you trust this file", path=path)
        source_format = im.format or "unknown"
        rawmode = _tile_rawmode(im)
        _load(im, path)
        pixels, alpha, source_mode, icc = _decode(im, path, rawmode)
        orientation, exif = _exif_of(im, path)
    pixels, alpha = _orient(pixels, orientation), None if alpha is None else _orient(alpha, orientation)
    return Image(np.ascontiguousarray(pixels), None if alpha is None else np.ascontiguousarray(alpha),
                 icc, exif, source_format, source_mode)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as ``read_image`` will return it (EXIF orientation applied: 5-8 swap the sides),
    from the file's header without decoding pixels; ``ImageReadError`` if the header cannot be read."""
    path = Path(path)
    _check_file(path)
    im, _ = _open(path)
    with im:
        w, h = im.size
        orientation, _ = _exif_of(im, path)
    return (h, w) if orientation >= 5 else (w, h)


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise errors.ImageReadError("file not found", path=path) from None
    except OSError as err:
        raise errors.ImageReadError(f"cannot access the file ({err.strerror or err})", path=path) from None
    if path.is_dir():
        raise errors.ImageReadError("is a folder, not an image file", path=path)
    if st.st_size == 0:
        raise errors.ImageReadError("file is empty (0 bytes)", path=path)


def _open(path: Path) -> tuple[PILImage.Image, int | None]:
    """Parse the header with Pillow's global size check off; return the image and the global limit."""
    with _OPEN_LOCK:
        default_limit = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            return PILImage.open(path), default_limit
        except UnidentifiedImageError:
            raise errors.ImageReadError("not a recognised image (cannot identify image file)",
                                        path=path) from None
        except PermissionError:
            raise errors.ImageReadError("permission denied", path=path) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
            raise errors.ImageReadError(f"corrupt image header ({_one_line(err)})", path=path) from None
        finally:
            PILImage.MAX_IMAGE_PIXELS = default_limit


def _load(im: PILImage.Image, path: Path) -> None:
    """Decode every pixel now, so that truncated or corrupt data fails here."""
    try:
        im.load()
    except PILImage.DecompressionBombError as err:
        raise errors.ImageReadError(f"{_one_line(err)}; raise the limit with --max-pixels if you trust "
                                    "this file", path=path) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as err:
        raise errors.ImageReadError(f"truncated or corrupt image data ({_one_line(err)})", path=path) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _tile_rawmode(im: PILImage.Image) -> str | None:
    """The raw layout Pillow will unpack the file's samples from (e.g. "RGB;16B"), before loading."""
    tile = getattr(im, "tile", None)
    if not tile:
        return None
    args = tile[0][3]  # (codec, extents, offset, args); a plain tuple before Pillow 11
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


_RGB16 = re.compile(r"^(RGB|RGBA|RGBX);16([BLN])$")
_UNSIGNED16_GRAY = {"I;16", "I;16B", "I;16L", "I;16N"}


def _decode(im: PILImage.Image, path: Path,
            rawmode: str | None) -> tuple[np.ndarray, np.ndarray | None, str, bytes | None]:
    """Loaded Pillow image -> (pixels (H, W, C), alpha or None, source mode, ICC profile)."""
    mode = im.mode
    icc = im.info.get("icc_profile") or None
    trns = im.info.get("transparency")

    if rawmode is not None and (m := _RGB16.match(rawmode)):
        channels, order = m.group(1), m.group(2)
        high = np.asarray(im)
        low = _decode_again(path, rawmode[:-1] + _opposite_order(order))
        both = (high.astype(np.uint16) << 8) | low.astype(np.uint16)
        pixels, alpha = (both[..., :3], both[..., 3]) if channels == "RGBA" else (both[..., :3], None)
        if alpha is None and isinstance(trns, tuple) and len(trns) == 3:
            alpha = np.where((pixels == np.array(trns, np.uint16)).all(axis=2), 0, 65535).astype(np.uint16)
        return pixels, alpha, f"{channels};16" if channels != "RGBX" else "RGB;16", icc
    if rawmode == "LA;16B":  # 16-bit gray + alpha PNG; Pillow reduces it to 8-bit RGBA
        raw = _decode_again(path, "RGBA").astype(np.uint16)
        return (raw[..., 0] << 8 | raw[..., 1])[..., None], raw[..., 2] << 8 | raw[..., 3], "LA;16", icc
    if rawmode is not None and rawmode.startswith("RGBa;16"):
        raise errors.ImageReadError("unsupported pixel layout: 16-bit premultiplied alpha", path=path)

    if mode in _UNSIGNED16_GRAY or (mode == "I" and rawmode in _UNSIGNED16_GRAY):
        gray = np.asarray(im).astype(np.uint16)
        alpha = None
        if isinstance(trns, int):
            alpha = np.where(gray == trns, 0, 65535).astype(np.uint16)
        return gray[..., None], alpha, mode, icc
    if mode in ("I", "F") or mode.startswith("I;"):
        kind = "floating-point" if mode == "F" else "signed or 32-bit integer"
        raise errors.ImageReadError(f"unsupported mode {mode} ({kind} samples)", path=path)
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(im, icc, path)), None, mode, None

    if mode in ("1", "L") and trns is not None:
        target = "LA"
    elif mode in ("1", "L"):
        target = "L"
    elif mode in ("LA", "La"):
        target = "LA"
    elif mode in ("P", "PA"):
        target = "RGBA" if (mode == "PA" or trns is not None) else "RGB"
    elif mode in ("RGBA", "RGBa") or (mode == "RGB" and trns is not None):
        target = "RGBA"
    else:
        target = "RGB"
    try:
        arr = np.asarray(im if im.mode == target else im.convert(target))
    except ValueError as err:
        raise errors.ImageReadError(f"unsupported mode {mode} ({_one_line(err)})", path=path) from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if target in ("LA", "RGBA"):
        return arr[..., :-1], arr[..., -1], mode, icc
    return arr, None, mode, icc


def _opposite_order(order: str) -> str:
    if order == "N":
        order = "L" if sys.byteorder == "little" else "B"
    return "B" if order == "L" else "L"


def _decode_again(path: Path, rawmode: str) -> np.ndarray:
    """Decode the file once more, unpacking its samples with ``rawmode`` instead of Pillow's choice.

    Used for 16-bit colour, which Pillow cuts to 8 bits: the opposite-endian unpacker of the same
    width returns the low byte of each sample (and the row filters still see the true pixel size).
    """
    im, _ = _open(path)
    with im:
        try:
            im.tile = [_with_rawmode(t, rawmode) for t in im.tile]
        except (TypeError, IndexError) as err:
            raise errors.ImageReadError(f"cannot decode its 16-bit samples with this Pillow ({_one_line(err)})",
                                        path=path) from None
        _load(im, path)
        return np.asarray(im)


def _with_rawmode(tile: tuple, rawmode: str) -> tuple:
    """A copy of one decoder tile (codec, extents, offset, args) that unpacks with ``rawmode``."""
    args = tile[3]
    if isinstance(args, str):
        args = rawmode
    elif isinstance(args, tuple):
        args = (rawmode, *args[1:])
    else:
        raise TypeError(f"unexpected decoder arguments {args!r}")
    # Pillow >= 11 uses a named tuple (read by attribute in places); older versions a plain tuple.
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _cmyk_to_rgb(im: PILImage.Image, icc: bytes | None, path: Path) -> PILImage.Image:
    """CMYK -> RGB through the file's ICC profile when it has one, else Pillow's plain conversion."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as err:
            log.warning("%s: cannot use the embedded CMYK profile (%s); converting without it", path,
                        _one_line(err))
    return im.convert("RGB")


def _exif_of(im: PILImage.Image, path: Path) -> tuple[int, bytes | None]:
    """(EXIF orientation 1..8, EXIF block with Orientation set to 1, or None)."""
    try:
        orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on malformed EXIF
        log.warning("%s: unreadable EXIF (%s); orientation ignored", path, _one_line(err))
        orientation = 1
    if orientation not in range(1, 9):
        orientation = 1
    raw = im.info.get("exif") if im.format != "TIFF" else None
    if not raw:
        return orientation, None
    try:
        return orientation, _reset_orientation(bytes(raw))
    except (ValueError, struct.error) as err:
        log.warning("%s: malformed EXIF block dropped (%s)", path, _one_line(err))
        return orientation, None


def _reset_orientation(exif: bytes) -> bytes:
    """Set the Orientation entry of IFD0 to 1 in place; everything else stays byte-identical."""
    tiff = bytearray(exif[len(_EXIF_PREFIX):] if exif.startswith(_EXIF_PREFIX) else exif)
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None or struct.unpack_from(order + "H", tiff, 2)[0] != 42:
        raise ValueError("no TIFF header")
    ifd = struct.unpack_from(order + "I", tiff, 4)[0]
    count = struct.unpack_from(order + "H", tiff, ifd)[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag != _ORIENTATION_TAG:
            continue
        if n != 1 or kind not in (3, 4):  # SHORT or LONG
            raise ValueError("odd Orientation entry")
        struct.pack_into(order + ("H" if kind == 3 else "I"), tiff, entry + 8, 1)
        break
    return _EXIF_PREFIX + bytes(tiff)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
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


# --- writing ---------------------------------------------------------------------------------------

def write_image(image: Image, path: str | Path, *, format: str | None = None,
                quality: int | None = None, threads: int | None = None) -> None:
    """Write ``image`` to ``path`` atomically; ``ImageWriteError`` if it cannot be written.

    ``format`` (png, jpg/jpeg, webp, tif/tiff, bmp) overrides the extension; ``quality`` (1..100) is
    for JPEG and WebP; ``threads`` is how many threads PNG encoding may use (None: every CPU this
    process may run on; a caller that already encodes several images at once passes 1).
    """
    path = Path(path)
    fmt = output_format_for(path, format)
    if quality is not None and not 1 <= quality <= 100:
        raise errors.UsageError(f"--quality must be between 1 and 100, not {quality}")
    folder = path.parent
    if not folder.exists():
        raise errors.ImageWriteError(f"output folder {folder} does not exist", path=path)
    if not folder.is_dir():
        raise errors.ImageWriteError(f"{folder} is not a folder", path=path)
    if path.is_dir():
        raise errors.ImageWriteError("is a folder", path=path)

    temp = temp_path_for(path)
    try:
        with open(temp, "wb") as f:
            _encode(image, f, fmt, quality, path, threads)
            f.flush()
            _fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise errors.ImageWriteError(f"cannot write ({err.strerror or _one_line(err)})", path=path) from None
        if isinstance(err, ValueError):  # Pillow's encoders report impossible images this way
            raise errors.ImageWriteError(f"cannot encode as {fmt} ({_one_line(err)})", path=path) from None
        raise
    _fsync_folder(folder)


def _fsync(fd: int) -> None:
    """fsync, except on file systems that do not support it."""
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _encode(image: Image, f: BinaryIO, fmt: str, quality: int | None, path: Path, threads: int | None) -> None:
    alpha = image.alpha
    if alpha is not None and fmt in ("JPEG", "BMP"):
        log.warning("%s: %s has no alpha channel; transparency dropped", path, fmt)
        alpha = None
    if fmt == "TIFF":
        _write_tiff(f, image.pixels, alpha, image.icc_profile)
        return
    if fmt == "PNG":   # streamed by our own writer: no second copy of a large output in Pillow's memory
        _write_png(f, image.pixels, alpha, image.icc_profile, image.exif, threads or _png_workers())
        return
    pixels = _to_uint8(image.pixels)
    if fmt == "BMP":
        _write_bmp(f, pixels)
        return
    if fmt == "WEBP" and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    stack = pixels if alpha is None else np.dstack([pixels, _to_uint8(alpha)])
    pil = PILImage.fromarray(stack[..., 0] if stack.shape[2] == 1 else stack)
    params: dict[str, object] = {}
    if image.icc_profile and fmt != "BMP":
        params["icc_profile"] = image.icc_profile
    if image.exif and fmt in ("PNG", "JPEG", "WEBP"):
        if fmt == "JPEG" and len(image.exif) > _JPEG_MAX_EXIF:
            log.warning("%s: EXIF block of %d bytes is too large for JPEG; not written", path, len(image.exif))
        else:
            params["exif"] = image.exif
    if fmt in DEFAULT_QUALITY:
        params["quality"] = quality if quality is not None else DEFAULT_QUALITY[fmt]
    if fmt == "JPEG":
        params["subsampling"] = 0
    pil.save(f, format=fmt, **params)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PNG_COLOUR_TYPE = {(1, False): 0, (1, True): 4, (3, False): 2, (3, True): 6}


def _write_png(f: BinaryIO, pixels: np.ndarray, alpha: np.ndarray | None, icc: bytes | None,
               exif: bytes | None, threads: int = 1) -> None:
    """An 8- or 16-bit PNG (from the dtype; gray, gray+alpha, RGB or RGBA) with optional iCCP and eXIf
    chunks, filtered and compressed in blocks of rows, so no full-size copy is made (except to
    interleave an alpha channel)."""
    samples = pixels if alpha is None else np.dstack([pixels, alpha])
    h, w, c = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    f.write(b"\x89PNG\r\n\x1a\n")
    colour_type = _PNG_COLOUR_TYPE[(pixels.shape[2], alpha is not None)]
    f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)))
    if icc:
        f.write(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if exif:
        f.write(_chunk(b"eXIf", exif[len(_EXIF_PREFIX):] if exif.startswith(_EXIF_PREFIX) else exif))
    raw = (samples.astype(">u2").view(np.uint8) if depth == 16 else np.ascontiguousarray(samples)).reshape(h, -1)
    for data in _png_zlib_stream(raw, depth // 8 * c, threads):
        f.write(_chunk(b"IDAT", data))
    f.write(_chunk(b"IEND", b""))


def _write_bmp(f: BinaryIO, pixels: np.ndarray) -> None:
    """An uncompressed BMP, 24-bit (RGB) or 8-bit with a gray palette (L), written bottom-up in blocks
    of rows (no full-size copy)."""
    h, w, c = pixels.shape
    bpp = 24 if c == 3 else 8
    palette = b"" if c == 3 else bytes(b for v in range(256) for b in (v, v, v, 0))
    stride = (w * c + 3) // 4 * 4
    offset = 14 + 40 + len(palette)
    size = offset + stride * h
    if size >= 1 << 32:
        raise ValueError(f"{w}x{h} is too large for BMP (4 GB limit)")
    f.write(struct.pack("<2sIHHI", b"BM", size, 0, 0, offset))
    f.write(struct.pack("<IiiHHIIiiII", 40, w, h, 1, bpp, 0, stride * h, 2835, 2835, 256 if c == 1 else 0, 0))
    f.write(palette)
    block = max(1, (4 << 20) // stride)
    for top in range(h, 0, -block):                       # BMP rows run from the bottom up
        rows = pixels[max(0, top - block):top][::-1]
        out = np.zeros((len(rows), stride), np.uint8)
        out[:, :w * c] = (rows[..., ::-1] if c == 3 else rows).reshape(len(rows), w * c)   # RGB -> BGR
        f.write(out.tobytes())


def _png_zlib_stream(raw: np.ndarray, bpp: int, workers: int) -> Iterator[bytes]:
    """The zlib stream of PNG image data, in pieces, filtered and compressed in blocks of rows on
    ``workers`` threads (numpy and zlib release the GIL).

    Each block is deflated on its own and ends with a sync flush (the last with the final block), so
    the pieces, in order, form one valid deflate stream between our zlib header and the Adler-32 of all
    filtered bytes. Blocks of PNG_BLOCK_BYTES cost ~0.1% in size against one serial stream. At most
    2 blocks per worker are in flight, which bounds memory.
    """
    h, row_bytes = raw.shape
    rows = max(1, PNG_BLOCK_BYTES // max(1, row_bytes))
    starts = list(range(0, h, rows))

    def block(start: int) -> tuple[bytes, bytes]:
        filtered = _png_filter_block(raw, start, min(start + rows, h), bpp)
        packer = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, -15)    # raw deflate: no header
        last = start == starts[-1]
        return filtered, packer.compress(filtered) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    yield b"\x78\x5e"       # zlib header: deflate, 32 KiB window, "fast" level, no preset dictionary
    check = zlib.adler32(b"")
    if workers == 1 or len(starts) == 1:
        pieces: Iterator = map(block, starts)
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="png")
        pieces = _ordered(pool, block, starts, 2 * workers)
    for filtered, data in pieces:
        check = zlib.adler32(filtered, check)
        yield data
    yield struct.pack(">I", check)


def _ordered(pool: ThreadPoolExecutor, fn, items: list, ahead: int) -> Iterator:
    """``fn`` over ``items`` on ``pool``, results in order, at most ``ahead`` submitted but not yet
    yielded; the pool is shut down when the iterator ends (or is abandoned)."""
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _png_workers() -> int:
    """Threads for PNG encoding: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:       # not Linux
        return max(1, os.cpu_count() or 1)


def _png_filter_block(raw: np.ndarray, start: int, stop: int, bpp: int) -> bytes:
    """PNG scanlines ``start:stop``, each with the filter (none/sub/up/average/paeth) of smallest
    absolute sum, as bytes (filter type byte + filtered row).

    ``raw`` is (H, row bytes) uint8 and ``bpp`` the bytes per pixel. Every filter is computed from the
    unfiltered bytes (the row above comes from ``raw`` too), so blocks are independent and this is
    vectorised. uint8 arithmetic wraps modulo 256, as PNG's filters do.
    """
    row_bytes = raw.shape[1]
    previous = raw[start - 1:start] if start else np.zeros((1, row_bytes), np.uint8)
    x = raw[start:stop]
    b = np.vstack([previous, x[:-1]])                       # the byte above
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]                                # the byte one pixel to the left
    c = np.zeros_like(b)
    c[:, bpp:] = b[:, :-bpp]                                # the byte above that one
    a16, b16, c16 = a.astype(np.int16), b.astype(np.int16), c.astype(np.int16)
    pa, pb, pc = np.abs(b16 - c16), np.abs(a16 - c16), np.abs(a16 + b16 - 2 * c16)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    average = ((a16 + b16) >> 1).astype(np.uint8)
    candidates = np.stack([x, x - a, x - b, x - average, x - paeth])
    cost = np.minimum(candidates, 0 - candidates).sum(axis=2, dtype=np.uint32)  # |byte as int8|
    best = cost.argmin(axis=0)
    chosen = candidates[best, np.arange(len(x))]
    return np.hstack([best.astype(np.uint8)[:, None], chosen]).tobytes()


# TIFF tag numbers and field types used by the writer.
_SHORT, _LONG, _UNDEFINED = 3, 4, 7


def _write_tiff(f: BinaryIO, pixels: np.ndarray, alpha: np.ndarray | None, icc: bytes | None) -> None:
    """A little-endian baseline TIFF: deflate strips, horizontal predictor, unassociated alpha, ICC."""
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
    if icc:
        entries.append((34675, _UNDEFINED, icc))

    packed: list[bytes] = []
    for tag, kind, values in entries:
        data = values if isinstance(values, bytes) else struct.pack(
            f"<{len(values)}{'H' if kind == _SHORT else 'I'}", *values)
        count = len(values)
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
