"""The whole command for a model nobody tuned here: the old fallback (torch) against what ``--backend
auto`` runs now (the machine's backend probe: ``upscale.backends.probe``), fresh processes, alternated.

    cd benchmarks && python untuned_backend.py --threads 2 --rounds 2 \\
        --case default-x4:../../shared/data/BSD200/100075.png:1000x750 \\
        --case /tmp/x4plus.safetensors:../../shared/data/Set14/man.png:512x512 --json OUT.json

Each case is MODEL:PHOTO:WxH (the photo resized with Lanczos to WxH where its size differs, written
to a temporary PNG). Per case:

- ``probe``: ``upscale tune --probe`` in an empty cache, once (its wall time: the one-time cost a
  machine pays, the kernels' C build included), which leaves the probe's answer in that cache;
- per round, alternated: ``before``, the command in an empty cache with ``--backend torch`` (what an
  untuned model ran on until now), and ``after``, the command with ``--backend auto`` reading a copy
  of the probe's cache (what it runs on from the second run on);
- ``first run``: the command with ``--backend auto`` in an empty cache (it builds the kernels and
  probes, then runs).

Every run: wall seconds, the child's peak RSS, and for ``after`` the backend said at info level; the
outputs' PSNR (RGB, 8-bit) against the first ``before`` output. lscpu's model and flags are recorded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_avg, progress, publish


def run(cmd: list[str], cache: Path) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stderr) of ``cmd`` with UPSCALE_CACHE=cache, offline."""
    env = {**os.environ, "UPSCALE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err}")
    return wall, usage.ru_maxrss / 1024, err


def said_backend(stderr: str) -> str:
    """The backend the run said it chose, from its info lines."""
    for line in stderr.splitlines():
        if "backend auto:" in line:
            return line.split("backend auto:", 1)[1].split()[0]
    return "?"


def prepared(photo: Path, size: str, folder: Path) -> Path:
    from PIL import Image

    w, h = (int(v) for v in size.lower().split("x"))
    with Image.open(photo) as im:
        im = im.convert("RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.LANCZOS)
        path = folder / f"{photo.stem}_{w}x{h}.png"
        im.save(path)
    return path


def psnr(a: Path, b: Path) -> float:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else round(10 * np.log10(255**2 / mse), 2)


def case_rows(model: str, image: Path, threads: int, rounds: int, tmp: Path) -> list[dict]:
    base = [sys.executable, "-m", "upscale", str(image), "-m", model, "--threads", str(threads), "--force"]
    probe_cache = tmp / "probe-cache"
    wall, _, err = run([sys.executable, "-m", "upscale", "tune", "--probe", "--threads", str(threads)], probe_cache)
    rows = [{"model": model, "run": "probe (once per machine)", "seconds": round(wall, 2), "backend": "",
             "note": err.strip().splitlines()[-1][:160] if err.strip() else ""}]
    progress(rows[-1])
    reference = tmp / "before_0.png"
    for i in range(rounds):
        for which in ("before", "after"):
            cache = tmp / f"cache-{which}-{i}"
            if which == "after":
                shutil.copytree(probe_cache, cache, symlinks=True)
            out = tmp / f"{which}_{i}.png"
            backend = ["--backend", "torch"] if which == "before" else ["--backend", "auto", "-v"]
            load = load_avg()
            wall, rss, err = run(base + backend + ["-o", str(out)], cache)
            label = "torch, the old fallback" if which == "before" else "auto"
            rows.append({"model": model, "run": f"{which} ({label})",
                         "seconds": round(wall, 2), "peak_rss_mb": round(rss), "backend":
                         "torch" if which == "before" else said_backend(err), "loadavg_before": load,
                         "psnr_vs_before_db": psnr(out, reference)})
            progress(rows[-1])
            shutil.rmtree(cache)
    out = tmp / "first.png"
    wall, rss, err = run(base + ["--backend", "auto", "-v", "-o", str(out)], tmp / "cache-first")
    rows.append({"model": model, "run": "first run (auto, empty cache: builds and probes)", "seconds": round(wall, 2),
                 "peak_rss_mb": round(rss), "backend": said_backend(err), "psnr_vs_before_db": psnr(out, reference)})
    progress(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", required=True, metavar="MODEL:PHOTO:WxH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    for case in args.case:
        model, photo, size = case.rsplit(":", 2)
        with tempfile.TemporaryDirectory(prefix="untuned-") as tmp:
            image = prepared(Path(photo), size, Path(tmp))
            for row in case_rows(model, image, args.threads, args.rounds, Path(tmp)):
                rows.append({"input": f"{Path(photo).name} {size}", **row})
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Flags")), "")
    publish("untuned_backend.py", argv, args.json, env_extra={"threads": args.threads, "lscpu_flags": flags},
            rows=rows)


if __name__ == "__main__":
    main()
