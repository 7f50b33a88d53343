"""Losses: pixel (L1/MSE), perceptual (features of a frozen network: VGG19 or an RRDBNet trunk),
distillation (a frozen teacher's SR of the same LR) and adversarial (vanilla BCE or relativistic
average, both on logits)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def pixel_loss(kind: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean absolute ("l1") or squared ("mse") error, in float32."""
    sr, hr = sr.float(), hr.float()
    return F.l1_loss(sr, hr) if kind == "l1" else F.mse_loss(sr, hr)


class PerceptualLoss(nn.Module):
    """Distance between a frozen network's features of SR and of HR (the HR features carry no
    gradient). ``features`` returns one map (VGG19) or a list of maps (RRDB points), whose distances
    are averaged."""

    def __init__(self, features: nn.Module, criterion: str = "l1") -> None:
        super().__init__()
        self.features = features
        self.criterion = criterion

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = _as_list(self.features(hr))
        maps = _as_list(self.features(sr))
        return sum(pixel_loss(self.criterion, a, b) for a, b in zip(maps, target)) / len(maps)


def _as_list(maps: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return [maps] if isinstance(maps, torch.Tensor) else list(maps)


class DistillLoss(nn.Module):
    """Distance between the generator's SR and a frozen teacher's SR of the same LR batch."""

    def __init__(self, teacher: nn.Module, criterion: str = "l1") -> None:
        super().__init__()
        self.teacher = teacher
        self.criterion = criterion

    def forward(self, lr: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(lr)
        return pixel_loss(self.criterion, sr, target)


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
