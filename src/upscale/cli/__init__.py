"""Command line: parse -> call the API -> map errors to one-line messages and exit codes.

This package is the only place that prints. Each sub-command lives in its own module here and is
added to the group explicitly below; ``upscale IMAGE ...`` (no sub-command) runs ``upscale run``.

Exit codes: 0 ok; 1 failure; 2 usage; 3 batch (or run with several images) finished with some failures;
130 interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import traceback
from typing import Any, Callable

import click

from .. import errors

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

# One table: error class -> (exit code, label). The first matching row wins (most specific first).
ERROR_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    # The machine cannot do what was asked (fp16 on a CPU, cuda without a GPU): a failure, not a typo.
    (errors.PrecisionError, EXIT_FAILURE, "precision"),
    (errors.DeviceError, EXIT_FAILURE, "device"),
    (errors.ModelNotFoundError, EXIT_USAGE, "model"),
    (errors.UsageError, EXIT_USAGE, "usage"),
    (errors.ImageReadError, EXIT_FAILURE, "cannot read image"),
    (errors.ImageWriteError, EXIT_FAILURE, "cannot write output"),
    (errors.UnsafeWeightsError, EXIT_FAILURE, "unsafe weights"),
    (errors.ArchitectureMismatchError, EXIT_FAILURE, "weights do not fit"),
    (errors.UnknownArchitectureError, EXIT_FAILURE, "unknown weights layout"),
    (errors.ConversionError, EXIT_FAILURE, "cannot convert"),
    (errors.WeightsError, EXIT_FAILURE, "bad weights"),
    (errors.RegistryError, EXIT_FAILURE, "registry"),
    (errors.ChecksumError, EXIT_FAILURE, "checksum mismatch"),
    (errors.OfflineError, EXIT_FAILURE, "offline"),
    (errors.DownloadError, EXIT_FAILURE, "download failed"),
    (errors.InterpolationError, EXIT_FAILURE, "cannot interpolate"),
    (errors.DataError, EXIT_FAILURE, "data"),
    (errors.CheckpointError, EXIT_FAILURE, "checkpoint"),
    (errors.ResourceError, EXIT_FAILURE, "not enough resources"),
    (errors.TrainingError, EXIT_FAILURE, "training stopped"),
    (errors.BackendError, EXIT_FAILURE, "backend"),
    (errors.TuneCacheError, EXIT_FAILURE, "tuning cache"),
    (errors.StdoutError, EXIT_FAILURE, ""),   # its message says it all: "cannot write to standard output (...)"
    (errors.UpscaleError, EXIT_FAILURE, "error"),
)


# Library parameter -> the flag that sets it. Library errors name parameters (``errors.UpscaleError``'s
# ``params``); this table is the one place that words them as options.
FLAG_FOR_PARAM: dict[str, str] = {
    "tile_px": "--tile", "overlap_px": "--overlap", "batch": "--batch", "threads": "--threads",
    "device": "--device", "precision": "--precision", "compile": "--compile", "backend": "--backend",
    "outscale": "--scale", "scale": "--scale", "alpha": "--alpha", "alpha_mode": "--alpha-mode",
    "quality": "--quality", "output_format": "--format", "max_pixels": "--max-pixels", "shard": "--shard",
    "gray": "--gray", "warmup": "--warmup", "sheet_image": "--sheet-image", "lr_dir": "--lr", "hr_dir": "--hr",
    "init": "--init", "arch": "--arch", "report": "--report", "output": "--output", "force": "--force", "deploy": "--deploy",
    "authors_layout": "--authors-layout", "resume": "--resume", "preset": "--preset", "replace": "--replace",
    "name": "--name", "data": "--data", "windows": "--windows", "perceptual_net": "--perceptual-net",
    "perceptual_layer": "--perceptual-layer", "distill_net": "--distill-net", "distill_weight": "--distill-weight",
}


def word_as_flags(err: BaseException, message: str) -> str:
    """``message`` with the library parameter names that ``err`` declares written as their flags."""
    for param in getattr(err, "params", ()):
        flag = FLAG_FOR_PARAM.get(param)
        if flag:
            # a whole word, never part of a path or file name (".../resume/x", "data.png")
            message = re.sub(rf"(?<![\w./-]){re.escape(param)}(?![\w/-]|\.\w)", flag, message)
    return message


def classify(err: BaseException) -> tuple[int, str]:
    for cls, code, label in ERROR_TABLE:
        if isinstance(err, cls):
            return code, label
    return EXIT_FAILURE, "internal error"


def printable(text: str) -> str:
    """``text`` with control characters (a newline in a file name, say) written as escapes, so that
    every message stays one line; a byte of a file name that is not UTF-8 (which Python holds as a
    lone surrogate) as ``\\xff``, the way a shell user writes it (``$'\\xff'``), not ``\\udcff``."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    if "\udc80" <= ch <= "\udcff":       # os.fsdecode's surrogateescape of byte 0x80..0xff
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")


def say(text: str, *, err: bool = False) -> None:
    """Print one line that may hold a path (``printable``: it stays one line)."""
    click.echo(printable(text), err=err)


def report_error(err: BaseException) -> int:
    """Print the one-line message for ``err`` on stderr and return its exit code."""
    code, label = classify(err)
    if os.environ.get("UPSCALE_DEBUG") == "1":
        traceback.print_exception(err, file=sys.stderr)
    if isinstance(err, errors.UpscaleError) and err.path:  # the path itself is never reworded
        msg = f"{printable(str(err.path))}: " + word_as_flags(err, printable(err.message.replace("\n", " ")))
    else:
        msg = word_as_flags(err, printable(str(err).replace("\n", " "))) or type(err).__name__
    if not isinstance(err, errors.UpscaleError):
        msg = f"{type(err).__name__}: {msg} (set UPSCALE_DEBUG=1 for a traceback)"
    click.echo(f"upscale: {label + ': ' if label else ''}{msg}", err=True)
    return code


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for command callbacks: typed errors become a message and an exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("upscale: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:   # a host program's stdout closed early (the `upscale` program's own
            # drops what follows: cli.stdout): no message, no traceback
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_FAILURE)
        except Exception as err:  # noqa: BLE001 - the one place that turns errors into exit codes
            sys.exit(report_error(err))

    return wrapper


# Group options, accepted before the sub-command (``upscale -v a.png``) and after it (``upscale a.png -v``).
_GROUP_FLAG = re.compile(r"^(-[vq]+|--verbose|--quiet|--version|-h|--help)$")
_VERBOSITY_KEY = "upscale.verbosity"


class _StderrHandler(logging.Handler):
    """Our log lines on whatever stderr is current when they are emitted (click's, under a test
    runner), each prefixed ``upscale:``; one handler, so no line is ever printed twice. A record
    logged with ``extra={"params": (...)}`` has those parameter names worded as flags."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"upscale: {word_as_flags(record, printable(record.getMessage()))}"
            bars = getattr(sys.modules.get("tqdm"), "tqdm", None)
            if bars is not None and getattr(bars, "_instances", None):   # a progress bar is drawn:
                bars.write(line, file=sys.stderr)                          # clear it, write, redraw it
            else:
                click.echo(line, err=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def _not_ours(record: logging.LogRecord) -> bool:
    return not (record.name == "upscale" or record.name.startswith("upscale."))


def _own_handler() -> None:
    log = logging.getLogger("upscale")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        log.addHandler(handler)
        ctx = click.get_current_context(silent=True)
        if ctx is not None:  # the command's own; gone when it ends (an embedding program keeps its logging)
            ctx.find_root().call_on_close(lambda: log.removeHandler(handler))
    # the plain stderr handler basicConfig gave the root (other libraries' lines) never repeats ours;
    # other handlers (a host program's, a test's capture) still see our records
    for root_handler in logging.getLogger().handlers:
        if type(root_handler) is logging.StreamHandler and _not_ours not in root_handler.filters:
            root_handler.addFilter(_not_ours)


def set_verbosity(level: int) -> None:
    """0: our info lines only; 1 (-v): other libraries' info too; 2 (-vv): debug."""
    logging.basicConfig(level=logging.WARNING if level == 0 else logging.INFO if level == 1 else logging.DEBUG,
                        format="upscale: %(message)s")
    _own_handler()
    if level:
        logging.getLogger().setLevel(logging.INFO if level == 1 else logging.DEBUG)
    logging.getLogger("upscale").setLevel(logging.DEBUG if level > 1 else logging.INFO)


def _quieter(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """-q given after a command without its own -q: our info lines off, as the group's -q does."""
    if value:
        logging.getLogger("upscale").setLevel(logging.WARNING)


def _more_verbose(ctx: click.Context, param: click.Parameter, count: int) -> None:
    """-v given after the sub-command: adds to the group's count."""
    if count:
        level = ctx.meta.get(_VERBOSITY_KEY, 0) + count
        ctx.meta[_VERBOSITY_KEY] = level
        set_verbosity(level)


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from .. import __version__
        click.echo(f"upscale, version {__version__}")
        ctx.exit()


def _usage_line(err: click.UsageError) -> str:
    """One line: ``upscale: usage: <message> (see upscale CMD --help)``."""
    names, ctx = [], err.ctx
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    command = " ".join(["upscale", *names])
    message = " ".join(err.format_message().split()).rstrip(".")
    return f"upscale: usage: {message} (see {command} --help)"


class _OneLineUsageError(click.UsageError):
    """A click usage error shown as one line on stderr (click's own takes four), exit 2."""

    def __init__(self, err: click.UsageError) -> None:
        super().__init__(err.format_message(), err.ctx)
        self.line = _usage_line(err)

    def show(self, file: Any = None) -> None:
        click.echo(self.line, err=True)


def _one_line(err: click.UsageError) -> click.UsageError:
    no_args_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
    if isinstance(err, _OneLineUsageError) or (no_args_help and isinstance(err, no_args_help)):
        return err
    return _OneLineUsageError(err)


class DefaultGroup(click.Group):
    """A group whose first argument after its own options, when it is not a sub-command, is handed to
    ``run``; each sub-command also takes the group's -v and --version."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        at = 0
        while at < len(args) and _GROUP_FLAG.match(args[at]):
            at += 1
        if at < len(args) and args[at] not in self.commands:
            args = [*args[:at], self.default_command, *args[at:]]
        return super().parse_args(ctx, args)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as err:
            raise _one_line(err) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise _one_line(err) from None

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _common_options(cmd)
        super().add_command(cmd, name)


def _common_options(cmd: click.Command) -> None:
    """-v/-vv, -q and --version after ``cmd`` (and after each of its own sub-commands), as before it."""
    cmd.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_more_verbose,
                                   help="More logging (-v info, -vv debug); same as before the command."))
    cmd.params.append(click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                                   callback=_show_version, hidden=True))
    if not any(p.name == "quiet" for p in cmd.params):
        cmd.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_quieter,
                                       help="No info lines; same as before the command."))
    for sub in getattr(cmd, "commands", {}).values():
        _common_options(sub)


EPILOG = """\b
Exit codes: 0 ok, 1 failure, 2 usage error, 3 batch (or several images) finished with some failures,
130 interrupted.
Set UPSCALE_DEBUG=1 to see tracebacks."""


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(package_name="upscale", prog_name="upscale")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress or info lines (the sub-command's -q).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Single-image super-resolution with the SRGAN/ESRGAN family.

    \b
    upscale photo.jpg -s 4            upscale one image (the 'run' command)
    upscale *.jpg -s 4                several images, the model loaded once
    upscale batch DIR --out OUT       a folder, with progress, resume and a report
    upscale models                    the model registry
    upscale bench --data Set5 -s 4    quality and speed against classic interpolation
    upscale train --data DIR ...      train or fine-tune a generator
    upscale tune -m MODEL             measure what runs a model fastest here (--tile/--compile/--backend auto)
    """
    # Our own info lines (e.g. "model is x4; resizing to x3") show by default; -v shows other
    # libraries' info too, -vv debug. -q lowers the "upscale" logger to warnings.
    ctx.meta[_VERBOSITY_KEY] = verbose
    set_verbosity(verbose)
    if quiet:
        logging.getLogger("upscale").setLevel(logging.WARNING)
        # hand -q to the sub-command as its own -q, where it has one
        ctx.default_map = {name: {"quiet": True} for name, cmd in ctx.command.commands.items()
                           if any(p.name == "quiet" for p in cmd.params)}


def _register() -> None:
    # Sub-commands, added explicitly (nothing registers itself on import).
    from .run import run
    cli.add_command(run)
    from .batch import batch; cli.add_command(batch)  # noqa: E702
    from .bench import bench; cli.add_command(bench)  # noqa: E702
    from .train import train; cli.add_command(train)  # noqa: E702
    from .models import models; cli.add_command(models)  # noqa: E702
    from .interp import interp; cli.add_command(interp)  # noqa: E702
    from .convert import convert; cli.add_command(convert)  # noqa: E702
    from .tune import tune; cli.add_command(tune)  # noqa: E702


_register()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (kill, timeout, docker stop, a scheduler) ends a command as Ctrl-C does: its temp files
    # removed, "interrupted", exit 130 (batch and train stop cleanly, as they do on Ctrl-C)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    from .stdout import guard_stdout
    guard_stdout()
    try:
        cli()
    except errors.StdoutError as err:   # --help or --version, written before any command runs
        sys.exit(report_error(err))
