"""cli.progress and the CLI's log lines: a bar on a terminal never has a log line glued to it; plain
lines off a terminal say the time left; no message ever spans two lines."""

from __future__ import annotations

import io
import logging
import os
import sys

import pytest

from upscale.cli import _StderrHandler, printable
from upscale.cli.progress import Progress, duration


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_while_a_bar_is_drawn_stands_on_its_own_line(monkeypatch):
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = Progress("batch", "image", total=20, stream=tty)
    bar.update(3)
    record = logging.LogRecord("upscale", logging.INFO, __file__, 1, "%s: 3 frames; only the first is read",
                               ("anim.gif",), None)
    _StderrHandler().emit(record)
    bar.close()
    text = tty.getvalue()
    before = text[:text.index("upscale: anim.gif")]
    assert before.endswith(("\n", "\r")), repr(text)        # the bar was cleared (or ended) first
    assert "upscale: anim.gif: 3 frames; only the first is read\n" in text


def test_plain_lines_say_the_time_left(monkeypatch):
    out = io.StringIO()
    clock = iter([100.0, 110.0, 130.0])                     # start, then one reading per line
    monkeypatch.setattr("upscale.cli.progress.time.monotonic", lambda: next(clock))
    progress = Progress("batch", "image", total=10, stream=out)
    progress.update(2)                                      # 10 s for 2: 40 s left
    progress.update(5)                                      # 30 s for 5: 30 s left
    lines = out.getvalue().splitlines()
    assert lines == ["upscale: batch: 2/10 images (20%), ETA 40 s", "upscale: batch: 5/10 images (50%), ETA 30 s"]


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (59.4, "59 s"), (65, "1 min 05 s"), (7620, "2 h 07 min")])
def test_durations_read_as_a_person_reads_them(seconds, text):
    assert duration(seconds) == text


def test_printable_escapes_control_characters_and_keeps_other_text():
    assert printable("bad\nname.png") == "bad\\nname.png"
    assert printable("tab\there\r") == "tab\\there\\r"
    assert printable("Ünïcode 写真.png") == "Ünïcode 写真.png"
    # a name that is not UTF-8 (bytes 0xff 0xfe): as a shell user types it, not as Python holds it
    assert printable(os.fsdecode(b"bad\xff\xfe.png")) == "bad\\xff\\xfe.png"


def test_a_terminal_of_unknown_width_or_a_dumb_one_gets_plain_lines(monkeypatch):
    """A pty of 0 columns (`script`, serial consoles, some CI runners) drew an empty bar: no progress
    shown at all; TERM=dumb cannot redraw a line. Both get the plain lines; a sized terminal the bar."""
    import fcntl
    import os
    import struct
    import termios

    monkeypatch.setenv("TERM", "xterm")
    leader, follower = os.openpty()
    with os.fdopen(follower, "w", closefd=True) as tty:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        assert Progress("batch", "image", total=10, stream=tty)._bar is None
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        bar = Progress("batch", "image", total=10, stream=tty)
        assert bar._bar is not None
        bar.close()
        monkeypatch.setenv("TERM", "dumb")
        assert Progress("batch", "image", total=10, stream=tty)._bar is None
    os.close(leader)


def test_training_off_a_terminal_prints_plain_progress_lines(tmp_path):
    """`upscale train ... > log 2>&1`: a tqdm bar's carriage-return redraws piled up in the log; off a
    terminal the run prints a plain line a minute and at the end instead (-q: none)."""
    import subprocess

    from conftest import train_config_file

    config = train_config_file(tmp_path, max_iters=4)
    cmd = [sys.executable, "-m", "upscale", "train", "--config", str(config), "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    assert "\r" not in both and "iter 4/4 (100.0%): g_total " in both and " it/s, ETA " in both, both
    quiet = subprocess.run(cmd[:-2] + ["--out", str(tmp_path / "quiet"), "-q"], capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 0 and "iter 4/4" not in quiet.stdout + quiet.stderr, quiet.stderr
