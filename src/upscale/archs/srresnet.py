"""SRResNet family: the SRGAN generator and BasicSR's MSRResNet.

- ``SRResNet`` (SRGAN, Ledig et al. 2017): 9x9 head with PReLU, ``num_block`` residual blocks
  (conv-BN-PReLU-conv-BN, BN optional), a conv(+BN) after the trunk with a long skip, x2 sub-pixel
  stages (conv -> pixel shuffle -> PReLU), 9x9 tail.
- ``MSRResNet`` (BasicSR): no BN, LeakyReLU 0.1, 3x3 convs, sub-pixel upsampling, ``conv_hr`` and a
  bilinear-upsampled input added to the output. Keys match BasicSR's so its weights load as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from . import catalog

NAME = "srresnet"
MS_NAME = "msrresnet"
DEFAULTS = catalog.DEFAULTS[NAME]
MS_DEFAULTS = catalog.DEFAULTS[MS_NAME]


def _stages(scale: int) -> list[int]:
    if scale == 4:
        return [2, 2]
    if scale in (2, 3):
        return [scale]
    raise ValueError(f"SRResNet supports scale 2, 3 or 4, not {scale}")


class SRGANBlock(nn.Module):
    def __init__(self, num_feat: int, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(num_feat) if bn else nn.Identity()
        self.prelu = nn.PReLU(num_feat)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(num_feat) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class SRResNet(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 scale: int = 4, bn: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 9, 1, 4)
        self.prelu_first = nn.PReLU(num_feat)
        self.body = nn.Sequential(*[SRGANBlock(num_feat, bn) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=not bn)
        self.bn_body = nn.BatchNorm2d(num_feat) if bn else nn.Identity()
        ups: list[nn.Module] = []
        for s in _stages(scale):
            ups += [nn.Conv2d(num_feat, num_feat * s * s, 3, 1, 1), nn.PixelShuffle(s), nn.PReLU(num_feat)]
        self.upsample = nn.Sequential(*ups)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.prelu_first(self.conv_first(x))
        feat = feat + self.bn_body(self.conv_body(self.body(feat)))
        return self.conv_last(self.upsample(feat))


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        stages = _stages(scale)
        self.upconv1 = nn.Conv2d(num_feat, num_feat * stages[0] ** 2, 3, 1, 1)
        self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1) if len(stages) == 2 else None
        self.pixel_shuffle1 = nn.PixelShuffle(stages[0])
        self.pixel_shuffle2 = nn.PixelShuffle(2)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.lrelu(self.conv_first(x))
        out = self.body(feat)
        out = self.lrelu(self.pixel_shuffle1(self.upconv1(out)))
        if self.upconv2 is not None:
            out = self.lrelu(self.pixel_shuffle2(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


def build(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16, scale: int = 4,
          bn: bool = True) -> SRResNet:
    return SRResNet(num_in_ch, num_out_ch, num_feat, num_block, scale, bn)


def build_ms(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
             scale: int = 4) -> MSRResNet:
    return MSRResNet(num_in_ch, num_out_ch, num_feat, num_block, scale)


def size_multiple(hp: dict) -> int:
    return 1


def receptive_radius(hp: dict) -> int:
    return 4 + 2 * hp.get("num_block", 16) + 1 + 1 + 4


def receptive_radius_ms(hp: dict) -> int:
    return 1 + 2 * hp.get("num_block", 16) + 1 + 1 + 1 + 1 + 1


def detect(sd: dict[str, torch.Tensor]) -> dict | None:
    """SRGAN-style SRResNet (9x9 head, ``prelu_first``) in canonical keys, or None."""
    if "prelu_first.weight" not in sd or "conv_first.weight" not in sd or "conv_last.weight" not in sd:
        return None
    num_feat, num_in_ch = (int(v) for v in sd["conv_first.weight"].shape[:2])
    num_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    ups = sorted({int(k.split(".")[1]) for k in sd if k.startswith("upsample.") and k.endswith(".weight")
                  and sd[k].ndim == 4})
    scale = 1
    for i in ups:
        scale *= int(round((sd[f"upsample.{i}.weight"].shape[0] // num_feat) ** 0.5))
    return {"num_in_ch": num_in_ch, "num_out_ch": int(sd["conv_last.weight"].shape[0]), "num_feat": num_feat,
            "num_block": int(num_block), "scale": scale, "bn": "body.0.bn1.weight" in sd}


def detect_ms(sd: dict[str, torch.Tensor]) -> dict | None:
    """BasicSR MSRResNet (``upconv1``, ``conv_hr``, ``body.N.conv1``), or None."""
    if "upconv1.weight" not in sd or "conv_hr.weight" not in sd or "body.0.conv1.weight" not in sd:
        return None
    num_feat, num_in_ch = (int(v) for v in sd["conv_first.weight"].shape[:2])
    num_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    if "upconv2.weight" in sd:
        scale = 4
    else:
        scale = int(round((sd["upconv1.weight"].shape[0] // num_feat) ** 0.5))
    return {"num_in_ch": num_in_ch, "num_out_ch": int(sd["conv_last.weight"].shape[0]), "num_feat": num_feat,
            "num_block": int(num_block), "scale": scale}


# --- legacy key layout: MMSR's MSRResNet (``recon_trunk.N.convK``, ``HRconv``) ----------------------
_MMSR_BLOCK = re.compile(r"recon_trunk\.(\d+)\.(conv[12])\.(weight|bias)")


def canonicalize_ms(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """MMSR's MSRResNet keys renamed to BasicSR's, or None when ``sd`` is not in that layout."""
    if not any(k.startswith("recon_trunk.") for k in sd):
        return None
    return {_mmsr_key(k): v for k, v in sd.items()}


def _mmsr_key(key: str) -> str:
    if m := _MMSR_BLOCK.fullmatch(key):
        return f"body.{m.group(1)}.{m.group(2)}.{m.group(3)}"
    head, _, param = key.partition(".")
    return f"conv_hr.{param}" if head == "HRconv" else key
