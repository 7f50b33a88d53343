"""Native libraries built on this machine (``upscale.native``): a build started early in the background
is the one ``load`` uses (one compiler run), a finished build is not started again, and a background
build that fails is said by ``load`` as any build failure is. Real compiler runs, counted through a
logging wrapper around ``cc``."""

from __future__ import annotations

import shutil

import pytest

from upscale import native
from upscale.io import png

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler here")


def builds(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_build_started_early_is_the_one_load_uses(logged_cc):
    args = (png.__package__, png.FILTER_SOURCE, png.FILTER_FLAGS)
    native.build_soon(*args)
    native.build_soon(*args)                # asked twice: one build
    lib = native.load(*args)
    path = native.library_path(*args)
    assert hasattr(lib, "png_filter_rows") and builds(logged_cc) == 1
    assert path not in native._started      # joined and forgotten
    native.build_soon(*args)                # on disk now: nothing started
    assert path not in native._started and builds(logged_cc) == 1
    assert native.library_path(*args).is_file()
    assert not [p.name for p in native.native_dir().iterdir() if p.name.startswith(".build-")]


@pytest.mark.parametrize("kind", ["fails", "does not load"])
def test_a_background_build_that_fails_is_said_by_load_without_building_again(tmp_path, monkeypatch, kind):
    """A compiler that fails, or writes a file the loader refuses: ``load`` says so after the one
    background build, and does not run the compiler a second time."""
    log = tmp_path / "builds.log"
    cc = tmp_path / "cc-bad"
    action = "echo 'x.c:1: error: no' >&2; exit 1" if kind == "fails" else \
        'for a; do case "$prev" in -o) echo junk > "$a" ;; esac; prev="$a"; done'
    cc.write_text(f'#!/bin/sh\ncase "$*" in *--version*) exit 0 ;; esac\necho build >> "{log}"\n{action}\n')
    cc.chmod(0o755)
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(cc))
    args = (png.__package__, png.FILTER_SOURCE, png.FILTER_FLAGS)
    native.build_soon(*args)
    with pytest.raises(native.BuildError) as info:
        native.load(*args)
    assert info.value.stage == ("compile" if kind == "fails" else "load")
    assert builds(log) == 1 and native.library_path(*args) not in native._started


def test_the_precision_probe_waits_for_a_build_in_the_background(monkeypatch):
    """The compiler the CLI started is not timed beside the probe (it would count as others' load)."""
    import threading
    import time

    from upscale.engine import precision

    ended, probed = [], []
    worker = threading.Thread(target=lambda: (time.sleep(0.3), ended.append(time.monotonic())))
    with native._started_lock:
        native._started[tmp_key := native.native_dir() / "sleeper.so"] = worker
        worker.start()
    monkeypatch.setattr(precision, "probe_seconds",
                        lambda: probed.append(time.monotonic()) or {"bf16": 1.0, "fp32": 2.0})
    monkeypatch.setattr(precision.tuned, "remember_faster", lambda *a, **k: "bf16")
    try:
        assert precision.probe_machine(1)[0] == "bf16"
    finally:
        with native._started_lock:
            native._started.pop(tmp_key, None)
    assert ended and probed and probed[0] >= ended[0]


def test_the_cli_builds_the_winograd_kernels_once_on_a_first_run(tmp_path, logged_cc, monkeypatch, request):
    """`upscale run` starts the kernels' build before the model loads (through ``build_soon``, called
    through); the engine then loads that build: one compiler run for the kernels."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image as PILImage

    from upscale.backends import winograd_native
    from upscale.cli import cli

    monkeypatch.setattr(winograd_native, "_LOADED", None)
    png.native_filter.cache_clear()
    request.addfinalizer(png.native_filter.cache_clear)
    started, real = [], native.build_soon
    monkeypatch.setattr(native, "build_soon", lambda *args: started.append(args[1]) or real(*args))
    PILImage.fromarray(np.zeros((12, 10, 3), np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "a.png"), "-m", "default-x2", "--backend", "winograd",
                                      "--precision", "fp32", "--threads", "1", "-o", str(tmp_path / "b.png"), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b.png").is_file() and builds(logged_cc) == 2      # the kernels, and the PNG filter
    assert started == ["winograd.c"] and winograd_native.library_path().is_file()
    assert winograd_native.library_path() not in native._started
    # a model winograd does not compute (the registry knows its architecture): nothing built for it
    started.clear()
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "a.png"), "-m", "srcnn-x2", "--threads", "1",
                                      "-o", str(tmp_path / "c.png"), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert started == []
