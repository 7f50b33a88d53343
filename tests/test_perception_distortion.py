"""benchmarks/perception_distortion.py end to end on tiny random networks and synthetic images, with a
stand-in NIQE (the real one needs 96 px patches; these images are 64 px): the alpha rows are the
networks ``upscale interp`` would write, the endpoints are the two files, and the four outputs appear."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import COMPACT_X4, textured

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perception_distortion.py"


@pytest.fixture(scope="module")
def pd():
    spec = importlib.util.spec_from_file_location("perception_distortion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in_niqe(calls: list):
    """Same signature as upscale.niqe.niqe; mean absolute Laplacian mapped so sharper = lower."""
    def niqe(image: np.ndarray, crop_border: int = 0) -> float:
        assert image.ndim == 2 or image.shape[2] == 3, image.shape
        calls.append((image.shape, crop_border))
        x = np.asarray(image, dtype=np.float64)
        x = x.mean(axis=2) if x.ndim == 3 else x
        x = x[crop_border:x.shape[0] - crop_border, crop_border:x.shape[1] - crop_border]
        lap = np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:])
        return float(10.0 - np.log1p(lap.mean()))
    return niqe


def test_curve_table_plot_and_sheet(pd, weights_file, tmp_path):
    psnr = weights_file("compact", COMPACT_X4, 0, "tiny_psnr")
    gan = weights_file("compact", COMPACT_X4, 1, "tiny_gan")
    other = weights_file("compact", COMPACT_X4, 2, "tiny_x4plus")       # stands in for x4plus
    images = tmp_path / "set"
    images.mkdir()
    PILImage.fromarray(textured(64, 66, 0)).save(images / "a.png")      # mod-cropped to 64x64
    PILImage.fromarray(textured(64, 64, 1)[..., 0]).save(images / "b.png")   # gray: stays one plane
    out = tmp_path / "out"
    calls: list = []
    argv = ["--psnr", str(psnr), "--gan", str(gan), "--images", str(images), "--alphas", "0,0.4,1",
            "--x4plus", str(other), "--out", str(out), "--threads", "1", "--sheet-crop", "32"]
    args = pd.parse_args(argv)
    doc = pd.run(args, niqe=stand_in_niqe(calls))

    assert {p.name for p in out.iterdir()} == {"perception_distortion.json", "perception_distortion.md",
                                               "perception_distortion.png", "perception_distortion_sheet.png"}
    saved = json.loads((out / "perception_distortion.json").read_text())
    rows = {(r["kind"], r["alpha"]): r for r in saved["rows"]}
    assert [r["method"] for r in saved["rows"]] == ["bicubic", "alpha=0", "alpha=0.4", "alpha=0.5", "alpha=1",
                                                    "x4plus", "HR"]
    assert rows[("alpha", 0.5)]["on_curve"] is False and rows[("alpha", 0.4)]["on_curve"] is True
    assert rows[("reference", None)]["psnr_db"] is None and rows[("reference", None)]["niqe"] > 0
    assert all(crop == 4 for _, crop in calls) and ((64, 64), 4) in calls and ((64, 64, 3), 4) in calls
    assert saved["engine"]["precision"] == "fp32" and all(r["dtype"] == "float32" for r in saved["rows"]
                                                          if r["kind"] in ("alpha", "model"))
    assert saved["ends"] == {"0": "tiny_psnr", "1": "tiny_gan"} and doc["scale"] == 4

    # the endpoints are the two files, scored the bench's way (MATLAB-bicubic LR of the mod-crop)
    from upscale.api import load_model
    from upscale.bench.methods import model_method
    from upscale.engine import EngineOptions
    from upscale.metrics import psnr as psnr_db

    options = EngineOptions(precision="fp32", tile_px=0, compile="off", backend="torch", threads=1)
    pairs = pd.read_pairs(images, 4)
    for alpha, path in ((0.0, psnr), (1.0, gan)):
        method = model_method(pd.prepared(load_model(path), "end", options), 4)
        expect = [psnr_db(method.fn(lr), hr, 4) for _, hr, lr in pairs]
        got = [r["psnr_db"] for r in rows[("alpha", alpha)]["per_image"]]
        assert got == pytest.approx(expect, abs=1e-9)
    mid = rows[("alpha", 0.4)]["psnr_db"]
    assert mid not in (rows[("alpha", 0.0)]["psnr_db"], rows[("alpha", 1.0)]["psnr_db"])

    table = (out / "perception_distortion.md").read_text()
    assert "| alpha=0 (tiny_psnr) |" in table and "| HR | n/a | n/a |" in table
    with PILImage.open(out / "perception_distortion.png") as im:
        assert im.size == (pd.PLOT_W, pd.PLOT_H)
    with PILImage.open(out / "perception_distortion_sheet.png") as im:
        assert im.width > 6 * 192             # bicubic, alpha 0, 0.5, 1, x4plus, HR; 32 px crops x6
    assert [c.split(":")[0] for c in saved["sheet"]["columns"]] == ["bicubic", "tiny_psnr", "alpha=0.5",
                                                                    "tiny_gan", "x4plus", "HR"]


def test_option_errors(pd):
    assert pd.parse_alphas("1, 0,0.5,0") == [0.0, 0.5, 1.0]
    assert pd.parse_crop("10,20,48") == (10, 20, 48) and pd.parse_crop("64") == (64,)
    for bad in ("0,x", ""):
        with pytest.raises(SystemExit):
            pd.parse_alphas(bad)
    from upscale.errors import UsageError

    with pytest.raises(UsageError):
        pd.parse_alphas("0,1.5")
    for bad in ("1,2", "a", "0,0,0"):
        with pytest.raises(SystemExit):
            pd.parse_crop(bad)
    assert pd.x4plus_path("none") == (None, "left out (--x4plus none)")
