"""What made each output: a journal in OUT_DIR (``.upscale-batch.jsonl``), one line per output
written, so that a rerun with another model, scale, alpha mode, quality or ``--frames``, or after an
input changed, redoes the outputs it would make differently instead of skipping them as done.

A line holds the output's path relative to OUT_DIR, its key (``key_for``: a digest of the model's
weights and architecture and of the settings that change an output's pixels or bytes) and the
input's size, modification time and SHA-256, taken before it was read. It is appended after the
output is renamed into place, in one ``write`` on a file opened for appending (on a local file
system, processes writing into one folder, shards, never interleave lines); a process killed
between the rename and the line leaves an output without a new line: judged then by its last line
(redone if that was other settings) or, with none, by the size rule alone, as outputs made before
the journal existed are. An input whose time moved but whose bytes did not (a copy, a ``touch``)
gets a fresh line at planning, so it is hashed once, not at every run.

Engine settings that give equally valid pixels (tile, precision, backend, threads) are not part of
the key: a new tuning must not redo a finished folder. The last line of an output wins; a line that
does not parse is ignored. The file only grows; at ~200 bytes a line, a run over 100,000 images
adds ~20 MB.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from ..io import DEFAULT_QUALITY, output_format_for
from ..model import model_digest
from ..registry import sha256_file

log = logging.getLogger(__name__)

JOURNAL_NAME = ".upscale-batch.jsonl"


def settings_key(model: Any, *, outscale: float, alpha_mode: str) -> str:
    """A short digest of what decides an output's pixels: the network (architecture,
    hyper-parameters, weights), the scale and the alpha mode. ``key_for`` adds an output's quality;
    ``--frames`` is judged from the output's frame count instead (a still comes out the same)."""
    return model_digest(model, {"outscale": float(outscale), "alpha_mode": alpha_mode})[:32]


def key_for(settings: str, quality: int | None, output: Path, *, animation: bool = False) -> str:
    """The key one output is recorded with: ``settings``, plus the encoding quality where its format
    has one (JPEG, WebP, AVIF; the default spelled out, so ``--quality 95`` for a JPEG is no change),
    plus ``-frames`` for every frame of an animation (``--frames all``; a still's output, or an
    animation's first frame, is the same either way)."""
    fmt = output_format_for(output)
    key = settings if fmt not in DEFAULT_QUALITY else f"{settings}-q{quality if quality is not None else DEFAULT_QUALITY[fmt]}"
    return f"{key}-frames" if animation else key


def input_record(path: str | Path) -> dict[str, Any]:
    """What says an input changed: its size, modification time (ns) and SHA-256. ``OSError`` for what
    is not a regular file (a FIFO named like an image would block the hash forever)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


class Journal:
    """The journal of one output folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / JOURNAL_NAME

    def read(self) -> dict[str, dict[str, Any]]:
        """{output path relative to OUT_DIR: its last record}; empty when there is no journal."""
        records: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):     # no journal (or no OUT_DIR) yet
            return records
        except OSError as err:
            log.warning("%s: cannot read (%s); judging outputs by their size alone", self.path, err.strerror or err)
            return records
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("output"), str):
                records[record["output"]] = record
        return records

    def append(self, output: Path, key: str, stamp: dict[str, Any] | None) -> None:
        """Record that ``output`` (now in place) was made with settings ``key`` from the input
        ``stamp`` describes (``input_record``, taken before the input was read). Each record starts
        with a newline, so one cut short by a full disk stays a line of its own that does not parse,
        never glued to the next. ``OSError`` when it cannot be written whole."""
        line = "\n" + json.dumps({"output": output.relative_to(self.out_dir).as_posix(), "settings": key,
                                  "input": stamp}, separators=(",", ":"))
        data = line.encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            written = os.write(fd, data)
            if written != len(data):    # the rest would be appended apart from its start: refuse instead
                raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes written")
        finally:
            os.close(fd)

    def check_writable(self) -> None:
        """``OSError`` when records cannot be appended (a read-only or immutable journal): a run that
        could not record its outputs would leave older records describing them."""
        if self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)))


def judge(record: dict[str, Any] | None, key: str, source: Path) -> tuple[str | None, dict[str, Any] | None]:
    """(why an output recorded as ``record`` is not what these settings make from ``source`` now:
    "other settings", "input changed", or None when it is or nothing was recorded; the input's new
    stamp when only its time moved, its bytes the same, for the caller to record so the next run does
    not hash it again). The input is hashed only when its time moved and its size did not."""
    if record is None:
        return None, None
    if record.get("settings") != key:
        return "other settings", None
    was = record.get("input")
    try:
        st = os.stat(source)
        if not isinstance(was, dict) or was.get("size") != st.st_size:
            return "input changed", None
        if was.get("mtime_ns") == st.st_mtime_ns:
            return None, None
        now = input_record(source)
    except OSError:
        return None, None      # the input cannot be read: reading it fails that file anyway
    if was.get("sha256") != now["sha256"]:
        return "input changed", None
    return None, now
