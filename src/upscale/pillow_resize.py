"""Classic resampling of numpy images with Pillow (nearest, bilinear, bicubic, Lanczos).

Used for the requested output scale when it differs from the model's (Lanczos), for alpha in
``--alpha-mode bicubic``, and for the benchmark's classic baselines. Works per channel in Pillow's
32-bit float mode, so 16-bit images keep their full precision. (MATLAB-compatible bicubic, the one
the published tables use, is ``upscale.matlab_resize.imresize``.)
"""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage

METHODS = {
    "nearest": PILImage.Resampling.NEAREST,
    "bilinear": PILImage.Resampling.BILINEAR,
    "bicubic": PILImage.Resampling.BICUBIC,
    "lanczos": PILImage.Resampling.LANCZOS,
}


def resize_array(arr: np.ndarray, size_wh: tuple[int, int], method: str = "lanczos") -> np.ndarray:
    """Resize (H, W) or (H, W, C) ``arr`` to ``size_wh`` = (width, height), keeping its dtype.

    Integer outputs are rounded and clipped to the dtype's range; float outputs are returned as is.
    """
    if method not in METHODS:
        raise ValueError(f"unknown resampling method {method!r}; choose from {', '.join(METHODS)}")
    width, height = size_wh
    if width < 1 or height < 1:
        raise ValueError(f"target size must be at least 1x1, got {width}x{height}")
    planes = arr[..., None] if arr.ndim == 2 else arr
    out = np.empty((height, width, planes.shape[2]), dtype=np.float32)
    for c in range(planes.shape[2]):
        plane = PILImage.fromarray(np.ascontiguousarray(planes[..., c], dtype=np.float32))
        out[..., c] = np.asarray(plane.resize((width, height), METHODS[method]))
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(arr.dtype)
    else:
        out = out.astype(arr.dtype, copy=False)
    return out[..., 0] if arr.ndim == 2 else out
