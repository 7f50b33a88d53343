"""NIQE, the "completely blind" natural image quality evaluator (Mittal, Soundararajan and Bovik, IEEE
Signal Processing Letters 20(3), 2013), in numpy: a no-reference score, lower is more natural.

The algorithm follows the authors' MATLAB release (``computequality.m``), which SR papers and BasicSR
reproduce; docs/niqe.md has the validation against two independent implementations.

- **Luma.** An RGB image is scored on its BT.601 Y (``metrics.rgb_to_y``, the Y of MATLAB's
  ``rgb2ycbcr`` on the 255 scale, 16..235), as the PIRM challenge's MATLAB scoring and BasicSR's
  ``calculate_niqe`` do, so NIQE sits beside PSNR-Y/SSIM-Y on one plane. (The MATLAB release itself
  falls back to ``rgb2gray`` when handed RGB; give this function that plane to get that convention.) A
  one-channel image is its own luma. The luma is rounded to integers, as MATLAB's ``rgb2ycbcr`` does
  for 8-bit images and BasicSR does for every input. ``crop_border`` pixels go from every side first.
- **Patches.** The plane is cut to whole ``patch_px`` patches from the top left (the rest is dropped,
  as in MATLAB). Every patch is used, as in the release's test code (selecting patches by sharpness
  belongs to fitting the pristine model).
- **Scales.** Two: the plane, then MATLAB's bicubic ``imresize(plane, 0.5)`` in float
  (``matlab_resize.imresize``), with patches of ``patch_px / 2``.
- **MSCN.** (I - mu) / (sigma + 1), mu and sigma from a 7x7 Gaussian window (sigma 7/6 px, normalised)
  with the edge pixel replicated past the borders (``imfilter(..., 'replicate')``);
  sigma = sqrt(|E[I^2] - mu^2|). Where the whole 7x7 window holds one value, I - mu and sigma are set
  to exactly 0, their value, rather than left with the filter's rounding residue (see ``mscn``).
- **Features, 18 per patch and scale.** An asymmetric generalised Gaussian (AGGD) fitted by moment
  matching to the patch's MSCN values gives [alpha, (beta_l + beta_r) / 2]; the same fit to the
  products of each value with its neighbour at (row, col) offsets (0, 1), (1, 0), (1, 1), (1, -1),
  wrapping around inside the patch (MATLAB's ``circshift``), gives [alpha, eta, beta_l, beta_r] with
  eta = (beta_r - beta_l) Gamma(2/alpha) / Gamma(1/alpha). alpha is the point of the grid
  0.2, 0.201, ..., 10 whose r(alpha) = Gamma(2/alpha)^2 / (Gamma(1/alpha) Gamma(3/alpha)) is nearest
  to the sample's normalised ratio (the first such point on a tie).
- **Distance.** The patches' 36 features give a test Gaussian (mean, covariance with N - 1); the score
  is sqrt((mu_p - mu_t)^T pinv((cov_p + cov_t) / 2) (mu_p - mu_t)), pinv with MATLAB's tolerance
  (max(n) * eps * largest singular value). The pristine model (mu_p, cov_p) is the authors' own
  (``data/niqe_pristine.safetensors``, written by scripts/niqe_params.py, source and sha256 in its
  metadata).
- **Degenerate patches.** A fit with no negative or no positive samples (a perfectly flat patch) has
  no beta; such a patch's features are NaN and the patch is left out of the test Gaussian (the
  release's ``nanmean``/``nancov`` leave out NaN values too; no image of Set5/Set14 has such a patch).
  Fewer than two usable patches is an error, and so is an image with fewer than two whole patches.

Computed in float64 throughout. Never imports torch or PIL; safetensors' numpy reader loads the model.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .matlab_resize import imresize
from .metrics import rgb_to_y, shave

PATCH_PX = 96                       # the patch side of the pristine model (the release's default)
GAUSS_RADIUS_PX = 3                 # 7x7 window
GAUSS_SIGMA_PX = 7.0 / 6.0
FEATURES_PER_SCALE = 18
NUM_SCALES = 2
MIN_PATCHES = 2                     # a sample covariance needs two patches
PRISTINE_FILE = Path(__file__).resolve().parent / "data" / "niqe_pristine.safetensors"
NEIGHBOUR_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))   # (row, col): horizontal, vertical, two diagonals


@dataclass(frozen=True)
class PristineModel:
    """The multivariate Gaussian of pristine-image features: ``mu`` (36,), ``cov`` (36, 36), float64."""

    mu: np.ndarray
    cov: np.ndarray
    metadata: dict[str, str]


def load_pristine(path: str | Path = PRISTINE_FILE) -> PristineModel:
    """The pristine model stored at ``path`` (tensors ``mu`` and ``cov``), checked for shape."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        metadata = dict(f.metadata() or {})
        mu, cov = f.get_tensor("mu"), f.get_tensor("cov")
    n = FEATURES_PER_SCALE * NUM_SCALES
    if mu.shape != (n,) or cov.shape != (n, n):
        raise ValueError(f"{path}: expected mu ({n},) and cov ({n}, {n}), got {mu.shape} and {cov.shape}")
    return PristineModel(mu.astype(np.float64), cov.astype(np.float64), metadata)


@functools.lru_cache(maxsize=1)
def pristine_model() -> PristineModel:
    """The shipped pristine model, read once."""
    return load_pristine(PRISTINE_FILE)


# --- the plane ---------------------------------------------------------------------------------------
def luma(image: np.ndarray) -> np.ndarray:
    """The rounded luma plane NIQE scores, float64 (H, W): BT.601 Y of an RGB image, a one-channel
    image as it is; values on the [0, 255] scale."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 3:
        img = rgb_to_y(img / 255.0) * 255.0
    elif img.ndim != 2:
        raise ValueError(f"niqe: expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {img.shape}")
    return np.floor(np.clip(img, 0.0, 255.0) + 0.5)


def gaussian_taps(radius_px: int = GAUSS_RADIUS_PX, sigma_px: float = GAUSS_SIGMA_PX) -> np.ndarray:
    """The 1-D factor of the normalised 2-D Gaussian window (its outer product with itself)."""
    x = np.arange(-radius_px, radius_px + 1, dtype=np.float64)
    taps = np.exp(-(x * x) / (2.0 * sigma_px * sigma_px))
    return taps / taps.sum()


def _correlate(plane: np.ndarray, taps: np.ndarray, pad_mode: str) -> np.ndarray:
    """Correlation with outer(taps, taps), same size, padded by ``pad_mode`` (np.pad's name): the
    vertical pass, then the horizontal one."""
    h, w = plane.shape
    padded = np.pad(plane, len(taps) // 2, mode=pad_mode)
    rows = sum(t * padded[i:i + h, :] for i, t in enumerate(taps))
    return sum(t * rows[:, j:j + w] for j, t in enumerate(taps))


def _window_reduce(plane: np.ndarray, radius_px: int, pad_mode: str,
                   op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """``op`` (np.maximum, np.minimum) over each (2r+1)^2 window, same size, padded by ``pad_mode``."""
    h, w = plane.shape
    padded = np.pad(plane, radius_px, mode=pad_mode)
    rows = functools.reduce(op, (padded[i:i + h, :] for i in range(2 * radius_px + 1)))
    return functools.reduce(op, (rows[:, j:j + w] for j in range(2 * radius_px + 1)))


def mscn(plane: np.ndarray, pad_mode: str = "edge") -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (I - mu) / (sigma + 1) of a float plane.
    ``pad_mode="edge"`` is MATLAB's 'replicate' (the reference); other np.pad modes exist for
    comparisons with other implementations.

    Where the whole 7x7 window is one value, I - mu and sigma are exactly 0 (the formula's value):
    floating-point filtering leaves rounding noise of ~1e-13 there instead, whose signs would decide
    which side of the AGGD fit those pixels count on, and so make the score depend on the order of the
    filter's additions (by 0.36 on Set5's head; docs/niqe.md)."""
    taps = gaussian_taps()
    mu = _correlate(plane, taps, pad_mode)
    sigma = np.sqrt(np.abs(_correlate(plane * plane, taps, pad_mode) - mu * mu))
    flat = flat_windows(plane, pad_mode)
    return np.where(flat, 0.0, plane - mu) / (np.where(flat, 0.0, sigma) + 1.0)


def flat_windows(plane: np.ndarray, pad_mode: str = "edge") -> np.ndarray:
    """True where the 7x7 window around a pixel (padded by ``pad_mode``) holds a single value."""
    r = GAUSS_RADIUS_PX
    return _window_reduce(plane, r, pad_mode, np.maximum) == _window_reduce(plane, r, pad_mode, np.minimum)


# --- the AGGD fit ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _AlphaGrid:
    alpha: np.ndarray      # 0.2:0.001:10, as in the release
    r: np.ndarray          # Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)), strictly increasing
    g1: np.ndarray         # Gamma(1/a)
    g2: np.ndarray         # Gamma(2/a)
    g3: np.ndarray         # Gamma(3/a)


@functools.lru_cache(maxsize=1)
def _alpha_grid() -> _AlphaGrid:
    alpha = 0.2 + 0.001 * np.arange(9801, dtype=np.float64)
    g1, g2, g3 = (np.array([math.gamma(k / a) for a in alpha]) for k in (1.0, 2.0, 3.0))
    return _AlphaGrid(alpha, g2 * g2 / (g1 * g3), g1, g2, g3)


def nearest_grid_index(ratio: np.ndarray) -> np.ndarray:
    """For each value, the index of the grid point whose r(alpha) is nearest (the lower one on a tie:
    the first minimum of (r - value)^2, as MATLAB's ``min`` returns); -1 where the value is NaN."""
    r = _alpha_grid().r
    ratio = np.asarray(ratio, dtype=np.float64)
    hi = np.clip(np.searchsorted(r, ratio), 1, len(r) - 1)
    lo = hi - 1
    take_hi = (r[hi] - ratio) ** 2 < (r[lo] - ratio) ** 2
    return np.where(np.isnan(ratio), -1, np.where(take_hi, hi, lo))


def aggd_fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Moment-matching AGGD fit of each row of ``samples`` (n, m): alpha, beta_l, beta_r and the mean
    eta = (beta_r - beta_l) Gamma(2/alpha) / Gamma(1/alpha), each (n,). All NaN for a row with no
    negative or no positive sample."""
    grid = _alpha_grid()
    neg, pos = samples < 0, samples > 0
    sq = samples * samples
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(np.where(neg, sq, 0.0).sum(axis=1) / neg.sum(axis=1))
        right_std = np.sqrt(np.where(pos, sq, 0.0).sum(axis=1) / pos.sum(axis=1))
        g = left_std / right_std
        r_hat = np.abs(samples).mean(axis=1) ** 2 / sq.mean(axis=1)
        r_norm = r_hat * (g ** 3 + 1.0) * (g + 1.0) / (g * g + 1.0) ** 2
    idx = nearest_grid_index(r_norm)
    nan = np.where(idx >= 0, 1.0, np.nan)        # NaN where the fit is undefined
    idx = np.maximum(idx, 0)
    spread = np.sqrt(grid.g1[idx] / grid.g3[idx])
    beta_l, beta_r = left_std * spread * nan, right_std * spread * nan
    return grid.alpha[idx] * nan, beta_l, beta_r, (beta_r - beta_l) * grid.g2[idx] / grid.g1[idx]


def _patches(coeffs: np.ndarray, patch_px: int) -> np.ndarray:
    """The whole ``patch_px`` patches of a plane, row by row: (n, patch_px, patch_px)."""
    rows, cols = coeffs.shape[0] // patch_px, coeffs.shape[1] // patch_px
    cut = coeffs[:rows * patch_px, :cols * patch_px]
    return cut.reshape(rows, patch_px, cols, patch_px).transpose(0, 2, 1, 3).reshape(-1, patch_px, patch_px)


def patch_features(coeffs: np.ndarray, patch_px: int) -> np.ndarray:
    """The 18 features of every whole patch of an MSCN plane, patches row by row: (n, 18)."""
    patches = _patches(coeffs, patch_px)
    flat = patches.reshape(len(patches), -1)
    alpha, beta_l, beta_r, _ = aggd_fit(flat)
    columns = [alpha, (beta_l + beta_r) / 2.0]
    for dy, dx in NEIGHBOUR_OFFSETS:
        neighbour = np.roll(patches, (dy, dx), axis=(1, 2)).reshape(len(patches), -1)
        alpha, beta_l, beta_r, eta = aggd_fit(flat * neighbour)
        columns += [alpha, eta, beta_l, beta_r]
    return np.stack(columns, axis=1)


def niqe_features(plane: np.ndarray, patch_px: int = PATCH_PX, pad_mode: str = "edge") -> np.ndarray:
    """The 36 features (18 per scale) of every whole patch of a luma plane: (n, 36). The plane is cut
    to whole patches first; the second scale is MATLAB's bicubic x0.5 of the cut plane."""
    rows, cols = plane.shape[0] // patch_px, plane.shape[1] // patch_px
    plane = np.asarray(plane, dtype=np.float64)[:rows * patch_px, :cols * patch_px]
    per_scale = []
    for level in range(NUM_SCALES):
        per_scale.append(patch_features(mscn(plane, pad_mode), patch_px >> level))
        if level + 1 < NUM_SCALES:
            plane = imresize(plane, 0.5)
    return np.concatenate(per_scale, axis=1)


# --- the distance ------------------------------------------------------------------------------------
def matlab_pinv(a: np.ndarray) -> np.ndarray:
    """Moore-Penrose inverse with MATLAB's default tolerance, max(size) * eps * largest singular value."""
    return np.linalg.pinv(a, rcond=max(a.shape) * np.finfo(np.float64).eps)


def mvg_distance(mu_p: np.ndarray, cov_p: np.ndarray, features: np.ndarray) -> float:
    """NIQE's distance between the pristine Gaussian and the one fitted to ``features`` (n, d) rows
    without NaN (at least two)."""
    mu_t = features.mean(axis=0)
    cov_t = np.cov(features, rowvar=False, ddof=1)
    diff = mu_p - mu_t
    return float(math.sqrt(max(float(diff @ matlab_pinv((cov_p + cov_t) / 2.0) @ diff), 0.0)))


def check_size(height: int, width: int, crop_border: int = 0, patch_px: int = PATCH_PX) -> None:
    """ValueError, naming the size, when an image of ``height`` x ``width`` less ``crop_border`` px on
    every side holds fewer than two whole ``patch_px`` patches (a test covariance needs two)."""
    h, w = max(height - 2 * crop_border, 0), max(width - 2 * crop_border, 0)
    n = (h // patch_px) * (w // patch_px)
    if n < MIN_PATCHES:
        border = f" less a border of {crop_border} px ({w}x{h})" if crop_border else ""
        raise ValueError(f"niqe: a {width}x{height} image{border} holds {n} whole {patch_px}x{patch_px} "
                         f"patch(es); NIQE needs at least {MIN_PATCHES} (e.g. {patch_px * MIN_PATCHES}x{patch_px} "
                         f"or {patch_px}x{patch_px * MIN_PATCHES})")


def niqe(image: np.ndarray, crop_border: int = 0, patch_px: int = PATCH_PX,
         model: PristineModel | None = None) -> float:
    """NIQE of an (H, W), (H, W, 1) or (H, W, 3) image on the [0, 255] scale (uint8 or float); lower
    is more natural. ``crop_border`` pixels are removed from every side first; ``patch_px`` (even,
    >= 8) is the patch side at full scale; ``model`` defaults to the shipped pristine model. See the module
    docstring for the conventions. ValueError for a bad shape or an image with fewer than two whole
    patches."""
    if crop_border < 0:
        raise ValueError(f"niqe: crop_border must be >= 0, got {crop_border}")
    if patch_px < 8 or patch_px % 2:
        raise ValueError(f"niqe: patch_px must be an even number >= 8, got {patch_px}")
    plane = luma(image)
    shape = plane.shape
    check_size(shape[0], shape[1], crop_border, patch_px)
    plane = shave(plane, crop_border)
    features = niqe_features(plane, patch_px)
    usable = features[~np.isnan(features).any(axis=1)]
    if len(usable) < MIN_PATCHES:
        raise ValueError(f"niqe: only {len(usable)} of the {len(features)} patches of a {shape[1]}x{shape[0]} "
                         f"image have texture to fit (the others are perfectly flat); NIQE needs "
                         f"{MIN_PATCHES}")
    pristine = model if model is not None else pristine_model()
    return mvg_distance(pristine.mu, pristine.cov, usable)


def describe() -> dict[str, str]:
    """How a NIQE figure was computed, for the record beside it."""
    return {"niqe": "Mittal et al. 2013 as in the authors' MATLAB release; BT.601 Y (gray as is), rounded; "
                    f"{PATCH_PX} px patches, all used; 2 scales",
            "niqe_model_sha256": _pristine_sha256()}


@functools.lru_cache(maxsize=1)
def _pristine_sha256() -> str:
    """The shipped parameter file's sha256, read and hashed once per process."""
    return hashlib.sha256(PRISTINE_FILE.read_bytes()).hexdigest()
