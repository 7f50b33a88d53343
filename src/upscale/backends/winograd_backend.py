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
from collections import OrderedDict
import torch
from torch import nn
from torch.nn import functional as F

from .. import errors
from ..model import Model
from .winograd import Workspace, rounded, weight_transform
from .winograd_native import library

ARCHS = ("rrdbnet",)          # families this backend computes
UP_CONVS = ("conv_up1", "conv_up2", "conv_hr", "conv_last")     # the upsampling part's convolutions
KEEP_WORKSPACES = 2           # workspaces (buffers: ~0.6 GB for x4plus at a 512 window) kept per instance
FULL_MAPS = 7                 # num_feat-wide maps a window keeps: trunk x2, three blocks' outputs, sum, feat
GROWN_MAPS = 4                # num_grow_ch-wide maps of a dense block: the outputs of its first four convs
DENSE_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
# the upsampling part in stripes: each stripe's largest activation stays under this (glibc's malloc maps
# blocks above its threshold, at most 32 MB, afresh from the kernel each time: page faults); UP_HALO rows
# of context each side cover what the stripe's edges change (1.25 rows: one 3x3 conv at 2x, three at 4x)
UP_STRIPE_BYTES = 16 * 2**20
UP_HALO = 2
LEAKY_SLOPE = 0.2             # RRDBNet's LeakyReLU
RESIDUAL_SCALE = 0.2          # each dense block's and each RRDB's residual scaling


def _prepared(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 convolution's transformed weights and its bias, fp32."""
    return weight_transform(conv.weight), conv.bias.detach().float()


def _nearest2x(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x (N, h, w, C) upsampled 2x (nearest) into the top-left of out (N, H >= 2h, W >= 2w, C), zero
    elsewhere: a map rounded up for the Winograd tiles."""
    n, h, w, c = x.shape
    out[:, :2 * h, :2 * w].unflatten(2, (w, 2)).unflatten(1, (h, 2)).copy_(x[:, :, None, :, None].expand(n, h, 2, w, 2, c))
    out[:, 2 * h:].zero_()
    out[:, :2 * h, 2 * w:].zero_()
    return out


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
        # only the first convolution runs eagerly (copied: channels_last, fp32); the rest from transformed weights
        self.conv_first = copy.deepcopy(net.conv_first).eval().float().to(memory_format=torch.channels_last)
        self.unshuffle = getattr(net, "unshuffle", 1)
        with torch.no_grad():
            self.blocks = [[_prepared(getattr(getattr(rrdb, name), conv)) for conv in DENSE_CONVS]
                           for rrdb in net.body for name in ("rdb1", "rdb2", "rdb3")]
            self.body = _prepared(net.conv_body)
            self.up = {name: _prepared(getattr(net, name)) for name in UP_CONVS}
        self.num_feat = net.conv_first.out_channels
        self.grow = net.body[0].rdb1.conv1.out_channels
        self._workspaces: OrderedDict[tuple[int, int, int], Workspace] = OrderedDict()

    def is_warm(self, shape: tuple[int, ...]) -> bool:
        """Whether a batch of ``shape`` (N, H, W, C) runs without compiling: always, once this runner
        is made (its kernels, one build for every shape, were loaded then)."""
        return True

    def workspace_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of the buffers a batch of ``n`` windows of height x width input px holds: the
        workspace's feature maps (``FULL_MAPS`` and the dense block's ``GROWN_MAPS``) and its scratch."""
        u = self.unshuffle
        ws = self._new_workspace(n, height // u, width // u)
        maps = (self.num_feat,) * FULL_MAPS + (self.grow,) * GROWN_MAPS
        return ws.planned_bytes(maps, (self.num_feat, self.grow))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One batch (N, C, H, W), float32 on the CPU -> (N, H*s, W*s, C_out) float32 (NHWC)."""
        with torch.inference_mode():
            return self._forward(x.float())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        n, _, height, width = x.shape
        ws = self._workspace(n, height, width)
        padded = F.pad(x, (0, ws.w - width, 0, ws.h - height)).contiguous(memory_format=torch.channels_last)
        feat = self.conv_first(padded).permute(0, 2, 3, 1)     # NHWC (channels_last memory)
        feat[:, height:].zero_()
        feat[:, :, width:].zero_()
        feat = feat.contiguous()
        trunk = self._trunk(ws, feat)
        summed = ws.convolve([trunk], *self.body, ws.buffer("sum", trunk.shape), residual=feat)
        return self._upsampled(summed, height, width)

    def _upsampled(self, feat: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The upsampling part (nearest x2, conv_up1, x2, conv_up2, conv_hr, conv_last, LeakyReLU after
        all but the last) on feat (N, h, w, C) NHWC, zero beyond height x width, as Winograd
        convolutions too, in stripes of rows with ``UP_HALO`` rows of context each side. At 4x the
        resolution a whole window's activations are fresh tensors of up to ~1 GB each (a 512 window),
        and filling fresh memory costs page faults as dear as the convolutions; a stripe's stay under
        ``UP_STRIPE_BYTES``, so the allocator hands the same memory back stripe after stripe."""
        n, _, w, c = feat.shape
        rows = max(1, UP_STRIPE_BYTES // (16 * n * c * w * 4))     # a 4x activation holds 16·c·w floats per row
        out = torch.empty((n, 4 * height, 4 * width, self.up["conv_last"][1].numel()))
        for y0 in range(0, height, rows):
            y1 = min(height, y0 + rows)
            a, b = max(0, y0 - UP_HALO), min(height, y1 + UP_HALO)
            part = self._up_stripe(feat[:, a:b], width)
            out[:, 4 * y0:4 * y1] = part[:, 4 * (y0 - a):4 * (y1 - a), :4 * width]
        return out

    def _up_stripe(self, feat: torch.Tensor, width: int) -> torch.Tensor:
        """The upsampling part on one stripe (N, r, w, C) of the map (zero past ``width``): (N, 4r, 4w, C_out)."""
        n, r, w, c = feat.shape
        twice = Workspace(n, rounded(2 * r), 2 * w, 2 * r, 2 * width)
        up = _nearest2x(feat, twice.buffer("up", twice.map_shape(c)))
        act = twice.convolve([up], *self.up["conv_up1"], twice.buffer("act", up.shape), slope=LEAKY_SLOPE)
        four = Workspace(n, 4 * r, 4 * w, 4 * r, 4 * width)
        up = _nearest2x(act[:, :2 * r], four.buffer("up", four.map_shape(c)))
        act = four.convolve([up], *self.up["conv_up2"], four.buffer("act", up.shape), slope=LEAKY_SLOPE)
        act = four.convolve([act], *self.up["conv_hr"], four.buffer("up", up.shape), slope=LEAKY_SLOPE)
        return four.convolve([act], *self.up["conv_last"], four.buffer("last", four.map_shape(self.up["conv_last"][1].numel())))

    def _new_workspace(self, n: int, height: int, width: int) -> Workspace:
        return Workspace(n, rounded(height), rounded(width), height, width)

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
        """One residual dense block: x + 0.2 * conv5(x, x1..x4), each conv reading the maps before it."""
        sources = [x]
        for i, (u, bias) in enumerate(convs[:-1]):
            grown = ws.buffer(("grown", i), ws.map_shape(self.grow))
            sources.append(ws.convolve(sources, u, bias, grown, slope=LEAKY_SLOPE))
        u, bias = convs[-1]
        return ws.convolve(sources, u, bias, out, residual=x, scale=RESIDUAL_SCALE)
