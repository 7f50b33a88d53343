"""Two processes at once on shared state, each a real `python -m upscale` subprocess.

`upscale train`: a second training of a run folder (another `--resume`, or a new run that picked the
same folder) is refused in one line before it writes anything, instead of interleaving its
checkpoints and metrics with the first's; once the first ends, the folder can be resumed.

Loading a Hub model: a process that finds the model converted by another one that has not yet recorded
the conversion's hash waits for it and takes that file, rather than calling it changed, deleting it
(under the other's feet) and converting again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_config_file
from hubserver import HubServer

from upscale import atomic, registry, user_registry
from upscale.archs import build_module

ENV_KEYS = ("UPSCALE_CACHE", "HF_HOME", "UPSCALE_CONFIG_DIR", "XDG_CACHE_HOME")


def environment(root: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update({key: str(root / key.lower()) for key in ENV_KEYS})
    env.pop("UPSCALE_DEBUG", None)
    return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "upscale", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def upscale(args: list[str], env: dict[str, str], *, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upscale", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


# --- atomic.claim ---------------------------------------------------------------------------------------
HOLDER = """
import sys
from upscale import atomic
lock = atomic.claim(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
"""


def test_claim_is_refused_while_another_process_holds_it(tmp_path: Path) -> None:
    path = tmp_path / ".job.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BlockingIOError) as info:
            atomic.claim(path)
        assert info.value.filename == str(holder.pid)
    finally:
        holder.communicate("\n", timeout=60)     # it exits without unclaiming: the lock dies with it
    lock = atomic.claim(path)
    assert lock is not None and path.read_text() == f"{os.getpid()}\n"
    atomic.unclaim(path, lock)
    assert not path.exists() and lock.closed


# --- train ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("conc_train")
    config = train_config_file(root)
    return {"flags": ["--config", str(config), "-q"], "env": environment(root)}


def logged_iterations(run: Path) -> list[int]:
    return [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_second_training_of_a_running_folder_is_refused(tmp_path: Path, train_setup: dict) -> None:
    flags, env = train_setup["flags"], train_setup["env"]
    run = tmp_path / "run"
    first = upscale(["train", *flags, "--max-iters", "5", "--out", str(run)], env)
    assert first.returncode == 0, first.stderr
    busy = start(["train", *flags, "--max-iters", "100000", "--out", str(run), "--resume"], env)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "iter_00000015.pt").exists():
            assert busy.poll() is None, busy.communicate()[1][-600:]
            assert time.monotonic() < deadline, "the first training saved no checkpoint in time"
            time.sleep(0.05)
        second = upscale(["train", *flags, "--max-iters", "40", "--out", str(run), "--resume"], env)
        assert second.returncode == 1, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.startswith("upscale:")]
        assert len(lines) == 1 and f"another training (process {busy.pid}) is using this run folder" in lines[0]
        assert busy.poll() is None, "the refused training stopped the first one"
    finally:
        busy.send_signal(signal.SIGTERM)     # stops at the next iteration with a checkpoint
        _, err = busy.communicate(timeout=120)
    assert busy.returncode == 130, err[-600:]
    iters = logged_iterations(run)
    assert iters == sorted(set(iters)), f"two trainings interleaved their metrics: {iters}"

    resumed = upscale(["train", *flags, "--max-iters", str(max(iters) + 5), "--out", str(run), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert not (run / ".train.lock").exists()


def test_two_new_trainings_into_one_folder_leave_one_run(tmp_path: Path, train_setup: dict) -> None:
    flags, env = train_setup["flags"], train_setup["env"]
    run = tmp_path / "run"
    procs = [start(["train", *flags, "--max-iters", "30", "--out", str(run)], env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (1, 2), results     # 2: the other's run files were there already
    loser = next(err for code, err in results if code != 0)
    assert "another training" in loser or "already holds a run" in loser or "holds a run already" in loser, loser
    iters = logged_iterations(run)
    assert iters == sorted(set(iters)) and max(iters) == 30, f"two trainings interleaved their metrics: {iters}"


# --- hub ------------------------------------------------------------------------------------------------
HUB_HPARAMS = {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 4}
# the first process: its converted file is in place, its record written only once the test says so (a slow disk)
SLOW_RECORDER = """
import sys, time
from pathlib import Path
from upscale import hub, registry
real = hub._remember
def remember_late(path, *args, **kwargs):
    print("converted", path.stat().st_ino, flush=True)
    deadline = time.monotonic() + 120
    while not Path(sys.argv[1]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    real(path, *args, **kwargs)
hub._remember = remember_late
print(hub.weights_path(registry.get_model("tiny-hub")))
"""
LOADER = """
from upscale import hub, loading, registry
spec = registry.get_model("tiny-hub")
print("loading", flush=True)
path = hub.weights_path(spec)
loading.load_model(path)
print(path, path.stat().st_ino)
"""


def test_second_process_waits_for_a_hub_conversion_in_progress(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save({"params_ema": build_module("rrdbnet", HUB_HPARAMS).state_dict()}, buf)
    data = buf.getvalue()
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "config"))
    with HubServer() as server:
        server.add("test-org/tiny-esrgan", "tiny_x4.pth", data)
        entry = user_registry.format_entry({
            "name": "tiny-hub", "description": "tiny test network", "arch": "rrdbnet", "scale": 4, "kind": "gan",
            "license": "MIT", "hparams": HUB_HPARAMS,
            "source": {"type": "hub", "repo_id": "test-org/tiny-esrgan", "filename": "tiny_x4.pth",
                       "revision": server.commit, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}})
        registry.user_registry_path().parent.mkdir(parents=True)
        registry.user_registry_path().write_text(entry, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "UPSCALE_DEBUG")}
        env.update({"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf"),
                    "UPSCALE_CACHE": str(tmp_path / "cache")})
        go = tmp_path / "go"

        def python(code: str, *args: str) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, text=True, env=env)

        first = python(SLOW_RECORDER, str(go))
        second = None
        try:
            said = first.stdout.readline().split()
            assert said[:1] == ["converted"], first.communicate(timeout=60)[1][-600:]
            second = python(LOADER)
            assert second.stdout.readline().strip() == "loading", second.communicate(timeout=60)[1][-600:]
            time.sleep(1.5)          # the second process is in weights_path now
        finally:
            go.touch()
            out1, err1 = first.communicate(timeout=120)
            out2, err2 = second.communicate(timeout=120) if second is not None else ("", "")
    assert first.returncode == 0 and second.returncode == 0, err1[-600:] + err2[-600:]
    assert "converting again" not in err2, err2
    path, inode = out2.split()
    assert path == out1.strip() and inode == said[1], "the second process converted the model again"
