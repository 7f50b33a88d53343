"""Reading a pickled checkpoint (``.pth``/``.pt``/``.ckpt``) without running its code: only through
``torch.load(weights_only=True)``; a pickle that would import anything but tensor types is refused,
and the refusal names what it would have imported, found by reading the pickle's opcodes
(``pickletools``), never by executing them."""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import errors


def read_pickle(p: Path) -> Any:
    """What a .pth/.pt/.ckpt file holds, unpickled only by ``torch.load(weights_only=True)``:
    ``UnsafeWeightsError`` (naming what it would import) or ``WeightsError`` (corrupt) otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; the errors say enough
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _pickle_refusal(p, e) from None
    except Exception as e:  # torch.load raises many types (EOFError, KeyError, RuntimeError...) on garbage
        raise errors.WeightsError(f"corrupt or not a PyTorch checkpoint ({errors.first_sentence(e)})", path=p) from None


def _pickle_refusal(p: Path, e: pickle.UnpicklingError) -> errors.WeightsError:
    """Tell a refused import (unsafe) from a stream that is not a pickle at all (corrupt)."""
    inner = e.__context__ if isinstance(e.__context__, pickle.UnpicklingError) else e
    found = re.search(r"GLOBAL ([\w.]+)", str(inner)) or re.search(r"GLOBAL ([\w.]+)", str(e))
    names = [found.group(1)] if found else [g for g in _pickle_globals(p) if not _is_tensor_global(g)]
    if names:
        return errors.UnsafeWeightsError(
            f"refused: its pickle would import {errors.listed(names)}, which is not a tensor type; nothing was run "
            "(convert it to .safetensors with a tool you trust)", path=p)
    return errors.WeightsError(f"corrupt or not a PyTorch checkpoint ({errors.first_sentence(inner)})", path=p)


def _is_tensor_global(name: str) -> bool:
    return name.startswith("torch.") or name == "collections.OrderedDict"


_IDENT = re.compile(r"^[A-Za-z_][\w.]*$")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
               "STRING"}


def _pickle_globals(p: Path) -> list[str]:
    """Names imported by the complete pickles in a file (zip checkpoint or legacy/raw pickle stream).

    Only reads opcodes (``pickletools``), never executes them. A pickle that breaks off before STOP
    contributes nothing, so random bytes are not mistaken for an import.
    """
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                members = [n for n in z.namelist() if n.endswith("data.pkl")]
                data = z.read(members[0]) if members else b""
        else:
            data = p.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    stream = io.BytesIO(data)
    names: list[str] = []
    while stream.tell() < len(data):
        pending: list[str] = []
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    pending.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    pending.append(f"{strings[-2]}.{strings[-1]}")
                elif op.name in _STRING_OPS and isinstance(arg, (str, bytes)):
                    strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
        except Exception:  # noqa: BLE001 - anything pickletools cannot parse ends the scan
            break
        names += [n for n in pending if _IDENT.match(n) and n not in names]
    return names
