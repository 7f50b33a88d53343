"""``io.is_whole``: an image file cut anywhere is not whole; our own outputs, as written, are."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import features

from upscale.io import Animation, Image, is_whole, write_animation, write_image

FORMATS = ["png", "jpg", "webp", "tif", "bmp"] + (["avif"] if features.check("avif") else [])


def _cuts(data: bytes) -> list[int]:
    """Every length from 1 byte short down to the first 16 bytes, thinned to ~150 of them."""
    return sorted({len(data) - 1, len(data) - 2, len(data) - 12, *range(16, len(data), max(1, len(data) // 150))})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("depth", [8, 16])
def test_a_written_image_is_whole_and_no_cut_of_it_is(tmp_path, fmt, depth):
    rng = np.random.default_rng(depth)
    pixels = rng.integers(0, 2**depth, (70, 90, 3), dtype=np.uint8 if depth == 8 else np.uint16)
    alpha = rng.integers(0, 2**depth, (70, 90), dtype=pixels.dtype) if fmt in ("png", "tif", "webp") else None
    path = tmp_path / f"a.{fmt}"
    write_image(Image(pixels, alpha), path)
    assert is_whole(path)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    for n in _cuts(data):
        cut.write_bytes(data[:n])
        assert not is_whole(cut), (fmt, n, len(data))


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_an_animation_cut_anywhere_is_not_whole(tmp_path, fmt):
    rng = np.random.default_rng(3)
    frames = [Image(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), None) for _ in range(3)]
    path = tmp_path / f"a.{fmt}"
    write_animation(Animation(frames, [40, 50, 60]), path)
    assert is_whole(path) and PILImage.open(path).n_frames == 3
    data = path.read_bytes()
    for n in _cuts(data):
        path.write_bytes(data[:n])
        assert not is_whole(path), (fmt, n)


def test_files_of_other_writers_and_formats(tmp_path):
    """Pillow's own TIFF (several strips) and JPEG are judged the same way; a format we never write
    (GIF) counts as whole, as its header read; a missing file is not."""
    rgb = np.random.default_rng(4).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    for name in ("p.tif", "p.jpg", "p.gif"):
        PILImage.fromarray(rgb).save(tmp_path / name)
        assert is_whole(tmp_path / name), name
    data = (tmp_path / "p.tif").read_bytes()
    (tmp_path / "p.tif").write_bytes(data[:-1])
    assert not is_whole(tmp_path / "p.tif")
    assert not is_whole(tmp_path / "missing.png")


# --- a write the file system cuts short fails, and leaves nothing --------------------------------------

_LIMITED_WRITE = """
import resource, signal, sys
import numpy as np
from upscale import errors
from upscale.io import Animation, Image, write_animation, write_image
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # past the limit: EFBIG, not a killed process
limit, path = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
pixels = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    if path.endswith(".anim.webp"):
        write_animation(Animation([Image(pixels, None), Image(pixels[::-1].copy(), None)]), path)
    else:
        write_image(Image(pixels, None), path)
except errors.ImageWriteError as err:
    print("refused:", err.message)
    sys.exit(1)
print("written")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="file size limits are POSIX")
@pytest.mark.parametrize("name", ["a.jpg", "a.webp", "a.png", "a.tif", "a.bmp", "a.anim.webp"])
def test_a_write_cut_short_by_a_file_size_limit_fails_and_leaves_nothing(tmp_path, name):
    """The last bytes refused (a full disk behaves the same): Pillow's JPEG encoder ignored the short
    write and the cut file was renamed into place, exit 0."""
    whole = subprocess.run([sys.executable, "-c", _LIMITED_WRITE, str(2**40), str(tmp_path / name)],
                           capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    size = (tmp_path / name).stat().st_size
    (tmp_path / name).unlink()
    cut = subprocess.run([sys.executable, "-c", _LIMITED_WRITE, str(size - 10), str(tmp_path / name)],
                         capture_output=True, text=True)
    assert cut.returncode == 1 and "refused: cannot write" in cut.stdout, (cut.stdout, cut.stderr)
    assert list(tmp_path.iterdir()) == []
