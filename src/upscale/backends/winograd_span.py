"""The winograd backend for SPAN (our shipped default-x4/default-x2 and OpenModelDB's SPAN models): its
21 3x3 convolutions (``conv_1``, the six blocks' three each, ``conv_2``, the upsampler's) as Winograd
F(4x4, 3x3) convolutions in fp32 on the CPU (``backends.winograd``), each block's SiLUs and its
parameter-free gate (``(out3 + x) * (sigmoid(out3) - 0.5)``) computed as the convolutions write, and
``conv_cat`` (1x1 over four maps) as four GEMMs into one map, without concatenating them. Same contract
as the other winograd runners: NCHW view of NHWC memory in, NHWC float32 out.

Why: SPAN is 48-channel 3x3 convolutions at the input resolution with elementwise gates between. On
the Xeon of docs/perf.md (no AMX, 2 threads) default-x4 ran 1.7x (256² window) to 2.0x (496²) faster
this way than our torch fp32 channels_last path, side by side.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..archs.span import IMG_RANGE, NUM_BLOCKS
from ..model import Model
from .winograd import (WinogradRunner, Workspace, Workspaces, prepared, shuffle_grouped, shuffled, weight_transform,
                       zero_beyond)

FEATURE_MAPS = 8      # num_feat-wide maps: feat, out1, out2, two block outputs, block 1's, conv_2's, conv_cat's


class SpanWindows(WinogradRunner):
    """``model`` (a SPAN, trained or deploy form) prepared for the winograd backend: each
    re-parameterisable conv collapsed and transformed once, and a ``Workspace`` per window shape
    (``WinogradRunner``)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        net = model.module.eval()
        with torch.no_grad():
            self.conv_1 = _collapsed(net.conv_1)
            self.blocks = [[_collapsed(getattr(getattr(net, f"block_{i}"), name)) for name in ("c1_r", "c2_r", "c3_r")]
                           for i in range(1, NUM_BLOCKS + 1)]
            self.conv_2 = _collapsed(net.conv_2)
            # outputs reordered (i, j, c): the pixel shuffle then copies whole runs (``shuffled``)
            self.up = shuffle_grouped(prepared(net.upsampler[0]), net.scale)
            weight = net.conv_cat.weight.detach().float()[:, :, 0, 0]            # (C, 4C)
            self.cat = [part.t().contiguous() for part in weight.chunk(4, dim=1)], net.conv_cat.bias.detach().float()
            mean = net.mean.mean() if net.gray else net.mean
            self.mean = mean.detach().float().reshape(-1) if net.norm else None
        self.silu_first = net.silu_first
        self.scale = net.scale
        self.num_feat = net.conv_cat.out_channels
        self.last_channels = net.upsampler[0].out_channels

    def workspace_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of the buffers a batch of ``n`` windows of height x width px holds."""
        ws = Workspaces.new(n, height, width)
        maps = (self.conv_1[0].shape[1],) + (self.num_feat,) * FEATURE_MAPS + (self.last_channels,)
        return ws.planned_bytes(maps, (self.num_feat, self.last_channels))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One batch (N, C, H, W), float32 on the CPU -> (N, H*s, W*s, C) float32 (NHWC)."""
        with torch.inference_mode():
            n, _, height, width = x.shape
            ws = self.workspaces.get(n, height, width)
            nhwc = x.float().permute(0, 2, 3, 1)
            if self.mean is not None:
                nhwc = (nhwc - self.mean) * IMG_RANGE
            feat = ws.convolve([ws.padded("input", nhwc)], *self.conv_1, self._map(ws, "feat"))
            out, first, out_b1 = feat, None, None
            for i, convs in enumerate(self.blocks):
                target = self._map(ws, "block1") if i == 0 else self._map(ws, ("block", i % 2))
                out, first = self._block(ws, convs, out, target, last=i == len(self.blocks) - 1)
                out_b1 = out if i == 0 else out_b1
            fused = self._fused(ws, [feat, ws.convolve([out], *self.conv_2, self._map(ws, "conv_2")), out_b1, first])
            last = ws.convolve([fused], *self.up, ws.buffer("last", ws.map_shape(self.last_channels)))
            return shuffled(last[:, :height, :width], self.scale, grouped=True)

    def _map(self, ws: Workspace, key: object) -> torch.Tensor:
        return ws.buffer(key, ws.map_shape(self.num_feat))

    def _block(self, ws: Workspace, convs: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
               out: torch.Tensor, *, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One SPAB: (out3 + x) * (sigmoid(out3) - 0.5) into ``out``, and its first map, after SiLU where
        that is the one ``conv_cat`` reads (``silu_first``, or any block but the last, whose is unused).
        The SiLUs and the gate are computed as the convolutions write their outputs."""
        (c1, b1), (c2, b2), (c3, b3) = convs
        if self.silu_first or not last:
            first = act1 = ws.convolve([x], c1, b1, self._map(ws, "out1"), act="silu")
        else:                   # the raw map for conv_cat, its SiLU for the block
            first = ws.convolve([x], c1, b1, self._map(ws, "out1"))
            act1 = F.silu(first, inplace=False)
        out2 = ws.convolve([act1], c2, b2, self._map(ws, "out2"), act="silu")
        return ws.convolve([out2], c3, b3, out, residual=x, act="gate"), first

    def _fused(self, ws: Workspace, maps: list[torch.Tensor]) -> torch.Tensor:
        """``conv_cat`` (1x1) over the concatenation of four maps: four GEMMs into one map, zero beyond
        the map's own size (where the next convolution reads its padding)."""
        (weights, bias), c = self.cat, self.num_feat
        out = self._map(ws, "conv_cat")
        flat = out.view(-1, c)
        torch.addmm(bias, maps[0].reshape(-1, c), weights[0], out=flat)
        for part, weight in zip(maps[1:], weights[1:]):
            flat.addmm_(part.reshape(-1, c), weight)
        return zero_beyond(out, ws.height, ws.width)


def _collapsed(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A Conv3XC as the one 3x3 convolution it computes, transformed: its deploy kernel, or its branches
    collapsed."""
    if hasattr(conv, "eval_conv"):
        return prepared(conv.eval_conv)
    weight, bias = conv.fused()
    return weight_transform(weight.detach()), bias.detach().float()
