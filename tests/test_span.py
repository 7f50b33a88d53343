"""SPAN (archs/span.py): the collapsed 3x3 kernel is the trained branch form, the authors' files (.pth and
.safetensors, ``eval_conv`` kernels and ``no_norm`` included) load and compute what they were saved
from, the deploy form is the same function with a quarter of the parameters, tiles agree with the whole
image at the family's receptive radius, and odd SPAN files fail in one typed line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from PIL import Image as PILImage
from torch.nn import functional as F

from upscale import api, errors
from upscale.archs import span
from upscale.cli import cli
from upscale.engine import Engine, EngineOptions, RunStats
from upscale.loading import META_HPARAMS, canonicalize, detect, load_model, save_model
from upscale.resolve import weights_file

SD = dict[str, torch.Tensor]

SMALL = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "scale": 4}
# The authors' input shift (DIV2K's RGB mean) and range, written out here rather than read from span.py.
AUTHORS_MEAN = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
AUTHORS_RANGE = 255.0
FAST = ["--precision", "fp32", "--compile", "off", "-q"]


# --- helpers ---------------------------------------------------------------------------------------
def random_span(seed: int, **hparams) -> span.SPAN:
    """A small random SPAN in its training form, every tensor (biases included) random and the
    upsampler rescaled so that most outputs of a [0, 1] image fall inside [0, 1]: a test whose output
    the engine clamps to 0 or 1 everywhere would prove nothing."""
    hp = {**span.DEFAULTS, **SMALL, **hparams}
    torch.manual_seed(seed)
    net = span.build(**hp).eval()
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn_like(p) * (0.7 / fan_in ** 0.5 if p.ndim > 1 else 0.1))
        x = torch.rand(1, hp["num_in_ch"], 24, 24, generator=torch.Generator().manual_seed(seed))
        up = net.upsampler[0]
        up.weight.mul_(0.2 / float(net(x).std()))
        up.bias.zero_()
        up.bias.add_(0.5 - float(net(x).mean()))               # centred near 0.5, spread about 0.2
    return net


def branch_conv(sd: SD, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """A Conv3XC as trained by the authors: the input zero-padded by one, then 1x1 -> 3x3 (no padding)
    -> 1x1, plus the 1x1 skip of the unpadded input."""
    y = F.pad(x, (1, 1, 1, 1))
    for i in range(3):
        y = F.conv2d(y, sd[f"{prefix}.conv.{i}.weight"], sd[f"{prefix}.conv.{i}.bias"])
    return y + F.conv2d(x, sd[f"{prefix}.sk.weight"], sd[f"{prefix}.sk.bias"])


def reference_forward(sd: SD, x: torch.Tensor, scale: int, norm: bool, silu_first: bool = True) -> torch.Tensor:
    """SPAN's forward pass written from the paper's figure and the authors' code, on a state dict in
    their training layout, with every 3x3 conv in its branch form: independent of the module under
    test. The authors' block hands back its first map after an in-place SiLU has overwritten it, so
    conv_cat sees SiLU(first) (``silu_first``; checked against spandrel, the library under chaiNNer,
    in ``test_spandrel_reads_our_authors_layout_as_the_same_function``); our first models used the
    raw map (``silu_first=False``)."""
    if norm:
        x = (x - AUTHORS_MEAN.to(x.dtype)) * AUTHORS_RANGE
    feat = branch_conv(sd, "conv_1", x)
    out = feat
    for i in range(1, 7):
        first = branch_conv(sd, f"block_{i}.c1_r", out)
        third = branch_conv(sd, f"block_{i}.c3_r", F.silu(branch_conv(sd, f"block_{i}.c2_r", F.silu(first))))
        out = (third + out) * (torch.sigmoid(third) - 0.5)
        if i == 1:
            after_first_block = out
    if silu_first:
        first = F.silu(first)
    fused = F.conv2d(torch.cat([feat, branch_conv(sd, "conv_2", out), after_first_block, first], 1),
                     sd["conv_cat.weight"], sd["conv_cat.bias"])
    return F.pixel_shuffle(F.conv2d(fused, sd["upsampler.0.weight"], sd["upsampler.0.bias"], padding=1), scale)


def authors_file_dict(net: span.SPAN) -> SD:
    """What the authors' code saves: the branches *and* each Conv3XC's ``eval_conv`` (the collapsed
    kernel of its last eval-mode run), plus ``no_norm`` when the model is not mean-shifted."""
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for name, mod in net.named_modules():
        if isinstance(mod, span.Conv3XC):
            w, b = mod.fused()
            sd[f"{name}.eval_conv.weight"], sd[f"{name}.eval_conv.bias"] = w.detach().clone(), b.detach().clone()
    return sd


def write_weights(path: Path, sd: SD, wrap: str = "") -> Path:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({wrap: sd} if wrap else sd, path)
    return path


def fp32(tile_px: int, overlap_px: int, batch: int = 1) -> EngineOptions:
    return EngineOptions(device="cpu", precision="fp32", tile_px=tile_px, overlap_px=overlap_px, batch=batch,
                         compile="off")


def invoke(args: list) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def photo(path: Path, size: tuple[int, int] = (23, 17)) -> Path:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PILImage.fromarray(arr).save(path)
    return path


def n_params(sd: SD) -> int:
    return sum(v.numel() for v in sd.values())


# --- (a) the collapsed kernel is the branch form -----------------------------------------------------
@pytest.mark.parametrize("c_in, c_out", [(3, 8), (8, 8), (1, 8)])
def test_collapsed_kernel_equals_branch_form_everywhere(c_in: int, c_out: int) -> None:
    """One zero-padded 3x3 conv with the collapsed kernel computes exactly what the authors' training
    branches compute on the zero-padded input: in the interior (the 1x1 -> 3x3 -> 1x1 chain is linear)
    and on the border too (the input is padded *before* the first 1x1, so the padded ring enters the
    chain as zeros, which is what the collapsed conv's padding supplies)."""
    torch.manual_seed(c_in * 10 + c_out)
    conv = span.Conv3XC(c_in, c_out).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_(0, 0.5)                        # biases non-zero: they cross the chain too
    x = torch.randn(2, c_in, 11, 9, dtype=torch.float64)
    sd = {f"m.{k}": v for k, v in conv.state_dict().items()}
    with torch.no_grad():
        ours, theirs = conv(x), branch_conv(sd, "m", x)
    torch.testing.assert_close(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    w, b = conv.fused()
    assert w.shape == (c_out, c_in, 3, 3) and b.shape == (c_out,)


def test_gain_is_two_and_gradients_reach_every_branch() -> None:
    """The middle conv is twice as wide (the authors' gain1=2 in every Conv3XC of SPAN), and training
    the collapsed kernel trains all four branch convs."""
    conv = span.Conv3XC(4, 6)
    assert tuple(conv.conv[1].weight.shape) == (12, 8, 3, 3)
    conv(torch.randn(1, 4, 5, 5)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())


@pytest.mark.parametrize("norm, silu_first", [(True, True), (False, True), (True, False)])
def test_module_computes_the_authors_training_forward(norm: bool, silu_first: bool) -> None:
    net = random_span(1, norm=norm, silu_first=silu_first).double()
    x = torch.rand(1, 3, 13, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sd = {k: v for k, v in net.state_dict().items() if k != "no_norm"}
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_forward(sd, x, 4, norm, silu_first), rtol=1e-10, atol=1e-10)
        # the two variants are different functions: the flag is not a no-op
        other = reference_forward(sd, x, 4, norm, not silu_first)
        assert (net(x) - other).abs().max() > 1e-4


def test_the_authors_files_use_silu_first_and_ours_keep_their_raw_map(tmp_path: Path) -> None:
    """A file in the authors' layout (no metadata of ours) is read with SiLU on the first map, as their
    code computes; a file with our metadata written before the flag existed (our first SPAN models)
    keeps the raw map; the shipped SPAN models (fine-tuned into the authors' form) name the flag."""
    net = random_span(3)
    path = write_weights(tmp_path / "4x-community.pth", authors_file_dict(net))
    assert load_model(path).hparams["silu_first"] is True
    old = tmp_path / "ours-before-the-flag.safetensors"
    hp = {k: v for k, v in {**span.DEFAULTS, **SMALL}.items() if k != "silu_first"}
    save_model(old, random_span(3, silu_first=False).state_dict(), "span", hp)
    assert load_model(old).hparams["silu_first"] is False
    for name in ("default-x4", "default-x2", "default-x4-gan"):
        assert api.load_model(name).hparams["silu_first"] is True
        assert json.loads(safetensors.safe_open(str(weights_file(name)), "pt").metadata()[META_HPARAMS])["silu_first"]


def test_default_x2_exports_to_the_authors_layout(tmp_path: Path) -> None:
    """The shipped default-x2 is in the authors' SiLU-first form, so `convert --authors-layout` writes
    a file that reads back from its keys alone (as spandrel/chaiNNer would) as the same network."""
    out = tmp_path / "2x-upscale-default.safetensors"
    result = invoke(["convert", weights_file("default-x2"), out, "--authors-layout"])
    assert result.exit_code == 0, result.output
    plain = tmp_path / "keys-only.safetensors"
    safetensors.torch.save_file(safetensors.torch.load_file(str(out)), str(plain))
    back, ours = load_model(plain), api.load_model("default-x2")
    assert back.hparams["silu_first"] is True and back.scale == 2
    x = torch.rand(1, 3, 20, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(back.module(x), ours.module(x), rtol=1e-4, atol=1e-4)


def test_convert_authors_layout_round_trips_and_refuses_our_raw_map_models(tmp_path: Path) -> None:
    """`upscale convert --authors-layout`: a deploy-form SPAN with SiLU on the first map becomes the
    authors' full layout (branches and eval_conv for every conv), which reads back from its keys alone
    as the same function; a model with the raw map (our shipped ones) is refused, naming the flag."""
    net = random_span(4)
    sd, hp = span.collapse(net.state_dict(), {**span.DEFAULTS, **SMALL})
    deploy = tmp_path / "deploy.safetensors"
    save_model(deploy, sd, "span", hp)
    out = tmp_path / "authors.safetensors"
    result = invoke(["convert", deploy, out, "--authors-layout"])
    assert result.exit_code == 0, result.output
    written = safetensors.torch.load_file(str(out))
    convs = [n for n, m in net.named_modules() if isinstance(m, span.Conv3XC)]
    assert all(f"{n}.sk.weight" in written and f"{n}.eval_conv.weight" in written for n in convs)
    plain = tmp_path / "no-metadata.safetensors"        # as another tool would see it: keys only
    safetensors.torch.save_file(written, str(plain))
    back = load_model(plain)
    assert back.hparams["silu_first"] is True and back.hparams["deploy"] is False
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(back.module(x), net(x), rtol=1e-4, atol=1e-4)
    raw = tmp_path / "raw-map.safetensors"
    raw_sd, raw_hp = span.collapse(random_span(4, silu_first=False).state_dict(),
                                   {**span.DEFAULTS, **SMALL, "silu_first": False})
    save_model(raw, raw_sd, "span", raw_hp)
    refused = invoke(["convert", raw, tmp_path / "x.safetensors", "--authors-layout"])
    assert refused.exit_code == 2 and "--authors-layout" in refused.output and "silu_first" in refused.output
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.optional
def test_spandrel_reads_our_authors_layout_as_the_same_function(tmp_path: Path, monkeypatch) -> None:
    """spandrel (the model loader under chaiNNer) opens a file in the authors' layout and computes what
    we compute from it. spandrel imports torchvision in two architectures we do not use; where
    torchvision cannot be imported (it cannot against this torch build) a stub of those two names
    stands in, so only spandrel's SPAN code runs."""
    import importlib
    import sys
    import types

    try:
        importlib.import_module("torchvision.transforms.functional")
    except Exception:
        stub = types.ModuleType("torchvision.transforms.functional")
        stub.InterpolationMode, stub.rotate, stub.normalize = None, None, None
        for name, mod in (("torchvision", types.ModuleType("torchvision")),
                          ("torchvision.transforms", types.ModuleType("torchvision.transforms")),
                          ("torchvision.transforms.functional", stub)):
            monkeypatch.setitem(sys.modules, name, mod)
    spandrel = pytest.importorskip("spandrel")
    net = random_span(6)
    path = write_weights(tmp_path / "4x-community.safetensors", authors_file_dict(net))
    theirs = spandrel.ModelLoader().load_from_file(str(path))
    assert theirs.architecture.name == "SPAN" and theirs.scale == 4
    ours = load_model(path)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(theirs.model.eval()(x), ours.module(x), rtol=1e-4, atol=1e-4)
    # the shipped default-x2, exported by `upscale convert --authors-layout`, is the same in spandrel
    exported = tmp_path / "2x-default.safetensors"
    assert invoke(["convert", weights_file("default-x2"), exported, "--authors-layout"]).exit_code == 0
    theirs = spandrel.ModelLoader().load_from_file(str(exported))
    assert theirs.architecture.name == "SPAN" and theirs.scale == 2
    with torch.no_grad():
        torch.testing.assert_close(theirs.model.eval()(x), api.load_model("default-x2").module(x), rtol=1e-4, atol=1e-4)


# --- (b) the authors' files ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, wrap", [(".pth", ""), (".pth", "params_ema"), (".safetensors", "")])
@pytest.mark.parametrize("norm", [True, False])
def test_authors_file_loads_and_computes_what_it_was_saved_from(tmp_path: Path, suffix: str, wrap: str,
                                                                norm: bool) -> None:
    net = random_span(3, norm=norm)
    saved = authors_file_dict(net)
    assert ("no_norm" in saved) is (not norm)
    path = write_weights(tmp_path / f"4x-SomeSPAN{suffix}", saved, wrap)
    model = load_model(path)
    assert model.arch == "span"
    assert model.hparams == {**span.DEFAULTS, **SMALL, "norm": norm, "deploy": False}
    assert model.receptive_radius == 21 and model.size_multiple == 1
    assert not any("eval_conv" in k for k in model.module.state_dict())
    x = torch.rand(1, 3, 12, 9, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = net(x)
        assert 0.2 < float(((expected > 0) & (expected < 1)).float().mean())   # not all clamped
        torch.testing.assert_close(model.module(x), expected, rtol=1e-5, atol=1e-5)


def test_canonicalize_drops_only_the_recomputable_kernels() -> None:
    net = random_span(5, norm=False)
    saved = authors_file_dict(net)
    canon = canonicalize(saved)
    assert set(canon) == set(net.state_dict()) and "no_norm" in canon
    assert set(saved) - set(canon) == {k for k in saved if ".eval_conv." in k}
    assert span.canonicalize(net.state_dict()) is None          # our training form: already canonical


# the keys spandrel's SPAN detection requires (chaiNNer-org/spandrel, architectures/SPAN/__init__.py)
SPANDREL_NEEDS = ("conv_1.sk.weight", "block_1.c1_r.sk.weight", "block_1.c1_r.eval_conv.weight",
                  "block_1.c3_r.eval_conv.weight", "conv_cat.weight", "conv_2.sk.weight", "conv_2.eval_conv.weight",
                  "upsampler.0.weight")


@pytest.mark.parametrize("norm", [True, False])
def test_authors_layout_is_what_their_code_saves_and_reads_back(tmp_path: Path, norm: bool) -> None:
    """Our training form and the deploy form are each missing keys that spandrel (chaiNNer) asks for;
    ``to_authors_layout`` writes the full layout, which they and we read."""
    net = random_span(17, norm=norm)
    hp = {**SMALL, "norm": norm}
    theirs = span.to_authors_layout(net.state_dict(), hp)
    expected = authors_file_dict(net)
    assert set(theirs) == set(expected) and all(torch.equal(theirs[k], expected[k]) for k in expected)
    assert all(k in theirs for k in SPANDREL_NEEDS)
    assert not all(k in net.state_dict() for k in SPANDREL_NEEDS)
    assert not all(k in span.collapse(net.state_dict(), hp)[0] for k in SPANDREL_NEEDS)
    model = load_model(write_weights(tmp_path / "export.pth", theirs))
    assert model.hparams["norm"] is norm and model.hparams["deploy"] is False
    x = torch.rand(1, 3, 9, 8, generator=torch.Generator().manual_seed(18))
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), rtol=1e-5, atol=1e-5)


def test_cli_upscales_with_an_authors_pth(tmp_path: Path) -> None:
    net = random_span(6)
    weights = write_weights(tmp_path / "4x-SomeSPAN.pth", authors_file_dict(net), "params")
    src = photo(tmp_path / "cat.png")
    res = invoke([src, "-m", weights, "-o", tmp_path / "out.png", "--tile", "0", *FAST])
    assert res.exit_code == 0, res.output
    with PILImage.open(tmp_path / "out.png") as im:
        got = np.asarray(im.convert("RGB")).astype(np.int16)
    x = torch.from_numpy(np.array(PILImage.open(src).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    expected = np.rint(y * 255).astype(np.int16)
    assert got.shape == (17 * 4, 23 * 4, 3)
    assert np.abs(got - expected).max() <= 1
    assert 0 < float(((y > 0) & (y < 1)).mean())


# --- (c) the deploy form ------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", [True, False])
def test_deploy_form_is_the_same_function_with_a_quarter_of_the_parameters(tmp_path: Path, norm: bool) -> None:
    net = random_span(7, norm=norm)
    hp = {**SMALL, "norm": norm, "silu_first": True}
    deployed, deploy_hp = span.collapse(net.state_dict(), hp)
    assert deploy_hp == {**hp, "deploy": True}
    assert not any(".sk." in k or ".conv." in k for k in deployed)
    assert ("no_norm" in deployed) is (not norm)

    ours = tmp_path / "deploy.safetensors"
    save_model(ours, deployed, "span", deploy_hp)
    bare = write_weights(tmp_path / "deploy_bare.safetensors", deployed)      # no metadata: keys alone
    x = torch.rand(2, 3, 15, 11, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = net(x)
    for path in (ours, bare):
        model = load_model(path)
        assert model.arch == "span" and model.hparams["deploy"] is True and model.hparams["norm"] is norm
        assert all(hasattr(m, "eval_conv") and not hasattr(m, "sk")
                   for m in model.module.modules() if isinstance(m, span.Conv3XC))
        with torch.no_grad():
            torch.testing.assert_close(model.module(x), expected, rtol=1e-5, atol=1e-5)
    ratio = n_params(deployed) / n_params(net.state_dict())
    assert 0.15 < ratio < 0.3, ratio


def test_deploy_form_of_a_real_sized_network_is_about_a_quarter() -> None:
    """The 48-feature x4 network of the authors' release: 1.84 M trained parameters, 0.43 M deployed."""
    with torch.device("meta"):
        trained = span.build(num_feat=48).state_dict()
        deployed = span.build(num_feat=48, deploy=True).state_dict()
    assert n_params(trained) == 1_840_488 and n_params(deployed) == 426_288


# --- (d) tiles agree with the whole image ---------------------------------------------------------------
@pytest.mark.parametrize("scale, size, tile", [(2, (70, 61), 16), (4, (60, 53), 8)])
def test_tiled_equals_untiled_at_the_receptive_radius(tmp_path: Path, scale: int, size: tuple, tile: int) -> None:
    net = random_span(9, scale=scale)
    path = write_weights(tmp_path / "span.pth", authors_file_dict(net))
    model = load_model(path)
    radius = model.receptive_radius
    image = np.random.default_rng(scale).random((*size, 3), dtype=np.float32)
    whole = Engine(model, fp32(0, 0)).upscale(image)
    assert 0.2 < float(((whole > 0) & (whole < 1)).mean())
    stats = RunStats()
    tiled = Engine(model, fp32(tile, radius, batch=2)).upscale(image, stats=stats)
    assert stats.tiles > 1 and tiled.shape == (size[0] * scale, size[1] * scale, 3)
    err = float(np.abs(tiled - whole).max())
    assert err < 1e-4, f"max abs error {err} with tile {tile}, overlap {radius}"


def test_receptive_radius_is_exact() -> None:
    """An output pixel depends on exactly the input pixels within ``receptive_radius`` of its source
    pixel (the support of its gradient): the radius is neither too small (seams) nor larger than it
    need be (wasted context). A gradient, not a bumped input: the outermost influence is a product of
    21 small weights, which a difference of two outputs near 0.5 would round away."""
    net = random_span(10, scale=2).double()
    radius, c = span.receptive_radius({}), 30
    x = torch.rand(1, 3, 2 * c + 1, 2 * c + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    net(x)[0, 0, 2 * c, 2 * c].backward()
    reached = x.grad.abs().amax((0, 1)) > 0
    rows, cols = torch.nonzero(reached.any(1)).flatten(), torch.nonzero(reached.any(0)).flatten()
    assert (int(rows.min()), int(rows.max())) == (c - radius, c + radius)
    assert (int(cols.min()), int(cols.max())) == (c - radius, c + radius)


# --- (e) variants detect correctly -----------------------------------------------------------------
@pytest.mark.parametrize("hparams", [
    {"num_in_ch": 1, "num_out_ch": 1, "scale": 4},
    {"num_in_ch": 1, "num_out_ch": 1, "scale": 2, "norm": False},
    {"num_in_ch": 1, "num_out_ch": 3, "scale": 4},
    {"num_in_ch": 3, "num_out_ch": 3, "scale": 2},
    {"num_in_ch": 3, "num_out_ch": 3, "scale": 1, "num_feat": 12},
])
def test_variants_detect_from_the_authors_keys(tmp_path: Path, hparams: dict) -> None:
    net = random_span(11, **hparams)
    full = {**span.DEFAULTS, **SMALL, **hparams}
    path = write_weights(tmp_path / "variant.pth", authors_file_dict(net))
    model = load_model(path)
    assert model.arch == "span" and model.hparams == full
    x = torch.rand(1, full["num_in_ch"], 7, 6, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        out = model.module(x)
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (1, full["num_out_ch"], 7 * full["scale"], 6 * full["scale"])
    deployed, _ = span.collapse(net.state_dict(), full)
    assert detect(deployed) == ("span", {**full, "deploy": True})


# --- bool hyperparameters through metadata ------------------------------------------------------------
@pytest.mark.parametrize("written, expected", [(False, False), ("false", False), ("False", False), (0, False),
                                               (True, True), ("true", True)])
def test_norm_from_metadata_is_a_bool_whatever_wrote_it(tmp_path: Path, written: object, expected: bool) -> None:
    net = random_span(13, norm=expected)
    path = tmp_path / "meta.safetensors"
    save_model(path, net.state_dict(), "span", {**SMALL, "norm": written})
    assert json.loads(safetensors.safe_open(str(path), "pt").metadata()[META_HPARAMS])["norm"] == written
    model = load_model(path)
    assert model.module.norm is expected
    assert ("no_norm" in model.module.state_dict()) is (not expected)


def test_a_flag_that_is_neither_true_nor_false_is_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "odd_flag.safetensors"
    save_model(path, random_span(14).state_dict(), "span", {**SMALL, "norm": "maybe"})
    with pytest.raises(errors.ArchitectureMismatchError, match="odd_flag.safetensors.*cannot build span.*norm"):
        load_model(path)


# --- (f) odd SPAN files: one typed line, exit 1 ------------------------------------------------------
def _without(sd: SD, prefix: str) -> SD:
    return {k: v for k, v in sd.items() if not k.startswith(prefix)}


def _odd_files() -> dict[str, tuple[SD | None, str, str]]:
    """name -> (state dict, or None for a truncated file; the error's label; what else the line says)."""
    sd = authors_file_dict(random_span(15))
    wrong_gain = dict(sd)
    wrong_gain["conv_1.conv.1.weight"] = torch.zeros(8, 3, 3, 3)   # gain 1: not SPAN's Conv3XC
    shape = dict(sd)
    shape["block_3.c2_r.sk.weight"] = torch.zeros(8, 6, 1, 1)
    return {
        # traiNNer-redux can train fewer blocks; ours has the paper's six
        "five_blocks.pth": (_without(sd, "block_6."), "weights do not fit", "missing block_6.c1_r.sk.weight"),
        "no_upsampler.pth": (_without(sd, "upsampler."), "unknown weights layout", "has no upsampler.0.weight"),
        "wrong_gain.pth": (wrong_gain, "unknown weights layout", "not 2x as SPAN's Conv3XC"),
        "bad_shape.safetensors": (shape, "weights do not fit", "block_3.c2_r.sk.weight (8, 6, 1, 1) in file"),
        "half_branches.pth": (_without(sd, "conv_1.conv."), "unknown weights layout", "only the collapsed kernel"),
        "truncated.pth": (None, "bad weights", "corrupt"),
    }


@pytest.mark.parametrize("name", list(_odd_files()))
def test_odd_span_files_fail_in_one_typed_line(tmp_path: Path, name: str) -> None:
    content, label, says = _odd_files()[name]
    path = tmp_path / name
    if content is None:
        write_weights(tmp_path / "whole.pth", authors_file_dict(random_span(15)))
        path.write_bytes((tmp_path / "whole.pth").read_bytes()[:5000])
    else:
        write_weights(path, content)
    with pytest.raises(errors.UpscaleError):
        load_model(path)
    src = photo(tmp_path / "a.png")
    res = invoke([src, "-m", path, *FAST])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert len(lines) == 1 and name in lines[0] and label in lines[0] and says in lines[0], res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    assert not (tmp_path / "a_x4.png").exists()


def test_a_deploy_file_missing_its_head_is_explained(tmp_path: Path) -> None:
    deployed, _ = span.collapse(random_span(16).state_dict(), SMALL)
    path = write_weights(tmp_path / "headless.safetensors", _without(deployed, "conv_cat."))
    with pytest.raises(errors.UnknownArchitectureError,
                       match="headless.safetensors.*looks like SPAN, but it has no conv_cat.weight"):
        load_model(path)


# --- upscale convert --deploy: the form we ship ------------------------------------------------------
def test_convert_deploy_writes_the_collapsed_form_that_upscales_alike(tmp_path: Path) -> None:
    net = random_span(5)
    trained = write_weights(tmp_path / "span.pth", authors_file_dict(net))
    out = tmp_path / "span-deploy.safetensors"
    result = invoke(["convert", trained, out, "--deploy"])
    assert result.exit_code == 0, result.output
    model = load_model(out)
    assert model.arch == "span" and model.hparams["deploy"] is True
    assert n_params(model.module.state_dict()) < 0.35 * n_params(net.state_dict())
    x = torch.rand(1, 3, 19, 23, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model.module(x), net(x), atol=1e-5)
    img = photo(tmp_path / "p.png")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert invoke([img, "-m", trained, "-o", a, *FAST]).exit_code == 0
    assert invoke([img, "-m", out, "-o", b, *FAST]).exit_code == 0
    diff = np.abs(np.asarray(PILImage.open(a), np.int16) - np.asarray(PILImage.open(b), np.int16))
    assert diff.max() <= 1


def test_convert_deploy_of_a_plain_network_is_a_one_line_usage_error(tmp_path: Path, weights_file) -> None:
    src = weights_file("compact", {"num_feat": 8, "num_conv": 2, "scale": 2, "act_type": "lrelu"})
    result = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "o.safetensors"), "--deploy"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "--deploy" in result.output
    assert not (tmp_path / "o.safetensors").exists()


def test_convert_deploy_of_a_deploy_form_keeps_it(tmp_path: Path) -> None:
    """A network fine-tuned from our shipped (deploy-form) files is already collapsed: --deploy is a no-op."""
    net = random_span(6)
    sd, hp = span.collapse(net.state_dict(), {**span.DEFAULTS, **SMALL})
    src = tmp_path / "deployed.safetensors"
    save_model(src, sd, "span", hp)
    out = tmp_path / "again.safetensors"
    assert invoke(["convert", src, out, "--deploy"]).exit_code == 0
    again = load_model(out)
    assert again.hparams["deploy"] is True
    assert all(torch.equal(again.module.state_dict()[k], v) for k, v in sd.items())
