"""Network interpolation (ESRGAN, Wang et al. 2018, sec. 3.4): theta = (1 - alpha) * theta_psnr +
alpha * theta_gan over every tensor, for two trainings of the same network. alpha = 0 is the PSNR
model, 1 the GAN model; values between trade fidelity for texture without retraining.

The two networks must be the same architecture with the same keys and shapes; anything else is an
``InterpolationError`` naming the first differences, never a silent partial blend.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch

from . import errors
from .model import Model

StateDict = dict[str, torch.Tensor]
_FEW = 4


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise errors.UsageError(f"--alpha must be between 0 (PSNR model) and 1 (GAN model), not {alpha}")
    return float(alpha)


def interpolate(sd_psnr: Mapping[str, torch.Tensor], sd_gan: Mapping[str, torch.Tensor], alpha: float, *,
                names: tuple[str, str] = ("PSNR model", "GAN model")) -> StateDict:
    """(1 - alpha) * sd_psnr + alpha * sd_gan, key by key, in the wider of the two float dtypes.

    ``torch.lerp`` gives each endpoint exactly (alpha = 0 returns the PSNR tensors bit for bit, 1 the
    GAN ones). Non-float tensors (counters) must be equal in both and are copied.
    """
    alpha = check_alpha(alpha)
    only_psnr = [k for k in sd_psnr if k not in sd_gan]
    only_gan = [k for k in sd_gan if k not in sd_psnr]
    if only_psnr or only_gan:
        parts = [f"only in the {name}: {_few(keys)}" for name, keys in ((names[0], only_psnr), (names[1], only_gan))
                 if keys]
        raise errors.InterpolationError(f"the networks have different keys ({'; '.join(parts)})")
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(sd_gan[k].shape)}" for k, v in sd_psnr.items()
              if v.shape != sd_gan[k].shape]
    if shapes:
        raise errors.InterpolationError(f"the networks have different shapes ({_few(shapes)})")
    out: StateDict = {}
    for key, a in sd_psnr.items():
        b = sd_gan[key]
        if a.is_floating_point() and b.is_floating_point():
            dtype = torch.promote_types(a.dtype, b.dtype)
            out[key] = torch.lerp(a.detach().to(dtype), b.detach().to(dtype), alpha)
        elif a.is_floating_point() or b.is_floating_point() or not torch.equal(a, b):
            raise errors.InterpolationError(f"{key} is not a float tensor in both networks and differs between them")
        else:
            out[key] = a.detach().clone()
    return out


def interpolate_files(psnr: str | Path, gan: str | Path, alpha: float) -> tuple[str, dict[str, Any], StateDict]:
    """Read two weights files (any layout ``upscale.loading`` knows), check they are the same network,
    and interpolate them; returns (arch, hparams, state dict)."""
    from . import loading

    check_alpha(alpha)
    found = []
    for path in (psnr, gan):
        sd, metadata = loading.read_state_dict(path)
        sd = loading.canonicalize(sd)
        arch, hparams = loading.detect(sd, metadata, source=path)
        found.append((arch, hparams, sd))
    (arch_p, hp_p, sd_p), (arch_g, hp_g, sd_g) = found
    if arch_p != arch_g:
        raise errors.InterpolationError(f"{psnr} is {arch_p} but {gan} is {arch_g}; only two trainings of the same "
                                        "network can be interpolated")
    if hp_p != hp_g:
        diff = ", ".join(f"{k}={hp_p.get(k)} vs {hp_g.get(k)}" for k in sorted(set(hp_p) | set(hp_g))
                         if hp_p.get(k) != hp_g.get(k))
        raise errors.InterpolationError(f"{psnr} and {gan} are {arch_p} with different hyperparameters ({diff})")
    return arch_p, hp_p, interpolate(sd_p, sd_g, alpha, names=(str(psnr), str(gan)))


def interpolation_metadata(psnr: str, gan: str, alpha: float) -> dict[str, str]:
    """What a saved interpolation records about where it came from."""
    return {"upscale.interp": json.dumps({"alpha": alpha, "psnr": psnr, "gan": gan})}


def interpolated_model(spec_or_name: Any, alpha: float) -> Model:
    """A registry model blended with its registered twin: ``upscale photo.jpg -m esrgan --alpha 0.8``.

    ``spec_or_name`` is a ``ModelSpec`` or a registry name; alpha 0 is the PSNR side of the pair and 1
    the GAN side, whichever of the two was named.
    """
    from . import archs, hub, loading, registry

    check_alpha(alpha)
    spec = registry.get_model(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
    if spec.twin is None:
        raise errors.UsageError(f"model {spec.name!r} has no registered PSNR/GAN twin, so --alpha cannot be used")
    twin = registry.get_model(spec.twin)
    pair = {spec.kind: spec, twin.kind: twin}
    if set(pair) != {"psnr", "gan"}:
        raise errors.RegistryError(f"model {spec.name!r} ({spec.kind}) and its twin {twin.name!r} ({twin.kind}) "
                                   "are not a psnr/gan pair")
    psnr, gan = pair["psnr"], pair["gan"]
    arch, hparams, sd = interpolate_files(hub.weights_path(psnr), hub.weights_path(gan), alpha)
    module = archs.build_module(arch, hparams)
    loading.load_strict(module, sd, source=f"{psnr.name}+{gan.name}", arch=arch)
    module.float().eval()
    name = f"{gan.name}@alpha={alpha:g}"
    return Model(module=module, arch=arch, hparams=hparams, source=name, name=name,
                 bf16_safe=psnr.bf16_safe and gan.bf16_safe,
                 metadata=interpolation_metadata(psnr.name, gan.name, alpha))


def _few(items: list[str]) -> str:
    return ", ".join(items[:_FEW]) + (f" (+{len(items) - _FEW} more)" if len(items) > _FEW else "")
