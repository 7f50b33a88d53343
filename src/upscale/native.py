"""Native code built on this machine: a C source shipped in the package, compiled by this machine's C
compiler once per source, flags, compiler and CPU, kept in ``<our cache>/native`` and loaded through
ctypes. The winograd backend's kernels (``backends/winograd_native``) and the PNG writer's row filter
(``io/png``) are built this way.

Why built here rather than shipped compiled: ``-march=native`` gives each CPU its own vector width
(AVX-512 on one Xeon, AVX2 on a laptop, NEON on an ARM server) from one source, and a wheel stays pure
Python. The file name holds a digest of the source, the flags, the compiler's identity and the CPU, so
a change in any of them builds anew and never loads a stale library.

A build is written into a temporary folder beside its place and renamed into it, so no process ever
loads half a file. ``$CC`` (default ``cc``) may hold words, as make reads it (``ccache gcc``). What
fails is a ``BuildError`` saying at which stage (the cache folder, the compiler, the loader); callers
turn it into their own message (the winograd backend's names the way out; the PNG writer falls back
to numpy quietly). No torch import: io-level code builds through this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shlex
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

from .machine import cache_dir, cpu_info

BUILD_TIMEOUT_S = 120
_started: dict[Path, threading.Thread] = {}     # builds ``build_soon`` started, until ``load`` joins them
_failed: dict[Path, BuildError] = {}            # how those that failed failed, for ``load`` to say
_started_lock = threading.Lock()


class BuildError(Exception):
    """A native library that could not be had: ``stage`` is "folder" (the cache folder cannot be
    written), "compile" (no compiler, or it failed) or "load" (built, but the loader refuses it);
    ``why`` is one line saying what happened."""

    def __init__(self, stage: str, why: str) -> None:
        super().__init__(f"{stage}: {why}")
        self.stage, self.why = stage, why


def native_dir() -> Path:
    return cache_dir() / "native"


def compiler() -> str:
    """``$CC`` as written (default ``cc``); it may hold words, as make takes it: ``ccache gcc``, ``gcc-13 -g``."""
    return os.environ.get("CC", "").strip() or "cc"


def library_path(package: str, source: str, flags: tuple[str, ...]) -> Path:
    """Where ``source`` (a file of ``package``), built with ``flags`` by this compiler for this CPU, is
    (or will be) kept."""
    return native_dir() / f"{Path(source).stem}-{_digest(package, source, flags, compiler())}.so"


@functools.lru_cache(maxsize=16)
def _digest(package: str, source: str, flags: tuple[str, ...], compiler_name: str) -> str:
    text = resources.files(package).joinpath(source).read_bytes()
    cpu = cpu_info()
    # the command as written too: "gcc -fsanitize=address" is not the library "gcc" built
    parts = [text, compiler_name.encode(), _compiler_identity(compiler_name).encode(), " ".join(flags).encode(),
             cpu.model.encode(), " ".join(sorted(cpu.flags)).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build_soon(package: str, source: str, flags: tuple[str, ...]) -> None:
    """Start building ``source`` on a background thread where it is not on disk yet, so that the
    compiler runs on another core while this process goes on (importing torch takes as long as a
    build); ``load`` waits for that build instead of starting its own. What fails is left for ``load``
    to meet again and say. A non-daemon thread: a process that ends sooner waits for the compiler
    (no half-built folder left behind)."""
    path = library_path(package, source, flags)
    try:
        if path.is_file():
            return
    except OSError:
        return
    with _started_lock:
        for done in [p for p, t in _started.items() if not t.is_alive()]:
            del _started[done]      # finished, and no ``load`` came for it (a run that used another backend)
            _failed.pop(done, None)
        if path in _started:
            return
        thread = _started[path] = threading.Thread(target=_build_quietly, args=(path, package, source, flags),
                                                   name=f"build-{path.stem}")
        thread.start()          # under the lock: a ``load`` never finds a thread it cannot join yet


def _build_quietly(path: Path, package: str, source: str, flags: tuple[str, ...]) -> None:
    try:
        _build(path, package, source, flags)
    except BuildError as exc:
        _failed[path] = exc


def wait_for_builds() -> None:
    """Wait for the builds ``build_soon`` started (a probe that times this machine must not share it
    with a compiler)."""
    with _started_lock:
        running = list(_started.values())
    for thread in running:
        thread.join()


def load(package: str, source: str, flags: tuple[str, ...]) -> ctypes.CDLL:
    """The library built from ``source``: built first where it is not on disk (or the build
    ``build_soon`` started, waited for), built once more where the file on disk does not load
    (damaged) unless it was just built. A ``BuildError`` where it cannot be had."""
    path = library_path(package, source, flags)
    with _started_lock:
        started = _started.pop(path, None)
    if started is not None:     # built in the background: what it did is this call's build
        started.join()
        failed = _failed.pop(path, None)
        if failed is not None:
            raise failed
        built = True
    else:
        try:
            built = not path.is_file()
        except OSError as exc:  # a cache folder that cannot be searched (mode 000): Python 3.11 raises
            raise BuildError("folder", exc.strerror or str(exc)) from exc
        if built:
            _build(path, package, source, flags)
    try:
        return _load(path)
    except BuildError:
        if built:               # just built, and it does not load: building again would not help
            raise
        _build(path, package, source, flags)
        return _load(path)


def _load(path: Path) -> ctypes.CDLL:
    """The built library loaded; where the loader refuses it, it is removed (nothing unloadable kept)."""
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        with contextlib.suppress(OSError):      # a read-only cache keeps it: the error below is still the news
            path.unlink(missing_ok=True)
        raise BuildError("load", str(exc)) from exc


@functools.lru_cache(maxsize=8)
def _compiler_identity(name: str) -> str:
    """The compiler's first line of ``--version`` (its name where it says nothing); asked once per
    process (each library's digest needs it)."""
    try:
        done = subprocess.run([*shlex.split(name), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return name
    return (done.stdout.splitlines() or [name])[0]


def _build(path: Path, package: str, source: str, flags: tuple[str, ...]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _compile_into(path, package, source, flags)
    except OSError as exc:      # the cache folder cannot be written (read-only, full, not a folder)
        raise BuildError("folder", exc.strerror or str(exc)) from exc


def _compile_into(path: Path, package: str, source: str, flags: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp, \
            resources.as_file(resources.files(package).joinpath(source)) as source_file:
        built = Path(tmp) / path.name
        try:
            # shlex.split raises a ValueError where $CC's quotes do not close
            done = subprocess.run([*shlex.split(compiler()), *flags, str(source_file), "-o", str(built)],
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise BuildError("compile", f"{compiler()}: {exc}".strip()) from exc
        if done.returncode != 0 or not built.is_file():
            # the first line that says why: the linker's "cannot find -lomp" comes before the driver's summary
            raise BuildError("compile", next(
                (line.strip() for line in done.stderr.splitlines() if "error" in line or "cannot find" in line),
                f"{compiler()} exited {done.returncode}"))
        os.replace(built, path)
