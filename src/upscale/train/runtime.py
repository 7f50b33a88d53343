"""Where a run computes: device, autocast dtype and process group, from the config and torchrun's
environment. The device and the "is bf16 worth it on this CPU" answer come from ``upscale.device``
(shared with inference); training adds only what is its own: it runs on cpu or cuda (``auto``
never picks mps), fp16 gets a GradScaler, and DDP ranks each take a slice of the global batch.

Native bf16 is not always the faster on a CPU (on a Xeon with avx512_bf16 and no AMX, a compact
generator's training step ran 1.6x slower in bf16 than in fp32), so where ``precision auto`` would
train in bf16 on the CPU, ``settle_auto_precision`` decides by measurement: the generator's forward
and backward in both, on a copy, once per generator, batch, patch size and thread count on this
CPU (kept in the tuning cache, ``upscale.tuned``, so runs with the same seed train alike), and a
resumed run keeps the precision it started with."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..device import fast_dtype, resolve_device
from .. import machine, tuned
from ..errors import DeviceError, PrecisionError, UsageError
from ..machine import cpu_bf16_flags
from .config import TrainConfig
from .steps import Amp

log = logging.getLogger(__name__)
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in _DTYPES.items()}
PROBE_BATCH = 2        # at most this many patches per timed generator step of the precision probe
PROBE_RUNS = 2         # timed steps per precision, after one warm-up


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


def settle_auto_precision(rt: Runtime, cfg: TrainConfig, gen: nn.Module, arch: str, hparams: dict[str, Any],
                          recorded: str | None, *, say: Callable[[str], None] | None = None
                          ) -> tuple[Runtime, str | None]:
    """The runtime to train with, and a line saying how its precision was chosen (None: no choice).

    Only for ``precision auto`` where the rule chose bf16 on the CPU, in one process (DDP ranks would
    each measure their own answer): ``recorded`` (the precision the checkpoint being resumed was
    trained in, so the run continues exactly), else what the tuning cache holds for this generator,
    batch, patch and thread count here, else measured now and stored unless other processes kept the
    CPUs busy meanwhile (``machine.BUSY_SHARE``; ``say`` hears it start: for ESRGAN's RRDBNet it takes
    ~10 s)."""
    if cfg.precision != "auto" or rt.device.type != "cpu" or rt.amp.dtype != torch.bfloat16 or rt.world_size > 1:
        return rt, None
    lr_px = max(1, cfg.gt_size // cfg.scale)
    if recorded in ("bf16", "fp32"):      # not fp16: a run started on CUDA measures here afresh
        name, why = recorded, "the precision this run started in"
    else:
        key = tuned.tuning_key(arch, dict(hparams, train_batch=cfg.batch_size, train_lr_px=lr_px), tuned.TRAIN_AUTO,
                               "cpu", torch.get_num_threads())
        result = tuned.lookup(key)
        if result is not None:
            name, why = result["precision"], "measured faster on this CPU earlier"
        else:
            if say is not None:
                say("timing the generator's step in bf16 and fp32 for precision auto (once for it on this CPU)")
            with machine.watch_others() as others:
                seconds = {p: _time_step(gen, _DTYPES[p], min(cfg.batch_size, PROBE_BATCH),
                                         hparams.get("num_in_ch", 3), lr_px, cfg.channels_last)
                           for p in tuned.AUTO_CANDIDATES}
            name = tuned.remember_faster(key, seconds, label=f"train {arch}", keep=not others.busy)
            why = f"generator step measured here: bf16 {seconds['bf16']:.3g} s, fp32 {seconds['fp32']:.3g} s"
            if others.busy:
                why += f"; not cached: other processes used {100 * others.share:.0f}% of the CPUs meanwhile"
    return dataclasses.replace(rt, amp=Amp("cpu", _DTYPES[name])), f"precision auto: {name} ({why})"


def _time_step(gen: nn.Module, dtype: torch.dtype | None, batch: int, channels: int, lr_px: int,
               channels_last: bool) -> float:
    """Best seconds of ``PROBE_RUNS`` forward + backward passes of a copy of ``gen`` on a constant
    batch under autocast ``dtype`` (after one warm-up). The run's networks, gradients and random
    streams are left as they were."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    probe = copy.deepcopy(gen).to(memory_format=memory)
    x = torch.full((batch, channels, lr_px, lr_px), 0.5).contiguous(memory_format=memory)
    amp = Amp("cpu", dtype)
    times = []
    with torch.random.fork_rng(devices=[]):          # dropout and the like draw from the run's stream
        for _ in range(PROBE_RUNS + 1):
            t0 = time.perf_counter()
            with amp.autocast():
                out = probe(x)
            out.float().abs().mean().backward()
            probe.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    return min(times[1:])
