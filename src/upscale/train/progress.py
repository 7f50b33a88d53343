"""What a run shows of its progress: a tqdm bar on a terminal ("bar"), a plain line every
``LINE_EVERY_S`` seconds and at the end where the output goes to a log file ("lines": a bar's
carriage-return redraws would pile up in it), or nothing ("none")."""

from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

MODES = ("bar", "lines", "none")
LINE_EVERY_S = 60.0
SHOWN = ("g_total", "d_total")      # the loss terms the bar's postfix and the lines show


def mode_of(progress: bool | str) -> str:
    """``progress`` as a mode: True is "bar", False "none"."""
    mode = {True: "bar", False: "none"}.get(progress, progress) if isinstance(progress, bool) else progress
    if mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)} or a bool, not {progress!r}")
    return mode


class RunProgress:
    def __init__(self, mode: str, total: int, done: int, echo: Callable[[str], None]) -> None:
        self.mode, self.total, self.echo = mode, total, echo
        self.bar = tqdm(total=total, initial=done, unit="it", dynamic_ncols=True, disable=mode != "bar", leave=True)
        self.start_done, self.started = done, time.perf_counter()
        self.last_line = self.started

    def update(self, iteration: int, values: dict[str, float]) -> None:
        self.bar.update(1)
        if iteration % 10 == 0 or iteration == self.total:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in SHOWN})
        now = time.perf_counter()
        if self.mode == "lines" and (now - self.last_line >= LINE_EVERY_S or iteration == self.total):
            self.last_line = now
            rate = (iteration - self.start_done) / max(now - self.started, 1e-9)
            losses = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k in SHOWN)
            left = (self.total - iteration) / rate if rate > 0 else float("inf")
            self.echo(f"iter {iteration}/{self.total} ({100 * iteration / self.total:.1f}%): {losses}, "
                      f"{rate:.3g} it/s, ETA {_hours(left)}")

    def close(self) -> None:
        self.bar.close()


def _hours(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"
