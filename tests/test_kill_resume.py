"""kill -9 at several moments, then a rerun (issue 16, Must show).

`upscale batch`: killed at five different moments (while the first output is being written, and after
1, 4, 12 and 25 of 30 outputs), each in its own output folder; the plain rerun of the same command
must leave outputs byte-identical to an uninterrupted run's and no temp file.

`upscale train`: killed after its iteration-10 checkpoint, and while a checkpoint is being saved;
`--resume` must reach iteration 20 with the weights of an uninterrupted 20-iteration run, and leave
no temp file (of ours or of a half-written checkpoint) in the run folder.

Everything runs through the installed CLI in subprocesses (`python -m upscale`), one thread each, so
that runs in different processes can be compared byte for byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import train_config_file
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file

from upscale.archs import build_module
from upscale.atomic import is_temp_name
from upscale.batch import JOURNAL_NAME
from upscale.loading import save_model

ENV_KEYS = ("UPSCALE_CACHE", "HF_HOME", "UPSCALE_CONFIG_DIR", "XDG_CACHE_HOME")
BATCH_FLAGS = ["--precision", "fp32", "--compile", "off", "--threads", "1", "--workers", "1", "-q"]
N_IMAGES = 30


def environment(root: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update({key: str(root / key.lower()) for key in ENV_KEYS})
    env.pop("UPSCALE_DEBUG", None)
    return env


def is_temp(path: Path) -> bool:
    """Ours (upscale.atomic), the old `.NAME.upscale-tmp`, or any `*.tmp` a writer left."""
    return is_temp_name(path.name) or path.name.endswith((".upscale-tmp", ".tmp"))


def temps(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if is_temp(p)) if folder.exists() else []


def outputs(folder: Path) -> dict[str, bytes]:
    """Every finished file under ``folder`` but temps and batch's journal of what made each output."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not is_temp(p) and p.name != JOURNAL_NAME}


def upscale(args: list[str], env: dict, *, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upscale", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "upscale", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def kill_when(proc: subprocess.Popen, ready, what: str, limit: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; it must still be running then."""
    deadline = time.monotonic() + limit
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"finished (exit {proc.returncode}) before {what}: {proc.stderr.read()[-600:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {limit} s")
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"exited {proc.returncode} before the kill reached it"


# --- batch ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch_set(tmp_path_factory) -> dict:
    """30 images in two folders, a tiny model, and the outputs of one uninterrupted run."""
    root = tmp_path_factory.mktemp("kill_batch")
    torch.manual_seed(3)
    hp = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2, "scale": 2, "act_type": "prelu"}
    model = root / "tiny_x2.safetensors"
    save_model(model, build_module("compact", hp).state_dict(), "compact", hp)
    src = root / "in"
    rng = np.random.default_rng(5)
    for i in range(N_IMAGES):
        folder = src / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(rng.integers(0, 256, (40 + i % 4 * 4, 48, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    env = environment(root)
    args = ["-m", str(model), "--recursive", *BATCH_FLAGS]
    ref = root / "ref"
    done = upscale(["batch", str(src), "--out", str(ref), *args], env)
    assert done.returncode == 0, done.stderr
    reference = outputs(ref)
    assert len(reference) == N_IMAGES
    return {"src": src, "args": args, "env": env, "reference": reference}


def _temp_visible(out: Path):
    return lambda: bool(temps(out)) or len(outputs(out)) >= 1


def _outputs_at_least(out: Path, n: int):
    return lambda: len(outputs(out)) >= n


MOMENTS = {"first-write-in-flight": None, "after-1": 1, "after-4": 4, "after-12": 12, "after-25": 25}
SLOW = pytest.mark.slow  # ~8 s each here: two moments run by default, all five with -m slow
PARAMS = [pytest.param(m, marks=() if m in ("first-write-in-flight", "after-12") else (SLOW,)) for m in MOMENTS]


@pytest.mark.parametrize("moment", PARAMS)
def test_batch_killed_then_rerun_is_identical(tmp_path: Path, batch_set: dict, moment: str) -> None:
    src, args, env, reference = batch_set["src"], batch_set["args"], batch_set["env"], batch_set["reference"]
    out = tmp_path / "out"
    command = ["batch", str(src), "--out", str(out), *args]
    count = MOMENTS[moment]
    proc = start(command, env)
    kill_when(proc, _temp_visible(out) if count is None else _outputs_at_least(out, count), moment)

    partial = outputs(out)
    assert len(partial) < N_IMAGES, "the run finished before the kill: the moment was not reached"
    assert all(reference[name] == data for name, data in partial.items()), "a killed run left a wrong output"

    rerun = upscale(command, env)
    assert rerun.returncode == 0, rerun.stderr
    assert outputs(out) == reference
    assert temps(out) == []


# --- train ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kill_train")
    # a schedule that does not depend on max_iters: the killed run is started with a large one
    config = train_config_file(root, hparams={"num_feat": 32, "num_conv": 3}, seed=11, scheduler="multistep",
                               milestones=[5, 15])
    env = environment(root)
    flags = ["--config", str(config), "-q", "--keep-last", "1000"]
    straight = root / "straight"
    done = upscale(["train", *flags, "--max-iters", "20", "--out", str(straight)], env, timeout=300)
    assert done.returncode == 0, done.stderr
    return {"flags": flags, "env": env, "straight": straight}


def _checkpoint(run: Path, it: int) -> Path:
    return run / "checkpoints" / f"iter_{it:08d}.pt"


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = torch.load(_checkpoint(run, 20), map_location="cpu", weights_only=True)
    return {"generator": ckpt["generator"], "ema": ckpt["ema"], "exported": load_file(str(run / "model.safetensors"))}


def _saving_checkpoint(run: Path):
    """After the first checkpoint (iteration 5), a checkpoint temp file is on disk (kill mid-save);
    or, if the save was too quick to be seen, the iteration-10 checkpoint exists."""
    return lambda: _checkpoint(run, 5).exists() and (bool(temps(run / "checkpoints")) or _checkpoint(run, 10).exists())


@pytest.mark.slow  # ~20 s each plus ~20 s for the uninterrupted reference run
@pytest.mark.parametrize("moment", ["after-checkpoint-10", "during-a-checkpoint-save"])
def test_train_killed_then_resume_gives_the_same_weights(tmp_path: Path, train_setup: dict, moment: str) -> None:
    flags, env = train_setup["flags"], train_setup["env"]
    run = tmp_path / "run"
    proc = start(["train", *flags, "--max-iters", "100000", "--out", str(run)], env)
    ready = (lambda: _checkpoint(run, 10).exists()) if moment == "after-checkpoint-10" else _saving_checkpoint(run)
    kill_when(proc, ready, moment, limit=240)
    assert not _checkpoint(run, 20).exists()

    resumed = upscale(["train", *flags, "--max-iters", "20", "--out", str(run), "--resume"], env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert temps(run) == [], "temp files left in the run folder after --resume"
    want, got = _weights(train_setup["straight"]), _weights(run)
    for part in want:
        assert want[part].keys() == got[part].keys(), part
        for key in want[part]:
            assert torch.equal(want[part][key], got[part][key]), f"{part}.{key} differs after kill -9 and --resume"
