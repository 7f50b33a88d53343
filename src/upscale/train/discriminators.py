"""Discriminators of the GAN presets. Each returns logits, one per image (``patch``: one per patch),
with no sigmoid: the losses use ``binary_cross_entropy_with_logits``, which is the numerically stable
form of sigmoid + BCE."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError


class SRGANDiscriminator(nn.Module):
    """SRGAN (Ledig et al. 2017): eight 3x3 convs 64 -> 512, stride 2 on every second one, BN after
    all but the first, LeakyReLU 0.2, then dense 1024, LeakyReLU, dense 1."""

    def __init__(self, input_px: int = 96, num_in_ch: int = 3, num_feat: int = 64) -> None:
        super().__init__()
        if input_px % 16:
            raise UsageError(f"the SRGAN discriminator needs a crop multiple of 16 px, not {input_px}")
        layers: list[nn.Module] = []
        in_ch = num_in_ch
        for i in range(8):
            out_ch = num_feat * 2 ** (i // 2)
            layers.append(nn.Conv2d(in_ch, out_ch, 3, 2 if i % 2 else 1, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = input_px // 16
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_ch * side * side, 1024),
                                        nn.LeakyReLU(0.2, inplace=True), nn.Linear(1024, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's discriminator: five stages of (3x3 conv, 4x4 stride-2 conv), 64 -> 512 channels, BN
    after every conv but the first, LeakyReLU 0.2, then dense 100 and dense 1. For 128 px crops the
    last feature map is 4x4x512 (input_px must be a multiple of 32)."""

    def __init__(self, input_px: int = 128, num_in_ch: int = 3, num_feat: int = 64) -> None:
        super().__init__()
        if input_px % 32:
            raise UsageError(f"the VGG-style discriminator needs a crop multiple of 32 px, not {input_px}")
        layers: list[nn.Module] = []
        in_ch = num_in_ch
        for stage in range(5):
            out_ch = num_feat * min(2**stage, 8)
            layers.append(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=stage == 0))
            if stage > 0:
                layers.append(nn.BatchNorm2d(out_ch))
            layers += [nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(out_ch, out_ch, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2, inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = input_px // 32
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_ch * side * side, 100),
                                        nn.LeakyReLU(0.2, inplace=True), nn.Linear(100, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TinyDiscriminator(nn.Module):
    """The discriminator of our tiny x2 seed design: conv 7x7 64, 7x7 64, 3x3 32, 3x3 1 (stride 1,
    LeakyReLU 0.01 after each), then one dense layer from the input_px x input_px map to a logit."""

    def __init__(self, input_px: int = 96, num_in_ch: int = 3) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.01, inplace=True)
        self.features = nn.Sequential(
            nn.Conv2d(num_in_ch, 64, 7, 1, 3), act, nn.Conv2d(64, 64, 7, 1, 3), act,
            nn.Conv2d(64, 32, 3, 1, 1), act, nn.Conv2d(32, 1, 3, 1, 1), act)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(input_px * input_px, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class PatchDiscriminator(nn.Module):
    """A light, fully convolutional discriminator for CPU fine-tuning: three 4x4 stride-2 convs
    (3 -> 32 -> 64 -> 128), a 3x3 conv and a 3x3 conv to one logit per patch, LeakyReLU 0.2, every
    conv spectrally normalised (no batch norm: no batch statistics, and the same network under DDP).

    It returns a map of logits, one per patch of ~54 HR px (one for every 8 px); the losses average
    over them, so RaGAN compares each patch with the batch's mean. At 128 px it costs ~0.11 G MAC per
    image (``vgg128`` ~2.2, ``srgan`` ~1.6); a training step with it took 1/12 of one with ``vgg128``
    on our CPU (docs/training.md, "The GAN twin"). Any crop that is a multiple of 8 px works."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        f = num_feat
        self.features = nn.Sequential(
            sn(nn.Conv2d(num_in_ch, f, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(f, 2 * f, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(2 * f, 4 * f, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(4 * f, 4 * f, 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True))
        self.classifier = sn(nn.Conv2d(4 * f, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_discriminator(name: str, input_px: int, num_in_ch: int = 3) -> nn.Module:
    if name == "srgan":
        return SRGANDiscriminator(input_px, num_in_ch)
    if name == "vgg128":
        return VGGStyleDiscriminator(input_px, num_in_ch)
    if name == "tiny":
        return TinyDiscriminator(input_px, num_in_ch)
    if name == "patch":
        if input_px % 8:
            raise UsageError(f"the patch discriminator needs a crop multiple of 8 px, not {input_px}")
        return PatchDiscriminator(num_in_ch)
    raise UsageError(f"unknown discriminator {name!r}; choose srgan, vgg128, tiny or patch")
