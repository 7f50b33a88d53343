"""The winograd backend for SRVGGNetCompact (Real-ESRGAN's compact network: realesr-animevideov3,
realesr-general-x4v3 and their kin): every 3x3 convolution of its plain stack as a Winograd
F(4x4, 3x3) convolution in fp32 on the CPU (``backends.winograd``), each activation (PReLU, or
LeakyReLU/ReLU as constant slopes) applied as the convolution writes its output, then the pixel
shuffle and the nearest-upsampled input added back in one pass. Same contract as the RRDBNet runner
(``winograd_backend.WinogradWindows``): NCHW view of NHWC memory in, NHWC float32 out.

Why: the network is 18-34 convolutions of 64 channels at the input resolution, all the work in 3x3
convolutions, so the Winograd convolutions' quarter of the multiplications carries over whole. On
the Xeon of docs/perf.md (no AMX, 2 threads) its convolutions ran 2.3x (256² window) to 4.5x (496²)
faster than our torch fp32 path, side by side.
"""

from __future__ import annotations

import torch

from ..model import Model
from .winograd import WinogradRunner, Workspaces, prepared, shuffled, slopes


class CompactWindows(WinogradRunner):
    """``model`` (an SRVGGNetCompact) prepared for the winograd backend: its weights transformed once,
    each activation as one slope per channel, and a ``Workspace`` per window shape (``WinogradRunner``)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        net = model.module
        layers = list(net.body)
        with torch.no_grad():
            self.convs = [prepared(conv) for conv in layers[0::2]]
            self.slopes = [slopes(act, conv.out_channels) for act, conv in zip(layers[1::2], layers[0::2])] + [None]
        self.scale = net.scale
        self.num_feat = layers[0].out_channels
        self.num_in = layers[0].in_channels
        self.last_channels = layers[-1].out_channels

    def workspace_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of the buffers a batch of ``n`` windows of height x width px holds: the input, two
        feature maps, the last convolution's output and the scratch."""
        ws = Workspaces.new(n, height, width)
        return ws.planned_bytes((self.num_in, self.num_feat, self.num_feat, self.last_channels),
                                (self.num_feat, self.last_channels))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One batch (N, C, H, W), float32 on the CPU -> (N, H*s, W*s, C) float32 (NHWC)."""
        with torch.inference_mode():
            n, _, height, width = x.shape
            ws = self.workspaces.get(n, height, width)
            nhwc = x.float().permute(0, 2, 3, 1)
            cur = ws.padded("input", nhwc)
            maps = [ws.buffer(("map", i), ws.map_shape(self.num_feat)) for i in range(2)]
            maps.append(ws.buffer("last", ws.map_shape(self.last_channels)))
            for i, ((u, bias), slope) in enumerate(zip(self.convs, self.slopes)):
                out = maps[2] if i == len(self.convs) - 1 else maps[i % 2]
                cur = ws.convolve([cur], u, bias, out, slope=slope)
            return shuffled(cur[:, :height, :width], self.scale, nhwc)

