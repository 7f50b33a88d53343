"""The winograd backend for the SRResNet family (SRGAN's generator, BasicSR's MSRResNet): equal to the
eager network (BatchNorm folded, PReLU per channel, x2/x3/x4, with and without BN), in stripes of
rows as whole, window by window in a batch, through the CLI as the torch backend; the memory figure
is what a window held."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image as PILImage

from upscale.api import load_model
from upscale.backends import choose_backend, winograd_windows
from upscale.backends import winograd_srresnet
from upscale.cli import cli

CASES = [
    ("srresnet", {"num_feat": 16, "num_block": 2, "scale": 4}, (11, 14)),
    ("srresnet", {"num_feat": 16, "num_block": 2, "scale": 3, "bn": False}, (9, 7)),
    ("srresnet", {"num_feat": 8, "num_block": 1, "scale": 2}, (5, 13)),
    ("msrresnet", {"num_feat": 16, "num_block": 2, "scale": 4}, (11, 14)),
    ("msrresnet", {"num_feat": 16, "num_block": 2, "scale": 2}, (6, 9)),
    ("msrresnet", {"num_feat": 16, "num_block": 1, "scale": 3}, (7, 5)),
]


def _model(weights_file, arch: str, hp: dict):
    """The network from a saved file, with BatchNorm statistics and PReLU slopes made non-trivial."""
    model = load_model(str(weights_file(arch, hp, 4, f"{arch}_" + "_".join(f"{k}{v}" for k, v in hp.items()))))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                                  (m.bias, -0.1, 0.1)):
                    t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
            if isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) - 0.5)
    return model


def _outputs(model, runner, n: int, size: tuple[int, int]):
    x = torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(2))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return model.module.eval()(x).permute(0, 2, 3, 1), runner(x), [runner(x[i:i + 1]) for i in range(n)]


@pytest.mark.parametrize("arch, hp, size", CASES)
def test_srresnet_windows_equal_the_eager_network(weights_file, arch, hp, size):
    model = _model(weights_file, arch, hp)
    runner = winograd_windows(model)
    assert isinstance(runner, winograd_srresnet.SRResNetWindows)
    expected, got, alone = _outputs(model, runner, 2, size)
    assert got.shape == expected.shape == (2, size[0] * hp["scale"], size[1] * hp["scale"], 3)
    assert (got - expected).abs().max().item() < 1e-4
    assert max((got[i:i + 1] - a).abs().max().item() for i, a in enumerate(alone)) < 1e-5
    assert runner.workspace_bytes(2, *size) == runner.workspaces.values()[0].held_bytes()      # the batch of 2


@pytest.mark.parametrize("arch, hp, size", [CASES[0], CASES[3]])
@pytest.mark.parametrize("rows", [1, 3])
def test_the_upsampling_part_in_stripes_equals_the_whole(weights_file, monkeypatch, arch, hp, size, rows):
    """Stripes of ``rows`` kept rows (each reading ``UP_HALO`` more each side): the eager output."""
    model = _model(weights_file, arch, hp)
    runner = winograd_windows(model)
    w = -(-size[1] // 4) * 4
    # a budget of rows + 2 * UP_HALO input rows of the largest map
    budget = (rows + 2 * winograd_srresnet.UP_HALO) * 4 * w * hp["num_feat"] * hp["scale"] ** 2
    monkeypatch.setattr(winograd_srresnet, "UP_STRIPE_BYTES", budget)
    assert runner._stripe(1, w, size[0]) == (rows + 2 * winograd_srresnet.UP_HALO, rows)
    expected, got, _ = _outputs(model, runner, 1, size)
    assert (got - expected).abs().max().item() < 1e-4


def test_the_cli_runs_an_srgan_generator_on_winograd_as_torch_does(tmp_path, weights_file):
    path = weights_file("srresnet", {"num_feat": 16, "num_block": 2, "scale": 4}, 4, "srgan_cli")
    src = tmp_path / "a.png"
    PILImage.fromarray(np.random.default_rng(3).integers(0, 256, (10, 13, 3), dtype=np.uint8)).save(src)
    outputs = {}
    for backend in ("torch", "winograd"):
        out = tmp_path / f"{backend}.png"
        res = CliRunner().invoke(cli, [str(src), "-m", str(path), "--backend", backend, "--precision", "fp32",
                                       "--device", "cpu", "-o", str(out), "-q"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        with PILImage.open(out) as im:
            outputs[backend] = np.asarray(im).astype(int)
    assert outputs["winograd"].shape == (40, 52, 3)
    assert np.abs(outputs["winograd"] - outputs["torch"]).max() <= 1
    assert choose_backend("winograd", load_model(str(path)), "cpu", "fp32", 2) == "winograd"
