"""Standard output and error as shell tools treat them: a write to stdout that fails (``> /dev/full``,
a full disk, a descriptor closed with ``>&-`` or open read-only) is ``errors.StdoutError``, one line and
exit 1, instead of an internal error, a traceback from ``--help``, or (stdout closed) silence.

A pipe closed by its reader (``| head -1``, ``2>&1 | head -1``) is not an error: what is written after
it is dropped without a word and the command goes on to its end, with the exit code it would have had
(a batch still writes every output and its ``--report``; its threads never die on a progress line). A
stderr that cannot be written for any other reason is dropped too: there is nowhere to say so.

Only the ``upscale`` program installs it (``main``); a host program's or a test runner's streams are
left alone."""

from __future__ import annotations

import errno
import io
import os
import sys

from .. import errors


class _Descriptor(io.FileIO):
    """fd 1 or 2, whose write errors are typed (fd 1) or dropped (fd 2; a pipe closed by its reader on
    either). After the first error the rest of the output is dropped, so that the interpreter's final
    flush neither fails again nor prints."""

    def __init__(self, fd: int, *, closed: bool) -> None:
        super().__init__(fd, "w", closefd=False)
        self._error = OSError(errno.EBADF, os.strerror(errno.EBADF)) if closed else None
        self._failed = False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self._failed:
            return len(data)
        try:
            if self._error is not None:
                raise self._error
            return super().write(data)
        except OSError as err:
            self._failed = True
            if isinstance(err, BrokenPipeError) or self.fileno() != 1:
                return len(data)
            raise errors.StdoutError(f"cannot write to standard output ({err.strerror or err})") from None


def guard_stdout() -> None:
    """Make ``sys.stdout`` (the process's own, on fd 1) raise ``errors.StdoutError`` where a write fails,
    and both it and ``sys.stderr`` drop what follows a pipe closed by its reader; a stream closed at
    start keeps its fd taken (``/dev/null``), so no file opened later becomes it."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        if old is not None:
            try:
                if old is not getattr(sys, f"__{name}__") or old.fileno() != fd:
                    continue
                old.flush()
            except (OSError, ValueError, AttributeError):
                continue
        else:
            spare = os.open(os.devnull, os.O_WRONLY)
            if spare != fd:
                os.dup2(spare, fd)
                os.close(spare)
        raw = _Descriptor(fd, closed=old is None)
        # stderr as Python makes it: unbuffered, every write through (a progress line shows at once)
        setattr(sys, name, io.TextIOWrapper(
            io.BufferedWriter(raw) if fd == 1 else raw,     # type: ignore[arg-type]
            encoding=getattr(old, "encoding", None) or "utf-8",
            errors=getattr(old, "errors", None) or ("strict" if fd == 1 else "backslashreplace"),
            line_buffering=bool(getattr(old, "line_buffering", False)),
            write_through=bool(getattr(old, "write_through", fd == 2))))
