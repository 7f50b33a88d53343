"""The Python API as a program embedding it uses it: numpy arrays and Pillow images in and out, typed
errors for everything else, one ``Upscaler`` shared by threads, no output on import."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image as PILImage

from upscale import errors
from upscale.api import Upscaler, check_outscale, upscale_image
from upscale.engine import EngineOptions
from upscale.io import Image, write_image
from upscale.loading import load_model

needs_openvino = pytest.mark.skipif(
    __import__("importlib").util.find_spec("openvino") is None, reason="openvino is not installed")


@pytest.fixture(scope="module")
def up(tiny_x4) -> Upscaler:
    return Upscaler(load_model(tiny_x4), EngineOptions(tile_px=0))


def _rgba(h: int = 7, w: int = 9) -> np.ndarray:
    a = np.random.default_rng(0).integers(0, 256, (h, w, 4), dtype=np.uint8)
    a[0, 0, 3] = 0
    return a


@pytest.mark.parametrize("shape", [(7, 9), (7, 9, 1), (7, 9, 2), (7, 9, 3), (7, 9, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_arrays_come_back_in_their_layout_and_dtype(up, shape, dtype):
    a = _rgba()[..., : shape[2] if len(shape) == 3 else 1].reshape(shape)
    a = a.astype(np.float32) / 255 if dtype == np.float32 else a.astype(dtype) * (257 if dtype == np.uint16 else 1)
    out = up.upscale(a, outscale=3)
    assert out.shape == (21, 27) + shape[2:] and out.dtype == dtype
    if dtype == np.float32:
        assert out.min() >= 0 and out.max() <= 1      # Lanczos rings are clipped


def test_array_matches_the_image_record(up):
    a = _rgba()
    record = up.upscale(Image(np.ascontiguousarray(a[..., :3]), np.ascontiguousarray(a[..., 3])))
    out = up.upscale(a)
    assert np.array_equal(out[..., :3], record.pixels) and np.array_equal(out[..., 3], record.alpha)
    as_float = up.upscale(a[..., :3].astype(np.float32) / 255)
    assert np.abs(as_float * 255 - up.upscale(a[..., :3])).max() <= 0.5 + 1e-3


def test_strided_and_read_only_arrays(up):
    a = _rgba()
    expected = up.upscale(np.ascontiguousarray(a[::-1, ::2]))
    frozen = a.copy()
    frozen.flags.writeable = False
    assert np.array_equal(up.upscale(frozen[::-1, ::2]), expected)
    assert np.array_equal(frozen, a)                      # the input is never written to


@pytest.mark.parametrize("mode,back", [("RGB", "RGB"), ("RGBA", "RGBA"), ("L", "L"), ("LA", "LA"), ("P", "RGB"),
                                       ("CMYK", "RGB"), ("I;16", "I;16")])
def test_pillow_images_in_and_out(up, mode, back):
    a = _rgba()
    picture = (PILImage.fromarray(a[..., 0].astype(np.uint16) * 257) if mode == "I;16"
               else PILImage.fromarray(a).convert(mode))
    picture.info["dpi"] = (300, 300)
    out = up.upscale(picture)
    assert isinstance(out, PILImage.Image) and out.mode == back and out.size == (36, 28)
    assert out.info["dpi"] == (300.0, 300.0)
    assert isinstance(upscale_image(picture, up.model, outscale=2), PILImage.Image)


def test_pillow_image_that_cannot_be_decoded(up, tmp_path):
    PILImage.fromarray(_rgba()[..., :3]).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.UsageError, match="cannot be decoded"):
        up.upscale(PILImage.open(tmp_path / "cut.png"))
    with pytest.raises(errors.UsageError, match="unsupported mode F"):
        up.upscale(PILImage.new("F", (4, 4)))


@pytest.mark.parametrize("wrong", [[[1, 2]], "a.png", np.zeros((2, 4, 4, 3), np.uint8), np.zeros((4, 4, 3)),
                                   np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4), bool)])
def test_what_is_not_an_image_is_a_usage_error(up, wrong):
    with pytest.raises(errors.UsageError, match="image"):
        up.upscale(wrong)


def test_torch_tensor_is_a_usage_error(up):
    torch = pytest.importorskip("torch")
    with pytest.raises(errors.UsageError, match="not torch.Tensor"):
        up.upscale(torch.zeros(1, 3, 8, 8))


def test_upscaler_wants_a_model(tiny_x4):
    with pytest.raises(errors.UsageError, match="load_model"):
        Upscaler(tiny_x4)


def test_write_image_wants_an_image(tmp_path):
    with pytest.raises(errors.UsageError, match="takes an upscale Image"):
        write_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("scale", [np.float32(2), np.float64(2.5), np.int64(3), 2])
def test_numpy_scalars_are_numbers(up, scale):
    check_outscale(scale)
    assert up.upscale(np.zeros((4, 4, 3), np.uint8), outscale=scale).shape[0] == round(4 * float(scale))


@pytest.mark.parametrize("scale", [True, "2", 0, -1.0, float("nan"), float("inf")])
def test_bad_outscale(scale):
    with pytest.raises(errors.UsageError, match="outscale must be a number > 0"):
        check_outscale(scale)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 6, 3), (6, 1, 3), (1, 1)])
def test_tiny_images_and_sizes_back_to_back(up, shape):
    a = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    first = up.upscale(a)
    up.upscale(np.zeros((13, 5, 3), np.uint8))
    assert first.shape[:2] == (shape[0] * 4, shape[1] * 4) and np.array_equal(up.upscale(a), first)


def _from_threads(up: Upscaler, images: list[np.ndarray]) -> tuple[list[str], dict]:
    results, failures = {}, []

    def work(k: int) -> None:
        try:
            for j, image in enumerate(images):
                results[k, j] = up.upscale(image)
        except Exception as exc:   # what a thread hit, for the assertion
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures, results


@needs_openvino
def test_one_upscaler_shared_by_threads(tiny_x4):
    """OpenVINO's compiled model has one infer request: two threads at once failed with 'Infer Request
    is busy' before the Upscaler took its images one at a time."""
    up = Upscaler(load_model(tiny_x4), EngineOptions(backend="openvino", tile_px=8, precision="fp32"))
    images = [Image(np.random.default_rng(k).integers(0, 256, (20, 17, 3), dtype=np.uint8), None) for k in range(4)]
    expected = [up.upscale(image).pixels for image in images]
    failures, results = _from_threads(up, images * 2)
    assert failures == []
    assert all(np.array_equal(out.pixels, expected[j % 4]) for (_, j), out in results.items())


def test_import_is_quiet_and_light():
    code = ("import logging, sys; import upscale; from upscale import Upscaler, load_model; "
            "assert 'openvino' not in sys.modules; assert not logging.getLogger().handlers; "
            "assert not logging.getLogger('upscale').handlers")
    done = subprocess.run([sys.executable, "-c", "import sys; import upscale; "
                           "assert 'torch' not in sys.modules, 'torch'; " + code],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_upscale_file_never_writes_over_its_input(up, tmp_path):
    src = tmp_path / "a.png"
    PILImage.fromarray(_rgba()[..., :3]).save(src)
    before = src.read_bytes()
    with pytest.raises(errors.ImageWriteError, match="overwrite the input"):
        up.upscale_file(src, tmp_path / "." / "a.png")
    assert src.read_bytes() == before
    with pytest.raises(errors.ImageWriteError, match="does not exist"):
        up.upscale_file(tmp_path / "missing.png", tmp_path / "nodir" / "b.png")   # the output first, before any work
    (tmp_path / "b.png").write_bytes(b"old")
    assert up.upscale_file(src, tmp_path / "b.png").pixels.shape == (28, 36, 3)
    assert PILImage.open(tmp_path / "b.png").size == (36, 28)


@pytest.mark.parametrize("name", [None, 3, "", "  "])
def test_load_model_wants_a_name_or_a_file(name):
    from upscale.api import load_model as api_load_model

    with pytest.raises(errors.UsageError, match="registry name or a weights file"):
        api_load_model(name)
