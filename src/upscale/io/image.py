"""The ``Image`` record, the format tables and the one 16 -> 8 bit conversion of the project.

Nothing here touches a file: ``read`` fills an ``Image`` from one, ``write`` puts one back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import features

# Output formats: extension -> Pillow format name (AVIF where this Pillow has its codec). The suffix
# set is the list of image files the project writes.
FORMAT_BY_EXT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF",
                 "tiff": "TIFF", "bmp": "BMP"}
if features.check("avif"):
    FORMAT_BY_EXT["avif"] = "AVIF"
SUPPORTED_EXTENSIONS = frozenset(f".{ext}" for ext in FORMAT_BY_EXT)
# AVIF 90 (4:4:4) matched JPEG 95 (4:4:4) in PSNR on six Set14 images (40.6 dB each) at 64% of its size
DEFAULT_QUALITY = {"JPEG": 95, "WEBP": 95, "AVIF": 90}
# The largest side each format's encoder writes (measured with Pillow 13's: JPEG 65501 px fails, WebP
# 16384, AVIF 65537); the others (PNG, TIFF, BMP: our encoders) hold any output memory allows.
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383, "AVIF": 65536}
# What a writer holds while it works, beside the image it writes, as a multiple of that image's bytes
# (8-bit RGB), through ``write_image`` (benchmarks/encoder_memory.py; docs/perf.md "Encoders' working
# memory"): AVIF 11.4-11.8x at 12 and 48 MP, WebP 2.7-3.0x (Pillow 13.0's encoders, through memory).
# Our PNG and TIFF writers and JPEG/BMP stay within a bounded amount (blocks of rows), not a multiple.
# A codec's memory, not a CPU's speed: the same on every machine for one Pillow build; the memory
# checks count it before the model runs.
ENCODER_MEMORY = {"AVIF": 12.0, "WEBP": 3.7}
# Inputs Pillow reads that are not written back: their outputs are PNG by default (lossless, keeps
# alpha; a GIF's 256 colours or a JPEG 2000's codec would not carry an upscaled image well). JPEG's
# other spellings come out as .jpg.
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})     # read through the heif extra (``opening``)
READ_ONLY_EXTENSIONS = frozenset({".gif", ".avif", ".jp2", ".j2k", ".tga", ".ppm", ".pgm", ".pbm", ".pnm",
                                  ".qoi", ".pcx", ".jfif", ".jpe", *HEIF_EXTENSIONS}) - SUPPORTED_EXTENSIONS
INPUT_EXTENSIONS = SUPPORTED_EXTENSIONS | READ_ONLY_EXTENSIONS
_JPEG_SPELLINGS = frozenset({".jpeg", ".jfif", ".jpe"})
DEFAULT_DPI = (72.0, 72.0)    # what our TIFF and BMP writers say where the input gave no resolution


def dots_per_metre(dpi: tuple[float, float]) -> tuple[int, int]:
    """``dpi`` as the whole pixels per metre PNG's pHYs and BMP's header hold."""
    return round(dpi[0] / 0.0254), round(dpi[1] / 0.0254)


def output_extension(input_suffix: str, output_format: str | None = None) -> str:
    """The extension of the output made from an input named ``*input_suffix``: ``output_format``'s
    (an ``FORMAT_BY_EXT`` key) when given; else the input's own (its case kept) where it is written
    back, ``.jpg`` for JPEG's other spellings, and ``.png`` for the other read-only formats."""
    if output_format:
        ext = f".{output_format.lower()}"
        return ".jpg" if ext == ".jpeg" else ext
    lower = input_suffix.lower()
    if lower in _JPEG_SPELLINGS:
        return ".jpg"
    return input_suffix if lower in SUPPORTED_EXTENSIONS else ".png"


@dataclass(frozen=True, eq=False)
class Image:
    """Decoded pixels with what is needed to write them back faithfully."""

    pixels: np.ndarray            # (H, W, C), C in {1, 3}; uint8 or uint16 as the file's mode says
    alpha: np.ndarray | None      # (H, W), same dtype as pixels, or None
    icc_profile: bytes | None = None
    exif: bytes | None = None     # Orientation reset to 1 (the pixels are already upright)
    source_format: str = ""       # "PNG", "JPEG", ...
    source_mode: str = ""         # Pillow's mode of the file; "RGB;16"/"RGBA;16"/"LA;16" for 16-bit colour
    frames: int = 1               # frames/pages in the file; only the first is in ``pixels``
    xmp: bytes | None = None      # the XMP packet, tiff:Orientation reset to 1 (``xmp``)
    dpi: tuple[float, float] | None = None   # pixels per inch (x, y) as the file says, axes as the pixels stand
    text: tuple[tuple[str, str], ...] = ()   # (keyword, text): PNG text chunks, a JPEG comment (``text``)
    png_colour: tuple[tuple[bytes, bytes], ...] = ()   # a PNG's gAMA/cHRM/sRGB chunks (type, data)

    def __post_init__(self) -> None:
        p = self.pixels
        if p.ndim != 3 or p.shape[2] not in (1, 3) or p.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be (H, W, 1|3) uint8/uint16, got {p.shape} {p.dtype}")
        if self.alpha is not None and (self.alpha.shape != p.shape[:2] or self.alpha.dtype != p.dtype):
            raise ValueError(f"alpha must be {p.shape[:2]} {p.dtype}, got {self.alpha.shape} {self.alpha.dtype}")

    @property
    def bit_depth(self) -> int:
        """8 or 16 bits per sample."""
        return 16 if self.pixels.dtype == np.uint16 else 8


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """uint8 samples unchanged (the same array); uint16 rounded to the nearest 8-bit value.

    The formula is exact integer arithmetic: ``(v * 255 + 32767) // 65535``, i.e. ``v * 255 / 65535``
    rounded half down. For every uint16 ``v`` it equals ``floor(v / 257 + 0.5)`` (``v / 257`` never
    has a fractional part of exactly one half). Any shape; other dtypes raise ``TypeError``.
    """
    if samples.dtype == np.uint8:
        return samples
    if samples.dtype != np.uint16:
        raise TypeError(f"expected uint8 or uint16 samples, got {samples.dtype}")
    return ((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def one_line(err: BaseException) -> str:
    """An exception's text on one line (its type name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__
