"""Checkpoints: one ``torch.save`` file per saved iteration, written atomically (``upscale.atomic``)
and read back only with ``torch.load(weights_only=True)``, so nothing in a checkpoint can run code.
Contents are plain containers of tensors, numbers and strings. A checkpoint that cannot be read is
reported in our words, with the newest older checkpoint of the run that does read, if any.

Layout of ``{out}/checkpoints/``: ``iter_00001000.pt`` ... (the last ``keep_last`` are kept) and
``best.pt`` (the state at the best validation PSNR).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_file, os_reason
from ..errors import CheckpointError

_NAME = re.compile(r"^iter_(\d{8,})\.pt$")


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_path(out: str | Path, iteration: int) -> Path:
    return checkpoint_dir(out) / f"iter_{iteration:08d}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` whole at ``path``, or raise ``CheckpointError`` (a full disk, say) and leave
    the checkpoints already there as they were."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as f:
            torch.save(state, f)
    except OSError as err:
        raise CheckpointError(f"cannot write the checkpoint ({os_reason(err, path.parent)})", path=path) from None


def _read(p: Path) -> dict[str, Any] | str:
    """The checkpoint's state, or why it cannot be used (our words, one line)."""
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or unsafe files are all "cannot load"
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            return "holds objects other than tensors and plain values; refused without running them"
        return "cannot be read (truncated or corrupt)"
    if not isinstance(state, dict) or "iteration" not in state or "generator" not in state:
        return "is not an upscale training checkpoint"
    return state


def previous_good(path: Path) -> Path | None:
    """The newest numbered checkpoint beside ``path`` older than it (any, for ``best.pt``) that reads."""
    found = [(it, f) for it, f in _list_in(path.parent) if f != path]
    m = _NAME.match(path.name)
    if m:
        found = [(it, f) for it, f in found if it < int(m.group(1))]
    for _, candidate in reversed(found):
        if isinstance(_read(candidate), dict):
            return candidate
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    problem = "checkpoint not found" if not p.is_file() else None
    state = _read(p) if problem is None else problem
    if isinstance(state, dict):
        return state
    message = state if problem else f"this checkpoint {state}"
    good = previous_good(p)
    if good is None:
        raise CheckpointError(message, path=p)
    # "resume" is worded as the flag by the CLI (params)
    raise CheckpointError(f"{message}; previous good checkpoint: {good} (use resume {good})", path=p,
                          params=("resume",))


def _list_in(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), f) for f in folder.iterdir() if (m := _NAME.match(f.name)))


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the numbered checkpoints, oldest first."""
    return _list_in(checkpoint_dir(out))


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def prune_checkpoints(out: str | Path, keep_last: int) -> None:
    for _, path in list_checkpoints(out)[:-keep_last]:
        path.unlink(missing_ok=True)


def capture_rng() -> dict[str, Any]:
    """Every RNG state the run touches, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
