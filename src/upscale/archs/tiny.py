"""The small x2 generator of our seed design: conv 32 -> 128 -> 128 (3x3, LeakyReLU 0.01), a x2
resize, conv 64 -> out (3x3, LeakyReLU 0.01 then sigmoid on the last). Canonical keys ``conv1..conv5``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import catalog

NAME = "tiny"
DEFAULTS = catalog.DEFAULTS[NAME]


class TinyGenerator(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 2, upsample: str = "nearest") -> None:
        super().__init__()
        self.scale = scale
        self.upsample = upsample
        self.conv1 = nn.Conv2d(num_in_ch, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 128, 3, 1, 1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, 1)
        self.conv4 = nn.Conv2d(128, 64, 3, 1, 1)
        self.conv5 = nn.Conv2d(64, num_out_ch, 3, 1, 1)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.conv3(self.act(self.conv2(self.act(self.conv1(x))))))
        f = F.interpolate(f, scale_factor=self.scale, mode=self.upsample)
        return torch.sigmoid(self.conv5(self.act(self.conv4(f))))


def build(num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 2, upsample: str = "nearest") -> TinyGenerator:
    return TinyGenerator(num_in_ch, num_out_ch, scale, upsample)


def size_multiple(hp: dict) -> int:
    return 1


def receptive_radius(hp: dict) -> int:
    return 3 + 2


def detect(sd: dict[str, torch.Tensor]) -> dict | None:
    if set(sd) != {f"conv{i}.{p}" for i in range(1, 6) for p in ("weight", "bias")}:
        return None
    if tuple(sd["conv2.weight"].shape[:2]) != (128, 32) or tuple(sd["conv4.weight"].shape[:2]) != (64, 128):
        return None
    return {"num_in_ch": int(sd["conv1.weight"].shape[1]), "num_out_ch": int(sd["conv5.weight"].shape[0]),
            "scale": 2, "upsample": "nearest"}
