"""Stopping a run cleanly: SIGINT/SIGTERM set a flag, the loop stops at the next iteration boundary
and saves a checkpoint; a second Ctrl-C raises KeyboardInterrupt at once."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops at the next iteration boundary and saves. A second
    Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name


@contextmanager
def stop_signals(flag: StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
