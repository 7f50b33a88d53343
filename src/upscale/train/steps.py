"""One optimisation step of the generator and of the discriminator, as two plain functions.

GAN training alternates them: ``g_step`` first (the discriminator judges the new SR batch but is not
updated), then ``d_step`` on that SR batch *detached*.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .losses import (DistillLoss, PerceptualLoss, discriminator_adversarial, generator_adversarial,
                     pixel_loss)


@dataclass(frozen=True)
class Amp:
    """Autocast settings: ``dtype`` None runs in float32. ``scaler`` (CUDA fp16 only) is per optimiser."""

    device_type: str
    dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


@dataclass
class GeneratorLoss:
    """Weights of the generator's loss terms (a zero weight skips the term entirely)."""

    pixel_kind: str = "l1"
    pixel_weight: float = 1.0
    perceptual: PerceptualLoss | None = None
    perceptual_weight: float = 0.0
    gan_type: str = "vanilla"
    gan_weight: float = 0.0
    distill: DistillLoss | None = None
    distill_weight: float = 0.0


def _apply(loss: torch.Tensor, opt: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def g_step(gen: nn.Module, disc: nn.Module | None, lr: torch.Tensor, hr: torch.Tensor, opt: torch.optim.Optimizer,
           spec: GeneratorLoss, amp: Amp, scaler: torch.amp.GradScaler | None = None
           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Update the generator once. Returns the SR batch (detached) and the loss terms (detached).

    ``disc`` is the plain module (not a DDP wrapper): it only judges here. Its parameters are frozen
    for the duration so the backward pass computes no gradients for them."""
    opt.zero_grad(set_to_none=True)
    use_gan = disc is not None and spec.gan_weight > 0
    if use_gan:
        disc.requires_grad_(False)
    try:
        with amp.autocast():
            sr = gen(lr)
            terms: dict[str, torch.Tensor] = {}
            if spec.pixel_weight > 0:
                terms["pix"] = spec.pixel_weight * pixel_loss(spec.pixel_kind, sr, hr)
            if spec.perceptual is not None and spec.perceptual_weight > 0:
                terms["percep"] = spec.perceptual_weight * spec.perceptual(sr, hr)
            if spec.distill is not None and spec.distill_weight > 0:
                terms["distill"] = spec.distill_weight * spec.distill(lr, sr)
            if use_gan:
                fake_logits = disc(sr)
                real_logits = disc(hr).detach() if spec.gan_type == "ragan" else None
                terms["gan"] = spec.gan_weight * generator_adversarial(spec.gan_type, fake_logits, real_logits)
            total = sum(terms.values())
        _apply(total, opt, scaler)
    finally:
        if use_gan:
            disc.requires_grad_(True)
    out = {f"g_{k}": v.detach() for k, v in terms.items()}
    out["g_total"] = total.detach()
    return sr.detach(), out


def d_step(disc: nn.Module, sr: torch.Tensor, hr: torch.Tensor, opt: torch.optim.Optimizer, gan_type: str,
           amp: Amp, scaler: torch.amp.GradScaler | None = None) -> dict[str, torch.Tensor]:
    """Update the discriminator once on a real batch and a fake batch.

    The fake batch must come in detached (``g_step`` returns it so): the discriminator's loss must
    not send gradients into the generator, whose update for this iteration is already done, and
    stopping there also spares a backward pass through the whole generator."""
    assert not sr.requires_grad, "d_step needs the fake batch detached from the generator's graph"
    opt.zero_grad(set_to_none=True)
    with amp.autocast():
        real_logits = disc(hr)
        fake_logits = disc(sr)
        loss = discriminator_adversarial(gan_type, real_logits, fake_logits)
    _apply(loss, opt, scaler)
    return {"d_total": loss.detach(), "d_real": real_logits.detach().float().mean(),
            "d_fake": fake_logits.detach().float().mean()}
