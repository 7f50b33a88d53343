"""Issue 5: MATLAB-compatible bicubic, PSNR/SSIM conventions, and `upscale bench` end to end.

Reference values are derived here from the definitions (Keys' cubic kernel with a = -0.5, its
antialiased form scale * k(scale * x), MATLAB's sample positions u = x/scale + (1 - 1/scale)/2), not
taken from the code under test. The published-table check needs ../shared data and is optional.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from upscale import metrics
from upscale.matlab_resize import contributions, cubic, imresize, round_like_matlab

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def keys_kernel(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys (1981) cubic convolution kernel written out independently of upscale.matlab_resize."""
    t = np.abs(np.asarray(x, dtype=np.float64))
    near = (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    far = a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


# --- the kernel and imresize -----------------------------------------------------------------------
def test_cubic_is_keys_kernel_with_a_minus_half():
    x = np.linspace(-3, 3, 241)
    np.testing.assert_allclose(cubic(x), keys_kernel(x), atol=1e-15)
    # by hand: k(0) = 1, k(+-1) = k(+-2) = 0, k(0.5) = 0.5625, k(1.5) = -0.0625
    np.testing.assert_allclose(cubic(np.array([0.0, 1.0, -1.0, 2.0, 0.5, 1.5])),
                               [1.0, 0.0, 0.0, 0.0, 0.5625, -0.0625])


def _column_signal(values: np.ndarray, rows: int = 6) -> np.ndarray:
    """A (rows, n) image whose every row is ``values`` (so the vertical pass changes nothing)."""
    return np.tile(np.asarray(values, dtype=np.float64), (rows, 1))


def test_downscale_by_two_of_an_impulse_gives_the_antialiased_kernel():
    n, p = 24, 10                                  # impulse at 1-based position 10
    signal = np.zeros(n)
    signal[p - 1] = 1.0
    out = imresize(_column_signal(signal), scale=0.5)[0]
    assert out.shape == (n // 2,)
    # output x (1-based) samples u = 2x - 0.5; the weight of input p is 0.5 * k(0.5 * (u - p)), and the
    # weights already sum to 1 in the interior (partition of unity), so normalising changes nothing.
    x = np.arange(1, n // 2 + 1)
    np.testing.assert_allclose(out, 0.5 * keys_kernel(0.5 * (2 * x - 0.5 - p)), atol=1e-15)
    # the same numbers by hand: 0.5*k(1.25), 0.5*k(0.25), 0.5*k(0.75), 0.5*k(1.75) for x = 4..7
    np.testing.assert_allclose(out[3:7], [-0.03515625, 0.43359375, 0.11328125, -0.01171875], atol=1e-15)
    assert np.all(out[:2] == 0) and np.all(out[7:] == 0)          # support is 4/scale = 8 input pixels
    assert math.isclose(out.sum(), 0.5)                              # the mean is kept


def test_upscale_by_two_of_an_impulse_gives_the_kernel():
    n, p = 24, 10
    signal = np.zeros(n)
    signal[p - 1] = 1.0
    out = imresize(_column_signal(signal), scale=2.0)[0]
    assert out.shape == (2 * n,)
    x = np.arange(1, 2 * n + 1)
    np.testing.assert_allclose(out, keys_kernel(x / 2 + 0.25 - p), atol=1e-15)
    # by hand: outputs 16..23 sample u = 8.25 .. 11.75 around p = 10
    np.testing.assert_allclose(out[15:23], [-0.0234375, -0.0703125, 0.2265625, 0.8671875,
                                            0.8671875, 0.2265625, -0.0703125, -0.0234375], atol=1e-15)


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2.0, 3.0])
def test_ramp_interior_is_preserved(scale):
    # A symmetric kernel whose weights sum to 1 reproduces a linear function exactly where no tap
    # reaches past the edge; the output then equals the ramp at the 0-based position u - 1.
    n = 48
    ramp = 3.0 * np.arange(n) + 7.0
    out = imresize(_column_signal(ramp), scale=scale)[0]
    x = np.arange(1, out.size + 1)
    u = x / scale + 0.5 * (1 - 1 / scale)
    reach = 2 / scale + 1 if scale < 1 else 3
    interior = (u - reach >= 1) & (u + reach <= n)
    assert interior.sum() >= 4
    np.testing.assert_allclose(out[interior], 3.0 * (u[interior] - 1) + 7.0, rtol=0, atol=1e-11)


def test_edges_mirror_with_the_edge_pixel_repeated():
    s = np.array([10.0, 40.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    out = imresize(_column_signal(s), scale=2.0)[0]
    # first output: u = 0.75, taps at positions -1..2 with weights k(1.75), k(0.75), k(-0.25), k(-1.25);
    # positions -1 and 0 mirror to 2 and 1: 1.09375 * s1 - 0.09375 * s2
    assert math.isclose(out[0], 1.09375 * 10 - 0.09375 * 40)


def test_contributions_match_matlab_shape_and_normalisation():
    weights, indices = contributions(12, 4, 1 / 3)
    assert weights.shape == indices.shape and weights.shape[1] <= math.ceil(4 * 3) + 2
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert indices.min() >= 0 and indices.max() <= 11


def test_imresize_sizes_constants_and_channels():
    img = np.random.default_rng(0).random((255, 30, 3))
    assert imresize(img, scale=1 / 3).shape == (85, 10, 3)          # ceil(255 * (1/3)) is 85, not 86
    assert imresize(img, output_shape=(100, 7)).shape == (100, 7, 3)
    np.testing.assert_allclose(imresize(np.full((9, 13), 77.0), scale=0.25), 77.0)
    per_channel = np.stack([imresize(img[..., c], scale=0.5) for c in range(3)], axis=2)
    np.testing.assert_array_equal(imresize(img, scale=0.5), per_channel)
    with pytest.raises(ValueError):
        imresize(img, scale=0.5, output_shape=(3, 3))


def test_round_like_matlab_rounds_halves_up_and_clips():
    np.testing.assert_array_equal(round_like_matlab(np.array([0.5, 1.5, 2.5, 254.5, -3.0, 300.0, 1.49])),
                                  [1, 2, 3, 255, 0, 255, 1])


# --- metrics --------------------------------------------------------------------------------------
def test_psnr_of_a_known_mse():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = np.full((8, 8, 3), 5, dtype=np.uint8)
    assert math.isclose(metrics.psnr(a, b, y_channel=False), 10 * math.log10(255 ** 2 / 25))
    # on Y a uniform RGB offset d becomes d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255
    assert math.isclose(metrics.psnr(a, b), 10 * math.log10(255 ** 2 / (5 * 219 / 255) ** 2))
    # a single-channel image is its own luma
    assert math.isclose(metrics.psnr(a[..., 0], b[..., 0]), 10 * math.log10(255 ** 2 / 25))
    assert metrics.psnr(a, a) == math.inf


def test_psnr_crop_border_ignores_the_frame():
    a = np.full((10, 10), 100.0)
    b = a.copy()
    b[:2, :] = 0.0
    b[:, -2:] = 0.0
    b[5, 5] = 110.0                                   # the only difference inside a 2-pixel border
    assert math.isclose(metrics.psnr(a, b, crop_border=2), 10 * math.log10(255 ** 2 / (100 / 36)))


def test_rgb_to_y_range():
    y = metrics.rgb_to_y(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(y * 255, [16.0, 235.0, 16.0 + 65.481])


def test_ssim_identical_is_one():
    x = np.random.default_rng(1).integers(0, 256, (20, 24, 3)).astype(np.uint8)
    assert math.isclose(metrics.ssim(x, x), 1.0)
    assert math.isclose(metrics.ssim(x, x, crop_border=3, y_channel=False), 1.0)


def test_ssim_of_constant_images_by_hand():
    # no variance: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), the C2 factors cancel
    c1 = (0.01 * 255) ** 2
    got = metrics.ssim(np.full((15, 15), 100.0), np.full((15, 15), 110.0))
    assert math.isclose(got, (2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1))


def test_ssim_single_window_weighted_statistics():
    # An 11x11 image has exactly one valid window position: SSIM is then one Gaussian-weighted formula.
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, (11, 11))
    y = np.clip(0.8 * x + rng.normal(0, 10, x.shape) + 20, 0, 255)
    t = np.arange(11) - 5.0
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2
    cxy = (w * x * y).sum() - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert math.isclose(metrics.ssim(x, y), expected, rel_tol=1e-12)
    assert metrics.ssim(x, y) < 1.0


def test_mod_crop_and_shape_errors():
    from upscale.dataprep import mod_crop

    assert mod_crop(np.zeros((13, 10, 3)), 4).shape == (12, 8, 3)
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((12, 12)), np.zeros((12, 12)), crop_border=1)   # 10 px < window


def test_lpips_reports_why_it_is_missing():
    net, reason = metrics.Lpips.create()
    if net is None:
        assert reason
    else:
        x = np.random.default_rng(3).integers(0, 256, (32, 32, 3)).astype(np.uint8)
        assert net(x, x) == pytest.approx(0.0, abs=1e-6)


# --- bench end to end -----------------------------------------------------------------------------
ROW_KEYS = {"scale", "method", "kind", "psnr_db", "ssim", "lpips", "niqe", "seconds_per_image", "output_mp_per_s",
            "peak_memory_mib", "peak_device_mib", "device", "dtype", "note", "per_image"}
FAST = ["-q", "--precision", "fp32", "--compile", "off", "--warmup", "1"]


@pytest.fixture(scope="module")
def tiny_model(weights_file) -> str:
    from conftest import COMPACT_X2_SMALLEST

    return str(weights_file("compact", COMPACT_X2_SMALLEST, 0, "tiny_x2"))


@pytest.fixture()
def hr_dir(tmp_path) -> Path:
    rng = np.random.default_rng(4)
    folder = tmp_path / "hr"
    folder.mkdir()
    yy, xx = np.mgrid[0:38, 0:42]
    smooth = (127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)
    PILImage.fromarray(np.stack([smooth, smooth[::-1], 255 - smooth], axis=2)).save(folder / "waves.png")
    PILImage.fromarray(rng.integers(0, 256, (33, 30, 3), dtype=np.uint8)).save(folder / "noise.png")
    PILImage.fromarray(smooth.T.copy(), mode="L").save(folder / "gray.png")
    (folder / "manifest.csv").write_text("file\nwaves.png\n")
    return folder


def _bench(args):
    from upscale.cli import cli
    return CliRunner().invoke(cli, ["bench", *map(str, args)], catch_exceptions=False)


def test_bench_json_schema_models_and_sheet(hr_dir, tiny_model, tmp_path):
    sheet = tmp_path / "sheet.png"
    res = _bench(["--data", hr_dir, "-s", "2", "-s", "4", "-m", tiny_model, "--json", "--sheet", sheet,
                  "--sheet-image", "waves", *FAST])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "upscale.bench/1"
    assert set(doc) == {"schema", "data", "lr_source", "metric", "timing", "environment", "images", "rows",
                        "hr_reference"}
    assert doc["hr_reference"] == [] and doc["metric"]["niqe"] is None
    assert doc["lr_source"] == "matlab-bicubic"
    assert [i["name"] for i in doc["images"]] == ["gray", "noise", "waves"]
    assert [i["channels"] for i in doc["images"]] == [1, 3, 3]
    assert doc["metric"]["y_channel"] is True and doc["metric"]["crop_border"] == "scale"
    assert [(r["scale"], r["method"]) for r in doc["rows"]] == [
        (s, m) for s in (2, 4) for m in ("nearest", "bilinear", "bicubic", "lanczos", "tiny_x2")]
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS
        assert [p["name"] for p in row["per_image"]] == ["gray", "noise", "waves"]
        assert math.isclose(row["psnr_db"], np.mean([p["psnr_db"] for p in row["per_image"]]))
        assert 0 < row["ssim"] <= 1 and row["seconds_per_image"] > 0 and row["output_mp_per_s"] > 0
        assert (row["lpips"] is None) == (doc["metric"]["lpips"] is None)
        assert row["niqe"] is None and all(p["niqe"] is None for p in row["per_image"])
    model_rows = [r for r in doc["rows"] if r["kind"] == "model"]
    # the note names a backend other than torch: the one --backend auto runs this untuned fp32 model on
    import torch

    from upscale.api import load_model
    from upscale.backends import choose_backend
    backend = choose_backend("auto", load_model(tiny_model), "cpu", "fp32", torch.get_num_threads())
    assert model_rows[0]["note"] == {"torch": "", "winograd": "Winograd"}[backend]
    assert "Lanczos" in model_rows[1]["note"]
    assert doc["environment"]["models"]["tiny_x2"]["native_scale"] == 2
    # the bicubic row is the MATLAB pipeline, recomputed here from the parts
    from upscale.dataprep import bicubic_down, bicubic_up, mod_crop
    hr = mod_crop(np.asarray(PILImage.open(hr_dir / "waves.png")), 4)
    want = metrics.psnr(bicubic_up(bicubic_down(hr, 4), 4), hr, crop_border=4)
    bicubic_x4 = next(r for r in doc["rows"] if r["scale"] == 4 and r["method"] == "bicubic")
    assert math.isclose(bicubic_x4["per_image"][2]["psnr_db"], want)
    # on smooth content bicubic beats nearest
    nearest_x4 = next(r for r in doc["rows"] if r["scale"] == 4 and r["method"] == "nearest")
    assert bicubic_x4["per_image"][2]["psnr_db"] > nearest_x4["per_image"][2]["psnr_db"]
    with PILImage.open(sheet) as im:
        assert im.mode == "RGB" and im.width > 6 * 64 and im.height > 2 * 64   # 2 rows (x2, x4), HR + 5 methods
        assert len(np.unique(np.asarray(im))) > 10


def test_bench_lr_folder_pairs_by_stem_and_formats(hr_dir, tmp_path):
    from upscale.dataprep import bicubic_down, mod_crop, read_uint8

    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for p in hr_dir.glob("*.png"):
        lr = bicubic_down(mod_crop(read_uint8(p, rgb=False), 3), 3)
        PILImage.fromarray(lr[..., 0] if lr.shape[2] == 1 else lr).save(lr_dir / p.name)
    made = _bench(["--data", hr_dir, "-s", "3", "--csv", "--baselines", "bicubic,nearest", *FAST])
    paired = _bench(["--data", hr_dir, "-s", "3", "--csv", "--lr", lr_dir, "--baselines", "bicubic,nearest",
                     *FAST])
    assert made.exit_code == 0 and paired.exit_code == 0, made.output + paired.output
    rows_made = list(csv.DictReader(io.StringIO(made.stdout)))
    rows_paired = list(csv.DictReader(io.StringIO(paired.stdout)))
    assert [r["method"] for r in rows_made] == ["bicubic", "nearest"]
    assert [(r["psnr_db"], r["ssim"]) for r in rows_made] == [(r["psnr_db"], r["ssim"]) for r in rows_paired]
    md = _bench(["--data", hr_dir, "-s", "3", "--markdown", "--baselines", "bicubic", "--rgb", *FAST])
    assert md.exit_code == 0, md.output
    header = [c.strip() for c in md.stdout.splitlines()[0].strip("|").split("|")]
    assert header[:4] == ["scale", "method", "PSNR-RGB (dB)", "SSIM-RGB"]
    assert "NIQE" not in md.stdout

    (lr_dir / "noise.png").unlink()
    sheet = tmp_path / "never.png"
    bad = _bench(["--data", hr_dir, "-s", "3", "--lr", lr_dir, "--sheet", sheet, *FAST])
    assert bad.exit_code == 1
    assert "no LR image with stem 'noise'" in bad.stderr and str(lr_dir) in bad.stderr
    assert not sheet.exists()


def test_bench_usage_errors(hr_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _bench(["--data", empty, *FAST])
    assert res.exit_code == 1 and "no images" in res.stderr
    res = _bench(["--data", hr_dir, "--baselines", "cubic", *FAST])
    assert res.exit_code == 2 and "unknown baseline 'cubic'" in res.stderr
    res = _bench(["--data", hr_dir, "-s", "2", "-s", "3", "--lr", hr_dir, *FAST])
    assert res.exit_code == 2


def test_bench_niqe_column_and_hr_reference(tmp_path):
    from test_niqe import dead_leaves

    from upscale import niqe
    from upscale.dataprep import mod_crop, read_uint8

    folder = tmp_path / "scenes"
    folder.mkdir()
    for seed, name in ((0, "a"), (1, "b")):
        gray = dead_leaves(200, 201, seed)
        rgb = np.stack([gray, 0.8 * gray + 20, gray[::-1]], axis=2)
        PILImage.fromarray(np.round(rgb).astype(np.uint8)).save(folder / f"{name}.png")
    res = _bench(["--data", folder, "-s", "2", "--niqe", "--json", "--baselines", "bicubic,nearest", *FAST])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert "96 px patches" in doc["metric"]["niqe"] and len(doc["metric"]["niqe_model_sha256"]) == 64
    [hr] = doc["hr_reference"]
    assert hr["scale"] == 2 and [p["name"] for p in hr["per_image"]] == ["a", "b"]
    want = niqe.niqe(mod_crop(read_uint8(folder / "b.png", rgb=False), 2), crop_border=2)
    assert hr["per_image"][1]["niqe"] == want
    assert math.isclose(hr["niqe"], np.mean([p["niqe"] for p in hr["per_image"]]))
    for row in doc["rows"]:
        assert math.isclose(row["niqe"], np.mean([p["niqe"] for p in row["per_image"]]))
    bicubic = next(r for r in doc["rows"] if r["method"] == "bicubic")
    assert bicubic["niqe"] > hr["niqe"]          # the x2 bicubic round trip blurs: less natural than HR

    md = _bench(["--data", folder, "-s", "2", "--niqe", "--markdown", "--baselines", "bicubic", *FAST])
    assert md.exit_code == 0, md.output
    lines = md.stdout.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["scale", "method", "PSNR-Y (dB)", "SSIM-Y", "NIQE"]
    hr_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert hr_cells[:2] == ["x2", "HR"] and float(hr_cells[4]) == pytest.approx(hr["niqe"], abs=0.005)
    assert any(line.startswith("NIQE: lower is more natural") for line in lines)


def test_bench_niqe_refuses_images_too_small_for_it(hr_dir):
    res = _bench(["--data", hr_dir, "-s", "2", "--niqe", "--baselines", "bicubic", *FAST])
    assert res.exit_code == 1
    assert "gray" in res.stderr and "NIQE needs at least 2" in res.stderr and "x2" in res.stderr


def test_gray_modes_differ_by_the_studio_range_factor(hr_dir):
    from upscale.bench import BenchOptions, run_bench

    def bicubic_gray(gray: str) -> float:
        opts = BenchOptions(scales=(2,), baselines=("bicubic",), gray=gray, lpips=False, warmup_runs=0)
        return run_bench(hr_dir, opts).rows[0].per_image[0].psnr_db

    # BT.601 Y of a gray image repeated to RGB is 16 + g * 219/255: errors shrink by 219/255
    assert math.isclose(bicubic_gray("rgb") - bicubic_gray("y"), 20 * math.log10(255 / 219), abs_tol=0.02)


# --- the whole bicubic row, recomputed from the definitions -------------------------------------
def _matlab_matrix(n_in: int, scale: float) -> np.ndarray:
    """imresize along one axis as an (out, in) matrix, built tap by tap from the definition: Keys'
    kernel (stretched by 1/scale when shrinking), u = x/scale + (1 - 1/scale)/2, the taps
    floor(u - width/2) + 0 .. ceil(width) + 1, weights normalised, positions outside 1..n mirrored with the
    edge pixel repeated."""
    n_out = math.ceil(n_in * scale - 1e-9)
    stretch = min(scale, 1.0)
    width = 4 / stretch
    m = np.zeros((n_out, n_in))
    for x in range(1, n_out + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        taps = [math.floor(u - width / 2) + k for k in range(math.ceil(width) + 2)]
        weights = [stretch * keys_kernel(stretch * (u - t)) for t in taps]
        for t, wt in zip(taps, weights):
            while not 1 <= t <= n_in:
                t = 1 - t if t < 1 else 2 * n_in + 1 - t
            m[x - 1, t - 1] += wt / sum(weights)
    return m


def _matlab_uint8(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize of a uint8 (H, W, C) image: height first, each pass rounded to uint8."""
    rows, cols = _matlab_matrix(img.shape[0], scale), _matlab_matrix(img.shape[1], scale)
    out = np.floor(np.clip(np.einsum("oh,hwc->owc", rows, img.astype(np.float64)), 0, 255) + 0.5)
    return np.floor(np.clip(np.einsum("pw,owc->opc", cols, out), 0, 255) + 0.5)


def _ssim_by_windows(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM over every 11x11 window inside the image, each by its Gaussian-weighted sums."""
    t = np.arange(11) - 5.0
    w = np.outer(np.exp(-t ** 2 / 4.5), np.exp(-t ** 2 / 4.5))
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb, cab = (w * a * a).sum() - ma ** 2, (w * b * b).sum() - mb ** 2, (w * a * b).sum() - ma * mb
            values.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("scale", [2, 3])
def test_bench_bicubic_row_equals_the_papers_pipeline_written_out(tmp_path, scale):
    # Nothing from upscale but run_bench: mod-crop, MATLAB imresize of uint8 down then up, BT.601 Y
    # (float, studio range; a gray image is its own Y), `scale` px shaved, PSNR and SSIM per image.
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:35, 0:38]
    waves = 128 + 90 * np.sin(xx / 3.1) * np.cos(yy / 4.3)
    rgb = np.clip(np.stack([waves, waves[::-1], 255 - waves], 2) + rng.normal(0, 9, (35, 38, 3)), 0, 255)
    PILImage.fromarray(rgb.astype(np.uint8)).save(tmp_path / "a.png")
    PILImage.fromarray(rgb[..., 1].T.astype(np.uint8), mode="L").save(tmp_path / "b.png")
    from upscale.bench import BenchOptions, run_bench

    got = run_bench(tmp_path, BenchOptions(scales=(scale,), baselines=("bicubic",), lpips=False,
                                           warmup_runs=0)).rows[0].per_image
    for score, name in zip(got, ("a", "b")):
        hr = np.asarray(PILImage.open(tmp_path / f"{name}.png")).astype(np.float64)
        hr = (hr if hr.ndim == 3 else hr[..., None])[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        sr = _matlab_uint8(_matlab_uint8(hr, 1 / scale), scale)
        if hr.shape[2] == 3:
            hr, sr = (16 + img @ np.array([65.481, 128.553, 24.966]) / 255 for img in (hr, sr))
        else:
            hr, sr = hr[..., 0], sr[..., 0]
        hr, sr = hr[scale:-scale, scale:-scale], sr[scale:-scale, scale:-scale]
        assert score.name == name
        assert math.isclose(score.psnr_db, 10 * math.log10(255 ** 2 / np.mean((hr - sr) ** 2)), rel_tol=1e-9)
        assert math.isclose(score.ssim, _ssim_by_windows(hr, sr), rel_tol=1e-9)


def test_bench_hr_folder_with_two_images_of_one_stem_is_refused(tmp_path):
    img = np.random.default_rng(8).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    PILImage.fromarray(img).save(tmp_path / "a.png")
    PILImage.fromarray(img).save(tmp_path / "a.bmp")
    res = _bench(["--data", tmp_path, "-s", "2", "--baselines", "bicubic", *FAST])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert "two HR images with stem 'a'" in lines[0] and str(tmp_path) in lines[0]


def test_bench_names_the_file_of_an_image_too_small_for_the_scale(tmp_path):
    PILImage.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    PILImage.fromarray(np.zeros((3, 5, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    res = _bench(["--data", tmp_path, "-s", "4", "--baselines", "bicubic", *FAST])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert str(tmp_path / "tiny.png") in lines[0] and "5x3" in lines[0] and "x4" in lines[0]


def test_bench_model_rows_say_what_computed_them(tiny_model):
    from upscale.bench import load_models
    from upscale.bench.methods import model_method
    from upscale.engine import EngineOptions

    pytest.importorskip("openvino")
    opts = dict(precision="fp32", tile_px=0, compile="off")
    torch_m = load_models([tiny_model], EngineOptions(backend="torch", **opts))[0]
    ov_m = load_models([tiny_model], EngineOptions(backend="openvino", **opts))[0]
    lr = np.zeros((8, 8, 3), np.uint8)
    torch_spec, ov_spec, ov_x4 = model_method(torch_m, 2), model_method(ov_m, 2), model_method(ov_m, 4)
    for spec in (torch_spec, ov_spec, ov_x4):       # the note names what computed the images it ran
        spec.fn(lr)
    assert torch_spec.full_note() == "" and ov_spec.full_note() == "OpenVINO"
    assert ov_x4.full_note() == "OpenVINO; native x2, Lanczos-resized to x4"


# --- the published tables (needs ../shared) ------------------------------------------------------
# (set, scale, published PSNR / SSIM, bench's bicubic row, the Y-only pipeline of SRCNN's scripts); see
# docs/bench.md: the papers' bicubic rows were made on the 8-bit Y plane in floating point, bench's row
# on the RGB image as a model gets it, so they differ by up to 0.013 dB and 0.0008 SSIM.
PUBLISHED = [
    ("Set5", 2, (33.66, 0.9299), (33.6734, 0.93029), (33.6614, 0.92988)),
    ("Set5", 3, (30.39, 0.8682), (30.4033, 0.86891), (30.3922, 0.86821)),
    ("Set5", 4, (28.42, 0.8104), (28.4290, 0.81114), (28.4207, 0.81037)),
    ("Set14", 2, (30.24, 0.8688), (30.2302, 0.86905), (30.2318, 0.86865)),
    ("Set14", 3, (27.55, 0.7742), (27.5367, 0.77447), (27.5405, 0.77361)),
    ("Set14", 4, (26.00, 0.7027), (25.9940, 0.70292), (26.0001, 0.70186)),
]


@pytest.mark.optional
@pytest.mark.parametrize("name,scale,published,bench_row,y_only", PUBLISHED)
def test_bicubic_reproduces_published_tables(name, scale, published, bench_row, y_only):
    from upscale.bench import BenchOptions, run_bench
    from upscale.dataprep import list_images, mod_crop, read_uint8

    if not (SHARED / name).is_dir():
        pytest.skip(f"{SHARED / name} not present")
    opts = BenchOptions(scales=(scale,), baselines=("bicubic",), lpips=False, warmup_runs=0)
    row = run_bench(SHARED / name, opts).rows[0]
    assert abs(row.psnr_db - bench_row[0]) < 1e-3 and abs(row.ssim - bench_row[1]) < 1e-5
    assert abs(row.psnr_db - published[0]) < 0.015 and abs(row.ssim - published[1]) < 0.001
    # SRCNN's scripts: Y = rgb2ycbcr of the uint8 image (rounded), LR and bicubic on Y in floating point,
    # the result rounded to uint8; same metrics. This gives the published Set5 row to the digit.
    psnrs, ssims = [], []
    for path in list_images(SHARED / name):
        hr = mod_crop(read_uint8(path, rgb=False), scale).astype(np.float64)
        y = round_like_matlab(metrics.rgb_to_y(hr / 255) * 255) if hr.shape[2] == 3 else hr[..., 0]
        sr = round_like_matlab(imresize(imresize(y, 1 / scale), float(scale)))
        psnrs.append(metrics.psnr(sr, y, scale))
        ssims.append(metrics.ssim(sr, y, scale))
    assert abs(np.mean(psnrs) - y_only[0]) < 1e-3 and abs(np.mean(ssims) - y_only[1]) < 1e-5
    if name == "Set5":
        assert abs(np.mean(psnrs) - published[0]) < 0.005 and abs(np.mean(ssims) - published[1]) < 0.0001


def test_the_sheet_never_replaces_a_test_image_or_an_existing_file_without_force(hr_dir, tmp_path):
    before = (hr_dir / "waves.png").read_bytes()
    res = _bench(["--data", hr_dir, "-s", "2", "--baselines", "bicubic", "--sheet", hr_dir / "waves.png", *FAST])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "overwrite an input" in lines[0], res.stderr
    assert (hr_dir / "waves.png").read_bytes() == before
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"mine")
    res = _bench(["--data", hr_dir, "-s", "2", "--baselines", "bicubic", "--sheet", sheet, *FAST])
    assert res.exit_code == 1 and "--force" in res.stderr and sheet.read_bytes() == b"mine"
    res = _bench(["--data", hr_dir, "-s", "2", "--baselines", "bicubic", "--sheet", sheet, "--force", *FAST])
    assert res.exit_code == 0 and sheet.read_bytes().startswith(b"\x89PNG")


def test_bench_off_a_terminal_says_each_method_and_image_as_it_finishes(hr_dir, tiny_model):
    """Off a terminal (a log file, CI) bench printed nothing until the table, minutes later for a large
    model; now one plain line per method and image on stderr (none with -q), the table alone on stdout."""
    args = ["--data", hr_dir, "-s", "2", "-m", tiny_model, "--baselines", "bicubic", "--no-lpips", "--json",
            "--precision", "fp32", "--compile", "off", "--warmup", "0"]
    res = _bench(args)
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("upscale: bench ")]
    assert [line.split(":")[1:3] for line in lines] == [
        [f" bench {i + 1}/6", f" x2 {method} on {name}"]
        for i, (method, name) in enumerate((m, n) for m in ("bicubic", "tiny_x2")
                                           for n in ("gray.png", "noise.png", "waves.png"))], res.stderr
    assert all(line.endswith(" dB") and " s, " in line for line in lines), lines
    assert json.loads(res.stdout)["rows"]
    res = _bench([*args, "-q"])
    assert res.exit_code == 0 and res.stderr == "", res.stderr
