"""Each output writer's working memory: the peak RSS one ``upscale.io.write_image`` adds (the product's
own path: our streaming PNG and TIFF writers, Pillow's encoders through memory for JPEG, WebP, AVIF,
BMP), per output pixel and as a multiple of the 8-bit RGB image, for ``io.ENCODER_MEMORY``.

    python benchmarks/encoder_memory.py --size 4000x3000 --formats avif webp tif png jpg bmp

Each format runs in its own process (peak RSS only grows): a smooth random image (random 1/8-size
noise, bicubic-enlarged: photo-like for the codecs) is made as the uint8 array an upscale produces,
``ru_maxrss`` read, the image written to a temp file with ``write_image``, ``ru_maxrss`` read again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import publish

CHILD = r"""
import json, os, resource, sys, tempfile, time
import numpy as np
from PIL import Image
from upscale.io import Image as Record, write_image
w, h, ext = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = np.random.default_rng(0).integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
pixels = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC))
record = Record(pixels, None)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as folder:
    t = time.perf_counter()
    write_image(record, os.path.join(folder, "out." + ext), quality=90 if ext in ("jpg", "webp", "avif") else None)
    seconds = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "s": seconds}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="4000x3000", help="WxH of the image encoded (default 4000x3000)")
    p.add_argument("--formats", nargs="+", default=["avif", "webp", "tif", "png", "jpg", "bmp"])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    rows = []
    for fmt in args.formats:
        out = subprocess.run([sys.executable, "-c", CHILD, str(w), str(h), fmt], capture_output=True, text=True,
                             check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        extra = (got["after_kb"] - got["before_kb"]) * 1024
        rows.append({"format": fmt, "size": f"{w}x{h}", "extra_bytes_per_px": round(extra / (w * h), 2),
                     "x_rgb8_output": round(extra / (w * h * 3), 2), "encode_s": round(got["s"], 2)})
    import PIL

    publish("encoder_memory.py", argv, args.json, env_extra={"pillow": PIL.__version__}, encoders=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
