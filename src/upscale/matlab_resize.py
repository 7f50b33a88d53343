"""MATLAB-compatible bicubic ``imresize`` in numpy.

The published super-resolution tables make their low-resolution inputs, and their bicubic baseline,
with MATLAB's ``imresize(img, scale, 'bicubic')``. Pillow's and OpenCV's bicubic differ from it (other
kernel parameter, no antialiasing when shrinking, other edge handling), enough to move PSNR by
tenths of a dB, so this module follows MATLAB's definition:

- the cubic convolution kernel with a = -0.5 (Keys), support [-2, 2];
- when shrinking (scale < 1) the kernel is stretched by 1/scale and scaled by ``scale`` (antialiasing),
  so its support becomes 4/scale input pixels;
- output pixel x (1-based) samples input coordinate u = x/scale + (1 - 1/scale)/2;
- each output pixel reads ceil(width) + 2 consecutive input pixels starting at floor(u - width/2);
  the weights are normalised to sum to 1; indices past an edge are mirrored with the edge pixel
  repeated (..., 2, 1, 1, 2, ...), MATLAB's "symmetric" padding;
- rows are resized first, then columns, each pass in float64.

MATLAB rounds a uint8 image back to uint8 between the two passes; ``round_between_passes=True`` does
the same for callers that pass values on the [0, 255] scale and want bit-exactness with MATLAB.
"""

from __future__ import annotations

import math

import numpy as np

KERNEL_WIDTH = 4.0  # support of the cubic kernel, in input pixels at scale >= 1


def cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's cubic convolution kernel (a = -0.5)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


def contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based input indices, both (out_len, taps), for resizing one axis.

    ``scale`` is out/in; below 1 the kernel is widened by 1/scale (antialiasing).
    """
    if scale < 1.0:
        width = KERNEL_WIDTH / scale

        def kernel(t: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * t)
    else:
        width = KERNEL_WIDTH
        kernel = cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based, may fall outside
    weights = kernel(u[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    # Mirror out-of-range indices: the sequence 1..n, n..1 repeated (edge pixel repeated).
    period = 2 * in_len
    k = np.mod(indices.astype(np.int64) - 1, period)
    indices0 = np.where(k < in_len, k, period - 1 - k)
    # Drop taps that carry no weight for any output pixel (MATLAB does; it changes nothing numerically).
    keep = np.any(weights != 0.0, axis=0)
    return weights[:, keep], indices0[:, keep]


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    weights, indices = contributions(img.shape[axis], out_len, scale)
    moved = np.moveaxis(img, axis, 0)                        # (in, ...)
    shape = (weights.shape[0],) + (1,) * (moved.ndim - 1)
    out = np.zeros((weights.shape[0],) + moved.shape[1:], dtype=np.float64)
    for tap in range(weights.shape[1]):                      # one gather per tap keeps memory at ~2 images
        out += weights[:, tap].reshape(shape) * moved[indices[:, tap]]
    return np.moveaxis(out, 0, axis)


def round_like_matlab(values: np.ndarray) -> np.ndarray:
    """Round to integers in [0, 255] as MATLAB's uint8 conversion does (halves away from zero)."""
    return np.floor(np.clip(values, 0.0, 255.0) + 0.5)


def output_size(in_len: int, scale: float) -> int:
    """MATLAB's ceil(scale * n), tolerant of the float error in e.g. 255 * (1/3)."""
    return int(math.ceil(in_len * scale - 1e-9))


def imresize(img: np.ndarray, scale: float | None = None,
             output_shape: tuple[int, int] | None = None, *,
             round_between_passes: bool = False) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) image the way MATLAB's ``imresize(..., 'bicubic')`` does.

    Give ``scale`` (same for both axes; output size ceil(scale * size)) or ``output_shape``
    (H_out, W_out; each axis then uses out/in as its scale). Returns float64, not clipped.
    """
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize: give exactly one of scale and output_shape")
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize: expected an (H, W) or (H, W, C) array, got shape {img.shape}")
    in_h, in_w = img.shape[:2]
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"imresize: scale must be positive, got {scale}")
        out_h, out_w = output_size(in_h, scale), output_size(in_w, scale)
        scale_h = scale_w = float(scale)
    else:
        out_h, out_w = (int(v) for v in output_shape)  # type: ignore[union-attr]
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"imresize: output_shape must be positive, got {output_shape}")
        scale_h, scale_w = out_h / in_h, out_w / in_w
    out = np.asarray(img, dtype=np.float64)
    out = _resize_axis(out, 0, out_h, scale_h)
    if round_between_passes:
        out = round_like_matlab(out)
    return _resize_axis(out, 1, out_w, scale_w)
