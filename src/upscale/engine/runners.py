"""The window computers other than the engine's own torch module (``upscale.backends``), made when a
backend is first chosen, and which backends ``--backend auto`` may choose for each image.

With ``backend="auto"`` on the CPU and ``tile_px="auto"``, the engine plans every image over every
backend ``upscale tune`` measured here (the tuning cache keeps each backend's seconds per window
side), not only the one that won the tuner's reference image: measured on an Intel Xeon without AMX,
x4plus in fp32, the winograd backend was fastest in 256-px windows (a 1000x750 photo) while OpenVINO
ran a 512x512 photo in one window faster than winograd could (docs/perf.md, "Winograd convolutions
for RRDBNet"). So each image runs on the backend and window of its fewest estimated seconds.
"""

from __future__ import annotations

from typing import Any

import torch

from ..backends import openvino_installed, openvino_windows, winograd_supports, winograd_windows
from ..model import Model
from ..tiling import padded_length


class Runners:
    """The non-torch window computers of one engine: {backend: runner}, each made on first use."""

    def __init__(self, model: Model, precision: str, threads: int) -> None:
        self.model, self.precision, self.threads = model, precision, threads
        self._made: dict[str, Any] = {}
        self._sizing: dict[str, Any] = {}    # made to size a plan only: not warm until first used

    def get(self, backend: str) -> Any | None:
        """The runner of ``backend`` ("openvino", "winograd"), made now if needed; None for torch."""
        if backend == "torch":
            return None
        runner = self._made.get(backend)
        if runner is None:
            runner = self._made[backend] = self._sizing.pop(backend, None) or (
                openvino_windows(self.model, precision=self.precision, threads=self.threads)
                if backend == "openvino" else winograd_windows(self.model))
        return runner

    def compute(self, backend: str, x: torch.Tensor) -> torch.Tensor:
        """One batch (N, C, H, W; a view of NHWC memory) through ``backend``'s runner -> (N, H*s, W*s,
        C_out) float32, NHWC. OpenVINO's takes and gives NHWC arrays (no copy either way); winograd's
        takes and gives torch tensors as the engine does."""
        runner = self.get(backend)
        if backend == "openvino":
            return torch.from_numpy(runner(x.permute(0, 2, 3, 1).numpy()))
        return runner(x)

    def extra_bytes(self, backend: str, n: int, height: int, width: int) -> int:
        """Memory a batch of ``n`` windows of height x width px (padded to the model's size multiple, as
        they run) holds on ``backend`` beyond the model's activations, which the engine counts for every
        backend: winograd's workspace. Sizing a plan makes winograd's runner without counting it as set
        up (``is_warm``); a ``BackendError`` where it cannot be made here."""
        if backend != "winograd":
            return 0
        runner = self._made.get(backend) or self._sizing.get(backend)
        if runner is None:
            runner = self._sizing[backend] = winograd_windows(self.model)
        multiple = self.model.size_multiple
        return runner.workspace_bytes(n, padded_length(height, multiple), padded_length(width, multiple))

    @staticmethod
    def flat_cost(backend: str) -> bool:
        """Whether ``backend``'s cost per computed pixel does not grow with the window, so that with
        nothing measured the fewest computed pixels are the fastest plan: winograd's (its kernels take
        blocks of tiles sized to the core's L2 cache, whatever the map's size; docs/perf.md)."""
        return backend == "winograd"

    def made(self, backend: str) -> Any | None:
        """The runner of ``backend`` if it was made, else None (nothing is made)."""
        return self._made.get(backend)

    def is_warm(self, backend: str, shape: tuple[int, ...]) -> bool:
        """Whether a batch of ``shape`` starts on ``backend`` without compiling. A backend whose
        runner was not made yet counts as cold (its first window pays the runner's setup)."""
        if backend == "torch":
            return True
        runner = self._made.get(backend)
        return runner is not None and runner.is_warm(shape)

    def choosable(self) -> list[str]:
        """The backends ``auto`` may choose per image here: torch, openvino where it is installed,
        winograd for the networks and precision it computes."""
        names = ["torch"]
        if openvino_installed():
            names.append("openvino")
        if winograd_supports(self.model, self.precision):
            names.append("winograd")
        return names
