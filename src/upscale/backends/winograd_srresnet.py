"""The winograd backend for the SRResNet family: SRGAN's generator (``srresnet``: 9x9 head and tail,
BatchNorm, PReLU; what ``upscale train`` trains as SRGAN) and BasicSR's MSRResNet (``msrresnet``). Its
3x3 convolutions run as Winograd F(4x4, 3x3) convolutions in fp32 on the CPU (``backends.winograd``):
the residual blocks (BatchNorm folded into the convolutions, each block's skip added as the second
convolution writes), the long skip's ``conv_body``, and the sub-pixel stages (each activation after
the pixel shuffle applied before it, per channel group, as the convolution writes: the shuffle only
moves values). SRGAN's 9x9 tail (64 channels in, 3 out, at 4x the resolution: as slow in torch as
all the rest) runs as one Winograd 3x3 convolution with 27 outputs, its nine 3x3 blocks, whose
outputs shifted by 3 px and summed are the 9x9 convolution (``_nine_by_nine``); SRGAN's 9x9 head
(3 channels in, ~1% of the work) runs as torch does. Same contract as the other winograd runners:
NCHW view of NHWC memory in, NHWC float32 out.

The upsampling part runs in stripes of rows (``winograd.stripe_rows``), each with ``UP_HALO`` input
rows of context each side: at 4x the resolution a 64-channel map of a whole 1000x750 window alone
would take 3 GB.

Why: on the Xeon of docs/perf.md (no AMX, 2 threads), at the published sizes, SRGAN's generator ran
2.7-2.9x and MSRResNet 2.1-2.2x faster this way than our torch fp32 path, side by side
(``benchmarks/winograd_srresnet.py``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ..model import Model
from .winograd import (WinogradRunner, Workspace, Workspaces, prepared, rounded, run_in_stripes, shuffle_into, slopes,
                       stripe_rows, weight_transform, zero_beyond)

MS_SLOPE = 0.1                # MSRResNet's LeakyReLU
# input rows of context each side of a stripe of the upsampling part: what its convolutions reach
# (one 3x3 at the input's resolution, one at 2x, then SRGAN's 9x9 tail or MSRResNet's two 3x3 at 4x)
UP_HALO = 3
UP_STRIPE_BYTES = 64 * 2**20  # a stripe's largest map stays under this
BORDER = 3                    # zero rows and columns around the map the 9x9 tail reads (its reach past 3x3)


def _folded(conv: nn.Conv2d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 convolution followed by an eval-mode BatchNorm (or Identity; then a convolution without a
    bias is allowed, unlike ``prepared``) as one convolution, transformed."""
    weight = conv.weight.detach().double()
    bias = torch.zeros(conv.out_channels, dtype=torch.float64) if conv.bias is None else conv.bias.detach().double()
    if isinstance(bn, nn.BatchNorm2d):
        gain = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * gain[:, None, None, None]
        bias = (bias - bn.running_mean.double()) * gain + bn.bias.detach().double()
    return weight_transform(weight), bias.float()


def _nine_by_nine(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 9x9 convolution (padding 4) as its nine 3x3 blocks stacked as the outputs of one 3x3
    convolution, transformed: block (a, b) holds kernel rows 3a..3a+2 and columns 3b..3b+2, and its
    output at (y + 3a, x + 3b) of a map with ``BORDER`` zeros around it is that block's share of the
    9x9 output at (y, x). Returns (U, zero bias, the 9x9's own bias)."""
    weight = conv.weight.detach().double()                   # (C_out, C_in, 9, 9)
    c_out = weight.shape[0]
    blocks = weight.unflatten(3, (3, 3)).unflatten(2, (3, 3))   # (C_out, C_in, a, p, b, q)
    stacked = blocks.permute(2, 4, 0, 1, 3, 5).reshape(9 * c_out, weight.shape[1], 3, 3)
    return weight_transform(stacked), torch.zeros(9 * c_out), conv.bias.detach().float()


class SRResNetWindows(WinogradRunner):
    """``model`` (an SRResNet or an MSRResNet) prepared for the winograd backend: weights folded and
    transformed once, and a ``Workspace`` per window shape (``WinogradRunner``)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        net = model.module.eval()
        self.ms = model.arch == "msrresnet"
        self.scale = net.scale
        self.num_feat, self.num_in = net.conv_first.out_channels, net.conv_first.in_channels
        with torch.no_grad():
            if self.ms:
                self.head, self.head_slope = prepared(net.conv_first), MS_SLOPE
                self.blocks = [((prepared(b.conv1), 0.0), prepared(b.conv2)) for b in net.body]
                self.body = None
                ups = [(net.upconv1, MS_SLOPE)] + ([(net.upconv2, MS_SLOPE)] if net.upconv2 is not None else [])
                self.tail = [(prepared(net.conv_hr), MS_SLOPE), (prepared(net.conv_last), None)]
            else:
                self.head = copy.deepcopy(net.conv_first).float().to(memory_format=torch.channels_last)
                self.head_slope = net.prelu_first.weight.detach().float().reshape(-1).clone()
                self.blocks = [((_folded(b.conv1, b.bn1), slopes(b.prelu, self.num_feat)), _folded(b.conv2, b.bn2))
                               for b in net.body]
                self.body = _folded(net.conv_body, net.bn_body)
                layers = list(net.upsample)
                ups = [(conv, act) for conv, act in zip(layers[0::3], layers[2::3])]
                self.tail = _nine_by_nine(net.conv_last)
            self.out_channels = net.conv_last.out_channels
            self.ups = []
            for conv, act in ups:
                s = round((conv.out_channels // self.num_feat) ** 0.5)
                self.ups.append((prepared(conv), slopes(act, conv.out_channels, s * s), s))

    def workspace_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of the buffers a batch of ``n`` windows of height x width px holds: the input-resolution
        maps and scratch, and those of the upsampling part's stripes."""
        ws = Workspaces.new(n, height, width)
        c = self.num_feat
        total = ws.planned_bytes(((self.num_in,) if self.ms else ()) + (c,) * 4, (c,))     # input, feat, 3 maps
        stages = self._stripe_workspaces(ws, self._stripe(n, ws.w, ws.height)[0])
        for stage, (conv, _, _) in zip(stages, self.ups):       # "in" or "map", and the unshuffled map
            total += stage.planned_bytes((c, conv[1].numel()), (conv[1].numel(),))
        tail = ((c, c, self.out_channels), (c, self.out_channels)) if self.ms else \
            ((c, 9 * self.out_channels), (9 * self.out_channels,))
        return total + stages[-1].planned_bytes(*tail)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One batch (N, C, H, W), float32 on the CPU -> (N, H*s, W*s, C_out) float32 (NHWC)."""
        with torch.inference_mode():
            x = x.float()
            n, _, height, width = x.shape
            ws = self.workspaces.get(n, height, width)
            feat = self._head(ws, x)
            cur = feat
            maps = [ws.buffer(("map", i), ws.map_shape(self.num_feat)) for i in range(3)]
            for i, ((conv1, slope), conv2) in enumerate(self.blocks):
                act = ws.convolve([cur], *conv1, maps[2], slope=slope)
                cur = ws.convolve([act], *conv2, maps[i % 2], residual=cur)
            if self.body is not None:   # SRGAN's long skip: feat + conv_body(trunk)
                cur = ws.convolve([cur], *self.body, maps[(len(self.blocks)) % 2], residual=feat)
            out = self._upsampled(ws, cur, height, width)
            if self.ms:                 # MSRResNet adds the bilinear-upsampled input
                base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
                out += base.permute(0, 2, 3, 1)
            return out

    def _head(self, ws: Workspace, x: torch.Tensor) -> torch.Tensor:
        """The first convolution and its activation, as an NHWC map of the workspace (zero beyond)."""
        if self.ms:
            return ws.convolve([ws.padded("input", x.permute(0, 2, 3, 1))], *self.head,
                               ws.buffer("feat", ws.map_shape(self.num_feat)), slope=self.head_slope)
        padded = F.pad(x, (0, ws.w - ws.width, 0, ws.h - ws.height)).contiguous(memory_format=torch.channels_last)
        feat = F.prelu(self.head(padded), self.head_slope).permute(0, 2, 3, 1)
        out = ws.buffer("feat", ws.map_shape(self.num_feat))
        out.copy_(feat)
        return zero_beyond(out, ws.height, ws.width)

    def _stripe(self, n: int, w: int, height: int) -> tuple[int, int]:
        return stripe_rows(height, UP_HALO, UP_STRIPE_BYTES // (4 * n * w * self.num_feat * self.scale ** 2))

    def _stripe_workspaces(self, ws: Workspace, span: int) -> list[Workspace]:
        """A stripe's workspaces: one per map resolution its upsampling part computes at (the input's
        first, then after each pixel shuffle), kept in ws."""
        stages, f = [ws.nested("stripe", ws.n, rounded(span), ws.w, span, ws.width)], 1
        for _, _, s in self.ups:
            f *= s
            stages.append(ws.nested(("stripe", f), ws.n, rounded(f * span), f * ws.w, f * span, f * ws.width))
        if not self.ms:     # the last map with BORDER zeros around it, for the 9x9 tail
            h, w = f * span + 2 * BORDER, f * ws.width + 2 * BORDER
            stages[-1] = ws.nested(("stripe", f), ws.n, rounded(h), rounded(w), h, w)
        return stages

    def _upsampled(self, ws: Workspace, feat: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The sub-pixel stages and the tail on feat (N, h, w, C), in stripes of rows with ``UP_HALO``
        rows of context each side (every stripe the same shape: the last moves up to end at the map's
        last row), into (N, H*s, W*s, C_out)."""
        n, s = ws.n, self.scale
        span, step = self._stripe(n, ws.w, height)
        stages = self._stripe_workspaces(ws, span)
        out = torch.empty((n, s * height, s * width, self.out_channels))
        return run_in_stripes(height, width, s, span, step, UP_HALO, out,
                              lambda a: self._up_stripe(stages, feat[:, a:a + span]))

    def _up_stripe(self, stages: list[Workspace], rows: torch.Tensor) -> torch.Tensor:
        """One stripe (N, r, w, C) of the trunk's map through the sub-pixel stages and the tail:
        (N, s*r, s*w, C_out), in the stripe's workspaces."""
        first = stages[0]
        cur = zero_beyond(first.buffer("in", first.map_shape(self.num_feat)), rows.shape[1], first.width)
        cur[:, :rows.shape[1]] = rows
        last = stages[-1]
        at = 0 if self.ms else BORDER       # where the last map's pixels start in its buffer
        for (conv, slope, s), here, there in zip(self.ups, stages, stages[1:]):
            wide = here.convolve([cur], *conv, here.buffer("wide", here.map_shape(conv[1].numel())), slope=slope)
            cur = there.buffer("map", there.map_shape(self.num_feat))
            edge = at if there is last else 0
            shuffle_into(wide[:, :here.height, :here.width], s, cur[:, edge:, edge:])
            cur[:, :edge].zero_()
            cur[:, :, :edge].zero_()
            zero_beyond(cur, edge + s * here.height, edge + s * here.width)
        if self.ms:
            (hr, slope), (conv_last, _) = self.tail
            act = last.convolve([cur], *hr, last.buffer("hr", cur.shape), slope=slope)
            return last.convolve([act], *conv_last, last.buffer("last", last.map_shape(self.out_channels)))
        u, zeros, bias = self.tail
        blocks = last.convolve([cur], u, zeros, last.buffer("blocks", last.map_shape(zeros.numel())))
        h, w, c = last.height - 2 * BORDER, last.width - 2 * BORDER, self.out_channels
        out = bias.expand(cur.shape[0], h, w, c).clone()
        for a in range(3):
            for b in range(3):
                k = 3 * a + b
                out += blocks[:, 3 * a:3 * a + h, 3 * b:3 * b + w, k * c:(k + 1) * c]     # block (a, b), shifted
        return out
