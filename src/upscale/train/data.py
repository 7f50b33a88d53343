"""Training data: folders -> decoded uint8 images in memory -> LR made once per image -> batches.

Listing, 8-bit reading, mod-crop and MATLAB bicubic come from ``upscale.dataprep`` (shared with bench).

The sampler is a pure function of (seed, iteration): the batch of iteration ``it`` is drawn from
``numpy.random.default_rng([seed, it])``. Resuming at iteration ``it`` therefore needs no sampler
state at all, workers can build any batch independently, and DDP ranks each take their slice of the
same global batch (so N processes see exactly the batch one process would).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..dataprep import bicubic_down, list_images, mod_crop, read_uint8
from ..errors import DataError, ImageReadError
from ..matlab_resize import imresize, round_like_matlab

log = logging.getLogger(__name__)

# Trailing tags that LR/HR file names carry in the usual data sets (DIV2K "0001x4", "baby_LR",
# "img_001_HR", "butterfly_LRx4", "bird_bicubic"). Stripped repeatedly, case-insensitively.
_TAG = re.compile(r"(?:[_\-.]?(?:lr|hr|bicubic|lrbicx\d+|lrx\d+|hrx\d+|x\d+))$", re.IGNORECASE)


@dataclass
class PairSet:
    """Aligned LR/HR images (H, W, 3) uint8, hr exactly ``scale`` times lr, with their names."""

    lr: list[np.ndarray]
    hr: list[np.ndarray]
    names: list[str]
    scale: int

    def __len__(self) -> int:
        return len(self.hr)


def read_rgb8(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 (``dataprep.read_uint8``); unreadable files are DataErrors."""
    try:
        return read_uint8(path, rgb=True)
    except ImageReadError as err:
        raise DataError(f"cannot read training image: {err.message}", path=path) from None


def _gaussian_matrix(in_len: int, scale: int, sigma: float) -> np.ndarray:
    """(in_len // scale, in_len) rows of a Gaussian centred on each LR pixel's footprint centre."""
    out_len = in_len // scale
    centres = (np.arange(out_len) + 0.5) * scale - 0.5
    taps = np.arange(in_len)[None, :] - centres[:, None]
    radius = math.ceil(3.0 * sigma) + 1
    w = np.exp(-0.5 * (taps / sigma) ** 2) * (np.abs(taps) <= radius)
    return w / w.sum(axis=1, keepdims=True)  # edge rows renormalised instead of padded


def blur_down_lr(hr: np.ndarray, scale: int, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` in HR pixels) then sampling at each LR pixel's centre, as uint8.

    Sampling at the centre of each scale x scale footprint keeps the LR grid aligned with the HR grid
    the same way MATLAB's bicubic does, so both degradations train the same geometry."""
    if sigma <= 0:
        raise DataError(f"blur sigma must be positive, got {sigma}")
    wy = _gaussian_matrix(hr.shape[0], scale, sigma)
    wx = _gaussian_matrix(hr.shape[1], scale, sigma)
    out = np.einsum("ik,kjc->ijc", wy, hr.astype(np.float64))
    out = np.einsum("jk,ikc->ijc", wx, out)
    return round_like_matlab(out).astype(np.uint8)


def make_lr(hr: np.ndarray, scale: int, degradation: str = "bicubic", blur_sigma: float = 1.6) -> np.ndarray:
    if degradation == "bicubic":
        return bicubic_down(hr, scale)
    if degradation == "blur-down":
        return blur_down_lr(hr, scale, blur_sigma)
    raise DataError(f"unknown degradation {degradation!r}")


def shrink_hr(hr: np.ndarray, factor: float) -> np.ndarray:
    """HR scaled down by ``factor`` (0 < factor < 1) with MATLAB bicubic, rounded to uint8: one more
    training image at a smaller scale of the same scene (the 291-image recipe of VDSR, DRRN, MemNet)."""
    return round_like_matlab(np.clip(imresize(hr, factor), 0, 255)).astype(np.uint8)


def load_hr_folders(folders: list[str], scale: int, *, min_hr_px: int, degradation: str = "bicubic",
                    blur_sigma: float = 1.6, scale_aug: list[float] | tuple[float, ...] = ()) -> PairSet:
    """Decode every image of ``folders`` once, mod-crop it and make its LR once.

    Each factor of ``scale_aug`` adds a copy of every image shrunk by it (``shrink_hr``) before the
    mod-crop, named ``folder/file@factor``. Images (or copies) whose shorter side is below
    ``min_hr_px`` (the crop size) cannot give a crop; they are skipped with a warning. DataError when
    nothing is left, or naming every file that cannot be read (all at once, not one per attempt)."""
    lrs, hrs, names, skipped, unreadable = [], [], [], [], []
    for folder in folders:
        for path in list_images(folder):
            try:
                full = read_uint8(path, rgb=True)
            except ImageReadError as err:
                unreadable.append(f"{path.name if len(folders) == 1 else path} ({err.message})")
                continue
            for factor in (1.0, *scale_aug):
                label = path.name if factor == 1.0 else f"{path.name}@{factor:g}"
                hr = mod_crop(full if factor == 1.0 else shrink_hr(full, factor), scale)
                if min(hr.shape[:2]) < min_hr_px:
                    skipped.append(label)
                    continue
                hrs.append(hr)
                lrs.append(make_lr(hr, scale, degradation, blur_sigma))
                names.append(f"{Path(folder).name}/{label}")
    if unreadable:
        shown = "; ".join(unreadable[:10]) + (f"; and {len(unreadable) - 10} more" if len(unreadable) > 10 else "")
        raise DataError(f"{len(unreadable)} training image(s) cannot be read: {shown}", path=", ".join(folders))
    if skipped:
        log.warning("skipped %d images smaller than the %d px crop: %s", len(skipped), min_hr_px,
                    ", ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else ""))
    if not hrs:
        raise DataError(f"no training image is at least {min_hr_px} px on its shorter side",
                        path=", ".join(folders))
    return PairSet(lrs, hrs, names, scale)


def pair_key(stem: str) -> str:
    """A file stem without its LR/HR/scale tags, lower-cased: 'baby_LRx4' -> 'baby'."""
    key = stem
    while True:
        stripped = _TAG.sub("", key)
        if stripped == key or not stripped:
            return key.lower()
        key = stripped


def match_pairs(lr_files: list[Path], hr_files: list[Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair files by ``pair_key``; returns (pairs sorted by key, problems). A key shared by two files
    on one side, or present on one side only, is a problem: nothing is ever paired by guesswork."""
    problems: list[str] = []

    def index(files: list[Path], side: str) -> dict[str, Path]:
        seen: dict[str, Path] = {}
        for f in files:
            k = pair_key(f.stem)
            if k in seen:
                problems.append(f"{f.name} and {seen[k].name} both match '{k}' in the {side} folder")
            else:
                seen[k] = f
        return seen

    lr_by_key, hr_by_key = index(lr_files, "LR"), index(hr_files, "HR")
    problems += [f"{lr_by_key[k].name} has no HR" for k in sorted(set(lr_by_key) - set(hr_by_key))]
    problems += [f"{hr_by_key[k].name} has no LR" for k in sorted(set(hr_by_key) - set(lr_by_key))]
    pairs = [(lr_by_key[k], hr_by_key[k]) for k in sorted(set(lr_by_key) & set(hr_by_key))]
    return pairs, problems


def _raise_problems(problems: list[str], where: str) -> None:
    shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    raise DataError(f"{len(problems)} LR/HR pairing problem(s): {shown}", path=where)


def load_paired(lr_dir: str, hr_dir: str, scale: int, *, min_hr_px: int) -> PairSet:
    """Decode matched LR/HR files; each HR (mod-cropped) must be exactly ``scale`` x its LR."""
    pairs, problems = match_pairs(list_images(lr_dir), list_images(hr_dir))
    lrs, hrs, names, small = [], [], [], []
    for lr_path, hr_path in pairs:
        lr, hr = read_rgb8(lr_path), read_rgb8(hr_path)
        if (hr.shape[0] // scale, hr.shape[1] // scale) != lr.shape[:2]:
            problems.append(f"{lr_path.name} is {lr.shape[1]}x{lr.shape[0]} but {hr_path.name} is "
                            f"{hr.shape[1]}x{hr.shape[0]}, not x{scale}")
            continue
        hr = mod_crop(hr, scale)
        if min(hr.shape[:2]) < min_hr_px:
            small.append(hr_path.name)
            continue
        lrs.append(lr)
        hrs.append(hr)
        names.append(hr_path.name)
    if problems:
        _raise_problems(problems, f"{lr_dir} + {hr_dir}")
    if small:
        log.warning("skipped %d pairs smaller than the %d px crop", len(small), min_hr_px)
    if not hrs:
        raise DataError(f"no pair is at least {min_hr_px} px on its shorter side", path=hr_dir)
    return PairSet(lrs, hrs, names, scale)


def _augment(img: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips/rotations of the square's symmetry group (bit 0 h-flip, 1 v-flip, 2 transpose)."""
    if code & 1:
        img = img[:, ::-1]
    if code & 2:
        img = img[::-1]
    if code & 4:
        img = img.transpose(1, 0, 2)
    return img


def sample_batch(pairs: PairSet, *, seed: int, iteration: int, batch_size: int, gt_size: int,
                 rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch of ``iteration``: (lr, hr) uint8 tensors (B, 3, h, w).

    The whole global batch's random numbers are drawn on every rank (cheap), so the slices of all
    ranks together are exactly the batch a single process draws."""
    scale = pairs.scale
    lr_px = gt_size // scale
    rng = np.random.default_rng([seed, iteration])
    idx = rng.integers(0, len(pairs), batch_size)
    uy, ux = rng.random(batch_size), rng.random(batch_size)
    codes = rng.integers(0, 8, batch_size)
    per_rank = batch_size // world_size
    lr_out = np.empty((per_rank, lr_px, lr_px, 3), np.uint8)
    hr_out = np.empty((per_rank, gt_size, gt_size, 3), np.uint8)
    for j, i in enumerate(range(rank * per_rank, (rank + 1) * per_rank)):
        lr, hr = pairs.lr[idx[i]], pairs.hr[idx[i]]
        y = int(uy[i] * (lr.shape[0] - lr_px + 1))
        x = int(ux[i] * (lr.shape[1] - lr_px + 1))
        lr_out[j] = _augment(lr[y:y + lr_px, x:x + lr_px], int(codes[i]))
        hr_out[j] = _augment(hr[y * scale:(y + lr_px) * scale, x * scale:(x + lr_px) * scale], int(codes[i]))
    return (torch.from_numpy(lr_out).permute(0, 3, 1, 2), torch.from_numpy(hr_out).permute(0, 3, 1, 2))


class IterationBatches(Dataset):
    """Dataset whose item ``it`` is this rank's batch of iteration ``it`` (for DataLoader workers)."""

    def __init__(self, pairs: PairSet, *, seed: int, batch_size: int, gt_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.pairs = pairs
        self.kwargs = {"seed": seed, "batch_size": batch_size, "gt_size": gt_size, "rank": rank,
                       "world_size": world_size}

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_batch(self.pairs, iteration=iteration, **self.kwargs)


def batch_loader(batches: IterationBatches, start_iter: int, end_iter: int, workers: int) -> DataLoader:
    """Batches of iterations ``start_iter + 1 .. end_iter`` in order (iteration numbers are 1-based).

    The loader's own generator gives it the seed it draws for its workers at each ``iter()``: drawn
    from torch's global RNG instead, a resumed run's RNG state would differ from an unstopped run's."""
    return DataLoader(batches, batch_size=None, sampler=range(start_iter + 1, end_iter + 1),
                      num_workers=workers, persistent_workers=False, prefetch_factor=4 if workers else None,
                      generator=torch.Generator())
