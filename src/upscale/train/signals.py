"""Stopping a run cleanly: SIGINT/SIGTERM set a flag and the run saves a checkpoint at an iteration
boundary; a second Ctrl-C raises KeyboardInterrupt at once.

Where it can be undone exactly (one process, no fp16 GradScaler), an iteration that is still in its
forward or backward pass when the signal comes is abandoned instead of finished (``abortable_step``):
one iteration of a large model can take a minute on a CPU. Nothing an iteration changes before its
first optimiser step survives the abandonment (the modules' buffers, such as batch-norm statistics,
the learning rates it set and every RNG are put back), so the checkpoint saved is the one the previous
iteration boundary would have saved and a resumed run continues bit for bit."""

from __future__ import annotations

import random
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn



class StepAbandoned(BaseException):
    """Raised inside an abortable iteration by the stop signal (a BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` on the way turns it into an error)."""


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops at the next iteration boundary and saves, or abandons the
    iteration under way where ``abortable`` is set. A second Ctrl-C raises KeyboardInterrupt at once.
    ``say`` tells the user as soon as the first signal comes: silence would invite the second Ctrl-C
    that gives up the checkpoint."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.reason: str | None = None
        self.say = say
        self.abortable = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        if self.abortable:
            self.abortable = False
            if self.say is not None:
                self.say(f"{self.reason}: abandoning the work under way and saving a checkpoint "
                         "(Ctrl-C again stops at once, keeping only the last saved checkpoint)")
            raise StepAbandoned
        if self.say is not None:
            self.say(f"{self.reason}: stopping when this iteration ends, then saving a checkpoint "
                     "(Ctrl-C again stops at once, keeping only the last saved checkpoint)")


@contextmanager
def stop_signals(flag: StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a signal ignored when the run started stays ignored (a background job of a script: its Ctrl-C
    # is the script's, not this run's)
    wanted = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, flag) for s in wanted}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def abortable_step(flag: StopFlag | None, modules: Sequence[nn.Module | None],
                   optimizers: Sequence[torch.optim.Optimizer | None]) -> Iterator[None]:
    """Let ``flag`` abandon the iteration in this block until the first optimiser step begins (an
    optimiser pre-hook closes the window). On abandonment the modules' buffers, the optimisers'
    learning rates and every RNG are put back as they were on entry, the gradients dropped, and
    StepAbandoned goes on to the caller. Without a flag (another thread, DDP, a GradScaler, whose
    skipped steps change its state with no optimiser step) the block just runs."""
    if flag is None:
        yield
        return
    opts = [o for o in optimizers if o is not None]
    nets = [m for m in modules if m is not None]
    buffers = [(b, b.detach().clone()) for m in nets for b in m.buffers()]
    rates = [(g, g["lr"]) for o in opts for g in o.param_groups]
    rng = _rng_state()

    def close(*_: Any) -> None:
        flag.abortable = False

    hooks = [o.register_step_pre_hook(close) for o in opts]
    flag.abortable = flag.reason is None
    try:
        yield
    except StepAbandoned:
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        for group, rate in rates:
            group["lr"] = rate
        for o in opts:
            o.zero_grad(set_to_none=True)
        _set_rng_state(rng)
        raise
    finally:
        flag.abortable = False
        for h in hooks:
            h.remove()


def _rng_state() -> tuple[Any, ...]:
    """Every RNG's state as the libraries give it (taken at each step, so not the checkpoint's
    convertible form, ``checkpoint.capture_rng``)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Any, ...]) -> None:
    python, numpy, torch_cpu, cuda = state
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(torch_cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
