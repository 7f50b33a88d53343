"""Tile geometry, the band stitcher and the engine: tiled == untiled, precisions, dtypes, errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from upscale import errors
from upscale.archs import build_module
from upscale.engine import (Engine, EngineOptions, RunStats, TorchStitchOps, Workload, check_output_fits,
                            compile_estimates, probe_cost, resolve_precision, uses_compiled)
from upscale.metrics import psnr
from upscale.model import Model
from upscale.tiling import BandStitcher, plan_extent, plan_tiles, window_px


def small_model(arch: str, **hparams) -> Model:
    """A tiny random network of ``arch`` (seeded), wrapped as a Model."""
    torch.manual_seed(sum(map(ord, arch)) + 7 * hparams.get("scale", 0))
    module = build_module(arch, hparams).eval()
    if arch == "srresnet":   # give eval-mode BatchNorm non-trivial statistics
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    hp = {**{"scale": module.scale}, **hparams}
    return Model(module, arch, hp, source=f"tiny-{arch}")


# (arch, hparams, largest image side used) -- sizes bounded so the whole file stays fast on 2 cores
SMALL_NETS = [
    ("rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 4}, 160),
    ("rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 2}, 200),
    ("rrdbnet", {"num_block": 1, "num_feat": 8, "num_grow_ch": 4, "scale": 1}, 300),
    ("compact", {"num_conv": 2, "num_feat": 8, "scale": 4}, 200),
    ("msrresnet", {"num_block": 1, "num_feat": 8, "scale": 4}, 160),
    ("srresnet", {"num_block": 1, "num_feat": 8, "scale": 2, "bn": True}, 200),
    ("srcnn", {"n1": 8, "n2": 4, "scale": 3}, 120),
    ("tiny", {"scale": 2}, 72),
]


def fp32(tile_px: int, overlap_px: int, batch: int = 1) -> EngineOptions:
    return EngineOptions(device="cpu", precision="fp32", tile_px=tile_px, overlap_px=overlap_px, batch=batch,
                         compile="off")


# --- geometry --------------------------------------------------------------------------------------
def _axis_sum(starts, weights, length_out, scale):
    total = np.zeros(length_out)
    for start, w in zip(starts, weights):
        total[start * scale:start * scale + len(w)] += w
    return total


def _check_axis(starts, size, length, weights, tile, overlap, margin, multiple, scale):
    """One axis of a plan: windows of one size inside the image, covering it, advancing by at most the
    core, sharing at least twice the context, zero weight in the margins, weights summing to 1."""
    window = window_px(tile, overlap, multiple)
    assert starts[0] == 0 and starts[-1] + size == length                 # covers, ends at the edge
    assert all(s % multiple == 0 for s in starts) and size % multiple == 0
    if tile == 0 or window >= length:
        assert starts == (0,) and size == length                           # one window, the whole axis
    else:
        core = -(-tile // multiple) * multiple
        context = -(-overlap // multiple) * multiple
        count = -(-(length - 2 * context) // core)
        assert len(starts) == count                                        # the fewest windows at stride <= core
        fitted = -(-(length - 2 * context) // multiple // count) * multiple + 2 * context
        assert size == min(window, core + 2 * context, fitted)             # only the core shrinks, to fit
        assert size - 2 * context >= multiple                              # context never shrinks
        # cost bound: the cores overshoot the image by less than one unit per window
        assert count * (size - 2 * context) < length - 2 * context + count * multiple
        for a, b in zip(starts, starts[1:]):
            assert 0 < b - a <= size - 2 * context and a + size - b >= 2 * overlap   # shared context
    assert all(len(wt) == size * scale and wt.min() >= 0 and wt.max() <= 1 for wt in weights)
    for i, wt in enumerate(weights):                                       # discarded margins
        if i > 0:
            assert not wt[:margin * scale].any()
        if i + 1 < len(weights):
            assert not wt[len(wt) - margin * scale:].any()
    np.testing.assert_allclose(_axis_sum(starts, weights, length * scale, scale), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_plan_covers_image_with_equal_windows_and_unit_weights(seed):
    rng = random.Random(seed)
    for _ in range(60):
        h, w = rng.randint(1, 400), rng.randint(1, 400)
        overlap, multiple, scale = rng.randint(0, 12), rng.choice([1, 2, 4]), rng.choice([1, 2, 3, 4])
        tile = rng.choice([0, rng.randint(1, 8), rng.randint(1, 150)])
        margin = rng.randint(0, overlap)
        plan = plan_tiles(h, w, tile, overlap, multiple, scale, margin_px=margin)
        assert plan.height % multiple == 0 and plan.width % multiple == 0
        assert plan.height >= h and plan.width >= w
        _check_axis(plan.ys, plan.tile_h, plan.height, plan.row_weights, tile, overlap, margin, multiple, scale)
        _check_axis(plan.xs, plan.tile_w, plan.width, plan.col_weights, tile, overlap, margin, multiple, scale)


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 900), w=st.integers(1, 900), tile=st.integers(0, 300), overlap=st.integers(0, 40),
       multiple=st.sampled_from([1, 2, 4]), fit=st.booleans())
def test_plan_extent_is_the_plans_window_shape_and_count(h, w, tile, overlap, multiple, fit):
    """The planner's constant-time count (what the engine compares candidate plans with) is what
    plan_tiles builds."""
    plan = plan_tiles(h, w, tile, overlap, multiple, fit=fit)
    assert plan_extent(h, w, tile, overlap, multiple, fit=fit) == (plan.tile_h, plan.tile_w, plan.num_tiles)


def test_plan_extent_of_a_huge_image_is_instant():
    th, tw, count = plan_extent(1 << 30, 1 << 30, 128, 32, 4, fit=False)
    assert (th, tw) == (192, 192) and count == (-(-((1 << 30) - 64) // 128)) ** 2


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(0, 40), overlap=st.integers(0, 12),
       multiple=st.sampled_from([1, 2, 4]), scale=st.integers(1, 3), margin_share=st.floats(0, 1))
def test_every_output_pixel_is_covered_and_its_blend_weights_sum_to_one(h, w, tile, overlap, multiple, scale,
                                                                          margin_share):
    """Property of the tiler, for any image size, tile, overlap, margin, size multiple and scale: the
    2-D weights of the windows covering an output pixel sum to 1 (so every pixel is covered)."""
    margin = round(overlap * margin_share)
    plan = plan_tiles(h, w, tile, overlap, multiple, scale, margin_px=margin)
    total = np.zeros((plan.height * scale, plan.width * scale))
    for win in plan.windows():
        y, x = win.y0 * scale, win.x0 * scale
        weight = np.outer(plan.row_weights[win.row], plan.col_weights[win.col])
        assert weight.shape == (plan.tile_h * scale, plan.tile_w * scale)   # one shape: windows stack
        total[y:y + weight.shape[0], x:x + weight.shape[1]] += weight
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_plan_fades_rather_than_cuts_and_keeps_borders_at_one():
    plan = plan_tiles(90, 300, 96, 8, 1, 2, margin_px=2)
    assert len(plan.ys) == 1 and plan.row_weights[0].min() == 1.0    # one row: weight 1 at both borders
    assert len(plan.xs) > 2
    first, last = plan.col_weights[0], plan.col_weights[-1]
    assert first[0] == 1.0 and last[-1] == 1.0
    fade = first[(first > 0) & (first < 1)]
    assert len(fade) >= 2 * (8 - 2) * 2                              # the context beyond the margins, not a step
    assert np.all(np.diff(fade) < 0)


def test_small_tiles_keep_the_whole_overlap_as_context():
    """Issue 16 #4: a small tile used to shrink the overlap (or be refused with an explicit one)."""
    for tile in (1, 4, 8, 16, 30):
        plan = plan_tiles(500, 500, tile, 10)
        assert plan.tile_h == plan.tile_w == tile + 20 and plan.margin_px == 10
        assert all(b - a <= tile for a, b in zip(plan.xs, plan.xs[1:]))
    assert EngineOptions(tile_px=30, overlap_px=10).tile_px == 30
    with pytest.raises(ValueError, match="margin_px"):
        plan_tiles(50, 50, 8, 4, margin_px=5)


# --- stitcher --------------------------------------------------------------------------------------
def test_stitcher_holds_one_band_and_converts_with_rounding_and_clamping():
    plan = plan_tiles(1000, 50, 40, 4, 1, 2)
    assert len(plan.ys) > 20
    out = np.zeros((2000, 100, 1), dtype=np.uint8)
    stitcher = BandStitcher(plan, out)
    assert stitcher.accumulator_rows == plan.tile_h * 2            # bounded by one window row, not the image
    for win in plan.windows():
        y = (win.y0 * 2 + np.arange(plan.tile_h * 2))[:, None, None]
        # a ramp over rows from -0.25 to 1.25, identical in every tile that covers a row: the blend must
        # reproduce it exactly, then clamp and round
        tile = np.broadcast_to(-0.25 + 1.5 * y / 2000.0, (plan.tile_h * 2, plan.tile_w * 2, 1))
        stitcher.add(win, tile.astype(np.float32))
    expected = np.rint(np.clip(-0.25 + 1.5 * np.arange(2000) / 2000.0, 0, 1) * 255)
    assert np.abs(out[:, 0, 0] - expected).max() <= 1        # (float32 blend vs float64 reference)
    assert out[:200, 0, 0].max() == 0 and out[-200:, 0, 0].min() == 255
    # columns in a cross-fade sum two float32 products: a value exactly halfway between two levels
    # (this ramp hits some) may round either way there, but never further
    assert np.abs(out.astype(int) - out[:, :1]).max() <= 1
    assert (out == out[:, :1]).mean() > 0.999


@pytest.mark.parametrize("value, expected", [(100.4, 100), (100.6, 101), (-3.0, 0), (300.0, 255)])
def test_stitcher_rounds_to_nearest_and_clamps(value, expected):
    plan = plan_tiles(20, 20, 0, 0)
    out = np.zeros((20, 20, 3), np.uint8)
    (win,) = plan.windows()
    BandStitcher(plan, out).add(win, np.full((20, 20, 3), value / 255, np.float32))
    assert (out == expected).all()


@pytest.mark.parametrize("dtype, expected", [(np.uint8, 51), (np.uint16, 13107), (np.float32, 0.2)])
def test_stitcher_writes_each_dtype_and_crops_padding(dtype, expected):
    plan = plan_tiles(30, 21, 16, 2, 4, 2)      # padded to 32 x 24
    assert (plan.height, plan.width) == (32, 24)
    out = np.zeros((60, 42, 3), dtype=dtype)
    stitcher = BandStitcher(plan, out)
    for win in plan.windows():
        stitcher.add(win, np.full((plan.tile_h * 2, plan.tile_w * 2, 3), 0.2, dtype=np.float32))
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_torch_stitch_ops_blend_like_numpy(dtype):
    """The engine blends with torch where the tiles were computed (on CUDA: on the GPU); on the CPU the
    same code must give what the numpy stitcher gives, to the last step of rounding."""
    plan = plan_tiles(203, 150, 64, 6, 2, 3)      # several rows and columns, padding cropped
    assert len(plan.ys) > 2 and len(plan.xs) > 2
    rng = np.random.default_rng(5)
    tiles = [rng.uniform(-0.1, 1.1, (plan.tile_h * 3, plan.tile_w * 3, 3)).astype(np.float32)
             for _ in range(plan.num_tiles)]
    ref = np.zeros((609, 450, 3), dtype)
    got = np.zeros_like(ref)
    numpy_st = BandStitcher(plan, ref)
    torch_st = BandStitcher(plan, got, TorchStitchOps(torch.device("cpu")))
    for win in plan.windows():
        numpy_st.add(win, tiles[win.index])
        torch_st.add(win, torch.from_numpy(tiles[win.index]))
    peak = {np.uint8: 1, np.uint16: 1, np.float32: 1e-6}[dtype]
    assert np.abs(got.astype(np.float64) - ref).max() <= peak
    assert ref.max() > 0 and np.abs(ref.astype(np.float64) - got).mean() < peak / 100


def test_stitcher_refuses_tiles_out_of_order():
    plan = plan_tiles(64, 64, 32, 2)
    stitcher = BandStitcher(plan, np.zeros((64, 64, 3), np.uint8))
    wins = list(plan.windows())
    with pytest.raises(ValueError, match="row-major"):
        stitcher.add(wins[1], np.zeros((plan.tile_h, plan.tile_w, 3), np.float32))


# --- tiled == untiled -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch, hparams, max_side", SMALL_NETS, ids=lambda v: v if isinstance(v, str) else None)
def test_tiled_equals_untiled_when_overlap_covers_receptive_field(arch, hparams, max_side):
    model = small_model(arch, **hparams)
    radius = model.receptive_radius
    rng = random.Random(f"{arch}{hparams}")
    np_rng = np.random.default_rng(rng.randint(0, 2**31))
    sizes = [(1, 1), (max_side, rng.randint(1, max_side))]
    sizes += [(rng.randint(1, max_side), rng.randint(1, max_side)) for _ in range(2)]
    tiled_at_least_once = False
    for h, w in sizes:
        image = np_rng.random((h, w, 3), dtype=np.float32)
        overlap = radius + rng.randint(0, 2)
        room = max_side - 2 * overlap - 2 * model.size_multiple    # a window smaller than the largest side
        tile = rng.randint(max(1, room // 6), max(1, room))
        whole = Engine(model, fp32(0, 0)).upscale(image)
        stats = RunStats()
        tiled = Engine(model, fp32(tile, overlap, batch=rng.randint(1, 3))).upscale(image, stats=stats)
        tiled_at_least_once |= stats.tiles > 1
        assert tiled.shape == (h * model.scale, w * model.scale, 3)
        err = float(np.abs(tiled - whole).max())
        assert err < 1e-4, f"{arch} {h}x{w} tile {tile} overlap {overlap}: max abs error {err}"
    assert tiled_at_least_once


def test_overlap_below_receptive_field_does_change_the_output():
    """The exactness test above can fail: with too little context, tiles do differ."""
    model = small_model("compact", num_conv=6, num_feat=8, scale=2)
    image = np.random.default_rng(1).random((60, 60, 3), dtype=np.float32)
    whole = Engine(model, fp32(0, 0)).upscale(image)
    tiled = Engine(model, fp32(20, 1)).upscale(image)
    assert np.abs(tiled - whole).max() > 1e-3


# --- precision, device, dtypes ---------------------------------------------------------------------
def test_fp16_on_cpu_is_a_precision_error():
    model = small_model("compact", num_conv=1, num_feat=4, scale=2)
    with pytest.raises(errors.PrecisionError, match="fp16"):
        Engine(model, EngineOptions(device="cpu", precision="fp16"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_missing_cuda_is_a_device_error():
    with pytest.raises(errors.DeviceError, match="cuda"):
        Engine(small_model("tiny"), EngineOptions(device="cuda"))


@pytest.mark.parametrize("bad", [dict(device="tpu"), dict(precision="int8"), dict(compile="maybe"),
                                 dict(batch=0), dict(threads=0), dict(tile_px=-1), dict(tile_px="big")])
def test_bad_options_are_usage_errors(bad):
    with pytest.raises(errors.UsageError):
        EngineOptions(**bad)


def test_auto_precision_falls_back_to_fp32_for_models_not_bf16_safe():
    from dataclasses import replace

    model = replace(small_model("tiny"), bf16_safe=False)
    assert resolve_precision("auto", torch.device("cpu"), model) == torch.float32


def test_bf16_autocast_is_close_to_fp32_on_a_smooth_image():
    model = small_model("compact", num_conv=3, num_feat=16, scale=2)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    image = np.stack([0.5 + 0.3 * np.sin(4 * xx), 0.5 + 0.3 * np.cos(3 * yy), 0.4 + 0.2 * xx * yy], 2)
    image = (image * 255).round().astype(np.uint8)
    ref = Engine(model, fp32(0, 0)).upscale(image)
    stats = RunStats()
    low = Engine(model, EngineOptions(device="cpu", precision="bf16", tile_px=0, compile="off")).upscale(
        image, stats=stats)
    assert stats.precision == "bf16"
    mse = np.mean((low.astype(np.float64) - ref) ** 2)
    assert mse > 0                       # bf16 really ran: results are not bit-identical
    assert 10 * np.log10(255.0**2 / mse) > 40


def test_rrdbnet_keeps_its_residual_trunk_in_fp32_under_autocast():
    """Convolutions in bf16, the 3 x num_block residual additions and the convolution that reads the
    image in fp32 (see archs/rrdbnet.py)."""
    model = small_model("rrdbnet", num_feat=8, num_block=2, num_grow_ch=4, scale=4)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0].dtype, output.dtype)     # returns None: the output is kept
        return hook

    hooks = [mod.register_forward_hook(record(name))
             for name, mod in (("rrdb", model.module.body[1]), ("conv", model.module.body[1].rdb2.conv3),
                               ("first", model.module.conv_first), ("last", model.module.conv_last))]
    x = torch.rand(1, 3, 12, 12)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.module(x)
    for h in hooks:
        h.remove()
    assert seen["rrdb"] == (torch.float32, torch.float32)         # the trunk
    assert seen["conv"] == (torch.bfloat16, torch.bfloat16)       # the work
    assert seen["first"] == (torch.float32, torch.float32)        # reading the image
    assert seen["last"] == (torch.bfloat16, torch.bfloat16)
    with torch.inference_mode():
        ref = model.module(x)
        assert ref.dtype == torch.float32 and (low.float() - ref).abs().max() < 0.05
        # devices without autocast (shape-only "meta" tensors, used to count MACs) still run
        assert model.module.to("meta")(x.to("meta")).shape == (1, 3, 48, 48)


def test_integer_dtypes_round_trip_and_agree_with_float():
    model = small_model("msrresnet", num_block=1, num_feat=8, scale=2)
    rng = np.random.default_rng(3)
    image16 = rng.integers(0, 65536, (23, 31, 3), dtype=np.uint16)
    out_float = Engine(model, fp32(16, 2)).upscale(image16.astype(np.float32) / 65535)
    out16 = Engine(model, fp32(16, 2)).upscale(image16)
    assert out16.dtype == np.uint16 and out16.shape == (46, 62, 3)
    from_float = np.rint(np.clip(out_float, 0, 1) * 65535)
    assert np.abs(out16 - from_float).max() <= 1               # x / 65535 vs x * (1 / 65535) in float32
    assert out16.max() > 255                                  # really 16-bit, not 8-bit scaled up
    out8 = Engine(model, fp32(16, 2)).upscale((image16 >> 8).astype(np.uint8))
    assert out8.dtype == np.uint8
    assert out_float.dtype == np.float32 and 0 <= out_float.min() and out_float.max() <= 1


def test_16_bit_input_keeps_its_low_bits_in_fp32_and_bf16_says_it_does_not(caplog):
    """fp32: the output's low byte carries information (as many values as a 16-bit gradient needs);
    bf16/fp16: the output is still 16-bit, and one info line says its precision is bf16's, once."""
    model = small_model("span", scale=2)
    yy, xx = np.mgrid[0:24, 0:24]
    image = (20000 + (xx * 113 + yy * 7)[..., None] * np.array([1, 2, 3])).astype(np.uint16)
    with caplog.at_level("INFO", logger="upscale"):
        out = Engine(model, fp32(0, 0)).upscale(image)
    assert len(np.unique(out & 0xFF)) > 200 and "16-bit input" not in caplog.text
    low = Engine(model, EngineOptions(device="cpu", precision="bf16", tile_px=0, compile="off", backend="torch"))
    with caplog.at_level("INFO", logger="upscale"):
        assert low.upscale(image).dtype == np.uint16
        low.upscale(image)
        low.upscale((image >> 8).astype(np.uint8))
    said = [r for r in caplog.records if "16-bit input computed in bf16" in r.getMessage()]
    assert len(said) == 1 and "precision fp32" in said[0].getMessage()


def test_channel_mismatch_and_bad_arrays_are_usage_errors():
    engine = Engine(small_model("tiny"), fp32(0, 0))
    with pytest.raises(errors.UsageError, match="3-channel"):
        engine.upscale(np.zeros((8, 8, 1), np.uint8))
    with pytest.raises(errors.UsageError, match="uint8"):
        engine.upscale(np.zeros((8, 8, 3), np.int32))


def test_progress_and_stats_report_every_tile_and_nothing_is_kept_between_calls():
    model = small_model("compact", num_conv=1, num_feat=4, scale=2)
    engine = Engine(model, fp32(24, 2, batch=4))
    image = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    seen: list[tuple[int, int]] = []
    stats = RunStats()
    first = engine.upscale(image, progress=lambda done, total: seen.append((done, total)), stats=stats)
    total = stats.tiles
    assert total > 4 and seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert stats.batches == -(-total // 4) and stats.forward_s > 0 and stats.compiled is False
    # 2 px of context < the receptive radius (3): not exact, so windows keep their full side
    assert stats.tile_shape == (24 + 4, 24 + 4) and stats.device == "cpu" and stats.precision == "fp32"
    np.testing.assert_array_equal(engine.upscale(image, stats=stats), first)
    assert stats.tiles == 2 * total and stats.batches == 2 * -(-total // 4)     # counters add up over calls
    assert next(model.module.parameters()).is_contiguous()     # the caller's module was not touched


def test_auto_tile_is_bounded_and_whole_image_when_small():
    engine = Engine(small_model("tiny"), EngineOptions(device="cpu", precision="fp32", tile_px="auto"))
    assert engine.tile_px_for(40, 40) == 0
    side = engine.tile_px_for(8000, 8000)
    assert 64 <= side <= 512


def test_probe_counts_conv_macs():
    model = small_model("srcnn", n1=8, n2=4, scale=2)
    cost = probe_cost(model)
    # per input px: 4 output px, each 9*9*3*8 + 8*4 + 5*5*4*3 MACs
    assert cost.num_convs == 3
    assert cost.macs_per_px == pytest.approx(4 * (81 * 3 * 8 + 8 * 4 + 25 * 4 * 3))


def test_compile_auto_stays_off_for_small_or_unknown_work():
    model = small_model("compact", num_conv=1, num_feat=4, scale=2)
    options = EngineOptions(device="cpu", precision="fp32", compile="auto")
    assert not Engine(model, options).compiled                               # work unknown
    assert not Engine(model, options, work=Workload(64 * 64)).compiled          # too little to repay compiling
    cost = probe_cost(model)
    small = compile_estimates(cost, torch.float32, 2, 10**6)
    large = compile_estimates(cost, torch.float32, 2, 10**9)
    assert large[0] == pytest.approx(1000 * small[0]) and large[1] == small[1] > 0


def test_repeated_blocks_count_once_towards_compile_time():
    model = small_model("rrdbnet", num_feat=8, num_block=3, num_grow_ch=4, scale=4)
    cost = probe_cost(model)
    # conv_first + 3 RRDBs x 15 convs + conv_body + conv_up1/up2/hr/last; compile traces one RRDB
    assert cost.num_convs == 2 + 3 * 15 + 4
    assert cost.compiled_convs == 2 + 15 + 4
    flat = probe_cost(small_model("compact", num_conv=3, num_feat=4, scale=2))
    assert flat.compiled_convs == flat.num_convs == 5


@pytest.mark.parametrize("shape, tile, expected", [
    # the windows eager tiling uses for that size, fitted: cores of 3 x 328 and 2 x 367 + 2 x 8 px context
    ((1000, 750), 384, (344, 383)),
    ((100, 60), 384, (100, 60)),      # smaller than a window: one window of the image, not a padded square
    ((1000, 750), 0, None),           # whole images: no fixed shape
])
def test_compiled_window_shape_fits_a_known_image_size(shape, tile, expected):
    model = small_model("compact", num_conv=1, num_feat=4, scale=2)
    options = EngineOptions(device="cpu", precision="fp32", tile_px=tile, overlap_px=8, compile="on")
    fitted = Engine(model, options, work=Workload(shape[0] * shape[1], shape))   # compiling itself is lazy
    assert fitted.compiled_shape == expected
    if tile:
        plan = fitted.plan_for(*shape)
        assert fitted.compiled_shape == (plan.tile_h, plan.tile_w)
        # without a known size, the full window of the tile serves any image at least that large
        assert Engine(model, options).compiled_shape == (tile + 16, tile + 16)


def test_only_the_compiled_window_shape_uses_the_compiled_graph():
    assert uses_compiled((400, 400), (400, 400))
    assert not uses_compiled((400, 400), (100, 60)) and not uses_compiled((400, 400), (400, 392))
    assert uses_compiled(None, (123, 45))          # whole images: one graph per size


def test_images_smaller_than_the_compiled_window_run_eagerly_with_the_eager_result():
    """Issue 16 #5: the compiled path padded images smaller than the tile up to it (reflection beyond
    the image: 5613 edge pixels differed by up to 109/255). Now such windows run through the eager
    module (nothing is compiled here, so this is fast) and the output is the eager one, bit for bit."""
    model = small_model("compact", num_conv=3, num_feat=8, scale=2)
    image = np.random.default_rng(4).random((30, 22, 3), dtype=np.float32)
    eager = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=32, overlap_px=4, compile="off",
                                        backend="torch")).upscale(image)       # the eager torch module's
    engine = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=32, overlap_px=4,
                                         compile="on"))
    assert engine.compiled and engine.compiled_shape == (40, 40)
    stats = RunStats()
    np.testing.assert_array_equal(engine.upscale(image, stats=stats), eager)
    assert stats.tile_shape == (30, 22) and stats.compiled is False
    assert engine.compiled and engine._compile_pending          # the compiled graph was never called


def test_tiny_network_tiled_agrees_with_untiled_at_any_tile():
    """Issue 16 #4 / issue 14: with the default context, tile 1/4/8/16/96 are all seam-free (>= 45 dB
    vs untiled, 8-bit output) on the tiny generator, and on a compact net whose receptive radius (42 px)
    exceeds the capped default context (32 px); the cost follows the geometry."""
    nets = [(small_model("tiny", scale=2), {1: 28, 4: 40, 8: 56, 16: 72, 96: 160}),
            (small_model("compact", num_conv=40, num_feat=4, scale=2), {1: 70, 4: 72, 8: 80, 16: 96, 96: 200})]
    for model, side_for_tile in nets:
        rng = np.random.default_rng(model.receptive_radius)
        for tile, side in side_for_tile.items():
            image = rng.integers(0, 256, (side, side - 3, 3), dtype=np.uint8)
            whole = Engine(model, fp32(0, 0)).upscale(image)
            engine = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=tile, compile="off"))
            stats = RunStats()
            tiled = engine.upscale(image, stats=stats)
            assert stats.tiles > 1, (model.arch, tile)
            quality = psnr(tiled, whole, crop_border=0, y_channel=False)
            assert quality >= 45, f"{model.arch} tile {tile}: {quality:.1f} dB"
    engine = Engine(small_model("tiny", scale=2), EngineOptions(device="cpu", tile_px=96, compile="off"))
    plan = engine.plan_for(256, 256)
    assert len(plan.ys) == len(plan.xs) == -(-(256 - 2 * 8) // 96) == 3            # 3 x 3 windows at stride <= 96
    # fitted: 3 cores of 80 cover the 240 px inside the outer context, so windows of 80 + 2 x 8
    assert engine.overlap_px == 8 and (plan.tile_h, plan.tile_w) == (96, 96)
    assert plan.num_tiles * 96**2 <= (256 * 112 / 96 + 112) ** 2                    # the cost bound


def test_output_too_large_for_memory_is_a_resource_error_before_any_work():
    """Issue 16 #9: -s 1000 died with MemoryError (an internal error). The check names the size."""
    assert check_output_fits(100, 50, 3, 4, np.uint8) == 400 * 200 * 3
    with pytest.raises(errors.ResourceError, match=r"output 300000 x 400000 x 3 needs [\d.]+ GiB; [\d.]+ \w+ free"):
        check_output_fits(100_000, 75_000, 3, 4, np.uint8)
    with pytest.raises(errors.UsageError, match="scale must be a positive number") as info:
        check_output_fits(10, 10, 3, float("nan"), np.uint8)
    assert info.value.params == ("scale",)
    engine = Engine(small_model("tiny", scale=2), fp32(0, 0))
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (400_000, 300_000, 3))  # no memory behind it
    with pytest.raises(errors.ResourceError, match="output 600000 x 800000 x 3 needs"):
        engine.upscale(huge)


@pytest.mark.parametrize("options, param", [
    (dict(tile_px=-1), "tile_px"), (dict(overlap_px=-2), "overlap_px"), (dict(batch=0), "batch"),
    (dict(threads=0), "threads"), (dict(device="tpu"), "device"), (dict(precision="int8"), "precision"),
    (dict(compile="maybe"), "compile")])
def test_option_errors_name_the_parameter_not_a_flag(options, param):
    """The library names its parameter (``params``); the CLI's table words it as the flag."""
    with pytest.raises(errors.UsageError) as info:
        EngineOptions(**options)
    assert info.value.params == (param,) and str(info.value).startswith(f"{param} must be")
    assert "--" not in str(info.value)


@pytest.mark.slow
def test_regionally_compiled_rrdbnet_matches_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = small_model("rrdbnet", num_feat=8, num_block=2, num_grow_ch=4, scale=2)
    image = np.random.default_rng(1).random((40, 30, 3), dtype=np.float32)
    eager = Engine(model, fp32(24, 4)).upscale(image)
    engine = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=24, overlap_px=4, compile="on"),
                    work=Workload(40 * 30, (40, 30)))       # the windows of this image are the compiled shape
    assert engine.compiled
    stats = RunStats()
    assert np.abs(engine.upscale(image, stats=stats) - eager).max() < 1e-3
    assert stats.compiled
    assert next(model.module.parameters()).is_contiguous()       # the caller's module was not touched


@pytest.mark.slow
def test_compiled_engine_matches_eager_with_one_tile_shape(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = small_model("compact", num_conv=2, num_feat=8, scale=2)
    image = np.random.default_rng(0).random((50, 37, 3), dtype=np.float32)
    eager = Engine(model, fp32(32, 2, batch=3)).upscale(image)
    stats = RunStats()
    engine = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=32, overlap_px=2, batch=3,
                                         compile="auto"), work=Workload(10**13))   # auto: plenty of work
    compiled = engine.upscale(image, stats=stats)
    assert stats.compiled and stats.tile_shape == (36, 36)                     # the full window
    assert np.abs(compiled - eager).max() < 1e-3
    assert any(tmp_path.iterdir())                                             # the cache was written
    # told the image size, it compiles the windows eager tiling uses for it
    eager_stats = RunStats()
    Engine(model, fp32(32, 2, batch=3)).upscale(image, stats=eager_stats)
    fitted = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=32, overlap_px=2, batch=3,
                                         compile="on"), work=Workload(50 * 37, (50, 37)))
    stats = RunStats()
    assert np.abs(fitted.upscale(image, stats=stats) - eager).max() < 1e-3
    assert stats.compiled and stats.tile_shape == eager_stats.tile_shape == fitted.compiled_shape
    # another size still runs through the same shape (exact with an overlap covering the receptive field)
    radius = model.receptive_radius
    exact = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=32, overlap_px=radius, batch=3,
                                        compile="on"), work=Workload(50 * 37, (50, 37)))
    other = np.random.default_rng(1).random((70, 90, 3), dtype=np.float32)    # another window shape: eager
    np.testing.assert_allclose(exact.upscale(other), Engine(model, fp32(0, 0)).upscale(other), atol=1e-3)


@pytest.mark.slow
def test_compile_failure_falls_back_to_eager_or_is_a_usage_error(monkeypatch, tmp_path):
    """A machine without a working C++ compiler: compiling fails at the first batch. ``auto`` keeps
    going eagerly with the same output; ``on`` is a one-line usage error."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    torch._dynamo.reset()
    model = small_model("compact", num_conv=2, num_feat=8, scale=2)
    image = np.random.default_rng(3).random((20, 24, 3), dtype=np.float32)
    eager = Engine(model, fp32(16, 2)).upscale(image)
    auto = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=16, overlap_px=2,
                                       compile="auto"), work=Workload(10**13))
    assert auto.compiled
    out = auto.upscale(image)
    assert not auto.compiled
    np.testing.assert_allclose(out, eager, atol=1e-6)
    torch._dynamo.reset()
    forced = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=16, overlap_px=2, compile="on"))
    with pytest.raises(errors.UsageError, match="^compile on") as info:
        forced.upscale(image)
    assert info.value.params == ("compile",)


def test_windows_are_fitted_only_where_tiling_is_exact():
    """Fitting shrinks windows to the image, which removes the extra shared context that hides the seams
    of a network whose receptive field exceeds the context: the engine fits only when exact."""
    exact = Engine(small_model("compact", num_conv=1, num_feat=4, scale=2), fp32(96, 8))   # radius 3 <= 8
    inexact = Engine(small_model("compact", num_conv=12, num_feat=4, scale=2), fp32(96, 8))  # radius 14 > 8
    assert exact.plan_for(256, 256).tile_h == 80 + 16          # 3 cores of 80 cover the 240 px inside
    assert inexact.plan_for(256, 256).tile_h == 96 + 16        # the full window
    assert len(exact.plan_for(256, 256).ys) == len(inexact.plan_for(256, 256).ys) == 3
    assert plan_tiles(256, 256, 96, 8, fit=False).tile_h == 112 and plan_tiles(256, 256, 96, 8).tile_h == 96


def test_batch_beyond_the_windows_and_numpy_integers(tmp_path):
    """--batch larger than the windows allocates rows for the windows only (it allocated every row:
    --batch 10000000 asked for 122 GB); numpy integers are integers; bools and absurd counts are not."""
    torch.manual_seed(0)
    module = build_module("compact", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_conv": 1, "scale": 2})
    model = Model(module, "compact", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_conv": 1, "scale": 2})
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    one = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=16, batch=1, compile="off"))
    many = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=np.int64(16), batch=4096,
                                       compile="off"))
    assert type(many.options.tile_px) is int and many.options.batch == 4096
    assert np.array_equal(one.upscale(image), many.upscale(image))
    for bad in ({"batch": 4097}, {"threads": 99999999999}, {"batch": True}, {"tile_px": True}):
        with pytest.raises(errors.UsageError):
            EngineOptions(**bad)


def test_a_forward_pass_that_runs_out_of_memory_is_a_resource_error(tmp_path):
    """A real allocation failure (an address-space limit in a child process), not an internal error."""
    import subprocess
    import sys

    code = """
import resource, sys
import numpy as np, torch
from upscale import errors
from upscale.archs import build_module
from upscale.engine import Engine, EngineOptions
from upscale.model import Model
hp = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 2, "scale": 4}
engine = Engine(Model(build_module("compact", hp), "compact", hp),
                EngineOptions(device="cpu", precision="fp32", tile_px=0, compile="off", threads=1))
image = np.zeros((700, 700, 3), np.uint8)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 200 * 2**20, resource.RLIM_INFINITY))
try:
    engine.upscale(image)
except errors.ResourceError as err:
    print("resource:", err.message)
    sys.exit(0)
print("no error")
sys.exit(1)
"""
    if not __import__("os").path.exists("/proc/self/statm"):
        pytest.skip("no /proc here")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "not enough memory to run one 700x700 window" in proc.stdout, (proc.stdout, proc.stderr[-2000:])


def test_a_constant_alpha_is_kept_exactly_and_costs_no_pass():
    """A fully opaque (or fully clear) alpha came out 250..255 (or 0..4) through the network."""
    from upscale.api import Upscaler, model_passes
    from upscale.io import Image

    torch.manual_seed(0)
    hp = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_conv": 1, "scale": 2}
    up = Upscaler(Model(build_module("compact", hp), "compact", hp), EngineOptions(device="cpu", precision="fp32"))
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    for level in (255, 0):
        image = Image(rgb, np.full((9, 11), level, np.uint8))
        stats = RunStats()
        out = up.upscale(image, stats=stats, outscale=3)
        assert out.alpha.shape == (27, 33) and (out.alpha == level).all()
        assert model_passes(image) == 1 and stats.tiles == 1
    varied = Image(rgb, np.random.default_rng(1).integers(0, 256, (9, 11), dtype=np.uint8))
    assert model_passes(varied) == 2 and model_passes(varied, "bicubic") == 1
