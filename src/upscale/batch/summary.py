"""What a batch run reports: one ``Outcome`` per input file, the run's ``BatchSummary``, and the
JSON report (written through ``upscale.atomic``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import atomic, errors

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
NOT_STARTED = "not started"     # an interrupted run never reached it; the next run will


@dataclass(frozen=True)
class Outcome:
    """What happened to one input file."""

    input: str
    output: str | None
    status: str            # "done", "skipped", "failed" or "not started" (the run was interrupted first)
    reason: str = ""       # why it failed (one line), or why it was skipped
    input_px: int = 0      # width * height of the input, for throughput
    model_s: float = 0.0   # seconds this image spent in forward passes


@dataclass
class BatchSummary:
    """Every outcome of a run plus its timing; ``to_dict`` is what ``--json`` and ``--report`` write."""

    outcomes: list[Outcome]
    elapsed_s: float
    model_s: float                 # time in forward passes, from the engine's RunStats
    interrupted: bool = False
    shard: tuple[int, int] | None = None
    stale_temps_removed: int = 0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def done(self) -> int:
        return self.count(DONE)

    @property
    def skipped(self) -> int:
        return self.count(SKIPPED)

    @property
    def failed(self) -> int:
        return self.count(FAILED)

    @property
    def not_started(self) -> int:
        return self.count(NOT_STARTED)

    @property
    def megapixels_done(self) -> float:
        return sum(o.input_px for o in self.outcomes if o.status == DONE) / 1e6

    @property
    def images_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def megapixels_per_s(self) -> float:
        """Input megapixels upscaled per second of wall time."""
        return self.megapixels_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def model_busy_fraction(self) -> float:
        """Time in forward passes over wall time: near 1 when decoding and encoding are overlapped."""
        return self.model_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self, *, files: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "done": self.done, "skipped": self.skipped, "failed": self.failed,
            "not_started": self.not_started, "interrupted": self.interrupted,
            "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
            "elapsed_s": round(self.elapsed_s, 3), "model_s": round(self.model_s, 3),
            "images_per_s": round(self.images_per_s, 3), "megapixels_per_s": round(self.megapixels_per_s, 4),
            "stale_temps_removed": self.stale_temps_removed,
            "failures": [{"input": o.input, "reason": o.reason} for o in self.outcomes if o.status == FAILED],
        }
        if files:
            out["files"] = [asdict(o) for o in sorted(self.outcomes, key=lambda o: o.input)]
        return out


def reason_for(err: BaseException) -> str:
    """A one-line reason for a failed file (the path is reported beside it, so not repeated here)."""
    if isinstance(err, errors.UpscaleError):
        text = err.message
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split()) or type(err).__name__


def write_report(summary: BatchSummary, path: str | Path) -> None:
    """The per-file outcomes as JSON, put in place atomically."""
    path = Path(path)
    try:
        atomic.write_text(path, json.dumps(summary.to_dict(files=True), indent=2) + "\n")
    except OSError as err:
        raise errors.ImageWriteError(f"cannot write the report: {err.strerror or err}", path=path) from None
