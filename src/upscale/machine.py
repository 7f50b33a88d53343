"""What this machine is: the CPU's model and flags (the one /proc/cpuinfo reader), its native bf16
instruction sets, its L2 cache's size, how busy other processes keep it (``cpu_clock`` /
``others_share``), our cache folder, and the facts every benchmark records beside its figures.
No torch import at module level: io-level code and benchmarks may ask without loading it."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    mhz: str = "?"

    @property
    def bf16_flags(self) -> tuple[str, ...]:
        """The native-bf16 instruction sets present (``amx_bf16``, ``avx512_bf16``)."""
        return tuple(f for f in BF16_FLAGS if f in self.flags)

    @property
    def amx(self) -> tuple[str, ...]:
        return tuple(sorted(f for f in self.flags if f.startswith("amx")))


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The first processor's model name and flags from /proc/cpuinfo (platform's name and no flags
    where that file is missing, e.g. off Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    return CpuInfo(model=model, flags=frozenset(fields.get("flags", "").split()), mhz=fields.get("cpu MHz", "?"))


L2_FALLBACK_BYTES = 2**20      # where the system does not say (off Linux): a small L2, so blocks stay in it


@functools.lru_cache(maxsize=1)
def l2_cache_bytes() -> int:
    """The first CPU's level-2 (data or unified) cache in bytes, from Linux's sysfs; ``L2_FALLBACK_BYTES``
    where that is not readable."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        if level == "2" and kind in ("Data", "Unified"):
            units = {"K": 2**10, "M": 2**20, "G": 2**30}
            number, unit = (size[:-1], units[size[-1]]) if size[-1:] in units else (size, 1)
            if number.isdigit() and int(number) > 0:
                return int(number) * unit
    return L2_FALLBACK_BYTES


def cpu_bf16_flags() -> tuple[str, ...]:
    return cpu_info().bf16_flags


# Other processes' share of the CPUs while something was timed above which the timing is not kept
# (the precision probes) or is warned about (`upscale tune`): on 2 cores, one other busy process is ~0.33.
BUSY_SHARE = 0.25
# CPU time (all CPUs together) under which ``others_share`` does not judge: /proc/stat counts 10 ms
# ticks, so over 0.2 s a tick or two of rounding moves the share by 0.05-0.1, over 20 ms by 0.5
MIN_CLOCK_S = 0.2


@dataclass(frozen=True)
class CpuClock:
    """CPU seconds at one moment: the machine's busy and total time over all its CPUs (/proc/stat; a
    VM's stolen time counts as busy: a neighbour had the core) and this process's own, all threads."""

    busy_s: float
    total_s: float
    own_s: float


def cpu_clock() -> CpuClock | None:
    """Now's ``CpuClock``; None where /proc/stat cannot be read (off Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    import resource   # POSIX only, as /proc/stat is: not imported with the module (Windows has neither)

    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return CpuClock(busy / tick, (busy + idle + iowait) / tick, usage.ru_utime + usage.ru_stime)


def others_share(start: CpuClock | None, end: CpuClock | None) -> float | None:
    """The share (0..1) of the machine's CPU time between ``start`` and ``end`` that other processes
    used (their busy time less ours); None where it cannot be told: no clock, or under ``MIN_CLOCK_S``
    of CPU time between the two (a probe of a tiny network)."""
    if start is None or end is None or end.total_s - start.total_s < MIN_CLOCK_S:
        return None
    others = (end.busy_s - start.busy_s) - (end.own_s - start.own_s)
    return min(1.0, max(0.0, others / (end.total_s - start.total_s)))


@dataclass
class OthersWatch:
    """What ``watch_others`` saw: other processes' share of the CPUs over its block (None: unknown)."""

    share: float | None = None

    @property
    def busy(self) -> bool:
        """Whether others took over ``BUSY_SHARE``: a timing from the block should not be kept."""
        return self.share is not None and self.share > BUSY_SHARE


@contextlib.contextmanager
def watch_others() -> Iterator[OthersWatch]:
    """Time something inside the block; afterwards the yielded ``OthersWatch`` says how busy other
    processes kept the machine meanwhile (``others_share``)."""
    watch = OthersWatch()
    start = cpu_clock()
    yield watch
    watch.share = others_share(start, cpu_clock())


# the machine's probes (``engine.precision``, ``backends.probe``) time each candidate this many times at
# least, and more until this long has passed (so /proc/stat's 10 ms ticks can tell the load)
PROBE_RUNS = 5
PROBE_MIN_S = 0.2


def best_alternating(calls: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """{name: best seconds of ``calls[name]()``}: the calls alternate, one warm-up each, then
    ``PROBE_RUNS`` each or more until ``PROBE_MIN_S`` has passed, so a change in the machine's load
    weighs on all of them."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    first = next(iter(calls))
    start = time.perf_counter()
    while len(times[first]) <= PROBE_RUNS or time.perf_counter() - start < PROBE_MIN_S:
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t[1:]) for name, t in times.items()}


@contextlib.contextmanager
def probing(threads: int) -> Iterator[OthersWatch]:
    """Where a machine probe (``engine.precision``, ``backends.probe``) times its candidates: at
    ``threads`` torch threads, the count its answer is stored under (torch's count put back after),
    watching others' load (``watch_others``: an answer measured on a busy machine is not kept)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with watch_others() as others:
            yield others
    finally:
        torch.set_num_threads(before)


def host_available_bytes() -> int:
    """The host's available memory: MemAvailable from /proc/meminfo, else the free pages the system
    reports (off Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def cache_dir() -> Path:
    """Our cache: ``$UPSCALE_CACHE``, else ``$XDG_CACHE_HOME/upscale``, else ``~/.cache/upscale``,
    read from the environment at each call (tests point it elsewhere)."""
    explicit = os.environ.get("UPSCALE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "upscale"


def inductor_cache_dir() -> Path:
    """Where torch.compile's compiled graphs are kept between processes: ``<our cache>/inductor``."""
    return cache_dir() / "inductor"


def use_inductor_cache() -> None:
    """Point torch.compile's on-disk cache at ``inductor_cache_dir()`` unless the user chose one
    (``TORCHINDUCTOR_CACHE_DIR``); call before compiling. The first call in a process decides."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(*packages: str) -> dict[str, Any]:
    """Versions and machine facts recorded with every figure: CPU model, its AMX and bf16 flags,
    core count, torch threads (when torch is loaded), Python, and the versions of ``packages``
    (upscale, torch, numpy and pillow always)."""
    cpu = cpu_info()
    env: dict[str, Any] = {
        "cpu": cpu.model, "cpu_mhz": cpu.mhz, "cores": os.cpu_count(),
        "amx": ",".join(cpu.amx) or "none", "bf16_flags": ",".join(cpu.bf16_flags) or "none",
        "python": platform.python_version(), "platform": platform.platform(),
    }
    for name in ("upscale", "torch", "numpy", "pillow", *packages):
        env[name] = package_version(name) or "not installed"
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return env
