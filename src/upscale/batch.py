"""Folders of images: discovery, sharding, output naming, skip/resume and a pipelined run.

    plan = plan_batch(in_dir, out_dir, outscale=4.0)        # what to do, what to skip (no model needed)
    summary = run_batch(plan, upscaler, BatchSettings(...))  # decode | model | encode, overlapped
    write_report(summary, "report.json")

Output naming is the single command's rule applied under ``out_dir``: ``sub/cat.jpg`` becomes
``out_dir/sub/cat_x4.jpg`` (``api.default_output_path``). An output that exists is skipped (the
resume rule); a stale temporary file left beside it by a killed run is removed first.

The pipeline: ``workers`` reader threads decode into a bounded queue, the calling thread runs the
model one image at a time, ``workers`` writer threads encode from a second bounded queue. However
large the folder, at most ``3 * workers`` decoded images (queued, or held by a reader waiting for
room) and ``2 * workers`` upscaled ones (queued, or being encoded) are in memory at any moment. Each image gets its own forward passes with the engine's settings, exactly as the
single command does, so an output never depends on which other images were in the same run (this
is why small images do not share a forward pass: padding them to one size would change their borders).

Nothing here prints; outcomes come back as data and through the ``on_outcome``/``on_tiles`` callbacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from . import errors
from .api import Upscaler, default_output_path
from .engine import Workload
from .io import SUPPORTED_EXTENSIONS, image_size, is_temp_file, read_image, temp_path_for, write_image

log = logging.getLogger("upscale")

# A file is an input when its extension is one ``io`` can write back (the output keeps it); anything
# else in the folder is ignored.
IMAGE_EXTENSIONS = SUPPORTED_EXTENSIONS

DONE, SKIPPED, FAILED = "done", "skipped", "failed"

MODEL_SECONDS_KEY = "forward_s"  # the engine's stats entry: seconds spent in forward passes


@dataclass(frozen=True)
class Job:
    """One input image and where its output goes."""

    source: Path           # the input file
    rel: str               # its path relative to the input folder, POSIX style (the shard key)
    output: Path           # the output file under the output folder


@dataclass(frozen=True)
class Outcome:
    """What happened to one input file."""

    input: str
    output: str | None
    status: str            # "done", "skipped" or "failed"
    reason: str = ""       # why it failed (one line), or why it was skipped
    input_px: int = 0      # width * height of the input, for throughput
    model_s: float = 0.0   # seconds this image spent in forward passes


@dataclass(frozen=True)
class Plan:
    """The work for one run: jobs to do, and the outcomes already known without running the model."""

    jobs: tuple[Job, ...]
    known: tuple[Outcome, ...]      # skipped (output exists) and failed (output name collides)
    total_found: int                # image files found before sharding
    stale_temps_removed: int


@dataclass(frozen=True)
class BatchSettings:
    """How each image is upscaled and written (the same knobs as the single command)."""

    outscale: float | None = None
    alpha_mode: str = "model"
    output_format: str | None = None
    quality: int | None = None
    max_pixels: int | None = None
    workers: int = 2


@dataclass
class BatchSummary:
    """Every outcome of a run plus its timing; ``to_dict`` is what ``--json`` and ``--report`` write."""

    outcomes: list[Outcome]
    elapsed_s: float
    model_s: float                 # time in forward passes, from the engine's stats
    interrupted: bool = False
    shard: tuple[int, int] | None = None
    stale_temps_removed: int = 0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def done(self) -> int:
        return self.count(DONE)

    @property
    def skipped(self) -> int:
        return self.count(SKIPPED)

    @property
    def failed(self) -> int:
        return self.count(FAILED)

    @property
    def megapixels_done(self) -> float:
        return sum(o.input_px for o in self.outcomes if o.status == DONE) / 1e6

    @property
    def images_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def megapixels_per_s(self) -> float:
        """Input megapixels upscaled per second of wall time."""
        return self.megapixels_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def model_busy_fraction(self) -> float:
        """Time in forward passes over wall time: near 1 when decoding and encoding are overlapped."""
        return self.model_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self, *, files: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "done": self.done, "skipped": self.skipped, "failed": self.failed,
            "interrupted": self.interrupted,
            "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
            "elapsed_s": round(self.elapsed_s, 3), "model_s": round(self.model_s, 3),
            "images_per_s": round(self.images_per_s, 3), "megapixels_per_s": round(self.megapixels_per_s, 4),
            "stale_temps_removed": self.stale_temps_removed,
            "failures": [{"input": o.input, "reason": o.reason} for o in self.outcomes if o.status == FAILED],
        }
        if files:
            out["files"] = [asdict(o) for o in sorted(self.outcomes, key=lambda o: o.input)]
        return out


# --- planning ------------------------------------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; ``UsageError`` otherwise."""
    try:
        k_txt, n_txt = text.split("/")
        k, n = int(k_txt), int(n_txt)
    except ValueError:
        raise errors.UsageError(f"--shard must look like K/N (e.g. 2/8), not {text!r}") from None
    if not 1 <= k <= n:
        raise errors.UsageError(f"--shard {text}: need 1 <= K <= N")
    return k, n


def shard_of(rel: str, n: int) -> int:
    """The shard (1..n) that owns relative path ``rel``: a hash of the path, so file order never matters."""
    digest = hashlib.sha256(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def _in_shard(rel: str, shard: tuple[int, int] | None) -> bool:
    """Whether shard ``(k, n)`` owns relative path ``rel`` (no shard: every path)."""
    return shard is None or shard_of(rel, shard[1]) == shard[0]


def find_images(in_dir: Path, *, recursive: bool = False, globs: tuple[str, ...] = (),
                exclude: Path | None = None) -> list[tuple[Path, str]]:
    """Image files under ``in_dir`` as sorted (path, relative POSIX path) pairs.

    A file counts when its extension is an image extension and, if ``globs`` are given, it matches one
    of them (``PurePosixPath.match`` on the relative path, so ``*.png`` matches at any depth).
    ``exclude`` (the output folder, when it lies inside the input folder) is never entered, and our own
    temporary files are never inputs.
    """
    excluded = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    for folder, dirnames, filenames in os.walk(in_dir):
        here = Path(folder)
        if recursive:
            dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() != excluded)
        else:
            dirnames[:] = []
        for name in filenames:
            path = here / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS or is_temp_file(path):
                continue
            rel = path.relative_to(in_dir).as_posix()
            if globs and not any(PurePosixPath(rel).match(g) for g in globs):
                continue
            found.append((path, rel))
    found.sort(key=lambda pair: pair[1])
    return found


def planned_work(in_dir: str | Path, *, recursive: bool = False, globs: tuple[str, ...] = (),
                 shard: tuple[int, int] | None = None, exclude: Path | None = None) -> Workload:
    """The input pixels of every image this shard owns, done or not, and their common (height, width)
    if they all share one (from headers; unreadable files are left out). It does not depend on which
    outputs exist, so a resumed run makes the same ``--compile`` decisions (on or off, tile shape),
    and so the same bytes, as the run it resumes."""
    total = 0
    shapes = set()
    for path, rel in find_images(Path(in_dir), recursive=recursive, globs=globs, exclude=exclude):
        if not _in_shard(rel, shard):
            continue
        try:
            w, h = image_size(path)
        except errors.ImageReadError:
            continue
        total += w * h
        shapes.add((h, w))
    return Workload(total, shapes.pop() if len(shapes) == 1 else None)


def plan_batch(in_dir: str | Path, out_dir: str | Path, *, outscale: float, output_format: str | None = None,
               recursive: bool = False, globs: tuple[str, ...] = (), shard: tuple[int, int] | None = None,
               overwrite: bool = False) -> Plan:
    """Find the inputs, name their outputs, keep this shard's share, and sort it into to-do and known.

    Two inputs whose outputs would have the same name (``a.jpg`` and ``a.jpeg``; ``a.png`` and ``a.jpg``
    with ``--format png``) are decided over the whole folder before sharding, so every shard agrees:
    the first in path order is processed, the others fail with a reason naming it.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise errors.UsageError(f"{in_dir}: not a folder")
    if out_dir.resolve() == in_dir.resolve():
        raise errors.UsageError(f"{out_dir}: the output folder must differ from the input folder")
    found = find_images(in_dir, recursive=recursive, globs=globs, exclude=out_dir)

    owner: dict[Path, str] = {}
    jobs: list[Job] = []
    known: list[Outcome] = []
    removed = 0
    for path, rel in found:
        output = out_dir / default_output_path(Path(rel), outscale, output_format)
        first = owner.setdefault(output, rel)
        if not _in_shard(rel, shard):
            continue
        if first != rel:
            known.append(Outcome(rel, str(output), FAILED, f"output {output} is also the output of {first}"))
            continue
        removed += _remove_stale_temp(output)
        if output.exists() and not overwrite:
            known.append(Outcome(rel, str(output), SKIPPED, "output exists"))
            continue
        jobs.append(Job(path, rel, output))
    return Plan(tuple(jobs), tuple(known), len(found), removed)


def _remove_stale_temp(output: Path) -> int:
    """Remove the temporary file a killed run may have left for ``output``; 1 if one was removed."""
    temp = temp_path_for(output)
    try:
        temp.unlink()
    except FileNotFoundError:
        return 0
    log.debug("removed stale temporary file %s", temp)
    return 1


# --- running -------------------------------------------------------------------------------------

OnOutcome = Callable[[Outcome], None]
OnTiles = Callable[[str, int, int], None]       # (relative path, tiles done, tiles total)

_END = object()  # a reader's or writer's "no more items" marker


@dataclass
class _Tally:
    """Outcomes reported by several threads; the callback runs under one lock, so it needs none."""

    on_outcome: OnOutcome | None
    outcomes: list[Outcome] = field(default_factory=list)
    model_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)
            self.model_s += outcome.model_s
            if self.on_outcome is not None:
                self.on_outcome(outcome)


def run_batch(plan: Plan, upscaler: Upscaler, settings: BatchSettings, *, stop: threading.Event | None = None,
              on_outcome: OnOutcome | None = None, on_tiles: OnTiles | None = None,
              shard: tuple[int, int] | None = None) -> BatchSummary:
    """Upscale every job of ``plan``; a bad file becomes a failed ``Outcome`` and the run goes on.

    ``on_outcome`` hears each job's outcome as it is settled (from worker threads, one call at a time;
    ``plan.known`` is not repeated through it); ``on_tiles`` hears tile progress from the model thread.

    Setting ``stop`` (e.g. from a SIGINT handler) ends the run after the image in the model: images
    already upscaled are still written whole, nothing new is started, and the summary says
    ``interrupted``. An exception in the calling thread (a second Ctrl-C) is re-raised once the
    writers have finished the images they hold.
    """
    stop = stop or threading.Event()
    workers = max(1, settings.workers)
    tally = _Tally(on_outcome, outcomes=list(plan.known))

    todo: queue.SimpleQueue[Job] = queue.SimpleQueue()
    for job in plan.jobs:
        todo.put(job)
    decoded: queue.Queue[Any] = queue.Queue(maxsize=2 * workers)
    upscaled: queue.Queue[Any] = queue.Queue(maxsize=workers)
    readers = [threading.Thread(target=_read_loop, args=(todo, decoded, stop, settings, tally),
                                name=f"upscale-read-{i}", daemon=True) for i in range(workers)]
    writers = [threading.Thread(target=_write_loop, args=(upscaled, settings, tally),
                                name=f"upscale-write-{i}", daemon=True) for i in range(workers)]

    start = time.perf_counter()
    for thread in (*readers, *writers):
        thread.start()
    ended = 0
    try:
        while ended < len(readers):
            item = decoded.get()
            if item is _END:
                ended += 1
                continue
            if stop.is_set():
                break
            job, image = item
            done = _upscale_one(job, image, upscaler, settings, on_tiles, tally)
            if done is not None:
                upscaled.put(done)
    finally:
        stop.set()                       # readers start nothing new ...
        while ended < len(readers):      # ... and none stays blocked on the full queue
            if decoded.get() is _END:
                ended += 1
        for _ in writers:
            upscaled.put(_END)
        for thread in (*readers, *writers):
            thread.join()
    elapsed = time.perf_counter() - start
    interrupted = len(tally.outcomes) < len(plan.known) + len(plan.jobs)
    return BatchSummary(tally.outcomes, elapsed, tally.model_s, interrupted, shard, plan.stale_temps_removed)


def _read_loop(todo: queue.SimpleQueue, decoded: queue.Queue, stop: threading.Event, settings: BatchSettings,
               tally: _Tally) -> None:
    """Reader thread: decode jobs until none are left or ``stop`` is set; bad files become failures."""
    try:
        while not stop.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                break
            try:
                image = read_image(job.source, max_pixels=settings.max_pixels)
            except Exception as err:  # noqa: BLE001 - one bad file must not end the run
                tally.add(Outcome(job.rel, None, FAILED, _reason(err)))
                continue
            decoded.put((job, image))
    finally:
        decoded.put(_END)


def _upscale_one(job: Job, image: Any, upscaler: Upscaler, settings: BatchSettings, on_tiles: OnTiles | None,
                 tally: _Tally) -> tuple[Job, Any, int, float] | None:
    """Run one decoded image through the model: (job, result, input pixels, model seconds), or None."""
    height, width = image.pixels.shape[:2]
    progress = None if on_tiles is None else (lambda done, total: on_tiles(job.rel, done, total))
    stats: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        result = upscaler.upscale(image, outscale=settings.outscale, alpha_mode=settings.alpha_mode,
                                  progress=progress, stats=stats)
    except Exception as err:  # noqa: BLE001 - e.g. an RGB image for a grayscale model: that file fails
        tally.add(Outcome(job.rel, None, FAILED, _reason(err), height * width))
        return None
    return job, result, height * width, float(stats.get(MODEL_SECONDS_KEY, time.perf_counter() - start))


def _write_loop(upscaled: queue.Queue, settings: BatchSettings, tally: _Tally) -> None:
    """Writer thread: encode upscaled images (atomically) until the end marker."""
    while (item := upscaled.get()) is not _END:
        job, result, input_px, model_s = item
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            # one thread each: the writers already encode images side by side, beside the model
            write_image(result, job.output, format=settings.output_format, quality=settings.quality, threads=1)
        except Exception as err:  # noqa: BLE001 - an unwritable output fails that file only
            tally.add(Outcome(job.rel, str(job.output), FAILED, _reason(err), input_px, model_s))
            continue
        tally.add(Outcome(job.rel, str(job.output), DONE, "", input_px, model_s))


def _reason(err: BaseException) -> str:
    """A one-line reason for a failed file (the path is reported beside it, so not repeated here)."""
    if isinstance(err, errors.UpscaleError):
        text = err.message
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split()) or type(err).__name__


def write_report(summary: BatchSummary, path: str | Path) -> None:
    """The per-file outcomes as JSON, written to a temporary name and renamed into place."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(summary.to_dict(files=True), indent=2) + "\n", encoding="utf-8")
        os.replace(temp, path)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise errors.ImageWriteError(f"cannot write the report: {err.strerror or err}", path=path) from None
