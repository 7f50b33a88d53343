"""SRVGGNetCompact: Real-ESRGAN's compact network (a plain conv/activation stack, pixel shuffle at
the end, and the nearest-upsampled input added back). Canonical keys: ``body.N.weight``; convs at even
indices, PReLU weights (one per channel) at odd indices when the activation is PReLU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NAME = "compact"
DEFAULTS = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 32, "scale": 4, "act_type": "prelu"}
ACT_TYPES = ("prelu", "lrelu", "relu")


def _act(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"act_type must be one of {ACT_TYPES}, not {act_type!r}")


class SRVGGNetCompact(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 32,
                 scale: int = 4, act_type: str = "prelu") -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _act(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _act(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def build(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 32, scale: int = 4,
          act_type: str = "prelu") -> SRVGGNetCompact:
    return SRVGGNetCompact(num_in_ch, num_out_ch, num_feat, num_conv, scale, act_type)


def size_multiple(hp: dict) -> int:
    return 1


def receptive_radius(hp: dict) -> int:
    return hp.get("num_conv", 32) + 2


def detect(sd: dict[str, torch.Tensor]) -> dict | None:
    """Hyperparameters from canonical keys, or None. Without PReLU weights the activation (relu or
    lrelu) cannot be seen in the keys: ``lrelu`` is assumed, and our own files record the real one in
    their safetensors metadata, which takes precedence (see ``upscale.loading``)."""
    if "body.0.weight" not in sd or any(not k.startswith("body.") for k in sd):
        return None
    idx = sorted({int(k.split(".")[1]) for k in sd})
    convs = [i for i in idx if sd[f"body.{i}.weight"].ndim == 4]
    acts = [i for i in idx if sd[f"body.{i}.weight"].ndim == 1]
    if len(convs) < 2 or "body.0.bias" not in sd or convs != list(range(0, 2 * len(convs), 2)):
        return None
    first, last = sd[f"body.{convs[0]}.weight"], sd[f"body.{convs[-1]}.weight"]
    num_in_ch, num_feat = int(first.shape[1]), int(first.shape[0])
    if first.shape[2:] != (3, 3):
        return None
    if acts:
        act_type = "prelu"
    else:
        act_type = "lrelu"
    out_ch_sq = int(last.shape[0])
    for num_out_ch in (num_in_ch, 3, 1):
        s2 = out_ch_sq // num_out_ch
        s = int(round(s2 ** 0.5))
        if out_ch_sq % num_out_ch == 0 and s * s == s2:
            break
    else:
        return None
    return {"num_in_ch": num_in_ch, "num_out_ch": num_out_ch, "num_feat": num_feat,
            "num_conv": len(convs) - 2, "scale": s, "act_type": act_type}
