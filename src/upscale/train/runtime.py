"""Where a run computes: device, autocast dtype and process group, from the config and torchrun's
environment. The device and the "is bf16 worth it on this CPU" answer come from ``upscale.device``
(shared with inference); training adds only what is its own: it runs on cpu or cuda (``auto``
never picks mps), fp16 gets a GradScaler, and DDP ranks each take a slice of the global batch."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..device import fast_dtype, resolve_device
from ..errors import DeviceError, PrecisionError, UsageError
from ..machine import cpu_bf16_flags
from .config import TrainConfig
from .steps import Amp

log = logging.getLogger(__name__)
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: Amp
    fp16_scaler: bool
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _device_type(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; an explicit name is checked by ``resolve_device``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = resolve_device(name).type
    if kind not in ("cpu", "cuda"):
        raise DeviceError(f"training runs on cpu or cuda, not {name!r}", params=("device",))
    return kind


def _precision(name: str, kind: str) -> str:
    if name == "auto":
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(fast_dtype(torch.device(kind)), "fp32")
    if name == "fp16" and kind == "cpu":
        raise PrecisionError("fp16 training needs CUDA; on the CPU use precision bf16 or fp32",
                             params=("precision",))
    if name == "bf16" and kind == "cpu" and not cpu_bf16_flags():
        log.warning("precision bf16: this CPU has no avx512_bf16/amx_bf16; bf16 is emulated and likely "
                    "slower than fp32")
    return name


def resolve_runtime(cfg: TrainConfig) -> Runtime:
    """Device, autocast dtype and process group, from the config and torchrun's environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    kind = _device_type(cfg.device)
    device = torch.device(kind, int(os.environ.get("LOCAL_RANK", "0"))) if kind == "cuda" else torch.device("cpu")
    dtype = _DTYPES[_precision(cfg.precision, kind)]
    if world_size > 1:
        if cfg.batch_size % world_size:
            raise UsageError(f"batch size {cfg.batch_size} is not divisible by the {world_size} processes")
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if kind == "cuda" else "gloo")
        if kind == "cuda":
            torch.cuda.set_device(device)
    return Runtime(device, Amp(kind, dtype), dtype == torch.float16, rank, world_size)
