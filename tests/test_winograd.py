"""The winograd backend (issue 14, CPUs without AMX): Winograd F(4x4, 3x3) convolutions equal to the
direct ones on maps of any size, RRDBNet computed by it equal to the eager network (x4, and x2 through
pixel-unshuffle), the CLI's `--backend winograd` against `--backend torch`, and the choice rules.

Its convolutions are C (``backends/winograd.c``), built once per machine into our cache and loaded once
per process (each test here has its own cache folder; the first to need the kernels builds them).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image as PILImage
from torch.nn import functional as F

from upscale import errors, machine
from upscale.backends import choose_backend, winograd_supports, winograd_windows
from upscale.backends import winograd_native
from upscale.backends import winograd
from upscale.backends.winograd import Workspace, block_tiles, rounded, weight_transform
from upscale.backends.winograd_native import convolution, scratch_floats
from upscale.backends.winograd_backend import WinogradWindows
from upscale.cli import cli
from upscale.loading import load_model

RRDB_X4 = {"num_feat": 8, "num_block": 2, "num_grow_ch": 4, "scale": 4}


@pytest.fixture
def rrdb_x4(weights_file) -> str:
    return str(weights_file("rrdbnet", RRDB_X4, 2, "rrdb_x4"))


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))


def test_weight_transform_is_g_g_gt():
    w = torch.randn(5, 3, 3, 3)
    u = weight_transform(w)
    g = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
    assert u.shape == (36, 3, 16) and not u[..., 5:].any()      # columns padded to the C's 16 lanes
    expected = g @ w[4, 2].double() @ g.T            # output channel 4, input channel 2
    assert torch.allclose(u[:, 2, 4].double(), expected.reshape(36), atol=1e-6)
    assert weight_transform(torch.randn(32, 3, 3, 3)).shape == (36, 3, 32)
    with pytest.raises(ValueError, match="3x3"):
        weight_transform(torch.randn(2, 2, 5, 5))


def _eager_and_winograd(model, runner, n, size, seed, channels=3):
    """(the eager network's output, the runner's, each window alone) on a random batch (n, channels,
    *size), NHWC."""
    torch.manual_seed(seed)
    x = torch.rand(n, channels, *size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return (model.module.eval()(x).permute(0, 2, 3, 1), runner(x),
                torch.cat([runner(x[i:i + 1]) for i in range(n)]) if n > 1 else None)


def _direct(sources, conv, height, width):
    """The direct convolution of the concatenated sources' first height x width px (zero beyond)."""
    x = torch.cat(sources, 3)[:, :height, :width].permute(0, 3, 1, 2)
    out = torch.zeros(*sources[0].shape[:3], conv.out_channels)
    out[:, :height, :width] = conv(x).permute(0, 2, 3, 1).detach()
    return out


CONVOLUTIONS = [
    (1, (12, 40), (64, 32, 32), 32, 24),     # a dense block's sources; 30 tiles: a block and a part of one
    (2, (8, 12), (40, 17), 70, 48),          # channels past whole vectors and past 64 (a second chunk)
    (1, (4, 4), (3,), 5, 24),                # one tile: every input pixel at the border
]


@pytest.mark.parametrize("n, size, channels, c_out, block", CONVOLUTIONS)
def test_one_call_is_the_direct_convolution(n, size, channels, c_out, block):
    """winograd_conv against the direct convolution: several sources read as their concatenation, a
    block that runs past the last tile, bias, PReLU, the mask beyond height x width, and residual."""
    _check_one_call(n, size, channels, c_out, block)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or "avx2" not in machine.cpu_info().flags,
                    reason="an x86 CPU with AVX2")
def test_the_kernels_built_for_avx2_compute_the_same(tmp_path, monkeypatch):
    """The kernels as a CPU without AVX-512 gets them (8-channel vectors, 12 accumulators), built here
    with -march=haswell in place of -march=native: the same convolutions."""
    cc = tmp_path / "cc-avx2"
    cc.write_text('#!/bin/sh\nfor a; do shift; [ "$a" = -march=native ] && a=-march=haswell; set -- "$@" "$a"; done\n'
                  'exec cc "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setattr(winograd_native, "_LOADED", None)
    monkeypatch.setenv("CC", str(cc))
    for case in CONVOLUTIONS:
        _check_one_call(*case)
    assert "zmm" not in subprocess.run(["objdump", "-d", str(winograd_native.library_path())], capture_output=True,
                                       text=True).stdout or not shutil.which("objdump")


def _check_one_call(n, size, channels, c_out, block):
    torch.manual_seed(c_out)
    h, w = size
    sources = [torch.randn(n, h, w, c) for c in channels]
    conv = torch.nn.Conv2d(sum(channels), c_out, 3, padding=1)
    u, bias = weight_transform(conv.weight), conv.bias.detach()
    scratch = torch.empty(scratch_floats(block, u.shape[-1], torch.get_num_threads()))
    height, width = h - (h > 4), w - 3 * (w > 4)       # the map's own size inside its rounded one
    masked = [s.clone() for s in sources]
    for s in masked:
        s[:, height:], s[:, :, width:] = 0, 0
    direct = _direct(masked, conv, height, width)
    y = torch.empty(n, h, w, c_out)
    slopes = torch.rand(c_out)                          # PReLU: one slope per channel
    convolution(masked, u, bias, y, None, height, width, slopes, 1.0, scratch, block)
    assert torch.allclose(y, F.prelu(direct.permute(0, 3, 1, 2), slopes).permute(0, 2, 3, 1), atol=2e-5)
    convolution(masked, u, bias, y, None, height, width, None, 1.0, scratch, block, "silu")
    assert torch.allclose(y, F.silu(direct) * inside_of(n, h, w, height, width), atol=2e-5)
    residual = torch.randn(n, h, w, c_out)
    convolution(masked, u, bias, y, residual, height, width, None, 1.0, scratch, block, "gate")
    gated = (direct + residual) * (torch.sigmoid(direct) - 0.5) * inside_of(n, h, w, height, width)
    assert torch.allclose(y, gated, atol=2e-5)
    convolution(masked, u, bias, y, residual, height, width, None, 0.2, scratch, block)
    assert torch.allclose(y, residual + 0.2 * direct * inside_of(n, h, w, height, width), atol=2e-5)


def inside_of(n, h, w, height, width):
    """1 on the map's own height x width px of an (n, h, w) rounded map, 0 beyond."""
    inside = torch.zeros(n, h, w, 1)
    inside[:, :height, :width] = 1
    return inside


def test_blocks_follow_the_l2_cache(monkeypatch):
    """Two block buffers per thread within half the L2 cache, in steps of 24 tiles, 24 at least."""
    monkeypatch.setattr(winograd, "l2_cache_bytes", lambda: 2 * 2**20)
    per_tile = 4 * (scratch_floats(2, 64, 1) - scratch_floats(1, 64, 1))
    assert block_tiles(64) == 2**20 // per_tile // 24 * 24 and block_tiles(64) % 24 == 0
    assert block_tiles(16) >= block_tiles(64)
    monkeypatch.setattr(winograd, "l2_cache_bytes", lambda: 2**16)
    assert block_tiles(64) == 24


def test_l2_cache_size_is_read_or_falls_back():
    size = machine.l2_cache_bytes()
    assert size == machine.L2_FALLBACK_BYTES or size >= 64 * 2**10


def test_the_kernels_are_built_once_and_a_damaged_build_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setattr(winograd_native, "_LOADED", None)
    path = winograd_native.library_path()
    assert str(path).startswith(str(tmp_path)) and not path.is_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared object")          # e.g. a disk that lost it: built again, once
    winograd_native.library()
    assert path.read_bytes()[:4] == b"\x7fELF"
    built = path.stat().st_mtime_ns
    monkeypatch.setattr(winograd_native, "_LOADED", None)
    winograd_native.library()                          # a later process: loaded, not built
    assert path.stat().st_mtime_ns == built
    assert [p.name for p in path.parent.iterdir()] == [path.name]     # no build folder left behind


def test_a_cache_folder_that_cannot_be_written_is_one_typed_error(tmp_path, monkeypatch):
    monkeypatch.setattr(winograd_native, "_LOADED", None)
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(errors.BackendError, match="could not be kept in") as info:
        winograd_native.library()
    assert "backend" in info.value.params and "\n" not in info.value.message


def test_the_wrapper_refuses_what_the_kernel_would_touch_out_of_bounds():
    """The C trusts its sizes: maps whose sides are not multiples of 4 or that differ, a U that does
    not match the channels, a block that is not a multiple of 24 or a scratch too small for it, an
    output that overlaps a source, and an activation it does not know or lacks the inputs of are
    ValueErrors, and nothing is written."""
    x, u, bias = torch.randn(1, 8, 8, 3), weight_transform(torch.randn(2, 3, 3, 3)), torch.zeros(2)
    y = torch.zeros(1, 8, 8, 2)
    scratch = torch.zeros(scratch_floats(24, 16, torch.get_num_threads()))
    cases = [
        (dict(sources=[torch.randn(1, 7, 8, 3)]), "multiples of 4"),
        (dict(sources=[x[0]]), "multiples of 4"),
        (dict(sources=[torch.randn(1, 8, 4, 3)]), "differ in size"),
        (dict(sources=[x, x]), "do not match 6 input channels"),
        (dict(u=u[:, :, :8].contiguous()), "do not match"),
        (dict(bias=torch.zeros(3)), "do not match"),
        (dict(residual=torch.zeros(1, 8, 4, 2)), "do not match"),
        (dict(slope=torch.zeros(3)), "do not match"),
        (dict(slope=torch.zeros(2)), None),
        (dict(block=36), "multiple of 24"),
        (dict(scratch=scratch[:-1]), "floats of scratch"),
        (dict(sources=[x[..., :2]]), "contiguous"),
        (dict(act="tanh"), "activation 'tanh'"),
        (dict(act="gate"), "gate needs a residual"),
        (dict(act="silu", slope=torch.zeros(2)), "slopes go with leaky only"),
        (dict(act="gate", residual=torch.zeros(1, 8, 8, 2)), None),
        (dict(), None),
    ]
    for change, message in cases:
        call = dict(sources=[x], u=u, bias=bias, y=y, residual=None, slope=None, block=24, scratch=scratch,
                    act="leaky") | change
        args = (call["sources"], call["u"], call["bias"], call["y"], call["residual"], 8, 8, call["slope"], 1.0,
                call["scratch"], call["block"], call["act"])
        if message is None:
            convolution(*args)
            y.zero_()
            continue
        with pytest.raises(ValueError, match=message):
            convolution(*args)
        assert not y.any()
    shared = torch.randn(1, 8, 8, 5)
    with pytest.raises(ValueError, match="overlap"):
        convolution([shared], weight_transform(torch.randn(5, 5, 3, 3)), torch.zeros(5), shared, None, 8, 8, None,
                    1.0, scratch, 24)
    with pytest.raises(ValueError, match="at least one"):
        convolution([], u, bias, y, None, 8, 8, None, 1.0, scratch, 24)


def test_the_wrapper_refuses_what_the_kernel_would_compute_wrong():
    """No input channel (no chunk would write the block buffer the output is read from: it was stale
    scratch), a residual partly under the output (its rows overwritten before they are read), a scratch
    over a map: ValueErrors, nothing written. The residual may be the output itself (read, then written)."""
    torch.manual_seed(3)
    x, conv = torch.randn(1, 8, 8, 4), torch.nn.Conv2d(4, 4, 3, padding=1)
    u, bias = weight_transform(conv.weight), conv.bias.detach()
    scratch = torch.full((scratch_floats(24, 16, torch.get_num_threads()),), 7.0)
    with pytest.raises(ValueError, match="at least one input channel"):
        convolution([torch.zeros(1, 8, 8, 0)], torch.zeros(36, 0, 16), bias, torch.zeros(1, 8, 8, 4), None, 8, 8,
                    None, 1.0, scratch, 24)
    buf = torch.zeros(12 * 8 * 4)
    residual, y = buf[:256].view(1, 8, 8, 4), buf[128:].view(1, 8, 8, 4)       # y starts 4 rows into residual
    with pytest.raises(ValueError, match="overlap"):
        convolution([x], u, bias, y, residual, 8, 8, None, 1.0, scratch, 24)
    with pytest.raises(ValueError, match="scratch may not overlap"):
        convolution([x], u, bias, scratch[:256].view(1, 8, 8, 4), None, 8, 8, None, 1.0, scratch, 24)
    assert not buf.any() and (scratch == 7).all()
    y = torch.randn(1, 8, 8, 4)
    expected = y + 0.5 * _direct([x], conv, 8, 8)
    convolution([x], u, bias, y, y, 8, 8, None, 0.5, scratch, 24)
    assert torch.allclose(y, expected, atol=2e-5)


def test_cc_may_hold_words_as_make_takes_it(monkeypatch):
    """CC="ccache gcc", "gcc-13 -g": the compiler and its arguments, not one program's name."""
    monkeypatch.setattr(winograd_native, "_LOADED", None)
    monkeypatch.setenv("CC", "cc -g0")
    winograd_native.library()
    assert winograd_native.library_path().is_file()
    monkeypatch.setattr(winograd_native, "_LOADED", None)
    monkeypatch.setenv("CC", "cc")
    assert not winograd_native.library_path().is_file()      # the words are the build's: kept apart from plain cc's
    monkeypatch.setenv("CC", "cc '-g0")
    with pytest.raises(errors.BackendError, match="No closing quotation"):
        winograd_native.library()


@pytest.mark.skipif(sys.platform != "linux", reason="GNU ld's options")
@pytest.mark.parametrize("link, message", [
    ("-lupscale_no_runtime", r"could not be compiled here \(.*cannot find -lupscale_no_runtime"),   # clang, no libomp
    ("-Wl,--no-as-needed -L{lib} -lruntime", r"compiled but do not load \(libruntime.so"),   # libomp off the path
])
def test_an_openmp_runtime_missing_at_link_or_load_is_one_typed_error(tmp_path, monkeypatch, link, message):
    """A compiler whose OpenMP runtime is not there (clang without libomp), or is found when linking
    but not when loading: the line says which, and no unloadable library is kept."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (tmp_path / "runtime.c").write_text("int runtime_marker(void) { return 1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", str(tmp_path / "runtime.c"), "-o", str(lib / "libruntime.so")],
                   check=True)
    cc = tmp_path / "cc-with-runtime"
    cc.write_text(f'#!/bin/sh\nexec cc "$@" {link.format(lib=lib)}\n')
    cc.chmod(0o755)
    monkeypatch.setattr(winograd_native, "_LOADED", None)
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(errors.BackendError, match=message) as info:
        winograd_native.library()
    assert "\n" not in info.value.message and not winograd_native.library_path().is_file()


@pytest.mark.parametrize("height, width", [(13, 10), (8, 12)])
def test_one_convolution_equals_the_direct_one(height, width):
    """Any map size (rounded up to a multiple of 4 inside, the rest zeroed); activation and residual."""
    torch.manual_seed(height)
    x = torch.randn(1, height, width, 8)
    conv = torch.nn.Conv2d(8, 4, 3, padding=1)
    ws = Workspace(1, rounded(height), rounded(width), height, width)
    padded = torch.zeros(1, ws.h, ws.w, 8)
    padded[:, :height, :width] = x
    direct = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach()
    with torch.inference_mode():
        u = weight_transform(conv.weight)
        act = ws.convolve([padded], u, conv.bias.detach(), torch.empty(1, ws.h, ws.w, 4), slope=0.2)
        residual = torch.randn(1, ws.h, ws.w, 4)
        res = ws.convolve([padded], u, conv.bias.detach(), torch.empty(1, ws.h, ws.w, 4), residual=residual,
                          scale=0.2)
    assert torch.allclose(act[:, :height, :width], F.leaky_relu(direct, 0.2), atol=1e-5)
    assert torch.allclose(res[:, :height, :width], residual[:, :height, :width] + 0.2 * direct, atol=1e-5)
    assert not act[:, height:].any() and not act[:, :, width:].any()     # beyond the map: zero, as padding is


@pytest.fixture
def rrdb_x1_odd(weights_file) -> str:
    """x1 (pixel-unshuffle by 4), feature and growth counts that are not multiples of 16."""
    return str(weights_file("rrdbnet", {"num_feat": 20, "num_block": 1, "num_grow_ch": 7, "scale": 1}, 8, "rrdb_x1"))


@pytest.mark.parametrize("fixture, size", [("rrdb_x4", (11, 14)), ("tiny_x2_rrdb", (10, 6)), ("rrdb_x1_odd", (12, 8))])
def test_rrdbnet_windows_equal_the_eager_network(fixture, size, request):
    model = load_model(request.getfixturevalue(fixture))
    runner = WinogradWindows(model)
    expected, got, _ = _eager_and_winograd(model, runner, 1, size, 0)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4
    assert runner.is_warm((1, size[0] + 8, size[1], 3))       # built once, every shape runs at once
    # the memory check's figure is what the window held: the workspace's buffers and conv_first's map
    (ws,) = runner.workspaces.values()
    held = ws.held_bytes() + 4 * np.prod(ws.map_shape(model.module.conv_first.out_channels))
    assert runner.workspace_bytes(1, *size) == held


@pytest.mark.parametrize("fixture", ["rrdb_x4", "tiny_x2_rrdb"])
def test_a_batch_of_windows_equals_the_eager_network_window_by_window(fixture, request):
    """N = 2 (the engine's batches): tiles are numbered image by image, and each window's equal to
    the eager network's and to itself computed alone."""
    model = load_model(request.getfixturevalue(fixture))
    runner = WinogradWindows(model)
    expected, got, alone = _eager_and_winograd(model, runner, 2, (10, 14), 2)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4 and (got - alone).abs().max().item() < 1e-5


@pytest.mark.parametrize("fixture, size, rows, spans", [
    ("rrdb_x4", (13, 9), 1, [(a, 5) for a in (0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8)]),    # one output row each
    ("rrdb_x4", (13, 9), 7, [(0, 7), (1, 7), (4, 7), (6, 7), (6, 7)]),       # 5 stripes of 3 rows, the last moved up
    ("tiny_x2_rrdb", (14, 6), 1, None)])
def test_the_upsampling_part_in_stripes_equals_the_eager_network(fixture, size, rows, spans, request,
                                                                  monkeypatch):
    """Stripes of rows, each with its rows of context, all of one shape: the same output as the whole
    map at once."""
    from upscale.backends import winograd_backend

    model = load_model(request.getfixturevalue(fixture))
    runner = WinogradWindows(model)
    c, w = model.module.conv_first.out_channels, rounded(size[1])
    monkeypatch.setattr(winograd_backend, "UP_STRIPE_BYTES", rows * 16 * c * w * 4)    # `rows` rows of the 4x map
    read = []
    stripe = runner._up_stripe
    monkeypatch.setattr(runner, "_up_stripe", lambda twice, four, feat: read.append(feat) or stripe(twice, four, feat))
    expected, got, _ = _eager_and_winograd(model, runner, 1, size, 1)
    assert got.shape == expected.shape and (got - expected).abs().max().item() < 1e-4
    if spans is not None:       # (first row, rows) of each stripe read: within the map, the last ones moved up
        rows_read = [((f.data_ptr() - read[0].data_ptr()) // (4 * f.stride(1)), f.shape[1]) for f in read]
        assert rows_read == spans


@pytest.fixture
def tiny_span(weights_file) -> str:
    return str(weights_file("span", {"num_feat": 16, "scale": 4}, 5, "tiny_span"))


@pytest.mark.parametrize("fixture, size", [("rrdb_x4", (11, 14)), ("tiny_x4", (13, 10)), ("tiny_span", (9, 7))])
def test_cli_winograd_matches_torch(tmp_path, fixture, size, request):
    """RRDBNet, SRVGGNetCompact and SPAN through the CLI, neither side a multiple of 4 (the rows and
    columns the tiles round up to are cut off)."""
    src = tmp_path / "a.png"
    PILImage.fromarray(np.random.default_rng(5).integers(0, 256, (*size, 3), dtype=np.uint8)).save(src)
    outputs = {}
    for backend in ("torch", "winograd"):
        out = tmp_path / f"{backend}.png"
        res = CliRunner().invoke(cli, [str(src), "-m", request.getfixturevalue(fixture), "--backend", backend,
                                       "--precision", "fp32", "--device", "cpu", "-o", str(out), "-q"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        with PILImage.open(out) as im:
            outputs[backend] = np.asarray(im).astype(int)
    assert outputs["winograd"].shape == (size[0] * 4, size[1] * 4, 3)
    assert np.abs(outputs["winograd"] - outputs["torch"]).max() <= 1     # rounding of the last bit only


@pytest.fixture
def tiny_2x(weights_file) -> str:
    """A network the winograd backend does not compute (our seed design's small x2 generator)."""
    return str(weights_file("tiny", {"num_in_ch": 3, "num_out_ch": 3, "scale": 2}, 1))


def test_winograd_choice_rules(rrdb_x4, tiny_x4, tiny_2x):
    rrdb, compact, other = load_model(rrdb_x4), load_model(tiny_x4), load_model(tiny_2x)
    assert choose_backend("winograd", rrdb, "cpu", "fp32", 2) == "winograd"
    assert choose_backend("winograd", compact, "cpu", "fp32", 2) == "winograd"
    for args, message in [((other, "cpu", "fp32"), "RRDBNet"), ((rrdb, "cpu", "bf16"), "fp32"),
                          ((rrdb, "cuda", "fp16"), "CPU only")]:
        with pytest.raises(errors.UsageError, match=message) as info:
            choose_backend("winograd", *args, 2)
        assert "backend" in info.value.params
    with pytest.raises(errors.UsageError, match="compile on"):
        choose_backend("winograd", rrdb, "cpu", "fp32", 2, "on")
    assert winograd_supports(rrdb, "fp32") and winograd_supports(compact, "fp32")
    assert not winograd_supports(other, "fp32")
    # nothing tuned: the machine's backend probe decides (tests/test_backend_probe.py); bf16 stays on torch
    assert choose_backend("auto", rrdb, "cpu", "fp32", 2) in ("torch", "winograd")
    assert choose_backend("auto", rrdb, "cpu", "bf16", 2) == "torch"


def test_cli_refuses_winograd_for_other_networks_in_one_line(tmp_path, tiny_2x):
    src = tmp_path / "a.png"
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    res = CliRunner().invoke(cli, [str(src), "-m", tiny_2x, "--backend", "winograd", "-q",
                                   "-o", str(tmp_path / "o.png")])
    assert res.exit_code == 2
    assert "backend winograd computes RRDBNet" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("act_type, size, scale, num_conv", [("prelu", (11, 14), 4, 3), ("lrelu", (9, 4), 2, 3),
                                                             ("relu", (4, 7), 3, 3), ("prelu", (1, 7), 1, 1)])
def test_compact_windows_equal_the_eager_network(weights_file, act_type, size, scale, num_conv):
    """SRVGGNetCompact through the winograd backend: PReLU (random slopes per channel), LeakyReLU and
    ReLU, x1/x2/x3/x4, one middle convolution, sides that are not multiples of 4 (one row), a batch of 2
    equal to its windows alone; the memory figure is what the window held."""
    hp = {"num_feat": 16, "num_conv": num_conv, "scale": scale, "act_type": act_type}
    model = load_model(str(weights_file("compact", hp, 3, f"compact_{act_type}_x{scale}")))
    with torch.no_grad():
        for m in model.module.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(-0.5, 0.5)
    runner = winograd_windows(model)
    expected, got, alone = _eager_and_winograd(model, runner, 2, size, 4)
    assert got.shape == expected.shape == (2, size[0] * scale, size[1] * scale, 3)
    assert (got - expected).abs().max().item() < 1e-4 and (got - alone).abs().max().item() < 1e-5
    ws = runner.workspaces.values()[0]
    assert runner.workspace_bytes(2, *size) == ws.held_bytes()


@pytest.mark.parametrize("hp, size", [
    ({"num_feat": 16, "scale": 4}, (11, 9)),                                      # trained form, SiLU first
    ({"num_feat": 16, "scale": 2, "deploy": True, "silu_first": False}, (8, 13)),  # deploy form, the raw map
    ({"num_in_ch": 1, "num_out_ch": 1, "num_feat": 8, "scale": 3, "norm": False}, (6, 5)),   # gray, no mean
])
def test_span_windows_equal_the_eager_network(weights_file, hp, size):
    """SPAN through the winograd backend: both forms of its convolutions, ``silu_first`` either way, with
    and without the input's mean, x2/x3/x4, a batch of 2 equal to its windows alone; the memory figure is
    what the window held."""
    model = load_model(str(weights_file("span", hp, 6, "span_" + "_".join(f"{k}{v}" for k, v in hp.items()))))
    runner = winograd_windows(model)
    expected, got, alone = _eager_and_winograd(model, runner, 2, size, 7, hp.get("num_in_ch", 3))
    assert got.shape == expected.shape == (2, size[0] * hp["scale"], size[1] * hp["scale"], hp.get("num_out_ch", 3))
    # SPAN's outputs reach tens here (its input is scaled by 255): a few fp32 ulps of that, relative
    assert (got - expected).abs().max().item() < 1e-4 + 1e-5 * expected.abs().max().item()
    assert (got - alone).abs().max().item() < 1e-5
    assert runner.workspace_bytes(2, *size) == runner.workspaces.values()[0].held_bytes()


def test_kernels_that_cannot_compile_are_one_line_and_nothing_is_written(tmp_path, rrdb_x4):
    """No C compiler (CC names none): a typed one-line error naming the way out, no output file."""
    src = tmp_path / "a.png"
    PILImage.fromarray(np.zeros((9, 7, 3), np.uint8)).save(src)
    env = dict(os.environ, UPSCALE_CACHE=str(tmp_path / "fresh"), CC=str(tmp_path / "no-such-compiler"),
               UPSCALE_DEBUG="0")
    res = subprocess.run([sys.executable, "-m", "upscale", str(src), "-m", rrdb_x4, "--backend", "winograd",
                          "--precision", "fp32", "-q", "-o", str(tmp_path / "o.png")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert "winograd's kernels could not be compiled" in res.stderr and "use --backend torch" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("scale, channels", [(4, 3), (2, 1), (3, 3)])
def test_a_shuffle_of_grouped_channels_is_the_pixel_shuffle(scale, channels):
    """``shuffle_grouped`` reorders a convolution's outputs to (i, j, c); ``shuffled(grouped=True)`` of
    outputs in that order is torch's pixel shuffle of the original order, bit for bit, with a base too."""
    from upscale.backends.winograd import shuffle_grouped, shuffled

    cs = channels * scale * scale
    last = torch.randn(2, 5, 7, cs)
    u = torch.arange(cs, dtype=torch.float32).expand(36, 4, cs)
    u = F.pad(u, (0, -cs % 16))
    u_grouped, bias_grouped = shuffle_grouped((u.contiguous(), torch.arange(cs, dtype=torch.float32)), scale)
    order = bias_grouped.long()                          # which original output each new one is
    assert torch.equal(u_grouped[0, 0, :cs], bias_grouped) and not u_grouped[..., cs:].any()
    grouped = last[..., order]
    expected = F.pixel_shuffle(last.permute(0, 3, 1, 2), scale).permute(0, 2, 3, 1)
    assert torch.equal(shuffled(grouped, scale, grouped=True), expected)
    assert torch.equal(shuffled(last, scale), expected)
    base = torch.randn(2, 5, 7, channels)
    assert torch.equal(shuffled(grouped, scale, base, grouped=True), shuffled(last, scale, base))
