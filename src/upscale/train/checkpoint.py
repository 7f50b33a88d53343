"""Checkpoints: one ``torch.save`` file per saved iteration, written atomically (temp file in the same
folder + ``os.replace``) and read back only with ``torch.load(weights_only=True)``, so nothing in a
checkpoint can run code. Contents are plain containers of tensors, numbers and strings.

Layout of ``{out}/checkpoints/``: ``iter_00001000.pt`` ... (the last ``keep_last`` are kept) and
``best.pt`` (the state at the best validation PSNR).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

_NAME = re.compile(r"^iter_(\d{8,})\.pt$")
_UMASK = os.umask(0)
os.umask(_UMASK)


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_path(out: str | Path, iteration: int) -> Path:
    return checkpoint_dir(out) / f"iter_{iteration:08d}.pt"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError("checkpoint not found", path=p)
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or unsafe files are all "cannot load"
        raise CheckpointError(f"cannot load checkpoint safely: {err}".splitlines()[0], path=p) from None
    if not isinstance(state, dict) or "iteration" not in state or "generator" not in state:
        raise CheckpointError("not an upscale training checkpoint", path=p)
    return state


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the numbered checkpoints, oldest first."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), f) for f in folder.iterdir() if (m := _NAME.match(f.name))]
    return sorted(found)


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
