"""The networks' training-side helpers: the generator a run starts from (``init`` or built fresh),
which parameters train (name patterns), the EMA of the generator's weights, and the learning-rate
schedule (a pure function of the iteration)."""

from __future__ import annotations

import copy
import fnmatch
import math
from typing import Any

import torch
from torch import nn

from .. import archs
from ..errors import UsageError
from ..model import Model
from .config import PRESETS, TrainConfig


def build_generator(cfg: TrainConfig) -> tuple[nn.Module, str, dict[str, Any]]:
    """(module, arch, hparams): from ``cfg.init`` (registry name or weights file) or built fresh."""
    if cfg.init:
        model = _load_init(cfg.init)
        if model.scale != cfg.scale:
            raise UsageError(f"init {cfg.init} is a x{model.scale} model, but training is x{cfg.scale}",
                             params=("init",))
        if cfg.arch != PRESETS[cfg.preset].get("arch", TrainConfig.arch) and cfg.arch != model.arch:
            # an arch asked for (not the preset's default) that the init is not: never trained silently
            raise UsageError(f"init {cfg.init} is a {model.arch} model, but arch is {cfg.arch}; leave arch "
                             "out to fine-tune it as it is", params=("init", "arch"))
        hparams = {**model.hparams, **cfg.hparams}
        if hparams != dict(model.hparams):
            # e.g. --hparam silu_first=true: the same weights in a network built with other settings
            # (model_from_state_dict refuses any shape that does not fit)
            from ..loading import model_from_state_dict

            _check_hparam_names(archs.get_family(model.arch), cfg.hparams)
            model = model_from_state_dict(model.module.state_dict(), model.arch, hparams, source=cfg.init)
        return model.module.float().train(), model.arch, dict(model.hparams)
    family = archs.get_family(cfg.arch) if cfg.arch in archs.BY_NAME else None
    if family is None:
        raise UsageError(f"unknown architecture {cfg.arch!r}; known: {', '.join(archs.BY_NAME)}")
    _check_hparam_names(family, cfg.hparams)
    hparams = {**family.defaults, **cfg.hparams, "scale": cfg.scale}
    try:
        module = family.build(**hparams)
    except (ValueError, TypeError) as err:
        raise UsageError(f"cannot build {cfg.arch} with {hparams}: {err}") from None
    return module.train(), cfg.arch, hparams


def _check_hparam_names(family: archs.ArchFamily, given: dict[str, Any]) -> None:
    unknown = set(given) - set(family.defaults)
    if unknown:
        raise UsageError(f"{family.name} has no hyperparameter {sorted(unknown)[0]!r}; "
                         f"it takes {', '.join(family.defaults)}")


def _load_init(init: str) -> Model:
    """A weights file, or a registry name resolved through the hub (downloaded once, verified)."""
    from ..resolve import resolve_model

    return resolve_model(init)


def select_trainable(module: nn.Module, trainable: list[str], freeze: list[str]) -> list[nn.Parameter]:
    """Set requires_grad by name patterns (fnmatch): in ``trainable`` (all when empty) and not in
    ``freeze``. UsageError when nothing would train."""
    params = []
    for name, p in module.named_parameters():
        keep = (not trainable or any(fnmatch.fnmatchcase(name, pat) for pat in trainable)) \
            and not any(fnmatch.fnmatchcase(name, pat) for pat in freeze)
        p.requires_grad_(keep)
        if keep:
            params.append(p)
    if not params:
        raise UsageError(f"no parameter matches the trainable patterns {trainable} (minus {freeze})")
    return params


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied as they are).

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average forgets the
    random initial weights within a few hundred iterations instead of ~5000 at 0.999: early
    validations then judge the trained weights, not a blend with the initialisation."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, num_updates: int) -> None:
        decay = min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))
        src = dict(module.named_parameters())
        ema_params = [p for _, p in self.module.named_parameters()]
        live = [src[n].detach() for n, _ in self.module.named_parameters()]
        torch._foreach_lerp_(ema_params, live, 1.0 - decay)
        for (_, b_ema), (_, b) in zip(self.module.named_buffers(), module.named_buffers()):
            b_ema.copy_(b)


def lr_factor(cfg: TrainConfig, iteration: int) -> float:
    """Multiplier of the base learning rate for 1-based ``iteration`` (a pure function: no state)."""
    done = iteration - 1
    if cfg.scheduler == "constant":
        return 1.0
    if cfg.scheduler == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if done >= m)
    floor = min(cfg.min_learning_rate / cfg.learning_rate, 1.0)
    progress = min(done, cfg.max_iters) / cfg.max_iters
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
