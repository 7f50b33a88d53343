"""The run folder: its default name, what counts as a run already there, getting it ready (temps of
killed runs swept, config.json written, metrics cut back to the resumed iteration), the metrics log,
and leaving nothing behind when a new run fails before its first checkpoint.

Layout: config.json, metrics.jsonl, curves.png, model.safetensors, best.safetensors,
checkpoints/ (iter_*.pt, best.pt), samples/ (iter_*.png), and, while a process trains in it,
``.train.lock`` (``atomic.claim``), so a second one (another ``--resume``, or a new run that picked the
same folder) stops before it writes anything instead of interleaving its checkpoints.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import IO, Any

from .. import atomic, errors

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "model.safetensors", "best.safetensors")
RUN_DIRS = ("checkpoints", "samples")
DEFAULT_ROOT = "runs"
LOCK_NAME = ".train.lock"
# Temps of earlier versions (mkstemp ``.NAME.XXXXXXXX.tmp``, io's ``.NAME.upscale-tmp``) for our own
# run files; they name no owner, so they are removed only from a run folder being started or resumed.
_LEGACY_TEMP = re.compile(r"^\.(?:iter_\d{8,}\.(?:pt|png)|best\.pt|" + "|".join(map(re.escape, RUN_FILES))
                          + r")(?:\.[A-Za-z0-9_]{8}\.tmp|\.upscale-tmp)$")


def default_run_folder(preset: str, scale: int, root: str | Path = DEFAULT_ROOT) -> Path:
    """``runs/<preset>-x<scale>-<n>``: n is one more than the highest n of a non-empty folder there."""
    root = Path(root)
    pattern = re.compile(rf"^{re.escape(preset)}-x{scale}-(\d+)$")
    taken = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else ())
             if (m := pattern.match(p.name)) and (not p.is_dir() or any(p.iterdir()))]
    return root / f"{preset}-x{scale}-{max(taken, default=0) + 1}"


def holds_run(out: str | Path) -> bool:
    """Whether ``out`` already holds a run's files (a new run there would mix with it)."""
    out = Path(out)
    return any((out / name).exists() for name in (*RUN_FILES, *RUN_DIRS))


def sweep_run_temps(out: Path) -> list[Path]:
    """Remove temps that killed processes left in the run folder and its checkpoints/samples."""
    removed: list[Path] = []
    for folder in (out, *(out / d for d in RUN_DIRS)):
        removed += atomic.sweep_temps(folder)
        if folder.is_dir():
            for f in folder.iterdir():
                if _LEGACY_TEMP.match(f.name) and f.is_file():
                    f.unlink(missing_ok=True)
                    removed.append(f)
    if removed:
        log.info("removed %d temp file(s) left by a killed run in %s", len(removed), out)
    return removed


class RunFolder:
    """One run's folder. ``prepare`` before the first write; ``mark_saved`` after each checkpoint;
    ``discard_if_unsaved`` on failure removes what this run created if it never saved a checkpoint."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.saved = False
        self._new = False
        self._made_dirs: list[Path] = []
        self._lock: IO[str] | None = None

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def prepare(self, config_json: str, iteration: int, *, fresh: bool = False) -> None:
        """Make the folder, take its lock, sweep temps, write config.json, cut metrics back to
        ``iteration``. ``fresh``: a new run, refused if another run appeared in the folder meanwhile."""
        missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:      # a file on the way says which; else the system's reason
            raise errors.TrainingError(f"cannot make the run folder: {atomic.os_reason(err, self.out)}",
                                       path=self.out) from None
        self._made_dirs = missing  # innermost first
        self._claim()
        try:
            held = holds_run(self.out)
            if fresh and held:
                raise errors.TrainingError("holds a run already (another training may have started "
                                           "it meanwhile); resume it, or pick another run folder", path=self.out)
            self._new = iteration == 0 and not held
            self._write_start(config_json, iteration)
        except BaseException:
            self.release()
            raise

    def _write_start(self, config_json: str, iteration: int) -> None:
        sweep_run_temps(self.out)
        atomic.write_text(self.out / "config.json", config_json + "\n")
        self._truncate_metrics(iteration)

    def _claim(self) -> None:
        try:
            self._lock = atomic.claim(self.out / LOCK_NAME)
        except BlockingIOError as err:
            who = f" (process {err.filename})" if err.filename else ""
            raise errors.TrainingError(f"another training{who} is using this run folder; wait for it to end, "
                                       "or pick another run folder", path=self.out) from None
        except OSError as err:
            raise errors.TrainingError(f"cannot lock the run folder: {err.strerror or err}", path=self.out) from None

    def release(self) -> None:
        """Let another process train in the folder (also when this one ends, however it ends)."""
        atomic.unclaim(self.out / LOCK_NAME, self._lock)
        self._lock = None

    def mark_saved(self) -> None:
        self.saved = True

    def discard_if_unsaved(self) -> None:
        """A new run that failed before any checkpoint: remove its files and the folders it made."""
        if not self._new or self.saved:
            return
        self.release()           # its lock file goes too, so the folders it made can go
        for name in RUN_FILES:
            (self.out / name).unlink(missing_ok=True)
        sweep_run_temps(self.out)
        for sub in RUN_DIRS:
            folder = self.out / sub
            if folder.is_dir():
                for f in folder.iterdir():
                    if f.is_file() and (f.name.startswith("iter_") or f.name == "best.pt"):
                        f.unlink()
                _rmdir_if_empty(folder)
        for folder in self._made_dirs:
            _rmdir_if_empty(folder)

    def append_metrics(self, rec: dict[str, Any]) -> None:
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        except OSError as err:      # a full disk: a line cut short is dropped when the run resumes
            raise errors.TrainingError(f"cannot add to the metrics log ({err.strerror or err})",
                                       path=self.metrics_path) from None

    def _truncate_metrics(self, iteration: int) -> None:
        """Drop records past the resumed iteration (a killed run may have logged beyond its checkpoint),
        and any line that is not a whole record (a kill, or a full disk, in the middle of an append).
        A run (re)starting at iteration 0 writes its bicubic-baseline record again: none is kept."""
        if not self.metrics_path.is_file():
            return
        keep, broken = [], 0
        for line in self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = None
            if not isinstance(record, dict):
                broken += bool(line.strip())
                continue
            if iteration and record.get("iter", 0) <= iteration:
                keep.append(line)
        if broken:
            log.warning("%s: dropped %d unreadable line%s (cut short by a stopped run)", self.metrics_path,
                        broken, "" if broken == 1 else "s")
        atomic.write_text(self.metrics_path, "".join(line + "\n" for line in keep))


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
