"""The tuner: measure, on the running machine, which window side, batch, compile setting and backend
run a network fastest, and keep the winner in the tuning cache (``upscale.tuned``).

``tune_model`` measures one precision (``upscale.tune.measure``) and stores; ``--tile auto`` reads the
result through ``engine.cost.fitting_window_px``, ``--compile auto`` through
``engine.compiling.want_compile``, and ``--backend auto`` through ``preferred_backend``. With no entry
for the key, each uses the fallback constants and says so once per process.

``tune_precisions`` is what ``upscale tune`` runs: ``tune_model`` at the precision asked for, and, where
that is ``auto`` and resolves to bf16 on the CPU, fp32 as well, so that ``--precision auto`` runs the
one measured faster here (``tuned.auto_precision``). fp32 is first screened at bf16's chosen window
(each backend, one probe); its full tune runs only where it came within ``PRECISION_SCREEN_MARGIN`` of
bf16's estimate (on an AMX CPU, where fp32 is several times slower, the screen is all it costs).

Timings are only as good as an idle machine: where other processes used over ``machine.BUSY_SHARE``
of the CPUs while ``tune_precisions`` measured (``machine.watch_others``), it warns, and ``Tuning``
says how much (a smoke tune on a 2-core AMX Xeon beside a CI run chose bf16 for default-x4 by 11.9 s
to 12.8 s).

This package never prints (``upscale.cli.tune`` does).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from .. import machine
from ..device import NAMES, resolve_device, resolve_precision
from ..engine import EngineOptions
from ..model import Model
from .. import tuned
from ..tuned import preferred_backend  # noqa: F401  (re-exported: where callers looked for it)
from .measure import (REFERENCE_SHAPE, RUNS, Prober, Row, TuneReport, backend_unavailable, candidate_windows,
                      measure_backend, measure_batch, measure_compile, measure_windows, old_choices,
                      openvino_curve_wanted, pick_window, precision_name, reference_windows)

__all__ = ["PRECISION_SCREEN_MARGIN", "REFERENCE_SHAPE", "Row", "TuneReport", "Tuning", "preferred_backend",
           "tune_model", "tune_precisions"]

PRECISION_SCREEN_MARGIN = 0.25     # fp32 up to this much slower than bf16 in the screen still gets a full tune

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Tuning:
    """What ``tune_precisions`` measured: one report per precision tuned in full; where ``auto`` had a
    choice, the rows of the fp32 screen and the choice stored (``{"precision", "estimate_s"}``, the
    estimated model seconds of a ``REFERENCE_SHAPE`` image for each precision)."""

    reports: list[TuneReport]
    screen: list[Row] = dataclasses.field(default_factory=list)
    choice: dict[str, Any] | None = None
    others_share: float | None = None    # of the CPUs' time while measuring, by other processes (None: unknown)


def _base_options(options: EngineOptions | None) -> EngineOptions:
    base = options or EngineOptions()
    if any(f.name == "backend" for f in dataclasses.fields(EngineOptions)):
        base = dataclasses.replace(base, backend="torch")   # never what a previous tune chose
    return base


def tune_model(model: Model, options: EngineOptions | None = None, *, backend: str = "auto",
               quick: bool = False, runs: int | None = None, windows: tuple[int, ...] | None = None,
               save: bool = True) -> TuneReport:
    """Measure ``model`` with ``options``' device, precision and threads (its tile, batch, compile and
    backend are what is measured, so they are ignored) and store the winner in the cache.

    ``backend``: "auto" measures openvino too where it can run, "torch" only torch, "openvino"
    requires it (a UsageError where it cannot run). ``quick``: one timed run per probe, no compile
    probe. ``windows``: the window sides to try (default ``measure.WINDOWS_PX``)."""
    prober = Prober(model, _base_options(options), runs or (1 if quick else RUNS))
    notes: list[str] = []
    rows, per_window, setup = measure_windows(prober, candidate_windows(prober, windows))
    old, old_row = old_choices(prober, per_window, REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1], setup)
    rows += [old_row] if old_row is not None else []
    window, torch_estimate = pick_window(prober, per_window)
    batch_row, batch = measure_batch(prober, window, per_window[window], notes)
    rows += [batch_row] if batch_row is not None else []
    best_s = batch_row.seconds if batch == 2 else per_window[window]      # batch 2 only with its row
    compile_row = measured_compile = None
    if quick or prober.engine.device.type != "cpu":
        notes.append("compile: not measured (" + ("--quick" if quick else "CPU only") + ")")
    else:
        compile_row, measured_compile = measure_compile(prober, window, batch, best_s, notes)
    rows += [compile_row] if compile_row is not None else []
    torch_window = window
    table, table_setup = per_window, setup
    chosen_backend = None
    openvino_at_window = measure_backend(prober, window, backend, notes)
    if openvino_at_window is not None:
        # openvino faster at torch's window, or close behind: its own curve over every side (the one
        # at hand not measured again), since its cost grows differently with the window than torch's
        sides = [window]
        if openvino_curve_wanted(openvino_at_window[1], per_window[window]):
            sides = sorted(set(candidate_windows(prober, windows, cap_big=False)) | {window})
        ov_rows, ov_table, ov_setup = measure_windows(prober, sides, "openvino", {window: openvino_at_window})
        rows += ov_rows
        ov_window, ov_estimate = pick_window(prober, ov_table)
        chosen_backend = "openvino" if ov_estimate < torch_estimate else "torch"   # best plan against best plan
        if chosen_backend == "openvino":
            table, table_setup, window = ov_table, ov_setup, ov_window
    n_ref = reference_windows(prober.engine, window)
    result = {"window_px": window, "batch": batch if chosen_backend != "openvino" else 1,
              "s_per_mp": round(per_window[torch_window] / prober.core(torch_window) ** 2 * 1e6, 5),
              "seconds_per_window": round(table[window], 5), "compile": measured_compile,
              "backend": chosen_backend, "runs": prober.runs,
              "window_backend": chosen_backend or "torch",     # what the two tables below were measured with
              "window_seconds": {str(w): round(s, 5) for w, s in sorted(table.items())},
              "window_setup_s": {str(w): round(s, 3) for w, s in sorted(table_setup.items())}}
    _mark_chosen(rows, result)
    best_window_s = table[window] if chosen_backend == "openvino" else best_s
    reference = _reference(prober, old, per_window, n_ref * best_window_s)
    key = tuned.tuning_key(model.arch, model.hparams, precision_name(prober), prober.engine.device,
                           torch.get_num_threads())
    report = TuneReport(key, model.name or model.source or model.arch, rows, result, old, reference, notes)
    if save:
        tuned.store(key, result, label=report.label)
    return report


def tune_precisions(model: Model, options: EngineOptions | None = None, *, backend: str = "auto",
                    quick: bool = False, runs: int | None = None, windows: tuple[int, ...] | None = None,
                    save: bool = True) -> Tuning:
    """``tune_model`` at ``options``' precision; where that is ``auto`` and resolves to bf16 on the CPU,
    fp32 too (screened first, see the package docstring), and the faster of the two stored as what
    ``auto`` runs here."""
    with machine.watch_others() as others:
        tuning = _tune_precisions(model, options, backend=backend, quick=quick, runs=runs, windows=windows,
                                  save=save)
    tuning.others_share = others.share
    if others.busy:
        log.warning("other processes used %.0f%% of this machine's CPU time while tuning: the measurements (and "
                    "what was chosen from them) may mislead; run `upscale tune` again on an idle machine",
                    100 * others.share)
    return tuning


def _tune_precisions(model: Model, options: EngineOptions | None, *, backend: str, quick: bool, runs: int | None,
                     windows: tuple[int, ...] | None, save: bool) -> Tuning:
    options = options or EngineOptions()
    kwargs: dict[str, Any] = {"backend": backend, "quick": quick, "runs": runs, "windows": windows, "save": save}
    choosing = options.precision == tuned.AUTO
    if choosing:       # the rule's answer, not what an earlier tune made auto run: both are measured again
        rule = NAMES[resolve_precision(tuned.AUTO, resolve_device(options.device), model)]
        options = dataclasses.replace(options, precision=rule)
    first = tune_model(model, options, **kwargs)
    if not choosing or first.key["device"] != "cpu" or first.key["precision"] != "bf16":
        return Tuning([first])
    fp32 = dataclasses.replace(options, precision="fp32")
    estimates = {"bf16": first.reference["chosen_s"]}
    screen, estimates["fp32"] = _screen(Prober(model, _base_options(fp32), runs or (1 if quick else RUNS)),
                                        first.result["window_px"], backend)
    reports = [first]
    if estimates["fp32"] < estimates["bf16"] * (1 + PRECISION_SCREEN_MARGIN):
        reports.append(tune_model(model, fp32, **kwargs))
        estimates["fp32"] = reports[-1].reference["chosen_s"]
    faster = len(reports) > 1 and estimates["fp32"] < estimates["bf16"]    # fp32 only with a plan of its own
    choice = {"precision": "fp32" if faster else "bf16",
              "estimate_s": {k: round(v, 3) for k, v in estimates.items()}}
    if save:
        key = dict(first.key, precision=tuned.AUTO)
        tuned.store(key, choice, label=first.label)
    return Tuning(reports, screen, choice)


def _screen(prober: Prober, window_px: int, backend: str) -> tuple[list[Row], float]:
    """fp32 at bf16's chosen window, with torch and (where it can run) openvino: (rows, estimated
    seconds of a REFERENCE_SHAPE image at the faster of them)."""
    rows = []
    for name in ["torch"] + ([] if backend_unavailable(prober, backend) else ["openvino"]):
        seconds = prober.window(window_px, **({} if name == "torch" else {"backend": name}))[1]
        rows.append(Row(f"window {window_px} {name} fp32", seconds, seconds / prober.core(window_px) ** 2 * 1e6,
                        window_px=window_px, backend=name))
    return rows, reference_windows(prober.engine, window_px) * min(r.seconds for r in rows)


def _mark_chosen(rows: list[Row], result: dict[str, Any]) -> None:
    backend = result["backend"] or "torch"
    compiled = bool(result["compile"]) and result["compile"]["gain"] > 0
    for row in rows:
        row.chosen = (row.candidate.startswith("window") and row.window_px == result["window_px"]
                      and row.batch == (1 if backend == "openvino" else result["batch"])
                      and row.backend == backend and row.compiled == (compiled and backend == "torch"))


def _reference(prober: Prober, old: dict[str, Any], per_window: dict[int, float], chosen_s: float) -> dict[str, Any]:
    """Estimated seconds of a REFERENCE_SHAPE image (the model part): the choice vs the old constants."""
    old_window = old["window_px"]
    old_s = reference_windows(prober.engine, old_window) * per_window[old_window] if old_window in per_window else None
    ref = {"shape": list(REFERENCE_SHAPE), "chosen_s": round(chosen_s, 3),
           "old_s": None if old_s is None else round(old_s, 3)}
    if old_s:
        ref["saved_s"] = round(old_s - chosen_s, 3)
        ref["saved_pct"] = round(100 * (old_s - chosen_s) / old_s, 1)
    return ref
