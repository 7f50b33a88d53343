"""Dataset preparation shared by ``bench`` and ``train``: which files of a folder are images, 8-bit
pixels from any image we read, the mod-crop, and MATLAB-bicubic down/up-scaling of 8-bit images.

These are the conventions behind the published super-resolution tables (and BasicSR): every HR image
is mod-cropped to a multiple of the scale, its LR is MATLAB's ``imresize(HR, 1/s, 'bicubic')`` rounded
to 8 bits, and the bicubic baseline is ``imresize(LR, s, 'bicubic')`` rounded the same way. Bench and
train must agree on them, or a validation PSNR and a bench PSNR of one model would not be comparable.

No torch here: this is numpy on top of ``io`` and ``matlab_resize``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import atomic
from .errors import DataError
from .io import INPUT_EXTENSIONS, read_image, to_uint8
from .matlab_resize import imresize, round_like_matlab

IMAGE_SUFFIXES = tuple(sorted(INPUT_EXTENSIONS))   # the suffixes io reads


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (io's suffixes, any case), sorted by name; other files
    (manifests, checksums) are skipped. DataError when it is not a folder or holds no image."""
    p = Path(folder)
    if not p.is_dir():      # a file, a symlink to nothing (where it points), a loop of links, nothing
        problem = atomic.in_the_way(p, "folder")
        raise DataError(problem) if problem else DataError("not a folder", path=p)
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in INPUT_EXTENSIONS)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder", path=p)
    return files


def read_uint8(path: str | Path, *, rgb: bool) -> np.ndarray:
    """An image file as 8-bit (H, W, C): alpha dropped; a gray image is (H, W, 1), or repeated to
    (H, W, 3) with ``rgb=True``. io's ImageReadError propagates (the caller words it).

    16-bit samples go through ``io.to_uint8``, (v * 255 + 32767) // 65535; bench and train used
    floor(v / 257 + 0.5) before, which gives the same 8-bit value for all 65536 inputs."""
    pixels = to_uint8(read_image(path).pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if rgb and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def check_eval_size(hr: np.ndarray, scale: int, path: str | Path) -> None:
    """``DataError`` naming ``path`` when a mod-cropped HR image leaves nothing to score at ``scale``:
    an LR side under 1 px, or less than one SSIM window once ``scale`` px are cropped from each side
    (bench and training's validation both ask)."""
    from .metrics import SSIM_WINDOW_PX

    h, w = hr.shape[:2]
    if min(h, w) // scale < 1 or min(h, w) - 2 * scale < SSIM_WINDOW_PX:
        raise DataError(f"{w}x{h} is too small to score at x{scale}", path=path)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so that height and width are multiples of ``scale``."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def bicubic_down(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(hr, 1/scale, 'bicubic')`` of an 8-bit image (antialiased, each pass rounded
    to 8 bits as MATLAB does for uint8), as uint8: the LR input of the tables."""
    return round_like_matlab(imresize(hr, 1.0 / scale, round_between_passes=True)).astype(np.uint8)


def bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(lr, scale, 'bicubic')`` of an 8-bit image, as uint8: the tables' bicubic row."""
    return round_like_matlab(imresize(lr, float(scale), round_between_passes=True)).astype(np.uint8)
