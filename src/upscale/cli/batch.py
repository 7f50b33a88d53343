"""`upscale batch IN_DIR --out OUT_DIR`: a folder of images, with progress, resume, a report and sharding."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click

from . import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, handle_errors, printable, say
from .options import (engine_options_from, frames_option, load_model_from, model_name_from, model_options,
                      quiet_option)
from .progress import Progress

log = logging.getLogger("upscale")


def _shard_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:   # before any import: a Ctrl-C while torch loads belongs to the command
        return None
    from .. import errors
    from ..batch import parse_shard

    try:
        return parse_shard(value)
    except errors.UsageError as err:
        raise click.BadParameter(err.message.replace("shard ", "", 1)) from None


class _InputFolder(click.Path):
    """An existing folder, as ``click.Path`` checks it, but saying what is in the way where it is not:
    a symlink to nothing (and where it points), a file above it, a loop of links."""

    def __init__(self) -> None:
        super().__init__(exists=True, file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not os.path.isdir(value):
            from .. import atomic

            problem = atomic.in_the_way(value, "input folder")
            if problem is not None:
                self.fail(problem, param, ctx)
        return super().convert(value, param, ctx)


@contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """An event the first Ctrl-C or SIGTERM (``kill``, ``timeout``, ``docker stop``, a scheduler) sets:
    the run stops after the image in flight, with its summary and report; a second one aborts. A
    signal the process started with ignored is left ignored."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    # a signal ignored when we started stays ignored (POSIX: a shell without job control starts a
    # command run with ``&`` so, and its Ctrl-C is the script's, not this run's)
    stopping = tuple(s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN)
    # None: set outside Python
    previous = {s: signal.getsignal(s) or (signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
                for s in stopping}

    def handler(signum: int, frame: object) -> None:
        stop.set()
        for s in stopping:
            signal.signal(s, previous[s])

    for s in stopping:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s in stopping:
            signal.signal(s, previous[s])


@click.command("batch")
@click.argument("in_dir", type=_InputFolder())
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if missing); sub-folders of IN_DIR are mirrored under it.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders of IN_DIR.")
@click.option("--glob", "globs", multiple=True, metavar="PATTERN",
              help="Only images whose path relative to IN_DIR matches PATTERN (e.g. '*.png', 'raw/*'); repeatable.")
@click.option("--overwrite", is_flag=True, help="Redo images whose output exists (default: skip them, i.e. resume).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every file's outcome (done / skipped / failed and why) to this JSON file "
                   "(not an image path inside IN_DIR or OUT_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@quiet_option("No progress or summary; failures are still reported.")
@click.option("--shard", "shard", default=None, metavar="K/N", callback=_shard_option,
              help="Process only shard K of N (by a hash of each relative path): N runs with 1/N .. N/N "
                   "split a folder into disjoint parts that together cover it. Default: the shard torchrun "
                   "(RANK/WORLD_SIZE, LOCAL_RANK/LOCAL_WORLD_SIZE) or SLURM (SLURM_PROCID/SLURM_NTASKS) "
                   "gave this process, else the whole folder.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Decoding threads, and as many encoding threads, beside the model.")
@frames_option
@model_options
@handle_errors
def batch(in_dir: Path, out_dir: Path, recursive: bool, globs: tuple[str, ...], overwrite: bool,
          report: Path | None, as_json: bool, quiet: bool, shard: tuple[int, int] | None, workers: int, frames: str,
          outscale: float | None, model_name: str | None, weights: Path | None, interp_alpha: float | None,
          device: str, precision: str, tile_px: str | None, overlap_px: int | None, batch: int | None,
          threads: int | None, compile_mode: str, output_format: str | None, name_template: str,
          quality: int | None, alpha_mode: str, max_pixels: int | None) -> None:
    """Upscale every image in IN_DIR into OUT_DIR.

    \b
    Outputs keep the input's relative folder and are named {stem}_x{scale}.{ext} (--name), as for
    one image (e.g. IN_DIR/trip/cat.jpg -> OUT_DIR/trip/cat_x4.jpg; GIF and the other formats that
    are read but not written give .png). Files without an image extension (png jpg jpeg webp bmp tif tiff
    avif; read only: gif jp2 j2k tga ppm pgm pbm pnm qoi pcx jfif jpe heic heif hif) are ignored; a
    file with one that cannot be read is a failure, reported with its reason, and the run goes on.
    Each output is written under a temporary name and renamed when complete; a complete output
    (whole, and its header reads with the expected size) is skipped, so running the same command
    again after a crash or Ctrl-C resumes where it stopped (with byte-identical results); an empty,
    cut-short or broken one is redone, and so is one that OUT_DIR/.upscale-batch.jsonl says was made
    by another model, scale, alpha mode or quality, or from an input that has changed since.
    Ctrl-C (or SIGTERM) stops after the image in flight and prints the summary so far (and writes the
    report); a second one aborts.

    \b
    Exit codes: 0 every image done or skipped; 3 finished, some images failed; 1 could not run at
    all (bad model, unwritable OUT_DIR or report folder); 2 usage error; 130 interrupted.
    """
    from .. import api
    from ..batch import (BatchSettings, Journal, check_folders, check_report_path, plan_batch, planned_work,
                         settings_key)

    # everything that can be refused is refused before the model loads
    api.check_outscale(outscale)
    api.check_name(name_template, per_input=True)
    shard = shard or _launcher_shard()
    check_folders(in_dir, out_dir)
    check_report_path(report, in_dir, out_dir)
    options = engine_options_from(device, precision, tile_px, overlap_px, batch, threads, compile_mode)
    model = load_model_from(model_name_from(model_name, weights, outscale), outscale, interp_alpha, options)
    scale = api.outscale_for(model, outscale)

    key = settings_key(model, outscale=scale, alpha_mode=alpha_mode)
    plan = plan_batch(in_dir, out_dir, outscale=scale, output_format=output_format, recursive=recursive,
                      globs=globs, shard=shard, overwrite=overwrite, frames=frames, settings=key, quality=quality,
                      name=name_template)
    # the whole shard's work decides --compile auto, done or not, counting only images reading accepts
    work = planned_work(plan, max_pixels=max_pixels) if compile_mode != "off" else None
    upscaler = api.Upscaler(model, options, work=work)
    _make_folder(out_dir)
    _say_known(plan, quiet)
    settings = BatchSettings(outscale=scale, alpha_mode=alpha_mode, output_format=output_format, quality=quality,
                             max_pixels=max_pixels, workers=workers, frames=frames, journal=Journal(out_dir),
                             settings_key=key)
    summary = _run(plan, upscaler, settings, shard, quiet)
    _finish(summary, report, as_json, quiet)


def _launcher_shard() -> tuple[int, int] | None:
    """The shard a launcher (torchrun, SLURM) gave this process, said at info level; None if none."""
    from ..batch import shard_from_environment

    found = shard_from_environment()
    if found is None:
        return None
    (k, n), source = found
    log.info("shard %d/%d from %s; pass --shard K/N to choose another", k, n, source)
    return k, n


def _make_folder(out_dir: Path) -> None:
    from .. import errors

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise errors.ImageWriteError(f"cannot create the output folder: {err.strerror or err}", path=out_dir) from None


def _say_known(plan: Any, quiet: bool) -> None:
    """The failures and skips the plan already knows, before the run starts."""
    from ..batch import FAILED, SKIPPED

    for outcome in plan.known:
        if outcome.status == FAILED:
            say(f"upscale: failed: {outcome.input}: {outcome.reason}", err=True)
    skipped = sum(1 for o in plan.known if o.status == SKIPPED)
    if not quiet and (skipped or plan.stale_temps_removed):
        log.info("%d of %d images already have outputs (skipped)%s", skipped, len(plan.jobs) + skipped,
                 f"; removed {plan.stale_temps_removed} stale temporary files" if plan.stale_temps_removed else "")


def _run(plan: Any, upscaler: Any, settings: Any, shard: tuple[int, int] | None, quiet: bool) -> Any:
    """Run the plan with progress on stderr (a bar on a terminal, plain lines elsewhere)."""
    from ..batch import DONE, Outcome, run_batch

    progress = Progress("batch", "image", total=len(plan.jobs), quiet=quiet)
    lock = threading.Lock()
    started = time.perf_counter()
    megapixels = 0.0
    settled = 0

    def rate() -> str:
        return f"{megapixels / max(time.perf_counter() - started, 1e-9):.3g} MP/s"

    def on_outcome(outcome: Outcome) -> None:
        nonlocal megapixels, settled
        with lock:
            if outcome.status == DONE:
                megapixels += outcome.input_px / 1e6
            else:
                progress.write(printable(f"upscale: failed: {outcome.input}: {outcome.reason}"))
            settled += 1
            progress.note(rate())
            progress.update(settled)

    def on_tiles(rel: str, done: int, total: int) -> None:
        if total > 1:
            with lock:
                progress.note(printable(f"{rate()}, {Path(rel).name}: tile {done}/{total}"))

    with _stop_on_ctrl_c() as stop:
        try:
            return run_batch(plan, upscaler, settings, stop=stop, shard=shard, on_outcome=on_outcome,
                             on_tiles=None if quiet else on_tiles)
        finally:
            progress.close()


def _finish(summary: Any, report: Path | None, as_json: bool, quiet: bool) -> None:
    """Report, JSON, the summary line and the exit code."""
    from ..batch import write_report

    if as_json:
        click.echo(json.dumps(summary.to_dict(files=False)))
    if not quiet:
        state = "interrupted after" if summary.interrupted else "finished in"
        click.echo(f"upscale batch: {state} {summary.elapsed_s:.1f} s: {summary.done} done, {summary.skipped} "
                   f"skipped, {summary.failed} failed"
                   f"{f', {summary.not_started} not started' if summary.interrupted else ''}; "
                   f"{summary.images_per_s:.3g} images/s, "
                   f"{summary.megapixels_per_s:.3g} input MP/s, model busy {summary.model_busy_fraction:.0%}",
                   err=True)
    if report is not None:      # last: a report that cannot be written (exit 1) loses no summary
        write_report(summary, report)
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_PARTIAL if summary.failed else EXIT_OK)
