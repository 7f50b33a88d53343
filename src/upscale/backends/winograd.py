"""Winograd F(4x4, 3x3) convolutions for the CPU in fp32, on NHWC feature maps, and which networks
the winograd backend computes with them (``check_supported``).

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

How it is made fast: one C call per convolution (``winograd.c``, built here and called through
``winograd_native``) takes each block of tiles through the input transform, the 36 GEMMs and the
output transform while the block's data stay in the core's L2 cache; the block's size follows from
that cache's size (``block_tiles``), read on the machine that runs it. Sources are passed as a list:
a dense block's convolution reads the concatenation of the earlier maps without copying them.
Buffers live as long as the window shape (a ``Workspace``: fresh buffers of tens of MB per call cost
page faults). Nothing depends on the shape at build time: a new window size costs only its buffers.

Maps are computed on the next multiple of the tile (4 px), with the rows and columns beyond the map
zeroed after every convolution, which is what zero padding means: the result equals the direct
convolution's on the map itself (tests/test_winograd.py).

Accuracy: the transforms' constants (up to 8 and 1/24) cost a few bits: one layer agrees with the
direct fp32 convolution to ~1e-6 relative, and realesrgan-x4plus's whole output with our torch fp32
path to ~84 dB PSNR on 8-bit outputs (a few pixels one level apart; benchmarks/winograd_windows.py).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.nn import functional as F

from .. import errors
from ..model import Model
from . import WINOGRAD_ARCHS

from ..machine import l2_cache_bytes
from .winograd_native import convolution, library, scratch_floats

# F(4x4, 3x3): input transform Bᵀ (6x6), weight transform G (6x3), output transform Aᵀ (4x6)
B_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
     (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
# a change that moves this backend's speed raises its version in ``tuned.KERNEL_VERSIONS``: the tuning
# cache's key holds it, so timings measured with older kernels are not trusted
TILE = 4          # output tile side; the input tile is TILE + 2 (maps are computed on multiples of it)
LANES = 16        # output channels the C computes at a time: U's columns are padded to a multiple
BLOCK_STEP = 24   # tiles per block come in multiples of this (the C's register blocks: 24, 12, 8 or 6 rows)
MAX_BLOCK = 192
KEEP_WORKSPACES = 2   # window shapes whose buffers a runner keeps (x4plus at a 512 window: ~0.75 GB each)


def check_supported(model: Model, device_type: str, precision: str) -> None:
    """A ``UsageError`` when the winograd backend cannot compute ``model`` this way."""
    label = model.name or model.source or model.arch
    if device_type != "cpu":
        raise errors.UsageError(f"backend winograd runs on the CPU only, not on {device_type}",
                                params=("backend",))
    if model.arch not in WINOGRAD_ARCHS:
        raise errors.UsageError(f"backend winograd computes RRDBNet (esrgan, realesrgan-x4plus ...), "
                                f"SRVGGNetCompact (realesr-animevideov3 ...), SPAN (default-x4 ...) and SRResNet "
                                f"(SRGAN, MSRResNet) models; "
                                f"{label} is {model.arch}: use backend torch or auto", params=("backend",))
    if precision != "fp32":
        raise errors.UsageError(f"backend winograd computes in fp32, not {precision}: use --precision fp32 "
                                "(or auto where the CPU runs fp32 faster)", params=("backend", "precision"))


def weight_transform(weight: torch.Tensor) -> torch.Tensor:
    """``U = G g Gᵀ`` of a (C_out, C_in, 3, 3) weight, as 36 matrices (36, C_in, C_out rounded up to a
    multiple of ``LANES``, the columns past C_out zero) in fp32 (computed in float64, then rounded once)."""
    if weight.shape[2:] != (3, 3):
        raise ValueError(f"Winograd F(4x4, 3x3) needs 3x3 kernels, not {tuple(weight.shape[2:])}")
    g = torch.tensor(G, dtype=torch.float64)
    u = torch.einsum("ai,ocij,bj->abco", g, weight.detach().to("cpu", torch.float64), g)
    c_out = weight.shape[0]
    u = F.pad(u.reshape(36, weight.shape[1], c_out), (0, -c_out % LANES))
    return u.float().contiguous()


def block_tiles(cpad: int) -> int:
    """Tiles a thread takes through a convolution at a time for ``cpad`` output columns: as many as keep
    its two block buffers within half this CPU's L2 cache (the other half for the weights and the maps'
    rows), in multiples of ``BLOCK_STEP``, at most ``MAX_BLOCK``."""
    per_tile = 4 * (scratch_floats(2, cpad, 1) - scratch_floats(1, cpad, 1))
    fits = l2_cache_bytes() // 2 // per_tile // BLOCK_STEP * BLOCK_STEP
    return max(BLOCK_STEP, min(MAX_BLOCK, fits))


@dataclass
class Workspace:
    """The buffers of one feature-map shape: (N, H, W) with H, W already rounded up to multiples of 4
    (``rounded``), ``height``/``width`` the map's own size: feature maps, and the convolutions' scratch
    (a few block buffers per thread)."""
    n: int
    h: int
    w: int
    height: int
    width: int
    _buffers: dict[Any, torch.Tensor] = field(default_factory=dict)
    _nested: dict[Any, "Workspace"] = field(default_factory=dict)

    def nested(self, key: Any, n: int, h: int, w: int, height: int, width: int) -> "Workspace":
        """A workspace of another map shape kept with this one under ``key`` (a stripe's, at another
        resolution), made anew where the shape asked for differs."""
        ws = self._nested.get(key)
        if ws is None or (ws.n, ws.h, ws.w, ws.height, ws.width) != (n, h, w, height, width):
            ws = self._nested[key] = Workspace(n, h, w, height, width)
        return ws

    def held_bytes(self) -> int:
        """Bytes of the buffers this workspace and those nested in it hold now."""
        return 4 * sum(b.numel() for b in self._buffers.values()) + sum(ws.held_bytes() for ws in self._nested.values())

    def buffer(self, key: Any, shape: tuple[int, ...]) -> torch.Tensor:
        """A buffer kept for this workspace under ``key`` (allocated once)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = self._buffers[key] = torch.empty(shape)
        return buf

    def padded(self, key: Any, x: torch.Tensor) -> torch.Tensor:
        """x (N, height, width, C) copied into this workspace's buffer ``key`` at its rounded size, zero
        beyond: a network's input as its first convolution reads it."""
        n, height, width, c = x.shape
        buf = zero_beyond(self.buffer(key, self.map_shape(c)), height, width)
        buf[:, :height, :width] = x
        return buf

    def map_shape(self, c: int) -> tuple[int, ...]:
        """A feature map of ``c`` channels at the workspace's (rounded) size, NHWC."""
        return self.n, self.h, self.w, c

    @staticmethod
    def scratch_shape(cpad: int, block: int | None = None) -> tuple[int]:
        """The scratch of convolutions with ``cpad`` output columns (in blocks of ``block`` tiles, default
        ``block_tiles``) on torch's threads now."""
        return (scratch_floats(block or block_tiles(cpad), cpad, torch.get_num_threads()),)

    def planned_bytes(self, maps: tuple[int, ...], outputs: tuple[int, ...]) -> int:
        """Bytes of the buffers this workspace holds once used (none is allocated here): feature maps of
        ``maps`` channels each, and the scratch of convolutions with ``outputs`` output channels."""
        pads = {-(-c // LANES) * LANES for c in outputs}
        shapes = [self.map_shape(c) for c in maps] + [self.scratch_shape(cpad) for cpad in pads]
        return 4 * sum(math.prod(shape) for shape in shapes)

    def convolve(self, sources: list[torch.Tensor], u: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, *,
                 slope: float | torch.Tensor | None = None, residual: torch.Tensor | None = None,
                 scale: float = 1.0, act: str = "leaky") -> torch.Tensor:
        """One convolution of the concatenated ``sources`` (N, h, w, C_s each) with ``u``
        (``weight_transform``'s) into ``out`` (N, h, w, C_out): act(conv + bias), or
        residual + scale·(conv + bias). ``slope``: the leaky ReLU's, one for every channel (a float) or
        one per channel (PReLU's weights, a (C_out,) tensor); None: no activation. ``act``: "silu" or
        "gate" instead (``winograd_native.convolution``)."""
        cpad = u.shape[-1]
        block = block_tiles(cpad)
        scratch = self.buffer(("scratch", cpad), self.scratch_shape(cpad, block))
        if isinstance(slope, (int, float)):
            slope = _constant(slope, out.shape[-1])
        convolution(sources, u, bias, out, residual, self.height, self.width, slope, scale, scratch, block, act)
        return out


class Workspaces:
    """The workspaces of the last ``keep`` map shapes a runner computed, all of one map size (older
    ones dropped, their buffers freed): a window shape's buffers are made once and serve every window
    of that shape."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._kept: OrderedDict[tuple[int, int, int], Workspace] = OrderedDict()

    @staticmethod
    def new(n: int, height: int, width: int) -> Workspace:
        """A workspace for maps of height x width px (rounded up to the tile inside), not kept."""
        return Workspace(n, rounded(height), rounded(width), height, width)

    def get(self, n: int, height: int, width: int) -> Workspace:
        """The workspace of this map shape: the one kept, or a new one. A new map size drops the kept
        workspaces of other sizes (a plan has one window shape, in full batches and maybe one smaller
        last batch; a previous image's whole-image window may hold GBs), so that only this image's
        windows hold memory."""
        ws = self._kept.pop((n, height, width), None)
        if ws is None:
            for key in [k for k in self._kept if k[1:] != (height, width)]:
                del self._kept[key]
            ws = self.new(n, height, width)
        self._kept[(n, height, width)] = ws
        while len(self._kept) > self.keep:
            self._kept.popitem(last=False)
        return ws

    def values(self) -> list[Workspace]:
        return list(self._kept.values())


class WinogradRunner:
    """What the winograd backend's runners share: the native kernels loaded (built first, once per
    machine: a ``BackendError`` where no C compiler can) when one is made, and the workspaces of the
    last ``KEEP_WORKSPACES`` window shapes. Not reentrant: one batch at a time (``Upscaler`` serialises
    its calls)."""

    def __init__(self) -> None:
        library()
        self.workspaces = Workspaces(KEEP_WORKSPACES)

    def is_warm(self, shape: tuple[int, ...]) -> bool:
        """Whether a batch of ``shape`` (N, H, W, C) runs without compiling: always, once this runner
        is made (its kernels, one build for every shape, were loaded then)."""
        return True


def zero_beyond(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """t (N, H, W, C) with its rows from ``height`` and columns from ``width`` zeroed: a map rounded up
    to the tiles, as the next convolution's zero padding expects it."""
    t[:, height:].zero_()
    t[:, :height, width:].zero_()
    return t


def prepared(conv: torch.nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 convolution's transformed weights and its bias, fp32."""
    return weight_transform(conv.weight), conv.bias.detach().float()


def slopes(act: torch.nn.Module | float, channels: int, group: int = 1) -> torch.Tensor | float:
    """An activation as the leaky-ReLU slopes of a convolution's ``channels`` outputs: a constant (a
    float as given, LeakyReLU's slope, 0 for ReLU), or PReLU's weights (one per channel, or one for
    all), each repeated for the ``group`` outputs a pixel shuffle after the convolution turns into one
    channel."""
    if isinstance(act, torch.nn.PReLU):
        weight = act.weight.detach().float().reshape(-1)
        weight = weight.expand(channels // group) if weight.numel() == 1 else weight
        return weight.repeat_interleave(group).contiguous()
    if isinstance(act, torch.nn.LeakyReLU):
        return float(act.negative_slope)
    if isinstance(act, torch.nn.ReLU):
        return 0.0
    if isinstance(act, (int, float)):
        return float(act)
    raise TypeError(f"activation {type(act).__name__} is not one the winograd backend computes")


def run_in_stripes(height: int, width: int, scale: int, span: int, step: int, halo: int, out: torch.Tensor,
                   stripe: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """An upsampling part computed in stripes of ``span`` rows (``stripe_rows``) into ``out`` (N,
    height·scale, width·scale, C): ``stripe(a)`` computes the stripe of map rows a..a+span at ``scale``;
    each keeps ``step`` rows, reading ``halo`` rows of context each side, and every stripe has the same
    shape (the last moves up to end at the map's last row)."""
    s = scale
    for y0 in range(0, height, step):
        y1 = min(height, y0 + step)
        a = min(max(0, y0 - halo), height - span)
        out[:, s * y0:s * y1] = stripe(a)[:, s * (y0 - a):s * (y1 - a), :s * width]
    return out


def shuffle_into(last: torch.Tensor, scale: int, out: torch.Tensor) -> torch.Tensor:
    """The pixel shuffle of last (N, h, w, C·s·s) NHWC (a view may do) written into the top-left
    (N, h·s, w·s, C) of ``out`` (a map of the next resolution, rounded up for the tiles)."""
    n, h, w, cs = last.shape
    c, s = cs // (scale * scale), scale
    grid = out[:, :h * s, :w * s].unflatten(2, (w, s)).unflatten(1, (h, s))     # (N, h, i, w, j, C)
    grid.copy_(last.unflatten(3, (c, s, s)).permute(0, 1, 4, 2, 5, 3))
    return out


def stripe_rows(height: int, halo: int, fits: int) -> tuple[int, int]:
    """(rows a stripe reads, rows it keeps) for a map of ``height`` rows whose upsampling part is
    computed in stripes of at most ``fits`` rows (what fits a runner's memory budget) with ``halo`` rows
    of context each side: the whole map where it fits, else the fewest stripes that do, of equal
    height (so that little is computed twice)."""
    fits = max(1 + 2 * halo, fits)
    if height <= fits:
        return height, height
    stripes = -(-height // (fits - 2 * halo))
    step = -(-height // stripes)
    return step + 2 * halo, step


def shuffled(last: torch.Tensor, scale: int, base: torch.Tensor | None = None, *,
             grouped: bool = False) -> torch.Tensor:
    """The pixel shuffle of last (N, H, W, C·s·s) NHWC: (N, H·s, W·s, C), plus ``base`` (N, H, W, C)
    upsampled by nearest where given. ``grouped``: last's channels are ordered (i, j, c) (the
    convolution's outputs reordered by ``shuffle_grouped``) rather than torch's (c, i, j), so that each
    output row's s·C values come from one run of memory: a plain strided copy, ~1.8x faster for
    large maps."""
    n, h, w, cs = last.shape
    c, s = cs // (scale * scale), scale
    out = torch.empty((n, h * s, w * s, c))
    if grouped and base is None:
        out.view(n, h, s, w, s * c).copy_(last.unflatten(3, (s, s * c)).permute(0, 1, 3, 2, 4))
        return out
    grid = out.view(n, h, s, w, s, c)
    order = (s, s, c) if grouped else (c, s, s)
    pixels = last.unflatten(3, order).permute(0, 1, 3, 2, 4, 5) if grouped else \
        last.unflatten(3, order).permute(0, 1, 4, 2, 5, 3)                 # (N, H, i, W, j, C)
    if base is None:
        grid.copy_(pixels)
    else:
        torch.add(pixels, base[:, :, None, :, None, :], out=grid)
    return out


def shuffle_grouped(u_bias: tuple[torch.Tensor, torch.Tensor], scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A transformed convolution feeding a pixel shuffle (``prepared``'s (U, bias)) with its outputs
    reordered from torch's (c, i, j) to (i, j, c), for ``shuffled(..., grouped=True)``."""
    u, bias = u_bias
    cs, s = bias.numel(), scale
    order = torch.arange(cs).reshape(cs // (s * s), s, s).permute(1, 2, 0).reshape(-1)
    grouped = torch.zeros_like(u)
    grouped[..., :cs] = u[..., order]
    return grouped.contiguous(), bias[order].contiguous()


@functools.lru_cache(maxsize=16)
def _constant(value: float, n: int) -> torch.Tensor:
    """A (n,) float32 tensor of ``value`` (one slope for every channel), made once."""
    return torch.full((n,), value)


def rounded(side: int) -> int:
    """``side`` rounded up to a multiple of the tile."""
    return -(-side // TILE) * TILE
