"""The methods a bench compares, each an LR -> SR function on 8-bit arrays: the classic baselines
(Pillow, and MATLAB bicubic from ``dataprep``) and models through ``api.Upscaler``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..dataprep import bicubic_up
from ..io import Image
from ..pillow_resize import resize_array

BASELINES = ("nearest", "bilinear", "bicubic", "lanczos")

Method = Callable[[np.ndarray], np.ndarray]   # LR uint8 (h, w, C) -> SR uint8 (h*s, w*s, C)
BACKEND_NOTES = {"openvino": "OpenVINO", "winograd": "Winograd"}   # torch: no note, or torch.compile


@dataclass(frozen=True)
class MethodSpec:
    """One column of the table: its name, kind ("baseline" or "model"), function and where it runs."""

    name: str
    kind: str
    fn: Method
    device: str
    dtype: str
    note: str
    backends: list[str] | None = None   # a model's: the backend of each call (``--backend auto`` may
                                        # choose one per image), cleared by the bench after its warm-up

    def full_note(self) -> str:
        """``note``, after what computed the images since ``backends`` was cleared: one backend's
        name, or each with its share when the engine chose per image (``OpenVINO 3/5, Winograd 2/5``)."""
        counts = Counter(self.backends or ())
        names = [BACKEND_NOTES.get(name, "torch") for name in counts]
        if len(counts) > 1:
            names = [f"{label} {n}/{len(self.backends)}" for label, n in zip(names, counts.values())]
        elif names == ["torch"]:
            names = []
        return "; ".join(part for part in (", ".join(names), self.note) if part)


@dataclass(frozen=True)
class LoadedModel:
    label: str
    native_scale: int
    upscaler: Any          # api.Upscaler
    device: str
    dtype: str
    compiled: bool = False  # torch's windows run through torch.compile (noted beside the backend)


def _pillow_method(name: str, scale: int) -> Method:
    def run(lr: np.ndarray) -> np.ndarray:
        h, w = lr.shape[:2]
        return resize_array(lr, (w * scale, h * scale), name)
    return run


def baseline(name: str, scale: int) -> MethodSpec:
    if name == "bicubic":
        return MethodSpec(name, "baseline", lambda lr: bicubic_up(lr, scale), "cpu", "float64", "MATLAB imresize")
    return MethodSpec(name, "baseline", _pillow_method(name, scale), "cpu", "float32", "Pillow")


def load_models(specs: Sequence[str], engine_options: Any) -> list[LoadedModel]:
    """Load each ``-m`` (registry name or file) once and prepare it on its device."""
    if not specs:
        return []
    from ..api import Upscaler, load_model

    loaded, labels = [], set()
    for spec in specs:
        model = load_model(spec)
        label = model.name or Path(spec).stem
        base, n = label, 1
        while label in labels or label in BASELINES:
            n += 1
            label = f"{base}#{n}"
        labels.add(label)
        up = Upscaler(model, engine_options)
        loaded.append(LoadedModel(label, model.scale, up, str(up.engine.device),
                                  str(up.engine.dtype).replace("torch.", ""), up.engine.compiled))
    return loaded


def _model_method(m: LoadedModel, scale: int, backends: list[str]) -> Method:
    def run(lr: np.ndarray) -> np.ndarray:
        image = Image(pixels=lr, alpha=None, icc_profile=None, exif=None, source_format="PNG",
                      source_mode="L" if lr.shape[2] == 1 else "RGB")
        from ..engine import RunStats

        stats = RunStats()
        out = m.upscaler.upscale(image, outscale=float(scale), stats=stats).pixels
        backends.append(stats.backend)
        return out[..., None] if out.ndim == 2 else out
    return run


def model_method(m: LoadedModel, scale: int) -> MethodSpec:
    resized = "" if m.native_scale == scale else f"native x{m.native_scale}, Lanczos-resized to x{scale}"
    note = "; ".join(part for part in ("torch.compile" if m.compiled else "", resized) if part)
    backends: list[str] = []
    return MethodSpec(m.label, "model", _model_method(m, scale, backends), m.device, m.dtype, note, backends)


def methods_for(baselines: Sequence[str], models: Sequence[LoadedModel], scale: int) -> list[MethodSpec]:
    """The table's columns at ``scale``: baselines in the order asked, then models in -m order."""
    return [*(baseline(name, scale) for name in baselines), *(model_method(m, scale) for m in models)]
