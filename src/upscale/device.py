"""Which device and compute dtype to run on, shared by inference (``upscale.engine``) and training.

Device (``resolve_device``): ``auto`` -> cuda, then mps, then cpu; an explicit device that is not
there is a ``DeviceError``.

Precision (``resolve_precision``, ``precision="auto"``): fp16 autocast on CUDA; bf16 autocast on CPUs
with native bf16 dot products (``avx512_bf16`` or ``amx_bf16``, asked of ``upscale.machine``); fp32
otherwise, and fp32 whenever the model is not flagged ``bf16_safe``. Explicit choices: fp16 on CPU is
refused (``PrecisionError``); bf16 on a CPU without those instructions is allowed (PyTorch emulates it)
with a warning that it is likely slower than fp32. This rule knows nothing of measurements: where it
says bf16 on the CPU, inference (``engine.precision``) and training (``train.runtime``) run fp32
instead where fp32 was measured faster on this CPU.

Also here: the memory free on a device and a device synchronisation before reading the clock.

torch is imported when a device or dtype is first resolved, not with this module: the option checks
that read ``DEVICES`` and ``PRECISIONS`` (``engine.options``) run before anything is computed, and a
command that refuses its input says so at once.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

from . import errors
from .machine import cpu_bf16_flags, host_available_bytes

if TYPE_CHECKING:
    import torch

    from .model import Model

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def _dtypes() -> dict[str, Any]:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def __getattr__(name: str) -> Any:
    # DTYPES (precision name -> torch dtype) and NAMES (its inverse), made when first asked (PEP 562)
    if name == "DTYPES":
        return _dtypes()
    if name == "NAMES":
        return {v: k for k, v in _dtypes().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEVICES", "PRECISIONS", "available_memory_bytes", "cpu_bf16_flags",
           "cpu_native_bf16", "fast_dtype", "resolve_device", "resolve_precision", "synchronize"]


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AMX or AVX-512 BF16): the one answer to
    "is bf16 worth it on this CPU" for inference and training alike."""
    return bool(cpu_bf16_flags())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is not there -> ``DeviceError``."""
    if name not in DEVICES:
        raise errors.UsageError(f"device must be one of {', '.join(DEVICES)}, not {name!r}", params=("device",))
    import torch

    cuda_ok = torch.cuda.is_available()
    mps_ok = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        if cuda_ok:  # under a launcher (torchrun) each local rank takes its own GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("mps" if mps_ok else "cpu")
    if name == "cuda" and not cuda_ok:
        raise errors.DeviceError("device cuda: no CUDA GPU is available to this PyTorch "
                                 f"({torch.__version__}); use device cpu", params=("device",))
    if name == "mps" and not mps_ok:
        raise errors.DeviceError("device mps: Apple's Metal backend is not available here; use device cpu",
                                 params=("device",))
    return torch.device(name)


def fast_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision worth using on ``device``: fp16 on CUDA, bf16 on a CPU with native bf16,
    else fp32."""
    import torch

    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_precision(name: str, device: torch.device, model: Model) -> torch.dtype:
    """The compute dtype for ``name`` on ``device`` (see the module docstring for the rules)."""
    import torch

    dtypes = _dtypes()
    names = {v: k for k, v in dtypes.items()}
    label = model.name or model.source or model.arch
    if name == "auto":
        wanted = fast_dtype(device)
        if wanted != torch.float32 and not model.bf16_safe:
            log.info("precision auto: %s is not flagged safe in %s (fp32 and %s outputs not measured >= 50 dB "
                     "apart); using fp32 (precision %s forces it)", label, names[wanted], names[wanted],
                     names[wanted])
            return torch.float32
        return wanted
    if name not in dtypes:
        raise errors.UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}",
                                params=("precision",))
    if name == "fp16" and device.type == "cpu":
        raise errors.PrecisionError("precision fp16 is not supported on the CPU (PyTorch has no fast fp16 "
                                    "convolutions there); use precision bf16 or fp32, or device cuda",
                                    params=("precision", "device"))
    if name == "bf16" and device.type == "cpu" and not cpu_native_bf16():
        log.warning("precision bf16: this CPU has no avx512_bf16/amx_bf16; bf16 is emulated and "
                    "likely slower than fp32")
    return dtypes[name]


def available_memory_bytes(device: torch.device) -> int:
    """Free memory: the GPU's free memory on CUDA, else the host's (``machine.host_available_bytes``)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    return host_available_bytes()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (before reading the clock or reusing a host buffer)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
