"""`upscale convert` for PyTorch files (issue 3, Must show 3): the safetensors it writes loads with
`upscale -m OUT` and gives the same image as the source file. (ncnn pairs: tests/test_ncnn.py.)"""

from __future__ import annotations

import re

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from click.testing import CliRunner
from PIL import Image

from upscale import loading
from upscale.archs import build_module
from upscale.cli import cli

HP = {"num_feat": 8, "num_block": 2, "num_grow_ch": 4, "scale": 4}


def esrgan_repo_key(key: str) -> str:
    """Our canonical RRDBNet key -> the ESRGAN repository's name (the layout of RRDB_ESRGAN_x4.pth)."""
    if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.(conv\d\.\w+)", key):
        return f"RRDB_trunk.{m.group(1)}.RDB{m.group(2)}.{m.group(3)}"
    head, _, param = key.partition(".")
    return {"conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2", "conv_hr": "HRconv"}.get(
        head, head) + "." + param


@pytest.fixture
def esrgan_pth(tmp_path):
    torch.manual_seed(5)
    net = build_module("rrdbnet", HP).eval()
    path = tmp_path / "RRDB_tiny_x4.pth"
    torch.save({esrgan_repo_key(k): v for k, v in net.state_dict().items()}, path)
    return path, net


def test_convert_pth_writes_safetensors_with_metadata_that_runs_the_same(esrgan_pth, tmp_path):
    src, net = esrgan_pth
    result = CliRunner().invoke(cli, ["convert", str(src)])
    assert result.exit_code == 0, result.output
    out = src.with_suffix(".safetensors")
    assert "detected rrdbnet" in result.output and "num_block=2" in result.output and str(out) in result.output
    with safetensors.safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert "conv_first.weight" in f.keys() and "body.1.rdb3.conv5.weight" in f.keys()
    assert meta["upscale.arch"] == "rrdbnet" and '"num_block": 2' in meta["upscale.hparams"]

    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loading.load_model(out).module(x), net(x))
        assert torch.equal(loading.load_model(out).module(x), loading.load_model(src).module(x))

    rng = np.random.default_rng(0)
    image = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(image)
    outputs = []
    for weights in (src, out):
        target = tmp_path / f"from_{weights.suffix[1:]}.png"
        run = CliRunner().invoke(cli, [str(image), "-m", str(weights), "-o", str(target), "--tile", "0", "-q"])
        assert run.exit_code == 0, run.output
        outputs.append(np.asarray(Image.open(target)))
    assert outputs[0].shape == (48, 64, 3) and np.array_equal(outputs[0], outputs[1])


def test_convert_refuses_to_overwrite_and_checks_the_output_name(esrgan_pth, tmp_path):
    src, _ = esrgan_pth
    out = tmp_path / "given.safetensors"
    assert CliRunner().invoke(cli, ["convert", str(src), str(out)]).exit_code == 0
    again = CliRunner().invoke(cli, ["convert", str(src), str(out)])
    assert again.exit_code == 2 and "pass --force" in again.output
    assert CliRunner().invoke(cli, ["convert", str(src), str(out), "--force"]).exit_code == 0
    wrong = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "x.pth")])
    assert wrong.exit_code == 2 and "must be a .safetensors file" in wrong.output
    same = CliRunner().invoke(cli, ["convert", str(out)])
    assert same.exit_code == 0 and (tmp_path / "given.converted.safetensors").is_file()


def test_convert_unknown_layout_and_bad_ncnn_fail_with_one_line(tmp_path):
    junk = tmp_path / "junk.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, junk)
    result = CliRunner().invoke(cli, ["convert", str(junk)])
    assert result.exit_code == 1 and "unknown weights layout" in result.output
    assert not junk.with_suffix(".safetensors").exists()

    param = tmp_path / "net.param"
    param.write_text("7767517\n1 1\nInput data 0 1 data\n")
    param.with_suffix(".bin").write_bytes(b"")
    result = CliRunner().invoke(cli, ["convert", str(param)])
    assert result.exit_code == 1 and "cannot convert" in result.output and str(param) in result.output
    assert not param.with_suffix(".safetensors").exists()


# --- issue 16 #9: typed one-line errors, the same message as `run` ---------------------------------
def test_convert_into_a_file_that_is_not_a_folder_is_one_line(esrgan_pth, tmp_path):
    src, _ = esrgan_pth
    (tmp_path / "afile").write_text("a plain file\n")
    result = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "afile" / "out.safetensors")])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot write output" in lines[0] and "afile is not a folder" in lines[0]
    assert "internal error" not in result.output
    missing = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "nowhere" / "out.safetensors")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RRDB_tiny_x4.pth", "afile"]


@pytest.mark.parametrize("hparams_json, phrase", [
    ('{"num_feat": 8, "num_block": 2, "num_grow_ch": 4, "scale": 4, "bogus": 1}', "cannot build rrdbnet"),
    ('{"num_feat": 16, "num_block": 2, "num_grow_ch": 4, "scale": 4}', "shape mismatch"),
    ('["not", "an", "object"]', "must be a JSON object"),
])
def test_convert_of_bad_metadata_says_what_run_says(esrgan_pth, tmp_path, hparams_json, phrase):
    src, net = esrgan_pth
    path = tmp_path / "meta.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
                                metadata={"upscale.arch": "rrdbnet", "upscale.hparams": hparams_json})
    converted = CliRunner().invoke(cli, ["convert", str(path), str(tmp_path / "out.safetensors")])
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    ran = CliRunner().invoke(cli, [str(image), "-m", str(path), "-o", str(tmp_path / "o.png"), "-q"])
    assert converted.exit_code == ran.exit_code == 1, (converted.output, ran.output)
    assert converted.output == ran.output and phrase in converted.output and "meta.safetensors" in converted.output
    assert "internal error" not in converted.output and len(converted.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()
