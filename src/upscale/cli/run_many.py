"""`upscale run IMAGE IMAGE...` (what `upscale *.jpg` types): several images, the model loaded once.

What can be refused without decoding is refused for every image first, from its header, one line per
file (the others go on); then each image takes the one-image path of ``run`` (``prepare``,
``check_with_model``, ``upscale_one``), with one line as each is written."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import click

from . import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, report_error, say
from .progress import duration
from .one_image import RunSettings, check_target, check_with_model, folder_message, prepare, upscale_one


@dataclass(frozen=True)
class Job:
    """One input, as its header describes it, and its output once the scale is known."""

    image: Path
    hw: tuple[int, int]            # (height, width), EXIF orientation applied
    animated: bool                 # read as an animation (--frames all on an animated file)
    frames: int                    # the frames read (1 for a still)
    target: Path | None = None


def check_output_folder(output: Path | None) -> None:
    """-o with several images must name an existing folder: a usage error (exit 2) before anything."""
    from .. import atomic

    if output is not None and not output.is_dir():    # click's: the message ends with where --help is
        why = atomic.in_the_way(output)     # a file above it, a link to nothing (where it points)
        raise click.UsageError(f"with several IMAGEs, -o/--output must name an existing folder for their "
                               f"outputs; {why or f'{output} is not a folder'}")


def run_many(images: tuple[Path, ...], settings: RunSettings, options: Any,
             load_model: Callable[[], Any]) -> None:
    """Upscale ``images`` (into ``settings.out_dir``, else beside each) and exit: 0 all
    written, 3 some failed, 1 none written, 130 interrupted."""
    from .. import api

    unique = _unique(images)
    jobs, failed = _probe(unique, settings)
    if settings.outscale is not None:         # the outputs' names and sizes are known before the model
        jobs, more = _with_targets(jobs, unique, settings.outscale, None, settings)
        failed += more
    if not jobs:
        sys.exit(EXIT_FAILURE)
    model = load_model()
    if settings.outscale is None:             # the model's scale names the outputs
        jobs, more = _with_targets(jobs, unique, float(model.scale), model.scale, settings)
        failed += more
        if not jobs:
            sys.exit(EXIT_FAILURE)
    upscaler = api.Upscaler(model, options, work=_workload(jobs))
    written = _upscale_all(jobs, upscaler, model, settings, len(unique))
    if not settings.quiet and written < len(unique):
        say(f"upscale: {written} of {len(unique)} images written, {len(unique) - written} failed", err=True)
    sys.exit(EXIT_OK if written == len(unique) else EXIT_PARTIAL if written else EXIT_FAILURE)


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _unique(images: tuple[Path, ...]) -> list[Path]:
    """``images`` in the order given (a shell sorts a glob), each file once."""
    seen: dict[str, Path] = {}
    for image in images:
        seen.setdefault(_key(image), image)
    return list(seen.values())


def _probe(images: list[Path], settings: RunSettings) -> tuple[list[Job], int]:
    """A job for each image whose header reads; one line for each that is refused, and their count."""
    from .. import errors
    from ..io import frame_count, image_size, is_animation

    jobs, failed = [], 0
    for image in images:
        try:
            if image.is_dir():
                raise errors.UsageError(folder_message(image))
            w, h = image_size(image)
            animated = settings.frames == "all" and is_animation(image)
            jobs.append(Job(image, (h, w), animated, frame_count(image) if animated else 1))
        except Exception as err:  # noqa: BLE001 - that file is refused; the others go on
            report_error(err)
            failed += 1
    return jobs, failed


def _with_targets(jobs: list[Job], inputs: list[Path], scale: float, native_scale: int | None,
                  settings: RunSettings) -> tuple[list[Job], int]:
    """``jobs`` with their outputs (in ``settings.out_dir``, else beside each input), less those refused: an
    output that is another's too, or one of ``inputs`` (every image given, refused ones too:
    ``batch.outputs``), or fails ``run``'s checks of an output, or whose size cannot fit in memory
    (counting one 8-bit channel: the exact check comes when it is read)."""
    import numpy as np

    from .. import api, errors
    from ..batch.outputs import SHARED, OutputOwners
    from ..io import output_format_for

    owners: OutputOwners[Path] = OutputOwners(inputs)
    kept, failed = [], 0
    for job in jobs:
        target = settings.default_target(job.image, scale)
        try:
            owners.claim(target, job.image)
            clash = owners.clash(target, job.image)
            if clash is not None and clash.kind == SHARED:
                raise errors.ImageWriteError(f"its output {target} is also the output of {clash.other}",
                                             path=job.image)
            if clash is not None and clash.other != job.image:     # its own input: check_target says so
                raise errors.ImageWriteError(f"refusing to overwrite {target}, another input of this run",
                                             path=job.image)
            check_target(job.image, target, job.hw, job.animated, scale, settings)
            api.check_memory(*job.hw, 1, np.dtype(np.uint8), scale, native_scale=native_scale, path=job.image,
                             frames=job.frames, encoder=output_format_for(target, settings.output_format))
        except Exception as err:  # noqa: BLE001 - that file is refused; the others go on
            report_error(err)
            failed += 1
            continue
        kept.append(replace(job, target=target))
    return kept, failed


def _workload(jobs: list[Job]) -> Any:
    """What the run plans through the model (``compile="auto"`` decides on it): every job's pixels."""
    from ..engine import Workload

    shapes = {job.hw for job in jobs}
    return Workload(sum(_pixels(job) for job in jobs), shapes.pop() if len(shapes) == 1 else None)


def _pixels(job: Job) -> int:
    return job.hw[0] * job.hw[1] * job.frames


def _upscale_all(jobs: list[Job], upscaler: Any, model: Any, settings: RunSettings, total: int) -> int:
    """Each job through ``run``'s one-image path, one line as each is written (with the time left at the
    rate so far, by input pixels) or fails; how many were written. Ctrl-C exits 130 at once: outputs
    are put in place whole or not at all (``total``: the images given, refused ones too)."""
    started = time.monotonic()
    pixels_all = sum(_pixels(job) for job in jobs)
    pixels_done = written = 0
    try:
        for at, job in enumerate(jobs, 1):
            loaded = None       # the last image's pixels go before the next is read
            try:
                loaded, target = prepare(job.image, job.target, settings)
                target, scale = check_with_model(job.image, loaded, target, model, settings)
                line = upscale_one(upscaler, loaded, job.image, target, scale, settings, tiles=False)
                written += 1
            except Exception as err:  # noqa: BLE001 - that file failed; the others go on
                report_error(err)
                continue
            finally:
                pixels_done += _pixels(job)
            if not settings.quiet:
                left = (time.monotonic() - started) / pixels_done * (pixels_all - pixels_done)
                say(f"upscale: {at}/{len(jobs)}: {line}" + (f", ETA {duration(left)}" if at < len(jobs) else ""),
                    err=True)
    except KeyboardInterrupt:
        click.echo(f"upscale: interrupted; {written} of {total} images written", err=True)
        sys.exit(EXIT_INTERRUPTED)
    return written
