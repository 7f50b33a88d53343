"""Running a planned batch: ``workers`` reader threads decode into a bounded queue, the calling thread
runs the model one image at a time, ``workers`` writer threads encode from a second bounded queue.

However large the folder, at most ``3 * workers`` decoded images (queued, or held by a reader waiting
for room) and ``2 * workers`` upscaled ones (queued, or being encoded) are in memory at any moment.
Each image gets its own forward passes with the engine's settings, exactly as the single command does,
so an output never depends on which other images were in the same run (this is why small images do not
share a forward pass: padding them to one size would change their borders). Outputs are written by
``io.write_image`` (an exclusive temp file beside the output, renamed into place); the temps of
killed runs were swept while planning. Each output written is then recorded in OUT_DIR's journal
(``journal``)."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..api import Upscaler, check_output_memory, output_size, outscale_for
from ..engine import RunStats
from ..io import (Animation, check_animated, check_size, read_frames, read_image, write_animation,
                  output_format_for, write_image)
from .journal import Journal, input_record, key_for
from .plan import Job, Plan
from .summary import DONE, FAILED, NOT_STARTED, BatchSummary, Outcome, reason_for


OnOutcome = Callable[[Outcome], None]
OnTiles = Callable[[str, int, int], None]       # (relative path, tiles done, tiles total)

_END = object()  # a reader's or writer's "no more items" marker


@dataclass(frozen=True)
class BatchSettings:
    """How each image is upscaled and written (the same knobs as the single command)."""

    outscale: float | None = None
    alpha_mode: str = "model"
    output_format: str | None = None
    quality: int | None = None
    max_pixels: int | None = None
    workers: int = 2
    frames: str = "first"     # "all": every frame of an animated file, written as APNG or animated WebP
    journal: Journal | None = None   # OUT_DIR's record of what made each output (resume judges by it)
    settings_key: str = ""           # this run's ``journal.settings_key``


@dataclass
class _Tally:
    """Outcomes reported by several threads; the callback runs under one lock, so it needs none. The
    first exception the callback raises is kept (and the callback not called again) and ``stop`` set:
    a worker thread that died of it would leave the model thread waiting on a full queue for ever."""

    on_outcome: OnOutcome | None
    stop: threading.Event
    outcomes: list[Outcome] = field(default_factory=list)
    model_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    error: BaseException | None = None

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)
            self.model_s += outcome.model_s
            if self.on_outcome is not None and self.error is None:
                try:
                    self.on_outcome(outcome)
                except BaseException as err:  # noqa: BLE001 - re-raised by run_batch once the threads end
                    self.error = err
                    self.stop.set()


def run_batch(plan: Plan, upscaler: Upscaler, settings: BatchSettings, *, stop: threading.Event | None = None,
              on_outcome: OnOutcome | None = None, on_tiles: OnTiles | None = None,
              shard: tuple[int, int] | None = None) -> BatchSummary:
    """Upscale every job of ``plan``; a bad file becomes a failed ``Outcome`` and the run goes on.

    ``on_outcome`` hears each job's outcome as it is settled (from worker threads, one call at a time;
    ``plan.known`` is not repeated through it); ``on_tiles`` hears tile progress from the model thread.

    Setting ``stop`` (e.g. from a SIGINT handler) ends the run after the image in the model: images
    already upscaled are still written whole, nothing new is started, and the summary says
    ``interrupted``. An exception in the calling thread (a second Ctrl-C) is re-raised once the
    writers have finished the images they hold; so is one that ``on_outcome`` raised, after which the
    run stops as it does when ``stop`` is set.
    """
    stop = stop or threading.Event()
    workers = max(1, settings.workers)
    tally = _Tally(on_outcome, stop, outcomes=list(plan.known))
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
    ended, asked_to_stop = 0, False
    try:
        ended = _model_loop(decoded, upscaled, len(readers), stop, upscaler, settings, on_tiles, tally)
        asked_to_stop = stop.is_set()    # Ctrl-C, even during the last image (set below anyway)
    finally:
        stop.set()                       # readers start nothing new ...
        while ended < len(readers):      # ... and none stays blocked on the full queue
            if decoded.get() is _END:
                ended += 1
        for _ in writers:
            upscaled.put(_END)
        for thread in (*readers, *writers):
            thread.join()
    if tally.error is not None:
        raise tally.error
    elapsed = time.perf_counter() - start
    settled = {o.input for o in tally.outcomes}
    unstarted = [Outcome(job.rel, str(job.output), NOT_STARTED, "the run was interrupted first")
                 for job in plan.jobs if job.rel not in settled]
    return BatchSummary(tally.outcomes + unstarted, elapsed, tally.model_s, asked_to_stop or bool(unstarted),
                        shard, plan.stale_temps_removed)


def _model_loop(decoded: queue.Queue, upscaled: queue.Queue, readers: int, stop: threading.Event,
                upscaler: Upscaler, settings: BatchSettings, on_tiles: OnTiles | None, tally: _Tally) -> int:
    """The calling thread's part: upscale decoded images until every reader ended or ``stop`` is set;
    returns how many readers' end markers it has taken."""
    ended = 0
    while ended < readers:
        item = decoded.get()
        if item is _END:
            ended += 1
            continue
        if stop.is_set():
            break
        job, image, stamp = item
        done = _upscale_one(job, image, upscaler, settings, on_tiles, tally)
        if done is not None:
            upscaled.put((*done, stamp))
    return ended


def _read_loop(todo: queue.SimpleQueue, decoded: queue.Queue, stop: threading.Event, settings: BatchSettings,
               tally: _Tally) -> None:
    """Reader thread: decode jobs until none are left or ``stop`` is set; bad files become failures."""
    try:
        while not stop.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                break
            stamp = _stamp(job.source) if settings.journal is not None else None
            try:
                image = _read(job, settings)
            except Exception as err:  # noqa: BLE001 - one bad file must not end the run
                tally.add(Outcome(job.rel, None, FAILED, reason_for(err)))
                continue
            decoded.put((job, image, stamp))
    finally:
        decoded.put(_END)


def _stamp(source: Path) -> dict[str, Any] | None:
    """The input as it is before it is read, for the journal (so a change while it runs shows next
    time); None when it cannot be read, which reading it reports."""
    try:
        return input_record(source)
    except OSError:
        return None


def _read(job: Job, settings: BatchSettings) -> Any:
    """The decoded input: an ``Image``, or with ``frames="all"`` an ``Animation`` of two or more frames
    (refused here, before the model, when the output format holds no animation)."""
    image = (read_frames if settings.frames == "all" else read_image)(job.source, max_pixels=settings.max_pixels)
    first = image.frames[0] if isinstance(image, Animation) else image
    h, w = first.pixels.shape[:2]
    size = None if settings.outscale is None else output_size(h, w, settings.outscale)[::-1]
    fmt = check_size(job.output, settings.output_format, size)     # the writer makes the sub-folder
    if isinstance(image, Animation):
        check_animated(job.output, fmt)
    return image


def _upscale_one(job: Job, image: Any, upscaler: Upscaler, settings: BatchSettings, on_tiles: OnTiles | None,
                 tally: _Tally) -> tuple[Job, Any, int, float] | None:
    """Run one decoded image (or every frame of an animation) through the model: (job, result, input
    pixels, model seconds), or None."""
    animated = isinstance(image, Animation)
    first = image.frames[0] if animated else image
    height, width = first.pixels.shape[:2]
    progress = None if on_tiles is None else (lambda done, total: on_tiles(job.rel, done, total))
    stats = RunStats()
    try:    # the outputs and their encoder's memory (AVIF's is ~12x the output), before the model
        check_output_memory(first, outscale_for(upscaler.model, settings.outscale), path=job.source,
                            frames=len(image.frames) if animated else 1,
                            encoder=output_format_for(job.output, settings.output_format))
        if animated:    # frame progress in place of tile progress
            result = upscaler.upscale_animation(image, outscale=settings.outscale, alpha_mode=settings.alpha_mode,
                                                on_frame=progress, stats=stats)
            return job, result, height * width * len(image.frames), stats.forward_s
        result = upscaler.upscale(image, outscale=settings.outscale, alpha_mode=settings.alpha_mode,
                                  progress=progress, stats=stats)
    except Exception as err:  # noqa: BLE001 - e.g. an RGB image for a grayscale model: that file fails
        tally.add(Outcome(job.rel, None, FAILED, reason_for(err), height * width))
        return None
    return job, result, height * width, stats.forward_s


def _write_loop(upscaled: queue.Queue, settings: BatchSettings, tally: _Tally) -> None:
    """Writer thread: encode upscaled images (atomically) until the end marker."""
    while (item := upscaled.get()) is not _END:
        job, result, input_px, model_s, stamp = item
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(result, Animation):
                write_animation(result, job.output, format=settings.output_format, quality=settings.quality)
            else:   # one thread each: the writers already encode images side by side, beside the model
                write_image(result, job.output, format=settings.output_format, quality=settings.quality, threads=1)
        except Exception as err:  # noqa: BLE001 - an unwritable output fails that file only
            tally.add(Outcome(job.rel, str(job.output), FAILED, reason_for(err), input_px, model_s))
            continue
        if settings.journal is not None:
            key = key_for(settings.settings_key, settings.quality, job.output,
                          animation=isinstance(result, Animation))
            try:        # after the rename: a line never describes an output that is not in place
                settings.journal.append(job.output, key, stamp)
            except OSError as err:   # an older line may describe it: the output goes, the next run redoes it
                job.output.unlink(missing_ok=True)
                tally.add(Outcome(job.rel, None, FAILED, f"written but not recorded in {settings.journal.path.name} "
                                  f"({err.strerror or err}), so removed", input_px, model_s))
                continue
        tally.add(Outcome(job.rel, str(job.output), DONE, "", input_px, model_s))
