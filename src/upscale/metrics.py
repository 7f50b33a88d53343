"""Image quality metrics with the conventions of the super-resolution papers (and BasicSR).

- Images are (H, W) or (H, W, C) arrays on the [0, 255] scale (uint8, or float holding such values).
- ``y_channel=True`` (the default, and what the tables report) compares luma only: an RGB image is
  converted with ITU-R BT.601 "studio range", Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in
  [0, 1], i.e. Y in [16, 235] on the 255 scale, kept in float64 (not rounded). An image that has a
  single channel already *is* its luma and is compared as it is.
- ``crop_border`` pixels are removed from every side first (the papers use crop_border = scale); the
  mod-crop to a multiple of the scale is ``dataprep.mod_crop``.
- PSNR = 10 log10(255^2 / MSE), in float64, per image (a benchmark averages the per-image values).
- SSIM is Wang et al.'s index as in their MATLAB ``ssim_index`` and BasicSR: an 11x11 Gaussian window
  with sigma 1.5, C1 = (0.01*255)^2, C2 = (0.03*255)^2, local statistics only where the window fits
  entirely inside the image ("valid" filtering), mean of the SSIM map; for RGB, the mean over channels.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

SSIM_WINDOW_PX = 11
SSIM_SIGMA_PX = 1.5
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (..., 3) RGB array in [0, 1]: values in [16/255, 235/255], float64."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_y: expected 3 channels in the last axis, got shape {rgb.shape}")
    return (16.0 + rgb @ _Y_WEIGHTS) / 255.0


def shave(img: np.ndarray, crop_border: int) -> np.ndarray:
    """Remove ``crop_border`` pixels from each side."""
    if crop_border <= 0:
        return img
    return img[crop_border:-crop_border, crop_border:-crop_border]


def _prepare(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (H, W, C) on the 255 scale, border removed, Y only if asked."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    out = []
    for img in (a, b):
        img = np.asarray(img, dtype=np.float64)
        if img.ndim == 2:
            img = img[..., None]
        if y_channel and img.shape[2] == 3:
            img = rgb_to_y(img / 255.0)[..., None] * 255.0
        elif y_channel and img.shape[2] != 1:
            raise ValueError(f"y_channel needs 1 or 3 channels, got shape {img.shape}")
        out.append(shave(img, crop_border))
    if out[0].shape[0] < 1 or out[0].shape[1] < 1:
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {a.shape[:2]} image")
    return out[0], out[1]


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB on the 255 scale; ``inf`` for identical images."""
    x, y = _prepare(a, b, crop_border, y_channel)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def gaussian_window(size_px: int = SSIM_WINDOW_PX, sigma_px: float = SSIM_SIGMA_PX) -> np.ndarray:
    """The normalised 1-D Gaussian whose outer product is SSIM's 2-D window."""
    t = np.arange(size_px, dtype=np.float64) - (size_px - 1) / 2.0
    g = np.exp(-(t * t) / (2.0 * sigma_px * sigma_px))
    return g / g.sum()


def _filter_valid(plane: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation with ``outer(g, g)``, keeping only fully covered positions."""
    windows = np.lib.stride_tricks.sliding_window_view(plane, g.size, axis=0)   # (H-k+1, W, k)
    rows = windows @ g
    windows = np.lib.stride_tricks.sliding_window_view(rows, g.size, axis=1)    # (H-k+1, W-k+1, k)
    return windows @ g


def _ssim_plane(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x * mu_x
    var_y = _filter_valid(y * y, g) - mu_y * mu_y
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + _C1) * (2.0 * cov + _C2)
    den = (mu_x * mu_x + mu_y * mu_y + _C1) * (var_x + var_y + _C2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """Structural similarity (Wang et al. 2004, MATLAB/BasicSR conventions); 1.0 for identical images."""
    x, y = _prepare(a, b, crop_border, y_channel)
    if min(x.shape[:2]) < SSIM_WINDOW_PX:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW_PX}x{SSIM_WINDOW_PX} pixels after cropping, "
                         f"got {x.shape[0]}x{x.shape[1]}")
    g = gaussian_window()
    return float(np.mean([_ssim_plane(x[..., c], y[..., c], g) for c in range(x.shape[2])]))


class Lpips:
    """LPIPS (AlexNet) from the ``lpips`` package, used only when it and its weights are on this machine.

    Build with :meth:`create`, which returns ``(None, reason)`` instead of downloading anything.
    """

    def __init__(self, net: Any) -> None:
        self._net = net

    @classmethod
    def create(cls) -> tuple["Lpips | None", str]:
        if importlib.util.find_spec("lpips") is None:
            return None, "the lpips package is not installed (pip install lpips)"
        import torch

        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        if not any(checkpoints.glob("alexnet-owt-*.pth")):
            return None, f"LPIPS needs torchvision's AlexNet weights in {checkpoints}; none found"
        import lpips  # type: ignore[import-not-found]

        net = lpips.LPIPS(net="alex", verbose=False).eval()
        return cls(net), ""

    def __call__(self, a: np.ndarray, b: np.ndarray, crop_border: int = 0) -> float:
        """LPIPS distance of two (H, W[, C]) images on the 255 scale (gray is repeated to RGB)."""
        import torch

        tensors = []
        for img in (a, b):
            img = np.asarray(img, dtype=np.float32)
            img = shave(img[..., None] if img.ndim == 2 else img, crop_border)
            if img.shape[2] == 1:
                img = np.repeat(img, 3, axis=2)
            tensors.append(torch.from_numpy(img / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous())
        with torch.inference_mode():
            return float(self._net(tensors[0], tensors[1]).item())
