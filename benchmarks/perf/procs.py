"""Child processes of perf_cpu's measurements: our CLI (or this script) in a fresh process, with its
own cache folder, timed from the parent with the child's peak RSS and CPU seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import load_avg


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, the child's peak RSS and CPU seconds, its output.

    The peak RSS comes from GNU time (``maxrss_source``: "time"), whose own child starts from a small
    process: the figure wait4 gives for a child spawned from this one also counts *this* process's
    resident memory at the exec (Linux keeps the old address space's high-water mark across exec:
    /bin/true spawned from a Python holding 300 MB reads 317 MB), so a large benchmark parent made
    every child look as big as itself. Without GNU time, wait4's figure ("wait4", an upper bound)."""
    gnu_time = shutil.which("time")
    before = load_avg()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as peak:
        full = [gnu_time, "-f", "%M", "-o", peak.name, *cmd] if gnu_time else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        lines = peak.read().split()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-2000:]}")
    maxrss_mb, source = usage.ru_maxrss / 1024, "wait4"
    if gnu_time and lines and lines[-1].isdigit():
        maxrss_mb, source = int(lines[-1]) / 1024, "time"
    return {"wall_s": wall, "stdout": stdout, "stderr": stderr[-4000:], "maxrss_mb": maxrss_mb,
            "maxrss_source": source, "cpu_s": usage.ru_utime + usage.ru_stime, "loadavg_before": before,
            "loadavg_after": load_avg()}


def upscale_cli() -> list[str]:
    """How to start our CLI: the ``upscale`` script beside this interpreter, else ``python -m upscale``."""
    script = Path(sys.executable).with_name("upscale")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "upscale"]


def cli_env(cache: Path) -> dict[str, str]:
    """This process's environment with our cache folder at ``cache`` (and no inductor override)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["UPSCALE_CACHE"] = str(cache)
    return env


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6 if path.exists() else 0.0
