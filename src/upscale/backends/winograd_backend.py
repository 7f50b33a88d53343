"""The winograd backend: RRDBNet (ESRGAN, Real-ESRGAN x4plus and their kin) with its trunk's 3x3
convolutions computed by Winograd F(4x4, 3x3) in fp32 on the CPU (``backends.winograd``), for the
engine's windows (NCHW view of NHWC memory in, NHWC float32 out, like the torch path).

What runs where: the dense blocks (345 of x4plus's 351 convolutions, 97% of its work at the input
resolution) and ``conv_body`` run in the Winograd domain. Each dense block transforms every feature
map once: the five convolutions read the earlier maps' transforms side by side (the domain is linear
per channel, so the concatenation carries over), which cuts the input transforms to a third. The
first convolution (3 channels in) and the upsampling part at 2x and 4x the resolution run as the
eager torch module does (channels_last, fp32).

Only fp32, only on the CPU, only RRDBNet: bf16 on CPUs without AMX runs at about half fp32's rate,
so this is the fp32 path; where bf16 is fast (AMX) the direct bf16 convolutions win. The tuner
(``upscale tune``) measures it beside torch and OpenVINO, and ``--backend auto`` takes it only where
it was measured faster here.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
import torch
from torch import nn
from torch.nn import functional as F

from .. import errors
from ..archs.rrdbnet import upsampling
from ..model import Model
from .winograd import Workspace, rounded, weight_transform
from .winograd_native import library

ARCHS = ("rrdbnet",)          # families this backend computes
EAGER_PARTS = ("conv_first", "conv_up1", "conv_up2", "conv_hr", "conv_last", "lrelu")   # run by torch
KEEP_WORKSPACES = 2           # workspaces (buffers: ~1.2 GB for x4plus at a 512 window) kept per instance
FULL_MAPS = 7                 # num_feat-wide maps a window keeps: trunk x2, three blocks' outputs, sum, feat
DENSE_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
# the upsampling part in stripes: each stripe's largest activation stays under this (glibc's malloc maps
# blocks above its threshold, at most 32 MB, afresh from the kernel each time: page faults); UP_HALO rows
# of context each side cover what the stripe's edges change (1.25 rows: one 3x3 conv at 2x, three at 4x)
UP_STRIPE_BYTES = 16 * 2**20
UP_HALO = 2
LEAKY_SLOPE = 0.2             # RRDBNet's LeakyReLU
RESIDUAL_SCALE = 0.2          # each dense block's and each RRDB's residual scaling


def check_supported(model: Model, device_type: str, precision: str) -> None:
    """A ``UsageError`` when the winograd backend cannot compute ``model`` this way."""
    label = model.name or model.source or model.arch
    if device_type != "cpu":
        raise errors.UsageError(f"backend winograd runs on the CPU only, not on {device_type}",
                                params=("backend",))
    if model.arch not in ARCHS:
        raise errors.UsageError(f"backend winograd computes RRDBNet models (esrgan, realesrgan-x4plus ...); "
                                f"{label} is {model.arch}: use backend torch or auto", params=("backend",))
    if precision != "fp32":
        raise errors.UsageError(f"backend winograd computes in fp32, not {precision}: use --precision fp32 "
                                "(or auto where the CPU runs fp32 faster)", params=("backend", "precision"))


class WinogradWindows:
    """``model`` (an RRDBNet) prepared for the winograd backend: its weights transformed once, and a
    ``Workspace`` per window shape (the last ``KEEP_WORKSPACES`` kept). The native kernels are loaded
    (built first, once per machine) when it is made: a ``BackendError`` there where no C compiler can
    build them. Not reentrant: one batch at a time (``Upscaler`` serialises its calls)."""

    def __init__(self, model: Model) -> None:
        library()
        net = model.module
        # only what runs eagerly is copied (channels_last, fp32); the trunk runs from transformed weights
        self.eager = copy.deepcopy(nn.ModuleDict({name: getattr(net, name) for name in EAGER_PARTS}))
        self.eager = self.eager.eval().float().to(memory_format=torch.channels_last)
        self.unshuffle = getattr(net, "unshuffle", 1)
        with torch.no_grad():
            self.blocks = [self._prepared(getattr(rrdb, name)) for rrdb in net.body
                           for name in ("rdb1", "rdb2", "rdb3")]
            self.body = (weight_transform(net.conv_body.weight), net.conv_body.bias.detach().float())
        self.num_feat = net.conv_first.out_channels
        self.grow = net.body[0].rdb1.conv1.out_channels
        self._workspaces: OrderedDict[tuple[int, int, int], Workspace] = OrderedDict()

    @staticmethod
    def _prepared(block: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(weight_transform(getattr(block, n).weight), getattr(block, n).bias.detach().float())
                for n in DENSE_CONVS]

    def is_warm(self, shape: tuple[int, ...]) -> bool:
        """Whether a batch of ``shape`` (N, H, W, C) runs without compiling: always, once this runner
        is made (its kernels, one build for every shape, were loaded then)."""
        return True

    def workspace_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of the buffers a batch of ``n`` windows of height x width input px holds: the
        workspace's transforms and its feature maps (``FULL_MAPS`` and the dense block's grown one)."""
        u = self.unshuffle
        ws = self._new_workspace(n, height // u, width // u)
        return ws.planned_bytes((self.num_feat, self.grow), (self.num_feat,) * FULL_MAPS + (self.grow,))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One batch (N, C, H, W), float32 on the CPU -> (N, H*s, W*s, C_out) float32 (NHWC)."""
        with torch.inference_mode():
            return self._forward(x.float()).permute(0, 2, 3, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        eager = self.eager
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        n, _, height, width = x.shape
        ws = self._workspace(n, height, width)
        padded = F.pad(x, (0, ws.w - width, 0, ws.h - height)).contiguous(memory_format=torch.channels_last)
        feat = eager.conv_first(padded).permute(0, 2, 3, 1)     # NHWC (channels_last memory)
        feat[:, height:].zero_()
        feat[:, :, width:].zero_()
        trunk = self._trunk(ws, feat.contiguous())
        ws.transform_into(trunk, 0)
        summed = ws.convolve(self.num_feat, *self.body, ws.buffer("sum", trunk.shape), residual=feat)
        return self._upsampled(summed[:, :height, :width].permute(0, 3, 1, 2))   # NCHW view of the sum

    def _upsampled(self, feat: torch.Tensor) -> torch.Tensor:
        """The upsampling part (nearest x2, conv, x2, conv, conv_hr, conv_last) on feat (N, C, h, w), in
        stripes of rows with ``UP_HALO`` rows of context each side. At 4x the resolution a whole
        window's activations are fresh tensors of up to ~1 GB each (a 512 window), and filling fresh
        memory costs page faults as dear as the convolutions; a stripe's stay under ``UP_STRIPE_BYTES``,
        so the allocator hands the same memory back stripe after stripe."""
        n, c, h, w = feat.shape
        rows = max(1, UP_STRIPE_BYTES // (16 * n * c * w * 4))     # a 4x activation holds 16·c·w floats per row
        out = None
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            a, b = max(0, y0 - UP_HALO), min(h, y1 + UP_HALO)
            part = upsampling(self.eager, feat[:, :, a:b])
            if out is None:
                out = torch.empty((n, part.shape[1], 4 * h, 4 * w)).contiguous(memory_format=torch.channels_last)
            out[:, :, 4 * y0:4 * y1] = part[:, :, 4 * (y0 - a):4 * (y1 - a)]
        return out

    def _new_workspace(self, n: int, height: int, width: int) -> Workspace:
        return Workspace(n, rounded(height), rounded(width), height, width, self.num_feat + 4 * self.grow)

    def _workspace(self, n: int, height: int, width: int) -> Workspace:
        """The workspace of this map shape: the one kept, or a new one (the oldest beyond
        ``KEEP_WORKSPACES`` dropped, its buffers freed)."""
        ws = self._workspaces.pop((n, height, width), None)
        if ws is None:
            ws = self._new_workspace(n, height, width)
        self._workspaces[(n, height, width)] = ws
        while len(self._workspaces) > KEEP_WORKSPACES:
            self._workspaces.popitem(last=False)
        return ws

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
        """One residual dense block: x + 0.2 * conv5(x, x1..x4), every map transformed once."""
        ws.transform_into(x, 0)
        grown = ws.buffer("grown", (*x.shape[:3], self.grow))
        channels = self.num_feat
        for u, bias in convs[:-1]:
            ws.convolve(channels, u, bias, grown, slope=LEAKY_SLOPE)
            ws.transform_into(grown, channels)
            channels += self.grow
        u, bias = convs[-1]
        return ws.convolve(channels, u, bias, out, residual=x, scale=RESIDUAL_SCALE)
