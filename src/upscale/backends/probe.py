"""Which backend ``--backend auto`` runs an fp32 model on when ``upscale tune`` measured nothing for
it: the machine's backend probe.

Without a tuning entry, ``auto`` used to run torch, which on the CPUs measured here was the slowest of
the three for every network the winograd backend computes (x4plus ~3x, the SPAN defaults ~2x slower
in fp32: docs/perf.md). But that is a fact about those CPUs: the winograd kernels are built for the
CPU that runs them, and on another one torch's direct convolutions may win. So the machine is asked,
as ``engine.precision`` asks it about bf16: one 3x3 convolution (``tuned.PROBE_SHAPE``, constant
tensors) timed through torch (fp32, channels_last) and through the winograd kernels, alternately
(``machine.best_alternating``), well under a second plus, once per machine, building the kernels.
The answer is kept in the tuning cache under the probe's key (CPU, flags, threads, versions,
kernels' version), so a first run does not stall twice and the choice
does not flip between runs; ``upscale tune --probe`` measures it again, and ``upscale tune -m MODEL``
(which measures the model itself, OpenVINO too) overrides it for that model. An answer measured while
other processes took over ``machine.BUSY_SHARE`` of the CPUs serves this process only (said at
debug level: it changes what is kept, not what runs). Where the kernels cannot be built (no C
compiler), the probe answers torch for this process and is not kept: a compiler installed later is
found by the next process.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .. import errors, machine, tuned

log = logging.getLogger(__name__)

CANDIDATES = ("torch", "winograd")
_said: set[str] = set()
_answers: dict[int, str] = {}     # threads -> this process's answer


def probed_backend(threads: int) -> str:
    """The backend the probe chose for fp32 models on this CPU at ``threads`` threads: this process's
    answer, else the cached one, else measured now (and cached). A "winograd" answer whose kernels
    cannot be loaded now (no compiler, a changed ``$CC``) is torch. Said once per process: at info level
    when measured now or when the kernels are missing, at debug level when read from the cache."""
    if threads in _answers:
        return _answers[threads]
    result = tuned.lookup(tuned.backend_probe_key(threads))
    level = logging.INFO if result is None else logging.DEBUG     # news when measured, not on every run after
    try:
        if result is not None:
            chosen, seconds = result["backend"], result["estimate_s"]
            if chosen == "winograd":
                from .winograd_native import library

                library()
        else:
            chosen, seconds, _ = probe_backends(threads)
    except errors.BackendError as err:
        _say_once("torch", f"the winograd kernels are not available here ({err.message})", logging.INFO)
        chosen = "torch"
    else:
        ratio = max(seconds.values()) / min(seconds.values())
        _say_once(chosen, f"one 3x3 convolution ran {ratio:.1f}x faster in it than in the "
                          f"{'winograd' if chosen == 'torch' else 'torch'} backend on this CPU; "
                          "`upscale tune -m MODEL` measures the model itself", level)
    _answers[threads] = chosen      # one answer per process, stored or not (a busy machine, a read-only cache)
    return chosen


def probe_backends(threads: int) -> tuple[str, dict[str, float], bool]:
    """Time the probe convolution on torch and on the winograd kernels now: (the faster, {backend:
    seconds}, whether the answer was stored in the tuning cache: not when other processes kept the
    machine busy meanwhile). A ``BackendError`` where the kernels cannot be built here."""
    from .winograd_native import library

    library()       # built first where needed: the compiler's processes are not others' load on the probe
    with machine.probing(threads) as others:
        seconds = probe_seconds()
    log.debug("backend probe: torch %.4f s, winograd %.4f s, others' CPU share %s", seconds["torch"],
              seconds["winograd"], others.share)
    chosen = min(CANDIDATES, key=lambda name: seconds[name])      # torch on a tie
    if others.busy:
        log.debug("backend probe: other processes used %.0f%% of the CPUs while it ran; its answer serves this "
                  "process only (the next measures again)", 100 * others.share)
        return chosen, seconds, False
    # a plan's fields too, so that versions before the probe read the file (not as corrupt)
    plan = {"window_px": tuned.PROBE_SHAPE["side"], "s_per_mp": round(seconds[chosen] / side_mp(), 6), "batch": 1,
            "compile": None}
    stored = tuned.store_choice(tuned.backend_probe_key(threads), "backend", chosen, seconds, label="backend probe",
                                extra=plan)
    return chosen, seconds, stored


def probe_seconds() -> dict[str, float]:
    """{backend: best seconds of the probe convolution}, the backends alternated
    (``machine.best_alternating``)."""
    from .winograd import Workspaces, weight_transform

    channels, side = tuned.PROBE_SHAPE["channels"], tuned.PROBE_SHAPE["side"]
    x = torch.full((1, side, side, channels), 0.5)                      # NHWC memory
    w = torch.full((channels, channels, 3, 3), 0.01)
    bias = torch.zeros(channels)
    ws = Workspaces.new(1, side, side)
    u, out = weight_transform(w), ws.buffer("out", ws.map_shape(channels))
    w_last = w.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return machine.best_alternating({"torch": lambda: F.conv2d(x.permute(0, 3, 1, 2), w_last, bias, padding=1),
                                         "winograd": lambda: ws.convolve([x], u, bias, out)})


def side_mp() -> float:
    """Megapixels of the probe's map."""
    return tuned.PROBE_SHAPE["side"] ** 2 / 1e6


def _say_once(chosen: str, why: str, level: int) -> None:
    if chosen not in _said:
        _said.add(chosen)
        log.log(level, "backend auto: %s for models not tuned here (%s)", chosen, why)


__all__ = ["CANDIDATES", "probe_backends", "probe_seconds", "probed_backend"]
