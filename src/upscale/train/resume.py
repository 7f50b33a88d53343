"""Resuming: a trainer's whole state as a checkpoint dict and back, and ``--resume`` -> a path.
The shape-fixing options must match; everything else (rates, lengths, cadences) may change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from . import checkpoint as ckpt
from . import runtime

# Options that fix the networks' shapes: a checkpoint cannot be resumed under other values.
_SHAPE_KEYS = ("arch", "hparams", "scale", "discriminator", "gt_size")


def capture_state(t: Any) -> dict[str, Any]:
    """Everything a resumed run needs, as weights_only-loadable containers."""
    s: dict[str, Any] = {
        "iteration": t.iteration, "config": json.loads(t.cfg.to_json()), "arch": t.arch,
        "hparams": t.hparams, "generator": t.gen.state_dict(), "opt_g": t.opt_g.state_dict(),
        "best_psnr": t.best_psnr, "elapsed_s": t.elapsed_s, "rng": ckpt.capture_rng(),
        # what precision auto resumes in (train.runtime); "auto" if stopped before it was settled
        "precision": runtime.NAMES[t.rt.amp.dtype] if t.precision_settled else "auto",
        "loss_window": t.window.state(),                 # losses summed towards the next metrics record
    }
    if t.ema is not None:
        s["ema"] = t.ema.module.state_dict()
    if t.disc is not None and t.opt_d is not None:
        s["disc"] = t.disc.state_dict()
        s["opt_d"] = t.opt_d.state_dict()
    if t.scaler_g is not None:
        s["scaler_g"] = t.scaler_g.state_dict()
    if t.scaler_d is not None:
        s["scaler_d"] = t.scaler_d.state_dict()
    return s


def restore_state(t: Any, state: dict[str, Any], path: Path) -> None:
    """Load ``state`` into trainer ``t``; CheckpointError when it was saved with other shapes."""
    saved = state.get("config", {})
    for key in _SHAPE_KEYS:
        if key == "gt_size" and not t.cfg.discriminator:
            continue  # only a discriminator's dense layer depends on the crop size
        mine = getattr(t.cfg, key)
        theirs = saved.get(key)
        if key == "hparams":
            mine, theirs = t.hparams, state.get("hparams")
        if mine != theirs:
            raise CheckpointError(f"was saved with {key}={theirs!r}, this run has {key}={mine!r}", path=path)
    try:
        t.gen.load_state_dict(state["generator"], strict=True)
        t.opt_g.load_state_dict(state["opt_g"])
        if t.ema is not None:
            if "ema" not in state:
                raise CheckpointError("has no EMA weights but this run uses ema_decay > 0", path=path)
            t.ema.module.load_state_dict(state["ema"], strict=True)
        if t.disc is not None and t.opt_d is not None:
            t.disc.load_state_dict(state["disc"], strict=True)
            t.opt_d.load_state_dict(state["opt_d"])
        if t.scaler_g is not None and "scaler_g" in state:
            t.scaler_g.load_state_dict(state["scaler_g"])
        if t.scaler_d is not None and "scaler_d" in state:
            t.scaler_d.load_state_dict(state["scaler_d"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"does not fit this run: {str(err).splitlines()[0]}", path=path) from None
    ckpt.restore_rng(state["rng"])
    t.iteration = int(state["iteration"])
    t.best_psnr = state.get("best_psnr")
    t.elapsed_s = float(state.get("elapsed_s", 0.0))
    if "loss_window" in state:          # absent in checkpoints of earlier versions
        t.window.restore(state["loss_window"])


def resolve_resume(out: str | Path, resume: str) -> Path:
    """``--resume`` value -> checkpoint path: 'latest' is the newest in ``{out}/checkpoints``."""
    if resume != "latest":
        return Path(resume)
    path = ckpt.latest_checkpoint(out)
    if path is None:
        raise CheckpointError("no checkpoint to resume from", path=ckpt.checkpoint_dir(out))
    return path
