"""SRVGGNetCompact: Real-ESRGAN's compact network (a plain conv/activation stack, pixel shuffle at
the end, and the nearest-upsampled input added back). Canonical keys: ``body.N.weight``; convs at even
indices, PReLU weights (one per channel) at odd indices when the activation is PReLU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import catalog

NAME = "compact"
TITLE = "SRVGGNetCompact"
NCNN_MARKER = "PixelShuffle"
DEFAULTS = catalog.DEFAULTS[NAME]
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


# --- the ncnn graph (``g`` is ``upscale.ncnn``'s graph matcher) ------------------------------------
# Real-ESRGAN ships its animevideov3 x2 and x3 ncnn models as the x4 network followed by a bicubic
# x0.5 / x0.75 downscale: a trailing bilinear/bicubic Interp is dropped and recorded in
# ``g.post_resize``; the converted model is the x4 network.
_NCNN_ACTS = {"prelu": ("prelu",), "lrelu": ("leaky", 0.1), "relu": ("leaky", 0.0)}


def match_ncnn(g: Any) -> dict[str, Any]:
    """conv -> act -> (conv -> act) x num_conv -> conv -> PixelShuffle(s), + nearest-upsampled input."""
    x = g.input_blob
    blob, index, act_type = x, 0, None
    num_in_ch = num_feat = None
    while True:
        key = f"body.{index}"
        blob, in_ch, out_ch, act = g.conv(blob, key, num_feat if index else None)
        if g.has_consumer(blob, "PixelShuffle") and act == ("none",) and index > 0:
            break
        if index == 0:
            num_in_ch, num_feat = in_ch, out_ch
        elif out_ch != num_feat:
            raise g.error(f"{key} writes {out_ch} channels, expected num_feat {num_feat}")
        found = next((name for name, a in _NCNN_ACTS.items() if a[0] == act[0] and
                      (len(a) == 1 or abs(float(act[1]) - a[1]) < 1e-6)), None)
        if found is None or act_type not in (None, found):
            raise g.error(f"activation after {key} is {g.describe(act)}; expected "
                          f"{act_type or 'PReLU, LeakyReLU(0.1) or ReLU'}")
        act_type = found
        if act[0] == "prelu":
            g.state_dict[f"body.{index + 1}.weight"] = torch.from_numpy(act[1].copy())
        index += 2
    shuffle = g.take(blob, ("PixelShuffle",), "PixelShuffle")
    scale = shuffle.get(0, 1)
    if not isinstance(scale, int) or scale < 1 or shuffle.get(1, 0) != 0 or out_ch % (scale * scale):
        raise g.error(f"expected a PyTorch-order pixel shuffle of {out_ch} channels", shuffle)
    skip = g.interp(x, "nearest", float(scale), f"nearest x{scale} upsampling of the input")
    out = g.weighted_sum(shuffle.outputs[0], skip, 1.0, "sum of pixel shuffle and upsampled input")
    if out != g.output_blob and g.has_consumer(out, "Interp"):
        out = _take_output_resize(g, out)
    if out != g.output_blob:
        raise g.error(f"the network ends at {out!r}, but the graph's output is {g.output_blob!r}")
    return {"num_in_ch": num_in_ch, "num_out_ch": out_ch // (scale * scale), "num_feat": num_feat,
            "num_conv": index // 2 - 1, "scale": scale, "act_type": act_type}


def _take_output_resize(g: Any, out: str) -> str:
    resize = g.take(out, ("Interp",), "output resize")
    mode = g.INTERP_MODES.get(resize.get(0, 0))
    factor = float(resize.get(1, 1.0))
    if mode not in ("bilinear", "bicubic") or float(resize.get(2, 1.0)) != factor or resize.get(3, 0) \
            or resize.get(4, 0) or resize.get(5, 0) or resize.get(6, 0):
        raise g.error("expected a uniform bilinear or bicubic output resize by a factor", resize)
    g.post_resize = (mode, factor)
    return resize.outputs[0]
