"""`upscale train`: exact resume, every preset, real learning, DDP, paired-data matching, configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import COMPACT_X2, textured, write_set
import torch
from PIL import Image
from safetensors.torch import load_file

from upscale.errors import ArchitectureMismatchError, CheckpointError, DataError, TrainingError, UsageError
from upscale.train import TrainConfig, build_config, train
from upscale.train.checkpoint import load_checkpoint
from upscale.train.data import blur_down_lr, load_hr_folders, load_paired, match_pairs, pair_key, sample_batch
from upscale.train.loop import lr_factor
from upscale.train.vgg import VGG19Features, layer_indices

@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("traindata")
    return {"hr": write_set(root / "hr", 6, 64, 0), "val": write_set(root / "val", 2, 48, 100)}


def small_cfg(data: dict[str, Path], out: Path, preset: str = "psnr", **over: object) -> TrainConfig:
    base = {"data": [str(data["hr"])], "out": str(out), "scale": 2, "gt_size": 32, "batch_size": 2,
            "max_iters": 4, "log_every": 1, "val_every": 100, "ckpt_every": 100, "precision": "fp32",
            "threads": 1, "arch": "compact", "hparams": {"num_feat": 8, "num_conv": 1}}
    base.update(over)
    return build_config(preset, base)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upscale", "train", "-q", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def dead_writer(target: Path) -> None:
    """A process that dies (os._exit) in the middle of an atomic write of ``target``."""
    code = ("import os, sys; from upscale.atomic import atomic_file; "
            "cm = atomic_file(sys.argv[1], 'wb'); f = cm.__enter__(); f.write(b'x' * 1000); f.flush(); os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(target)], check=False, timeout=60)
    assert any(f.name.startswith(f".{target.name}.") for f in target.parent.iterdir())


def net_hp(hp: dict) -> dict:
    return {"num_in_ch": 3, "num_out_ch": 3, **hp}


def loss_series(out: Path, key: str) -> list[float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in recs if key in r]


# --- 1. exact resume ---------------------------------------------------------------------------------
def test_kill9_and_resume_is_bit_exact(data: dict[str, Path], tmp_path: Path) -> None:
    settings = {"data": [str(data["hr"])], "scale": 2, "arch": "compact", "hparams": {"num_feat": 8, "num_conv": 2},
                "gt_size": 32, "batch_size": 3, "precision": "fp32", "threads": 1, "seed": 7,
                "scheduler": "multistep", "milestones": [5, 15], "ckpt_every": 10, "log_every": 5}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(build_config("psnr", settings, {"max_iters": 20, "out": str(straight)}), progress=False)

    config = tmp_path / "run.json"
    config.write_text(json.dumps(settings))
    ckpt10 = killed / "checkpoints" / "iter_00000010.pt"
    proc = subprocess.Popen([sys.executable, "-m", "upscale", "train", "-q", "--config", str(config),
                             "--max-iters", "100000", "--keep-last", "100000", "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 90
    while not ckpt10.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert ckpt10.exists(), err.decode()
    assert not list((killed / "checkpoints").glob("*.tmp"))  # nothing half-written under its real name

    # temps a kill -9 leaves mid-save: ours (owner process dead) and an earlier version's mkstemp name
    dead_writer(killed / "checkpoints" / "iter_00000030.pt")
    dead_writer(killed / "model.safetensors")
    legacy = killed / "checkpoints" / ".iter_00000030.pt.k3x9_a2b.tmp"
    legacy.write_bytes(b"half")
    r = run_cli("--out", str(killed), "--resume", str(ckpt10), "--max-iters", "20")
    assert r.returncode == 0, r.stderr
    left = [f.name for d in (killed, killed / "checkpoints") for f in d.iterdir() if f.name.startswith(".")]
    assert left == [], left
    a = load_checkpoint(straight / "checkpoints" / "iter_00000020.pt")
    b = load_checkpoint(killed / "checkpoints" / "iter_00000020.pt")
    for part in ("generator", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert a["opt_g"]["state"][0]["step"] == b["opt_g"]["state"][0]["step"] == 20
    # the exported model equals the EMA weights and loads in `upscale -m`
    from upscale.loading import load_model

    m = load_model(killed / "model.safetensors")
    assert m.arch == "compact" and m.scale == 2
    exported = load_file(str(killed / "model.safetensors"))
    assert all(torch.equal(exported[k], b["ema"][k]) for k in exported)
    # the resumed run's metrics continue the log without duplicated iterations
    iters = [json.loads(line)["iter"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert iters == [5, 10, 15, 20]


def test_resume_rejects_other_architecture(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = small_cfg(data, tmp_path / "run", ckpt_every=2)
    train(cfg, progress=False)
    other = small_cfg(data, tmp_path / "run", hparams={"num_feat": 4, "num_conv": 1})
    with pytest.raises(CheckpointError, match="num_feat"):
        train(other, progress=False, resume=tmp_path / "run" / "checkpoints" / "iter_00000004.pt")


# --- 2. every preset end to end ------------------------------------------------------------------------
TINY = {
    "psnr": {},
    "srgan": {"arch": "srresnet", "hparams": {"num_feat": 8, "num_block": 1, "bn": True}, "scale": 4,
              "vgg_weights": "random"},
    "esrgan": {"arch": "rrdbnet", "hparams": {"num_feat": 8, "num_block": 1, "num_grow_ch": 4}, "scale": 4,
               "vgg_weights": "random", "perceptual_layer": "relu2_2"},
    "tiny-gan": {"arch": "tiny", "hparams": {}},
}


@pytest.mark.parametrize("preset", sorted(TINY))
def test_preset_runs_and_losses_move(preset: str, data: dict[str, Path], tmp_path: Path) -> None:
    over = {**TINY[preset], "max_iters": 5, "val": [str(data["val"])], "val_every": 5}
    cfg = small_cfg(data, tmp_path / preset, preset, **over)
    assert cfg.preset == preset
    result = train(cfg, progress=False)
    assert result.iteration == 5 and result.model_path.is_file()
    assert result.last_val and result.bicubic
    with Image.open(result.out / "curves.png") as curves:
        assert curves.size == (1120, 360)
    g = loss_series(result.out, "loss/g_total")
    assert len(g) == 5 and all(np.isfinite(g)) and len(set(g)) > 1
    state = load_checkpoint(result.out / "checkpoints" / "iter_00000005.pt")
    if cfg.discriminator:
        d = loss_series(result.out, "loss/d_total")
        assert len(d) == 5 and len(set(d)) > 1
        assert len(loss_series(result.out, "loss/g_gan")) == 5
        assert state["opt_d"]["state"][0]["step"] == 5
    from upscale.loading import load_model

    assert load_model(result.model_path).scale == cfg.scale


def test_finetune_trains_only_the_trunk(data: dict[str, Path], tmp_path: Path) -> None:
    from upscale.archs import build_module
    from upscale.loading import model_state_dict, save_model

    hp = {"num_feat": 8, "num_block": 2, "num_grow_ch": 4, "scale": 2}
    net = build_module("rrdbnet", hp)
    init = tmp_path / "start.safetensors"
    save_model(init, model_state_dict(net), "rrdbnet", net_hp(hp))
    cfg = small_cfg(data, tmp_path / "ft", "finetune", init=str(init), arch="rrdbnet", hparams={},
                    max_iters=3, ema_decay=0.0)
    assert cfg.trainable == ["body.*"] and cfg.pixel_loss == "mse"
    result = train(cfg, progress=False)
    before, after = load_file(str(init)), load_file(str(result.model_path))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("body.") for k in changed)
    assert not torch.equal(before["body.0.rdb1.conv1.weight"], after["body.0.rdb1.conv1.weight"])
    # resuming needs the checkpoint only, not the --init file it started from
    init.unlink()
    more = small_cfg(data, tmp_path / "ft", "finetune", init=str(init), arch="rrdbnet", hparams={},
                     max_iters=5, ema_decay=0.0)
    assert train(more, progress=False, resume=tmp_path / "ft" / "checkpoints" / "iter_00000003.pt").iteration == 5


def test_init_with_other_hparams_rebuilds_the_same_weights(data: dict[str, Path], tmp_path: Path) -> None:
    """--init FILE --hparam silu_first=true: the file's weights in a network built with the changed
    setting (how a shipped SPAN with the raw first map is fine-tuned into the authors' form); a
    change that alters shapes, or an unknown name, is refused before training starts."""
    from upscale.archs import build_module
    from upscale.loading import load_model, model_state_dict, save_model

    hp = {"num_feat": 8, "scale": 2, "silu_first": False}
    net = build_module("span", hp)
    init = tmp_path / "raw.safetensors"
    save_model(init, model_state_dict(net), "span", net_hp(hp))
    cfg = small_cfg(data, tmp_path / "on", init=str(init), arch="span", hparams={"silu_first": True},
                    max_iters=1, ema_decay=0.0, learning_rate=1e-12)
    result = train(cfg, progress=False)
    out = load_model(result.model_path)
    assert out.hparams["silu_first"] is True and out.hparams["num_feat"] == 8
    before = load_file(str(init))
    after = load_file(str(result.model_path))
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)   # same weights (lr ~ 0)
    with pytest.raises(ArchitectureMismatchError, match="weights do not fit span: shape mismatch"):
        train(small_cfg(data, tmp_path / "wide", init=str(init), arch="span", hparams={"num_feat": 16},
                        max_iters=1), progress=False)
    with pytest.raises(UsageError, match="no hyperparameter 'nope'"):
        train(small_cfg(data, tmp_path / "bad", init=str(init), arch="span", hparams={"nope": 1},
                        max_iters=1), progress=False)


# --- 3. learning is real -----------------------------------------------------------------------------
def test_psnr_preset_beats_bicubic_by_2db(tmp_path: Path) -> None:
    hr = write_set(tmp_path / "hr", 8, 96, 0)
    val = write_set(tmp_path / "val", 3, 64, 500)
    cfg = build_config("psnr", {"data": [str(hr)], "val": [str(val)], "out": str(tmp_path / "run"), "scale": 2,
                                "gt_size": 48, "batch_size": 8, "max_iters": 200, "learning_rate": 2e-3,
                                "arch": "compact", "hparams": {"num_feat": 16, "num_conv": 3, "act_type": "lrelu"},
                                "val_every": 200, "log_every": 40, "ckpt_every": 1000, "threads": 1,
                                "precision": "fp32"})
    result = train(cfg, progress=False)
    gain = result.last_val["val"][0] - result.bicubic["val"][0]
    assert gain >= 2.0, f"PSNR gain over bicubic only {gain:.2f} dB"
    # measured progress, not wall time: every logged window ran, at a measured rate, and the loss fell
    recs = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in recs if "loss/g_total" in r]
    assert [r["iter"] for r in logged] == [40, 80, 120, 160, 200]
    assert all(r["it_per_s"] > 0 for r in logged)
    assert logged[-1]["loss/g_total"] < 0.8 * logged[0]["loss/g_total"]


# --- NaN, config, signals ----------------------------------------------------------------------------
def test_nan_loss_stops_and_keeps_last_good_checkpoint(data: dict[str, Path], tmp_path: Path) -> None:
    from upscale.archs import build_module
    from upscale.loading import model_state_dict, save_model

    hp = {"num_feat": 8, "num_conv": 1, "scale": 2, "act_type": "prelu"}
    sd = model_state_dict(build_module("compact", hp))
    # finite weights (loading refuses NaN/inf ones) that overflow: +-inf features mixed into NaN outputs
    sd["body.2.weight"].fill_(3e38)
    bad = tmp_path / "nan.safetensors"
    save_model(bad, sd, "compact", net_hp(hp))
    cfg = small_cfg(data, tmp_path / "run", init=str(bad), hparams={})
    with pytest.raises(TrainingError, match="g_pix became nan at iteration 1"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()   # failed before its first checkpoint: nothing left behind


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_saves_a_checkpoint_and_exits_130(signum: int, data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "upscale", "train", "-q", "--data", str(data["hr"]), "-s", "2",
                             "--arch", "compact", "--num-feat", "8", "--num-conv", "1", "--gt-size", "32",
                             "--batch-size", "2", "--max-iters", "1000000", "--precision", "fp32",
                             "--log-every", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at iteration" in err and "checkpoint saved" in err
    assert f"continue with: upscale train --out {out} --resume" in err
    ckpts = list((out / "checkpoints").glob("iter_*.pt"))
    assert len(ckpts) == 1 and load_checkpoint(ckpts[0])["iteration"] >= 1
    assert (out / "model.safetensors").is_file() and (out / "curves.png").is_file()


def test_config_layers_and_errors(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('max_iters = 7\nlearning_rate = 1e-3\n[hparams]\nnum_feat = 12\n')
    from upscale.train.config import read_config_file

    cfg = build_config("esrgan", read_config_file(toml), {"data": ["d"], "hparams": {"num_block": 2}})
    assert cfg.max_iters == 7 and cfg.learning_rate == 1e-3 and cfg.gan_type == "ragan"
    assert cfg.hparams == {"num_feat": 12, "num_block": 2} and cfg.gt_size == 128
    assert build_config("psnr", {"data": ["d"], "scale": 2}).gt_size == 96
    with pytest.raises(UsageError, match="unknown training option 'max_iter'"):
        build_config("psnr", {"data": ["d"], "max_iter": 3})
    with pytest.raises(UsageError, match="needs init"):
        build_config("finetune", {"data": ["d"]})
    with pytest.raises(UsageError, match="unknown preset"):
        build_config("nope", {"data": ["d"]})
    with pytest.raises(UsageError, match="multiple of the scale"):
        build_config("psnr", {"data": ["d"], "gt_size": 30})
    cos = build_config("psnr", {"data": ["d"], "max_iters": 100})
    assert lr_factor(cos, 1) == 1.0 and lr_factor(cos, 51) == pytest.approx(0.5, abs=1e-3)
    ms = build_config("esrgan", {"data": ["d"]})
    assert lr_factor(ms, 50_000) == 1.0 and lr_factor(ms, 50_001) == 0.5


def test_cli_refuses_to_overwrite_a_run(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = small_cfg(data, tmp_path / "run", max_iters=2)
    train(cfg, progress=False)
    r = run_cli("--data", str(data["hr"]), "--out", str(tmp_path / "run"), "-s", "2", "--arch", "compact")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = run_cli("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "other"))
    assert r.returncode == 2 and "missing" in r.stderr


# --- 4. DDP ------------------------------------------------------------------------------------------
def test_ddp_two_processes_match_one(data: dict[str, Path], tmp_path: Path) -> None:
    common = ["--data", str(data["hr"]), "-s", "2", "--arch", "compact", "--num-feat", "8", "--num-conv", "2",
              "--gt-size", "32", "--batch-size", "4", "--max-iters", "6", "--precision", "fp32", "--seed", "3",
              "--ckpt-every", "6", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "upscale", "train", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "upscale", "train", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=180, env=env)
    assert two.returncode == 0, two.stderr
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "iter_00000006.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "iter_00000006.pt")
    for k in a["generator"]:
        torch.testing.assert_close(a["generator"][k], b["generator"][k], rtol=1e-4, atol=1e-5)


def test_ddp_shards_are_the_single_process_batch(data: dict[str, Path]) -> None:
    pairs = load_hr_folders([str(data["hr"])], 2, min_hr_px=32)
    lr, hr = sample_batch(pairs, seed=1, iteration=9, batch_size=4, gt_size=32)
    parts = [sample_batch(pairs, seed=1, iteration=9, batch_size=4, gt_size=32, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([p[0] for p in parts]), lr) and torch.equal(torch.cat([p[1] for p in parts]), hr)
    again = sample_batch(pairs, seed=1, iteration=9, batch_size=4, gt_size=32)
    other = sample_batch(pairs, seed=1, iteration=10, batch_size=4, gt_size=32)
    assert torch.equal(again[1], hr) and not torch.equal(other[1], hr)
    # LR crops stay aligned with their HR crops: the LR of an HR crop is the crop of the cached LR
    assert lr.shape == (4, 3, 16, 16) and hr.shape == (4, 3, 32, 32)


# --- 5. paired-data matcher ------------------------------------------------------------------------------
def test_pair_keys() -> None:
    assert pair_key("baby_LRx4") == pair_key("baby_HR") == pair_key("baby") == "baby"
    assert pair_key("0001x4") == "0001" and pair_key("img_001-lr") == "img_001"
    assert pair_key("Butterfly_LRBICx2") == "butterfly"


def test_match_pairs_shuffled_suffixed_and_problems(tmp_path: Path) -> None:
    lr = [Path(n) for n in ("c_LR.png", "a_LR.png", "b_LR.png", "orphan_LR.png")]
    hr = [Path(n) for n in ("b_HR.png", "a_HR.png", "c.png", "lonely_HR.png", "a.png")]
    pairs, problems = match_pairs(lr, hr)
    assert [(p[0].name, p[1].name) for p in pairs] == [("a_LR.png", "a_HR.png"), ("b_LR.png", "b_HR.png"),
                                                       ("c_LR.png", "c.png")]
    assert any("a.png and a_HR.png" in p for p in problems)
    assert "orphan_LR.png has no HR" in problems and "lonely_HR.png has no LR" in problems


def test_load_paired_reports_mis_sized_pairs(tmp_path: Path) -> None:
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lr_dir.mkdir()
    hr_dir.mkdir()
    for i, name in enumerate(("x", "y", "z")):
        hr = textured(64, 64, i)
        Image.fromarray(hr).save(hr_dir / f"{name}_HR.png")
        lr_side = 16 if name == "y" else 32  # y is a x4 LR in a x2 set
        Image.fromarray(hr[:lr_side, :lr_side]).save(lr_dir / f"{name}x2.png")
    with pytest.raises(DataError, match=r"1 LR/HR pairing problem\(s\): yx2.png is 16x16 but y_HR.png is 64x64"):
        load_paired(str(lr_dir), str(hr_dir), 2, min_hr_px=32)
    (lr_dir / "yx2.png").unlink()
    (hr_dir / "y_HR.png").unlink()
    pairs = load_paired(str(lr_dir), str(hr_dir), 2, min_hr_px=32)
    assert pairs.names == ["x_HR.png", "z_HR.png"] and pairs.lr[0].shape == (32, 32, 3)
    cfg = build_config("psnr", {"lr_dir": str(lr_dir), "hr_dir": str(hr_dir), "out": str(tmp_path / "run"),
                                "scale": 2, "gt_size": 32, "batch_size": 2, "max_iters": 2, "precision": "fp32",
                                "threads": 1, "arch": "compact", "hparams": {"num_feat": 4, "num_conv": 1}})
    assert train(cfg, progress=False).model_path.is_file()


def test_degradations(tmp_path: Path) -> None:
    folder = write_set(tmp_path / "hr", 1, 65, 0)
    bic = load_hr_folders([str(folder)], 4, min_hr_px=32)
    blur = load_hr_folders([str(folder)], 4, min_hr_px=32, degradation="blur-down", blur_sigma=1.6)
    assert bic.hr[0].shape == (64, 64, 3) and bic.lr[0].shape == blur.lr[0].shape == (16, 16, 3)
    assert not np.array_equal(bic.lr[0], blur.lr[0])
    flat = np.full((64, 64, 3), 77, np.uint8)
    assert np.all(blur_down_lr(flat, 4, 2.0) == 77)  # normalised weights, edges included
    with pytest.raises(DataError, match="no images"):
        load_hr_folders([str(tmp_path)], 4, min_hr_px=32)


def test_scale_aug_adds_shrunk_copies(tmp_path: Path) -> None:
    from upscale.dataprep import mod_crop
    from upscale.matlab_resize import imresize
    from upscale.train.data import shrink_hr

    folder = write_set(tmp_path / "hr", 2, 100, 3)
    plain = load_hr_folders([str(folder)], 2, min_hr_px=64)
    aug = load_hr_folders([str(folder)], 2, min_hr_px=64, scale_aug=[0.8, 0.5])
    # 0.8 gives 80 px copies (kept); 0.5 gives 50 px, below the 64 px crop (skipped)
    assert len(plain) == 2 and len(aug) == 4
    assert aug.names == [plain.names[0], plain.names[0] + "@0.8", plain.names[1], plain.names[1] + "@0.8"]
    first = plain.hr[0]
    assert np.array_equal(aug.hr[0], first) and aug.hr[1].shape == (80, 80, 3)
    # the copy is MATLAB's bicubic shrink of the decoded image, rounded, and its LR is made from it
    expected = np.clip(np.floor(imresize(first, 0.8) + 0.5), 0, 255).astype(np.uint8)
    assert np.array_equal(aug.hr[1], mod_crop(expected, 2)) and np.array_equal(shrink_hr(first, 0.8), expected)
    assert aug.lr[1].shape == (40, 40, 3)
    with pytest.raises(UsageError, match="between 0 and 1"):
        build_config("psnr", {"data": ["d"], "scale_aug": [0.5, 1.0]})
    with pytest.raises(UsageError, match="needs HR folders"):
        build_config("psnr", {"lr_dir": "a", "hr_dir": "b", "scale_aug": [0.5]})


def test_scale_aug_flag_reaches_the_run(tmp_path: Path) -> None:
    folder = write_set(tmp_path / "hr", 2, 64, 4)
    r = subprocess.run([sys.executable, "-m", "upscale", "train", "--data", str(folder), "-s", "2", "--gt-size", "32",
                        "--arch", "compact", "--num-feat", "4", "--num-conv", "1", "--batch-size", "2",
                        "--max-iters", "1", "--precision", "fp32", "--threads", "1", "--scale-aug", "0.75, 0.5",
                        "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["scale_aug"] == [0.75, 0.5]
    assert "data: 6 images" in r.stdout + r.stderr        # 64 px originals, 48 and 32 px copies: all fit the crop
    bad = subprocess.run([sys.executable, "-m", "upscale", "train", "--data", str(folder), "--scale-aug", "0.5,x",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "expected comma-separated factors" in bad.stderr


# --- VGG -----------------------------------------------------------------------------------------------
def test_vgg_indices_follow_torchvision() -> None:
    idx = layer_indices()
    assert idx["conv1_1"] == 0 and idx["relu2_2"] == 8 and idx["conv5_4"] == 34 and idx["relu5_4"] == 35
    net = VGG19Features("relu2_2")
    assert len(net.features) == 9 and isinstance(net.features[8], torch.nn.ReLU)
    assert all(not p.requires_grad for p in net.parameters())
    sd = {f"features.{k}": torch.randn_like(v) for k, v in VGG19Features("conv5_4").features.state_dict().items()}
    full = VGG19Features("conv5_4")
    full.load_imagenet(sd, "test")
    assert torch.equal(full.features[34].weight, sd["features.34.weight"])


# --- issue 16: a sensible default run, nothing left by a failed one, checkpoint errors in our words ---
def test_data_alone_starts_a_run_in_the_default_folder(data: dict[str, Path], tmp_path: Path) -> None:
    from upscale.train.runfolder import default_run_folder

    (tmp_path / "runs" / "psnr-x2-4").mkdir(parents=True)          # empty: does not count as a run
    (tmp_path / "runs" / "psnr-x2-2").mkdir()
    (tmp_path / "runs" / "psnr-x2-2" / "config.json").write_text("{}")
    assert default_run_folder("psnr", 2, tmp_path / "runs").name == "psnr-x2-3"
    r = subprocess.run([sys.executable, "-m", "upscale", "train", "-q", "--data", str(data["hr"]), "-s", "2",
                        "--arch", "compact", "--num-feat", "4", "--num-conv", "1", "--gt-size", "32",
                        "--batch-size", "2", "--iters", "2", "--precision", "fp32", "--threads", "1"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    run = Path("runs") / "psnr-x2-3"
    lines = r.stderr.splitlines()
    assert lines[0] == f"run folder: {run}" and lines[1] == f"continue it with: upscale train --out {run} --resume"
    assert (tmp_path / run / "checkpoints" / "iter_00000002.pt").is_file()
    from click.testing import CliRunner
    from upscale.cli import cli

    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--max-iters, --iters" in help_text and "psnr 100000" in " ".join(help_text.split())


def test_bad_data_leaves_no_folder(tmp_path: Path) -> None:
    small = write_set(tmp_path / "small", 2, 16, 0)               # smaller than the 32 px crop
    out = tmp_path / "runs" / "new"
    cfg = build_config("psnr", {"data": [str(small)], "out": str(out), "scale": 2, "gt_size": 32,
                                "arch": "compact", "hparams": {"num_feat": 4, "num_conv": 1}})
    with pytest.raises(DataError, match="no training image"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists()
    r = run_cli("--data", str(small), "--out", str(out), "-s", "2", "--gt-size", "32", "--arch", "compact")
    assert r.returncode == 1 and "no training image" in r.stderr and not (tmp_path / "runs").exists()


def test_corrupt_checkpoint_names_the_previous_good_one(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(small_cfg(data, out, ckpt_every=2), progress=False)
    bad = out / "checkpoints" / "iter_00000004.pt"
    bad.write_bytes(bad.read_bytes()[:1000])                        # truncated
    good = out / "checkpoints" / "iter_00000002.pt"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    text = str(info.value)
    assert text == (f"{bad}: this checkpoint cannot be read (truncated or corrupt); previous good checkpoint: "
                     f"{good} (use resume {good})")
    r = run_cli("--out", str(out), "--resume")
    assert r.returncode == 1 and f"(use --resume {good})" in r.stderr
    assert "weights_only" not in r.stderr and len([ln for ln in r.stderr.splitlines() if ln.startswith("upscale:")]) == 1
    torch.save({"iteration": 1, "generator": {}, "code": Image.new("L", (1, 1))}, bad)  # pickles an object
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        load_checkpoint(bad)


# --- precision auto on a CPU with native bf16: measured once, cached, kept on resume ------------------
@pytest.fixture
def native_bf16(monkeypatch, tmp_path):
    """The rule's answer for precision auto on the CPU is bf16 (as with avx512_bf16 or AMX; elsewhere
    torch emulates bf16, which the tiny generator does not mind); a tuning cache of the test's own."""
    monkeypatch.setattr("upscale.device.cpu_bf16_flags", lambda: ("avx512_bf16",))
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tune.json"


def _train_auto(data, out, lines, **over):
    train(small_cfg(data, out, precision="auto", ckpt_every=2, **over), echo=lines.append, progress=False)
    notes = [line for line in lines if line.startswith("precision auto:")]
    assert len(notes) == 1, lines
    return notes[0]


def test_auto_training_precision_is_measured_once_cached_and_kept_on_resume(data, tmp_path, native_bf16,
                                                                           any_load_kept):
    lines: list[str] = []
    note = _train_auto(data, tmp_path / "a", lines)
    chosen = note.split()[2]
    assert chosen in ("bf16", "fp32") and "generator step measured here" in note
    assert next(i for i, line in enumerate(lines) if line.startswith("timing the generator")) < lines.index(note)
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "iter_00000004.pt")["precision"] == chosen
    (entry,) = json.loads(native_bf16.read_text())["entries"]
    assert entry["key"]["precision"] == "train-auto" and entry["result"]["precision"] == chosen
    assert set(entry["result"]["estimate_s"]) == {"bf16", "fp32"}
    from click.testing import CliRunner
    from upscale.cli import cli

    shown = CliRunner().invoke(cli, ["tune", "--show"]).output
    assert "train-auto" in shown and f"[train compact]: runs {chosen} (training step: bf16 ~" in shown

    # a later run of the same generator, batch and patch takes the cached choice without measuring
    other = "fp32" if chosen == "bf16" else "bf16"
    data_ = json.loads(native_bf16.read_text())
    data_["entries"][0]["result"]["precision"] = other
    native_bf16.write_text(json.dumps(data_))
    lines = []
    assert _train_auto(data, tmp_path / "b", lines) == f"precision auto: {other} (measured faster on this CPU earlier)"
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "iter_00000004.pt")["precision"] == other

    # resuming run a keeps the precision it started in, whatever the cache says now
    lines = []
    train(small_cfg(data, tmp_path / "a", precision="auto", ckpt_every=2, max_iters=6), echo=lines.append,
          progress=False, resume=tmp_path / "a" / "checkpoints" / "iter_00000002.pt")
    assert f"precision auto: {chosen} (the precision this run started in)" in lines
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "iter_00000006.pt")["precision"] == chosen


def test_auto_training_precision_measurement_leaves_the_run_as_it_was(data, tmp_path, native_bf16, any_load_kept):
    """The same seed trains to the same weights whether the choice was measured in this run or read from
    the cache (the probe runs on a copy, on constant input, with the random streams put back)."""
    lines: list[str] = []
    _train_auto(data, tmp_path / "measured", lines)
    lines = []
    assert "earlier" in _train_auto(data, tmp_path / "cached", lines)
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "iter_00000004.pt") for name in ("measured", "cached"))
    for k in a["generator"]:
        assert torch.equal(a["generator"][k], b["generator"][k]), k


def test_explicit_precision_is_not_measured(data, tmp_path, native_bf16):
    lines: list[str] = []
    train(small_cfg(data, tmp_path / "x", precision="bf16"), echo=lines.append, progress=False)
    assert not any(line.startswith("precision auto:") for line in lines) and not native_bf16.exists()


# --- validation reads and scores as the bench does ---------------------------------------------------

def test_validation_scores_equal_the_bench_gray_images_included(tmp_path, weights_file):
    from upscale import load_model
    from upscale.api import Upscaler
    from upscale.bench import BenchOptions, run_bench
    from upscale.bench.methods import LoadedModel
    from upscale.engine import EngineOptions
    from upscale.train.validation import bicubic_scores, evaluate, load_val_sets

    folder = write_set(tmp_path / "Set", 1, 40, 7)
    Image.fromarray(textured(38, 42, 8)[..., 0]).save(folder / "gray.png")     # one plane, as Set14's bridge
    model = load_model(str(weights_file("compact", COMPACT_X2, 3, "val_x2")))
    sets = load_val_sets([str(folder)], 2)
    assert sets["Set"][0].hr.shape[2] == 1                                      # gray stays one plane
    up = Upscaler(model, EngineOptions(tile_px=0, precision="fp32", device="cpu"))
    loaded = LoadedModel("m", 2, up, "cpu", "float32")
    bench = run_bench(folder, BenchOptions(scales=(2,), baselines=("bicubic",), lpips=False, warmup_runs=0),
                      [loaded])
    by_method = {row.method: row for row in bench.rows}
    scores, _ = evaluate(model.module.float(), sets, 2, torch.device("cpu"))
    assert bicubic_scores(sets, 2)["Set"][0] == pytest.approx(by_method["bicubic"].psnr_db, abs=1e-9)
    assert scores["Set"][0] == pytest.approx(by_method["m"].psnr_db, abs=1e-9)


def test_validation_folders_too_small_unreadable_or_sharing_a_name(tmp_path):
    from upscale.train.validation import load_val_sets

    a, b = write_set(tmp_path / "a" / "Set", 1, 40, 1), write_set(tmp_path / "b" / "Set", 1, 40, 2)
    sets = load_val_sets([str(a), str(b)], 2)                   # both kept, named by their paths
    assert sorted(sets) == sorted([str(a), str(b)])
    with pytest.raises(DataError, match="given twice"):
        load_val_sets([str(a), str(a)], 2)
    Image.fromarray(textured(5, 5, 3)).save(a / "tiny.png")
    with pytest.raises(DataError) as info:
        load_val_sets([str(a)], 2)
    assert info.value.path == str(a / "tiny.png") and "too small" in info.value.message
    (a / "tiny.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as info:
        load_val_sets([str(a)], 2)
    assert info.value.path == str(a / "tiny.png")


# --- bad values, a file in the way, a preset changed on resume: one line, never an internal error --------

def _train_cli(*args: object):
    from click.testing import CliRunner

    from upscale.cli import cli

    return CliRunner().invoke(cli, ["train", "-q", *map(str, args)], catch_exceptions=False)


TINY_FLAGS = ["-s", "2", "--arch", "compact", "--num-feat", "8", "--num-conv", "1", "--gt-size", "32",
              "--batch-size", "2", "--precision", "fp32", "--threads", "1"]


@pytest.mark.parametrize("flags, words", [
    (["--betas", "2", "2"], "betas must each be in [0, 1)"),
    (["--workers", "-1"], "workers must be >= 0"),
    (["--discriminator", "patch", "--gan-weight", "0.1", "--d-learning-rate", "-1"], "d_learning_rate must be positive"),
    (["--scheduler", "multistep", "--milestones", "1", "--gamma", "-1"], "gamma must be positive"),
])
def test_values_that_cannot_work_are_usage_errors(data, tmp_path, flags, words):
    res = _train_cli("--data", data["hr"], *TINY_FLAGS, "--iters", 2, "--out", tmp_path / "run", *flags)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and words in lines[0], res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("values, words", [({"max_iters": "abc"}, "max_iters must be a whole number"),
                                           ({"betas": 5}, "betas must be two numbers"),
                                           ({"val": "Set5"}, "val must be a list of strings"),
                                           ({"learning_rate": True}, "learning_rate must be a number")])
def test_a_config_file_value_of_the_wrong_kind_names_the_file(data, tmp_path, values, words):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(values))
    res = _train_cli("--data", data["hr"], *TINY_FLAGS, "--config", config, "--out", tmp_path / "run")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and str(config) in lines[0] and words in lines[0], res.stderr


def test_an_out_below_a_file_is_one_line_naming_it(data, tmp_path):
    (tmp_path / "afile").write_text("")
    res = _train_cli("--data", data["hr"], *TINY_FLAGS, "--iters", 2, "--out", tmp_path / "afile" / "run")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "afile is not a folder" in lines[0], res.stderr
    assert "internal error" not in lines[0]


def test_resume_with_another_preset_is_refused_and_a_cut_metrics_line_is_dropped(data, tmp_path):
    out = tmp_path / "run"
    res = _train_cli("--data", data["hr"], *TINY_FLAGS, "--iters", 2, "--ckpt-every", 2, "--log-every", 1,
                     "--out", out)
    assert res.exit_code == 0, res.output
    refused = _train_cli("--out", out, "--resume", "--preset", "esrgan", "--iters", 4)
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1 and "--preset esrgan" in lines[0] and "--init" in lines[0]
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 3, "loss/g_pi')                      # an append cut short
    res = _train_cli("--out", out, "--resume", "--iters", 4)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss/g_pix" in r] == [1, 2, 3, 4]


# --- stops between records, kills before the first checkpoint, init vs arch --------------------------
def _stop_on(words: str):
    """An echo that sends this process SIGTERM when a line with ``words`` is said: the run stops
    cleanly at the end of that iteration, as after a Ctrl-C."""
    def echo(msg: str) -> None:
        if words in msg:
            signal.raise_signal(signal.SIGTERM)
    return echo


def _records(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time_s", "it_per_s")} for r in recs]


def test_a_stop_between_log_records_resumes_to_the_same_records_and_rng(data: dict[str, Path], tmp_path: Path) -> None:
    """Stopped at iteration 11 (the signal comes during the validation of 10; records every 6): the
    record of iteration 12 still averages iterations 7-12, and the torch RNG state saved at 20 is the unstopped run's (the data
    loader draws its worker seed from its own generator)."""
    over = {"val": [str(data["val"])], "max_iters": 20, "log_every": 6, "val_every": 10, "ckpt_every": 100}
    straight = train(small_cfg(data, tmp_path / "straight", **over), progress=False)
    stopped = small_cfg(data, tmp_path / "stopped", **over)
    first = train(stopped, progress=False, echo=_stop_on("iter 10: validation"))
    assert first.interrupted and first.iteration == 11
    resumed = train(stopped, progress=False, resume=tmp_path / "stopped" / "checkpoints" / "iter_00000011.pt")
    assert resumed.iteration == 20 and not resumed.interrupted
    assert _records(straight.out) == _records(resumed.out)
    a = load_checkpoint(straight.out / "checkpoints" / "iter_00000020.pt")
    b = load_checkpoint(resumed.out / "checkpoints" / "iter_00000020.pt")
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_a_stop_at_iteration_0_logs_the_bicubic_baseline_once(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = small_cfg(data, tmp_path / "run", val=[str(data["val"])], max_iters=2)
    first = train(cfg, progress=False, echo=_stop_on("bicubic baseline"))
    assert first.interrupted and first.iteration == 0
    train(cfg, progress=False, resume=tmp_path / "run" / "checkpoints" / "iter_00000000.pt")
    assert [r["iter"] for r in _records(tmp_path / "run") if "bicubic/val/psnr" in r] == [0]


def test_resume_after_a_kill_before_the_first_checkpoint_starts_over(data: dict[str, Path], tmp_path: Path) -> None:
    """kill -9 before any checkpoint leaves config.json and metrics.jsonl: the printed `--resume`
    line starts the run over from its config (it used to say there was no checkpoint, while a new
    run there was refused as the folder 'already holds a run')."""
    out = tmp_path / "killed"
    flags = ["--data", str(data["hr"]), *TINY_FLAGS, "--seed", "4", "--log-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "upscale", "train", "-q", *flags, "--max-iters", "1000000",
                             "--ckpt-every", "1000000", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 90
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert (out / "config.json").is_file() and not (out / "checkpoints").exists(), err.decode()
    res = _train_cli("--out", out, "--resume", "--max-iters", 3)
    assert res.exit_code == 0, res.output
    assert "has no checkpoint" in res.stderr and "starting it over" in res.stderr
    straight = _train_cli(*flags, "--max-iters", 3, "--ckpt-every", 1000000, "--out", tmp_path / "straight")
    assert straight.exit_code == 0, straight.output
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["iter"] for r in _records(out)] == [1, 2, 3]


def test_init_of_another_arch_than_the_one_asked_for_is_refused_in_one_line(data, tmp_path, tiny_x2):
    flags = ["--data", data["hr"], "-s", "2", "--gt-size", "32", "--batch-size", "2", "--precision", "fp32",
             "--threads", "1", "--init", tiny_x2, "--iters", 1]
    res = _train_cli(*flags, "--arch", "srresnet", "--out", tmp_path / "run")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.stderr
    assert f"--init {tiny_x2} is a compact model, but --arch is srresnet" in lines[0]
    assert not (tmp_path / "run").exists()
    # the preset's own default arch (rrdbnet) is no request: the init's architecture trains
    ok = _train_cli(*flags, "--out", tmp_path / "ok")
    assert ok.exit_code == 0, ok.output


def test_unreadable_training_images_are_all_named_in_one_line(data: dict[str, Path], tmp_path: Path) -> None:
    """Good images, gray/RGBA/16-bit/CMYK ones (all read as RGB), files of other kinds, a symlink loop
    and a folder named like an image are fine; every file that cannot be read is named in the one error."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    src = Image.fromarray(textured(40, 40, 3))
    src.save(folder / "rgb.png")
    src.convert("L").save(folder / "gray.png")
    src.convert("RGBA").save(folder / "rgba.png")
    src.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(src.convert("L")).astype(np.uint16) * 257).save(folder / "gray16.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "dir.png").mkdir()
    pairs = load_hr_folders([str(folder)], 2, min_hr_px=32)
    assert len(pairs) == 5 and all(hr.shape == (40, 40, 3) for hr in pairs.hr)
    (folder / "fake.png").write_text("not a png")
    (folder / "zero.png").write_bytes(b"")
    (folder / "trunc.png").write_bytes((folder / "rgb.png").read_bytes()[:200])
    res = _train_cli("--data", folder, *TINY_FLAGS, "--iters", 1, "--out", tmp_path / "run")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.stderr
    assert "3 training image(s) cannot be read" in lines[0] and str(folder) in lines[0]
    assert all(name in lines[0] for name in ("fake.png", "zero.png", "trunc.png"))
    assert not (tmp_path / "run").exists()
