"""Typed errors. Each carries what a user needs to act on it; `cli` maps them to one-line messages.

Rules:
- ``str(err)`` is a complete one-line message that names the file or model involved.
- Never raise bare ``Exception``/``RuntimeError`` for a user-facing problem; pick (or add) a class here.
- Exit codes live in one table in ``upscale.cli`` (usage problems 2, failures 1).
- The library names its own parameters (``tile_px``, ``outscale``), never command-line flags: pass
  ``params=("tile_px",)`` and ``upscale.cli`` rewords those names as the flags that set them.
"""

from __future__ import annotations

from pathlib import Path


class UpscaleError(Exception):
    """Base class of every error the user should see as a message rather than a traceback."""

    def __init__(self, message: str, *, path: str | Path | None = None, params: tuple[str, ...] = ()) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        self.params = tuple(params)  # library parameter names the message mentions (the CLI words them as flags)
        super().__init__(f"{self.path}: {message}" if self.path else message)


# --- usage: the command line or the API was called wrongly (exit 2) --------------------------------
class UsageError(UpscaleError):
    """Options that cannot work together or values out of range (e.g. --alpha 1.5)."""


class PrecisionError(UsageError):
    """A precision the chosen device cannot run (fp16 on CPU, bf16 without support)."""


class DeviceError(UsageError):
    """A device that is not available here (cuda without a GPU, mps off macOS)."""


class ResourceError(UpscaleError):
    """The machine lacks what the job needs (memory for the output, disk); checked before the work."""


# --- images -------------------------------------------------------------------------------------
class ImageReadError(UpscaleError):
    """An input image is missing, empty, truncated, not an image, too large, or of an unsupported mode."""


class ImageWriteError(UpscaleError):
    """An output could not be written (unwritable folder, would overwrite the input, exists already)."""


# --- weights and architectures -------------------------------------------------------------------
class WeightsError(UpscaleError):
    """A weights file is corrupt, unsafe (pickled code), or of an unknown layout."""


class UnsafeWeightsError(WeightsError):
    """A .pth/.pt whose pickle would run code; refused without running it."""


class UnknownArchitectureError(WeightsError):
    """No architecture recognises the keys and shapes of a state dict."""


class ArchitectureMismatchError(WeightsError):
    """The weights were recognised as an architecture but do not load strictly into it."""

    def __init__(self, message: str, *, path: str | Path | None = None, arch: str | None = None,
                 missing: list[str] | None = None, unexpected: list[str] | None = None) -> None:
        self.arch = arch
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        super().__init__(message, path=path)


# --- registry and downloads ----------------------------------------------------------------------
class RegistryError(UpscaleError):
    """models.toml (packaged or user) is invalid: duplicate name, missing field, unknown architecture."""


class ModelNotFoundError(UsageError):
    """-m NAME is neither a registry name nor an existing file."""


class DownloadError(UpscaleError):
    """A download failed (404, connection cut, server error); nothing partial is left behind."""


class OfflineError(DownloadError):
    """Weights are needed but the Hub cannot be reached (HF_HUB_OFFLINE=1 or no network)."""


class ChecksumError(DownloadError):
    """A downloaded file's sha256 differs from the registry's; the file was removed."""

    def __init__(self, message: str, *, path: str | Path | None = None, expected: str = "",
                 actual: str = "") -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(message, path=path)


class InterpolationError(UpscaleError):
    """Two networks cannot be interpolated: different architectures, keys or shapes."""


class ConversionError(WeightsError):
    """An ncnn .param/.bin pair (or other foreign format) cannot be mapped to one of our architectures."""


# --- training ------------------------------------------------------------------------------------
class DataError(UpscaleError):
    """A training/benchmark data folder is empty, unreadable, or its LR/HR pairs do not match."""


class TrainingError(UpscaleError):
    """Training cannot go on (NaN/inf loss, bad config); the last good checkpoint is kept."""


class CheckpointError(UpscaleError):
    """A checkpoint is missing, corrupt, or from an incompatible configuration."""


# --- appended by the loading/hub redesign --------------------------------------------------------
class WeightsWriteError(ImageWriteError, WeightsError):
    """A weights file (convert, interp, a converted download) cannot be written where asked: its folder
    is missing or is a file, it exists already, it is one of the inputs, or the write failed. A
    ``WeightsError`` for the library; the CLI table words it as "cannot write output" (exit 1)."""


# --- appended by the tuner (issue 14) ------------------------------------------------------------
class TuneCacheError(UpscaleError):
    """The tuning cache (``<cache>/tune.json``) cannot be written: its folder cannot be made, or the
    write failed. Reading never raises: a corrupt cache is ignored with a warning."""


# --- appended by the OpenVINO backend (issue 14) -------------------------------------------------
class BackendError(UpscaleError):
    """A window backend (OpenVINO, winograd) failed on a network that torch runs: it cannot convert
    it, compile it (or its kernels) for a window shape, or run it. The message names the model and says
    to use backend torch."""


# --- appended by the CLI's standard output (a full disk, a closed descriptor) -----------------------
class StdoutError(UpscaleError):
    """Standard output cannot be written: ``> /dev/full``, a full disk, a closed (``>&-``) or read-only
    descriptor. A pipe closed by its reader (``| head``) is not this error: the command ends quietly."""


# --- wording shared by the modules that raise these ------------------------------------------------
LISTED = 4  # how many names a message lists before "(+N more)"


def listed(items: list[str]) -> str:
    """``a, b, c, d (+3 more)``: the first few of ``items`` for a one-line message."""
    shown = ", ".join(str(i) for i in items[:LISTED])
    return shown + (f" (+{len(items) - LISTED} more)" if len(items) > LISTED else "")


def first_sentence(e: BaseException) -> str:
    """The first line (and sentence) of an exception's text, or its type when the text is empty."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(". ")[0].strip()
    if len(text) > 160:
        text = text[:157] + "..."
    return text if len(text) > 8 else f"{type(e).__name__}{': ' + text if text else ''}"
