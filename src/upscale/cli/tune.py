"""`upscale tune -m MODEL`: measure what runs a model fastest on this machine and cache it;
`upscale tune --show`: what the cache holds."""

from __future__ import annotations

from typing import Any

import click

from . import handle_errors, say
from .options import BACKENDS


def _windows(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sides = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers",
                                 param_hint="--windows") from None
    if not sides or min(sides) < 1:
        raise click.BadParameter(f"{value!r}: give one or more window sides >= 1", param_hint="--windows")
    return sides


@click.command("tune")
@click.option("-m", "--model", "model_name", default=None, metavar="NAME|PATH",
              help="Registry name or weights file to tune (default: the default x4 model).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="The precision to tune for (auto: as `upscale run` resolves it).")
@click.option("--threads", type=int, default=None, help="CPU threads to tune for (default: all cores).")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="auto", show_default=True,
              help="Backends to measure: auto = torch, and on the CPU openvino where it is installed and winograd "
                   "for RRDBNet, SRVGGNetCompact, SPAN and SRResNet in fp32; openvino or winograd = require that one.")
@click.option("--quick", is_flag=True, help="One timed run per probe and no torch.compile probe.")
@click.option("--windows", "windows", default=None, metavar="PX,PX,...",
              help="Window sides to try (default: 128,192,256,384,496,512; up to 384 for large networks).")
@click.option("--show", is_flag=True, help="Print what the tuning cache holds and stop.")
@click.option("--probe", is_flag=True,
              help="Measure the machine's probes again and stop: one 3x3 conv on torch and on winograd (what "
                   "--backend auto runs fp32 models not tuned here on) and, on CPUs with native bf16, in bf16 and "
                   "fp32 (what --precision auto runs them in).")
@handle_errors
def tune(model_name: str | None, device: str, precision: str, threads: int | None, backend: str, quick: bool,
         windows: str | None, show: bool, probe: bool) -> None:
    """Measure window size, batch, torch.compile, backend (and precision) for a model on this machine.

    The winner is kept in the tuning cache (<cache>/tune.json), keyed by the CPU model and flags,
    threads, torch/openvino versions, device, precision and network; `--tile auto`, `--compile auto`
    and `--backend auto` use it, and the built-in defaults where it has no entry.

    With --precision auto on a CPU with native bf16 (a model flagged bf16-safe), fp32 is measured too:
    screened at bf16's chosen window, tuned in full where it comes within 25% of bf16, and `--precision
    auto` then runs whichever was measured faster here (bf16 is not always: without AMX, OpenVINO's
    f32 can beat its bf16).

    Each probe is one warm-up and the best of 3 timed runs (--quick: 1) on a synthetic image. s/MP is
    seconds per megapixel of a large image: a window's seconds over its core (the window less the
    context it shares with its neighbours); for "whole", over the whole probe image. The window is
    chosen by the estimated time of a 1000x750 image. On CUDA only window and batch are measured.
    Tune on an idle machine: it warns when other processes used over 25% of the CPUs meanwhile.

    \b
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    if show:
        _show()
        return
    if probe:
        if device not in ("auto", "cpu") or precision != "auto":
            raise click.UsageError("--probe times this CPU (backends; bf16 and fp32): it takes no --device or "
                                   "--precision")
        _probe(threads)
        return
    from ..api import default_model_name, load_model
    from ..engine import EngineOptions
    from ..tune import tune_precisions

    sides = _windows(windows)
    options = EngineOptions(device=device, precision=precision, threads=threads)
    model = load_model(model_name or default_model_name(None))
    tuning = tune_precisions(model, options, backend=backend, quick=quick, windows=sides)
    _print_report(tuning.reports[0])
    for row in tuning.screen:       # measured between the two tunes
        click.echo(f"fp32 screen: {row.candidate:<30} {row.seconds:>9.4f} s {row.s_per_mp:>9.3f} s/MP")
    for report in tuning.reports[1:]:
        _print_report(report)
    if tuning.choice is not None:
        _print_choice(tuning)
    from .. import tuned

    say(f"saved in {tuned.cache_path()}")


def _print_choice(tuning: Any) -> None:
    """What ``--precision auto`` runs from now on, and why."""
    from ..tune import PRECISION_SCREEN_MARGIN

    choice, tuned_fully = tuning.choice, len(tuning.reports) > 1
    screened = f"screened only: over {PRECISION_SCREEN_MARGIN:.0%} slower than bf16"
    shape = tuning.reports[0].reference["shape"]
    estimates = ", ".join(f"{k} ~{v:.2f} s" for k, v in choice["estimate_s"].items())
    click.echo(f"precision auto: {choice['precision']} from now on ({shape[1]}x{shape[0]} image, model time: "
               f"{estimates}; fp32 {'tuned in full' if tuned_fully else screened})")


def _print_report(report: Any) -> None:
    from .. import tuned

    say(f"tuned {report.label}: {tuned.describe(report.key)}")
    click.echo(f"{'candidate':<30} {'seconds':>9} {'s/MP':>9}  chosen")
    for row in report.rows:
        click.echo(f"{row.candidate:<30} {row.seconds:>9.4f} {row.s_per_mp:>9.3f}  {'*' if row.chosen else ''}")
    res, old, ref = report.result, report.old, report.reference
    compiled = res["compile"]
    if compiled is None:
        compile_text = "not measured"
    else:
        compile_text = (f"{'on when the work repays it' if compiled['gain'] > 0 else 'off'} (measured gain "
                        f"{compiled['gain']:+.1%}, compile {compiled['compile_s']:.1f} s)")
        if res["backend"]:      # torch.compile applies to torch's windows (images auto plans on torch)
            compile_text += f" for torch's windows; {res['backend']} does not compile"
    click.echo(f"chosen: window {res['window_px']}, batch {res['batch']}, compile {compile_text}, "
               f"backend {res['backend'] or 'torch (no other measured)'}")
    if res.get("window_seconds"):
        click.echo("each image is planned from the measured sides (s per window): "
                   + ", ".join(f"{side} {sec:.3g}" for side, sec in res["window_seconds"].items()))
    click.echo(f"old defaults: window {old['window_px']}, batch 1, compile {'on' if old['compile'] else 'off'} "
               f"(assumed gain {old['compile_gain']:.0%}, ~{old['compile_s_estimate']:.0f} s), backend torch")
    h, w = ref["shape"]
    if ref.get("old_s") is not None:
        click.echo(f"{w}x{h} image, model time: ~{ref['chosen_s']:.2f} s tuned vs ~{ref['old_s']:.2f} s with the "
                   f"old defaults (saves {ref['saved_s']:.2f} s, {ref['saved_pct']:.0f}%)")
    for note in report.notes:
        click.echo(f"note: {note}")


def _probe(threads: int | None) -> None:
    import torch

    from ..backends.probe import probe_backends
    from ..device import cpu_native_bf16
    from ..engine import EngineOptions
    from ..engine.precision import probe_machine
    from ..errors import BackendError

    if threads is not None:
        torch.set_num_threads(EngineOptions(threads=threads).threads)     # checked as every run checks it
    threads = torch.get_num_threads()
    try:
        chosen, seconds, kept = probe_backends(threads)
    except BackendError as err:
        click.echo(f"backend probe: the winograd kernels are not available here ({err.message}); "
                   "--backend auto runs torch for models not tuned here")
    else:
        say(f"backend probe, {threads} threads: {_timed(seconds)}; --backend auto runs fp32 models not tuned "
            f"here on {chosen} ({_where(kept)})")
    if not cpu_native_bf16():
        click.echo("this CPU has no native bf16 (avx512_bf16 or AMX): --precision auto runs fp32, no precision "
                   "to probe")
        return
    chosen, seconds, kept = probe_machine(threads)
    say(f"precision probe, {threads} threads: {_timed(seconds)}; --precision auto "
        f"runs {chosen} for models not tuned here ({_where(kept)})")


def _timed(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in seconds.items())


def _where(kept: bool) -> str:
    from .. import tuned

    return f"saved in {tuned.cache_path()}" if kept else "not saved: the machine was busy; run it again when idle"


def _show() -> None:
    from .. import tuned

    entries = tuned.load_entries()
    if not entries:
        say(f"no tuning results in {tuned.cache_path()}")
        return
    for entry in entries:
        key, res = entry["key"], entry["result"]
        if key.get("precision") in (tuned.AUTO, tuned.TRAIN_AUTO):
            what = ("training step" if key["precision"] == tuned.TRAIN_AUTO else "one 3x3 conv"
                    if key.get("arch") == tuned.PROBE_ARCH else "est. 1000x750 model time")
            estimates = ", ".join(f"{k} ~{v:.3g} s" for k, v in res["estimate_s"].items())
            say(f"{tuned.describe(key)} [{entry.get('label', '')}]: runs {res['precision']} "
                f"({what}: {estimates}); {entry.get('when', '?')}{_stale(key)}")
            continue
        if key.get("arch") == tuned.BACKEND_PROBE_ARCH:
            say(f"backend probe fp32 {key.get('threads')} threads: runs {res['backend']} for models not tuned here "
                f"(one 3x3 conv: {_timed(res['estimate_s'])}); {entry.get('when', '?')}{_stale(key)}")
            continue
        compiled = res.get("compile")
        compile_text = "-" if compiled is None else f"{compiled['gain']:+.1%}/{compiled['compile_s']:.0f}s" + (
            " (torch's)" if res.get("backend") else "")
        say(f"{tuned.describe(key)} [{entry.get('label', '')}]: window {res['window_px']}, "
            f"batch {res['batch']}, compile {compile_text}, backend {res.get('backend') or '-'}; "
            f"{res['s_per_mp']:.3g} s/MP; {entry.get('when', '?')}{_stale(key)}")


def _stale(key: dict[str, Any]) -> str:
    """" (not this machine or these versions)" when an entry's machine part differs from here."""
    from .. import tuned

    here = tuned.tuning_key(key.get("arch", ""), key.get("hparams", ""), key.get("precision", ""), "cpu", 1)
    same = all(key.get(k) == here[k] for k in ("cpu", "cpu_flags", "torch", "openvino", "winograd"))
    return "" if same else " (not this machine or these versions: not used; tune again)"
