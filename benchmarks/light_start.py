"""How long commands that compute nothing take, a base commit against the working tree: listing
models, `tune --show`, and the refusals `upscale run` makes before it loads a model. Fresh processes,
the two versions alternated, median of ``--rounds``.

    cd benchmarks && python light_start.py --base 81dc496 --rounds 5 --json OUT.json

The base commit is checked out into a temporary git worktree and run with PYTHONPATH at its ``src``;
both versions run in one temporary folder holding a small PNG (``a.png``) and an existing output
(``b.png``), with an empty cache and ``HF_HUB_OFFLINE=1``. Each run also reports whether torch was
imported. lscpu's model and flags are recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import base_worktree, progress, publish
from upscale.machine import cpu_info

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "models": ["models"],
    "tune --show": ["tune", "--show"],
    "missing input": ["missing.jpg"],
    "existing output": ["a.png", "-o", "b.png"],
    "bad --scale": ["a.png", "-s", "-2"],
    "Hub model offline": ["a.png", "-m", "esrgan", "-o", "c.png"],
}
PROBE = """
import json, sys
from upscale.cli import main
sys.argv = ["upscale", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
print("\\n" + json.dumps("torch" in sys.modules), file=sys.stderr)
"""


def run(src: Path, args: list[str], folder: Path) -> tuple[float, bool]:
    """(wall s, torch imported) of ``upscale ARGS`` on the sources in ``src``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(src), "UPSCALE_CACHE": str(folder / "cache"), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    return wall, json.loads(done.stderr.rstrip("\n").rsplit("\n", 1)[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit to compare against (the working tree is the other)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with base_worktree(args.base, tmp) as base_src:
            folder = tmp / "work"
            folder.mkdir()
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
            (folder / "b.png").write_bytes(b"kept")
            versions = {"base": base_src, "now": REPO / "src"}
            times: dict[tuple[str, str], list[float]] = {}
            torch_seen: dict[tuple[str, str], bool] = {}
            for name, cmd in COMMANDS.items():
                for version, src in versions.items():
                    run(src, cmd, folder)            # warm the file cache once per version
                for r in range(args.rounds):
                    for version, src in versions.items():
                        wall, torch_loaded = run(src, cmd, folder)
                        times.setdefault((name, version), []).append(wall)
                        torch_seen[(name, version)] = torch_loaded
                progress({"command": name, **{v: statistics.median(times[(name, v)]) for v in versions}})
    rows = [{"command": f"upscale {' '.join(cmd)}",
             "base_median_s": statistics.median(times[(name, "base")]),
             "now_median_s": statistics.median(times[(name, "now")]),
             "base_torch": torch_seen[(name, "base")], "now_torch": torch_seen[(name, "now")]}
            for name, cmd in COMMANDS.items()]
    publish("light_start.py", argv, args.json, rows=rows,
            env_extra={"base": args.base, "rounds": args.rounds, "cpu_flags": " ".join(sorted(cpu_info().flags)),
                       "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
