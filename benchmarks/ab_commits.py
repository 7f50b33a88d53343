"""One whole command, two versions of upscale side by side: a base commit (checked out into a
temporary git worktree) against the working tree, each run in a fresh process, alternated.

    cd benchmarks && python ab_commits.py --base 81dc496 --rounds 3 --photo ../../shared/data/BSD200/100075.png \\
        --size 1000x750 --json OUT.json -- -s 4 -q

The photo is resized with Lanczos to ``--size`` and written as a JPEG (quality 92: what a camera
gives) into a temporary folder; each run is ``python -m upscale PHOTO -o OUT.png --force ARGS`` with
PYTHONPATH pointing at that version's ``src``, both versions sharing one cache folder (``UPSCALE_CACHE``,
a copy of ``--cache`` where given, else empty; one untimed run of each version first fills it: the
kernels' C builds and the machine probes are one-time costs and not what is compared), or with
``--fresh-cache`` an empty cache for every run (what a first run on a machine costs). Per run: wall
seconds and the child's peak RSS; the outputs must decode to the same pixels (``--allow-different``
to report the PSNR instead). lscpu's model and flags are recorded with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import base_worktree, load_avg, progress, publish
from upscale.machine import cpu_info, package_version

REPO = Path(__file__).resolve().parents[1]


def run(src: Path, args: list[str], cache: Path) -> tuple[float, float]:
    """(wall s, peak RSS MB) of ``python -m upscale ARGS`` on the sources in ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "UPSCALE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "upscale", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"upscale {' '.join(args)} ({src}) failed:\n{err}")
    return wall, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit to compare against (the working tree is the other)")
    p.add_argument("--photo", type=Path, required=True)
    p.add_argument("--size", default="1000x750", help="WxH the photo is resized to (default 1000x750)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache", type=Path, help="a cache folder to copy (tuning entries) instead of an empty one")
    p.add_argument("--fresh-cache", action="store_true", help="every run in an empty cache (first-run cost)")
    p.add_argument("--allow-different", action="store_true", help="report the PSNR where outputs differ")
    p.add_argument("--json", type=Path)
    p.add_argument("args", nargs="*", help="after --: the command's arguments besides the input and -o")
    args = p.parse_args(argv)
    import numpy as np
    from PIL import Image

    from upscale.metrics import psnr

    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with base_worktree(args.base, tmp) as base_src:
            photo = tmp / "photo.jpg"
            with Image.open(args.photo) as im:
                im.convert("RGB").resize((width, height), Image.LANCZOS).save(photo, quality=92)
            cache = tmp / "cache"
            if args.cache:
                shutil.copytree(args.cache, cache)
            versions = {"base": base_src, "now": REPO / "src"}
            outs = {name: tmp / f"{name}.png" for name in versions}
            if not args.fresh_cache:
                for name, src in versions.items():           # warm: builds and probes, once
                    run(src, [str(photo), "-o", str(outs[name]), "--force", *args.args], cache)
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in versions}
            for r in range(args.rounds):
                for name, src in versions.items():
                    if args.fresh_cache:
                        shutil.rmtree(cache, ignore_errors=True)
                    times[name].append(run(src, [str(photo), "-o", str(outs[name]), "--force", *args.args], cache))
                    progress({"round": r + 1, "version": name, "wall_s": times[name][-1][0]})
            pixels = {name: np.asarray(Image.open(path).convert("RGB")) for name, path in outs.items()}
            same = np.array_equal(pixels["base"], pixels["now"])
            if not same and not args.allow_different:
                raise SystemExit("the two versions' outputs differ: --allow-different reports the PSNR")
            agreement = "identical pixels" if same else f"{psnr(pixels['now'], pixels['base'], y_channel=False):.1f} dB"
            sizes = {name: path.stat().st_size / 1e6 for name, path in outs.items()}
    base_median = statistics.median(t for t, _ in times["base"])
    rows = [{"version": f"{name} ({args.base if name == 'base' else 'working tree'})",
             "median_s": statistics.median(t for t, _ in runs), "min_s": min(t for t, _ in runs),
             "max_s": max(t for t, _ in runs), "peak_rss_mb": max(m for _, m in runs), "output_mb": sizes[name],
             "speed_vs_base": base_median / statistics.median(t for t, _ in runs)}
            for name, runs in times.items()]
    publish("ab_commits.py", argv, args.json, rows=rows,
            env_extra={"photo": f"{args.photo} resized to {args.size}", "upscale_args": " ".join(args.args),
                       "cpu_flags": " ".join(sorted(cpu_info().flags)), "isal": package_version("isal"),
                       "outputs": agreement, "loadavg_at_end": load_avg(), "rounds": args.rounds,
                       "fresh_cache": args.fresh_cache})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
