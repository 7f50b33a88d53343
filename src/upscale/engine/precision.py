"""Which dtype ``precision="auto"`` computes in: ``device.resolve_precision``'s rule, and, where the
rule says bf16 on the CPU, what was measured on this CPU, since native bf16 (avx512_bf16, AMX) is not
always the faster (on a Xeon with avx512_bf16 and no AMX, torch's bf16 GEMM ran at about half its
fp32 rate; on an AMX Xeon at ~5x):

1. ``upscale tune -m MODEL``'s choice for this network and thread count (``tuned.auto_precision``);
2. else the machine's probe: one 3x3 convolution (``PROBE_SHAPE``, channels_last, constant tensors)
   timed under bf16 autocast and in fp32, alternately (``machine.best_alternating``: well under a
   second), measured once per CPU, thread count and torch version and
   kept in the tuning cache, so a first run neither stalls nor flips between runs (``upscale tune
   --probe`` measures it again). An answer measured while other processes took over
   ``machine.BUSY_SHARE`` of the CPUs (``machine.watch_others``) serves this process only: the next
   one measures again.

The choice is said where it overrides the rule, once per process (per model for ``upscale tune``'s
choices): at info level when the probe measured it now or ``upscale tune`` chose it, at debug level
when it is the probe's cached answer (not news on every run after the first)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import machine, native, tuned
from ..device import DTYPES, resolve_precision
from ..model import Model

log = logging.getLogger(__name__)

_said: set[tuple[str, str, str]] = set()


def resolve_dtype(name: str, device: torch.device, model: Model, threads: int) -> torch.dtype:
    """The compute dtype for precision ``name`` (only ``auto`` is ever changed from the rule's answer)."""
    dtype = resolve_precision(name, device, model)
    if name != tuned.AUTO or dtype != torch.bfloat16 or device.type != "cpu":
        return dtype
    chosen, source = tuned.auto_precision(model, "bf16", device, threads)
    level = logging.DEBUG if source == "probe" else logging.INFO    # the probe's cached answer: no news
    if chosen is None:
        chosen, source, level = probe_machine(threads)[0], "probe", logging.INFO
    said = (chosen, source, "" if source == "probe" else tuned.canonical([model.arch, model.hparams]))
    if chosen != "bf16" and said not in _said:
        _said.add(said)
        why = ("`upscale tune` measured it faster than bf16 for this model here" if source == "model" else
               "a 3x3 convolution ran faster in it than in bf16 on this CPU; `upscale tune -m MODEL` measures "
               "the model itself")
        log.log(level, "precision auto: %s (%s)", chosen, why)
    return DTYPES[chosen]


def probe_machine(threads: int) -> tuple[str, dict[str, float], bool]:
    """Time the probe convolution in bf16 and fp32 now: (the faster, {precision: seconds}, whether the
    answer was stored in the tuning cache: not when other processes kept the machine busy meanwhile).
    Measured at ``threads`` threads, the count it is stored under (torch's count restored after)."""
    native.wait_for_builds()        # the kernels' compiler, started by the CLI, is not others' load
    with machine.probing(threads) as others:
        seconds = probe_seconds()
    log.debug("precision probe: bf16 %.4f s, fp32 %.4f s, others' CPU share %s", seconds["bf16"], seconds["fp32"],
              others.share)
    if others.busy:
        log.info("precision probe: other processes used %.0f%% of the CPUs while it ran; its answer serves this "
                 "run only (the next measures again)", 100 * others.share)
    chosen = tuned.remember_faster(tuned.probe_key(threads), seconds, label="machine probe", keep=not others.busy)
    return chosen, seconds, not others.busy


def probe_seconds() -> dict[str, float]:
    """{precision: best seconds of the probe convolution}, the precisions alternated
    (``machine.best_alternating``)."""
    channels, side = tuned.PROBE_SHAPE["channels"], tuned.PROBE_SHAPE["side"]
    x = torch.full((1, channels, side, side), 0.5).contiguous(memory_format=torch.channels_last)
    w = torch.full((channels, channels, 3, 3), 0.01).contiguous(memory_format=torch.channels_last)

    def conv(name: str) -> Callable[[], Any]:
        def call() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                F.conv2d(x, w, padding=1)
        return call

    with torch.inference_mode():
        return machine.best_alternating({name: conv(name) for name in tuned.AUTO_CANDIDATES})


__all__ = ["probe_machine", "probe_seconds", "resolve_dtype"]
