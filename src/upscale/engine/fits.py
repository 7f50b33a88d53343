"""Is there host memory for an output array at all: ``check_output_fits``, the one check the CLI and
the API make before they load a model. No torch here (nor in ``options``): a command that refuses an
image for its size says so at once."""

from __future__ import annotations

import math

import numpy as np

from .. import errors
from ..machine import host_available_bytes


def check_output_fits(height: int, width: int, channels: int, scale: float, dtype: np.dtype | type,
                      what: str = "output", count: int = 1, factor: float = 1.0) -> int:
    """Raise ``errors.ResourceError`` when an (height*scale, width*scale, channels) array of ``dtype``
    would not fit in the host memory available now; else return its size in bytes. Cheap: call it
    before loading a model (``scale`` may be a float outscale). ``what`` names the array in the
    message; ``count`` such arrays are held at once (an animation's frames); ``factor`` multiplies
    the need (an encoder's working memory on top of the array it encodes)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise errors.UsageError(f"scale must be a positive number, not {scale!r}", params=("scale",))
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    need = int(out_h * out_w * channels * np.dtype(dtype).itemsize * count * factor)
    free = host_available_bytes()
    if need > free:
        many = f"{count} frames of " if count > 1 else ""
        raise errors.ResourceError(f"{what} {many}{out_w} x {out_h} x {channels} need{'' if many else 's'} "
                                   f"{_size(need)}; {_size(free)} free")
    return need


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
