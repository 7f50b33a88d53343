"""Fixtures shared by the test files: small real networks saved as safetensors.

``weights_file(arch, hparams, seed, name)`` builds the network with ``torch.manual_seed(seed)``, saves it
through ``upscale.loading.save_model`` (the path every user file takes) and returns the path; one
file per distinct request for the whole session. The named fixtures are the small nets most tests use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

COMPACT_X4 = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2, "scale": 4, "act_type": "prelu"}
COMPACT_X2 = {**COMPACT_X4, "scale": 2}
COMPACT_X2_SMALLEST = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_conv": 1, "scale": 2, "act_type": "prelu"}
RRDB_X2 = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 2}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs against an empty cache of its own (weights, tuning, compiled graphs), never the
    developer's ~/.cache/upscale: a cached tuning result there would change tile and compile choices.
    Subprocesses inherit it through the environment."""
    import os

    folder = tmp_path_factory.mktemp("upscale-cache")
    old = os.environ.get("UPSCALE_CACHE")
    os.environ["UPSCALE_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("UPSCALE_CACHE", None)
    else:
        os.environ["UPSCALE_CACHE"] = old


@pytest.fixture
def any_load_kept(monkeypatch) -> None:
    """Precision probes are cached whatever else runs on the machine (``machine.BUSY_SHARE`` 1.0): for
    tests about caching, which a busy CI host must not turn into tests about its load."""
    monkeypatch.setattr("upscale.machine.BUSY_SHARE", 1.0)


@pytest.fixture
def busy_cpus() -> Iterator[Callable[[], None]]:
    """Call it to start twice as many busy-looping processes as there are CPUs (real load from
    outside the test's process: others' share of the CPUs ~2/3 beside two threads of ours); all are
    killed when the test ends."""
    import os
    import subprocess
    import sys
    import time

    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.extend(subprocess.Popen([sys.executable, "-c", "while True: pass"])
                     for _ in range(2 * (os.cpu_count() or 1)))
        time.sleep(0.3)          # running before the caller starts timing

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    import torch

    from upscale.archs import build_module
    from upscale.loading import save_model

    made: dict[str, Path] = {}

    def make(arch: str, hparams: dict, seed: int = 0, name: str | None = None) -> Path:
        """``name`` (the file's stem, which bench and batch show as the model's label): default ARCH."""
        key = json.dumps([arch, hparams, seed, name], sort_keys=True)
        if key not in made:
            torch.manual_seed(seed)
            path = tmp_path_factory.mktemp("weights") / f"{name or arch}.safetensors"
            save_model(path, build_module(arch, hparams).state_dict(), arch, hparams)
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_x4(weights_file) -> str:
    """Compact x4, 8 features, 2 convs, PReLU, seed 0 (~0.01 M parameters)."""
    return str(weights_file("compact", COMPACT_X4, 0, "tiny_x4"))


@pytest.fixture(scope="session")
def tiny_x2(weights_file) -> str:
    """Compact x2, 8 features, 2 convs, PReLU, seed 0."""
    return str(weights_file("compact", COMPACT_X2, 0, "tiny_x2"))


@pytest.fixture(scope="session")
def tiny_x2_rrdb(weights_file) -> str:
    """RRDBNet x2 with one block of 8 features, seed 1."""
    return str(weights_file("rrdbnet", RRDB_X2, 1, "rrdb_x2"))


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """Sums of oriented gratings with periods of 4.5 to 10 HR pixels (uint8 RGB): detail that survives a
    x2 downscale but that bicubic upscaling attenuates, and that a small network learns to restore."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(3):
            freq, angle, phase = rng.uniform(0.6, 1.4), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    return (127.5 + 127.5 * img / 3.0).round().clip(0, 255).astype(np.uint8)


def write_set(folder: Path, n: int, size: int, seed: int) -> Path:
    """``n`` textured ``size`` x ``size`` RGB PNGs ``img0.png``... (seeds ``seed``, ``seed + 1``...) in
    ``folder``, made if missing; returns ``folder``."""
    from PIL import Image as PILImage

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        PILImage.fromarray(textured(size, size, seed + i)).save(folder / f"img{i}.png")
    return folder


def train_config_file(root: Path, **settings: object) -> Path:
    """Four textured 64x64 HR images in ``root/hr`` and ``root/run.json``: a small compact x2 training
    config for runs through the CLI (``--config``), with ``settings`` over its defaults."""
    import json

    data = write_set(root / "hr", 4, 64, 0)
    config = {"data": [str(data)], "scale": 2, "arch": "compact", "hparams": {"num_feat": 8, "num_conv": 2},
              "gt_size": 32, "batch_size": 2, "precision": "fp32", "threads": 1, "seed": 3, "ckpt_every": 5,
              "log_every": 5, "val_every": 1000, **settings}
    (root / "run.json").write_text(json.dumps(config))
    return root / "run.json"


@pytest.fixture
def locked_folder(tmp_path):
    """A real folder no file can be created in: read-only bits, and for root (whom they do not stop)
    the immutable attribute where ``chattr`` may set it."""
    from upscale import atomic

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    immutable = subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0 \
        if shutil.which("chattr") else False
    try:
        if atomic.write_problem(locked) is None:
            pytest.skip("no folder here refuses this user's writes (root without chattr)")
        yield locked
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o755)


@pytest.fixture(autouse=True)
def _sigint_handled_by_python():
    """Each test starts with Ctrl-C raising KeyboardInterrupt, however pytest was launched. A shell
    without job control (a script, a CI runner) starts a command run with ``&`` with SIGINT ignored
    (POSIX), and Python keeps an ignored SIGINT as it found it at startup (``getsignal`` is SIG_IGN
    before any test file is imported; nothing in collection or in our code changes it). The Ctrl-C
    tests then fail: ``_thread.interrupt_main`` does nothing while SIGINT is ignored, and the
    ``upscale`` subprocesses they signal inherit the ignored SIGINT and run to the end."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture
def logged_cc(tmp_path, monkeypatch) -> Path:
    """``$CC`` is a wrapper that logs each build (not ``--version``) and runs ``cc``, in an empty cache;
    the log file (one line per build; absent before the first)."""
    log = tmp_path / "builds.log"
    cc = tmp_path / "cc-logged"
    cc.write_text(f'#!/bin/sh\ncase "$*" in *--version*) ;; *) echo build >> "{log}" ;; esac\nexec cc "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    return log
