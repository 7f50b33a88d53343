"""A small, real Hugging Face Hub stand-in for tests: a threaded HTTP server on 127.0.0.1.

It answers ``HEAD`` and ``GET /{owner}/{name}/resolve/{revision}/{filename}`` the way the Hub does for
an LFS file served in place: ``X-Repo-Commit``, ``ETag`` and ``X-Linked-Etag`` (the file's sha256,
quoted), ``X-Linked-Size``, ``Content-Length``, ``Accept-Ranges`` and ``Range`` requests (206 with
``Content-Range``), which is what ``huggingface_hub.hf_hub_download`` reads when ``HF_ENDPOINT``
points here. Missing repos, revisions and files get 404/401 with the Hub's ``X-Error-Code``.

Each file has a failure mode:
- ``ok``: serve it;
- ``404``: answer as if the file were not in the repo;
- ``cut``: send the headers of the whole file, then close the connection halfway through the body
  (and right after the headers on any resumed ``Range`` request);
- ``wrong``: serve other bytes while the headers still announce the registered file's sha256;
- ``flaky``: answer the first ``failures`` requests for the file with ``status`` (503 by default: a
  transient server error the client retries), then serve it; a large ``failures`` is a server that keeps
  failing (``status`` 500: a broken one).

``requests`` records (method, path) of every request, for "no network on the second run" checks.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

MODES = ("ok", "404", "cut", "wrong", "flaky")


@dataclass
class HubFile:
    content: bytes               # the true file (its sha256 goes into the headers)
    mode: str = "ok"
    served: bytes | None = None  # what mode "wrong" sends instead
    failures: int = 0            # mode "flaky": how many requests still get ``status``
    status: int = 503            # mode "flaky": the error they get

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


class HubServer:
    """``with HubServer() as hub: hub.add("org/repo", "w.pth", data); os.environ["HF_ENDPOINT"] = hub.url``."""

    def __init__(self, commit: str = "0123456789abcdef0123456789abcdef01234567") -> None:
        self.commit = commit
        self.files: dict[tuple[str, str], HubFile] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hubserver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, filename: str, content: bytes, *, mode: str = "ok",
            served: bytes | None = None, failures: int = 1, status: int = 503) -> HubFile:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode == "wrong" and served is None:
            served = bytes(reversed(content))
        entry = HubFile(content, mode, served, failures if mode == "flaky" else 0, status)
        self.files[(repo_id, filename)] = entry
        return entry

    def count(self, method: str | None = None) -> int:
        """Requests for repository files (``method`` ones, or all): the client's reachability probe,
        a request for ``/``, is not counted."""
        with self._lock:
            return sum(1 for m, path in self.requests if (method is None or m == method) and path != "/")

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every reply has a length

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _error(self, status: int, code: str, *, commit: bool) -> None:
            message = f"{code}\n".encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
            if commit:
                self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(message)

        def _serve(self, body: bool) -> None:
            path = urlsplit(self.path).path
            hub.record(self.command, path)
            match = _RESOLVE.match(path)
            if match is None:
                return self._error(404, "EntryNotFound", commit=False)
            repo_id, revision, filename = (unquote(g) for g in match.groups())
            if not any(repo == repo_id for repo, _ in hub.files):
                return self._error(401, "RepoNotFound", commit=False)
            if revision not in (hub.commit, "main"):
                return self._error(404, "RevisionNotFound", commit=False)
            entry = hub.files.get((repo_id, filename))
            if entry is None or entry.mode == "404":
                return self._error(404, "EntryNotFound", commit=True)
            with hub._lock:
                failing = entry.failures > 0
                entry.failures -= failing
            if failing:
                return self._error(entry.status, "ServiceUnavailable" if entry.status == 503 else "ServerError",
                                   commit=False)

            data = entry.served if entry.mode == "wrong" else entry.content
            assert data is not None
            start = 0
            ranged = _RANGE.match(self.headers.get("Range", ""))
            if ranged and int(ranged.group(1)) < len(data):
                start = int(ranged.group(1))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("ETag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            if entry.mode == "cut":
                if not start:
                    self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            self.wfile.write(data[start:])

    return Handler
