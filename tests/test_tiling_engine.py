"""Tile geometry, the band stitcher and the engine: tiled == untiled, precisions, dtypes, errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from upscale import errors
from upscale.archs import build_module
from upscale.engine import (Engine, EngineOptions, TorchStitchOps, Workload, compile_estimates, probe_cost,
                            resolve_precision)
from upscale.model import Model
from upscale.tiling import BandStitcher, plan_tiles


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


@pytest.mark.parametrize("seed", range(4))
def test_plan_covers_image_with_equal_windows_and_unit_weights(seed):
    rng = random.Random(seed)
    for _ in range(60):
        h, w = rng.randint(1, 400), rng.randint(1, 400)
        overlap, multiple, scale = rng.randint(0, 12), rng.choice([1, 2, 4]), rng.choice([1, 2, 3, 4])
        least = -(-3 * overlap // multiple) * multiple + multiple      # > 3 x overlap, in whole multiples
        tile = rng.choice([0, rng.randint(least, least + 150)])
        fixed = rng.random() < 0.3 and tile > 0
        shape = (tile, rng.randint(least, least + 150)) if fixed else None     # windows need not be square
        plan = plan_tiles(h, w, tile, overlap, multiple, scale, fixed_shape=shape)
        assert plan.height % multiple == 0 and plan.width % multiple == 0
        assert plan.height >= h and plan.width >= w
        for axis, (starts, size, length, weights) in enumerate(((plan.ys, plan.tile_h, plan.height, plan.row_weights),
                                                                (plan.xs, plan.tile_w, plan.width, plan.col_weights))):
            assert starts[0] == 0 and starts[-1] + size == length          # covers, ends at the edge
            assert all(s % multiple == 0 for s in starts) and size % multiple == 0
            if tile and not fixed:
                assert size <= max(tile, multiple) or len(starts) == 1
            if fixed:
                assert size == max(shape[axis] // multiple, 1) * multiple
            for a, b in zip(starts, starts[1:]):
                assert a < b and a + size - b >= 3 * overlap                  # enough shared context
            assert all(len(wt) == size * scale and wt.min() >= 0 for wt in weights)
            for i, wt in enumerate(weights):                                  # discarded margins
                if i > 0:
                    assert not wt[:overlap * scale].any()
                if i + 1 < len(weights):
                    assert not wt[len(wt) - overlap * scale:].any()
            np.testing.assert_allclose(_axis_sum(starts, weights, length * scale, scale), 1.0, atol=1e-6)
        # every window has the same shape, so the 2-D weights stack
        assert {plan.weight(win).shape for win in plan.windows()} == {(plan.tile_h * scale, plan.tile_w * scale)}


def test_plan_fades_rather_than_cuts_and_keeps_borders_at_one():
    plan = plan_tiles(90, 300, 96, 8, 1, 2)
    assert len(plan.ys) == 1 and plan.row_weights[0].min() == 1.0    # one row: weight 1 at both borders
    assert len(plan.xs) > 2
    first, last = plan.col_weights[0], plan.col_weights[-1]
    assert first[0] == 1.0 and last[-1] == 1.0
    fade = first[(first > 0) & (first < 1)]
    assert len(fade) >= 8 * 2                                        # a ramp of >= overlap px, not a step
    assert np.all(np.diff(fade) < 0)


def test_plan_rejects_tile_smaller_than_its_overlap():
    with pytest.raises(ValueError, match="too small"):
        plan_tiles(500, 500, 30, 10)
    with pytest.raises(errors.UsageError, match="--tile"):
        EngineOptions(tile_px=30, overlap_px=10)


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
        least = -(-3 * overlap // model.size_multiple) * model.size_multiple + model.size_multiple
        tile = rng.randint(least, max(least, max_side - 4))
        whole = Engine(model, fp32(0, 0)).upscale(image)
        stats: dict = {}
        tiled = Engine(model, fp32(tile, overlap, batch=rng.randint(1, 3))).upscale(image, stats=stats)
        tiled_at_least_once |= stats["tiles"] > 1
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
    stats: dict = {}
    low = Engine(model, EngineOptions(device="cpu", precision="bf16", tile_px=0, compile="off")).upscale(
        image, stats=stats)
    assert stats["precision"] == "bf16"
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
    stats: dict = {}
    first = engine.upscale(image, progress=lambda done, total: seen.append((done, total)), stats=stats)
    total = stats["tiles"]
    assert total > 4 and seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert stats["batches"] == -(-total // 4) and stats["forward_s"] > 0 and stats["compiled"] is False
    np.testing.assert_array_equal(engine.upscale(image), first)
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
    ((1000, 750), 384, None),      # a tall photo: the windows eager tiling would use, not 384 squares
    ((100, 60), 384, (100, 60)),   # smaller than a tile: one window of the image, not 384x384
    ((1000, 750), 0, None),        # whole images: no fixed shape
])
def test_compiled_tile_shape_fits_a_known_image_size(shape, tile, expected):
    model = small_model("compact", num_conv=1, num_feat=4, scale=2)
    options = EngineOptions(device="cpu", precision="fp32", tile_px=tile, overlap_px=8, compile="on")
    fitted = Engine(model, options, work=Workload(shape[0] * shape[1], shape))   # compiling itself is lazy
    eager = None
    if tile:
        plan = plan_tiles(*shape, tile, 8, model.size_multiple)
        eager = (plan.tile_h, plan.tile_w)
    assert fitted.compiled_shape == (expected or eager)
    if tile:
        assert max(fitted.compiled_shape) < tile
        # without a known size, one square of the tile side serves any image
        assert Engine(model, options).compiled_shape == (tile // model.size_multiple * model.size_multiple,) * 2


@pytest.mark.slow
def test_regionally_compiled_rrdbnet_matches_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = small_model("rrdbnet", num_feat=8, num_block=2, num_grow_ch=4, scale=2)
    image = np.random.default_rng(1).random((40, 30, 3), dtype=np.float32)
    eager = Engine(model, fp32(24, 4)).upscale(image)
    engine = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=24, overlap_px=4, compile="on"))
    assert engine.compiled
    assert np.abs(engine.upscale(image) - eager).max() < 1e-3
    assert next(model.module.parameters()).is_contiguous()       # the caller's module was not touched


@pytest.mark.slow
def test_compiled_engine_matches_eager_with_one_tile_shape(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = small_model("compact", num_conv=2, num_feat=8, scale=2)
    image = np.random.default_rng(0).random((50, 37, 3), dtype=np.float32)
    eager = Engine(model, fp32(32, 2, batch=3)).upscale(image)
    stats: dict = {}
    engine = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=32, overlap_px=2, batch=3,
                                         compile="auto"), work=Workload(10**13))   # auto: plenty of work
    compiled = engine.upscale(image, stats=stats)
    assert stats["compiled"] and stats["tile_shape"] == (32, 32)               # fixed shape, not balanced
    assert np.abs(compiled - eager).max() < 1e-3
    assert any(tmp_path.iterdir())                                             # the cache was written
    # told the image size, it compiles the windows eager tiling uses for it
    eager_stats: dict = {}
    Engine(model, fp32(32, 2, batch=3)).upscale(image, stats=eager_stats)
    fitted = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=32, overlap_px=2, batch=3,
                                         compile="on"), work=Workload(50 * 37, (50, 37)))
    stats = {}
    assert np.abs(fitted.upscale(image, stats=stats) - eager).max() < 1e-3
    assert stats["compiled"] and stats["tile_shape"] == eager_stats["tile_shape"] != (32, 32)
    # another size still runs through the same shape (exact with an overlap covering the receptive field)
    radius = model.receptive_radius
    exact = Engine(model, EngineOptions(device="cpu", precision="fp32", tile_px=32, overlap_px=radius, batch=3,
                                        compile="on"), work=Workload(50 * 37, (50, 37)))
    other = np.random.default_rng(1).random((70, 90, 3), dtype=np.float32)    # larger: no padding up
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
    with pytest.raises(errors.UsageError, match="--compile on"):
        forced.upscale(image)
