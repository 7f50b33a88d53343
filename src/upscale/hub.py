"""ModelSpec -> a verified local weights file. The only module that imports ``huggingface_hub`` (with
``hublog``, which only words its log lines).

A Hub model is downloaded once with ``hf_hub_download`` into the Hugging Face cache (its own progress
bar), its sha256 is checked against the registry before anything reads it, and it is converted once
into a safetensors file with our architecture metadata under ``$UPSCALE_CACHE/models`` (default
``~/.cache/upscale``, ``upscale.machine.cache_dir``). The converted file's own sha256 is recorded when it
is written (``verified/<file>.json``, with its size and mtime): later runs check the stamp, rehash
only when it changed, and convert again from the verified download when the file is not the one we
wrote (``upscale models pull`` rehashes it whatever the stamp says). Later runs make no network
request. Processes that need the same model at once fetch and convert it once: the others wait on
its lock (``atomic.updating``) and then take that file, never mistaking it, written but not yet
recorded, for a changed one.

Before a download, the Hub's host is resolved and connected to once with a short timeout, and must
say something to a plain request, so an unreachable or silent Hub is a one-line ``OfflineError``
within seconds rather than a storm of retries; then the file's metadata is asked for, and a server
error (5xx) is asked again after ``SERVER_RETRY_WAITS_S`` only, so a failing Hub is a one-line
``DownloadError`` with its HTTP status within seconds (huggingface_hub alone retries for ~25 s) while
a passing one still gets through. huggingface_hub's own retry and resume warnings reach the log once
each, one line per retry (``hublog``).

Environment variables are read at call time (not at import), so a program or a test can set them
late: ``UPSCALE_CACHE``; ``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` with
the meanings huggingface_hub documents.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from . import atomic, errors
from .hublog import tame_hub_logging
from .machine import cache_dir, package_version
from .registry import FileSource, HubSource, ModelSpec, PackageSource, sha256_file

log = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}
CONVERT_WAIT_S = 3600     # how long a process waits for another that is downloading and converting a model


# --- locations ------------------------------------------------------------------------------------
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


def local_path(spec: ModelSpec) -> Path:
    """Where ``weights_path(spec)`` finds (or, for a Hub model not fetched yet, will put) its file."""
    return converted_path(spec) if isinstance(spec.source, HubSource) else Path(spec.source.path)


def is_cached(spec: ModelSpec) -> bool:
    """True when ``weights_path(spec)`` would need no download."""
    return local_path(spec).is_file()


# --- the public entry points ----------------------------------------------------------------------
def weights_path(spec: ModelSpec, *, rehash: bool = False) -> Path:
    """A local, verified weights file for ``spec``.

    package -> the file shipped in the wheel; file -> the registered file (its sha256 re-checked);
    hub -> the converted safetensors in our cache, downloading and converting it the first time. A
    converted file whose size and time are those recorded is trusted without reading it, unless
    ``rehash`` (``upscale models pull``): then its sha256 is checked too, and a file changed in place
    is converted again.
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
    if target.is_file() and _still_verified(target, None, full=rehash):
        return target
    # huggingface_hub's cache locks its own downloads, and a second process finds the blob there; the
    # conversion is locked here, and only once the download worked (an offline run leaves no trace)
    blob = _download(source.repo_id, source.filename, source.revision, source.sha256, model=spec.name)
    with contextlib.ExitStack() as stack:     # one process converts; another waits, then takes its file
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(atomic.updating(target, timeout_s=CONVERT_WAIT_S))
        except TimeoutError:
            raise errors.WeightsError(f"model {spec.name!r}: another process has been converting it for over "
                                      f"{CONVERT_WAIT_S // 60} minutes; try again when it is done", path=target) from None
        except OSError as err:                # a cache that cannot be written: the conversion says why
            log.debug("cannot lock %s: %s", target, err)
        if target.is_file():
            if _still_verified(target, None, full=rehash):
                return target
            log.warning("%s is not the file converted from the verified download (its sha256 differs from the "
                        "one recorded); converting again", target)
            target.unlink(missing_ok=True)
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
    if _still_verified(path, sha256, rehash=False):
        return path
    _verify(path, sha256, repo_id=repo_id, filename=filename)
    _remember(path, sha256)
    return path


# --- what we verified: sha256 + a size/mtime stamp, so a file is hashed again only when it changed ------
def _record_path(path: Path, sha256: str | None) -> Path:
    """A Hub file's record is keyed by its expected hash; a converted file's by its own name."""
    return cache_dir() / "verified" / f"{sha256 or path.name}.json"


def _stamp(path: Path) -> dict[str, object]:
    real = path.resolve()
    st = real.stat()
    return {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remember(path: Path, sha256: str, *, keyed_by_hash: bool = True) -> None:
    """Record that ``path`` (as it is now) has ``sha256``. Losing the record costs one rehash."""
    record = _record_path(path, sha256 if keyed_by_hash else None)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(record, json.dumps({**_stamp(path), "sha256": sha256}), durable=False)
    except OSError as err:
        log.debug("cannot record the hash of %s: %s", path, err)


def _still_verified(path: Path, sha256: str | None, *, rehash: bool = True, full: bool = False) -> bool:
    """Whether ``path`` is the file recorded: same stamp, or (``rehash``) a changed stamp but the same
    sha256, which is then recorded again; ``full``: the same sha256 whatever the stamp says (bytes
    changed in place with the time put back). ``sha256`` None: a converted file, keyed by its name."""
    try:
        record = json.loads(_record_path(path, sha256).read_text(encoding="utf-8"))
        stamp = _stamp(path)
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or (sha256 is not None and record.get("sha256") != sha256):
        return False
    if all(record.get(k) == v for k, v in stamp.items()) and not full:
        return True
    if not rehash or not isinstance(record.get("sha256"), str) or sha256_file(path) != record["sha256"]:
        return False
    _remember(path, record["sha256"], keyed_by_hash=sha256 is not None)
    return True


# --- internals ------------------------------------------------------------------------------------


def _check_local_file(spec: ModelSpec, source: FileSource) -> Path:
    if not source.path.is_file():
        raise errors.WeightsError(f"the file registered as model {spec.name!r} is gone; register another in its "
                                  f"place with `upscale models add {spec.name} PATH --replace`", path=source.path)
    if source.sha256 is not None:
        actual = sha256_file(source.path)
        if actual != source.sha256:
            raise errors.ChecksumError(f"model {spec.name!r} changed since it was registered: sha256 {actual}, "
                                       f"expected {source.sha256}; register it again with "
                                       f"`upscale models add {spec.name} {source.path} --replace`",
                                       path=source.path, expected=source.sha256, actual=actual)
    return source.path


def _download(repo_id: str, filename: str, revision: str, sha256: str | None, *, model: str | None,
              verify: bool = True) -> Path:
    """``hf_hub_download`` with our error types; verifies ``sha256`` when given and ``verify``.

    A file of a pinned commit already in the Hugging Face cache is taken from there without a request;
    otherwise the Hub is probed once (``_unreachable``) before huggingface_hub starts its retries."""
    what = f"{repo_id}/{filename}@{revision[:12]}"
    needed_by = f"model {model!r} needs {what}" if model else f"{what} is needed"
    hint = ("pass --weights PATH or register a copy with `upscale models add NAME PATH`" if model
            else "download it by hand into the Hugging Face cache")
    tame_hub_logging()
    path = _cached(repo_id, filename, revision) if not offline() and _COMMIT.match(revision) else None
    if path is None and not offline():
        reason = _unreachable(_endpoint())
        if reason:
            raise errors.OfflineError(f"{needed_by} and the Hub cannot be reached ({reason}); {hint}")
        status = _server_error(repo_id, filename, revision)
        if status is not None:
            raise errors.DownloadError(f"{needed_by}; the Hub answered HTTP {status} ({len(SERVER_RETRY_WAITS_S) + 1} "
                                       "tries); try again later")
    if path is None:
        path = _hub_download(repo_id, filename, revision, needed_by=needed_by, hint=hint)
    if sha256 is not None and verify:
        _verify(path, sha256, repo_id=repo_id, filename=filename, model=model)
    return path


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _download_kwargs(revision: str) -> dict[str, object]:
    return {"revision": revision, "library_name": "upscale", "library_version": package_version("upscale") or "0.0.0",
            "cache_dir": hub_cache_dir(), "endpoint": os.environ.get("HF_ENDPOINT") or None}


def _cached(repo_id: str, filename: str, revision: str) -> Path | None:
    """The file of a pinned commit when the Hugging Face cache has it (no request), else None."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True, **_download_kwargs(revision)))
    except (LocalEntryNotFoundError, EntryNotFoundError, OSError):
        return None


def _hub_download(repo_id: str, filename: str, revision: str, *, needed_by: str, hint: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                       LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline(), **_download_kwargs(revision)))
    except LocalEntryNotFoundError as err:
        cause = err.__cause__
        if isinstance(cause, HfHubHTTPError) and cause.response is not None and not offline():
            raise errors.DownloadError(f"{needed_by}; the Hub answered HTTP {cause.response.status_code}") from None
        reason = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
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


# --- reaching the Hub ---------------------------------------------------------------------------------
PROBE_TIMEOUT_S = 3.0  # per step (name lookup, connect); a reachable Hub answers in well under a second
ANSWER_TIMEOUT_S = 10.0  # for the first byte of an answer (huggingface_hub waits 10 s for metadata too)
SERVER_RETRY_WAITS_S = (1.0, 2.0)   # a server error on the file's metadata is asked again after these
_SERVER_ERRORS = (408, 500, 502, 503, 504)  # huggingface_hub's retried statuses but 429 (it waits as told)


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _unreachable(endpoint: str) -> str | None:
    """Why ``endpoint`` (or the proxy that requests to it go through) cannot be reached, in a few words;
    None when a TCP connection opens and the server answers (``_silent``). Name lookup runs in a thread
    so a hanging resolver has a deadline."""
    url = urlsplit(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return None
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or (443 if proxied.scheme == "https" else 80)
    found: dict[str, object] = {}

    def lookup() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            found["error"] = err

    worker = threading.Thread(target=lookup, name="upscale-hub-lookup", daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT_S)
    if "addresses" not in found:
        return f"{host} does not resolve" if "error" in found else f"no answer resolving {host}"
    deadline, last = time.monotonic() + PROBE_TIMEOUT_S, "no address"
    for family, kind, proto, _, address in found["addresses"][:3]:  # type: ignore[index]
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(max(0.2, deadline - time.monotonic()))
                sock.connect(address)
                silent = _silent(sock, host)
            if silent is None:
                return None
            last = silent                # an address that answers nothing: the next may (IPv4 after IPv6)
        except OSError as err:
            last = err.strerror or type(err).__name__
    return last if last.endswith("does not answer") else f"cannot connect to {host}:{port}: {last}"


def _server_error(repo_id: str, filename: str, revision: str) -> int | None:
    """The HTTP status of a server error that the file's metadata request (a HEAD, as huggingface_hub
    makes it) still gets after ``SERVER_RETRY_WAITS_S``; None on any other answer, which
    huggingface_hub's download then takes, or words as its error."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    for wait in (*SERVER_RETRY_WAITS_S, None):
        try:
            get_hf_file_metadata(url, library_name="upscale", library_version=package_version("upscale") or "0.0.0",
                                 endpoint=endpoint)
            return None
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status not in _SERVER_ERRORS:
                return None
        except Exception:  # noqa: BLE001 - a transport error: huggingface_hub's download meets and words it
            return None
        if wait is None:
            return status
        log.info("the Hub answered HTTP %s for %s/%s; retrying in %g s", status, repo_id, filename, wait)
        time.sleep(wait)
    return None


def _silent(sock: socket.socket, host: str) -> str | None:
    """Why a connected server is of no use: it says nothing at all within ``ANSWER_TIMEOUT_S`` to a
    plain request (a TLS server answers it with an alert, a proxy or web server with an error page,
    either of which will do); None when any answer comes. A server that accepts and then stays
    silent held each of huggingface_hub's six attempts for a minute: six and a half minutes."""
    sock.settimeout(ANSWER_TIMEOUT_S)
    try:
        sock.sendall(f"HEAD / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii", "replace"))
        sock.recv(1)
    except socket.timeout:
        return f"{host} accepts connections but does not answer"
    except OSError:
        return None          # reset or closed: it answered, in its way
    return None


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
    """Strictly load ``blob`` into the registered architecture and save it as safetensors, atomically;
    the written file's sha256 is recorded (``_remember``) for later runs to check."""
    from . import loading

    hparams = dict(spec.hparams)
    model = loading.load_model(blob, arch=spec.arch, hparams=hparams)
    source = spec.source
    assert isinstance(source, HubSource)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = loading.save_model(target, loading.model_state_dict(model), spec.arch, hparams, extra_metadata={
        "upscale.name": spec.name,
        "upscale.source": f"hf://{source.repo_id}/{source.filename}@{source.revision}",
        "upscale.source_sha256": source.sha256,
        loading.META_BF16_SAFE: "true" if spec.bf16_safe else "false",
    })
    _remember(target, digest, keyed_by_hash=False)
