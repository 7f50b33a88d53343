"""A stop signal during an iteration's forward or backward pass abandons that iteration at once, and
the checkpoint then saved is the one the iteration boundary before it would have saved: batch-norm
statistics, learning rates and RNGs put back, so a resumed run matches an uninterrupted one bit for bit.
The signal is a real SIGINT, sent to this process from inside the generator's forward pass."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import write_set
import torch

from upscale.archs.srresnet import SRResNet
from upscale.machine import cpu_bf16_flags
from upscale.train import build_config, train
from upscale.train.checkpoint import checkpoint_path, load_checkpoint


@pytest.fixture(scope="module")
def hr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_set(tmp_path_factory.mktemp("hr"), 4, 48, 40)


def settings(hr: Path, preset: str) -> dict[str, Any]:
    """SRResNet with batch norm (its running statistics change in every training forward pass); for
    srgan also the batch-norm discriminator, without the ImageNet VGG (not available offline)."""
    over: dict[str, Any] = {"data": [str(hr)], "scale": 2, "gt_size": 32, "batch_size": 2, "precision": "fp32",
                            "threads": 1, "seed": 5, "log_every": 1, "val_every": 100, "keep_last": 10,
                            "arch": "srresnet", "hparams": {"num_feat": 8, "num_block": 1, "bn": True}}
    if preset == "srgan":
        over["perceptual_weight"] = 0.0
    return over


class SignalInForward:
    """Sends SIGINT to this process from inside the ``at``-th generator forward pass (1-based)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(module, SRResNet):
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGINT)


def stopped_at_forward(cfg: Any, at: int, *, iteration: int) -> list[str]:
    """Train ``cfg`` with SIGINT sent from the ``at``-th generator forward pass; check the run stopped,
    abandoning its work under way, with ``iteration`` done; return what it said."""
    said: list[str] = []
    hook = torch.nn.modules.module.register_module_forward_hook(SignalInForward(at=at))
    try:
        stopped = train(cfg, echo=said.append, progress=False)
    finally:
        hook.remove()
    assert stopped.interrupted and stopped.iteration == iteration, said
    assert any("abandoning the work under way" in line for line in said), said
    return said


def same(a: Any, b: Any, where: str) -> None:
    """``a`` and ``b`` equal all the way down: dicts, lists and tuples (the Python RNG's state, Adam's
    betas, param_groups' params), tensors bit for bit, numbers, strings and None."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where} differs: {a!r} vs {b!r}"     # e.g. param_groups' lr


@pytest.mark.parametrize("preset", ["psnr", "srgan"])
def test_a_signal_mid_iteration_abandons_it_and_the_resume_is_exact(hr: Path, tmp_path: Path, preset: str) -> None:
    base = settings(hr, preset)
    straight = train(build_config(preset, base, {"max_iters": 4, "ckpt_every": 1, "out": str(tmp_path / "a")}),
                     progress=False)
    assert straight.iteration == 4

    cfg = build_config(preset, base, {"max_iters": 4, "ckpt_every": 100, "out": str(tmp_path / "b")})
    stopped_at_forward(cfg, 3, iteration=2)
    # the checkpoint saved after abandoning iteration 3 equals the straight run's at iteration 2
    a2 = load_checkpoint(checkpoint_path(tmp_path / "a", 2))
    b2 = load_checkpoint(checkpoint_path(tmp_path / "b", 2))
    parts = ["generator", "opt_g", "rng"] + (["disc", "opt_d"] if preset == "srgan" else [])
    for part in parts:
        same(a2[part], b2[part], part)
    assert any("running_mean" in k for k in a2["generator"])   # batch norm was there to be put back

    resumed = train(cfg, resume=checkpoint_path(tmp_path / "b", 2), progress=False)
    assert resumed.iteration == 4
    a4 = load_checkpoint(checkpoint_path(tmp_path / "a", 4))
    b4 = load_checkpoint(checkpoint_path(tmp_path / "b", 4))
    for part in parts:
        same(a4[part], b4[part], part)


@pytest.mark.skipif(not cpu_bf16_flags(), reason="precision auto probes only where the CPU has native bf16")
def test_a_signal_during_the_precision_probe_stops_and_the_resume_measures_again(hr: Path, tmp_path: Path) -> None:
    """precision auto times bf16 against fp32 before the first step (minutes for a large network on a
    busy CPU): a stop there abandons the probe, saves iteration 0 with the precision still open, and the
    resumed run measures it instead of taking the rule's bf16 for a settled choice."""
    base = dict(settings(hr, "psnr"), precision="auto", hparams={"num_feat": 8, "num_block": 2, "bn": True})
    cfg = build_config("psnr", base, {"max_iters": 2, "ckpt_every": 100, "out": str(tmp_path / "run")})
    said = stopped_at_forward(cfg, 1, iteration=0)
    assert any("timing the generator's step" in line for line in said), said
    state = load_checkpoint(checkpoint_path(tmp_path / "run", 0))
    assert state["precision"] == "auto"

    said.clear()
    resumed = train(cfg, resume=checkpoint_path(tmp_path / "run", 0), echo=said.append, progress=False)
    assert resumed.iteration == 2
    assert any("timing the generator's step" in line for line in said), said
    assert load_checkpoint(checkpoint_path(tmp_path / "run", 2))["precision"] in ("bf16", "fp32")


def test_a_training_checkpoint_runs_as_a_model(hr: Path, tmp_path: Path) -> None:
    """`upscale IMG -m RUN/checkpoints/iter_N.pt` (and load_model) take an older iteration's weights:
    what the run would have exported then (the EMA where it keeps one), at the run's architecture and
    scale, even for SRCNN, whose keys do not show its scale (read alone, they would load as x4)."""
    from upscale.loading import load_model, model_state_dict

    cfg = build_config("psnr", dict(settings(hr, "psnr"), arch="srcnn", hparams={}),
                       {"max_iters": 4, "ckpt_every": 2, "out": str(tmp_path / "run")})
    train(cfg, progress=False)
    last = load_model(checkpoint_path(tmp_path / "run", 4))
    exported = load_model(tmp_path / "run" / "model.safetensors")
    assert (last.arch, last.scale) == (exported.arch, exported.scale) == ("srcnn", 2)
    a, b = model_state_dict(last), model_state_dict(exported)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    older = model_state_dict(load_model(checkpoint_path(tmp_path / "run", 2)))
    assert any(not torch.equal(older[k], a[k]) for k in a)


def test_stop_signals_leave_an_ignored_signal_ignored():
    """A run started with SIGINT ignored (a background job of a script) keeps it so; SIGTERM still stops it."""
    from upscale.train.signals import StopFlag, stop_signals

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        flag = StopFlag()
        with stop_signals(flag):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is flag
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
