"""PNG writing speed: our encoder on one thread, on all CPUs (blocks filtered and deflated in
parallel), the same encoder as it was before its fast path (rows filtered by numpy, deflated by
Python's zlib at level 3: what it still does where no C compiler and no ISA-L are), and Pillow at
zlib level 3, on the same upscaled photo, interleaved.

    python benchmarks/png_write.py --photo ../shared/data/BSD200/100075.png --size 4000x3000 --rounds 3

The photo is Lanczos-resized to ``--size`` (what an x4 upscale of a 1000x750 photo looks like to
the encoder: smooth, photographic). Prints a markdown table and, with ``--json``, writes the figures
with the environment. Sizes of the files are reported too: block-parallel deflate costs a little.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from _common import publish
from upscale.io import Image, read_image, write_image
from upscale.io import png
from upscale.io.png import PNG_COMPRESS_LEVEL, png_workers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", type=Path, required=True)
    p.add_argument("--size", default="4000x3000", help="WxH of the image written (default 4000x3000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    photo = PILImage.fromarray(read_image(args.photo).pixels).resize((width, height), PILImage.LANCZOS)
    pixels = np.asarray(photo)
    workers = png_workers()
    filter_kind = "native" if png.native_filter() is not None else "numpy (no C compiler)"
    deflate_kind = png.deflater()[0].__name__
    runners = {
        "ours, 1 thread": lambda path: write_image(Image(pixels, None), path, threads=1),
        f"ours, {workers} threads": lambda path: write_image(Image(pixels, None), path),
        "ours before (numpy filter, zlib 3), 1 thread": lambda path: _slow_path(pixels, path, 1),
        f"ours before (numpy filter, zlib 3), {workers} threads": lambda path: _slow_path(pixels, path, workers),
        f"Pillow, compress_level={PNG_COMPRESS_LEVEL}": lambda path: photo.save(
            path, compress_level=PNG_COMPRESS_LEVEL),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for i, (name, run) in enumerate(runners.items()):
                path = Path(tmp) / f"{i}.png"
                t0 = time.perf_counter()
                run(path)
                times[name].append(time.perf_counter() - t0)
                sizes[name] = path.stat().st_size
                assert np.array_equal(np.asarray(PILImage.open(path)), pixels), name
                path.unlink()
    base = statistics.median(times["ours, 1 thread"])
    rows = [{"encoder": name, "median_s": statistics.median(t), "min_s": min(t), "runs": len(t),
             "mb": sizes[name] / 1e6, "speed_vs_ours_1_thread": base / statistics.median(t)}
            for name, t in times.items()]
    publish("png_write.py", argv, args.json, rows=rows,
            env_extra={"cpus_for_png": workers, "image": f"{width}x{height} from {args.photo}",
                       "filter": filter_kind, "deflate": deflate_kind, "deflate_level": png.deflater()[1]})
    return 0


def _slow_path(pixels: np.ndarray, path: Path, threads: int) -> None:
    """Our encoder with both fallbacks forced: numpy filters the rows, zlib deflates them."""
    fast_filter, fast_deflater = png._png_filter_block, png.deflater
    png._png_filter_block, png.deflater = png._png_filter_block_numpy, lambda: (zlib, PNG_COMPRESS_LEVEL)
    try:
        write_image(Image(pixels, None), path, threads=threads)
    finally:
        png._png_filter_block, png.deflater = fast_filter, fast_deflater


if __name__ == "__main__":
    raise SystemExit(main())
