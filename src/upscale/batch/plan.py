"""Planning a batch: discovery, sharding (by flag or by launcher), output naming, the resume rule, and
the checks that can be made before any model is loaded. Nothing here loads a model or decodes pixels
(only image headers are read)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping

from .. import atomic, errors
from .. import io as _io
from ..api import DEFAULT_NAME, default_output_path, output_size
from ..engine import Workload
from ..io import INPUT_EXTENSIONS, image_size, is_animation, is_whole
from .journal import JOURNAL_NAME, Journal, judge, key_for
from .outputs import SHARED, OutputOwners
from .summary import FAILED, SKIPPED, Outcome

log = logging.getLogger("upscale")

# A file is an input when ``io`` reads its extension (outputs keep it where ``io`` writes it back, else
# PNG: ``io.output_extension``); anything else in the folder is ignored.
IMAGE_EXTENSIONS = INPUT_EXTENSIONS

# why an output the journal describes is redone, as the info line says it
_REDONE = {"other settings": "made with other settings (model, scale, alpha mode, quality or --frames)",
           "input changed": "made from an input that has changed since"}

# Launchers that start N copies of a command, and the variables that say which copy this is
# (rank from 0, count). The first pair present wins: a multi-node torchrun sets RANK/WORLD_SIZE
# (global) beside LOCAL_RANK/LOCAL_WORLD_SIZE (this node's).
LAUNCHERS = (("torchrun", "RANK", "WORLD_SIZE"), ("torchrun", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
             ("SLURM", "SLURM_PROCID", "SLURM_NTASKS"))


@dataclass(frozen=True)
class Job:
    """One input image and where its output goes."""

    source: Path           # the input file
    rel: str               # its path relative to the input folder, POSIX style (the shard key)
    output: Path           # the output file under the output folder


@dataclass(frozen=True)
class Plan:
    """The work for one run: jobs to do, and the outcomes already known without running the model."""

    jobs: tuple[Job, ...]
    known: tuple[Outcome, ...]      # skipped (a complete output exists) and failed (output name collides)
    total_found: int                # image files found before sharding
    stale_temps_removed: int
    finished: tuple[Job, ...] = ()  # this shard's jobs whose complete output exists (the skipped ones)


# --- shards --------------------------------------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; ``UsageError`` otherwise."""
    try:
        k_txt, n_txt = text.split("/")
        k, n = int(k_txt), int(n_txt)
    except ValueError:
        raise errors.UsageError(f"shard must look like K/N (e.g. 2/8), not {text!r}", params=("shard",)) from None
    if not 1 <= k <= n:
        raise errors.UsageError(f"shard {text}: need 1 <= K <= N", params=("shard",))
    return k, n


def shard_from_environment(environ: Mapping[str, str] | None = None) -> tuple[tuple[int, int], str] | None:
    """The shard a launcher (torchrun, SLURM) gave this process, and a phrase saying where it came
    from; None when no launcher started it or it started one copy only."""
    environ = os.environ if environ is None else environ
    for launcher, rank_var, size_var in LAUNCHERS:
        rank_txt, size_txt = environ.get(rank_var), environ.get(size_var)
        if rank_txt is None or size_txt is None:
            continue
        try:
            rank, size = int(rank_txt), int(size_txt)
        except ValueError:
            rank, size = -1, 0
        if not 0 <= rank < size:
            raise errors.UsageError(f"{launcher} set {rank_var}={rank_txt!r} and {size_var}={size_txt!r}: "
                                    "need 0 <= rank < count; pass shard K/N instead", params=("shard",))
        if size == 1:
            return None
        return (rank + 1, size), f"{launcher} ({rank_var}={rank}, {size_var}={size})"
    return None


def shard_of(rel: str, n: int) -> int:
    """The shard (1..n) that owns relative path ``rel``: a hash of the path, so file order never matters."""
    digest = hashlib.sha256(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def _in_shard(rel: str, shard: tuple[int, int] | None) -> bool:
    """Whether shard ``(k, n)`` owns relative path ``rel`` (no shard: every path)."""
    return shard is None or shard_of(rel, shard[1]) == shard[0]


# --- checks made before the model is loaded ------------------------------------------------------

def check_folders(in_dir: Path, out_dir: Path) -> None:
    """The input is a folder and the output folder is another one (``UsageError`` otherwise), that is
    or can be made (not a symlink to nothing, no file above it) and where files can be written
    (``ImageWriteError`` otherwise)."""
    if not in_dir.is_dir():     # a file, a link to nothing (where it points), or nothing at all
        raise errors.UsageError(atomic.in_the_way(in_dir, "input folder") or f"input folder {in_dir} does not exist")
    if out_dir.exists() and not out_dir.is_dir():
        raise errors.UsageError(f"{out_dir}: the output folder is a file")
    problem = atomic.in_the_way(out_dir)    # a link to nothing (or a loop of links), a file above it
    if problem is None and out_dir.resolve() == in_dir.resolve():
        raise errors.UsageError(f"{out_dir}: the output folder must differ from the input folder")
    problem = problem or atomic.write_problem(out_dir)
    if problem is not None:     # exit 1: the run could not start, before the model loads
        raise errors.ImageWriteError(problem, path=out_dir)
    journal = Journal(out_dir)
    try:
        journal.check_writable()
    except OSError as err:
        raise errors.ImageWriteError(f"cannot add to this folder's journal of what made each output "
                                     f"({err.strerror or err})", path=journal.path) from None


def check_report_path(report: str | Path | None, in_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse a report path that could replace an image: one with an image extension inside the
    input or output folder (every input and every planned output is such a path), or one in a
    folder that does not exist (other than the output folder, which the run creates)."""
    if report is None:
        return
    report, out_dir = Path(report), Path(out_dir)
    target = report.resolve()
    if target.suffix.lower() in IMAGE_EXTENSIONS or atomic.is_temp_name(target.name):
        for role, folder in (("input", Path(in_dir)), ("output", out_dir)):
            if target.is_relative_to(folder.resolve()):
                raise errors.UsageError(f"report {report} is an image path inside the {role} folder {folder}; "
                                        "it would replace an image (name it .json, or put it elsewhere)",
                                        params=("report",))
    if target == (out_dir / JOURNAL_NAME).resolve():
        raise errors.UsageError(f"report {report} is OUT_DIR's journal of what made each output; name it "
                                "otherwise", params=("report",))
    if not report.parent.is_dir() and target.parent != out_dir.resolve():   # OUT_DIR is created
        raise errors.UsageError(f"report {report}: folder {report.parent} does not exist", params=("report",))
    landing = atomic.landing(report)
    if landing is None:     # /dev/stdout, a FIFO: written into, no file made beside it
        return
    problem = atomic.write_problem(landing.parent)
    if problem is not None:
        raise errors.ImageWriteError(f"cannot write the report: {problem}", path=report)


# --- planning ------------------------------------------------------------------------------------

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
            if path.suffix.lower() not in IMAGE_EXTENSIONS or atomic.is_temp_name(name):
                continue
            rel = path.relative_to(in_dir).as_posix()
            if globs and not any(PurePosixPath(rel).match(g) for g in globs):
                continue
            found.append((path, rel))
    found.sort(key=lambda pair: pair[1])
    return found


def plan_batch(in_dir: str | Path, out_dir: str | Path, *, outscale: float, output_format: str | None = None,
               recursive: bool = False, globs: tuple[str, ...] = (), shard: tuple[int, int] | None = None,
               overwrite: bool = False, frames: str = "first", settings: str | None = None,
               quality: int | None = None, name: str = DEFAULT_NAME) -> Plan:
    """Find the inputs, name their outputs, keep this shard's share, and sort it into to-do and known.

    Two inputs whose outputs would be the same file (``a.jpg`` and ``a.jpeg``; ``a.png`` and ``a.jpg``
    with ``--format png``; two names that a symlink makes one: ``outputs``) are decided over the whole
    folder before sharding, so every shard agrees: the first in path order is processed, the others
    fail with a reason naming it; an output that leads to an input fails too. An output is done
    (skipped) only when it is complete (``_complete``) and, given the run's ``settings`` key (with
    ``quality``, and ``frames`` as the run will read each input), OUT_DIR's journal does not say it was
    made with other settings or from an input that has changed since (``journal``; an input whose time
    alone moved gets a fresh line here).
    Temp files that dead processes of this host left in the output folders are removed.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_folders(in_dir, out_dir)
    found = find_images(in_dir, recursive=recursive, globs=globs, exclude=out_dir)
    owners: OutputOwners[str] = OutputOwners(path for path, _ in found)
    jobs: list[Job] = []
    finished: list[Job] = []
    known: list[Outcome] = []
    for path, rel in found:
        output = out_dir / default_output_path(Path(rel), outscale, output_format, name)
        owners.claim(output, rel)
        if not _in_shard(rel, shard):
            continue
        why = _refusal(output, rel, owners)
        if why is not None:
            known.append(Outcome(rel, str(output), FAILED, why))
        else:
            jobs.append(Job(path, rel, output))
    removed = sum(len(atomic.sweep_temps(folder)) for folder in sorted({job.output.parent for job in jobs}))
    removed += sum(len(atomic.sweep_temps_for(job.output)) for job in jobs if job.output.is_symlink())
    if removed:
        log.debug("removed %d temporary files left by processes that no longer run", removed)
    todo = []
    journal = Journal(out_dir)
    recorded = journal.read() if settings is not None and not overwrite else {}
    otherwise: dict[str, int] = {}
    for job in jobs:
        record = recorded.get(job.output.relative_to(out_dir).as_posix()) if recorded else None
        why = _made_otherwise(job, record, journal, key_for(settings, quality, job.output, animation=(
            frames == "all" and record is not None and _animation(job.source)))) if record else None
        if why is not None:
            otherwise[why] = otherwise.get(why, 0) + 1
        if not overwrite and why is None and _complete(job, outscale):
            finished.append(job)
            known.append(Outcome(job.rel, str(job.output), SKIPPED, "output exists"))
        else:
            todo.append(job)
    if otherwise:
        log.info("redoing %s", " and ".join(f"{n} output{'s' if n > 1 else ''} {_REDONE[why]}"
                                            for why, n in sorted(otherwise.items(), reverse=True)))
    return Plan(tuple(todo), tuple(known), len(found), removed, tuple(finished))


def _refusal(output: Path, rel: str, owners: OutputOwners[str]) -> str | None:
    """Why the input ``rel`` may not be written to ``output``, known before anything is read (its
    name, another input's output, a link into an input: ``outputs``); None when it may."""
    too_long = atomic.name_problem(output.name)
    if too_long is not None:
        return f"{too_long} (--name makes other names)"
    clash = owners.clash(output, rel)
    if clash is not None and clash.kind == SHARED:
        return f"output {output} is also the output of {clash.other}"
    if clash is not None:
        return (f"output {output} leads to the input {os.path.realpath(output)} (a symlink); inputs are "
                "never overwritten")
    return None


def _made_otherwise(job: Job, record: dict, journal: Journal, key: str) -> str | None:
    """Why the journal's ``record`` says ``job``'s output is not what ``key`` makes now, or None; an
    input touched or copied but the same bytes gets a fresh line, so it is hashed once, not every run."""
    if not os.path.lexists(job.output):
        return None
    why, fresh = judge(record, key, job.source)
    if why is None and fresh is not None:
        try:
            journal.append(job.output, key, fresh)
        except OSError:
            pass                # it is hashed again next time: nothing lost
    return why


def _complete(job: Job, outscale: float) -> bool:
    """Whether ``job.output`` is a finished output: non-empty, whole (``io.is_whole``: it ends where its
    format says) and its header gives the size the input's header asks for. A missing output is not;
    a broken one is logged and redone. (Whether it holds the frames asked for is the journal's to say:
    writers merge identical frames, so frame counts differ between an animation and its output.)"""
    if not os.path.lexists(job.output):
        return False
    try:
        if job.output.stat().st_size > 0 and is_whole(job.output):
            width, height = image_size(job.source)
            out_h, out_w = output_size(height, width, outscale)
            if image_size(job.output) == (out_w, out_h):
                return True
    except (OSError, errors.ImageReadError):
        pass
    log.info("%s: not a complete output (empty, cut short, unreadable or of the wrong size); redoing it",
             job.output)
    return False


def _animation(source: Path) -> bool:
    """Whether ``--frames all`` reads ``source`` as an animation (False when its header cannot be read:
    reading it fails that file anyway)."""
    try:
        return is_animation(source)
    except errors.ImageReadError:
        return False


def planned_work(plan: Plan, *, max_pixels: int | None = None) -> Workload:
    """The input pixels of every image this shard owns, done or not, and their common (height, width)
    if they all share one. Only images that pass the checks reading will apply count (the header
    reads, and is within the pixel limit); files the plan refuses are not in it. It does not depend
    on which outputs exist, so a resumed run makes the same ``compile`` decisions (on or off, tile
    shape), and so the same bytes, as the run it resumes."""
    limit = _io.pixel_limit(max_pixels)
    total = 0
    shapes = set()
    for job in sorted((*plan.jobs, *plan.finished), key=lambda j: j.rel):
        try:
            w, h = image_size(job.source)
        except errors.ImageReadError:
            continue
        if limit is not None and w * h > limit:
            continue
        total += w * h
        shapes.add((h, w))
    return Workload(total, shapes.pop() if len(shapes) == 1 else None)

