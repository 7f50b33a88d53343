"""Weights files -> canonical state dicts -> built networks (``strict=True``), and back to safetensors.

Reading: ``.safetensors`` natively (its metadata comes back too); ``.pth``/``.pt``/``.ckpt`` only through
``torch.load(weights_only=True)``, so a pickle that would import code is refused without running it.
Training wrappers (``params_ema`` preferred, ``params``, ``state_dict``, ``model``) are unwrapped and
``module.`` (DataParallel) and ``_orig_mod.`` (a ``torch.compile``-d network) prefixes stripped; one of
our own training checkpoints gives the weights its run would export at that iteration.

Canonical keys are the ones our modules in ``upscale.archs`` use (BasicSR's where BasicSR has the
network). Other known layouts (old ESRGAN, the ESRGAN repository, MMSR) are renamed by the family that
owns them (``archs/<family>.py``); ``canonicalize`` asks each family in turn.

Our own files carry ``upscale.arch`` and ``upscale.hparams`` (JSON) in their safetensors metadata; when
present they take precedence over what the keys suggest.

Before any network is built for real, its shapes are derived on the ``meta`` device and compared with
the file's (forged hyperparameters cost nothing), and weights holding NaN or inf are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from . import archs, atomic, errors
from .model import Model
from .pickles import read_pickle

log = logging.getLogger(__name__)

META_ARCH = "upscale.arch"
META_HPARAMS = "upscale.hparams"
META_FORMAT = "upscale.format"
META_BF16_SAFE = "upscale.bf16_safe"
FORMAT_VERSION = "1"

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt")
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")   # DataParallel / DDP, torch.compile's OptimizedModule

StateDict = dict[str, torch.Tensor]

# --- reading --------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors of a weights file (unwrapped, ``module.``/``_orig_mod.`` stripped) and its safetensors metadata.

    Raises ``WeightsError`` (missing, empty, corrupt, unsupported suffix, no tensors) and
    ``UnsafeWeightsError`` (a pickle that would import something other than tensor types).
    """
    p = Path(path)
    if not p.exists():
        raise errors.WeightsError("no such weights file", path=p)
    if not p.is_file():
        raise errors.WeightsError("not a regular file", path=p)
    if p.stat().st_size == 0:
        raise errors.WeightsError("empty file (0 bytes)", path=p)
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        obj, metadata = _read_safetensors(p)
    elif suffix in PICKLE_SUFFIXES:
        obj, metadata = _training_checkpoint(read_pickle(p))
    else:
        known = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
        raise errors.WeightsError(f"unsupported weights format {suffix or '(no suffix)'!r}; expected {known}",
                                  path=p)
    sd = _find_state_dict(obj)
    if sd is None:
        raise errors.WeightsError(f"holds no state dict of tensors (top-level keys: {errors.listed(_keys_of(obj))})",
                                  path=p)
    return _strip_module_prefix(sd, p), metadata


def _training_checkpoint(obj: Any) -> tuple[Any, dict[str, str]]:
    """One of our training checkpoints (``RUN/checkpoints/iter_N.pt``: a dict with the run's ``arch``,
    ``hparams`` and ``generator``) as what ``upscale train`` would export at that iteration: the EMA
    weights where the run keeps an EMA, else the generator's, with the run's architecture as metadata
    (so a network whose scale its keys do not show, such as SRCNN, loads at the scale it was trained
    for). Anything else comes back as it is, without metadata."""
    if not (isinstance(obj, Mapping) and isinstance(obj.get("arch"), str) and isinstance(obj.get("hparams"), Mapping)
            and _is_tensor_dict(obj.get("generator"))):
        return obj, {}
    weights = obj["ema"] if _is_tensor_dict(obj.get("ema")) else obj["generator"]
    return weights, {META_ARCH: obj["arch"], META_HPARAMS: json.dumps(dict(obj["hparams"]))}


def _read_safetensors(p: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        with safetensors.safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise errors.WeightsError(f"corrupt or unreadable safetensors file ({errors.first_sentence(e)})",
                                  path=p) from e
    return sd, metadata


def _find_state_dict(obj: Any, depth: int = 0) -> StateDict | None:
    """``obj`` itself when it is a flat dict of tensors, else the first wrapper that leads to one."""
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and depth < 3:
        for key in WRAPPER_KEYS:
            if key in obj:
                found = _find_state_dict(obj[key], depth + 1)
                if found is not None:
                    return found
    return None


def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _strip_module_prefix(sd: StateDict, p: Path) -> StateDict:
    out: StateDict = {}
    for key, value in sd.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.partition(".")[2]
        if key in out:
            raise errors.WeightsError(f"key {key!r} appears twice once 'module.'/'_orig_mod.' prefixes are removed",
                                      path=p)
        out[key] = value
    return out


# --- key layouts --------------------------------------------------------------------------------
def canonicalize(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a state dict in any known layout to our canonical keys (a new dict; tensors shared).

    Each family owns its legacy layouts (``ArchFamily.canonicalize``); the first that recognises the
    keys renames them. Keys a layout does not explain are kept, so a strict load reports them.
    """
    for family in archs.FAMILIES:
        renamed = family.canonicalize(sd) if family.canonicalize else None
        if renamed is not None:
            return renamed
    return dict(sd)


# --- detection ----------------------------------------------------------------------------------
def detect(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None, *,
           source: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """Architecture name and full hyperparameters (defaults filled in) of a canonical state dict.

    ``upscale.arch`` / ``upscale.hparams`` in the metadata win over what the keys say; without them
    each family in ``archs.FAMILIES`` is asked in turn and the first that recognises the keys wins.
    """
    metadata = metadata or {}
    arch = metadata.get(META_ARCH)
    if arch:
        family = archs.BY_NAME.get(arch)
        if family is None:
            raise errors.UnknownArchitectureError(
                f"metadata names unknown architecture {arch!r}; known: {', '.join(archs.BY_NAME)}", path=source)
        detected = _try_detect(family, sd) or {}
        return arch, {**family.defaults, **detected, **family.metadata_defaults, **_metadata_hparams(metadata, source)}
    for family in archs.FAMILIES:
        hp = _try_detect(family, sd)
        if hp is not None:
            return family.name, {**family.defaults, **hp}
    raise errors.UnknownArchitectureError(
        f"no known architecture matches these weights ({len(sd)} key{'' if len(sd) == 1 else 's'}: "
        f"{errors.listed(list(sd))}){_layout_hint(sd)}",
        path=source)


def _layout_hint(sd: Mapping[str, torch.Tensor]) -> str:
    """What a family says about keys that nearly look like it ("; it looks like ...")."""
    for family in archs.FAMILIES:
        hint = family.explain(sd) if family.explain else ""
        if hint:
            return f"; {hint}"
    return ""


def _try_detect(family: archs.ArchFamily, sd: Mapping[str, torch.Tensor]) -> dict | None:
    """A family's detect, with a foreign state dict that trips it (odd key, missing tensor) as no match."""
    try:
        return family.detect(dict(sd))
    except (KeyError, ValueError, IndexError, TypeError, AttributeError, ZeroDivisionError) as e:
        log.debug("%s.detect gave up: %r", family.name, e)
        return None


def _metadata_hparams(metadata: Mapping[str, str], source: str | Path | None) -> dict[str, Any]:
    raw = metadata.get(META_HPARAMS, "{}")
    try:
        hp = json.loads(raw)
    except json.JSONDecodeError as e:
        raise errors.WeightsError(f"metadata {META_HPARAMS} is not valid JSON ({e.msg})", path=source) from None
    if not isinstance(hp, dict):
        raise errors.WeightsError(f"metadata {META_HPARAMS} must be a JSON object, not {raw[:40]!r}", path=source)
    return hp


# --- building -----------------------------------------------------------------------------------
def read_canonical(path: str | Path) -> tuple[StateDict, str, dict[str, Any], dict[str, str]]:
    """(canonical state dict, architecture, full hyperparameters, metadata) of a weights file: read,
    canonicalize and detect, nothing built."""
    sd, metadata = read_state_dict(path)
    sd = canonicalize(sd)
    arch, hparams = detect(sd, metadata, source=path)
    return sd, arch, hparams, metadata


def load_model(path: str | Path, *, name: str = "", arch: str | None = None,
               hparams: Mapping[str, Any] | None = None) -> Model:
    """Read, canonicalize, detect, build and strictly load a weights file: the one way a file becomes
    a ``Model``. The module comes back in eval mode, float32, on the CPU; ``upscale.bf16_safe`` in
    the metadata sets ``Model.bf16_safe``. ``arch`` (with ``hparams``) skips detection: the file must
    then load into that registered network."""
    if arch is None:
        sd, arch, hparams, metadata = read_canonical(path)
    else:
        raw, metadata = read_state_dict(path)
        sd = canonicalize(raw)
    return model_from_state_dict(sd, arch, hparams or {}, source=str(path), name=name, metadata=metadata)


def model_from_state_dict(sd: Mapping[str, torch.Tensor], arch: str, hparams: Mapping[str, Any], *,
                          source: str = "", name: str = "", metadata: Mapping[str, str] | None = None) -> Model:
    """Build ``arch`` (family defaults filled in) and load a canonical state dict into it strictly; the
    module comes back in eval mode, float32, on the CPU. Used by ``load_model`` and for state dicts that
    did not come from a weights file (ncnn conversion, interpolation).

    The shapes are checked first on a network built on the ``meta`` device (no memory, no time), so a
    file whose hyperparameters claim a huge network is refused before anything is allocated; tensors
    holding NaN or inf are refused too (they would give a black image)."""
    metadata = dict(metadata or {})
    family = archs.BY_NAME.get(arch)
    if family is None:
        raise errors.UnknownArchitectureError(f"unknown architecture {arch!r}; known: {', '.join(archs.BY_NAME)}",
                                              path=source or None)
    hparams = {**family.defaults, **hparams}
    bf16_safe = _metadata_bool(metadata, META_BF16_SAFE, True, source)
    sd = check_dtypes(sd, source=source or None)
    with torch.device("meta"):
        skeleton = _build(arch, hparams, source)
    check_fits(skeleton, sd, source=source or None, arch=arch)
    check_finite(sd, source=source or None)
    module = _build(arch, hparams, source)
    load_strict(module, sd, source=source or None, arch=arch)
    module.float().eval()
    return Model(module=module, arch=arch, hparams=hparams, source=source, name=name, bf16_safe=bf16_safe,
                 metadata=metadata)


def _build(arch: str, hparams: dict[str, Any], source: str | Path | None) -> nn.Module:
    try:
        return archs.build_module(arch, hparams)
    except (TypeError, ValueError, KeyError, RuntimeError, OverflowError) as e:
        raise errors.ArchitectureMismatchError(f"cannot build {arch} with {_hp_text(hparams)} ({e})",
                                               path=source or None, arch=arch) from None


def check_dtypes(sd: Mapping[str, torch.Tensor], *, source: str | Path | None = None) -> StateDict:
    """``sd`` with 8-bit float tensors widened to float32 (torch computes little on them, not even
    ``isfinite``); ``WeightsError`` naming the tensors that are not floating point at all (integer,
    bool or complex weights cast into a float network give garbage). BatchNorm's step counters are
    integers by nature and pass."""
    bad = [k for k, v in sd.items() if not v.is_floating_point() and not k.endswith("num_batches_tracked")]
    if bad:
        kinds = sorted({str(sd[k].dtype).replace("torch.", "") for k in bad})
        raise errors.WeightsError(f"{len(bad)} tensor{'' if len(bad) == 1 else 's'} ({errors.listed(bad)}) hold "
                                  f"{', '.join(kinds)} values; network weights are floating point", path=source)
    return {k: v.float() if v.is_floating_point() and v.element_size() == 1 else v for k, v in sd.items()}


def check_finite(sd: Mapping[str, torch.Tensor], *, source: str | Path | None = None) -> None:
    """WeightsError naming the tensors that hold NaN or inf (a network with them outputs garbage)."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise errors.WeightsError(f"{len(bad)} tensor{'' if len(bad) == 1 else 's'} hold NaN/inf "
                                  f"({errors.listed(bad)}); refusing weights that would give a black or garbage image",
                                  path=source)


def check_fits(module: nn.Module, sd: Mapping[str, torch.Tensor], *, source: str | Path | None = None,
               arch: str | None = None) -> StateDict:
    """ArchitectureMismatchError listing missing and unexpected keys and shape differences between
    ``module`` (which may live on the ``meta`` device) and ``sd``; returns ``sd`` completed for a strict
    load. BatchNorm's ``num_batches_tracked`` counters (unused at inference, absent from some old files)
    are the one thing taken from the module when the file lacks them."""
    expected = module.state_dict()
    sd = dict(sd)
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = expected[key]
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} in file vs {tuple(v.shape)} in model"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {errors.listed(items)}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items]
        raise errors.ArchitectureMismatchError(f"weights do not fit {arch or type(module).__name__}: "
                                               + "; ".join(parts), path=source, arch=arch, missing=missing,
                                               unexpected=unexpected)
    return sd


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], *, source: str | Path | None = None,
                arch: str | None = None) -> None:
    """``module.load_state_dict(sd, strict=True)``, with any mismatch raised as ArchitectureMismatchError
    (see ``check_fits``)."""
    sd = check_fits(module, sd, source=source, arch=arch)
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise errors.ArchitectureMismatchError(f"weights do not fit {arch}: {errors.first_sentence(e)}", path=source,
                                               arch=arch) from None


def _metadata_bool(metadata: Mapping[str, str], key: str, default: bool, source: str | Path | None) -> bool:
    raw = metadata.get(key)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise errors.WeightsError(f"metadata {key} must be true or false, not {raw[:40]!r}", path=source or None)


# --- saving -------------------------------------------------------------------------------------
def model_state_dict(model: Model | nn.Module) -> StateDict:
    """CPU, contiguous, float32 (floating tensors) copies of a module's state dict, ready to save."""
    module = model.module if isinstance(model, Model) else model
    return {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().to("cpu"))
            .contiguous().clone() for k, v in module.state_dict().items()}


def save_model(path: str | Path, state_dict: Mapping[str, torch.Tensor], arch: str, hparams: Mapping[str, Any],
               extra_metadata: Mapping[str, str] | None = None) -> str:
    """Write ``state_dict`` as safetensors with our metadata (arch, JSON hparams, format version),
    atomically (``upscale.atomic``); returns the sha256 of the bytes written. ``extra_metadata`` cannot
    override the three keys above. Raises ``WeightsError`` when the file cannot be written."""
    archs.get_family(arch)  # an unknown name is a programming error: KeyError listing the known ones
    tensors: StateDict = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        # clone: safetensors refuses tensors that share storage
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    metadata = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    metadata.update({META_ARCH: arch, META_HPARAMS: json.dumps(dict(hparams), sort_keys=True),
                     META_FORMAT: FORMAT_VERSION})
    data = safetensors.torch.save(tensors, metadata=metadata)
    path = Path(path)
    try:
        atomic.write_bytes(path, data)
    except OSError as e:
        raise errors.WeightsWriteError(f"cannot write weights ({atomic.os_reason(e, path.parent)})", path=path) from None
    return hashlib.sha256(data).hexdigest()


# --- message helpers ----------------------------------------------------------------------------
def _keys_of(obj: Any) -> list[str]:
    return [str(k) for k in obj] if isinstance(obj, Mapping) else [type(obj).__name__]


def _hp_text(hparams: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()))
