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

from .. import errors, machine
from ..device import NAMES, resolve_device, resolve_precision
from ..engine import EngineOptions
from ..model import Model
from .. import tuned
from ..tuned import preferred_backend  # noqa: F401  (re-exported: where callers looked for it)
from .measure import (ALTERNATIVES, REFERENCE_SHAPE, RUNS, Prober, Row, TuneReport, backend_unavailable,
                      candidate_windows, check_measurable, curve_wanted, measure_backends, measure_batch,
                      measure_compile, measure_windows, old_choices, pick_window, precision_name, reference_windows)

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
               save: bool = True, strict: bool = True) -> TuneReport:
    """Measure ``model`` with ``options``' device, precision and threads (its tile, batch, compile and
    backend are what is measured, so they are ignored) and store the winner in the cache.

    ``backend``: "auto" measures openvino and winograd too where they can run, "torch" only torch,
    "openvino" or "winograd" requires that one (a UsageError where it cannot run, said before anything
    is measured; with ``strict`` False a note instead: the bf16 pass of a precision choice, where
    winograd runs only in the fp32 pass). ``quick``: one timed run per probe, no compile probe.
    ``windows``: the window sides to try (default ``measure.WINDOWS_PX``)."""
    prober = Prober(model, _base_options(options), runs or (1 if quick else RUNS))
    check_measurable(prober, backend, strict)
    notes: list[str] = []
    rows, per_window, setup = measure_windows(prober, candidate_windows(prober, windows))
    old, old_row = old_choices(prober, per_window, REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1], setup)
    rows += [old_row] if old_row is not None else []
    window = pick_window(prober, per_window)[0]
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
    tables = {"torch": (per_window, setup)}     # every backend's curve: the engine plans each image over all
    chosen_backend = _other_backends(prober, torch_window, backend, windows, strict, notes, rows, tables)
    if chosen_backend in ALTERNATIVES:
        table, table_setup = tables[chosen_backend]
        window = pick_window(prober, table)[0]
    else:
        table, table_setup = per_window, setup
    n_ref = reference_windows(prober.engine, window)
    other = chosen_backend in ALTERNATIVES
    result = {"window_px": window, "batch": 1 if other else batch,
              "s_per_mp": round(per_window[torch_window] / prober.core(torch_window) ** 2 * 1e6, 5),
              "seconds_per_window": round(table[window], 5), "compile": measured_compile,
              "backend": chosen_backend, "runs": prober.runs,
              "window_backend": chosen_backend or "torch",     # what the two tables below were measured with
              **_curve(table, table_setup),
              "tables": {name: _curve(secs, first) for name, (secs, first) in tables.items()}}
    _mark_chosen(rows, result)
    best_window_s = table[window] if other else best_s
    reference = _reference(prober, old, per_window, n_ref * best_window_s)
    key = tuned.tuning_key(model.arch, model.hparams, precision_name(prober), prober.engine.device,
                           torch.get_num_threads())
    report = TuneReport(key, model.name or model.source or model.arch, rows, result, old, reference, notes)
    if save:
        tuned.store(key, result, label=report.label)
    return report


def _curve(seconds: dict[int, float], setup: dict[int, float]) -> dict[str, dict[str, float]]:
    """One backend's measured curve as the cache keeps it: seconds per window side and what each
    side's first call added."""
    return {"window_seconds": {str(w): round(s, 5) for w, s in sorted(seconds.items())},
            "window_setup_s": {str(w): round(s, 3) for w, s in sorted(setup.items())}}


def _other_backends(prober: Prober, torch_window: int, backend: str, windows: tuple[int, ...] | None, strict: bool,
                    notes: list[str], rows: list[Row], tables: dict[str, tuple[dict, dict]]) -> str | None:
    """Measure each other backend that can run here (``measure_backends``), adding its rows and its
    (seconds, setup) curve to ``tables`` (which holds torch's); returns the backend whose best plan
    for ``REFERENCE_SHAPE`` is cheapest ("torch" when none beats it), None when none was measured."""
    per_window = tables["torch"][0]
    chosen, best_estimate = None, pick_window(prober, per_window)[1]
    for name, at_window in measure_backends(prober, torch_window, backend, notes, strict).items():
        # faster at torch's window, or close behind: its own curve over every side (the one at hand not
        # measured again), since its cost grows differently with the window than torch's
        sides = [torch_window]
        if curve_wanted(at_window[1], per_window[torch_window]):
            sides = sorted(set(candidate_windows(prober, windows, cap_big=False)) | {torch_window})
        alt_rows, alt_table, alt_setup = measure_windows(prober, sides, name, {torch_window: at_window})
        rows += alt_rows
        tables[name] = (alt_table, alt_setup)
        chosen = chosen or "torch"                        # measured against something: no longer None
        estimate = pick_window(prober, alt_table)[1]
        if estimate < best_estimate:                      # best plan against best plan
            chosen, best_estimate = name, estimate
    return chosen


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
    # a backend that runs only in fp32 (winograd) is not required in the bf16 pass of a choice
    first = tune_model(model, options, **kwargs, strict=not (choosing and options.precision == "bf16"))
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
    """fp32 at bf16's chosen window, with torch and each other backend that can run: (rows, estimated
    seconds of a REFERENCE_SHAPE image at the fastest of them)."""
    rows = []
    for name in ["torch"] + [b for b in ALTERNATIVES if backend_unavailable(prober, backend, b) is None]:
        try:
            seconds = prober.window(window_px, **({} if name == "torch" else {"backend": name}))[1]
        except errors.BackendError as exc:     # e.g. no C compiler for winograd's kernels: not screened
            log.warning("%s", exc)
            continue
        rows.append(Row(f"window {window_px} {name} fp32", seconds, seconds / prober.core(window_px) ** 2 * 1e6,
                        window_px=window_px, backend=name))
    return rows, reference_windows(prober.engine, window_px) * min(r.seconds for r in rows)


def _mark_chosen(rows: list[Row], result: dict[str, Any]) -> None:
    backend = result["backend"] or "torch"
    compiled = bool(result["compile"]) and result["compile"]["gain"] > 0
    for row in rows:
        row.chosen = (row.candidate.startswith("window") and row.window_px == result["window_px"]
                      and row.batch == (1 if backend in ALTERNATIVES else result["batch"])
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
