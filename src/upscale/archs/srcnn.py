"""SRCNN (Dong et al. 2014), the 9-1-5 classic: the network works on a bicubic-upscaled image, so the
module upsamples its LR input first (torch bicubic) and then runs three convs with 'same' padding.
Canonical keys: ``conv1``, ``conv2``, ``conv3``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import catalog

NAME = "srcnn"
DEFAULTS = catalog.DEFAULTS[NAME]


class SRCNN(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, n1: int = 64, n2: int = 32, f1: int = 9,
                 f2: int = 1, f3: int = 5, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Conv2d(num_in_ch, n1, f1, 1, f1 // 2)
        self.conv2 = nn.Conv2d(n1, n2, f2, 1, f2 // 2)
        self.conv3 = nn.Conv2d(n2, num_out_ch, f3, 1, f3 // 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.conv3(self.relu(self.conv2(self.relu(self.conv1(up)))))


def build(num_in_ch: int = 3, num_out_ch: int = 3, n1: int = 64, n2: int = 32, f1: int = 9, f2: int = 1,
          f3: int = 5, scale: int = 4) -> SRCNN:
    return SRCNN(num_in_ch, num_out_ch, n1, n2, f1, f2, f3, scale)


def size_multiple(hp: dict) -> int:
    return 1


def receptive_radius(hp: dict) -> int:
    s = hp.get("scale", 4)
    r_hr = hp.get("f1", 9) // 2 + hp.get("f2", 1) // 2 + hp.get("f3", 5) // 2
    return -(-r_hr // s) + 2  # HR radius in input pixels plus the bicubic kernel's reach


def detect(sd: dict[str, torch.Tensor]) -> dict | None:
    """SRCNN keys carry no scale: it comes from metadata (our files) or defaults to 4 (see loading)."""
    if set(sd) != {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}:
        return None
    w1, w2, w3 = sd["conv1.weight"], sd["conv2.weight"], sd["conv3.weight"]
    return {"num_in_ch": int(w1.shape[1]), "num_out_ch": int(w3.shape[0]), "n1": int(w1.shape[0]),
            "n2": int(w2.shape[0]), "f1": int(w1.shape[2]), "f2": int(w2.shape[2]), "f3": int(w3.shape[2]),
            "scale": 4}
