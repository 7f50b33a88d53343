"""The torch side of stitching: ``TorchStitchOps`` (``tiling.BandStitcher``'s arithmetic on the model's
device) and the conversion of an input band to float."""

from __future__ import annotations

import numpy as np
import torch

from ..device import synchronize


class TorchStitchOps:
    """``tiling.BandStitcher`` arithmetic (the six methods of ``tiling.NumpyOps``) in torch on ``device``:
    tiles are blended where the model left them (no per-tile copy to the host on CUDA), fused
    (``addcmul_``) and with torch's intra-op threads on the CPU, and each finished band is clamped,
    rounded and cast to the output's integer type on the device before one copy (through a reused
    pinned staging buffer on CUDA) into the host array."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._staging: torch.Tensor | None = None     # pinned host bytes, CUDA only

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def asarray(self, weights: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(weights).to(self.device)

    def outer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.outer(a, b)

    def accumulate(self, acc: torch.Tensor, tile: torch.Tensor, weight: torch.Tensor) -> None:
        acc.addcmul_(tile, weight[:, :, None])    # fused: no temporary the size of the tile

    def shift(self, arr: torch.Tensor, n: int) -> None:
        keep = arr.shape[0] - n
        if keep > 0:
            arr[:keep] = arr[n:].clone()    # torch refuses overlapping in-place copies
        arr[max(keep, 0):] = 0.0

    def store(self, band: torch.Tensor, dest: np.ndarray, *, own: bool) -> None:
        band = band if own else band.to(torch.float32, copy=True)
        if dest.dtype == np.float32:
            result = band.clamp_(0.0, 1.0)
        else:
            peak = 255.0 if dest.dtype == np.uint8 else 65535.0
            # rounds half to even, like numpy's rint; uint16 travels as int32 (CUDA has no uint16 casts)
            result = band.mul_(peak).clamp_(0.0, peak).round_().to(
                torch.uint8 if dest.dtype == np.uint8 else torch.int32)
        if result.device.type == "cpu":
            torch.from_numpy(dest).copy_(result)
            return
        if result.device.type == "cuda":
            host = self._pinned(result)
            host.copy_(result, non_blocking=True)
            synchronize(result.device)
        else:
            host = result.cpu()
        np.copyto(dest, host.numpy(), casting="unsafe")

    def _pinned(self, like: torch.Tensor) -> torch.Tensor:
        """A pinned host tensor shaped and typed like ``like``, reusing one growing buffer."""
        nbytes = like.numel() * like.element_size()
        if self._staging is None or self._staging.numel() < nbytes:
            self._staging = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return self._staging[:nbytes].view(like.dtype).view(like.shape)


def to_float(rows: np.ndarray) -> torch.Tensor:
    """An (h, W, C) band of pixels as a float32 tensor in [0, 1] (integer types scaled by their peak)."""
    if rows.dtype == np.float32:
        return torch.from_numpy(np.ascontiguousarray(rows))
    band = rows.astype(np.float32)
    band *= 1.0 / (255.0 if rows.dtype == np.uint8 else 65535.0)
    return torch.from_numpy(band)
