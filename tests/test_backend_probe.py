"""The machine's backend probe: what ``--backend auto`` runs an fp32 model on when ``upscale tune``
measured nothing for it (one real convolution on torch and on the winograd kernels, kept in the
tuning cache), and where it does not apply."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from upscale import tuned
from upscale.api import load_model
from upscale.backends import choose_backend
from upscale.cli import cli
from upscale.engine import Engine, EngineOptions

THREADS = torch.get_num_threads


@pytest.fixture(autouse=True)
def cache_here(tmp_path, monkeypatch, private_cache):
    """A tuning cache of each test's own; the built kernels shared with the session (as a user's machine
    keeps them), so that no test pays the C build again."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (private_cache / "native").mkdir(exist_ok=True)
    (folder / "native").symlink_to(private_cache / "native")
    monkeypatch.setenv("UPSCALE_CACHE", str(folder))
    monkeypatch.setattr("upscale.machine.BUSY_SHARE", 1.0)     # a busy CI host must not keep the answer out
    monkeypatch.setattr("upscale.backends.probe._said", set())
    monkeypatch.setattr("upscale.backends.probe._answers", {})
    return folder / tuned.CACHE_NAME


def probe_entry(cache_file) -> dict:
    (entry,) = [e for e in json.loads(cache_file.read_text())["entries"]
                if e["key"]["arch"] == tuned.BACKEND_PROBE_ARCH]
    return entry


def set_probe_answer(cache_file, backend: str) -> None:
    data = json.loads(cache_file.read_text())
    for entry in data["entries"]:
        if entry["key"]["arch"] == tuned.BACKEND_PROBE_ARCH:
            entry["result"]["backend"] = backend
    cache_file.write_text(json.dumps(data))


def fp32_engine(path: str, **opts) -> Engine:
    return Engine(load_model(path), EngineOptions(device="cpu", precision="fp32", **opts))


def test_an_untuned_fp32_model_runs_on_the_backend_the_probe_measured_faster(tiny_x2_rrdb, tiny_x4, cache_here,
                                                                               monkeypatch, caplog):
    """Measured once (both backends timed, the faster kept under the probe's key), then read, not
    measured again, by every engine of any model winograd computes; said once at info level."""
    import upscale.backends.probe as probe

    caplog.set_level(logging.INFO, logger="upscale")
    engine = fp32_engine(tiny_x2_rrdb)
    entry = probe_entry(cache_here)
    seconds = entry["result"]["estimate_s"]
    assert entry["key"] == tuned.backend_probe_key(THREADS())
    assert set(seconds) == {"torch", "winograd"} and all(s > 0 for s in seconds.values())
    assert engine.backend == entry["result"]["backend"] == min(seconds, key=seconds.get)
    assert (engine.winograd is not None) == (engine.backend == "winograd")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto:")]
    assert len(said) == 1 and f"backend auto: {engine.backend} for models not tuned here" in said[0]

    calls = []
    monkeypatch.setattr(probe, "probe_seconds", lambda: calls.append(1) or {"torch": 1.0, "winograd": 2.0})
    assert fp32_engine(tiny_x4).backend == engine.backend      # this process's answer, not read again
    for answer in ("torch", "winograd", "torch"):
        probe._answers.clear()                                   # a new process, as far as the probe knows
        set_probe_answer(cache_here, answer)
        assert fp32_engine(tiny_x2_rrdb).backend == answer and fp32_engine(tiny_x4).backend == answer
    assert calls == []
    # read from the cache (a later process), the choice is said at debug level only: no news on every run
    probe._answers.clear()
    monkeypatch.setattr(probe, "_said", set())
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="upscale")
    fp32_engine(tiny_x4)
    said = [r for r in caplog.records if r.getMessage().startswith("backend auto:")]
    assert [r.levelno for r in said] == [logging.DEBUG]
    shown = CliRunner().invoke(cli, ["tune", "--show"]).output
    assert f"backend probe fp32 {THREADS()} threads: runs torch for models not tuned here (one 3x3 conv:" in shown


def test_the_probe_does_not_apply_where_the_model_was_tuned_or_winograd_cannot_run_it(
        tiny_x2_rrdb, weights_file, cache_here):
    model = load_model(tiny_x2_rrdb)
    # bf16, and a network winograd does not compute: torch, and the machine is not probed
    assert choose_backend("auto", model, "cpu", "bf16", THREADS()) == "torch"
    srcnn = load_model(str(weights_file("tiny", {"num_in_ch": 3, "num_out_ch": 3, "scale": 2}, 1)))
    assert choose_backend("auto", srcnn, "cpu", "fp32", THREADS()) == "torch"
    assert choose_backend("auto", model, "cuda", "fp32", THREADS()) == "torch"
    assert not cache_here.exists()
    # the probe says winograd; a tune of this model that measured only torch (backend null) overrides it
    assert choose_backend("auto", model, "cpu", "fp32", THREADS()) in ("torch", "winograd")
    set_probe_answer(cache_here, "winograd")
    assert choose_backend("auto", model, "cpu", "fp32", THREADS()) == "winograd"
    key = tuned.tuning_key(model.arch, model.hparams, "fp32", "cpu", THREADS())
    tuned.store(key, {"window_px": 128, "s_per_mp": 1.0, "batch": 1, "compile": None, "backend": None}, label="t")
    assert choose_backend("auto", model, "cpu", "fp32", THREADS()) == "torch"
    assert choose_backend("winograd", model, "cpu", "fp32", THREADS()) == "winograd"     # explicit stays


@pytest.mark.parametrize("result", [{"backend": "openvino", "estimate_s": {"torch": 1.0, "winograd": 2.0}},
                                    {"backend": "torch", "estimate_s": {"torch": 1.0, "cuda": 2.0}},
                                    {"backend": "torch", "estimate_s": {"torch": -1.0}},
                                    {"precision": "fp32", "estimate_s": {"fp32": 1.0}}])
def test_a_malformed_probe_entry_makes_the_file_corrupt_and_is_measured_again(tiny_x2_rrdb, cache_here, result,
                                                                              caplog):
    with pytest.raises(ValueError):
        tuned.store(tuned.backend_probe_key(THREADS()), result, label="bad")
    cache_here.write_text(json.dumps({"format": 1, "entries": [
        {"key": tuned.backend_probe_key(THREADS()), "label": "bad", "when": "", "result": result}]}))
    caplog.set_level(logging.WARNING, logger="upscale")
    engine = fp32_engine(tiny_x2_rrdb)
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert engine.backend == probe_entry(cache_here)["result"]["backend"]       # measured, the file replaced


def test_tune_probe_measures_both_probes_again(cache_here, monkeypatch):
    import upscale.backends.probe as probe

    calls = []
    real = probe.probe_seconds
    monkeypatch.setattr(probe, "probe_seconds", lambda: calls.append(1) or real())
    out = CliRunner().invoke(cli, ["tune", "--probe"], catch_exceptions=False).output
    entry = probe_entry(cache_here)
    assert (f"backend probe, {THREADS()} threads: torch " in out
            and f"--backend auto runs fp32 models not tuned here on {entry['result']['backend']}" in out)
    CliRunner().invoke(cli, ["tune", "--probe"], catch_exceptions=False)
    assert calls == [1, 1]                                           # measured again, not read
    assert len([e for e in json.loads(cache_here.read_text())["entries"]
                if e["key"]["arch"] == tuned.BACKEND_PROBE_ARCH]) == 1
    # the entry is a valid plan too, so that versions before the probe do not read the file as corrupt
    as_plan = {**entry, "key": {**entry["key"], "arch": "compact"}}
    assert tuned._valid_entry(as_plan)


def test_a_busy_machine_keeps_the_probe_out_of_the_cache(tiny_x2_rrdb, cache_here, busy_cpus, monkeypatch, caplog):
    from upscale import machine

    if machine.cpu_clock() is None:
        pytest.skip("no /proc/stat here")
    monkeypatch.setattr("upscale.machine.BUSY_SHARE", 0.25)
    caplog.set_level(logging.DEBUG, logger="upscale")
    busy_cpus()
    assert fp32_engine(tiny_x2_rrdb).backend in ("torch", "winograd")
    assert any("backend probe: other processes used" in r.getMessage() for r in caplog.records)
    assert not cache_here.exists() or tuned.BACKEND_PROBE_ARCH not in cache_here.read_text()


def run_without_compiler(model: str, tmp_path, cache) -> subprocess.CompletedProcess:
    """`upscale in.png -m model --precision fp32 -v` in a fresh process with CC=false and ``cache``: it
    must succeed; its stderr is checked by the caller."""
    from PIL import Image

    Image.new("RGB", (24, 20), (90, 140, 30)).save(tmp_path / "in.png")
    env = {**os.environ, "UPSCALE_CACHE": str(cache), "CC": "false"}
    done = subprocess.run([sys.executable, "-m", "upscale", str(tmp_path / "in.png"), "-m", model,
                           "--precision", "fp32", "-o", str(tmp_path / "out.png"), "-v"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_without_a_c_compiler_an_untuned_model_runs_on_torch_and_nothing_is_kept(tiny_x2_rrdb, tmp_path):
    """A fresh process, cache and no compiler (CC=false): the run succeeds on torch, says why at
    info level, and stores no answer (a compiler installed later is found by the next run)."""
    from PIL import Image

    cache = tmp_path / "fresh"
    done = run_without_compiler(tiny_x2_rrdb, tmp_path, cache)
    assert Image.open(tmp_path / "out.png").size == (48, 40)
    assert "backend auto: torch for models not tuned here (the winograd kernels are not available here" in done.stderr
    cache_file = cache / tuned.CACHE_NAME
    assert not cache_file.exists() or tuned.BACKEND_PROBE_ARCH not in cache_file.read_text()


def test_winograd_with_nothing_measured_runs_the_fewest_pixels_that_fit(tiny_x2_rrdb, cache_here, monkeypatch):
    """No curve for winograd: one window of the whole image where it fits in memory (its cost per
    computed pixel does not grow with the window), else the largest square window that fits; the
    output equals the torch path's, tiled or not."""
    import numpy as np

    from upscale.engine.cost import activation_bytes
    from upscale.engine.options import MEMORY_FRACTION

    engine = fp32_engine(tiny_x2_rrdb, backend="winograd")
    assert engine.tile_px_for(700, 1000) == 0 and engine.plan_for(700, 1000).num_tiles == 1
    torch_engine = fp32_engine(tiny_x2_rrdb, backend="torch")
    assert torch_engine.tile_px_for(700, 1000) > 0                  # torch keeps its window constants

    def need(side: int) -> int:
        return (activation_bytes(engine.cost, engine.dtype, side * side, live=2)
                + engine.runners.extra_bytes("winograd", 1, side, side))

    free = int(need(200) / MEMORY_FRACTION) + 1                     # room for a 200 px window, not 208
    monkeypatch.setattr("upscale.engine.cost.available_memory_bytes", lambda device: free)
    plan = engine.plan_for(700, 1000)
    assert max(plan.tile_h, plan.tile_w) == 200 and plan.num_tiles > 1
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    assert engine.plan_for(300, 420).num_tiles > 1
    tiled = engine.upscale(pixels)
    whole = fp32_engine(tiny_x2_rrdb, backend="torch", tile_px=0).upscale(pixels)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_the_kernels_are_built_before_the_probe_watches_the_machine(tmp_path, monkeypatch):
    """Building the kernels runs the C compiler, whose processes would count as others' load and keep
    the first answer on every machine out of the cache: the build comes before the watched probe."""
    import contextlib

    from upscale import machine
    from upscale.backends import probe, winograd_native

    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setattr(winograd_native, "_LOADED", None)
    real = machine.watch_others
    seen = []

    @contextlib.contextmanager
    def watched():
        seen.append(winograd_native._LOADED is not None and winograd_native.library_path().is_file())
        with real() as others:
            yield others

    monkeypatch.setattr(machine, "watch_others", watched)
    chosen, seconds, kept = probe.probe_backends(THREADS())
    assert seen == [True] and kept and chosen in seconds


def test_edge_cases_of_the_winograd_plan(tiny_x2_rrdb, cache_here, monkeypatch):
    """Review findings: an image narrower than the network's unshuffle factor (RRDBNet x2 unshuffles by
    2) is sized as it runs, padded; a whole image that fits is one window whatever the batch; sizing a
    plan does not count winograd's runner as set up."""
    import numpy as np

    from upscale.engine.cost import activation_bytes
    from upscale.engine.options import MEMORY_FRACTION

    engine = fp32_engine(tiny_x2_rrdb, backend="winograd")
    for shape in ((1, 7, 3), (7, 1, 3), (1, 1, 3)):
        pixels = np.full(shape, 120, np.uint8)
        assert engine.upscale(pixels).shape == (2 * shape[0], 2 * shape[1], 3)
    untouched = fp32_engine(tiny_x2_rrdb, backend="torch")
    untouched.runners.extra_bytes("winograd", 1, 64, 64)
    assert untouched.winograd is None and not untouched.runners.is_warm("winograd", (1, 64, 64, 3))
    batched = fp32_engine(tiny_x2_rrdb, backend="winograd", batch=4)
    one = (activation_bytes(batched.cost, batched.dtype, 700 * 1000, live=2)
           + batched.runners.extra_bytes("winograd", 1, 700, 1000))
    monkeypatch.setattr("upscale.engine.cost.available_memory_bytes", lambda device: int(1.5 * one / MEMORY_FRACTION))
    assert batched.plan_for(700, 1000).num_tiles == 1


def test_a_cached_winograd_answer_without_kernels_runs_torch(tiny_x2_rrdb, tmp_path):
    """The probe said winograd earlier, but the kernels are not on disk and cannot be built now (no
    compiler): the run goes on, on torch, and says why."""
    cache = tmp_path / "copy"
    cache.mkdir()
    (cache / tuned.CACHE_NAME).write_text(json.dumps({"format": 1, "entries": [
        {"key": tuned.backend_probe_key(THREADS()), "label": "backend probe", "when": "", "result": {
            "backend": "winograd", "estimate_s": {"torch": 2.0, "winograd": 1.0}}}]}))
    done = run_without_compiler(tiny_x2_rrdb, tmp_path, cache)
    assert "backend auto: torch for models not tuned here (the winograd kernels are not available here" in done.stderr


def test_a_new_window_size_frees_the_workspaces_of_other_sizes():
    """Whole-image windows make every image size a new shape: the previous image's workspace (GBs for
    x4plus) is freed when the next size comes, while the batch sizes of one window shape (full batches
    and a smaller last one) stay kept together."""
    from upscale.backends.winograd import Workspaces

    kept = Workspaces(2)
    first = kept.get(2, 64, 64)
    assert kept.get(1, 64, 64) is not first and kept.get(2, 64, 64) is first
    assert sorted(ws.n for ws in kept.values()) == [1, 2]
    kept.get(1, 80, 96)
    assert [(ws.n, ws.height, ws.width) for ws in kept.values()] == [(1, 80, 96)]
