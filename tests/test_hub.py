"""Verified Hub downloads, end to end against a real HTTP server on 127.0.0.1 (issue 3, Must show 1).

The server (tests/hubserver.py) speaks the part of the Hub protocol ``hf_hub_download`` uses; the
registry entry under test lives in a user registry written to a temp folder. Environment variables
are set per test; ``upscale.hub`` reads them at call time.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors
import torch
from click.testing import CliRunner
from hubserver import HubServer

from upscale import errors, hub, loading, registry, user_registry
from upscale.archs import build_module
from upscale.cli import cli

REPO = "test-org/tiny-esrgan"
FILENAME = "weights/tiny_x4.pth"
HPARAMS = {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 4}


def tiny_pth() -> tuple[bytes, torch.nn.Module]:
    """A small random RRDBNet saved the way BasicSR saves (wrapped in params_ema, .pth)."""
    torch.manual_seed(0)
    net = build_module("rrdbnet", HPARAMS).eval()
    buf = io.BytesIO()
    torch.save({"params_ema": net.state_dict()}, buf)
    return buf.getvalue(), net


def files_under(root: Path) -> list[Path]:
    """Regular files and symlinks (dangling ones too) below ``root``."""
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.exists() else []


@pytest.fixture
def server():
    with HubServer() as srv:
        yield srv


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """A private Hub cache, our cache and config dir, and HF_ENDPOINT pointing at the local server."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "upscale-cache"))
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "config"))
    # huggingface_hub reads HF_HUB_DISABLE_TELEMETRY at import; without it the first request also asks
    # the (import-time) endpoint for its agent list, which has nothing to do with these tests.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return tmp_path


def register(data: bytes, commit: str, *, name: str = "tiny-hub") -> registry.ModelSpec:
    """A user-registry entry for REPO/FILENAME with the sha256 of ``data``."""
    entry = user_registry.format_entry({
        "name": name, "description": "tiny test network", "arch": "rrdbnet", "scale": 4, "kind": "gan",
        "license": "MIT", "hparams": HPARAMS,
        "source": {"type": "hub", "repo_id": REPO, "filename": FILENAME, "revision": commit,
                   "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)},
    })
    path = registry.user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(entry, encoding="utf-8")
    return registry.get_model(name)


def test_good_download_verifies_converts_once_and_then_needs_no_network(env, server, monkeypatch):
    data, net = tiny_pth()
    server.add(REPO, FILENAME, data)
    spec = register(data, server.commit)
    assert not hub.is_cached(spec)

    path = hub.weights_path(spec)
    assert server.count("HEAD") == 2 and server.count("GET") == 1  # ours (a 5xx is retried briefly), then its own
    assert path.parent == env / "upscale-cache" / "models" and path.suffix == ".safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["upscale.arch"] == "rrdbnet" and meta["upscale.source_sha256"] == hashlib.sha256(data).hexdigest()
    model = loading.load_model(path)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.module(x), net(x))
    blobs = files_under(env / "hf" / "hub" / "models--test-org--tiny-esrgan" / "blobs")
    assert [hashlib.sha256(b.read_bytes()).hexdigest() for b in blobs] == [hashlib.sha256(data).hexdigest()]

    converted_at = path.stat().st_mtime_ns
    server.reset_counts()
    assert hub.weights_path(spec) == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.weights_path(spec) == path
    assert server.count() == 0, server.requests
    assert path.stat().st_mtime_ns == converted_at  # converted once, not again
    assert hub.is_cached(spec)

    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    assert any(line.split()[0] == "tiny-hub" and line.split()[-1] == "yes" for line in result.output.splitlines())


def test_hash_mismatch_deletes_download_and_names_both_hashes(env, server):
    data, _ = tiny_pth()
    served = data[:-16] + bytes(16)  # same size, different bytes: a mislabelled mirror
    server.add(REPO, FILENAME, data, mode="wrong", served=served)
    spec = register(data, server.commit)
    expected, actual = hashlib.sha256(data).hexdigest(), hashlib.sha256(served).hexdigest()

    with pytest.raises(errors.ChecksumError) as info:
        hub.weights_path(spec)
    err = info.value
    assert (err.expected, err.actual) == (expected, actual)
    assert expected in str(err) and actual in str(err) and "tiny-hub" in str(err) and "\n" not in str(err)
    assert server.count("GET") == 1
    storage = env / "hf" / "hub" / "models--test-org--tiny-esrgan"
    assert files_under(storage / "blobs") == [] and files_under(storage / "snapshots") == []
    assert files_under(env / "upscale-cache") == []     # the conversion's lock is taken after a good download


def test_cli_pull_with_hash_mismatch_exits_1_with_both_hashes(env, server):
    data, _ = tiny_pth()
    served = bytes(reversed(data))
    server.add(REPO, FILENAME, data, mode="wrong", served=served)
    register(data, server.commit)

    result = CliRunner().invoke(cli, ["models", "pull", "tiny-hub"])
    assert result.exit_code == 1, result.output
    assert "checksum mismatch" in result.output
    assert hashlib.sha256(data).hexdigest() in result.output and hashlib.sha256(served).hexdigest() in result.output
    assert files_under(env / "hf" / "hub" / "models--test-org--tiny-esrgan" / "blobs") == []


def test_cli_pull_good_download_prints_the_converted_path(env, server):
    data, _ = tiny_pth()
    server.add(REPO, FILENAME, data)
    spec = register(data, server.commit)
    result = CliRunner().invoke(cli, ["models", "pull", "tiny-hub"])
    assert result.exit_code == 0, result.output
    assert str(hub.converted_path(spec)) in result.output


def assert_nothing_partial(root: Path) -> None:
    """No temp file, blob, snapshot entry or converted file anywhere below ``root`` (huggingface_hub's
    empty ``.no_exist`` markers, its record that a file is missing, are not downloads)."""
    leftovers = [p for p in files_under(root) if ".no_exist" not in p.parts and (
        p.name.endswith((".incomplete", ".tmp")) or "blobs" in p.parts or "snapshots" in p.parts
        or p.suffix in (".pth", ".safetensors"))]
    assert leftovers == []


def test_404_is_a_one_line_download_error(env, server):
    data, _ = tiny_pth()
    server.add(REPO, FILENAME, data, mode="404")
    spec = register(data, server.commit)
    with pytest.raises(errors.DownloadError) as info:
        hub.weights_path(spec)
    assert type(info.value) is errors.DownloadError
    message = str(info.value)
    assert "\n" not in message and "tiny-hub" in message and FILENAME in message and "404" in message
    assert_nothing_partial(env)


def test_connection_cut_halfway_leaves_no_partial_file(env, server):
    data, _ = tiny_pth()
    server.add(REPO, FILENAME, data, mode="cut")
    spec = register(data, server.commit)
    with pytest.raises(errors.DownloadError) as info:
        hub.weights_path(spec)
    assert type(info.value) is errors.DownloadError
    message = str(info.value)
    assert "\n" not in message and "tiny-hub" in message and FILENAME in message
    assert server.count("GET") >= 2  # the client tried to resume, and still nothing was kept
    assert_nothing_partial(env)


def test_offline_mode_names_model_file_and_remedies_without_a_request(env, server, monkeypatch):
    data, _ = tiny_pth()
    server.add(REPO, FILENAME, data)
    spec = register(data, server.commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(errors.OfflineError) as info:
        hub.weights_path(spec)
    message = str(info.value)
    assert "\n" not in message
    for part in ("tiny-hub", FILENAME, REPO, "--weights", "upscale models add", "HF_HUB_OFFLINE"):
        assert part in message
    assert server.count() == 0
    assert_nothing_partial(env)

    result = CliRunner().invoke(cli, ["models", "pull", "tiny-hub"])
    assert result.exit_code == 1 and "upscale: offline:" in result.output


def test_fetch_file_verifies_once_and_refuses_a_wrong_hash(env, server):
    content = b"not really vgg19 weights\n" * 100
    server.add("timm/tiny", "model.safetensors", content)
    sha = hashlib.sha256(content).hexdigest()
    path = hub.fetch_file("timm/tiny", "model.safetensors", server.commit, sha)
    assert path.read_bytes() == content
    assert (env / "upscale-cache" / "verified" / f"{sha}.json").is_file()
    server.reset_counts()
    assert hub.fetch_file("timm/tiny", "model.safetensors", server.commit, sha) == path
    assert server.count() == 0  # pinned commit already in the cache: huggingface_hub needs no request

    with pytest.raises(errors.ChecksumError) as info:
        hub.fetch_file("timm/tiny", "model.safetensors", server.commit, "0" * 64)
    assert info.value.actual == sha and not path.exists()


def closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_is_an_offline_error_within_seconds(env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    data, _ = tiny_pth()
    spec = register(data, "0" * 40)
    start = time.monotonic()
    with pytest.raises(errors.OfflineError) as info:
        hub.weights_path(spec)
    assert time.monotonic() - start < 8  # huggingface_hub alone retried for ~25 s
    message = str(info.value)
    assert "cannot be reached" in message and "--weights" in message and "\n" not in message
    assert "Connection refused" in message or "cannot connect" in message
    assert_nothing_partial(env)


def cli_env(env: Path, endpoint: str) -> dict[str, str]:
    """The test's environment for a CLI subprocess (its own caches, the registry written by ``register``)."""
    keep = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "UPSCALE_DEBUG")}
    return {**keep, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(env / "hf"),
            "UPSCALE_CACHE": str(env / "upscale-cache"), "UPSCALE_CONFIG_DIR": str(env / "config")}


def run_cli(args: list[str], environ: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "upscale", *args], capture_output=True, text=True, env=environ,
                          stdin=subprocess.DEVNULL, timeout=60)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("endpoint", ["closed-port", "http://no-such-host.invalid"])
def test_cli_without_a_reachable_hub_says_one_line_within_seconds(env, endpoint):
    """Issue 16 #12: no retry storm (25-31 s, 23 lines) when the Hub cannot be reached."""
    endpoint = f"http://127.0.0.1:{closed_port()}" if endpoint == "closed-port" else endpoint
    data, _ = tiny_pth()
    register(data, "0" * 40)
    environ = cli_env(env, endpoint)
    _, startup = run_cli(["models"], environ)    # the same imports, no network: this machine's load
    proc, elapsed = run_cli(["models", "pull", "tiny-hub"], environ)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 1 and elapsed - startup < 8, (proc.returncode, elapsed, startup, lines)
    assert len(lines) == 1 and lines[0].startswith("upscale: offline: model 'tiny-hub'"), lines
    assert "cannot be reached" in lines[0]


def test_a_transient_error_is_one_line_per_retry_never_doubled(env, server):
    """A 503 that is retried: the retry reaches stderr once, as one line, then it succeeds."""
    data, _ = tiny_pth()
    server.add(REPO, FILENAME, data, mode="flaky", failures=1)
    spec = register(data, server.commit)
    proc, _ = run_cli(["models", "pull", "tiny-hub"], cli_env(env, server.url))
    assert proc.returncode == 0, proc.stderr
    assert str(hub.converted_path(spec)) in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    retries = [line for line in lines if "etry" in line]
    assert len(retries) == 1 and "503" in retries[0] and retries[0].startswith("upscale: "), lines
    assert len(set(lines)) == len(lines), lines


def test_a_failing_hub_is_one_line_with_its_status_within_seconds(env, server):
    """A Hub that kept answering HTTP 500 (a 503 alike) was retried by huggingface_hub for ~25 s (seven
    requests, five lines) before the error; now twice, after 1 and 2 s, then one line naming the model
    and the status (with -q the only line), and nothing is downloaded or kept."""
    data, _ = tiny_pth()
    status = 500
    server.add(REPO, FILENAME, data, mode="flaky", failures=1000, status=status)
    register(data, server.commit)
    environ = cli_env(env, server.url)
    _, startup = run_cli(["models", "-q"], environ)    # the same imports, no network: this machine's load
    proc, elapsed = run_cli(["models", "pull", "tiny-hub", "-q"], environ)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 1 and elapsed - startup < 6, (proc.returncode, elapsed, startup, lines)
    assert len(lines) == 1 and lines[0].startswith("upscale: download failed: model 'tiny-hub' needs "), lines
    assert f"the Hub answered HTTP {status} (3 tries)" in lines[0]
    assert server.count("HEAD") == 3 and server.count("GET") == 0
    assert_nothing_partial(env)


# --- issue 16 #6: the converted file in our cache is checked, not only the download -------------------
def test_a_swapped_converted_file_is_discarded_and_converted_again(env, server):
    data, net = tiny_pth()
    server.add(REPO, FILENAME, data)
    spec = register(data, server.commit)
    path = hub.weights_path(spec)
    good = loading.read_state_dict(path)[0]
    torch.manual_seed(99)
    other = build_module("rrdbnet", HPARAMS)
    loading.save_model(path, loading.model_state_dict(other), "rrdbnet", HPARAMS)  # someone else's weights
    assert not torch.equal(loading.read_state_dict(path)[0]["conv_first.weight"], good["conv_first.weight"])

    server.reset_counts()
    assert hub.weights_path(spec) == path
    again = loading.read_state_dict(path)[0]    # converted again from the verified download
    assert again.keys() == good.keys() and all(torch.equal(again[k], good[k]) for k in good)
    assert server.count() == 0                  # which was still in the Hugging Face cache
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loading.load_model(path).module(x), net(x))


def test_a_converted_file_with_a_new_mtime_but_the_same_bytes_is_kept(env, server):
    data, _ = tiny_pth()
    server.add(REPO, FILENAME, data)
    spec = register(data, server.commit)
    path = hub.weights_path(spec)
    inode = path.stat().st_ino
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # e.g. copied back
    assert hub.weights_path(spec) == path and path.stat().st_ino == inode  # rehashed, same: not rewritten
    record = env / "upscale-cache" / "verified" / f"{path.name}.json"
    assert str(path.stat().st_mtime_ns) in record.read_text()               # the new stamp is recorded


def test_a_hub_that_accepts_but_never_answers_is_offline_within_seconds(env, monkeypatch):
    """It held each of huggingface_hub's attempts for a minute: 396 s in all."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setattr(hub, "ANSWER_TIMEOUT_S", 1.0)
    data, _ = tiny_pth()
    spec = register(data, "0" * 40)
    start = time.monotonic()
    try:
        with pytest.raises(errors.OfflineError) as info:
            hub.weights_path(spec)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    assert time.monotonic() - start < 8 and "does not answer" in str(info.value)
    assert_nothing_partial(env)


def test_a_cut_download_says_one_line_per_resume(env, server, caplog):
    data, _ = tiny_pth()
    server.add(REPO, FILENAME, data, mode="cut")
    spec = register(data, server.commit)
    caplog.set_level(logging.WARNING)
    with pytest.raises(errors.DownloadError):
        hub.weights_path(spec)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert lines and all("\n" not in line and line.endswith("resuming the download") for line in lines), lines


def test_pull_rehashes_a_converted_file_changed_in_place_with_its_time_put_back(env, server):
    data, net = tiny_pth()
    server.add(REPO, FILENAME, data)
    spec = register(data, server.commit)
    path = hub.weights_path(spec)
    good = path.read_bytes()
    st = path.stat()
    damaged = bytearray(good)
    damaged[-100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))          # size and time as recorded
    assert hub.weights_path(spec) == path and path.read_bytes() == damaged  # a run trusts the stamp
    assert hub.weights_path(spec, rehash=True) == path                     # pull does not:
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():                                                   # converted again, as it was
        assert path.read_bytes() != damaged and torch.equal(loading.load_model(path).module(x), net(x))
