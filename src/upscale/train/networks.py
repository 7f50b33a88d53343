"""The networks' training-side helpers: which parameters train (name patterns), the EMA of the
generator's weights, and the learning-rate schedule (a pure function of the iteration)."""

from __future__ import annotations

import copy
import fnmatch
import math

import torch
from torch import nn

from ..errors import UsageError
from .config import TrainConfig


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
