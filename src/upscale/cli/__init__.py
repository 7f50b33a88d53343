"""Command line: parse -> call the API -> map errors to one-line messages and exit codes.

This package is the only place that prints. Each sub-command lives in its own module here and is
added to the group explicitly below; ``upscale IMAGE ...`` (no sub-command) runs ``upscale run``.

Exit codes: 0 ok; 1 failure; 2 usage; 3 batch finished with some failures; 130 interrupted.
"""

from __future__ import annotations

import logging
import os
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
    (errors.TrainingError, EXIT_FAILURE, "training stopped"),
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
    "init": "--init", "report": "--report", "output": "--output", "force": "--force", "resume": "--resume",
}


def word_as_flags(err: BaseException, message: str) -> str:
    """``message`` with the library parameter names that ``err`` declares written as their flags."""
    import re

    for param in getattr(err, "params", ()):
        flag = FLAG_FOR_PARAM.get(param)
        if flag:
            message = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w-])", flag, message)
    return message


def classify(err: BaseException) -> tuple[int, str]:
    for cls, code, label in ERROR_TABLE:
        if isinstance(err, cls):
            return code, label
    return EXIT_FAILURE, "internal error"


def report_error(err: BaseException) -> int:
    """Print the one-line message for ``err`` on stderr and return its exit code."""
    code, label = classify(err)
    if os.environ.get("UPSCALE_DEBUG") == "1":
        traceback.print_exception(err, file=sys.stderr)
    msg = word_as_flags(err, str(err).replace("\n", " ")) or type(err).__name__
    if not isinstance(err, errors.UpscaleError):
        msg = f"{type(err).__name__}: {msg} (set UPSCALE_DEBUG=1 for a traceback)"
    click.echo(f"upscale: {label}: {msg}", err=True)
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
        except Exception as err:  # noqa: BLE001 - the one place that turns errors into exit codes
            sys.exit(report_error(err))

    return wrapper


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a sub-command, is handed to ``run``."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


EPILOG = """\b
Exit codes: 0 ok, 1 failure, 2 usage error, 3 batch finished with some failures, 130 interrupted.
Set UPSCALE_DEBUG=1 to see tracebacks."""


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(package_name="upscale")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Single-image super-resolution with the SRGAN/ESRGAN family.

    \b
    upscale photo.jpg -s 4            upscale one image (the 'run' command)
    upscale batch DIR --out OUT       a folder, with progress, resume and a report
    upscale models                    the model registry
    upscale bench --data Set5 -s 4    quality and speed against classic interpolation
    upscale train --data DIR ...      train or fine-tune a generator
    """
    # Our own info lines (e.g. "model is x4; resizing to x3") show by default; -v shows other
    # libraries' info too, -vv debug. Commands' -q lowers the "upscale" logger to warnings.
    logging.basicConfig(level=logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG,
                        format="upscale: %(message)s")
    logging.getLogger("upscale").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


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


_register()


def main() -> None:
    cli()
