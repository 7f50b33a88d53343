"""Standard output as shell tools treat it: a write that fails (``> /dev/full``, a full disk, a
descriptor closed with ``>&-`` or open read-only) is ``errors.StdoutError``, one line and exit 1,
instead of an internal error, a traceback from ``--help``, or (stdout closed) silence. A pipe closed by
its reader (``| head``) stays a ``BrokenPipeError``: the command ends quietly, as before.

Only the ``upscale`` program installs it (``main``); a host program's or a test runner's stdout is
left alone."""

from __future__ import annotations

import errno
import io
import os
import sys

from .. import errors


class _Descriptor1(io.FileIO):
    """fd 1, whose write errors are typed. After the first one (reported by the caller) the rest of
    the output is dropped, so that the interpreter's final flush neither fails again nor prints."""

    def __init__(self, *, closed: bool) -> None:
        super().__init__(1, "w", closefd=False)
        self._error = OSError(errno.EBADF, os.strerror(errno.EBADF)) if closed else None
        self._failed = False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self._failed:
            return len(data)
        try:
            if self._error is not None:
                raise self._error
            return super().write(data)
        except BrokenPipeError:
            raise
        except OSError as err:
            self._failed = True
            raise errors.StdoutError(f"cannot write to standard output ({err.strerror or err})") from None


def guard_stdout() -> None:
    """Make ``sys.stdout`` (the process's own, on fd 1) raise ``errors.StdoutError`` where a write fails;
    a stdout closed at start keeps fd 1 taken (``/dev/null``), so no file opened later becomes it."""
    old = sys.stdout
    if old is not None:
        try:
            if old is not sys.__stdout__ or old.fileno() != 1:
                return
            old.flush()
        except (OSError, ValueError, AttributeError):
            return
    else:
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 1:
            os.dup2(fd, 1)
            os.close(fd)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_Descriptor1(closed=old is None)),
        encoding=getattr(old, "encoding", None) or "utf-8", errors=getattr(old, "errors", None) or "strict",
        line_buffering=bool(getattr(old, "line_buffering", False)),
        write_through=bool(getattr(old, "write_through", False)))
