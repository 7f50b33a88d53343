"""The card's usages (README top), typed exactly as a new user types them (issue 16, Must show).

Each runs the installed CLI in a subprocess, in a folder holding only what the usage names
(`photo.jpg`, `dir/`, `div2k/`, `Set5/`, all made here), with every cache and config folder inside
tmp. `scripts/card_usages.sh` runs the same commands and prints their output.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import textured
from PIL import Image as PILImage

ENV_KEYS = ("UPSCALE_CACHE", "HF_HOME", "UPSCALE_CONFIG_DIR", "XDG_CACHE_HOME")


def environment(root: Path, **over: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "UPSCALE_"))}
    env.update({key: str(root / ".env" / key.lower()) for key in ENV_KEYS})
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "2"})
    env.update(over)
    return {k: v for k, v in env.items() if v != ""}


def typed(line: str, cwd: Path, env: dict, timeout: float = 180) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``line`` (which starts with `upscale `) as typed; return the result and its wall seconds."""
    words = line.split()
    assert words[0] == "upscale"
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "upscale", *words[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - began


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def photo(path: Path, size: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=92)
    return path


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both and "internal error" not in both, both[-2000:]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- upscale photo.jpg -s 4 -m esrgan, with the Hub unreachable ------------------------------------------
@pytest.mark.parametrize("hub", ["refused", "unresolvable"])
def test_registry_model_offline_fails_fast_in_one_line(tmp_path: Path, hub: str) -> None:
    """HF_HUB_OFFLINE unset, the Hub not reachable: exit 1 within a few seconds, one line naming the
    model, no retry storm, nothing written beside the photo."""
    photo(tmp_path / "photo.jpg")
    endpoint = f"http://127.0.0.1:{_closed_port()}" if hub == "refused" else "http://hub.invalid"
    env = environment(tmp_path, HF_HUB_OFFLINE="", HF_ENDPOINT=endpoint)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc, seconds = typed("upscale photo.jpg -s 4 -m esrgan", tmp_path, env, timeout=120)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    assert len(lines(proc.stderr)) == 1 and "esrgan" in proc.stderr, proc.stderr
    assert seconds < 10, f"took {seconds:.1f} s to say the Hub cannot be reached"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_default_model_photo(tmp_path: Path) -> None:
    """`upscale photo.jpg -s 4`: the shipped default model, offline, photo_x4.jpg beside it."""
    photo(tmp_path / "photo.jpg")
    proc, _ = typed("upscale photo.jpg -s 4", tmp_path, environment(tmp_path))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    with PILImage.open(tmp_path / "photo_x4.jpg") as im:
        assert im.size == (192, 192)


# --- upscale batch dir/ --out hi/ ----------------------------------------------------------------------
def test_batch_dir_out_hi(tmp_path: Path) -> None:
    photo(tmp_path / "dir" / "a.png", 32, 1)
    photo(tmp_path / "dir" / "b.jpg", 40, 2)
    proc, _ = typed("upscale batch dir/ --out hi/", tmp_path, environment(tmp_path))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "hi").iterdir()) == [".upscale-batch.jsonl", "a_x4.png", "b_x4.jpg"]
    with PILImage.open(tmp_path / "hi" / "b_x4.jpg") as im:
        assert im.size == (160, 160)


# --- upscale interp --alpha 0.8 ------------------------------------------------------------------------
def test_interp_alpha_only(tmp_path: Path) -> None:
    """Until a GAN twin of the default model ships (issue 15): one line saying what to pass, exit 2.
    Once it does: exit 0, writing a default path that the command prints."""
    before = sorted(p.name for p in tmp_path.iterdir())
    proc, _ = typed("upscale interp --alpha 0.8", tmp_path, environment(tmp_path))
    no_traceback(proc)
    if proc.returncode == 0:
        said = proc.stdout + proc.stderr
        made = [p for p in tmp_path.rglob("*.safetensors")]
        assert made and any(p.name in said for p in made), said
        return
    assert proc.returncode == 2, proc.stderr
    assert len(lines(proc.stderr)) == 1, proc.stderr
    line = lines(proc.stderr)[0]
    assert "--psnr" in line or "--gan" in line, line
    assert "Missing option" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- upscale train --data div2k/ -----------------------------------------------------------------------
class Reader(threading.Thread):
    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream, self.text = stream, []

    def run(self) -> None:
        for line in self.stream:
            self.text.append(line)

    def joined(self) -> str:
        return "".join(self.text)


def test_train_data_only_starts_a_run_and_ctrl_c_checkpoints(tmp_path: Path) -> None:
    """A default run folder, printed at the start with the --resume line; SIGINT after the first
    lines: exit 130, a checkpoint is written and the message says so."""
    for i in range(4):
        (tmp_path / "div2k").mkdir(exist_ok=True)
        PILImage.fromarray(textured(160, 160, i)).save(tmp_path / "div2k" / f"{i:04d}.png")
    proc = subprocess.Popen([sys.executable, "-m", "upscale", "train", "--data", "div2k/"], cwd=tmp_path,
                            env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    reader = Reader(proc.stdout)
    reader.start()
    deadline = time.monotonic() + 120
    while "--resume" not in reader.joined() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        time.sleep(1.0)  # let it reach the training loop
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    said = reader.joined()
    assert "Traceback" not in said and "internal error" not in said, said[-2000:]
    assert proc.returncode == 130, said[-2000:]
    assert "--resume" in said and re.search("checkpoint", said, re.I), said[-2000:]
    assert re.search(r"SIGINT: (stopping when this iteration ends|abandoning the work under way)", said), said[-2000:]
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()] if (tmp_path / "runs").is_dir() else []
    assert len(runs) == 1, f"want one default run folder under runs/: {said[-1000:]}"
    assert runs[0].name in said, said[-1000:]
    assert list(runs[0].rglob("*.pt")), f"no checkpoint in {runs[0]}"


# --- upscale bench --data Set5/ -s 4 -------------------------------------------------------------------
def test_bench_set5_x4(tmp_path: Path) -> None:
    (tmp_path / "Set5").mkdir()
    for i in range(2):
        PILImage.fromarray(textured(64, 64, 10 + i)).save(tmp_path / "Set5" / f"img{i}.png")
    proc, _ = typed("upscale bench --data Set5/ -s 4", tmp_path, environment(tmp_path))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr, proc.stderr      # off a terminal: no progress bar redraws in the log
    table = proc.stdout.lower()
    for method in ("nearest", "bilinear", "bicubic", "lanczos"):
        assert method in table, proc.stdout
