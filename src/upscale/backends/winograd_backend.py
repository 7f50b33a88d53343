"""The winograd backend: RRDBNet (ESRGAN, Real-ESRGAN x4plus and their kin) with its 3x3 convolutions
(all but the first) computed by Winograd F(4x4, 3x3) in fp32 on the CPU (``backends.winograd``), for the
engine's windows (NCHW view of NHWC memory in, NHWC float32 out, like the torch path).

What runs where: the dense blocks (345 of x4plus's 351 convolutions, 97% of its work at the input
resolution) and ``conv_body`` run as Winograd convolutions. A dense block's convolutions read the
earlier maps as a list of sources (no concatenated copy). The upsampling part at 2x and 4x the
resolution runs as Winograd convolutions too, in stripes of rows; only the first convolution (3
channels in) runs as the eager torch module does (channels_last, fp32).

Only fp32, only on the CPU, only RRDBNet: bf16 on CPUs without AMX runs at about half fp32's rate,
so this is the fp32 path; where bf16 is fast (AMX) the direct bf16 convolutions win. The tuner
(``upscale tune``) measures it beside torch and OpenVINO, and ``--backend auto`` takes it only where
it was measured faster here.
"""

from __future__ import annotations

import copy
import torch
from torch.nn import functional as F

from ..model import Model
from .winograd import (WinogradRunner, Workspace, Workspaces, prepared, rounded, run_in_stripes, stripe_rows,
                       zero_beyond)

UP_CONVS = ("conv_up1", "conv_up2", "conv_hr", "conv_last")     # the upsampling part's convolutions
FULL_MAPS = 7                 # num_feat-wide maps a window keeps: trunk x2, three blocks' outputs, sum, feat
GROWN_MAPS = 4                # num_grow_ch-wide maps of a dense block: the outputs of its first four convs
DENSE_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
# the upsampling part in stripes of rows: a stripe's 4x map stays under this (the workspace keeps two);
# UP_HALO rows of context each side cover what the stripe's edges change (1.25 rows: one 3x3 conv at
# 2x, three at 4x), so the larger the stripe, the less is computed twice
UP_STRIPE_BYTES = 64 * 2**20
UP_HALO = 2
LEAKY_SLOPE = 0.2             # RRDBNet's LeakyReLU
RESIDUAL_SCALE = 0.2          # each dense block's and each RRDB's residual scaling


def _nearest2x(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x (N, h, w, C) upsampled 2x (nearest) into the top-left of out (N, H >= 2h, W >= 2w, C), zero
    elsewhere: a map rounded up for the Winograd tiles."""
    n, h, w, c = x.shape
    target = out[:, :2 * h, :2 * w].unflatten(2, (w, 2)).unflatten(1, (h, 2))      # (N, h, 2, w, 2, C)
    target.copy_(x[:, :, None, :, None].expand(n, h, 2, w, 2, c))
    return zero_beyond(out, 2 * h, 2 * w)


class WinogradWindows(WinogradRunner):
    """``model`` (an RRDBNet) prepared for the winograd backend: its weights transformed once, and a
    ``Workspace`` per window shape (``WinogradRunner``)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        net = model.module
        # only the first convolution runs eagerly (copied: channels_last, fp32); the rest from transformed weights
        self.conv_first = copy.deepcopy(net.conv_first).eval().float().to(memory_format=torch.channels_last)
        self.unshuffle = getattr(net, "unshuffle", 1)
        with torch.no_grad():
            self.blocks = [[prepared(getattr(getattr(rrdb, name), conv)) for conv in DENSE_CONVS]
                           for rrdb in net.body for name in ("rdb1", "rdb2", "rdb3")]
            self.body = prepared(net.conv_body)
            self.up = {name: prepared(getattr(net, name)) for name in UP_CONVS}
        self.num_feat = net.conv_first.out_channels
        self.grow = net.body[0].rdb1.conv1.out_channels

    def workspace_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of the buffers a batch of ``n`` windows of height x width input px holds: the
        workspace's feature maps (``FULL_MAPS`` and the dense block's ``GROWN_MAPS``), its scratch, and
        those of the upsampling part's stripes."""
        u = self.unshuffle
        ws = Workspaces.new(n, height // u, width // u)
        c, c_out = self.num_feat, self.up["conv_last"][1].numel()
        twice, four = self._stripe_workspaces(ws, self._stripe_rows(n, ws.w, ws.height)[0])
        return (ws.planned_bytes((c,) * FULL_MAPS + (self.grow,) * GROWN_MAPS, (c, self.grow))
                + twice.planned_bytes((c, c), (c,)) + four.planned_bytes((c, c, c_out), (c, c_out)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One batch (N, C, H, W), float32 on the CPU -> (N, H*s, W*s, C_out) float32 (NHWC)."""
        with torch.inference_mode():
            return self._forward(x.float())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        n, _, height, width = x.shape
        ws = self.workspaces.get(n, height, width)
        padded = F.pad(x, (0, ws.w - width, 0, ws.h - height)).contiguous(memory_format=torch.channels_last)
        feat = zero_beyond(self.conv_first(padded).permute(0, 2, 3, 1).contiguous(), height, width)   # NHWC
        trunk = self._trunk(ws, feat)
        summed = ws.convolve([trunk], *self.body, ws.buffer("sum", trunk.shape), residual=feat)
        return self._upsampled(ws, summed, height, width)

    def _upsampled(self, ws: Workspace, feat: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The upsampling part (nearest x2, conv_up1, x2, conv_up2, conv_hr, conv_last, LeakyReLU after
        all but the last) on feat (N, h, w, C) NHWC, zero beyond height x width, as Winograd
        convolutions too, in stripes of rows with ``UP_HALO`` rows of context each side: at 4x the
        resolution a whole window's maps would take GBs (a 512 window). Every stripe has the same
        shape (the last one moves up to end at the map's last row), so one set of buffers, kept in
        the window's workspace, serves them all: no fresh memory, no page faults."""
        n, _, w, _ = feat.shape
        span, step = self._stripe_rows(n, w, height)
        twice, four = self._stripe_workspaces(ws, span)
        out = torch.empty((n, 4 * height, 4 * width, self.up["conv_last"][1].numel()))
        return run_in_stripes(height, width, 4, span, step, UP_HALO, out,
                              lambda a: self._up_stripe(twice, four, feat[:, a:a + span]))

    def _stripe_rows(self, n: int, w: int, height: int) -> tuple[int, int]:
        """(input rows a stripe of the upsampling part reads, output rows it keeps) for maps of
        height x w px: the whole map where its 4x map fits ``UP_STRIPE_BYTES``, else the fewest stripes
        that fit, of equal height (so that little is computed twice)."""
        return stripe_rows(height, UP_HALO, UP_STRIPE_BYTES // (16 * n * self.num_feat * w * 4))

    @staticmethod
    def _stripe_workspaces(ws: Workspace, span: int) -> tuple[Workspace, Workspace]:
        """The workspaces of a stripe of ``span`` rows of ws's map at 2x and 4x (kept in ws)."""
        n, w, width = ws.n, ws.w, ws.width
        return (ws.nested("twice", n, rounded(2 * span), 2 * w, 2 * span, 2 * width),
                ws.nested("four", n, 4 * span, 4 * w, 4 * span, 4 * width))

    def _up_stripe(self, twice: Workspace, four: Workspace, feat: torch.Tensor) -> torch.Tensor:
        """The upsampling part on one stripe (N, r, w, C) of the map, in the workspaces of its 2x and 4x
        maps: (N, 4r, 4w, C_out), zero past 4x the map's width."""
        c, r = feat.shape[3], feat.shape[1]
        up = _nearest2x(feat, twice.buffer("up", twice.map_shape(c)))
        act = twice.convolve([up], *self.up["conv_up1"], twice.buffer("act", up.shape), slope=LEAKY_SLOPE)
        up = _nearest2x(act[:, :2 * r], four.buffer("up", four.map_shape(c)))
        act = four.convolve([up], *self.up["conv_up2"], four.buffer("act", up.shape), slope=LEAKY_SLOPE)
        act = four.convolve([act], *self.up["conv_hr"], up, slope=LEAKY_SLOPE)
        last = four.buffer("last", four.map_shape(self.up["conv_last"][1].numel()))
        return four.convolve([act], *self.up["conv_last"], last)

    def _trunk(self, ws: Workspace, feat: torch.Tensor) -> torch.Tensor:
        """The 23 (num_block) RRDBs on feat (N, h, w, num_feat), in buffers of the workspace."""
        shape = feat.shape
        cur, nxt = feat, ws.buffer("trunk", shape)
        maps = [ws.buffer(("map", i), shape) for i in range(3)]
        for i in range(0, len(self.blocks), 3):
            a = self._dense(ws, self.blocks[i], cur, maps[0])
            b = self._dense(ws, self.blocks[i + 1], a, maps[1])
            c = self._dense(ws, self.blocks[i + 2], b, maps[2])
            torch.add(cur, c, alpha=RESIDUAL_SCALE, out=nxt)          # the RRDB's own residual
            cur, nxt = nxt, (ws.buffer("trunk2", shape) if cur is feat else cur)
        return cur

    def _dense(self, ws: Workspace, convs: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
               out: torch.Tensor) -> torch.Tensor:
        """One residual dense block: x + 0.2 * conv5(x, x1..x4), each conv reading the maps before it."""
        sources = [x]
        for i, (u, bias) in enumerate(convs[:-1]):
            grown = ws.buffer(("grown", i), ws.map_shape(self.grow))
            sources.append(ws.convolve(sources, u, bias, grown, slope=LEAKY_SLOPE))
        u, bias = convs[-1]
        return ws.convolve(sources, u, bias, out, residual=x, scale=RESIDUAL_SCALE)
