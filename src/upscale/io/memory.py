"""Images held in memory (Pillow images, numpy arrays) <-> the ``Image`` record's planes, for library
callers that have one already (``Upscaler.upscale`` takes one and gives the same kind back). Files go
through ``read`` and ``write``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image as PILImage

from .. import errors
from .decode import decode
from .image import Image, one_line, to_uint8
from .read import dpi_of

LABEL = Path("the Pillow image")   # what messages call an image that has no file


def from_pillow(picture: PILImage.Image) -> Image:
    """A Pillow image's pixels, decoded by its mode as ``read_image`` decodes a file's (P and CMYK to
    RGB, transparency to alpha, ``I;16`` as 16-bit gray; taken as they stand: no EXIF turn), its ICC
    profile and dpi. ``UsageError`` for a mode with no mapping to [0, 1] (``I``, ``F``) or pixels
    that cannot be loaded (a truncated file behind a lazily opened image)."""
    try:
        picture.load()
        pixels, alpha, mode, icc = decode(picture, LABEL, None)
    except errors.ImageReadError as err:
        raise errors.UsageError(f"image: {err}", params=("image",)) from None
    except (OSError, ValueError) as err:
        raise errors.UsageError(f"image: {LABEL} cannot be decoded ({one_line(err)})", params=("image",)) from None
    dpi = dpi_of(picture, 0)     # as read_image takes a file's (taken as it stands: no orientation turn)
    alpha = None if alpha is None else np.ascontiguousarray(alpha)
    return Image(np.ascontiguousarray(pixels), alpha, icc_profile=icc, source_format=picture.format or "",
                 source_mode=mode, dpi=dpi)


def to_pillow(image: Image) -> PILImage.Image:
    """``image`` as a Pillow image: ``L``, ``LA``, ``RGB`` or ``RGBA`` for 8-bit samples, ``I;16`` for
    16-bit gray without alpha; other 16-bit images (Pillow has no mode for them) are cut to 8 bits
    (``to_uint8``). The ICC profile and dpi go into ``info``."""
    pixels, alpha = image.pixels, image.alpha
    if pixels.dtype == np.uint16 and (alpha is not None or pixels.shape[2] == 3):
        pixels, alpha = to_uint8(pixels), None if alpha is None else to_uint8(alpha)
    planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    picture = PILImage.fromarray(planes[..., 0] if planes.shape[2] == 1 else planes)
    if image.icc_profile:
        picture.info["icc_profile"] = image.icc_profile
    if image.dpi:
        picture.info["dpi"] = image.dpi
    return picture


ARRAY_DTYPES = (np.uint8, np.uint16, np.float32)
Planes = tuple[np.ndarray, np.ndarray | None, Callable[[np.ndarray, np.ndarray | None], Any]]


def as_planes(image: Any) -> Planes:
    """(pixels (H, W, 1|3), alpha (H, W) or None, back) of any image ``Upscaler.upscale`` takes; ``back``
    makes upscaled planes an image of the same kind. ``UsageError`` for anything else."""
    if isinstance(image, Image):
        return image.pixels, image.alpha, lambda pixels, alpha: replace(image, pixels=pixels, alpha=alpha)
    if isinstance(image, PILImage.Image):
        record = from_pillow(image)
        return record.pixels, record.alpha, lambda pixels, alpha: to_pillow(replace(record, pixels=pixels, alpha=alpha))
    if not isinstance(image, np.ndarray):
        raise errors.UsageError("image must be an upscale Image, a numpy array or a Pillow image, not "
                                f"{type(image).__module__}.{type(image).__qualname__}", params=("image",))
    layout_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2, 3, 4))
    if not layout_ok or image.dtype not in ARRAY_DTYPES:
        raise errors.UsageError("image: expected an (H, W) or (H, W, 1|2|3|4) array of uint8, uint16 or float32, "
                                f"got {image.shape} {image.dtype}", params=("image",))
    ndim = image.ndim
    planes = image[..., None] if ndim == 2 else image
    if planes.shape[2] in (2, 4):
        return planes[..., :-1], planes[..., -1], lambda pixels, alpha: _join(pixels, alpha, ndim)
    return planes, None, lambda pixels, alpha: _join(pixels, alpha, ndim)


def _join(pixels: np.ndarray, alpha: np.ndarray | None, ndim: int) -> np.ndarray:
    """Upscaled planes as one array of the input's layout; float32 clipped to [0, 1] (Lanczos rings)."""
    out = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    if out.dtype == np.float32:
        np.clip(out, 0.0, 1.0, out=out)
    return out[..., 0] if ndim == 2 else out
