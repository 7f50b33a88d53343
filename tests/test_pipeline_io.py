"""Issue 2, Must show 4: what goes in comes out, through the real CLI and an identity-like model.

The identity-like model is SRVGGNetCompact with every weight zero: its output is exactly the
nearest-upsampled input, so pixel values can be checked bit for bit (16-bit included).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image as PILImage
from PIL import ImageCms

from upscale.api import bleed_colour
from upscale.archs import build_module
from upscale.cli import cli
from upscale.io import read_image
from upscale.loading import save_model

FAST = ["--precision", "fp32", "--compile", "off", "-q"]


@pytest.fixture(scope="module")
def identity_x2(tmp_path_factory) -> str:
    hp = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_conv": 1, "scale": 2, "act_type": "prelu"}
    sd = {k: torch.zeros_like(v) for k, v in build_module("compact", hp).state_dict().items()}
    path = tmp_path_factory.mktemp("w") / "identity_x2.safetensors"
    save_model(path, sd, "compact", hp)
    return str(path)


def _run(src, out, model, *extra):
    res = CliRunner().invoke(cli, [str(src), "-m", model, "-o", str(out), *FAST, *extra], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def _nearest2(a: np.ndarray) -> np.ndarray:
    return a.repeat(2, axis=0).repeat(2, axis=1)


def test_rgba_keeps_alpha(tmp_path, identity_x2):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(30) < 15, 255, 0)[None, :]
    PILImage.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    _run(tmp_path / "a.png", tmp_path / "o.png", identity_x2)
    out = read_image(tmp_path / "o.png")
    assert out.alpha is not None and out.pixels.shape == (40, 60, 3)
    assert np.array_equal(out.alpha, _nearest2(rgba[..., 3]))
    # visible colour untouched
    assert np.array_equal(out.pixels[:, :30], _nearest2(rgba[:, :15, :3]))


def test_16bit_png_values_preserved(tmp_path, identity_x2):
    rng = np.random.default_rng(1)
    gray16 = rng.integers(0, 65536, (17, 13), dtype=np.uint16)
    PILImage.fromarray(gray16).save(tmp_path / "g16.png")
    _run(tmp_path / "g16.png", tmp_path / "o.png", identity_x2)
    out = read_image(tmp_path / "o.png")
    assert out.pixels.dtype == np.uint16 and out.pixels.shape == (34, 26, 1)
    assert np.array_equal(out.pixels[..., 0], _nearest2(gray16))


def test_grayscale_stays_grayscale(tmp_path, identity_x2):
    gray = np.random.default_rng(2).integers(0, 256, (16, 16), dtype=np.uint8)
    PILImage.fromarray(gray, "L").save(tmp_path / "g.png")
    _run(tmp_path / "g.png", tmp_path / "o.png", identity_x2)
    with PILImage.open(tmp_path / "o.png") as im:
        assert im.mode == "L"
        assert np.array_equal(np.asarray(im), _nearest2(gray))


def test_exif_orientation_6_upright_and_reset(tmp_path, identity_x2):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)   # stored landscape 40x20, marker top-left
    arr[:5, :5] = 255
    exif = PILImage.Exif()
    exif[0x0112] = 6                              # rotate 90 CW to display
    PILImage.fromarray(arr).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    _run(tmp_path / "r.jpg", tmp_path / "o.jpg", identity_x2)
    with PILImage.open(tmp_path / "o.jpg") as im:
        assert im.size == (40, 80)                # upright portrait, x2
        assert im.getexif().get(0x0112, 1) == 1
        a = np.asarray(im.convert("L"))
        assert a[:8, -8:].mean() > 200 and a[:8, :8].mean() < 50   # marker now top-right


def test_icc_profile_survives(tmp_path, identity_x2):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    PILImage.new("RGB", (12, 10), (10, 200, 30)).save(tmp_path / "c.png", icc_profile=icc)
    for ext in ("png", "jpg", "webp", "tif"):
        _run(tmp_path / "c.png", tmp_path / f"o.{ext}", identity_x2)
        with PILImage.open(tmp_path / f"o.{ext}") as im:
            assert im.info.get("icc_profile") == icc, ext


def test_bleed_fills_hidden_colour_from_neighbours():
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[:, :3] = (200, 100, 50)
    alpha = np.zeros((6, 6), dtype=np.uint8)
    alpha[:, :3] = 255
    out = bleed_colour(rgb, alpha)
    assert np.array_equal(out[:, :3], rgb[:, :3])
    assert (out[:, 3:] == np.array([200, 100, 50], dtype=np.uint8)).all()
    # untouched when nothing is hidden
    assert bleed_colour(rgb, np.full((6, 6), 255, np.uint8)) is rgb
