"""Which AVIF quality matches JPEG 95: PSNR (RGB, whole image) and file size of each image of a folder
written through ``write_image`` as JPEG (4:4:4) and as AVIF (4:4:4) at several qualities.

    python benchmarks/avif_quality.py --data ../shared/data/Set14 --limit 6 --json docs/perf/avif_quality.json

``upscale`` writes AVIF at quality 90 by default because, on six Set14 images, it matched JPEG 95's PSNR
at about two thirds of its size (the figures are in README.md's ``--format`` row). Also reported: the
same AVIF quality with Pillow's default 4:2:0 chroma, for what full chroma costs in bytes. Encoding
time is per image, median; the machine and versions are printed with the table.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from _common import publish
from upscale.dataprep import list_images
from upscale.io import Image, read_image, write_image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder of images (8-bit RGB is compared)")
    p.add_argument("--limit", type=int, default=6, help="first N images by name (default 6)")
    p.add_argument("--avif-qualities", default="80,90,95")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    images = [np.ascontiguousarray(np.asarray(PILImage.fromarray(read_image(f).pixels.squeeze()).convert("RGB")))
              for f in list_images(args.data)[:args.limit]]
    ours = [("JPEG 95 (ours)", ".jpg", 95)] + [(f"AVIF {q} (ours)", ".avif", int(q))
                                              for q in args.avif_qualities.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, ext, quality in ours:
            scores, sizes, times = [], [], []
            for i, pixels in enumerate(images):
                path = Path(tmp) / f"{i}{ext}"
                t0 = time.perf_counter()
                write_image(Image(pixels, None), path, quality=quality)
                times.append(time.perf_counter() - t0)
                sizes.append(path.stat().st_size)
                scores.append(psnr(pixels, read_image(path).pixels))
            rows.append({"format": label, "mean_psnr_db": statistics.mean(scores), "total_kb": sum(sizes) / 1e3,
                         "median_encode_s": statistics.median(times)})
        q420 = int(args.avif_qualities.split(",")[1 if "," in args.avif_qualities else 0])
        scores, sizes = [], []
        for pixels in images:   # Pillow's own default chroma, for comparison
            buf = io.BytesIO()
            PILImage.fromarray(pixels).save(buf, format="AVIF", quality=q420)
            sizes.append(len(buf.getvalue()))
            scores.append(psnr(pixels, np.asarray(PILImage.open(buf).convert("RGB"))))
        rows.append({"format": f"AVIF {q420}, Pillow's 4:2:0", "mean_psnr_db": statistics.mean(scores),
                     "total_kb": sum(sizes) / 1e3, "median_encode_s": None})
    publish("avif_quality.py", argv, args.json, rows=rows,
            env_extra={"images": f"first {len(images)} of {args.data}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
