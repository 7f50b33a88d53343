"""Opening and loading with Pillow under our rules: the per-call pixel limit (Pillow's global one is
off only while a lock is held), every failure an ``ImageReadError`` naming the file, and Pillow's
Python warnings collected and logged as one line naming the file instead of printed raw. HEIC/HEIF
files (phone photos) open through the optional ``pillow-heif`` plugin, registered on first use
(``pip install 'upscale[heif]'``); it applies the file's own rotation and reports EXIF orientation 1."""

from __future__ import annotations

import contextlib
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .. import errors
from .image import HEIF_EXTENSIONS, one_line

# Image.open reads the global MAX_IMAGE_PIXELS; it is switched off only while this lock is held (for
# the header parse) and our own per-call limit is applied instead. The same lock serialises the
# short stretches where Python warnings are caught (``pillow_warnings``), whose state is global too.
_LOCK = threading.Lock()
HEIF_EXTRA = "pip install 'upscale[heif]'"
_heif_registered = False


def _heif_plugin(path: Path) -> None:
    """Register pillow-heif with Pillow before the first HEIC/HEIF file opens (under ``_LOCK``); an
    ``ImageReadError`` saying how to install it where it is missing."""
    global _heif_registered
    if _heif_registered or path.suffix.lower() not in HEIF_EXTENSIONS:
        return
    try:
        import pillow_heif
    except ImportError:
        raise errors.ImageReadError(f"HEIC/HEIF needs the pillow-heif package: {HEIF_EXTRA}", path=path) from None
    pillow_heif.register_heif_opener()
    _heif_registered = True


def open_image(path: Path) -> tuple[PILImage.Image, int | None, list[PillowWarning]]:
    """Parse the header with Pillow's global size check off; return the image, the global limit and
    the warnings Pillow raised meanwhile (for the caller to word; nothing is printed or logged)."""
    with _LOCK:
        _heif_plugin(path)
        default_limit = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            with pillow_warnings(locked=True) as caught:
                im = PILImage.open(path)
            return im, default_limit, caught
        except UnidentifiedImageError:
            raise errors.ImageReadError("not a recognised image (cannot identify image file)",
                                        path=path) from None
        except PermissionError:
            raise errors.ImageReadError("permission denied", path=path) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
            raise errors.ImageReadError(f"corrupt image header ({one_line(err)})", path=path) from None
        finally:
            PILImage.MAX_IMAGE_PIXELS = default_limit


def load_pixels(im: PILImage.Image, path: Path) -> None:
    """Decode every pixel now, so that truncated or corrupt data fails here."""
    try:
        im.load()
    except PILImage.DecompressionBombError as err:
        raise errors.ImageReadError(f"{one_line(err)}; raise max_pixels if you trust this file", path=path,
                                    params=("max_pixels",)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as err:
        raise errors.ImageReadError(f"truncated or corrupt image data ({one_line(err)})", path=path) from None


@dataclass(frozen=True)
class PillowWarning:
    """A Python warning Pillow raised: the plugin module that raised it and its text on one line."""

    module: str     # e.g. "TiffImagePlugin" (which also parses every EXIF block)
    text: str


@contextlib.contextmanager
def pillow_warnings(*, locked: bool = False) -> Iterator[list[PillowWarning]]:
    """Collect the Python warnings Pillow raises inside the block instead of letting Python print them
    (the list fills when the block ends). Warnings from elsewhere (another thread, meanwhile) are
    passed on unchanged. Holds ``_LOCK`` (the warnings state is global) unless the caller does."""
    mine: list[PillowWarning] = []
    with contextlib.ExitStack() as stack:
        if not locked:
            stack.enter_context(_LOCK)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield mine
            finally:
                others = [w for w in caught if "PIL" not in Path(w.filename).parts]
                mine.extend(PillowWarning(Path(w.filename).stem, " ".join(str(w.message).split()))
                            for w in caught if "PIL" in Path(w.filename).parts)
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
