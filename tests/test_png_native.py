"""Our PNG writer's fast path: rows filtered by ``pngfilter.c`` (built here) byte for byte as the numpy
filter does, deflated by ISA-L where it is installed; and both fallbacks (no C compiler, no ISA-L)
writing the same pixels."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from upscale import native
from upscale.io import Image, read_image, write_image
from upscale.io import png


@pytest.fixture
def fresh_filter():
    """``native_filter`` asked anew in the test (it is kept per process), and forgotten after it."""
    png.native_filter.cache_clear()
    yield
    png.native_filter.cache_clear()


def _image(seed: int, rows: int, row_bytes: int) -> np.ndarray:
    """Rows of several kinds, so every filter wins somewhere: noise, ramps along the row, copies of
    the row above, smooth gradients, plateaus."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, row_bytes), np.uint8)
    for r in range(rows):
        kind = rng.integers(5)
        if kind == 0 or r == 0:
            out[r] = rng.integers(0, 256, row_bytes)
        elif kind == 1:
            out[r] = (np.arange(row_bytes) * rng.integers(1, 9) + rng.integers(256)) % 256
        elif kind == 2:
            out[r] = out[r - 1]
        elif kind == 3:
            out[r] = (out[r - 1].astype(int) + np.arange(row_bytes) // 3 + rng.integers(-2, 3, row_bytes)) % 256
        else:
            out[r] = rng.integers(256)
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 9), pixels=st.integers(1, 40),
       bpp=st.sampled_from([1, 2, 3, 4, 6, 8]), data=st.data())
def test_the_native_filter_writes_the_numpy_filters_bytes(seed, rows, pixels, bpp, data):
    if png.native_filter() is None:
        pytest.skip("no C compiler here: the native filter is not built")
    raw = _image(seed, rows, pixels * bpp)
    start = data.draw(st.integers(0, rows - 1))
    stop = data.draw(st.integers(start + 1, rows))
    assert bytes(png._png_filter_block(raw, start, stop, bpp)) == png._png_filter_block_numpy(raw, start, stop, bpp)


def test_every_filter_type_is_chosen_on_a_varied_image():
    """The comparison above means something: on rows made for it, each of the five filters wins."""
    if png.native_filter() is None:
        pytest.skip("no C compiler here: the native filter is not built")
    raw = _image(7, 400, 3 * 50)
    filtered = np.frombuffer(bytes(png._png_filter_block(raw, 0, 400, 3)), np.uint8).reshape(400, -1)
    assert set(filtered[:, 0].tolist()) == {0, 1, 2, 3, 4}
    assert filtered.tobytes() == png._png_filter_block_numpy(raw, 0, 400, 3)


def test_without_a_compiler_rows_are_filtered_by_numpy_into_the_same_file(tmp_path, monkeypatch, fresh_filter):
    pixels = _image(3, 64, 3 * 48).reshape(64, 48, 3)
    built = png.native_filter() is not None
    write_image(Image(pixels, None), tmp_path / "native.png")
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    png.native_filter.cache_clear()
    assert png.native_filter() is None
    with pytest.raises(native.BuildError) as info:      # what native_filter turned into its fallback
        native.load(png.__package__, png.FILTER_SOURCE, png.FILTER_FLAGS)
    assert info.value.stage == "compile" and "no-such-compiler" in info.value.why
    write_image(Image(pixels, None), tmp_path / "numpy.png")
    assert np.array_equal(read_image(tmp_path / "numpy.png").pixels, pixels)
    if built:   # the same filter choices and the same deflater: the same file, whichever filtered the rows
        assert (tmp_path / "numpy.png").read_bytes() == (tmp_path / "native.png").read_bytes()


@pytest.mark.parametrize("library", ["isal", "zlib"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_either_deflater_writes_one_valid_stream_of_many_blocks(tmp_path, monkeypatch, library, dtype):
    """Blocks deflated apart and joined (sync flushes, one Adler-32) decode to the pixels written, with
    ISA-L or with Python's zlib."""
    module = pytest.importorskip("isal.isal_zlib") if library == "isal" else zlib
    monkeypatch.setattr(png, "deflater", lambda: (module, png.ISAL_LEVEL if library == "isal" else 3))
    monkeypatch.setattr(png, "PNG_BLOCK_BYTES", 700)
    pixels = np.random.default_rng(5).integers(0, np.iinfo(dtype).max + 1, (57, 31, 3), dtype=dtype)
    buffer = io.BytesIO()
    png.write_png(buffer, pixels, None, None, None, threads=3)
    with PILImage.open(io.BytesIO(buffer.getvalue())) as im:
        im.load()
        assert im.size == (31, 57)
    (tmp_path / "out.png").write_bytes(buffer.getvalue())
    back = read_image(tmp_path / "out.png")
    assert back.pixels.dtype == dtype and np.array_equal(back.pixels, pixels)


def test_the_deflater_is_isal_where_installed():
    try:
        from isal import isal_zlib
    except ImportError:
        assert png.deflater() == (zlib, png.PNG_COMPRESS_LEVEL)
    else:
        assert png.deflater() == (isal_zlib, png.ISAL_LEVEL)


def test_threads_writing_the_first_png_build_the_filter_once(tmp_path, monkeypatch, fresh_filter, logged_cc):
    """The filter is built before the writer's threads start, not by each of them at once."""
    log = logged_cc
    monkeypatch.setattr(png, "PNG_BLOCK_BYTES", 300)
    pixels = _image(11, 40, 3 * 30).reshape(40, 30, 3)
    buffer = io.BytesIO()
    png.write_png(buffer, pixels, None, None, None, threads=4)
    if png.native_filter() is None:
        pytest.skip("no C compiler here")
    assert log.read_text().splitlines() == ["build"]
    (tmp_path / "out.png").write_bytes(buffer.getvalue())
    assert np.array_equal(read_image(tmp_path / "out.png").pixels, pixels)


def test_a_cache_folder_that_cannot_be_searched_means_numpy_not_a_crash(tmp_path, monkeypatch, fresh_filter):
    """Python raises PermissionError from ``is_file`` under a folder without search permission (mode
    000, not root): a ``BuildError`` at the folder stage, and the PNG filtered by numpy."""
    class Unsearchable(type(tmp_path)):
        def is_file(self):
            raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(native, "library_path", lambda *args: Unsearchable(tmp_path / "locked" / "x.so"))
    with pytest.raises(native.BuildError) as info:
        native.load(png.__package__, png.FILTER_SOURCE, png.FILTER_FLAGS)
    assert info.value.stage == "folder" and "Permission denied" in info.value.why
    assert png.native_filter() is None
    pixels = _image(5, 9, 3 * 7).reshape(9, 7, 3)
    write_image(Image(pixels, None), tmp_path / "out.png")
    assert np.array_equal(read_image(tmp_path / "out.png").pixels, pixels)
