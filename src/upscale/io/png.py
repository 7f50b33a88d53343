"""Our streaming PNG encoder (8 and 16 bit; gray, gray+alpha, RGB, RGBA; iCCP, gAMA/cHRM/sRGB, pHYs, eXIf,
text and XMP's iTXt chunks).

Pillow cannot write 16-bit colour PNGs, and its encoder would hold a second full-size copy of a large
output; this one filters and deflates blocks of rows on several threads into one zlib stream. Rows are
filtered by ``pngfilter.c`` built on this machine (numpy where no C compiler is: identical bytes) and
deflated by ISA-L where it is installed (Python's zlib otherwise).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import BinaryIO

import numpy as np

from .. import native
from .exif import EXIF_PREFIX
from .image import dots_per_metre
from .text import png_text_chunks
from .xmp import png_itxt

# zlib level of our PNG writer (8 and 16 bit) where ISA-L is not installed. Measured with Pillow's
# encoder on a 4000x3000 upscaled photo: level 6 (Pillow's default) 2.8 s, 7.9 MB; level 3 1.05 s,
# 9.0 MB; level 1 0.77 s, 9.8 MB. Encoding at 6 took longer than the model.
PNG_COMPRESS_LEVEL = 3
# ISA-L's level (its default) where it is: on the same kind of image, filtered by us, 0.10 s against
# zlib level 3's 0.95 s, 10.16 MB against 9.99 (a 2048² anime upscale: 6.07 MB against 6.18); docs/perf.md
ISAL_LEVEL = 2
PNG_BLOCK_BYTES = 4 << 20    # filtered and deflated independently, in parallel (``_png_zlib_stream``)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PNG_COLOUR_TYPE = {(1, False): 0, (1, True): 4, (3, False): 2, (3, True): 6}


def write_png(f: BinaryIO, pixels: np.ndarray, alpha: np.ndarray | None, icc: bytes | None,
              exif: bytes | None, threads: int = 1, xmp: bytes | None = None,
              dpi: tuple[float, float] | None = None, text: tuple[tuple[str, str], ...] = (),
              colour: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """An 8- or 16-bit PNG (from the dtype; gray, gray+alpha, RGB or RGBA) with optional iCCP, ``colour``
    (gAMA/cHRM/sRGB as read), pHYs (``dpi``), eXIf, ``text`` and XMP (iTXt) chunks, filtered and compressed in blocks of rows, so no full-size
    copy is made (except to interleave an alpha channel)."""
    samples = pixels if alpha is None else np.dstack([pixels, alpha])
    h, w, c = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    f.write(b"\x89PNG\r\n\x1a\n")
    colour_type = _PNG_COLOUR_TYPE[(pixels.shape[2], alpha is not None)]
    f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)))
    if icc:
        f.write(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    for kind, data in colour:
        f.write(_chunk(kind, data))
    if dpi:
        f.write(_chunk(b"pHYs", struct.pack(">IIB", *dots_per_metre(dpi), 1)))   # unit 1: metre
    if exif:
        f.write(_chunk(b"eXIf", exif[len(EXIF_PREFIX):] if exif.startswith(EXIF_PREFIX) else exif))
    if xmp:
        f.write(_chunk(b"iTXt", png_itxt(xmp)))
    for kind, data in png_text_chunks(text):
        f.write(_chunk(kind, data))
    raw = (samples.astype(">u2").view(np.uint8) if depth == 16 else np.ascontiguousarray(samples)).reshape(h, -1)
    for data in _png_zlib_stream(raw, depth // 8 * c, threads):
        f.write(_chunk(b"IDAT", data))
    f.write(_chunk(b"IEND", b""))



def _png_zlib_stream(raw: np.ndarray, bpp: int, workers: int) -> Iterator[bytes]:
    """The zlib stream of PNG image data, in pieces, filtered and compressed in blocks of rows on
    ``workers`` threads (numpy and zlib release the GIL).

    Each block is deflated on its own and ends with a sync flush (the last with the final block), so
    the pieces, in order, form one valid deflate stream between our zlib header and the Adler-32 of all
    filtered bytes. Blocks of PNG_BLOCK_BYTES cost ~0.1% in size against one serial stream. At most
    2 blocks per worker are in flight, which bounds memory.
    """
    h, row_bytes = raw.shape
    rows = max(1, PNG_BLOCK_BYTES // max(1, row_bytes))
    starts = list(range(0, h, rows))

    def block(start: int) -> tuple[bytes | memoryview, bytes]:
        filtered = _png_filter_block(raw, start, min(start + rows, h), bpp)
        library, level = deflater()
        packer = library.compressobj(level, zlib.DEFLATED, -15)    # raw deflate: no header
        last = start == starts[-1]
        return filtered, packer.compress(filtered) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    native_filter()         # built here, once, before the workers would each start a compiler
    yield b"\x78\x5e"       # zlib header: deflate, 32 KiB window, "fast" level, no preset dictionary
    check = zlib.adler32(b"")
    if workers == 1 or len(starts) == 1:
        pieces: Iterator = map(block, starts)
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="png")
        pieces = _ordered(pool, block, starts, 2 * workers)
    for filtered, data in pieces:
        check = zlib.adler32(filtered, check)
        yield data
    yield struct.pack(">I", check)


@functools.lru_cache(maxsize=1)
def deflater() -> tuple[ModuleType, int]:
    """The deflate library our PNGs are compressed with, and its level: ISA-L's zlib (``isal``, a
    dependency where it has wheels: ~10x zlib's speed here for 2% in size), else Python's zlib."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib, PNG_COMPRESS_LEVEL
    return isal_zlib, ISAL_LEVEL


def _ordered(pool: ThreadPoolExecutor, fn, items: list, ahead: int) -> Iterator:
    """``fn`` over ``items`` on ``pool``, results in order, at most ``ahead`` submitted but not yet
    yielded; the pool is shut down when the iterator ends (or is abandoned)."""
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def png_workers() -> int:
    """Threads for PNG encoding: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:       # not Linux
        return max(1, os.cpu_count() or 1)


FILTER_SOURCE = "pngfilter.c"
FILTER_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared")
_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def native_filter() -> ctypes.CDLL | None:
    """``pngfilter.c`` built for this machine (``upscale.native``), or None where it cannot be (no C
    compiler, an unwritable cache): then the numpy filter, slower and identical, does the work."""
    try:
        lib = native.load(__package__, FILTER_SOURCE, FILTER_FLAGS)
    except (native.BuildError, OSError) as exc:
        _log.debug("PNG rows filtered with numpy: the native filter is unavailable (%s)", exc)
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.png_filter_rows.argtypes = [ptr, ptr, i64, i64, i64, ptr]
    lib.png_filter_rows.restype = None
    return lib


def _png_filter_block(raw: np.ndarray, start: int, stop: int, bpp: int) -> bytes | memoryview:
    """PNG scanlines ``start:stop`` of ``raw`` filtered (``_png_filter_block_numpy`` says how), by the
    native filter where it is built (it releases the GIL: blocks filter in parallel), else by numpy."""
    lib = native_filter()
    if lib is None or not raw.flags.c_contiguous:
        return _png_filter_block_numpy(raw, start, stop, bpp)
    rows, row_bytes = stop - start, raw.shape[1]
    above = raw[start - 1] if start else np.zeros(row_bytes, np.uint8)
    out = np.empty(rows * (row_bytes + 1), np.uint8)
    lib.png_filter_rows(raw[start:stop].ctypes.data, above.ctypes.data, rows, row_bytes, bpp, out.ctypes.data)
    return out.data


def _png_filter_block_numpy(raw: np.ndarray, start: int, stop: int, bpp: int) -> bytes:
    """PNG scanlines ``start:stop``, each with the filter (none/sub/up/average/paeth) of smallest
    absolute sum, as bytes (filter type byte + filtered row).

    ``raw`` is (H, row bytes) uint8 and ``bpp`` the bytes per pixel. Every filter is computed from the
    unfiltered bytes (the row above comes from ``raw`` too), so blocks are independent and this is
    vectorised. uint8 arithmetic wraps modulo 256, as PNG's filters do.
    """
    row_bytes = raw.shape[1]
    previous = raw[start - 1:start] if start else np.zeros((1, row_bytes), np.uint8)
    x = raw[start:stop]
    b = np.vstack([previous, x[:-1]])                       # the byte above
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]                                # the byte one pixel to the left
    c = np.zeros_like(b)
    c[:, bpp:] = b[:, :-bpp]                                # the byte above that one
    a16, b16, c16 = a.astype(np.int16), b.astype(np.int16), c.astype(np.int16)
    pa, pb, pc = np.abs(b16 - c16), np.abs(a16 - c16), np.abs(a16 + b16 - 2 * c16)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    average = ((a16 + b16) >> 1).astype(np.uint8)
    candidates = np.stack([x, x - a, x - b, x - average, x - paeth])
    cost = np.minimum(candidates, 0 - candidates).sum(axis=2, dtype=np.uint32)  # |byte as int8|
    best = cost.argmin(axis=0)
    chosen = candidates[best, np.arange(len(x))]
    return np.hstack([best.astype(np.uint8)[:, None], chosen]).tobytes()
