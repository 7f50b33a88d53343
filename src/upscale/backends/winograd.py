"""Winograd F(4x4, 3x3) convolutions for the CPU in fp32, on NHWC feature maps.

A 3x3 convolution (stride 1, zero padding 1) is computed per 4x4 output tile from the 6x6 input tile
around it: the input tile goes to the Winograd domain (``V = Bᵀ d B``), each of its 36 points is one
GEMM over the channels (``M = V · U``, with ``U = G g Gᵀ`` the weights transformed once), and the
output tile comes back (``Y = Aᵀ M A``). That is 36 multiplications per tile and channel pair instead
of 144, so the GEMMs do a quarter of the direct convolution's work; the transforms are additions with
small constants (Lavin & Gray 2016's F(4x4, 3x3) matrices).

Why it is here: on CPUs without AMX, fp32 is our fastest precision (bf16 runs at about half its rate
there), and oneDNN's and OpenVINO's fp32 convolutions are direct. On the Intel Xeon of docs/perf.md
(avx512, no AMX, 2 threads) the 36 GEMMs of RRDBNet's layers took 3.2-3.9x less time than the direct
convolution, and x4plus as a whole ran ~1.8x faster than our torch fp32 path (docs/perf.md,
"Winograd convolutions for RRDBNet").

How the transforms are made cheap: each is one loop over the map's tiles in C (``winograd.c``, built
here and called through ``winograd_native``), reading the map once and streaming the Winograd domain
past the cache, on torch's threads. Buffers live as long as the window shape (a ``Workspace``: fresh
buffers of tens of MB per call cost page faults that weighed as much as the transforms). Nothing
depends on the shape at build time: a new window size costs only its buffers.

Maps are computed on the next multiple of the tile (4 px), with the rows and columns beyond the map
zeroed after every convolution, which is what zero padding means: the result equals the direct
convolution's on the map itself (tests/test_winograd.py).

Accuracy: the transforms' constants (up to 8 and 1/24) cost a few bits: one layer agrees with the
direct fp32 convolution to ~1e-6 relative, and realesrgan-x4plus's whole output with our torch fp32
path to ~84 dB PSNR on 8-bit outputs (a few pixels one level apart; benchmarks/winograd_windows.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .winograd_native import input_transform, output_transform

# F(4x4, 3x3): input transform Bᵀ (6x6), weight transform G (6x3), output transform Aᵀ (4x6)
B_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
     (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
TILE = 4          # output tile side; the input tile is TILE + 2 (maps are computed on multiples of it)


def weight_transform(weight: torch.Tensor) -> torch.Tensor:
    """``U = G g Gᵀ`` of a (C_out, C_in, 3, 3) weight, as 36 matrices (36, C_in, C_out) in fp32
    (computed in float64, then rounded once)."""
    if weight.shape[2:] != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) needs 3x3 kernels, not {tuple(weight.shape[2:])}")
    g = torch.tensor(G, dtype=torch.float64)
    u = torch.einsum("ai,ocij,bj->abco", g, weight.detach().to("cpu", torch.float64), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


@dataclass
class Workspace:
    """The buffers of one feature-map shape: (N, H, W) with H, W already rounded up to multiples of 4
    (``rounded``), ``height``/``width`` the map's own size. ``v_channels``: the widest Winograd-domain
    input a layer reads (RRDBNet's dense blocks keep every earlier map's transform side by side there)."""
    n: int
    h: int
    w: int
    height: int
    width: int
    v_channels: int
    _buffers: dict[Any, torch.Tensor] = field(default_factory=dict)

    @property
    def tiles(self) -> int:
        return self.n * (self.h // TILE) * (self.w // TILE)

    def buffer(self, key: Any, shape: tuple[int, ...]) -> torch.Tensor:
        """A buffer kept for this workspace under ``key`` (allocated once)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = self._buffers[key] = torch.empty(shape)
        return buf

    @property
    def v(self) -> torch.Tensor:
        return self.buffer("v", self.v_shape)

    @property
    def v_shape(self) -> tuple[int, ...]:
        return 36, self.tiles, self.v_channels

    def m_shape(self, c: int) -> tuple[int, ...]:
        """A convolution's product in the Winograd domain for ``c`` output channels."""
        return 36, self.tiles, c

    def map_shape(self, c: int) -> tuple[int, ...]:
        """A feature map of ``c`` channels at the workspace's (rounded) size, NHWC."""
        return self.n, self.h, self.w, c

    def planned_bytes(self, channels: tuple[int, ...], maps: tuple[int, ...]) -> int:
        """Bytes of the buffers this workspace holds once used (none is allocated here): V, one M per
        output channel count in ``channels``, and feature maps of ``maps`` channels each."""
        shapes = [self.v_shape] + [self.map_shape(c) for c in maps] + [self.m_shape(c) for c in channels]
        return 4 * sum(math.prod(shape) for shape in shapes)

    def transform_into(self, x: torch.Tensor, lo: int) -> None:
        """The input transform of x (N, h, w, C) into channels [lo, lo + C) of V."""
        input_transform(x, self.v, lo)

    def convolve(self, channels_in: int, u: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, *,
                 slope: float = 1.0, residual: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        """One convolution of the first ``channels_in`` channels of V (already transformed) with ``u``
        (``weight_transform``'s) into ``out`` (N, h, w, C_out): act(conv + bias), or
        residual + scale·(conv + bias). ``slope``: the LeakyReLU's (1.0: none)."""
        c = u.shape[-1]
        m = self.buffer(("m", c), self.m_shape(c))
        torch.bmm(self.v[..., :channels_in], u, out=m)   # out=: a channel slice of V is read in place
        output_transform(m, bias, out, residual, self.height, self.width, slope, scale)
        return out


def rounded(side: int) -> int:
    """``side`` rounded up to a multiple of the tile."""
    return -(-side // TILE) * TILE
