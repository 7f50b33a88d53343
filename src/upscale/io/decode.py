"""Loaded Pillow image -> numpy pixels, alpha, source mode and ICC profile, by the file's own mode.

16-bit colour: Pillow cuts RGB(A) samples to their high byte, so the file is decoded once more with
the opposite-endian unpacker of the same width, which yields the low byte (``high << 8 | low``).
"""

from __future__ import annotations

import logging
import re
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageCms

from .. import errors
from .image import one_line
from .opening import load_pixels, open_image

log = logging.getLogger(__name__)


def tile_rawmode(im: PILImage.Image) -> str | None:
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


def check_layout(im: PILImage.Image, path: Path) -> None:
    """``ImageReadError`` for a layout Pillow would decode wrongly, before decoding it: a TIFF with
    16-bit samples in separate planes (PlanarConfiguration 2), which Pillow unpacks as 8-bit."""
    tags = getattr(im, "tag_v2", None)
    if im.format == "TIFF" and tags is not None and tags.get(284) == 2:
        bits = tags.get(258, (8,))
        if max(bits if isinstance(bits, tuple) else (bits,)) > 8:
            raise errors.ImageReadError("unsupported pixel layout: 16-bit samples in separate planes "
                                        "(TIFF PlanarConfiguration 2); save it with contiguous samples", path=path)


_RGB16 = re.compile(r"^(RGB|RGBA|RGBX);16([BLN])$")
_LOW_BIT_GRAY = re.compile(r"^L;([24])")
_UNSIGNED16_GRAY = {"I;16", "I;16B", "I;16L", "I;16N"}


def decode(im: PILImage.Image, path: Path,
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
        if im.format == "TIFF" and getattr(im, "tag_v2", {}).get(262) == 0:   # WhiteIsZero: Pillow
            gray = 65535 - gray                                                   # inverts only 8 bit
        alpha = None
        if isinstance(trns, int):
            alpha = np.where(gray == trns, 0, 65535).astype(np.uint16)
        return gray[..., None], alpha, mode, icc
    if mode in ("I", "F") or mode.startswith("I;"):
        kind = "floating-point" if mode == "F" else "signed or 32-bit integer"
        raise errors.ImageReadError(f"unsupported mode {mode} ({kind} samples)", path=path)
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(im, icc, path)), None, mode, None

    if mode == "L" and isinstance(trns, int) and rawmode and (m := _LOW_BIT_GRAY.match(rawmode)):
        return (*_low_bit_gray_keyed(im, trns, int(m.group(1))), mode, icc)
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
        raise errors.ImageReadError(f"unsupported mode {mode} ({one_line(err)})", path=path) from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if target in ("LA", "RGBA"):
        return arr[..., :-1], arr[..., -1], mode, icc
    return arr, None, mode, icc


def _low_bit_gray_keyed(im: PILImage.Image, key: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2- or 4-bit gray PNG with a tRNS key: (gray, alpha). Pillow scales the samples to 8 bits
    but not the key, so it would match nothing."""
    gray = np.asarray(im)
    alpha = np.where(gray == key * (255 // (2 ** bits - 1)), 0, 255).astype(np.uint8)
    return gray[..., None], alpha


def _opposite_order(order: str) -> str:
    if order == "N":
        order = "L" if sys.byteorder == "little" else "B"
    return "B" if order == "L" else "L"


def _decode_again(path: Path, rawmode: str) -> np.ndarray:
    """Decode the file once more, unpacking its samples with ``rawmode`` instead of Pillow's choice.

    Used for 16-bit colour, which Pillow cuts to 8 bits: the opposite-endian unpacker of the same
    width returns the low byte of each sample (and the row filters still see the true pixel size).
    """
    im, _, _ = open_image(path)   # its warnings were logged by the first opening
    with im:
        try:
            im.tile = [_with_rawmode(t, rawmode) for t in im.tile]
        except (TypeError, IndexError) as err:
            raise errors.ImageReadError(f"cannot decode its 16-bit samples with this Pillow ({one_line(err)})",
                                        path=path) from None
        load_pixels(im, path)
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
                        one_line(err))
    return im.convert("RGB")
