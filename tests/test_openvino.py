"""The OpenVINO backend (issue 14, Must show 5 and 6): `--backend openvino` through the CLI against
`--backend torch`, one compiled model per window shape, the converted-graph cache reused by a second
process, the one-line message when the package is missing, and the backend choice rules.

Skipped as a whole where openvino is not installed (`pip install 'upscale[openvino]'`), except the
tests that need only our own code (marked below).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from upscale import errors
from upscale.backends import choose_backend
from upscale.cli import cli
from upscale.engine import Engine, EngineOptions, RunStats
from upscale.loading import load_model
from upscale.metrics import psnr

needs_openvino = pytest.mark.skipif(
    __import__("importlib").util.find_spec("openvino") is None, reason="openvino is not installed")


def _photo(path: Path, size: tuple[int, int] = (41, 29)) -> Path:
    rng = np.random.default_rng(3)
    PILImage.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _pixels(path: Path) -> np.ndarray:
    with PILImage.open(path) as im:
        return np.asarray(im)


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "UPSCALE_CACHE": str(cache), "UPSCALE_DEBUG": "0"}


@needs_openvino
def test_cli_openvino_matches_torch(tmp_path, tiny_x4, monkeypatch):
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    src = _photo(tmp_path / "a.png")
    outputs = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / f"{backend}.png"
        res = CliRunner().invoke(cli, [str(src), "-m", tiny_x4, "--backend", backend, "--precision", "fp32",
                                       "-o", str(out), "-q"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        outputs[backend] = _pixels(out)
    assert outputs["openvino"].shape == outputs["torch"].shape == (29 * 4, 41 * 4, 3)
    assert psnr(outputs["openvino"], outputs["torch"], y_channel=False) >= 50.0


@needs_openvino
def test_tiled_windows_share_one_compiled_model(tmp_path, tiny_x4, monkeypatch):
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    model = load_model(tiny_x4)
    pixels = _pixels(_photo(tmp_path / "a.png", (70, 50)))
    options = dict(precision="fp32", tile_px=16, overlap_px=8, compile="off")
    engine = Engine(model, EngineOptions(backend="openvino", **options))
    stats = RunStats()
    got = engine.upscale(pixels, stats=stats)
    assert stats.backend == "openvino" and stats.tiles > 10
    plan = engine.plan_for(*pixels.shape[:2])       # tiny_x4's context covers its radius: fitted windows
    assert (plan.tile_h, plan.tile_w) == (28, 30)
    # every window: one shape, one compile
    assert engine.openvino.compiled_shapes == ((1, plan.tile_h, plan.tile_w, 3),)
    want = Engine(model, EngineOptions(backend="torch", **options)).upscale(pixels)
    assert psnr(got, want, y_channel=False) >= 50.0


@needs_openvino
def test_second_process_reads_the_cache(tmp_path, tiny_x4):
    cache = tmp_path / "cache"
    src = _photo(tmp_path / "a.png")
    cmd = [sys.executable, "-m", "upscale", str(src), "-m", tiny_x4, "--backend", "openvino",
           "--precision", "fp32", "--force", "-o", str(tmp_path / "out.png")]
    first = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "openvino: converted" in first.stderr
    folder = cache / "openvino"
    stored = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    suffixes = {Path(name).suffix for name in stored}
    assert {".xml", ".bin", ".blob"} <= suffixes, stored    # converted graph + OpenVINO's compiled blob
    second = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "openvino: converted" not in second.stderr          # read, not converted again
    again = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert again.keys() == stored.keys()                          # nothing added
    # nothing rewritten: only the graph's .xml is touched (its last use, for pruning)
    assert {n: t for n, t in again.items() if not n.endswith(".xml")} == \
        {n: t for n, t in stored.items() if not n.endswith(".xml")}


@needs_openvino
def test_a_compiled_shape_is_warm_for_the_next_instance(tmp_path, tiny_x4, monkeypatch):
    """The planner counts a compile only for shapes OpenVINO's model cache does not hold yet: a shape
    one instance compiled is warm for the next one (its marker), another shape is not."""
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    model = load_model(tiny_x4)
    options = EngineOptions(backend="openvino", precision="fp32", tile_px=0, compile="off")
    first = Engine(model, options)
    shape = (1, 29, 41, 3)
    assert not first.openvino.is_warm(shape)
    first.upscale(_pixels(_photo(tmp_path / "a.png")))
    later = Engine(model, options).openvino
    assert later.is_warm(shape) and not later.compiled_shapes
    assert not later.is_warm((1, 30, 41, 3))


@needs_openvino
def test_corrupt_cached_graph_is_converted_again(tmp_path, tiny_x4, monkeypatch, caplog):
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    model = load_model(tiny_x4)
    options = EngineOptions(backend="openvino", precision="fp32", compile="off")
    assert not Engine(model, options).openvino.graph_from_cache
    assert Engine(model, options).openvino.graph_from_cache
    for xml in (tmp_path / "cache" / "openvino").glob("*.xml"):
        xml.write_text("<net this is not IR")
    engine = Engine(model, options)
    assert not engine.openvino.graph_from_cache
    assert "ignoring unreadable cached graph" in caplog.text
    assert engine.upscale(np.zeros((8, 8, 3), np.uint8)).shape == (32, 32, 3)


@needs_openvino
def test_a_cached_graph_whose_weights_changed_is_converted_again(tmp_path, tiny_x4, monkeypatch, caplog):
    """Bytes changed in the .bin still read as a valid graph, and computed wrong pixels with exit 0."""
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    model = load_model(tiny_x4)
    options = EngineOptions(backend="openvino", precision="fp32", compile="off", tile_px=0)
    image = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    reference = Engine(model, options).upscale(image)
    (weights,) = (tmp_path / "cache" / "openvino").glob("*.bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\x00\x00\x80\x7f" * 16          # +inf weights
    weights.write_bytes(bytes(data))
    engine = Engine(model, options)
    assert not engine.openvino.graph_from_cache and "do not match the checksums" in caplog.text
    assert np.array_equal(engine.upscale(image), reference)
    assert Engine(model, options).openvino.graph_from_cache          # converted and cached again
    caplog.clear()
    for sums in (tmp_path / "cache" / "openvino").glob("*.sha256"):  # a cache an older upscale wrote
        sums.unlink()
    assert not Engine(model, options).openvino.graph_from_cache and "WARNING" not in caplog.text
    assert Engine(model, options).openvino.graph_from_cache


@needs_openvino
def test_backend_failure_is_a_typed_one_line_error(tmp_path, tiny_x4, monkeypatch):
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    engine = Engine(load_model(tiny_x4), EngineOptions(backend="openvino", precision="fp32"))
    with pytest.raises(errors.BackendError) as info:
        engine.openvino(np.zeros((1, 16, 16, 5), np.float32))   # 5 channels into a 3-channel network
    assert "backend torch" in str(info.value) and "\n" not in str(info.value)


def test_missing_openvino_is_a_usage_error_naming_the_extra(tmp_path, tiny_x4):
    """Runs everywhere: openvino is made unimportable in the child (a real ImportError)."""
    src = _photo(tmp_path / "a.png")
    code = ("import sys; sys.modules['openvino'] = None; from upscale.cli import main; "
            f"sys.argv = ['upscale', {str(src)!r}, '-m', {tiny_x4!r}, '--backend', 'openvino', '-o', "
            f"{str(tmp_path / 'out.png')!r}]; main()")
    res = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path / "cache"), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if "openvino" in line]
    assert len(lines) == 1 and "pip install 'upscale[openvino]'" in lines[0] and "--backend" in lines[0], res.stderr
    assert not (tmp_path / "out.png").exists()


def test_torch_runs_never_import_openvino(tmp_path, tiny_x4):
    """Runs everywhere: `import upscale` and a torch (or auto, untuned) run leave openvino unimported."""
    code = ("import sys, numpy as np, upscale; from upscale.engine import Engine, EngineOptions; "
            f"m = upscale.load_model({tiny_x4!r}); "
            "[Engine(m, EngineOptions(backend=b, compile='off')).upscale(np.zeros((8, 8, 3), np.uint8)) "
            "for b in ('torch', 'auto')]; print('openvino' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path / "cache"), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_backend_choice_rules(tiny_x4):
    """Runs everywhere: openvino is CPU-only and not for torch.compile; auto never picks it off the CPU."""
    model = load_model(tiny_x4)
    with pytest.raises(errors.UsageError, match="CPU only") as info:
        choose_backend("openvino", model, "cuda", "fp16", 1)
    assert info.value.params == ("backend",)
    with pytest.raises(errors.UsageError, match="compile on"):
        choose_backend("openvino", model, "cpu", "fp32", 1, "on")
    assert choose_backend("auto", model, "cuda", "fp16", 1) == "torch"
    assert choose_backend("torch", model, "cpu", "bf16", 1) == "torch"
    with pytest.raises(errors.UsageError, match="backend must be one of"):
        EngineOptions(backend="onnx")


RRDB_X4 = {"num_feat": 8, "num_block": 2, "num_grow_ch": 4, "scale": 4}


@needs_openvino
def test_rrdbnet_graph_keeps_its_fp32_islands(tmp_path, weights_file, monkeypatch):
    """The stored graph marks RRDBNet's image-side convs and trunk residuals to stay fp32 (and no conv
    of the blocks); where the CPU has native bf16, the compiled bf16 graph runs exactly those in f32."""
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    model = load_model(weights_file("rrdbnet", RRDB_X4, 2, "rrdb_x4_ov"))
    engine = Engine(model, EngineOptions(backend="openvino", precision="bf16", compile="off", tile_px=0))
    xml = next((tmp_path / "cache" / "openvino").glob("*.xml")).read_text()
    root = ET.fromstring(xml)
    marked = [layer.get("name") for layer in root.iter("layer")
              if any(a.get("name") == "precise" for a in layer.iter("attribute"))]
    assert any(n.startswith("__module.conv_first/") for n in marked)
    assert any(n.startswith("__module.conv_last/") for n in marked)
    for block in range(RRDB_X4["num_block"]):
        assert any(n.startswith(f"__module.body.{block}/aten::add") for n in marked), marked
        for rdb in (1, 2, 3):
            assert any(n.startswith(f"__module.body.{block}.rdb{rdb}/aten::add") for n in marked), marked
    assert not [n for n in marked if "/aten::_convolution/" in n and "conv_first" not in n and "conv_last" not in n]
    pixels = _pixels(_photo(tmp_path / "a.png", (24, 20)))
    out = engine.upscale(pixels)
    want = Engine(model, EngineOptions(backend="torch", precision="fp32", tile_px=0)).upscale(pixels)
    assert psnr(out, want, y_channel=False) >= 40.0
    if engine.openvino.hint != "bf16":
        return          # f32 inference: the marks change nothing
    compiled = next(iter(engine.openvino._compiled.values()))
    precision = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            precision[op.get_friendly_name()] = info["runtimePrecision"].astype(str)
    first = [p for n, p in precision.items() if "conv_first" in n]
    block = [p for n, p in precision.items() if ".rdb1.conv1" in n]
    assert first and set(first) == {"f32"} and block and "bf16" in set(block), precision


def test_prune_stale_removes_graphs_markers_and_blobs_unused_for_a_month(tmp_path):
    """Our own code only (no openvino needed): what goes is judged by last use, a graph's files go
    together, and files of other kinds are never touched."""
    from upscale.backends.openvino_backend import STALE_AFTER_S, prune_stale

    now = 2_000_000_000.0
    old, recent = now - STALE_AFTER_S - 60, now - 3600
    files = {"aaa.xml": old, "aaa.bin": recent, "aaa.1x64x64x3.compiled": recent, "aaa.sha256": recent,  # all go
             "bbb.xml": recent, "bbb.bin": old, "bbb.1x64x64x3.compiled": old,        # graph used: all stay
             "ccc.1x8x8x3.compiled": old,                                             # orphan marker: goes
             "123.blob": old, "456.blob": recent, "notes.txt": old}
    for name, mtime in files.items():
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (mtime, mtime))
    removed = {p.name for p in prune_stale(tmp_path, now=now)}
    assert removed == {"aaa.xml", "aaa.bin", "aaa.1x64x64x3.compiled", "aaa.sha256", "ccc.1x8x8x3.compiled",
                       "123.blob"}
    assert {p.name for p in tmp_path.iterdir()} == set(files) - removed


@needs_openvino
def test_reading_a_cached_graph_marks_its_use(tmp_path, tiny_x4, monkeypatch):
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    model = load_model(tiny_x4)
    options = EngineOptions(backend="openvino", precision="fp32", compile="off")
    Engine(model, options)
    xml = next((tmp_path / "cache" / "openvino").glob("*.xml"))
    os.utime(xml, (1_000_000_000, 1_000_000_000))
    assert Engine(model, options).openvino.graph_from_cache
    assert xml.stat().st_mtime > 1_000_000_000


@needs_openvino
def test_unwritable_cache_still_runs_the_marked_graph(tmp_path, weights_file, monkeypatch, caplog):
    """Where the graph cannot be cached, the run goes on with the same (marked) graph from memory."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("UPSCALE_CACHE", str(blocker))
    model = load_model(weights_file("rrdbnet", RRDB_X4, 2, "rrdb_x4_ov"))
    engine = Engine(model, EngineOptions(backend="openvino", precision="bf16", compile="off", tile_px=0))
    assert "cannot cache the converted graph" in caplog.text
    marked = [op for op in engine.openvino._graph.get_ordered_ops()
              if op.get_friendly_name().startswith("__module.conv_first/") and len(op.get_rt_info())]
    assert marked
    pixels = _pixels(_photo(tmp_path / "a.png", (16, 12)))
    want = Engine(model, EngineOptions(backend="torch", precision="fp32", tile_px=0)).upscale(pixels)
    assert psnr(engine.upscale(pixels), want, y_channel=False) >= 40.0
    assert "compiling without its model cache" in caplog.text


@needs_openvino
def test_ctrl_c_stops_an_openvino_inference_at_once(tmp_path, weights_file, monkeypatch):
    """OpenVINO ran each batch as one blocking call, so Ctrl-C waited for it (x4plus: tens of seconds
    a window), and a cancelled request was still waited for when it was freed. Now the wait is sliced
    and a KeyboardInterrupt cancels the request and waits for the cancel: the interrupt comes well
    before the inference would have ended (a ratio of two timings taken side by side here), and the
    same windows object computes the right result again right after."""
    import threading
    import time
    import _thread

    from upscale.backends.openvino_backend import OpenVinoWindows

    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    model = load_model(weights_file("rrdbnet", {"num_feat": 32, "num_block": 4, "num_grow_ch": 16, "scale": 2}))
    windows = OpenVinoWindows(model, precision="fp32", threads=2)
    x = np.random.default_rng(0).random((1, 320, 320, 3), dtype=np.float32)   # ~1 s here, > 10 slices
    windows(x)                                        # compiled and warm
    t0 = time.perf_counter()
    reference = windows(x)
    full_s = time.perf_counter() - t0

    timer = threading.Timer(full_s / 10, _thread.interrupt_main)
    t0 = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        windows(x)
        time.sleep(10 * full_s)                       # reached only if the inference was not interrupted
    stopped_s = time.perf_counter() - t0
    timer.join()
    assert stopped_s < 0.6 * full_s, (stopped_s, full_s)
    np.testing.assert_array_equal(windows(x), reference)
