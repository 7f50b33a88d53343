"""The winograd backend's convolutions as native code: ``winograd.c`` built on this machine with its C
compiler, cached, and called through ctypes on torch tensors' memory.

Why native code: a Winograd convolution is two transforms around 36 GEMMs. Written as torch ops, or
generated per map shape by torch.compile (this backend's first version), the transforms cost more than
the GEMMs and compiled for 5-20 s per new window shape; as separate C passes around torch's GEMMs
(its second version), the Winograd domain went to memory and back between them. One C call per
convolution now takes each block of tiles through all three steps in cache (``winograd.c`` says how);
on the Xeon of docs/perf.md that made RRDBNet's dense blocks ~1.4x faster again, and no window shape
compiles anything.

The build (``upscale.native``): ``$CC`` (default ``cc``) with ``-O3 -march=native -fopenmp``, once
per source, compiler and CPU, into ``<our cache>/native``. A compiler that is missing or fails, or whose
library does not load (an OpenMP runtime off the loader's path), is a ``BackendError`` naming the way
out (backend torch).
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .. import errors, native

if TYPE_CHECKING:       # torch is imported where a convolution runs: ``build_soon`` needs none
    import torch

SOURCE = "winograd.c"
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-shared")
WIDE_FLAGS = ("-mprefer-vector-width=512",)    # x86: let the compiler use the 512-bit registers it has
ACTIVATIONS = {"leaky": 0, "silu": 1, "gate": 2}     # winograd.c's ACT_LEAKY, ACT_SILU, ACT_GATE

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_LOADED: ctypes.CDLL | None = None


def _flags() -> tuple[str, ...]:
    return FLAGS + (WIDE_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else ())


def library_path() -> Path:
    """Where this source, built by this compiler for this CPU, is (or will be) kept."""
    return native.library_path(__package__, SOURCE, _flags())


def build_soon() -> None:
    """Start building the kernels in the background where they are not built yet (``native.build_soon``):
    the CLI calls it before it imports torch, which takes about as long as the build."""
    native.build_soon(__package__, SOURCE, _flags())


def library() -> ctypes.CDLL:
    """The kernels, built first where they are not on disk; loaded once per process."""
    global _LOADED
    if _LOADED is None:
        try:
            lib = native.load(__package__, SOURCE, _flags())
        except native.BuildError as exc:
            raise _unavailable(exc) from exc
        _LOADED = declared(lib)
    return _LOADED


def declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    """``lib`` (a build of ``winograd.c``) with its functions' argument and result types declared."""
    lib.winograd_conv.argtypes = [_PTR, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64,
                                  _I64, _I64, ctypes.c_int, _PTR, ctypes.c_float, _PTR, _I64, ctypes.c_int]
    lib.winograd_conv.restype = None
    lib.winograd_scratch_floats.argtypes = [_I64, _I64, ctypes.c_int]
    lib.winograd_scratch_floats.restype = _I64
    return lib


def scratch_floats(block: int, cpad: int, threads: int) -> int:
    """Floats of scratch ``convolution`` needs: blocks of ``block`` tiles, ``cpad`` output columns, threads."""
    return library().winograd_scratch_floats(block, cpad, threads)


def convolution(sources: Sequence[torch.Tensor], u: torch.Tensor, bias: torch.Tensor, y: torch.Tensor,
                residual: torch.Tensor | None, height: int, width: int, slope: torch.Tensor | None, scale: float,
                scratch: torch.Tensor, block: int, act: str = "leaky") -> None:
    """One 3x3 convolution of the channel concatenation of ``sources`` (each (N, H, W, C_s), H and W
    multiples of 4) into y (N, H, W, C): act(conv + bias), zero at rows >= height or columns >= width;
    or residual + scale·(that) where ``residual`` is given. ``act`` (``ACTIVATIONS``): "leaky", a leaky
    ReLU of one ``slope`` per channel (C,) (PReLU's weights; None: no activation); "silu"; "gate",
    SPAN's (v + residual)·(sigmoid(v) - 1/2), where ``residual`` is the gate's input. ``u``:
    ``weight_transform``'s (36, sum of C_s, C rounded up to 16). ``block``: tiles a thread takes at a
    time, a multiple of 24; ``scratch``: at least ``scratch_floats`` floats, apart from the rest. y may not
    overlap a source, ``u``, bias or slopes, nor the residual unless it is y itself."""
    if not sources:
        raise ValueError("a convolution needs at least one source map")
    if act not in ACTIVATIONS or (act != "leaky" and slope is not None) or (act == "gate" and residual is None):
        raise ValueError(f"activation {act!r} (of {', '.join(ACTIVATIONS)}) with slopes {slope is not None} and "
                         f"residual {residual is not None}: slopes go with leaky only, and gate needs a residual")
    _check(u, bias, y, scratch, *sources, *(t for t in (residual, slope) if t is not None))
    n, h, w, c = _map_shape(y)
    if any(_map_shape(x)[:3] != (n, h, w) for x in sources):
        raise ValueError(f"sources {[tuple(x.shape) for x in sources]} and output {tuple(y.shape)} differ in size")
    import torch

    cin, cpad, threads = sum(x.shape[3] for x in sources), u.shape[-1], torch.get_num_threads()
    if u.shape != (36, cin, cpad) or cpad % 16 or not c <= cpad < c + 16 or bias.shape != (c,) or (
            residual is not None and residual.shape != y.shape) or (slope is not None and slope.shape != (c,)):
        raise ValueError(f"U {tuple(u.shape)}, bias {tuple(bias.shape)}, slopes and output {tuple(y.shape)} "
                         f"do not match {cin} input channels")
    if block <= 0 or block % 24 or scratch.numel() < scratch_floats(block, cpad, threads):
        raise ValueError(f"blocks of {block} tiles (a multiple of 24) need {scratch_floats(block, cpad, threads)} "
                         f"floats of scratch, not {scratch.numel()}")
    if not cin:     # no chunk of channels would write the block buffer the output is read from
        raise ValueError("a convolution needs at least one input channel")
    # other threads read the inputs around the tiles one writes; the residual is read where it is written
    inputs = [*sources, u, bias, *(t for t in (slope,) if t is not None)]
    if any(_overlap(y, t) for t in inputs) or (residual is not None and residual.data_ptr() != y.data_ptr()
                                               and _overlap(y, residual)):
        raise ValueError("the output of a convolution may not overlap its sources, weights or residual "
                         "(the residual may be the output itself)")
    if any(_overlap(scratch, t) for t in (y, *inputs, *(t for t in (residual,) if t is not None))):
        raise ValueError("a convolution's scratch may not overlap its maps or weights")
    pointers, channels = (_PTR * len(sources))(*(x.data_ptr() for x in sources)), (_I64 * len(sources))(
        *(x.shape[3] for x in sources))
    library().winograd_conv(pointers, channels, len(sources), u.data_ptr(), cpad, bias.data_ptr(), y.data_ptr(),
                            None if residual is None else residual.data_ptr(), n, h, w, c, height, width,
                            ACTIVATIONS[act], None if slope is None else slope.data_ptr(), float(scale),
                            scratch.data_ptr(), block, threads)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous tensors share bytes."""
    return a.data_ptr() < b.data_ptr() + 4 * b.numel() and b.data_ptr() < a.data_ptr() + 4 * a.numel()


def _check(*tensors: torch.Tensor) -> None:
    import torch

    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"the winograd kernels take contiguous float32 CPU tensors, not {t.dtype} "
                             f"on {t.device} (contiguous: {t.is_contiguous()})")


def _map_shape(t: torch.Tensor) -> tuple[int, ...]:
    """(N, H, W, C) of an NHWC map whose H and W are multiples of 4 (the C reads and writes whole tiles)."""
    if t.dim() != 4 or t.shape[1] % 4 or t.shape[2] % 4:
        raise ValueError(f"the winograd kernels take (N, H, W, C) maps with H and W multiples of 4, "
                         f"not {tuple(t.shape)}")
    return tuple(t.shape)


def _unavailable(exc: native.BuildError) -> errors.BackendError:
    """Our message for a build that failed at ``exc.stage``; the way out named (a compiler that works, a
    folder that can be written, or backend torch)."""
    if exc.stage == "folder":
        return errors.BackendError(f"winograd's kernels could not be kept in {native.native_dir()} ({exc.why}); "
                                   "free or fix that folder (UPSCALE_CACHE), or use backend torch", params=("backend",))
    if exc.stage == "load":     # most often the compiler's OpenMP runtime (clang's libomp) is off the loader's path
        return errors.BackendError(f"winograd's kernels were compiled but do not load ({exc.why}); set CC to a C "
                                   "compiler whose OpenMP runtime loads here (gcc), or use backend torch",
                                   params=("backend",))
    return errors.BackendError(f"winograd's kernels could not be compiled here ({exc.why}); set CC to a C "
                               "compiler with OpenMP, or use backend torch", params=("backend",))
