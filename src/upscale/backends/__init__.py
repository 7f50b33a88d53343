"""What computes the windows of an ``Engine``: the choice of backend and the door to each one.

``torch`` is the engine's own path (eager or torch.compile, autocast, any device). ``openvino``
(``openvino_backend``, the optional extra ``pip install 'upscale[openvino]'``) runs the same network
converted in memory by OpenVINO's CPU plugin. ``winograd`` (``winograd_backend`` for RRDBNet,
``winograd_compact`` for SRVGGNetCompact, ``winograd_span`` for SPAN) runs in fp32 on the CPU with the
3x3 convolutions computed by Winograd F(4x4, 3x3) (``winograd``). Each only computes windows: the
engine still plans, batches and stitches them, so seams and blending are the
same on all three.

``choose_backend`` resolves ``EngineOptions.backend``: ``auto`` is what the tuner
(``upscale.tuned.preferred_backend``) measured fastest for this model, precision and thread count on
this machine; for a model not tuned here, in fp32 on a network winograd computes, what the machine's
backend probe (``probe``: one convolution on torch and on winograd) measured faster; else torch.
Neither this package nor the engine imports openvino unless the openvino backend is chosen.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from .. import errors

if TYPE_CHECKING:
    from ..model import Model

log = logging.getLogger(__name__)

OPENVINO_EXTRA = "pip install 'upscale[openvino]'"
# families the winograd backend computes (winograd_backend, _compact, _span, _srresnet), here without torch:
# the CLI asks before it loads a model whether the kernels are worth building
WINOGRAD_ARCHS = ("rrdbnet", "compact", "span", "srresnet", "msrresnet")


def openvino_installed() -> bool:
    """Whether the openvino package can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):   # a stub in sys.modules, or a broken install
        return False


def choose_backend(requested: str, model: Model, device_type: str, precision: str, threads: int,
                   compile_mode: str = "auto") -> str:
    """The backend that will compute the windows: "torch", "openvino" or "winograd".

    ``requested``: auto, torch, openvino or winograd; ``device_type``: the resolved device ("cpu",
    "cuda", ...); ``precision``: the resolved precision's name ("fp32", "bf16", ...); ``threads``: the
    CPU threads the run uses. openvino or winograd off the CPU, or with compile on, is a ``UsageError``;
    so is winograd for a network other than RRDBNet, SRVGGNetCompact, SPAN or SRResNet, or a precision other than fp32.
    """
    if requested == "torch":
        return "torch"
    if requested == "winograd":
        from .winograd import check_supported

        if compile_mode == "on" and device_type == "cpu":
            raise errors.UsageError("compile on is torch.compile of the whole network, which backend winograd "
                                    "does not use (its kernels are C, built once); use compile auto or off with it",
                                    params=("compile", "backend"))
        check_supported(model, device_type, precision)
        return "winograd"
    if requested == "openvino":
        if device_type != "cpu":
            raise errors.UsageError(f"backend openvino runs on the CPU only, not on {device_type}; "
                                    "use backend torch (or auto) there", params=("backend",))
        if compile_mode == "on":
            raise errors.UsageError("compile on is torch.compile, which backend openvino does not use; "
                                    "use compile auto or off with it", params=("compile", "backend"))
        return "openvino"
    if requested != "auto":
        raise errors.UsageError(f"backend must be one of auto, torch, openvino, winograd, not {requested!r}",
                                params=("backend",))
    if device_type != "cpu" or compile_mode == "on":
        return "torch"
    preferred = _tuner_preference(model, precision, threads)
    if preferred is None and winograd_supports(model, precision):
        from .probe import probed_backend

        preferred = probed_backend(threads)
    if preferred == "openvino":
        if openvino_installed():
            return "openvino"
        log.info("backend auto: the tuner measured openvino faster here, but it is not installed; using torch")
    if preferred == "winograd" and winograd_supports(model, precision):
        return "winograd"
    return "torch"


def winograd_supports(model: Model, precision: str) -> bool:
    """Whether the winograd backend can compute ``model`` at ``precision`` (on the CPU)."""
    from .winograd import check_supported

    try:
        check_supported(model, "cpu", precision)
    except errors.UsageError:
        return False
    return True


def _tuner_preference(model: Model, precision: str, threads: int) -> str | None:
    """What the tuning cache says for this model here (``upscale.tuned.preferred_backend``), or None."""
    from ..tuned import preferred_backend

    return preferred_backend(model, precision, threads)


def openvino_windows(model: Model, *, precision: str, threads: int) -> Any:
    """An ``openvino_backend.OpenVinoWindows`` for ``model`` (imports openvino; a ``UsageError``
    naming the extra to install when it is missing)."""
    from .openvino_backend import OpenVinoWindows

    return OpenVinoWindows(model, precision=precision, threads=threads)


def winograd_windows(model: Model) -> Any:
    """The winograd backend's runner for ``model`` (weights transformed here): ``WinogradWindows`` for
    an RRDBNet, ``winograd_compact.CompactWindows`` for an SRVGGNetCompact, ``winograd_span.SpanWindows``
    for a SPAN, ``winograd_srresnet.SRResNetWindows`` for an SRResNet or MSRResNet."""
    if model.arch == "compact":
        from .winograd_compact import CompactWindows

        return CompactWindows(model)
    if model.arch == "span":
        from .winograd_span import SpanWindows

        return SpanWindows(model)
    if model.arch in ("srresnet", "msrresnet"):
        from .winograd_srresnet import SRResNetWindows

        return SRResNetWindows(model)
    from .winograd_backend import WinogradWindows

    return WinogradWindows(model)
