"""The tuner: `upscale tune` measures real short probes on tiny networks and caches the winner; the
cache round-trip, key invalidation, a corrupt cache file, and the fallback when nothing was measured."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from click.testing import CliRunner

from upscale.api import load_model
from upscale.backends import choose_backend
from upscale.cli import cli
from upscale.engine import Engine, EngineOptions, Workload
from upscale.engine.compiling import want_compile
from upscale.engine.precision import resolve_dtype
from upscale.engine.cost import default_window_px, fitting_window_px, memory_window_px
from upscale.tune import preferred_backend
from upscale.tune.measure import Prober, candidate_windows, measure_batch
from upscale.tuned import CACHE_NAME, tuning_key

# one compact net only the fallback test uses, so no other test has said its "no tuning" line already
COMPACT_FALLBACK = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 1, "scale": 2, "act_type": "prelu"}
QUICK = ["--quick", "--windows", "96,128", "--backend", "torch", "--precision", "fp32", "--device", "cpu"]


@pytest.fixture(autouse=True)
def cache_here(tmp_path, monkeypatch, private_cache):
    """Each test gets its own cache folder (the built winograd kernels shared with the session, as a
    user's machine keeps them); torch's thread count is put back afterwards."""
    (tmp_path / "cache").mkdir()
    (private_cache / "native").mkdir(exist_ok=True)
    (tmp_path / "cache" / "native").symlink_to(private_cache / "native")
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield tmp_path / "cache" / CACHE_NAME
    torch.set_num_threads(threads)


def tune(*args: str) -> str:
    result = CliRunner().invoke(cli, ["tune", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def engine_window(path: str, **opts) -> int:
    engine = Engine(load_model(path), EngineOptions(device="cpu", precision="fp32", **opts))
    return fitting_window_px(engine.cost, engine.model.arch, engine.dtype, engine.device, engine.options.batch)


def default_window(path: str) -> int:
    engine = Engine(load_model(path), EngineOptions(device="cpu", precision="fp32"))
    return min(default_window_px("compact"), memory_window_px(engine.cost, engine.dtype, engine.device, 1))


def edit_entry(cache_file, **changes) -> None:
    """Change the (one) real entry's key parts (``key_*``) or result fields in place."""
    data = json.loads(cache_file.read_text())
    entry = data["entries"][0]
    for name, value in changes.items():
        if name.startswith("key_"):
            entry["key"][name[4:]] = value
        else:
            entry["result"][name] = value
    cache_file.write_text(json.dumps(data))


def test_tune_writes_show_reads_and_auto_uses_the_window(tiny_x4, cache_here):
    out = tune("-m", tiny_x4, *QUICK)
    assert "candidate" in out and "s/MP" in out and "chosen" in out and "old defaults: window" in out
    assert sum(line.rstrip().endswith("*") for line in out.splitlines()) == 1      # one row chosen
    data = json.loads(cache_here.read_text())
    (entry,) = data["entries"]
    result = entry["result"]
    assert result["window_px"] in (96, 128, default_window(tiny_x4)) and result["batch"] in (1, 2)
    assert result["compile"] is None and result["s_per_mp"] > 0                    # --quick: no compile probe
    assert entry["key"] == tuning_key("compact", load_model(tiny_x4).hparams, "fp32", "cpu", torch.get_num_threads())

    shown = tune("--show")
    assert "compact 8x2 x4 fp32" in shown and f"window {result['window_px']}" in shown and "s/MP" in shown

    assert engine_window(tiny_x4) == result["window_px"]
    assert set(result["window_seconds"]) == set(result["window_setup_s"]) >= {"96", "128"}   # + the old default
    # the real entry, another window and no per-side table (an entry from before the table): auto follows it
    edit_entry(cache_here, window_px=200, window_seconds=None, window_setup_s=None, tables=None)
    engine = Engine(load_model(tiny_x4), EngineOptions(device="cpu", precision="fp32"))
    assert engine_window(tiny_x4) == 200
    assert engine.tile_px_for(1000, 1000) == 200 - 2 * engine.overlap_px


@pytest.mark.parametrize("part, value", [("threads", None), ("cpu_flags", "0" * 16), ("precision", "bf16"),
                                         ("torch", "0.0.0"), ("openvino", "1999.0"), ("winograd", 2)])
def test_an_entry_with_another_key_is_not_used(tiny_x4, cache_here, part, value, caplog):
    tune("-m", tiny_x4, *QUICK)
    if part == "threads":
        value = torch.get_num_threads() + 1
    edit_entry(cache_here, window_px=200, **{f"key_{part}": value})
    caplog.set_level(logging.INFO, logger="upscale")
    assert engine_window(tiny_x4) == default_window(tiny_x4) != 200
    assert "(not this machine" in tune("--show") or part in ("threads", "precision")


def test_threads_are_part_of_the_key(tiny_x4, cache_here):
    tune("-m", tiny_x4, *QUICK, "--threads", "1")
    edit_entry(cache_here, window_px=200)
    assert engine_window(tiny_x4, threads=1) == 200
    if torch.get_num_threads() != 2:
        torch.set_num_threads(2)
    assert engine_window(tiny_x4, threads=2) == default_window(tiny_x4)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": 1, "entries": [{"key": {}, "result":
                                                                                     {"window_px": "big"}}]}),
                                  json.dumps([1, 2, 3])])
def test_a_corrupt_cache_warns_once_uses_defaults_and_tune_rewrites_it(tiny_x4, cache_here, caplog, text):
    cache_here.parent.mkdir(parents=True, exist_ok=True)
    cache_here.write_text(text)
    caplog.set_level(logging.INFO, logger="upscale")
    for _ in range(2):
        assert engine_window(tiny_x4) == default_window(tiny_x4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "tuning cache" in r.getMessage()]
    assert len(warnings) == 1 and "corrupt" in warnings[0].getMessage()
    shown = tune("--show")      # nothing, or only the machine's backend probe, which replaced the file
    assert "no tuning results" in shown or all(line.startswith("backend probe") for line in shown.splitlines())
    tune("-m", tiny_x4, *QUICK)
    assert [e["key"]["arch"] for e in json.loads(cache_here.read_text())["entries"]
            if e["key"]["arch"] != "conv3x3-backend-probe"] == ["compact"]


_STORE = ("import sys, time; from pathlib import Path; from upscale import tuned\n"
          "while not Path(sys.argv[3]).exists(): time.sleep(0.01)   # start together\n"
          "for i in range(int(sys.argv[2])):\n"
          "    key = tuned.tuning_key('compact', {'writer': sys.argv[1], 'i': i}, 'fp32', 'cpu', 1)\n"
          "    tuned.store(key, {'window_px': 96 + i, 's_per_mp': 1.0, 'batch': 1}, label=sys.argv[1])\n")


def test_processes_storing_at_once_keep_every_entry(cache_here, tmp_path):
    # three `upscale tune`s finishing together: each one's entries survive the others' writes
    import os
    import subprocess
    import sys
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _STORE, f"w{n}", "60", str(go)], env=dict(os.environ))
             for n in range(3)]
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    entries = json.loads(cache_here.read_text())["entries"]
    assert sorted((e["label"], e["result"]["window_px"]) for e in entries) == sorted(
        (f"w{n}", 96 + i) for n in range(3) for i in range(60))


def test_storing_an_invalid_result_is_refused_and_the_file_kept(tiny_x4, cache_here):
    from upscale import tuned
    tune("-m", tiny_x4, *QUICK)
    before = cache_here.read_text()
    key = tuned.tuning_key("compact", {"num_feat": 4}, "fp32", "cpu", 1)
    with pytest.raises(ValueError, match="not a valid tuning result"):
        tuned.store(key, {"window_px": 96}, label="no s_per_mp, no batch")
    assert cache_here.read_text() == before


def test_nothing_measured_uses_the_constants_and_says_so_once(weights_file, cache_here, caplog):
    path = str(weights_file("compact", COMPACT_FALLBACK, 3, "fallback_net"))
    caplog.set_level(logging.INFO, logger="upscale")
    model = load_model(path)
    for _ in range(2):
        engine = Engine(model, EngineOptions(device="cpu", precision="fp32", compile="auto", backend="torch"),
                        work=Workload(pixels=10**6))
        assert engine.tile_px_for(4000, 4000) == default_window(path) - 2 * engine.overlap_px
    assert preferred_backend(model, "fp32", None) is None
    notes = [r.getMessage() for r in caplog.records if "no tuning for" in r.getMessage()]
    assert len(notes) == 1
    assert "compact 8x1 x2 fp32" in notes[0] and f"upscale tune -m {path}" in notes[0]
    # nothing stored but the machine's backend probe (tests/test_backend_probe.py)
    assert not cache_here.exists() or {e["key"]["arch"] for e in json.loads(cache_here.read_text())["entries"]} == {
        "conv3x3-backend-probe"}


def test_auto_plans_each_image_from_the_measured_table(tiny_x4, cache_here):
    """With a table of seconds per window side, each image gets the plan of the fewest estimated
    seconds: a small image one window when the big side costs no more per pixel, a large image the
    side whose windows cost least in all; a side whose first call compiles counts that only where the
    shape is new (torch: never)."""
    tune("-m", tiny_x4, *QUICK)
    engine = Engine(load_model(tiny_x4), EngineOptions(device="cpu", precision="fp32"))
    context = engine.overlap_px
    # 512 costs the same per pixel as 128: one pass over a 500x400 image beats overlapping windows
    edit_entry(cache_here, window_seconds={"128": 128**2 * 1e-6, "512": 512**2 * 1e-6},
               window_setup_s={"128": 0.0, "512": 5.0})
    assert engine.tile_px_for(500, 400) == 0
    assert engine.tile_px_for(2000, 2000) == 512 - 2 * context
    est = engine.estimate_s(500, 400, {128: (0.0164, 0.0), 512: (0.262, 5.0)})
    assert est[512] == pytest.approx(500 * 400 * 0.262 / 512**2, rel=0.02)   # torch: no compile counted
    # 512 costs 4x as much per pixel: windows of 128 win even though they overlap
    edit_entry(cache_here, window_seconds={"128": 128**2 * 1e-6, "512": 4 * 512**2 * 1e-6})
    assert engine.tile_px_for(500, 400) == 128 - 2 * context
    # an entry whose table holds a side too large for the memory available ignores that side
    edit_entry(cache_here, window_seconds={"128": 1.0, "100000": 1e-9})
    assert engine.tile_px_for(500, 400) == 128 - 2 * context
    # a table measured with another backend than the engine's is not used: the entry's one window is
    edit_entry(cache_here, window_backend="openvino", window_px=200, tables=None)
    torch_only = Engine(load_model(tiny_x4), EngineOptions(device="cpu", precision="fp32", backend="torch"))
    assert torch_only.tile_px_for(500, 400) == 200 - 2 * context


def test_auto_runs_each_image_on_the_backend_whose_measured_plan_is_cheapest(tiny_x2_rrdb, cache_here):
    """Under backend auto every backend's curve kept by the tuner is planned: winograd (cheap per
    pixel, small windows only) wins a small image, torch (one 512 window, dearer per pixel but no
    overlap) a large one; an explicit backend plans on its own curve only."""
    import numpy as np

    from upscale.engine import RunStats

    tune("-m", tiny_x2_rrdb, *QUICK)
    edit_entry(cache_here, window_seconds={"512": 512**2 * 1e-5}, window_setup_s={"512": 0.0},   # torch's (chosen)
               tables={"winograd": {"window_seconds": {"128": 128**2 * 6e-6}, "window_setup_s": {"128": 0.0}}})
    model = load_model(tiny_x2_rrdb)
    engine = Engine(model, EngineOptions(device="cpu", precision="fp32"))
    assert engine.backend_for(100, 100) == "winograd" and engine.tile_px_for(100, 100) == 0
    assert engine.expected_s(100, 100) == pytest.approx(100 * 100 * 6e-6)
    assert engine.backend_for(2000, 2000) == "torch" and engine.tile_px_for(2000, 2000) == 512 - 2 * 32
    explicit = Engine(model, EngineOptions(device="cpu", precision="fp32", backend="torch"))
    assert explicit.backend_for(100, 100) == "torch"
    pixels = np.random.default_rng(0).integers(0, 256, (30, 22, 3), dtype=np.uint8)
    stats = RunStats()
    out = engine.upscale(pixels, stats=stats)
    assert stats.backend == "winograd" and engine.winograd is not None
    expected = Engine(model, EngineOptions(device="cpu", precision="fp32", backend="torch", tile_px=0)).upscale(pixels)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_a_winograd_curve_reaches_any_image_that_fits_in_memory_as_one_window(tiny_x2_rrdb, cache_here,
                                                                               monkeypatch):
    """Winograd's cost per computed pixel does not grow with the window: where its measured curve held
    steady, an image far beyond 1.5x the largest measured side runs as one window when it fits in
    memory; torch's curve keeps the 1.5x limit; a winograd curve that climbed is extrapolated with its
    climb (windows win), and an image that does not fit in memory is never one window."""
    tune("-m", tiny_x2_rrdb, *QUICK)

    def curve(per_px_256: float) -> dict:
        return {"window_seconds": {"128": 128**2 * 6e-6, "256": 256**2 * per_px_256},
                "window_setup_s": {"128": 0.0, "256": 0.0}}

    flat = curve(6e-6)
    edit_entry(cache_here, window_backend="torch", tables={"winograd": flat}, **flat)
    model = load_model(tiny_x2_rrdb)
    engine = Engine(model, EngineOptions(device="cpu", precision="fp32"))
    context = engine.overlap_px
    assert engine.backend_for(700, 1000) == "winograd" and engine.tile_px_for(700, 1000) == 0
    assert engine.expected_s(700, 1000) == pytest.approx(700 * 1000 * 6e-6)
    torch_only = Engine(model, EngineOptions(device="cpu", precision="fp32", backend="torch"))
    assert torch_only.tile_px_for(700, 1000) == 256 - 2 * context
    edit_entry(cache_here, tables={"winograd": curve(12e-6)})
    assert engine.backend_for(700, 1000) == "torch" and engine.tile_px_for(700, 1000) == 256 - 2 * context
    edit_entry(cache_here, tables={"winograd": flat})
    monkeypatch.setattr("upscale.engine.cost.available_memory_bytes", lambda device: 2**26)    # 64 MiB
    assert engine.tile_px_for(700, 1000) > 0


def test_an_image_a_little_larger_than_every_measured_window_may_run_as_one(tiny_x4, cache_here):
    """Sides measured up to 384: a 500x400 image (within 1.5x of 384) is one window when the cost per
    pixel held steady from 256 to 384 (estimated, not measured: its overlapping windows would compute
    ~1.5x the pixels); where that cost climbed steeply, the climb is extrapolated and windows win; an
    image beyond 1.5x is never one window."""
    from upscale.engine.cost import whole_window

    tune("-m", tiny_x4, *QUICK)
    engine = Engine(load_model(tiny_x4), EngineOptions(device="cpu", precision="fp32"))
    context = engine.overlap_px
    edit_entry(cache_here, window_seconds={"256": 256**2 * 1e-6, "384": 384**2 * 1e-6})
    assert engine.tile_px_for(500, 400) == 0
    assert engine.tile_px_for(600, 400) == 384 - 2 * context               # 600 > 1.5 x 384
    edit_entry(cache_here, window_seconds={"256": 256**2 * 1e-6, "384": 384**2 * 3e-6})
    assert engine.tile_px_for(500, 400) == 256 - 2 * context

    table = {256: (256**2 * 1e-6, 0.5), 384: (384**2 * 2e-6, 1.0)}       # cost per pixel doubled over 128 px
    seconds, setup = whole_window(table, 512)
    assert seconds == pytest.approx(512**2 * 4e-6) and setup == pytest.approx(1.0 * (512 / 384) ** 2)
    falling = {256: (256**2 * 2e-6, 0.0), 384: (384**2 * 1e-6, 0.0)}      # cheaper per pixel: held, not lowered
    assert whole_window(falling, 500)[0] == pytest.approx(500**2 * 1e-6)
    assert whole_window(table, 384) is None and whole_window(table, 577) is None and whole_window(table, 300) is None
    assert whole_window({384: (1.0, 0.0)}, 400) is None
    # without a reach limit (winograd), a steep climb far out is no plan, not an overflow
    assert whole_window({128: (128**2 * 1e-6, 0.0), 256: (256**2 * 1.3e-6, 0.0)}, 400_000, float("inf")) is None


def test_run_says_a_long_estimate_before_it_starts(tiny_x4, cache_here, tmp_path):
    """`upscale IMG` with a tuned model whose plan is estimated at 10 s or more says so first (one
    window shows no progress until it is done); not with -q, a given --tile, or a short estimate."""
    import numpy as np
    from PIL import Image as PILImage

    tune("-m", tiny_x4, *QUICK)
    src = tmp_path / "wide.png"
    PILImage.fromarray(np.zeros((100, 120, 3), np.uint8)).save(src)
    args = [str(src), "-m", tiny_x4, "--precision", "fp32", "--device", "cpu", "--force"]
    edit_entry(cache_here, window_seconds={"96": 20.0, "128": 25.0})        # one 128 window: 120x100 of 128^2
    out = CliRunner().invoke(cli, args, catch_exceptions=False).output
    assert f"{src}: about {25.0 * 120 * 100 / 128**2:.0f} s of model time (as `upscale tune` measured here)" in out
    assert "model time" not in CliRunner().invoke(cli, [*args, "-q"], catch_exceptions=False).output
    assert "model time" not in CliRunner().invoke(cli, [*args, "--tile", "64"], catch_exceptions=False).output
    edit_entry(cache_here, window_seconds={"96": 2.0, "128": 2.5})
    assert "model time" not in CliRunner().invoke(cli, args, catch_exceptions=False).output


@pytest.mark.parametrize("table", [{"96": "fast"}, {"big": 1.0}, {"96": -1.0}, [1, 2]])
def test_a_malformed_table_makes_the_file_corrupt(tiny_x4, cache_here, table, caplog):
    tune("-m", tiny_x4, *QUICK)
    edit_entry(cache_here, window_seconds=table)
    caplog.set_level(logging.WARNING, logger="upscale")
    assert engine_window(tiny_x4) == default_window(tiny_x4)
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_compile_and_backend_auto_read_the_cache(tiny_x4, cache_here):
    tune("-m", tiny_x4, *QUICK)
    model = load_model(tiny_x4)
    cost = Engine(model, EngineOptions(device="cpu", precision="fp32")).cost
    cpu = torch.device("cpu")
    assert not want_compile("auto", cpu, cost, torch.float32, 10**5)            # defaults: not repaid
    edit_entry(cache_here, compile={"gain": 0.5, "compile_s": 0.01}, s_per_mp=1.0, backend="openvino")
    assert want_compile("auto", cpu, cost, torch.float32, 10**5)                # measured: 0.05 s saved > 0.01 s
    assert preferred_backend(model, "fp32", None) == "openvino"
    assert preferred_backend(model, "bf16", None) is None                        # another key


def test_tune_measures_openvino_where_it_runs(tiny_x4, cache_here):
    pytest.importorskip("openvino")
    out = tune("-m", tiny_x4, "--quick", "--windows", "96", "--backend", "openvino", "--precision", "fp32",
               "--device", "cpu")
    assert "openvino" in out
    assert json.loads(cache_here.read_text())["entries"][0]["result"]["backend"] in ("torch", "openvino")


def test_tune_measures_winograd_for_rrdbnet_and_auto_follows_it(tiny_x2_rrdb, weights_file, cache_here):
    out = tune("-m", tiny_x2_rrdb, "--quick", "--windows", "128", "--backend", "winograd", "--precision", "fp32",
               "--device", "cpu")
    assert "winograd" in out
    result = json.loads(cache_here.read_text())["entries"][0]["result"]
    assert result["backend"] in ("torch", "winograd")
    rrdb = load_model(tiny_x2_rrdb)
    edit_entry(cache_here, backend="winograd", window_backend="winograd", compile={"gain": 0.1, "compile_s": 12.0})
    assert preferred_backend(rrdb, "fp32", None) == "winograd"
    assert "compile +10.0%/12s (torch's), backend winograd" in tune("--show")    # winograd never compiles
    assert choose_backend("auto", rrdb, "cpu", "fp32", torch.get_num_threads()) == "winograd"
    assert choose_backend("auto", rrdb, "cpu", "fp32", torch.get_num_threads(), "on") == "torch"
    other = str(weights_file("tiny", {"num_in_ch": 3, "num_out_ch": 3, "scale": 2}, 1))    # not one winograd computes
    refused = CliRunner().invoke(cli, ["tune", "-m", other, "--quick", "--windows", "96", "--backend", "winograd",
                                       "--precision", "fp32", "--device", "cpu"])     # required, where it cannot run
    assert refused.exit_code == 2 and "backend winograd cannot be measured" in refused.output


def test_bad_windows_are_a_usage_error(tiny_x4):
    result = CliRunner().invoke(cli, ["tune", "-m", tiny_x4, "--windows", "8,16", "--device", "cpu"])
    assert result.exit_code == 2 and "no window to measure" in result.output


def test_windows_that_fit_one_at_a_time_are_measured_and_batch_2_is_skipped_where_two_do_not(tiny_x4):
    """The window probes run one window at a time, so a side that fits in memory alone is a
    candidate even where two of it would not (an fp32 x4plus at 512 px on a 24 GB machine was left
    out by a two-window limit, and a 512x512 photo then ran as four windows of 384); the batch-2
    probe is what checks for two, and is skipped with a note (nothing is run at that size)."""
    prober = Prober(load_model(tiny_x4), EngineOptions(device="cpu", precision="fp32"), runs=1)
    engine = prober.engine
    one, two = (memory_window_px(engine.cost, engine.dtype, engine.device, b) for b in (1, 2))
    assert two < one
    side = one // 4 * 4                    # tiny_x4's windows are multiples of 4; fits alone, not in pairs
    assert side > two
    assert candidate_windows(prober, (side,)) == [side]
    notes: list[str] = []
    assert measure_batch(prober, side, 1.0, notes) == (None, 1)
    assert notes == [f"batch 2: not measured (two {side}-px windows do not fit in memory)"]


def test_openvino_gets_its_own_curve_where_close_and_the_best_plan_wins(tiny_x4):
    """Checked on real probes: OpenVINO's curve is measured over every window exactly when it was
    faster at torch's chosen window or within the margin behind it, and the backend chosen is the
    one whose best window gives the fewer estimated seconds for the reference image."""
    pytest.importorskip("openvino")
    from upscale.tune import tune_model
    from upscale.tune.measure import curve_wanted, reference_windows

    options = EngineOptions(device="cpu", precision="fp32")
    report = tune_model(load_model(tiny_x4), options, quick=True, windows=(96, 128), save=False)
    torch_s = {r.window_px: r.seconds for r in report.rows
               if r.candidate.startswith("window") and r.backend == "torch" and r.batch == 1 and not r.compiled}
    ov_s = {r.window_px: r.seconds for r in report.rows if r.backend == "openvino"}
    engine = Prober(load_model(tiny_x4), options, runs=1).engine
    estimate = {w: reference_windows(engine, w) for w in torch_s}
    torch_window = min(torch_s, key=lambda w: (estimate[w] * torch_s[w], -w))
    assert torch_window in ov_s                        # measured at torch's window in any case
    wanted = curve_wanted(ov_s[torch_window], torch_s[torch_window])
    assert set(ov_s) == ({96, 128, torch_window} if wanted else {torch_window})
    best_torch = estimate[torch_window] * torch_s[torch_window]
    best_ov = min(estimate[w] * ov_s[w] for w in ov_s)
    assert report.result["backend"] == ("openvino" if best_ov < best_torch else "torch")


@pytest.fixture
def native_bf16(monkeypatch):
    """The rule's answer for ``--precision auto`` on the CPU is bf16 (as on a CPU with avx512_bf16 or
    AMX; on one without, torch emulates bf16, which the tiny networks here do not mind)."""
    monkeypatch.setattr("upscale.device.cpu_bf16_flags", lambda: ("avx512_bf16",))


def entries_by_precision(cache_file) -> dict[str, dict]:
    return {e["key"]["precision"]: e["result"] for e in json.loads(cache_file.read_text())["entries"]}


@pytest.mark.parametrize("margin", [None, -1.0, 100.0])      # as shipped; fp32 never / always close enough
def test_tune_auto_measures_fp32_too_and_auto_runs_the_faster(tiny_x4, cache_here, native_bf16, caplog,
                                                              monkeypatch, margin):
    """`upscale tune` at precision auto where that resolves to bf16: bf16 tuned, fp32 screened at
    bf16's window (and tuned in full where it came within the margin), and the faster stored as what
    auto runs; the engine follows that choice, and only for auto."""
    if margin is not None:
        monkeypatch.setattr("upscale.tune.PRECISION_SCREEN_MARGIN", margin)
    out = tune("-m", tiny_x4, "--quick", "--windows", "96,128", "--backend", "torch", "--device", "cpu")
    results = entries_by_precision(cache_here)
    choice = results["auto"]
    assert "fp32 screen: window" in out and f"precision auto: {choice['precision']} from now on" in out
    assert set(choice["estimate_s"]) == {"bf16", "fp32"}
    assert ("fp32" in results) == ("tuned in full" in out) and "bf16" in results
    fp32_faster = choice["estimate_s"]["fp32"] < choice["estimate_s"]["bf16"]
    assert choice["precision"] == ("fp32" if "fp32" in results and fp32_faster else "bf16")
    assert "fp32" in results if margin == 100.0 else "fp32" not in results if margin == -1.0 else True
    assert out.count("candidate ") == 1 + ("fp32" in results)
    assert ("screened only" in out) == ("fp32" not in results)
    shown = tune("--show")
    assert f"compact 8x2 x4 auto {torch.get_num_threads()} threads" in shown and f"runs {choice['precision']}" in shown
    # tuning again weighs both precisions again, even where auto runs fp32 now
    stored = json.loads(cache_here.read_text())
    for entry in stored["entries"]:
        if entry["key"]["precision"] == "auto":
            entry["result"]["precision"] = "fp32"
    cache_here.write_text(json.dumps(stored))
    again = tune("-m", tiny_x4, "--quick", "--windows", "96,128", "--backend", "torch", "--device", "cpu")
    first_title = next(line for line in again.splitlines() if line.startswith("tuned "))
    assert first_title.endswith(f"compact 8x2 x4 bf16 {torch.get_num_threads()} threads") and "fp32 screen" in again

    model = load_model(tiny_x4)
    caplog.set_level(logging.INFO, logger="upscale")
    monkeypatch.setattr("upscale.engine.precision._said", set())
    for chosen, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        data = json.loads(cache_here.read_text())
        for entry in data["entries"]:
            if entry["key"]["precision"] == "auto":
                entry["result"] = {"precision": chosen, "estimate_s": {"bf16": 2.0, "fp32": 1.0}}
        cache_here.write_text(json.dumps(data))
        assert Engine(model, EngineOptions(device="cpu", precision="auto")).dtype == dtype
        assert Engine(model, EngineOptions(device="cpu", precision="bf16")).dtype == torch.bfloat16
    assert sum("precision auto: fp32 (`upscale tune` measured it faster" in r.getMessage()
               for r in caplog.records) == 1


def probe_choice(cache_file) -> torch.dtype:
    """What the machine probe stored (it must have run)."""
    from upscale.tuned import PROBE_ARCH

    (entry,) = [e for e in json.loads(cache_file.read_text())["entries"] if e["key"]["arch"] == PROBE_ARCH]
    assert set(entry["result"]["estimate_s"]) == {"bf16", "fp32"}
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[entry["result"]["precision"]]


def test_auto_with_nothing_tuned_probes_the_machine_once(tiny_x4, tiny_x2, cache_here, native_bf16, monkeypatch,
                                                          any_load_kept):
    """No `upscale tune` for the model: one convolution timed in bf16 and fp32 decides, stored, and read
    (not measured again) by the next engine, for any model; explicit precisions never probe."""
    import upscale.engine.precision as precision

    model = load_model(tiny_x4)
    assert Engine(model, EngineOptions(device="cpu", precision="bf16")).dtype == torch.bfloat16
    assert not cache_here.exists()
    dtype = Engine(model, EngineOptions(device="cpu", precision="auto")).dtype
    assert dtype == probe_choice(cache_here)
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    assert f"conv3x3-probe auto {torch.get_num_threads()} threads [machine probe]: runs {name} (one 3x3 conv:" in tune("--show")
    calls = []
    monkeypatch.setattr(precision, "probe_seconds", lambda: calls.append(1) or {"bf16": 1.0, "fp32": 1.0})
    assert Engine(load_model(tiny_x2), EngineOptions(device="cpu", precision="auto")).dtype == dtype
    assert calls == []
    # an explicit tune of one precision makes no choice for the model: the probe's answer stands
    tune("-m", tiny_x4, "--quick", "--windows", "96", "--backend", "torch", "--device", "cpu", "--precision", "bf16")
    assert {e["key"]["precision"] for e in json.loads(cache_here.read_text())["entries"]
            if e["key"]["arch"] == "compact"} == {"bf16"}
    assert Engine(model, EngineOptions(device="cpu", precision="auto")).dtype == dtype
    # `upscale tune --probe` measures it again (here: a tie, which keeps bf16)
    out = tune("--probe", "--threads", str(torch.get_num_threads()))
    assert calls == [1] and "precision probe" in out and "runs bf16 for models not tuned here" in out
    assert probe_choice(cache_here) == torch.bfloat16


def test_the_precision_probe_is_news_when_measured_and_quiet_after(tiny_x4, cache_here, native_bf16, monkeypatch,
                                                                     any_load_kept, caplog):
    """The probe's fp32 answer is said at info level by the run that measured it, at debug level by
    the runs that read it from the cache (not a line on every run); it is measured at the thread count
    asked for, which it is stored under, and torch's count is put back."""
    import upscale.engine.precision as precision

    monkeypatch.setattr(precision, "_said", set())
    seen_threads = []
    monkeypatch.setattr(precision, "probe_seconds",
                        lambda: seen_threads.append(torch.get_num_threads()) or {"bf16": 2.0, "fp32": 1.0})
    torch.set_num_threads(2)
    caplog.set_level(logging.DEBUG, logger="upscale")
    model = load_model(tiny_x4)

    def levels() -> list[int]:
        return [r.levelno for r in caplog.records if r.getMessage().startswith("precision auto: fp32")]

    assert resolve_dtype("auto", torch.device("cpu"), model, 1) == torch.float32
    assert seen_threads == [1] and torch.get_num_threads() == 2 and levels() == [logging.INFO]
    assert "conv3x3-probe auto 1 threads [machine probe]: runs fp32" in tune("--show")
    caplog.set_level(logging.DEBUG, logger="upscale")        # the CLI set its own verbosity
    monkeypatch.setattr(precision, "_said", set())          # a later process
    assert resolve_dtype("auto", torch.device("cpu"), model, 1) == torch.float32
    assert seen_threads == [1] and levels() == [logging.INFO, logging.DEBUG]


def test_a_probe_on_a_busy_machine_serves_its_run_and_is_not_kept(tiny_x4, cache_here, native_bf16, busy_cpus,
                                                                     caplog):
    """Other processes taking the CPUs while the machine probe runs (real ones): its answer is used,
    said at info level, and not stored; the next engine measures again."""
    from upscale import machine

    if machine.cpu_clock() is None:
        pytest.skip("no /proc/stat here")
    caplog.set_level(logging.INFO, logger="upscale")
    busy_cpus()
    dtype = Engine(load_model(tiny_x4), EngineOptions(device="cpu", precision="auto")).dtype
    assert dtype in (torch.bfloat16, torch.float32)
    assert any("precision probe: other processes used" in r.getMessage() and "serves this run only" in r.getMessage()
               for r in caplog.records)
    assert not cache_here.exists() or "conv3x3-probe" not in cache_here.read_text()


def test_tuning_on_a_busy_machine_warns(tiny_x4, cache_here, busy_cpus, caplog):
    from upscale import machine
    from upscale.tune import tune_precisions

    if machine.cpu_clock() is None:
        pytest.skip("no /proc/stat here")
    caplog.set_level(logging.WARNING, logger="upscale")
    busy_cpus()
    tuning = tune_precisions(load_model(tiny_x4), EngineOptions(device="cpu", precision="fp32"), backend="torch",
                             quick=True, windows=(96,))
    assert tuning.others_share > machine.BUSY_SHARE
    assert any("while tuning" in r.getMessage() and "idle machine" in r.getMessage() for r in caplog.records)


def test_own_work_is_not_counted_as_others(busy_cpus, cache_here):
    """others_share subtracts this process's CPU time (all its threads) from the machine's busy time:
    our threads saturating every CPU would read as ~1.0 otherwise (whatever else runs meanwhile, on
    an idle machine ~0); busy-looping processes of others read as others'."""
    import os
    import time

    from upscale import machine

    start = machine.cpu_clock()
    if start is None:
        pytest.skip("no /proc/stat here")
    torch.set_num_threads(os.cpu_count() or 1)     # every CPU ours (the fixture puts the count back)
    t0 = time.perf_counter()
    a = torch.rand(512, 512)
    while time.perf_counter() - t0 < 0.5:       # our own threads busy
        a @ a
    assert machine.others_share(start, machine.cpu_clock()) < 0.8
    busy_cpus()
    start = machine.cpu_clock()
    time.sleep(0.5)
    assert machine.others_share(start, machine.cpu_clock()) > 0.5


def test_auto_choice_applies_only_where_the_rule_says_bf16(tiny_x4, cache_here):
    """A stored choice of bf16 does not turn a model the rule keeps in fp32 (not bf16-safe, or a CPU
    without native bf16) into bf16."""
    from upscale.tuned import AUTO, auto_precision, store

    model = load_model(tiny_x4)
    threads = torch.get_num_threads()
    assert auto_precision(model, "bf16", "cpu", threads) == (None, "")
    store(tuning_key(model.arch, model.hparams, AUTO, "cpu", threads),
          {"precision": "bf16", "estimate_s": {"bf16": 1.0, "fp32": 2.0}}, label="t", when="now")
    assert auto_precision(model, "fp32", "cpu", threads) == ("fp32", "rule")
    assert auto_precision(model, "bf16", "cpu", threads) == ("bf16", "model")
    assert auto_precision(model, "fp16", torch.device("cpu"), threads) == ("fp16", "rule")


@pytest.mark.parametrize("result", [{"precision": "fp16", "estimate_s": {"fp16": 1.0}},
                                    {"precision": "fp32", "estimate_s": {"bf16": 1.0}},
                                    {"precision": "fp32", "estimate_s": {"fp32": "fast"}},
                                    {"precision": "fp32"}])
def test_a_malformed_auto_choice_makes_the_file_corrupt(tiny_x4, cache_here, native_bf16, result, caplog,
                                                         any_load_kept):
    from upscale.tuned import AUTO

    model = load_model(tiny_x4)
    key = tuning_key(model.arch, model.hparams, AUTO, "cpu", torch.get_num_threads())
    cache_here.parent.mkdir(parents=True, exist_ok=True)
    cache_here.write_text(json.dumps({"format": 1, "entries": [{"key": key, "result": result, "when": "now"}]}))
    caplog.set_level(logging.WARNING, logger="upscale")
    dtype = Engine(model, EngineOptions(device="cpu", precision="auto")).dtype
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert dtype == probe_choice(cache_here)         # the choice ignored, the machine probed (and the file replaced)


def test_probe_on_a_busy_machine_says_it_was_not_saved(cache_here, native_bf16, busy_cpus):
    from upscale import machine

    if machine.cpu_clock() is None:
        pytest.skip("no /proc/stat here")
    busy_cpus()
    out = tune("--probe")
    assert "not saved: the machine was busy" in out and "saved in" not in out
    assert not cache_here.exists() or "conv3x3-probe" not in cache_here.read_text()


def test_probe_refuses_a_device_or_precision_and_threads_are_bounded(cache_here):
    for args in (["--probe", "--device", "cuda"], ["--probe", "--precision", "fp32"],
                 ["--probe", "--threads", "99999999999"], ["--probe", "--threads", "0"],
                 ["-m", "default-x2", "--threads", "99999999999"]):
        res = CliRunner().invoke(cli, ["tune", *args])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and "internal error" not in lines[0], (args, res.output)


def test_a_grayscale_model_is_tuned_on_a_grayscale_image(tmp_path, cache_here, weights_file):
    gray = str(weights_file("compact", {"num_in_ch": 1, "num_out_ch": 1, "num_feat": 8, "num_conv": 1,
                                        "scale": 2, "act_type": "prelu"}, 0, "gray_x2"))
    out = tune("-m", gray, "--quick", "--windows", "96", "--backend", "torch", "--device", "cpu",
               "--precision", "fp32", "-q")
    assert "window" in out and "gray_x2" in cache_here.read_text()


def test_bench_notes_the_backend_of_each_measured_image(tiny_x2_rrdb, cache_here, tmp_path):
    """Under per-image choice, bench's note says what computed the images it timed, not the engine's
    default: a small image on winograd and a larger one on torch give "Winograd 1/2, torch 1/2"."""
    import numpy as np
    from PIL import Image

    from upscale.api import Upscaler
    from upscale.bench import BenchOptions, run_bench
    from upscale.bench.methods import LoadedModel

    tune("-m", tiny_x2_rrdb, *QUICK)
    edit_entry(cache_here, window_seconds={"512": 512**2 * 1e-5}, window_setup_s={"512": 0.0},   # torch's (chosen)
               tables={"winograd": {"window_seconds": {"128": 128**2 * 6e-6}, "window_setup_s": {"128": 0.0}}})
    model = load_model(tiny_x2_rrdb)
    up = Upscaler(model, EngineOptions(device="cpu", precision="fp32"))
    assert up.engine.backend_for(40, 40) == "winograd" and up.engine.backend_for(300, 300) == "torch"
    folder = tmp_path / "Set"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, side in (("a", 80), ("b", 600)):      # LR 40x40 and 300x300 at x2
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    bench = run_bench(folder, BenchOptions(scales=(2,), baselines=(), lpips=False, warmup_runs=1),
                      [LoadedModel("m", 2, up, "cpu", "float32")])
    (row,) = bench.rows
    assert row.note == "Winograd 1/2, torch 1/2"     # the warm-up run of a.png is not counted


def test_tune_winograd_in_a_precision_choice_is_measured_in_the_fp32_pass_only(tiny_x2_rrdb, cache_here,
                                                                               native_bf16, monkeypatch):
    """`--backend winograd` with precision auto resolving to bf16: the bf16 pass notes winograd as
    skipped (fp32 only) instead of refusing the tune, and the fp32 pass (tuned in full here) measures it."""
    monkeypatch.setattr("upscale.tune.PRECISION_SCREEN_MARGIN", 100.0)     # fp32 always tuned in full
    out = tune("-m", tiny_x2_rrdb, "--quick", "--windows", "96,128", "--backend", "winograd", "--device", "cpu")
    results = entries_by_precision(cache_here)
    assert set(results) == {"bf16", "fp32", "auto"}
    assert ("backend winograd: skipped (it computes RRDBNet, SRVGGNetCompact, SPAN and SRResNet in fp32 only, "
            "not rrdbnet in bf16)") in out
    assert "winograd" not in results["bf16"]["tables"] and results["bf16"]["backend"] != "winograd"
    assert "winograd" in results["fp32"]["tables"]
    # alone, the bf16 pass is refused before anything is measured
    refused = CliRunner().invoke(cli, ["tune", "-m", tiny_x2_rrdb, "--quick", "--backend", "winograd",
                                       "--precision", "bf16", "--device", "cpu"])
    assert refused.exit_code == 2 and "backend winograd cannot be measured" in refused.output
