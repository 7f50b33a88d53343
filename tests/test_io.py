"""Image I/O: round trips (alpha, 16 bit, grayscale, ICC, EXIF), conversions, bad input, atomic writes."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms, ImageFile, ImageOps

from upscale import atomic, errors
from upscale.atomic import atomic_file
from upscale.io import (
    SUPPORTED_EXTENSIONS,
    Image,
    check_output,
    image_size,
    output_format_for,
    read_image,
    to_uint8,
    write_image,
)

RNG = np.random.default_rng(1234)
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def rand(shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if atomic.is_temp_name(p.name) or "tmp" in p.name)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def interlaced_png16(samples: np.ndarray) -> bytes:
    """A 16-bit Adam7-interlaced PNG with 'sub' and 'up' filtered rows: a layout our writer never makes."""
    h, w, c = samples.shape
    bpp = 2 * c
    scan = b""
    for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)]:
        sub = samples[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        raw = sub.astype(">u2").view(np.uint8).reshape(sub.shape[0], -1)
        for i, row in enumerate(raw):
            filtered = row.copy()
            if i % 2:                                   # sub: minus the byte one pixel to the left
                filtered[bpp:] = row[bpp:] - row[:-bpp]
                scan += b"\x01" + filtered.tobytes()
            elif i:                                     # up: minus the byte above
                scan += b"\x02" + (row - raw[i - 1]).tobytes()
            else:
                scan += b"\x00" + row.tobytes()
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 1))
            + png_chunk(b"IDAT", zlib.compress(scan)) + png_chunk(b"IEND", b""))


def uncompressed_tiff16(samples: np.ndarray, order: str) -> bytes:
    """An uncompressed 16-bit RGB(A) TIFF in byte order ``order`` ("<" or ">"), one strip, no predictor."""
    h, w, spp = samples.shape
    data = samples.astype(f"{order}u2").tobytes()
    bits_at = 8 + len(data)
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, spp, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, spp), (278, 4, 1, h), (279, 4, 1, len(data))]
    if spp == 4:
        entries.append((338, 3, 1, 2))
    ifd_at = bits_at + 2 * spp
    head = (b"II" if order == "<" else b"MM") + struct.pack(f"{order}HI", 42, ifd_at)
    ifd = struct.pack(f"{order}H", len(entries))
    for tag, kind, count, value in entries:
        short = kind == 3 and count == 1
        packed = struct.pack(f"{order}H", value) + b"\0\0" if short else struct.pack(f"{order}I", value)
        ifd += struct.pack(f"{order}HHI", tag, kind, count) + packed
    return head + data + struct.pack(f"{order}{spp}H", *[16] * spp) + ifd + b"\0\0\0\0"


# --- round trips -----------------------------------------------------------------------------------

def test_rgba_png_keeps_alpha_exactly(tmp_path: Path) -> None:
    rgba = rand((23, 31, 4))
    PILImage.fromarray(rgba).save(tmp_path / "in.png")
    img = read_image(tmp_path / "in.png")
    assert img.pixels.shape == (23, 31, 3) and img.alpha is not None and img.bit_depth == 8
    assert np.array_equal(img.pixels, rgba[..., :3]) and np.array_equal(img.alpha, rgba[..., 3])
    write_image(img, tmp_path / "out.png")
    back = read_image(tmp_path / "out.png")
    assert np.array_equal(back.pixels, rgba[..., :3]) and np.array_equal(back.alpha, rgba[..., 3])


def test_16bit_gray_png_stays_16bit(tmp_path: Path) -> None:
    gray = rand((19, 27), np.uint16)
    gray[0, :4] = [256, 257, 1, 65535]                  # values whose low byte matters
    PILImage.fromarray(gray).save(tmp_path / "in.png")  # Pillow's own 16-bit writer
    img = read_image(tmp_path / "in.png")
    assert img.pixels.dtype == np.uint16 and img.pixels.shape == (19, 27, 1) and img.bit_depth == 16
    assert np.array_equal(img.pixels[..., 0], gray)
    write_image(img, tmp_path / "out.png")
    back = read_image(tmp_path / "out.png")
    assert back.pixels.dtype == np.uint16 and np.array_equal(back.pixels[..., 0], gray)


@pytest.mark.parametrize("channels,with_alpha", [(3, False), (3, True), (1, True)])
def test_16bit_colour_png_round_trip_is_exact(tmp_path: Path, channels: int, with_alpha: bool) -> None:
    pixels = rand((21, 34, channels), np.uint16)
    pixels[0, 0] = 1                                    # would vanish at 8 bits
    alpha = rand((21, 34), np.uint16) if with_alpha else None
    write_image(Image(pixels, alpha, icc_profile=SRGB_ICC), tmp_path / "out.png")
    back = read_image(tmp_path / "out.png")
    assert back.pixels.dtype == np.uint16 and back.bit_depth == 16
    assert np.array_equal(back.pixels, pixels)
    assert (back.alpha is None) == (alpha is None)
    if alpha is not None:
        assert np.array_equal(back.alpha, alpha)
    assert back.icc_profile == SRGB_ICC


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_blocks_compressed_in_parallel_form_one_valid_stream(tmp_path: Path, monkeypatch, dtype) -> None:
    """Our PNG writer filters and deflates blocks of rows on several threads; the pieces must join
    into one zlib stream whose Adler-32 checks out, and decode to the same pixels."""
    import upscale.io.png

    monkeypatch.setattr(upscale.io.png, "PNG_BLOCK_BYTES", 1000)      # 2-5 rows per block: ~25 blocks
    pixels = rand((97, 61, 3), dtype)
    write_image(Image(pixels, None), tmp_path / "out.png", threads=3)
    data = (tmp_path / "out.png").read_bytes()
    idat, at = b"", 8
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        if kind == b"IDAT":
            idat += data[at + 8:at + 8 + length]
        at += 12 + length
    row_bytes = 1 + 61 * 3 * np.dtype(dtype).itemsize
    assert len(zlib.decompress(idat)) == 97 * row_bytes      # zlib checks the Adler-32 trailer
    back = read_image(tmp_path / "out.png")
    assert back.pixels.dtype == dtype and np.array_equal(back.pixels, pixels)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_from_another_encoder(tmp_path: Path, channels: int) -> None:
    samples = rand((13, 17, channels), np.uint16)
    (tmp_path / "in.png").write_bytes(interlaced_png16(samples))
    img = read_image(tmp_path / "in.png")
    colour = 1 if channels <= 2 else 3
    assert img.pixels.dtype == np.uint16 and np.array_equal(img.pixels, samples[..., :colour])
    if channels in (2, 4):
        assert np.array_equal(img.alpha, samples[..., -1])
    else:
        assert img.alpha is None


@pytest.mark.parametrize("channels,with_alpha", [(1, False), (3, False), (3, True)])
def test_16bit_tiff_round_trip_is_exact(tmp_path: Path, channels: int, with_alpha: bool) -> None:
    pixels = rand((40, 29, channels), np.uint16)
    alpha = rand((40, 29), np.uint16) if with_alpha else None
    write_image(Image(pixels, alpha, icc_profile=SRGB_ICC), tmp_path / "out.tif")
    back = read_image(tmp_path / "out.tif")
    assert back.source_format == "TIFF" and back.pixels.dtype == np.uint16
    assert np.array_equal(back.pixels, pixels)
    if alpha is not None:
        assert np.array_equal(back.alpha, alpha)
    assert back.icc_profile == SRGB_ICC


@pytest.mark.parametrize("order,channels", [("<", 3), (">", 3), (">", 4)])
def test_uncompressed_16bit_tiff_from_another_encoder(tmp_path: Path, order: str, channels: int) -> None:
    samples = rand((7, 10, channels), np.uint16)
    (tmp_path / "in.tif").write_bytes(uncompressed_tiff16(samples, order))
    img = read_image(tmp_path / "in.tif")
    assert img.pixels.dtype == np.uint16 and np.array_equal(img.pixels, samples[..., :3])
    if channels == 4:
        assert np.array_equal(img.alpha, samples[..., 3])


def test_16bit_colour_key_becomes_16bit_alpha(tmp_path: Path) -> None:
    samples = rand((5, 6, 3), np.uint16)
    samples[1, 2] = (300, 40000, 7)
    data = interlaced_png16(samples)
    at = data.index(b"IDAT") - 4
    data = data[:at] + png_chunk(b"tRNS", struct.pack(">HHH", 300, 40000, 7)) + data[at:]
    (tmp_path / "key.png").write_bytes(data)
    img = read_image(tmp_path / "key.png")
    expected = np.where((samples == (300, 40000, 7)).all(axis=2), 0, 65535)
    assert np.array_equal(img.pixels, samples) and np.array_equal(img.alpha, expected)


def test_16bit_gray_tiff_written_by_pillow_reads_16bit(tmp_path: Path) -> None:
    gray = rand((9, 11), np.uint16)
    PILImage.fromarray(gray).save(tmp_path / "in.tiff")
    img = read_image(tmp_path / "in.tiff")
    assert img.pixels.dtype == np.uint16 and np.array_equal(img.pixels[..., 0], gray)


def test_8bit_file_with_small_values_stays_8bit(tmp_path: Path) -> None:
    """Bit depth follows the file's mode: a dark 16-bit file stays 16-bit, a bright 8-bit one stays 8."""
    PILImage.fromarray(np.full((4, 4), 3, np.uint16)).save(tmp_path / "dark16.png")
    PILImage.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / "bright8.png")
    assert read_image(tmp_path / "dark16.png").bit_depth == 16
    assert read_image(tmp_path / "bright8.png").bit_depth == 8


@pytest.mark.parametrize("ext", ["png", "tif", "bmp", "jpg"])
def test_grayscale_stays_grayscale(tmp_path: Path, ext: str) -> None:
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    PILImage.fromarray(gray).save(tmp_path / "in.png")
    img = read_image(tmp_path / "in.png")
    assert img.pixels.shape == (16, 32, 1) and img.source_mode == "L"
    write_image(img, tmp_path / f"out.{ext}")
    back = read_image(tmp_path / f"out.{ext}")
    assert back.pixels.shape == (16, 32, 1)
    tolerance = 3 if ext == "jpg" else 0
    assert np.abs(back.pixels[..., 0].astype(int) - gray).max() <= tolerance


def test_gray_with_alpha_png(tmp_path: Path) -> None:
    la = rand((6, 7, 2))
    PILImage.fromarray(la).save(tmp_path / "in.png")
    img = read_image(tmp_path / "in.png")
    assert img.pixels.shape == (6, 7, 1) and np.array_equal(img.alpha, la[..., 1])
    write_image(img, tmp_path / "out.png")
    back = read_image(tmp_path / "out.png")
    assert np.array_equal(back.pixels[..., 0], la[..., 0]) and np.array_equal(back.alpha, la[..., 1])


# --- EXIF and ICC ----------------------------------------------------------------------------------

def exif_bytes(orientation: int) -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "UpscaleTestCam"   # Make: must survive untouched
    return exif.tobytes()


def test_jpeg_with_orientation_6_reads_upright_and_is_written_with_orientation_1(tmp_path: Path) -> None:
    # Stored as 64 wide x 40 tall, red block in the stored top-left corner. Orientation 6 means "rotate
    # 90 degrees clockwise to display", so upright it is 40 wide x 64 tall with the block top-right.
    stored = np.full((40, 64, 3), 255, np.uint8)
    stored[:16, :16] = (255, 0, 0)
    PILImage.fromarray(stored).save(tmp_path / "in.jpg", exif=exif_bytes(6), quality=95)
    img = read_image(tmp_path / "in.jpg")
    assert img.pixels.shape == (64, 40, 3)
    red = np.array([255, 0, 0])
    assert np.abs(img.pixels[4:12, -12:-4].astype(int) - red).max() < 40     # top right: the block
    assert np.abs(img.pixels[4:12, 4:12].astype(int) - 255).max() < 40       # top left: white
    assert np.abs(img.pixels[-12:-4, -12:-4].astype(int) - 255).max() < 40   # bottom right: white
    written = PILImage.Exif()
    written.load(img.exif)
    assert written[0x0112] == 1 and written[0x010F] == "UpscaleTestCam"
    # the header-only size (batch planning, compiled tile shapes) agrees with what read_image returns
    assert image_size(tmp_path / "in.jpg") == (40, 64)

    write_image(img, tmp_path / "out.jpg")
    with PILImage.open(tmp_path / "out.jpg") as out:
        exif = out.getexif()
        assert out.size == (40, 64)
        assert exif.get(0x0112, 1) == 1 and exif[0x010F] == "UpscaleTestCam"
    assert read_image(tmp_path / "out.jpg").pixels.shape == (64, 40, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillows_exif_transpose(tmp_path: Path, orientation: int) -> None:
    rgba = rand((5, 9, 4))
    PILImage.fromarray(rgba).save(tmp_path / "in.png", exif=exif_bytes(orientation))
    with PILImage.open(tmp_path / "in.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    img = read_image(tmp_path / "in.png")
    assert np.array_equal(img.pixels, expected[..., :3]) and np.array_equal(img.alpha, expected[..., 3])
    write_image(img, tmp_path / "out.png")
    with PILImage.open(tmp_path / "out.png") as out:
        assert out.getexif()[0x0112] == 1 and out.getexif()[0x010F] == "UpscaleTestCam"


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "tif"])
def test_icc_profile_survives(tmp_path: Path, ext: str) -> None:
    PILImage.fromarray(rand((12, 10, 3))).save(tmp_path / f"in.{ext}", icc_profile=SRGB_ICC)
    img = read_image(tmp_path / f"in.{ext}")
    assert img.icc_profile == SRGB_ICC
    write_image(img, tmp_path / f"out.{ext}")
    assert read_image(tmp_path / f"out.{ext}").icc_profile == SRGB_ICC


@pytest.mark.parametrize("ext", ["png", "webp"])
def test_exif_survives_png_and_webp(tmp_path: Path, ext: str) -> None:
    PILImage.fromarray(rand((8, 8, 3))).save(tmp_path / "in.jpg", exif=exif_bytes(1))
    write_image(read_image(tmp_path / "in.jpg"), tmp_path / f"out.{ext}")
    with PILImage.open(tmp_path / f"out.{ext}") as out:
        assert out.getexif()[0x010F] == "UpscaleTestCam"


XMP = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
       b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmp:Rating="4" '
       b'tiff:Orientation="6"><tiff:Orientation>6</tiff:Orientation></rdf:Description></rdf:RDF></x:xmpmeta>'
       b'<?xpacket end="w"?>')


@pytest.mark.parametrize("ext", sorted(e.lstrip(".") for e in SUPPORTED_EXTENSIONS if e not in (".jpeg", ".tiff")))
def test_xmp_survives_with_its_orientation_reset(tmp_path: Path, ext: str) -> None:
    # a photo rotated by EXIF whose XMP says the same: the pixels come upright, both say 1 afterwards
    src = tmp_path / "in.jpg"
    PILImage.fromarray(rand((6, 10, 3))).save(src, exif=exif_bytes(6), xmp=XMP)
    img = read_image(src)
    assert img.pixels.shape == (10, 6, 3)
    assert img.xmp == XMP.replace(b'tiff:Orientation="6"', b'tiff:Orientation="1"').replace(
        b"<tiff:Orientation>6<", b"<tiff:Orientation>1<")
    write_image(img, tmp_path / f"out.{ext}")
    back = read_image(tmp_path / f"out.{ext}").xmp
    assert back == (None if ext == "bmp" else img.xmp)


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "bmp", "webp"])
def test_dpi_is_kept_and_turns_with_the_pixels(tmp_path: Path, ext: str) -> None:
    # 300 x 150 dpi, stored turned a quarter (EXIF 6): upright, the axes' resolutions swap too
    PILImage.fromarray(rand((6, 10, 3))).save(tmp_path / "scan.jpg", dpi=(300, 150), exif=exif_bytes(6))
    img = read_image(tmp_path / "scan.jpg")
    assert img.pixels.shape == (10, 6, 3) and img.dpi == (150.0, 300.0)
    write_image(img, tmp_path / f"out.{ext}")
    back = read_image(tmp_path / f"out.{ext}").dpi
    if ext == "webp":                                  # Pillow's WebP holds no resolution
        assert back is None
    else:
        assert back == pytest.approx((150.0, 300.0), abs=0.0254)    # PNG/BMP count whole pixels per metre


@pytest.mark.parametrize("written, upright", [
    (b'tiff:Orientation="6"', b'tiff:Orientation="1"'), (b"tiff:Orientation = '8'", b"tiff:Orientation = '1'"),
    (b"<tiff:Orientation>6</tiff:Orientation>", b"<tiff:Orientation>1</tiff:Orientation>"),
    (b'<tiff:Orientation rdf:datatype="x"> 3 </tiff:Orientation>',
     b'<tiff:Orientation rdf:datatype="x"> 1 </tiff:Orientation>'),
    (b"<tiff:OrientationNote>6</tiff:OrientationNote>", b"<tiff:OrientationNote>6</tiff:OrientationNote>"),
    (b'xmp:Rating="6"', b'xmp:Rating="6"')])
def test_xmp_orientation_is_reset_in_each_spelling_and_nothing_else(written: bytes, upright: bytes) -> None:
    from types import SimpleNamespace

    from upscale.io.xmp import xmp_of

    packet = b"<x:xmpmeta><rdf:Description " + written + b"/></x:xmpmeta>"
    assert xmp_of(SimpleNamespace(info={"xmp": packet})) == (packet.replace(written, upright), None)
    assert xmp_of(SimpleNamespace(info={"xmp": packet.decode()}))[0] == packet.replace(written, upright)


def test_a_file_without_a_resolution_gives_the_formats_default(tmp_path: Path) -> None:
    PILImage.fromarray(rand((6, 10, 3))).save(tmp_path / "in.png")              # no pHYs
    img = read_image(tmp_path / "in.png")
    assert img.dpi is None
    for ext, expected in (("png", None), ("jpg", None), ("tif", (72.0, 72.0)), ("bmp", (72.0, 72.0))):
        write_image(img, tmp_path / f"out.{ext}")
        back = read_image(tmp_path / f"out.{ext}").dpi                           # baseline TIFF requires one;
        assert back == (expected if expected is None else pytest.approx(expected, abs=0.0254)), ext  # BMP has one


def test_xmp_that_is_not_utf8_is_dropped_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    PILImage.fromarray(rand((6, 10, 3))).save(tmp_path / "in.jpg", xmp=XMP.replace(b"Rating", b"R\xffting"))
    with caplog.at_level(logging.WARNING):
        img = read_image(tmp_path / "in.jpg")
    assert img.xmp is None and caplog.text.count("XMP packet dropped (not UTF-8)") == 1 and "in.jpg" in caplog.text
    write_image(img, tmp_path / "out.png")
    assert read_image(tmp_path / "out.png").xmp is None


def test_xmp_too_large_for_jpeg_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from upscale.io.xmp import JPEG_MAX_XMP

    upright = XMP.replace(b'Orientation="6"', b'Orientation="1"').replace(b"Orientation>6<", b"Orientation>1<")
    big = upright.replace(b'xmp:Rating="4"', b'xmp:Rating="4" xmp:Label="' + b"x" * JPEG_MAX_XMP + b'"')
    image = Image(rand((8, 8, 3)), None, xmp=big)
    with caplog.at_level(logging.WARNING):
        write_image(image, tmp_path / "out.jpg")
    assert "XMP packet" in caplog.text and read_image(tmp_path / "out.jpg").xmp is None
    write_image(image, tmp_path / "out.png")                  # PNG has no such limit
    assert read_image(tmp_path / "out.png").xmp == big


# --- conversions -----------------------------------------------------------------------------------

def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    index = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = PILImage.frombytes("P", (3, 2), index.tobytes())
    im.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0])
    im.save(tmp_path / "p.png", transparency=1)
    img = read_image(tmp_path / "p.png")
    assert img.source_mode == "P" and img.pixels.shape == (2, 3, 3)
    assert np.array_equal(img.alpha, np.where(index == 1, 0, 255).astype(np.uint8))
    assert tuple(img.pixels[0, 0]) == (10, 20, 30) and tuple(img.pixels[0, 2]) == (0, 255, 0)


def test_palette_without_transparency_becomes_rgb(tmp_path: Path) -> None:
    PILImage.fromarray(rand((9, 9, 3))).quantize(8).save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.pixels.shape == (9, 9, 3) and img.alpha is None


def test_colour_key_transparency_becomes_alpha(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    PILImage.fromarray(rgb).save(tmp_path / "k.png", transparency=(1, 2, 3))
    img = read_image(tmp_path / "k.png")
    assert np.array_equal(img.alpha, np.array([[0, 255], [255, 255]], np.uint8))


def test_cmyk_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    PILImage.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # red ink
    img = read_image(tmp_path / "cmyk.jpg")
    assert img.source_mode == "CMYK" and img.pixels.shape == (8, 16, 3) and img.alpha is None
    assert np.abs(img.pixels.astype(int) - [255, 0, 0]).max() < 10
    assert img.icc_profile is None
    write_image(img, tmp_path / "out.png")
    assert read_image(tmp_path / "out.png").pixels.shape == (8, 16, 3)


def test_bilevel_reads_as_gray(tmp_path: Path) -> None:
    PILImage.fromarray(rand((8, 8)) > 127).save(tmp_path / "b.png")
    img = read_image(tmp_path / "b.png")
    assert img.pixels.shape == (8, 8, 1) and set(np.unique(img.pixels)) <= {0, 255}


def test_16bit_written_to_8bit_formats_is_rounded(tmp_path: Path) -> None:
    pixels = np.array([[[0, 128, 129], [32767, 32768, 65535]]], np.uint16)
    write_image(Image(pixels, None), tmp_path / "out.bmp")
    back = read_image(tmp_path / "out.bmp")
    assert back.pixels.dtype == np.uint8
    assert np.array_equal(back.pixels, np.rint(pixels.astype(np.float64) * 255 / 65535).astype(np.uint8))


def test_alpha_dropped_for_jpeg_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        write_image(Image(rand((8, 8, 3)), rand((8, 8))), tmp_path / "out.jpg")
    assert "alpha" in caplog.text or "transparency" in caplog.text
    assert read_image(tmp_path / "out.jpg").alpha is None


def test_webp_keeps_alpha_and_quality_is_used(tmp_path: Path) -> None:
    pixels, alpha = rand((32, 32, 3)), np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    write_image(Image(pixels, alpha), tmp_path / "hi.webp", quality=100)
    write_image(Image(pixels, alpha), tmp_path / "lo.webp", quality=5)
    back = read_image(tmp_path / "hi.webp")
    assert back.alpha is not None and np.abs(back.alpha.astype(int) - alpha).max() <= 2
    assert (tmp_path / "lo.webp").stat().st_size < (tmp_path / "hi.webp").stat().st_size


@pytest.mark.skipif(".avif" not in SUPPORTED_EXTENSIONS, reason="this Pillow has no AVIF codec")
def test_avif_keeps_alpha_icc_exif_full_chroma_and_quality_is_used(tmp_path: Path) -> None:
    # a red/blue checkerboard of 1-px squares: 4:2:0 chroma would average it to purple
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[..., 0] = 255 * ((np.add.outer(np.arange(32), np.arange(32)) % 2) == 0)
    pixels[..., 2] = 255 - pixels[..., 0]
    alpha = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    PILImage.fromarray(rand((8, 8, 3))).save(tmp_path / "cam.jpg", exif=exif_bytes(1))
    exif = read_image(tmp_path / "cam.jpg").exif
    write_image(Image(pixels, alpha, SRGB_ICC, exif), tmp_path / "hi.avif")
    write_image(Image(pixels, alpha), tmp_path / "lo.avif", quality=5)
    back = read_image(tmp_path / "hi.avif")
    assert back.source_format == "AVIF" and back.icc_profile == SRGB_ICC
    assert np.abs(back.alpha.astype(int) - alpha).max() <= 8
    assert np.abs(back.pixels.astype(int) - pixels).mean() < 24      # 4:2:0: ~89 off
    with PILImage.open(tmp_path / "hi.avif") as out:
        assert out.getexif()[0x010F] == "UpscaleTestCam"
    assert (tmp_path / "lo.avif").stat().st_size < (tmp_path / "hi.avif").stat().st_size


def test_exif_too_large_for_jpeg_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exif = PILImage.Exif()
    exif[0x010E] = "x" * 70_000  # ImageDescription: more than one JPEG APP1 segment holds
    PILImage.fromarray(rand((8, 8, 3))).save(tmp_path / "in.png", exif=exif.tobytes())
    with caplog.at_level(logging.WARNING):
        write_image(read_image(tmp_path / "in.png"), tmp_path / "out.jpg")
    assert "EXIF" in caplog.text and read_image(tmp_path / "out.jpg").exif is None


def test_format_names_the_format_of_a_path_without_an_image_extension(tmp_path: Path) -> None:
    write_image(Image(rand((8, 8, 3)), None), tmp_path / "out.data", format="jpg")
    with PILImage.open(tmp_path / "out.data") as im:
        assert im.format == "JPEG"
    write_image(Image(rand((8, 8, 3)), None), tmp_path / "same.jpeg", format="jpg")   # one format, two spellings
    write_image(Image(rand((8, 8, 3)), None), tmp_path / "same.TIF", format="tiff")
    assert read_image(tmp_path / "same.jpeg").source_format == "JPEG"
    assert read_image(tmp_path / "same.TIF").source_format == "TIFF"


def test_format_that_contradicts_the_extension_is_refused(tmp_path: Path) -> None:
    """Issue 16 #7: ``-o y.png --format jpg`` wrote JPEG bytes into a .png."""
    target = tmp_path / "y.png"
    with pytest.raises(errors.UsageError, match="output_format 'jpg' contradicts") as exc:
        write_image(Image(rand((8, 8, 3)), None), target, format="jpg")
    assert str(target) in str(exc.value) and exc.value.params == ("output_format",)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_float_mode_is_refused(tmp_path: Path) -> None:
    PILImage.fromarray(RNG.random((4, 4), dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(errors.ImageReadError, match="unsupported mode F") as exc:
        read_image(tmp_path / "f.tif")
    assert str(tmp_path / "f.tif") in str(exc.value)


# --- bad input -------------------------------------------------------------------------------------

def _truncated(tmp_path: Path, ext: str) -> Path:
    path = tmp_path / f"cut.{ext}"
    PILImage.fromarray(rand((64, 64, 3))).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case,reason", [
    ("missing", "not found"),
    ("folder", "folder"),
    ("empty", "empty"),
    ("text", "cannot identify"),
    ("png", "truncated"),
    ("jpg", "truncated"),
])
def test_bad_input_raises_read_error_naming_the_file(tmp_path: Path, case: str, reason: str) -> None:
    if case == "missing":
        path = tmp_path / "nope.png"
    elif case == "folder":
        path = tmp_path / "dir.png"
        path.mkdir()
    elif case == "empty":
        path = tmp_path / "empty.jpg"
        path.touch()
    elif case == "text":
        path = tmp_path / "notes.jpg"
        path.write_text("this is not a picture\n")
    else:
        path = _truncated(tmp_path, case)
    with pytest.raises(errors.ImageReadError, match=reason) as exc:
        read_image(path)
    message = str(exc.value)
    assert str(path) in message and "\n" not in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # A 20000 x 20000 declared size (400 Mpx, over Pillow's default limit) in a few hundred bytes.
    rows = zlib.compress(b"\x00" * 20001 * 16)
    path = tmp_path / "bomb.png"
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b""))
    with pytest.raises(errors.ImageReadError, match="raise max_pixels") as exc:
        read_image(path)
    assert "400,000,000" in str(exc.value) and str(path) in str(exc.value)
    assert exc.value.params == ("max_pixels",)      # the CLI words it as --max-pixels


def test_max_pixels_raises_and_lowers_the_limit_for_one_call_only(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "img.png"
    PILImage.fromarray(rand((64, 64, 3))).save(path)  # 4096 pixels
    with pytest.raises(errors.ImageReadError, match="limit of 1,000"):
        read_image(path, max_pixels=1000)
    assert read_image(path).pixels.shape == (64, 64, 3)           # the default limit is back

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)       # over 2x: Pillow itself would refuse
    with pytest.raises(errors.ImageReadError, match="limit of 1,000"):
        read_image(path)
    assert read_image(path, max_pixels=5000).pixels.shape == (64, 64, 3)
    assert PILImage.MAX_IMAGE_PIXELS == 1000


def test_limits_of_concurrent_reads_do_not_mix(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    PILImage.fromarray(rand((64, 64, 3))).save(path)  # 4096 pixels
    default = PILImage.MAX_IMAGE_PIXELS

    def attempt(i: int) -> bool:
        try:
            read_image(path, max_pixels=1000 if i % 2 else None)
        except errors.ImageReadError:
            return False
        return True

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(attempt, range(40)))
    assert outcomes == [i % 2 == 0 for i in range(40)]
    assert PILImage.MAX_IMAGE_PIXELS == default


# --- writing: failures and atomicity ---------------------------------------------------------------

def test_write_to_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "out.png"
    with pytest.raises(errors.ImageWriteError, match="does not exist") as exc:
        write_image(Image(rand((4, 4, 3)), None), target)
    assert str(target) in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_write_below_a_file_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(errors.ImageWriteError, match="not a folder"):
        write_image(Image(rand((4, 4, 3)), None), tmp_path / "plain.txt" / "out.png")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_write_to_unwritable_folder_fails_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(errors.ImageWriteError, match="ermission"):
            write_image(Image(rand((4, 4, 3)), None), folder / "out.png")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_encoder_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "wide.webp"
    with pytest.raises(errors.ImageWriteError, match="WEBP") as exc:  # WebP is limited to 16383 px
        write_image(Image(np.zeros((1, 16384, 3), np.uint8), None), target)
    assert str(target) in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.ImageWriteError, match="unknown output"):
        write_image(Image(rand((4, 4, 3)), None), tmp_path / "out.xyz")
    with pytest.raises(errors.ImageWriteError, match="unknown output"):
        write_image(Image(rand((4, 4, 3)), None), tmp_path / "out.png", format="gif")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", sorted(SUPPORTED_EXTENSIONS))
def test_atomic_write_leaves_only_the_output(tmp_path: Path, ext: str) -> None:
    target = tmp_path / f"out{ext}"
    target.write_bytes(b"old content")
    write_image(Image(rand((8, 8, 3), np.uint16), rand((8, 8), np.uint16)), target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert read_image(target).pixels.shape == (8, 8, 3)
    assert output_format_for(target) in ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "AVIF")


def test_temp_names_are_recognisable(tmp_path: Path) -> None:
    with atomic_file(tmp_path / "a.png") as f:       # the helper write_image writes through
        f.write(b"partial")
        (temp,) = tmp_path.iterdir()
        assert temp.name.startswith(".a.png") and atomic.is_temp_name(temp.name)
        assert temp.suffix.lower() not in SUPPORTED_EXTENSIONS   # never mistaken for an input
    assert not atomic.is_temp_name("a.png") and not atomic.is_temp_name(".a.png")
    write_image(Image(rand((4, 4, 3)), None), tmp_path / "a.png")
    assert leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["a.png"]


# --- value helpers ---------------------------------------------------------------------------------

def test_to_uint8_is_the_rounded_ratio() -> None:
    every = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(to_uint8(every), np.rint(every.astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert np.array_equal(to_uint8(every), np.floor(every / 257.0 + 0.5).astype(np.uint8))  # bench/train's
    eight = rand((3, 4, 1))
    assert to_uint8(eight) is eight
    with pytest.raises(TypeError):
        to_uint8(np.zeros(3, np.float32))


def test_output_format_for() -> None:
    assert output_format_for("a.JPEG") == "JPEG" and output_format_for("a.tif") == "TIFF"
    assert output_format_for("a.jpg", "jpeg") == "JPEG" and output_format_for("a", ".bmp") == "BMP"
    assert output_format_for("a.raw", "webp") == "WEBP"
    with pytest.raises(errors.ImageWriteError):
        output_format_for("a.gif")
    with pytest.raises(errors.UsageError):
        output_format_for("a.png", "webp")


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("width", [1, 5, 8, 37])      # odd widths exercise BMP's 4-byte row padding
def test_bmp_and_png_writers_round_trip_exactly(tmp_path, channels, width):
    """Our streaming BMP/PNG encoders (used so a huge output is never copied into Pillow) write what
    Pillow reads back bit for bit."""
    pixels = np.random.default_rng(width).integers(0, 256, (23, width, channels), dtype=np.uint8)
    for ext in ("bmp", "png"):
        path = tmp_path / f"out.{ext}"
        write_image(Image(pixels, None), path)
        with PILImage.open(path) as im:
            assert im.mode == ("RGB" if channels == 3 else "L")
            back = np.asarray(im)
        np.testing.assert_array_equal(back.reshape(pixels.shape), pixels)


# --- issue 16: defects found by the hostile-input probe -------------------------------------------

def _frames(n: int, size: tuple[int, int] = (6, 5)) -> list[PILImage.Image]:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    return [PILImage.new("RGB", size, colours[i % 4]) for i in range(n)]


def _frame_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]


@pytest.mark.parametrize("name,count", [("anim.gif", 3), ("anim.png", 2), ("anim.webp", 4), ("pages.tif", 3)])
def test_extra_frames_are_counted_and_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    name: str, count: int) -> None:
    """Issue 16 #7: animated GIF/WebP/APNG and multi-page TIFF lost every frame after the first
    without a word. The first frame is still what is read; one line says what was left out."""
    first, *rest = _frames(count)
    extra = {"lossless": True} if name.endswith(".webp") else {}
    first.save(tmp_path / name, save_all=True, append_images=rest, **extra)
    with caplog.at_level(logging.WARNING):
        img = read_image(tmp_path / name)
    assert img.frames == count and img.pixels.shape == (5, 6, 3)
    assert np.abs(img.pixels.astype(int) - [255, 0, 0]).max() <= 2          # the first frame
    assert _frame_lines(caplog) == [f"{tmp_path / name}: {count} frames; only the first is read"]


def test_single_frame_files_say_nothing_about_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("one.gif", "one.png", "one.webp", "one.tif"):
        _frames(1)[0].save(tmp_path / name)
        with caplog.at_level(logging.WARNING):
            assert read_image(tmp_path / name).frames == 1
    assert _frame_lines(caplog) == []


def _corrupt_exif(orientation: int) -> bytes:
    """EXIF whose Make entry claims 5000 bytes past the end of the block (Pillow warns and skips it)."""
    block = bytearray(exif_bytes(orientation))
    order = {b"II": "<", b"MM": ">"}[bytes(block[6:8])]
    ifd = 6 + struct.unpack_from(order + "I", block, 10)[0]
    for i in range(struct.unpack_from(order + "H", block, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from(order + "H", block, entry)[0] == 0x010F:
            struct.pack_into(order + "I", block, entry + 4, 5000)
    return bytes(block)


def test_corrupt_exif_is_one_logged_line_and_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     capfd: pytest.CaptureFixture) -> None:
    """Issue 16 #13: a corrupt EXIF block printed Pillow's raw two-line Python warning."""
    import warnings

    path = tmp_path / "bad_exif.jpg"
    PILImage.fromarray(np.full((4, 8, 3), 200, np.uint8)).save(path, exif=_corrupt_exif(6), quality=95)
    with warnings.catch_warnings(record=True) as raw, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        img = read_image(path)
    assert raw == [] and capfd.readouterr().err == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"{path}: corrupt EXIF dropped (") and "\n" not in lines[0]
    assert img.exif is None and img.pixels.shape == (8, 4, 3)     # pixels read; orientation 6 still applied
    assert image_size(path) == (4, 8)


_LOW_MEMORY_READ = """
import re, resource, sys
from upscale import errors
from upscale.io import read_image
vm = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (60 << 20), resource.RLIM_INFINITY))
try:
    read_image(sys.argv[1])
except errors.ImageReadError as err:
    print(err)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux (RLIMIT_AS, /proc)")
def test_out_of_memory_while_decoding_is_a_read_error(tmp_path: Path) -> None:
    """Issue 16 #9: a MemoryError while decoding an image under the pixel limit was an internal error.
    A 6000 x 6000 black PNG (100 kB; 144 MB decoded) is read by a process allowed 60 MB more."""
    import subprocess
    import sys

    w = h = 6000
    packer = zlib.compressobj(1)
    row = b"\x00" * (1 + 3 * w)
    idat = b"".join(packer.compress(row) for _ in range(h)) + packer.flush()
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    done = subprocess.run([sys.executable, "-c", _LOW_MEMORY_READ, str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{path}: not enough memory to decode 6000 x 6000 pixels"


def test_output_below_a_file_names_the_file_not_a_missing_folder(tmp_path: Path) -> None:
    """Issue 16 #13: ``-o afile/x.png`` said the output folder does not exist."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target in (afile / "x.png", afile / "sub" / "x.png"):
        for attempt in (lambda: check_output(target), lambda: write_image(Image(rand((4, 4, 3)), None), target)):
            with pytest.raises(errors.ImageWriteError) as exc:
                attempt()
            assert str(exc.value) == f"{target}: {afile} is not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and afile.read_text() == "x"


def test_output_that_is_a_folder_says_so_without_force_advice(tmp_path: Path) -> None:
    """Issue 16 #13: ``-o existing_dir`` suggested --force, which cannot help."""
    folder = tmp_path / "out.png"
    folder.mkdir()
    with pytest.raises(errors.ImageWriteError, match="is a folder") as exc:
        write_image(Image(rand((4, 4, 3)), None), folder)
    assert "force" not in str(exc.value) and list(folder.iterdir()) == []


def test_planted_symlinks_at_old_temp_names_are_never_followed(tmp_path: Path) -> None:
    """Issue 16 #1: the temp name was predictable (``.NAME.upscale-tmp``) and opened through symlinks,
    so a planted link made the write land on the link's target (here the input image)."""
    victim = tmp_path / "a.png"
    PILImage.fromarray(rand((6, 6, 3))).save(victim)
    before = victim.read_bytes()
    links = [tmp_path / ".a_x4.png.upscale-tmp", tmp_path / ".a_x4.png.tmp", tmp_path / "a_x4.png.upscale-tmp"]
    for link in links:
        link.symlink_to(victim)
    result = rand((12, 12, 3))
    write_image(Image(result, None), tmp_path / "a_x4.png")
    assert victim.read_bytes() == before
    assert all(link.is_symlink() and link.resolve() == victim for link in links)
    out = tmp_path / "a_x4.png"
    assert not out.is_symlink() and np.array_equal(read_image(out).pixels, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.png", "a_x4.png", *(p.name for p in links)])


def test_library_errors_name_parameters_not_flags(tmp_path: Path) -> None:
    PILImage.fromarray(rand((4, 4, 3))).save(tmp_path / "a.png")
    with pytest.raises(errors.UsageError, match="^quality must be between 1 and 100") as exc:
        write_image(Image(rand((4, 4, 3)), None), tmp_path / "b.jpg", quality=0)
    assert exc.value.params == ("quality",)
    with pytest.raises(errors.UsageError, match="^max_pixels must be a positive") as exc:
        read_image(tmp_path / "a.png", max_pixels=0)
    assert exc.value.params == ("max_pixels",)
    with pytest.raises(errors.ImageReadError, match="raise max_pixels") as exc:
        read_image(tmp_path / "a.png", max_pixels=10)
    assert exc.value.params == ("max_pixels",)


def test_write_animation_checks_what_it_is_given(tmp_path: Path) -> None:
    from upscale.io import Animation, read_animation, write_animation

    frames = [Image(np.full((4, 5, 3), v, np.uint8), None) for v in (0, 255)]
    write_animation(Animation(frames), tmp_path / "plain.png")              # no durations: the default each
    back = read_animation(tmp_path / "plain.png")
    assert len(back.frames) == 2 and back.durations_ms == [100, 100]
    with pytest.raises(errors.UsageError, match="1 durations for 2 frames"):
        write_animation(Animation(frames, [40]), tmp_path / "odd.png")
    with pytest.raises(errors.UsageError, match="at least one frame"):
        write_animation(Animation([]), tmp_path / "none.webp")
    with pytest.raises(errors.ImageWriteError, match="TIFF holds no animation"):
        write_animation(Animation(frames), tmp_path / "x.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.png"]


# --- TIFF layouts and low-bit PNG transparency Pillow gets wrong or half right --------------------------

def plain_tiff(samples: np.ndarray, *, planar: int = 1, photometric: int | None = None,
               orientation: int | None = None, dpi: tuple[int, int] | None = None) -> bytes:
    """An uncompressed little-endian TIFF of (H, W[, C]) samples, written field by field (Pillow cannot
    write separate planes or 16-bit WhiteIsZero)."""
    h, w = samples.shape[:2]
    spp = samples.shape[2] if samples.ndim == 3 else 1
    planes = [samples[..., i] for i in range(spp)] if planar == 2 else [samples]
    strips = [np.ascontiguousarray(p).astype(samples.dtype.newbyteorder("<")).tobytes() for p in planes]
    offsets = [8 + sum(map(len, strips[:i])) for i in range(len(strips))]
    tags = {256: (4, [w]), 257: (4, [h]), 258: (3, [8 * samples.dtype.itemsize] * spp), 259: (3, [1]),
            262: (3, [photometric if photometric is not None else (2 if spp >= 3 else 1)]), 273: (4, offsets),
            277: (3, [spp]), 278: (4, [h]), 279: (4, [len(s) for s in strips]), 284: (3, [planar])}
    if orientation:
        tags[274] = (3, [orientation])
    if dpi:
        tags.update({282: (5, [dpi[0], 1]), 283: (5, [dpi[1], 1]), 296: (3, [2])})
    body = b"".join(strips)
    ifd_at = 8 + len(body) + len(body) % 2
    extra_at = ifd_at + 2 + 12 * len(tags) + 4
    entries, extra = b"", b""
    for tag, (kind, values) in sorted(tags.items()):
        payload = struct.pack("<" + {3: "H", 4: "I", 5: "I"}[kind] * len(values), *values)
        count = len(values) // 2 if kind == 5 else len(values)
        if len(payload) <= 4:
            entries += struct.pack("<HHI", tag, kind, count) + payload.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", tag, kind, count, extra_at + len(extra))
            extra += payload
    return (b"II*\0" + struct.pack("<I", ifd_at) + body + b"\0" * (len(body) % 2)
            + struct.pack("<H", len(tags)) + entries + b"\0\0\0\0" + extra)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_oriented_tiff_reads_upright_and_its_size_and_dpi_agree(tmp_path: Path, orientation: int) -> None:
    """Pillow turns a TIFF itself (and reports the turned size at open): image_size swapped it again
    (batch then redid finished outputs) and the dpi was not swapped."""
    stored = rand((6, 10, 3))
    (tmp_path / "o.tif").write_bytes(plain_tiff(stored, orientation=orientation, dpi=(300, 150)))
    img = read_image(tmp_path / "o.tif")
    with PILImage.open(tmp_path / "o.tif") as im:
        assert np.array_equal(img.pixels, np.asarray(ImageOps.exif_transpose(im)))
    h, w = img.pixels.shape[:2]
    assert image_size(tmp_path / "o.tif") == (w, h)
    assert img.dpi == ((150.0, 300.0) if orientation >= 5 else (300.0, 150.0))


def test_16bit_tiff_layouts_pillow_misreads_are_refused_or_corrected(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 65536, (6, 10, 3), dtype=np.uint16)
    (tmp_path / "planar.tif").write_bytes(plain_tiff(rgb, planar=2))
    with pytest.raises(errors.ImageReadError, match="separate planes"):
        read_image(tmp_path / "planar.tif")
    (tmp_path / "chunky.tif").write_bytes(plain_tiff(rgb))              # the same samples, contiguous: exact
    assert np.array_equal(read_image(tmp_path / "chunky.tif").pixels, rgb)
    gray = rgb[..., 0]
    (tmp_path / "white0.tif").write_bytes(plain_tiff(gray, photometric=0))   # WhiteIsZero
    assert np.array_equal(read_image(tmp_path / "white0.tif").pixels[..., 0], 65535 - gray)
    (tmp_path / "white8.tif").write_bytes(plain_tiff((gray >> 8).astype(np.uint8), photometric=0))
    assert np.array_equal(read_image(tmp_path / "white8.tif").pixels[..., 0], 255 - (gray >> 8))


@pytest.mark.parametrize("bits", [2, 4])
def test_low_bit_gray_png_keeps_its_transparent_key(tmp_path: Path, bits: int) -> None:
    rng = np.random.default_rng(bits)
    levels = rng.integers(0, 2**bits, (8, 8), dtype=np.uint8)
    per_byte = 8 // bits
    rows = b""
    for row in levels:
        packed = bytearray()
        for i in range(0, 8, per_byte):
            value = 0
            for v in row[i:i + per_byte]:
                value = value << bits | int(v)
            packed.append(value)
        rows += b"\0" + bytes(packed)
    key = 2**bits - 1
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, bits, 0, 0, 0, 0))
            + png_chunk(b"tRNS", struct.pack(">H", key)) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))
    (tmp_path / "g.png").write_bytes(data)
    img = read_image(tmp_path / "g.png")
    assert np.array_equal(img.pixels[..., 0], levels.astype(np.uint16) * 255 // key)
    assert np.array_equal(img.alpha, np.where(levels == key, 0, 255))


@pytest.mark.parametrize("out_ext", ["png", "webp"])
def test_an_animation_is_turned_upright_and_keeps_its_exif_and_xmp(tmp_path: Path, out_ext: str) -> None:
    from upscale.io import read_animation, write_animation

    stored = [rand((6, 10, 3)) for _ in range(3)]
    pictures = [PILImage.fromarray(a) for a in stored]
    pictures[0].save(tmp_path / "in.webp", save_all=True, append_images=pictures[1:], exif=exif_bytes(6),
                     xmp=XMP, duration=40, lossless=True)
    animation = read_animation(tmp_path / "in.webp")
    for frame, raw in zip(animation.frames, stored):
        assert np.array_equal(frame.pixels, np.rot90(raw, -1))          # orientation 6: a quarter turn
    write_animation(animation, tmp_path / f"out.{out_ext}")
    with PILImage.open(tmp_path / f"out.{out_ext}") as out:
        assert out.n_frames == 3 and out.size == (6, 10)
        assert out.getexif()[0x0112] == 1 and out.getexif()[0x010F] == "UpscaleTestCam"
        xmp = out.info["xmp"]
        assert b'xmp:Rating="4"' in (xmp if isinstance(xmp, bytes) else xmp.encode())


def test_an_encoder_runtime_error_is_a_write_error_naming_the_file(tmp_path: Path) -> None:
    """Pillow's AVIF encoder raises RuntimeError (it came out as an internal error without the file)."""
    from PIL import features

    if not features.check("avif"):
        pytest.skip("no AVIF codec in this Pillow")
    from upscale.io import image as io_image

    big = Image(np.zeros((1, 70000, 3), np.uint8), None)
    io_image.MAX_SIDE.pop("AVIF")
    try:
        with pytest.raises(errors.ImageWriteError) as err:       # past our size check: the encoder refuses
            write_image(big, tmp_path / "wide.avif")
    finally:
        io_image.MAX_SIDE["AVIF"] = 65536
    assert err.value.path == str(tmp_path / "wide.avif") and "cannot encode as AVIF" in err.value.message
    assert leftovers(tmp_path) == [] and not (tmp_path / "wide.avif").exists()
