"""Network interpolation (ESRGAN, Wang et al. 2018, sec. 3.4): theta = (1 - alpha) * theta_psnr +
alpha * theta_gan over every tensor, for two trainings of the same network. alpha = 0 is the PSNR
model, 1 the GAN model; values between trade fidelity for texture without retraining.

The two networks must be the same architecture with the same keys and shapes; anything else is an
``InterpolationError`` naming the first differences, never a silent partial blend.

Pure tensor maths over state dicts: reading files and finding a registry model's twin is
``upscale.resolve``'s job.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import torch

from . import errors

StateDict = dict[str, torch.Tensor]


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise errors.UsageError(f"alpha must be between 0 (PSNR model) and 1 (GAN model), not {alpha}",
                                params=("alpha",))
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
        parts = [f"only in the {name}: {errors.listed(keys)}" for name, keys in ((names[0], only_psnr), (names[1], only_gan))
                 if keys]
        raise errors.InterpolationError(f"the networks have different keys ({'; '.join(parts)})")
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(sd_gan[k].shape)}" for k, v in sd_psnr.items()
              if v.shape != sd_gan[k].shape]
    if shapes:
        raise errors.InterpolationError(f"the networks have different shapes ({errors.listed(shapes)})")
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


def check_same_network(a: tuple[str, Mapping[str, Any]], b: tuple[str, Mapping[str, Any]],
                       names: tuple[str, str] = ("PSNR model", "GAN model")) -> None:
    """InterpolationError unless the two (architecture, hyperparameters) describe the same network."""
    (arch_a, hp_a), (arch_b, hp_b) = a, b
    if arch_a != arch_b:
        raise errors.InterpolationError(f"{names[0]} is {arch_a} but {names[1]} is {arch_b}; only two trainings "
                                        "of the same network can be interpolated")
    if dict(hp_a) != dict(hp_b):
        diff = ", ".join(f"{k}={hp_a.get(k)} vs {hp_b.get(k)}" for k in sorted(set(hp_a) | set(hp_b))
                         if hp_a.get(k) != hp_b.get(k))
        raise errors.InterpolationError(f"{names[0]} and {names[1]} are {arch_a} with different hyperparameters "
                                        f"({diff})")


def interpolation_metadata(psnr: str, gan: str, alpha: float) -> dict[str, str]:
    """What a saved interpolation records about where it came from."""
    return {"upscale.interp": json.dumps({"alpha": alpha, "psnr": psnr, "gan": gan})}
