"""Progress on stderr that suits where stderr goes: a tqdm bar on a terminal; elsewhere (a log file, a
pipe, CI) a plain line each tenth of the work or every ``PLAIN_EVERY_S`` seconds, whichever comes
first, with the time left at the rate so far, never a bar's carriage returns; nothing at all when
quiet."""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

import click

PLAIN_EVERY_S = 10.0   # off a terminal: at most one line per tenth of the work, or one per this long


class Progress:
    """``update(done, total)`` as work advances, ``note(text)`` for a side remark (rate, current file),
    ``write(line)`` for a line that must stand alone (a failure), ``close()`` at the end."""

    def __init__(self, label: str, unit: str, total: int = 0, *, quiet: bool = False, leave: bool = True,
                 stream: IO[str] | None = None) -> None:
        self.label, self.unit, self.total = label, unit, total
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.done = 0
        self._decile = 0
        self._last_line = self._started = time.monotonic()
        self._note = ""
        self._bar: Any = None
        if not quiet and is_terminal(self.stream):
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit=unit, desc=label if not leave else None, leave=leave,
                             dynamic_ncols=True, smoothing=0.1, file=self.stream)

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.done = done
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.n = done
            self._bar.refresh()
        elif not self.quiet and self.total > 1:
            decile = done * 10 // self.total
            if decile > self._decile or time.monotonic() - self._last_line >= PLAIN_EVERY_S:
                self._decile = decile
                self._plain_line()

    def note(self, text: str) -> None:
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        elif not self.quiet and self.total > 1 and time.monotonic() - self._last_line >= PLAIN_EVERY_S:
            self._plain_line()

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            click.echo(line, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _plain_line(self) -> None:
        self._last_line = time.monotonic()
        pct = 100 * self.done // max(self.total, 1)
        note = f", {self._note}" if self._note else ""
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ETA {duration((self._last_line - self._started) / self.done * (self.total - self.done))}"
        click.echo(f"upscale: {self.label}: {self.done}/{self.total} {self.unit}s ({pct}%){eta}{note}",
                   file=self.stream)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: what is left, as a person reads it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def is_terminal(stream: IO[str]) -> bool:
    """A terminal a bar can be drawn on: not TERM=dumb (no cursor control: each redraw would stay, as
    in Emacs' compilation buffers), nor one of unknown width (0 columns: `script`, a serial console,
    some CI runners' ptys), where tqdm draws an empty bar and the run shows no progress at all."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):   # a stream without a descriptor that says it is a tty
        return True
