"""Losses: pixel (L1/MSE), perceptual (VGG19 features) and adversarial (vanilla BCE or relativistic
average, both on logits)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .vgg import VGG19Features


def pixel_loss(kind: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean absolute ("l1") or squared ("mse") error, in float32."""
    sr, hr = sr.float(), hr.float()
    return F.l1_loss(sr, hr) if kind == "l1" else F.mse_loss(sr, hr)


class PerceptualLoss(nn.Module):
    """Distance between VGG19 features of SR and HR (the HR features carry no gradient)."""

    def __init__(self, vgg: VGG19Features, criterion: str = "l1") -> None:
        super().__init__()
        self.vgg = vgg
        self.criterion = criterion

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.vgg(hr)
        return pixel_loss(self.criterion, self.vgg(sr), target)


def _bce(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def generator_adversarial(gan_type: str, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
    """The generator's adversarial loss. ``real_logits`` (RaGAN only) must already be detached."""
    if gan_type == "vanilla":
        return _bce(fake_logits, True)
    assert real_logits is not None
    # Relativistic average: the generator wants real images to look *less* real than the average fake
    # and fakes more real than the average real image.
    return 0.5 * (_bce(real_logits - fake_logits.mean(), False) + _bce(fake_logits - real_logits.mean(), True))


def discriminator_adversarial(gan_type: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on a real batch and a (detached) fake batch."""
    if gan_type == "vanilla":
        return 0.5 * (_bce(real_logits, True) + _bce(fake_logits, False))
    return 0.5 * (_bce(real_logits - fake_logits.mean(), True) + _bce(fake_logits - real_logits.mean(), False))
