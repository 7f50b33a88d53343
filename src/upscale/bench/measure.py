"""What the bench measures besides time: the peak growth of this process's resident memory (sampled
by a thread), and on CUDA the allocator's peak."""

from __future__ import annotations

import os
import threading


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """Context manager: peak growth of resident memory over its value at entry, sampled by a thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak_growth_bytes: int | None = None
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRss":
        start = _rss_bytes()
        if start is not None:
            self._start, self.peak_growth_bytes = start, 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _update(self) -> None:
        rss = _rss_bytes()
        if rss is not None and self.peak_growth_bytes is not None:
            self.peak_growth_bytes = max(self.peak_growth_bytes, rss - self._start)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._update()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._update()

    @property
    def peak_mib(self) -> float | None:
        return None if self.peak_growth_bytes is None else self.peak_growth_bytes / 2 ** 20


def cuda_peak_reset(device: str) -> bool:
    """On a CUDA device: finish pending work and reset the allocator's peak; False elsewhere."""
    if not device.startswith("cuda"):
        return False
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return True


def cuda_peak_mib() -> float:
    import torch
    return torch.cuda.max_memory_allocated() / 2 ** 20
