"""Metadata an upscale carries over: EXIF sizes and thumbnail, PNG text and colour chunks, a JPEG
comment, and a resolution only the EXIF gives. Tiny images written with Pillow, read back with it."""

from __future__ import annotations

import io
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, PngImagePlugin
from PIL import Image as PILImage

from upscale.io import read_image, write_image

RNG = np.random.default_rng(7)


def camera_exif(orientation: int = 6, thumbnail: bool = True) -> bytes:
    """A camera's EXIF for a 10 x 6 picture: Make, resolution, DateTimeOriginal, PixelX/YDimension (as
    SHORTs), GPS and, where asked, an 8 x 8 JPEG thumbnail in IFD1 at the end of the block."""
    exif = PILImage.Exif()
    exif[0x0112], exif[0x010F], exif[0x011A], exif[0x011B], exif[0x0128] = orientation, "Cam", 300.0, 300.0, 2
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0xA002], sub[0xA003] = "2024:01:02 03:04:05", 10, 6
    exif.get_ifd(0x8825)[1] = "N"
    tiff = bytearray(exif.tobytes()[6:])
    if not thumbnail:
        return b"Exif\x00\x00" + bytes(tiff)
    order = "<" if tiff[:2] == b"II" else ">"
    link = 8 + 2 + 12 * struct.unpack_from(order + "H", tiff, 8)[0]
    picture = io.BytesIO()
    PILImage.new("RGB", (8, 8), "red").save(picture, "JPEG")
    tiff += b"\x00" * (len(tiff) % 2)
    struct.pack_into(order + "I", tiff, link, len(tiff))
    start = len(tiff) + 2 + 2 * 12 + 4
    tiff += (struct.pack(order + "H", 2) + struct.pack(order + "HHII", 0x0201, 4, 1, start)
             + struct.pack(order + "HHII", 0x0202, 4, 1, len(picture.getvalue())) + b"\x00" * 4 + picture.getvalue())
    return b"Exif\x00\x00" + bytes(tiff)


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_exif_pixel_dimensions_follow_the_output_and_the_old_thumbnail_goes(tmp_path: Path, ext: str) -> None:
    src = tmp_path / "photo.jpg"
    PILImage.fromarray(RNG.integers(0, 256, (6, 10, 3), np.uint8)).save(src, exif=camera_exif())
    with PILImage.open(src) as before:
        assert before.getexif().get_ifd(ExifTags.IFD.IFD1)          # the test file has its thumbnail
    img = read_image(src)                                            # upright: 6 wide, 10 tall
    big = replace(img, pixels=np.repeat(np.repeat(img.pixels, 4, 0), 4, 1))   # as an x4 upscale gives it
    write_image(big, tmp_path / f"out.{ext}")
    with PILImage.open(tmp_path / f"out.{ext}") as out:
        exif = out.getexif()
        sub = exif.get_ifd(0x8769)
        assert (sub[0xA002], sub[0xA003]) == (24, 40) == out.size
        assert not exif.get_ifd(ExifTags.IFD.IFD1) and b"\xff\xd8" not in out.info["exif"][8:]
        assert exif[0x0112] == 1 and exif[0x010F] == "Cam" and sub[0x9003] == "2024:01:02 03:04:05"
        assert exif.get_ifd(0x8825)[1] == "N"


def test_png_text_and_colour_chunks_survive_and_raw_exif_profiles_do_not(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat, steps: 20")                   # what AI image tools write
    info.add_itxt("Description", "d\u00e9j\u00e0 vu \u2713", zip=True)
    info.add_text("Author", "me", zip=True)
    info.add_text("Raw profile type exif", "\nexif\n      4\n4d4d002a\n")   # ImageMagick's hex EXIF: not copied
    info.add(b"gAMA", struct.pack(">I", 100000))                       # linear samples: shown otherwise without it
    info.add(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000))
    PILImage.fromarray(RNG.integers(0, 256, (4, 5, 3), np.uint8)).save(tmp_path / "in.png", pnginfo=info)
    write_image(read_image(tmp_path / "in.png"), tmp_path / "out.png")
    with PILImage.open(tmp_path / "out.png") as out:
        out.load()
        assert out.text == {"parameters": "a cat, steps: 20", "Description": "d\u00e9j\u00e0 vu \u2713", "Author": "me"}
        assert out.info["gamma"] == 1.0
        assert out.info["chromaticity"] == (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)


def test_a_long_png_text_is_compressed_and_kept(tmp_path: Path) -> None:
    workflow = '{"nodes": [' + ", ".join(f'{{"id": {i}, "type": "KSampler"}}' for i in range(500)) + "]}"
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", workflow, zip=True)
    PILImage.fromarray(RNG.integers(0, 256, (4, 5, 3), np.uint8)).save(tmp_path / "in.png", pnginfo=info)
    write_image(read_image(tmp_path / "in.png"), tmp_path / "out.png")
    assert (tmp_path / "out.png").stat().st_size < len(workflow)
    with PILImage.open(tmp_path / "out.png") as out:
        out.load()
        assert out.text == {"workflow": workflow}


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_a_jpeg_comment_is_kept(tmp_path: Path, ext: str) -> None:
    PILImage.fromarray(RNG.integers(0, 256, (4, 5, 3), np.uint8)).save(tmp_path / "in.jpg", comment=b"scan 12, box 3")
    write_image(read_image(tmp_path / "in.jpg"), tmp_path / f"out.{ext}")
    with PILImage.open(tmp_path / f"out.{ext}") as out:
        out.load()
        assert (out.info["comment"] if ext == "jpg" else out.text["Comment"]) in (b"scan 12, box 3", "scan 12, box 3")


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "bmp"])
def test_a_webp_resolution_in_its_exif_is_written_like_any_other(tmp_path: Path, ext: str) -> None:
    # WebP has no resolution field; its EXIF says 300 dpi, as a JPEG's would when it has no JFIF density
    PILImage.fromarray(RNG.integers(0, 256, (4, 5, 3), np.uint8)).save(
        tmp_path / "in.webp", exif=camera_exif(1, thumbnail=False), lossless=True)
    assert read_image(tmp_path / "in.webp").dpi == (300.0, 300.0)
    write_image(read_image(tmp_path / "in.webp"), tmp_path / f"out.{ext}")
    assert read_image(tmp_path / f"out.{ext}").dpi == pytest.approx((300.0, 300.0), abs=0.0254)
