"""Image files <-> the ``Image`` record (numpy pixels + alpha + colour metadata). Pillow only; no torch.

The package: ``image`` (the record, format tables, ``to_uint8``), ``opening`` (Pillow's open/load under
our limits, its warnings as log lines), ``decode`` (modes and bit depths), ``exif``, ``xmp``,
``text``, ``read``, ``write`` (format choice, checks, atomic write), ``ends`` (is a file whole), ``animation`` (every frame of a GIF,
WebP or APNG, and APNG/WebP out) and one module per own encoder: ``png``, ``tiff``, ``bmp``. Import
from ``upscale.io``; the modules are its inside.

Reading (``read_image``):

- The bit depth comes from the file's own mode, never from pixel values. 16-bit grayscale PNG/TIFF
  (Pillow modes ``I;16``/``I;16B``, or ``I`` decoded from unsigned 16-bit samples) become ``uint16``.
  Pillow opens 16-bit RGB(A) PNGs and TIFFs as 8-bit ``RGB``/``RGBA`` (it keeps only the high byte),
  so for those the file is decoded a second time with the opposite-endian unpacker, which yields the
  low byte; ``high << 8 | low`` restores the exact samples. 16-bit gray+alpha PNGs are decoded once
  as raw bytes. Every other file is 8-bit (``uint8``).
- Modes: ``1``/``L`` -> gray (C=1); ``LA``/``La`` -> gray + alpha; ``P``/``PA`` -> RGB, or RGB + alpha
  when the palette has transparency; ``RGB``/``RGBX``/``YCbCr``/``HSV`` -> RGB; ``RGBA``/``RGBa`` ->
  RGB + alpha; a ``tRNS`` colour key becomes an alpha channel; ``CMYK`` -> RGB through the file's ICC
  profile when it has one (the CMYK profile is then dropped), otherwise Pillow's conversion. 32-bit
  integer (``I`` from signed or 32-bit samples) and float (``F``) images are refused: there is no
  unambiguous mapping of their values to [0, 1]. 16-bit premultiplied-alpha TIFFs are refused too.
- The EXIF Orientation is applied to the pixels (ImageOps.exif_transpose semantics) and the EXIF block
  is kept byte for byte except that Orientation is set to 1. TIFF inputs carry no separate EXIF block
  (their tags describe the file itself), so their ``exif`` is None; their orientation is still applied.
  An EXIF block Pillow warns about (corrupt) is dropped with one logged line naming the file; the
  pixels are still read. The XMP packet (ratings, keywords, rights) is kept too, its
  ``tiff:Orientation`` set to 1 likewise; one that is not UTF-8 is dropped with one line (``xmp``).
  A PNG's text chunks (but XMP's and ImageMagick's raw profiles) and a JPEG's comment are kept as
  ``text``, a PNG's gAMA/cHRM/sRGB as ``png_colour`` (``text``); a WebP, AVIF or HEIC, which has no
  resolution field, takes its ``dpi`` from its EXIF.
- Only the first frame of an animated or multi-page file (GIF, APNG, WebP, TIFF) is read; ``frames``
  on the record says how many there are, and one warning line names the file and the count.
- Pillow's decompression-bomb limit stays on: an image with more pixels than ``max_pixels`` (default
  ``PIL.Image.MAX_IMAGE_PIXELS`` as set when the call starts) is refused before it is decoded. The
  limit of one call does not change any other call's. Running out of memory while decoding an image
  under the limit is an ``ImageReadError`` ("not enough memory to decode W x H pixels").
- Every failure is an ``ImageReadError`` naming the file; truncated data is never padded
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone, False by default) because the whole image is
  decoded with ``load()`` before it is returned. Python warnings Pillow raises while opening a file
  are logged as one line naming it, never printed raw.

Writing (``write_image``) goes through ``upscale.atomic.atomic_file``: a private temp file beside the
target (created exclusively, never through a symlink), fsync, rename; on any failure the temp file is
removed. ``check_output`` runs the same up-front checks alone. EXIF is written with PixelXDimension and
PixelYDimension set to the output's size and without its thumbnail (``exif.fit_exif``); ``text`` goes
to a PNG (tEXt, or iTXt beyond Latin-1) and its ``Comment`` to a JPEG, ``png_colour`` to a PNG. The
resolution (``dpi``) is written back
unchanged where the format holds one (PNG, JPEG, TIFF, BMP; Pillow's WebP and AVIF hold none), so the
print size grows with the scale, as image editors do when they resample. Per format:

======  ==========  =====  ===  ====  ===  ========================================================
format  16-bit      alpha  ICC  EXIF  XMP  notes
======  ==========  =====  ===  ====  ===  ========================================================
PNG     kept        kept   yes  yes   yes  16-bit written by our encoder (``png``; Pillow cannot)
TIFF    kept        kept   yes  no    yes  written by our encoder (``tiff``), deflate + predictor 2
JPEG    -> 8 bit    drop   yes  yes   yes  quality 95 by default, 4:4:4 chroma; XMP up to one segment
WebP    -> 8 bit    kept   yes  yes   yes  lossy, quality 95 by default; grayscale is stored as RGB
BMP     -> 8 bit    drop   no   no    no   written by our encoder (``bmp``)
AVIF    -> 8 bit    kept   yes  yes   yes  where Pillow has the codec; quality 90 by default, 4:4:4 chroma
======  ==========  =====  ===  ====  ===  ========================================================

16 -> 8 bit is ``to_uint8`` (``round(v * 255 / 65535)``); dropping alpha logs a warning. A 16-bit
gray+alpha TIFF is valid but Pillow (and so ``read_image``) cannot read that layout back. The output
format comes from the extension; ``format`` may name it for a path without an image extension but
must not contradict one (``y.png`` with ``jpg`` is a ``UsageError``).
"""

from .animation import (Animation, check_animated, check_animation_output, frame_count, is_animation,
                        read_animation, read_frames, write_animation)
from .ends import is_whole
from .image import (DEFAULT_QUALITY, ENCODER_MEMORY, INPUT_EXTENSIONS, MAX_SIDE, SUPPORTED_EXTENSIONS, Image, output_extension,
                    to_uint8)
from .memory import as_planes, from_pillow, to_pillow
from .png import PNG_COMPRESS_LEVEL
from .read import image_size, pixel_limit, read_image
from .write import check_output, check_size, output_format_for, write_image

__all__ = [
    "DEFAULT_QUALITY", "ENCODER_MEMORY", "INPUT_EXTENSIONS", "MAX_SIDE", "PNG_COMPRESS_LEVEL", "SUPPORTED_EXTENSIONS", "Animation", "Image",
    "as_planes", "check_animated", "check_animation_output", "check_output", "check_size", "frame_count", "image_size", "is_animation", "is_whole",
    "output_extension", "output_format_for", "pixel_limit", "read_animation", "read_frames", "read_image",
    "from_pillow", "to_pillow", "to_uint8", "write_animation", "write_image",
]
