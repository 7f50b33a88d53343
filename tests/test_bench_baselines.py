"""benchmarks/perf/baselines.py: the whole-command baselines' tile loop (Real-ESRGAN's tile_process)
covers every pixel once and pastes each window's core where it belongs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def baselines():
    sys.path.insert(0, str(BENCH))
    try:
        from perf import baselines as module
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.mark.parametrize("h, w, tile, pad", [(64, 64, 0, 10), (50, 37, 16, 5), (512, 512, 200, 10), (7, 9, 3, 4)])
def test_cores_cover_every_pixel_once(baselines, h, w, tile, pad):
    count = np.zeros((h, w), dtype=int)
    for rows, cols, core_r, core_c in baselines.tile_boxes(h, w, tile, pad):
        assert 0 <= rows.start < rows.stop <= h and 0 <= cols.start < cols.stop <= w
        y0, x0 = rows.start + core_r.start, cols.start + core_c.start
        count[y0:y0 + core_r.stop - core_r.start, x0:x0 + core_c.stop - core_c.start] += 1
        if tile:   # the context is pad px wherever the image allows
            assert core_r.start == min(pad, rows.start + core_r.start)
    assert (count == 1).all()
    assert baselines.computed_px(h, w, tile, pad) >= h * w


def test_tile_loop_equals_one_pass_for_a_pointwise_network(baselines):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)

    def nearest_x2(window: np.ndarray) -> np.ndarray:
        return window.repeat(2, axis=0).repeat(2, axis=1)

    out = baselines.tile_loop(pixels, nearest_x2, 2, 16, 3)
    np.testing.assert_array_equal(out, nearest_x2(pixels))
