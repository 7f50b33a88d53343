"""upscale.loading: every known weight layout loads strictly and computes what the BasicSR layout
computes; pickled code is refused unrun; corrupt files and wrong architectures raise typed errors."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Callable

import pytest
import safetensors.torch
import torch

from upscale import archs, errors
from upscale.loading import (META_ARCH, META_BF16_SAFE, META_FORMAT, META_HPARAMS, canonicalize, detect,
                             load_model, model_from_state_dict, model_state_dict, read_state_dict, save_model)

SD = dict[str, torch.Tensor]

RRDB_HP = {"num_feat": 16, "num_block": 2, "num_grow_ch": 8}
SMALL = {
    "rrdbnet_x4": ("rrdbnet", {**RRDB_HP, "scale": 4}),
    "rrdbnet_x2": ("rrdbnet", {**RRDB_HP, "scale": 2}),
    "rrdbnet_x1": ("rrdbnet", {**RRDB_HP, "scale": 1}),
    "compact_prelu": ("compact", {"num_feat": 16, "num_conv": 3, "scale": 4, "act_type": "prelu"}),
    "compact_relu_x2": ("compact", {"num_feat": 16, "num_conv": 3, "scale": 2, "act_type": "relu"}),
    "msrresnet_x4": ("msrresnet", {"num_feat": 16, "num_block": 2, "scale": 4}),
    "msrresnet_x2": ("msrresnet", {"num_feat": 16, "num_block": 2, "scale": 2}),
    "srresnet_bn": ("srresnet", {"num_feat": 16, "num_block": 2, "scale": 4, "bn": True}),
    "srresnet_nobn_x2": ("srresnet", {"num_feat": 16, "num_block": 2, "scale": 2, "bn": False}),
    "srcnn_x3": ("srcnn", {"n1": 16, "n2": 8, "scale": 3}),
    "tiny": ("tiny", {}),
}


def random_state_dict(arch: str, hparams: dict, seed: int) -> SD:
    """A canonical (BasicSR-layout) state dict with every float tensor random, PReLU slopes included,
    so a tensor put in the wrong place changes the output."""
    module = archs.build_module(arch, hparams)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in module.state_dict().items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=gen) * 0.05
            value = noise.abs() + 0.5 if key.endswith("running_var") else noise
        sd[key] = value.clone()
    return sd


def run(arch: str, hparams: dict, sd: SD, x: torch.Tensor) -> torch.Tensor:
    module = archs.build_module(arch, hparams)
    module.load_state_dict(sd, strict=True)
    with torch.no_grad():
        return module.eval()(x)


def forward(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.module(x)


def sample_input(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))




# --- alternate layouts, written out by hand from the canonical one -------------------------------
def to_old_esrgan(sd: SD) -> SD:
    """xinntao's original ESRGAN layout: model.0, model.1.sub.N.RDBr.convc.0, model.1.sub.<num_block>,
    model.3 / model.6 (upsampling convs), model.8 (HR conv), model.10 (last conv)."""
    num_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    fixed = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", "conv_up1": "model.3",
             "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "body":  # body.N.rdbR.convC.param
            _, n, rdb, conv, param = parts
            out[f"model.1.sub.{n}.RDB{rdb[-1]}.{conv}.0.{param}"] = value
        else:
            out[f"{fixed[parts[0]]}.{parts[1]}"] = value
    return out


def to_esrgan_repo(sd: SD) -> SD:
    """xinntao/ESRGAN's RRDBNet_arch.py layout (also BSRGAN's)."""
    fixed = {"conv_first": "conv_first", "conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2",
             "conv_hr": "HRconv", "conv_last": "conv_last"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "body":
            _, n, rdb, conv, param = parts
            out[f"RRDB_trunk.{n}.RDB{rdb[-1]}.{conv}.{param}"] = value
        else:
            out[f"{fixed[parts[0]]}.{parts[1]}"] = value
    return out


def to_mmsr(sd: SD) -> SD:
    """MMSR's MSRResNet: recon_trunk.N.convK and HRconv."""
    out = {}
    for key, value in sd.items():
        key = key.replace("body.", "recon_trunk.", 1) if key.startswith("body.") else key
        out[key.replace("conv_hr.", "HRconv.")] = value
    return out


def identity(sd: SD) -> SD:
    return dict(sd)


def module_prefixed(sd: SD) -> SD:
    return {f"module.{k}": v for k, v in sd.items()}


# container: (suffix, wrap(sd, decoy) -> object to save). The decoy is another random state dict of the
# same shapes: a loader that picks the wrong wrapper entry gives a different output.
CONTAINERS: dict[str, tuple[str, Callable[[SD, SD], object]]] = {
    "pth": (".pth", lambda sd, decoy: sd),
    "pth_params_ema": (".pth", lambda sd, decoy: {"params": decoy, "params_ema": sd}),
    "pth_params": (".pt", lambda sd, decoy: {"params": sd, "iter": 1000}),
    "pth_state_dict": (".ckpt", lambda sd, decoy: {"state_dict": sd, "optimizer": {"lr": 1e-4}, "epoch": 3}),
    "pth_model": (".pth", lambda sd, decoy: {"model": sd, "step": 7}),
    "pth_module": (".pth", lambda sd, decoy: {"params_ema": module_prefixed(sd)}),
    # saved from a torch.compile-d network (traiNNer-redux/neosr with compile on), alone and under DataParallel
    "pth_compiled": (".pth", lambda sd, decoy: {"params": {f"_orig_mod.{k}": v for k, v in sd.items()}}),
    "safetensors_module_compiled": (".safetensors", lambda sd, decoy: {f"module._orig_mod.{k}": v
                                                                       for k, v in sd.items()}),
    "pth_legacy_zipless": (".pth", lambda sd, decoy: {"params": sd}),
    "safetensors": (".safetensors", lambda sd, decoy: sd),
    "safetensors_module": (".safetensors", lambda sd, decoy: module_prefixed(sd)),
}


def write(path: Path, obj: object, container: str) -> None:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=container != "pth_legacy_zipless")


LAYOUT_CASES = [
    *[(case, layout) for case in ("rrdbnet_x4", "rrdbnet_x2", "rrdbnet_x1")
      for layout in (identity, to_old_esrgan, to_esrgan_repo)],
    ("compact_prelu", identity),
    ("msrresnet_x4", identity), ("msrresnet_x4", to_mmsr), ("msrresnet_x2", to_mmsr),
    ("srresnet_bn", identity), ("srresnet_nobn_x2", identity),
    ("tiny", identity),
]


def check_loads_like_basicsr(tmp_path: Path, case: str, layout: Callable[[SD], SD], container: str) -> None:
    arch, hp = SMALL[case]
    sd, decoy = random_state_dict(arch, hp, seed=1), random_state_dict(arch, hp, seed=2)
    x = sample_input()
    expected = run(arch, hp, sd, x)
    assert not torch.allclose(expected, run(arch, hp, decoy, x))  # the decoy would be noticed

    suffix, wrap = CONTAINERS[container]
    path = tmp_path / f"weights{suffix}"
    write(path, wrap(layout(sd), layout(decoy)), container)
    model = load_model(path)

    assert model.arch == arch
    assert {k: model.hparams[k] for k in hp} == hp
    assert not model.module.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.module.parameters())
    assert torch.equal(forward(model, x), expected)


@pytest.mark.parametrize("container", ["pth", "safetensors"])
@pytest.mark.parametrize("case,layout", LAYOUT_CASES, ids=[f"{c}-{f.__name__}" for c, f in LAYOUT_CASES])
def test_every_layout_loads_strictly_and_matches_basicsr(tmp_path: Path, case: str, layout: Callable,
                                                        container: str) -> None:
    check_loads_like_basicsr(tmp_path, case, layout, container)


@pytest.mark.parametrize("container", [c for c in CONTAINERS if c not in ("pth", "safetensors")])
def test_every_container_unwraps_to_the_same_network(tmp_path: Path, container: str) -> None:
    """Wrappers (params_ema over params, state_dict, model), module. and _orig_mod. prefixes and the
    legacy pickle format, here around an old-layout x2 (pixel-unshuffle) RRDBNet."""
    check_loads_like_basicsr(tmp_path, "rrdbnet_x2", to_old_esrgan, container)


def test_srcnn_without_metadata_loads_at_default_scale(tmp_path: Path) -> None:
    """SRCNN's keys carry no scale: a bare file is taken as x4 and still matches the BasicSR-style net."""
    hp = {"n1": 16, "n2": 8, "scale": 4}
    sd = random_state_dict("srcnn", hp, seed=3)
    for name in ("w.pth", "w.safetensors"):
        write(tmp_path / name, sd, "pth")
        model = load_model(tmp_path / name)
        assert (model.arch, model.scale) == ("srcnn", 4)
        assert torch.equal(forward(model, sample_input()), run("srcnn", hp, sd, sample_input()))


def test_canonicalize_old_esrgan_and_repo_give_basicsr_keys() -> None:
    arch, hp = SMALL["rrdbnet_x4"]
    sd = random_state_dict(arch, hp, seed=4)
    for layout in (to_old_esrgan, to_esrgan_repo):
        converted = canonicalize(layout(sd))
        assert set(converted) == set(sd)
        assert all(torch.equal(converted[k], sd[k]) for k in sd)
    assert canonicalize(sd) == sd


def test_detect_reads_hparams_from_keys_alone() -> None:
    for case in ("rrdbnet_x4", "rrdbnet_x2", "rrdbnet_x1", "compact_prelu", "msrresnet_x2", "srresnet_bn", "tiny"):
        arch, hp = SMALL[case]
        found_arch, found_hp = detect(random_state_dict(arch, hp, seed=5))
        assert found_arch == arch and {k: found_hp[k] for k in hp} == hp, case


# --- round trip through our own files -----------------------------------------------------------
@pytest.mark.parametrize("case", list(SMALL))
def test_save_then_load_round_trips_every_arch(tmp_path: Path, case: str) -> None:
    arch, hp = SMALL[case]
    module = archs.build_module(arch, hp)
    module.load_state_dict(random_state_dict(arch, hp, seed=6))
    path = tmp_path / "ours.safetensors"
    save_model(path, model_state_dict(module), arch, hp)

    model = load_model(path, name="mine")
    x = sample_input()
    with torch.no_grad():
        assert torch.equal(forward(model, x), module.eval()(x))
    # metadata wins over key detection: compact's relu and SRCNN's x3 are invisible in the keys
    assert model.arch == arch and {k: model.hparams[k] for k in hp} == hp
    assert (model.name, model.source, model.bf16_safe) == ("mine", str(path), True)
    assert model.metadata[META_FORMAT] == "1"
    assert json.loads(model.metadata[META_HPARAMS]) == hp
    assert model.metadata[META_HPARAMS] == json.dumps(hp, sort_keys=True)
    assert os.listdir(tmp_path) == ["ours.safetensors"]  # no temp file left behind


def test_model_from_state_dict_fills_defaults_and_checks_strictly() -> None:
    arch, hp = SMALL["msrresnet_x2"]
    sd = random_state_dict(arch, hp, seed=16)
    model = model_from_state_dict(sd, arch, hp, source="converted.param")
    assert model.hparams == {**archs.get_family(arch).defaults, **hp} and model.scale == 2
    assert torch.equal(forward(model, sample_input()), run(arch, hp, sd, sample_input()))
    with pytest.raises(errors.ArchitectureMismatchError, match="converted.param.*missing conv_hr.weight"):
        model_from_state_dict({k: v for k, v in sd.items() if k != "conv_hr.weight"}, arch, hp,
                              source="converted.param")


def test_bf16_safe_and_extra_metadata_come_back(tmp_path: Path) -> None:
    arch, hp = SMALL["compact_prelu"]
    path = tmp_path / "c.safetensors"
    save_model(path, random_state_dict(arch, hp, seed=7), arch, hp,
               extra_metadata={META_BF16_SAFE: "false", "upscale.note": "hello", META_ARCH: "tiny"})
    model = load_model(path)
    assert model.bf16_safe is False
    assert model.metadata["upscale.note"] == "hello"
    assert model.arch == "compact"  # extra metadata cannot override the arch


def test_save_model_overwrites_atomically_and_reports_unwritable_folder(tmp_path: Path) -> None:
    arch, hp = SMALL["tiny"]
    path = tmp_path / "t.safetensors"
    save_model(path, random_state_dict(arch, hp, seed=8), arch, hp)
    sd2 = random_state_dict(arch, hp, seed=9)
    save_model(path, sd2, arch, hp)
    assert torch.equal(read_state_dict(path)[0]["conv1.weight"], sd2["conv1.weight"])
    assert os.listdir(tmp_path) == ["t.safetensors"]

    with pytest.raises(errors.WeightsError, match="missing_dir"):
        save_model(tmp_path / "missing_dir" / "t.safetensors", sd2, arch, hp)
    assert os.listdir(tmp_path) == ["t.safetensors"]


# --- Must show 3: pickled code is refused, not run -----------------------------------------------
class ExecPayload:
    """Unpickling this runs Python code that creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').close()",))


class ShellPayload:
    """Unpickling this runs a shell command that creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch '{self.target}'",))


def write_payload(path: Path, payload: object, fmt: str) -> None:
    tensors = {"conv1.weight": torch.zeros(1)}
    if fmt == "zip":
        torch.save({"params": {**tensors, "extra": payload}}, path)
    elif fmt == "legacy":
        torch.save({"params": tensors, "config": payload}, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle stream
        path.write_bytes(pickle.dumps(payload, protocol=int(fmt[-1])))


@pytest.mark.parametrize("payload_cls", [ExecPayload, ShellPayload])
def test_payload_is_live_under_plain_pickle(tmp_path: Path, payload_cls: type) -> None:
    """Control: the payloads below really do create the file when unpickled without protection."""
    target = tmp_path / "created_by_payload"
    pickle.loads(pickle.dumps(payload_cls(target)))
    assert target.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw2", "raw4"])
@pytest.mark.parametrize("payload_cls", [ExecPayload, ShellPayload])
def test_pickled_callable_is_refused_without_running(tmp_path: Path, payload_cls: type, fmt: str) -> None:
    target = tmp_path / "created_by_payload"
    path = tmp_path / "evil.pth"
    write_payload(path, payload_cls(target), fmt)
    with pytest.raises(errors.UnsafeWeightsError) as info:
        load_model(path)
    assert not target.exists()
    message = str(info.value)
    assert "evil.pth" in message and "\n" not in message
    assert ("exec" in message) if payload_cls is ExecPayload else ("system" in message)


# --- corrupt files and wrong architectures -------------------------------------------------------
def _good_bytes(tmp_path: Path, suffix: str) -> bytes:
    arch, hp = SMALL["tiny"]
    path = tmp_path / f"good{suffix}"
    write(path, random_state_dict(arch, hp, seed=10), "pth")
    return path.read_bytes()


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "zero_bytes": lambda good: b"",
    "truncated_half": lambda good: good[: len(good) // 2],
    "truncated_tail": lambda good: good[:-7],
    "header_only": lambda good: good[:20],
    "random_bytes": lambda good: random.Random(11).randbytes(4096),
    "text": lambda good: b"this is not a weights file\n" * 20,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_file_raises_weights_error_naming_it(tmp_path: Path, suffix: str, corruption: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(CORRUPTIONS[corruption](_good_bytes(tmp_path, suffix)))
    with pytest.raises(errors.WeightsError) as info:
        load_model(path)
    assert type(info.value) is errors.WeightsError  # corrupt, not "unsafe" or "unknown layout"
    assert info.value.path == str(path)
    assert f"broken{suffix}" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(errors.WeightsError, match="no such weights file"):
        load_model(tmp_path / "nope.safetensors")
    odd = tmp_path / "weights.onnx"
    odd.write_bytes(b"x")
    with pytest.raises(errors.WeightsError, match="weights.onnx.*unsupported weights format"):
        load_model(odd)


def test_pth_without_tensors_is_a_weights_error(tmp_path: Path) -> None:
    path = tmp_path / "cfg.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(errors.WeightsError, match="cfg.pth.*no state dict.*epoch"):
        load_model(path)


def test_metadata_arch_with_other_tensors_is_a_mismatch(tmp_path: Path) -> None:
    c_arch, c_hp = SMALL["compact_prelu"]
    r_arch, r_hp = SMALL["rrdbnet_x4"]
    path = tmp_path / "liar.safetensors"
    save_model(path, random_state_dict(c_arch, c_hp, seed=12), r_arch, r_hp)
    with pytest.raises(errors.ArchitectureMismatchError) as info:
        load_model(path)
    err = info.value
    assert err.arch == "rrdbnet"
    assert "conv_first.weight" in err.missing and "body.0.weight" in err.unexpected
    msg = str(err)
    assert "liar.safetensors" in msg and "rrdbnet" in msg and "missing conv_first.weight" in msg
    assert "unexpected body.0." in msg and "\n" not in msg


def test_missing_key_is_a_mismatch(tmp_path: Path) -> None:
    arch, hp = SMALL["rrdbnet_x4"]
    sd = to_esrgan_repo(random_state_dict(arch, hp, seed=13))
    del sd["HRconv.bias"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(errors.ArchitectureMismatchError) as info:
        load_model(path)
    assert info.value.missing == ["conv_hr.bias"] and info.value.unexpected == []
    assert "partial.pth" in str(info.value) and "conv_hr.bias" in str(info.value)


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    arch, hp = SMALL["rrdbnet_x4"]
    path = tmp_path / "shapes.safetensors"
    save_model(path, random_state_dict(arch, hp, seed=14), arch, {**hp, "num_grow_ch": 4})
    with pytest.raises(errors.ArchitectureMismatchError, match=r"shapes.safetensors.*shape mismatch "
                       r"body\.0\.rdb1\.conv1\.weight \(8, 16, 3, 3\) in file vs \(4, 16, 3, 3\)"):
        load_model(path)


def test_unknown_layout_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "alien.safetensors"
    safetensors.torch.save_file({"encoder.weight": torch.zeros(2, 2), "decoder.weight": torch.zeros(2)}, str(path))
    with pytest.raises(errors.UnknownArchitectureError, match="alien.safetensors.*encoder.weight"):
        load_model(path)


def test_unknown_arch_name_in_metadata(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    safetensors.torch.save_file({"conv1.weight": torch.zeros(1)}, str(path),
                                metadata={META_ARCH: "swinir", META_HPARAMS: "{}"})
    with pytest.raises(errors.UnknownArchitectureError, match="future.safetensors.*'swinir'"):
        load_model(path)


def test_old_esrgan_with_one_upsampling_stage_is_explained(tmp_path: Path) -> None:
    """A native-x2 old ESRGAN (one upsampling conv) does not fit our two-stage RRDBNet."""
    arch, hp = SMALL["rrdbnet_x4"]
    old = to_old_esrgan(random_state_dict(arch, hp, seed=15))
    x2 = {k: v for k, v in old.items() if not k.startswith(("model.6.", "model.8.", "model.10."))}
    x2.update({"model.5.weight": old["model.8.weight"], "model.5.bias": old["model.8.bias"],
               "model.7.weight": old["model.10.weight"], "model.7.bias": old["model.10.bias"]})
    path = tmp_path / "old_x2.pth"
    torch.save(x2, path)
    with pytest.raises(errors.UnknownArchitectureError, match="old_x2.pth.*1 upsampling stage"):
        load_model(path)


def test_old_esrgan_with_three_upsampling_stages_is_explained(tmp_path: Path) -> None:
    """A native-x8 old ESRGAN (model.3/6/9 upsampling convs, model.11 HR, model.13 last) is named as
    such, not reported as an RRDBNet x4 with stray conv_up3 keys."""
    arch, hp = SMALL["rrdbnet_x4"]
    old = to_old_esrgan(random_state_dict(arch, hp, seed=16))
    x8 = {k: v for k, v in old.items() if not k.startswith(("model.8.", "model.10."))}
    x8.update({"model.9.weight": old["model.6.weight"], "model.9.bias": old["model.6.bias"],
               "model.11.weight": old["model.8.weight"], "model.11.bias": old["model.8.bias"],
               "model.13.weight": old["model.10.weight"], "model.13.bias": old["model.10.bias"]})
    path = tmp_path / "old_x8.pth"
    torch.save(x8, path)
    with pytest.raises(errors.UnknownArchitectureError, match=r"old_x8.pth.*3 upsampling stage\(s\) \(x8\)"):
        load_model(path)


# --- issue 16 #6 and #8: weights that would give garbage, forged hyperparameters --------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_weights_are_refused_at_load(tmp_path: Path, bad: float) -> None:
    arch, hp = SMALL["compact_prelu"]
    sd = random_state_dict(arch, hp, seed=20)
    sd["body.2.weight"][0, 0, 1, 1] = bad
    sd["body.4.bias"][:] = bad
    path = tmp_path / "black.safetensors"
    save_model(path, sd, arch, hp)
    with pytest.raises(errors.WeightsError) as info:
        load_model(path)
    message = str(info.value)
    assert type(info.value) is errors.WeightsError and info.value.path == str(path)
    assert "black.safetensors" in message and "2 tensors hold NaN/inf" in message and "body.2.weight" in message
    with pytest.raises(errors.WeightsError, match="1 tensor hold NaN/inf"):
        model_from_state_dict({**random_state_dict(arch, hp, seed=20), "body.0.bias": sd["body.4.bias"][:16]},
                              arch, hp, source="from.param")


FORGE = """
import json, resource, sys, time
from upscale import errors, loading
def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before, start = peak_mb(), time.monotonic()
try:
    loading.load_model(sys.argv[1])
    outcome = "loaded"
except errors.ArchitectureMismatchError as err:
    outcome = str(err)
print(json.dumps({"grew_mb": peak_mb() - before, "seconds": time.monotonic() - start, "outcome": outcome}))
"""


def test_forged_hyperparameters_are_refused_before_the_network_is_built(tmp_path: Path) -> None:
    """A small file whose metadata claims num_feat 1024 (a 0.6 GB network) is refused from the shapes,
    without allocating it (it once took 20 s and 7 GB for num_feat 4000)."""
    import subprocess
    import sys

    arch, hp = SMALL["compact_prelu"]
    path = tmp_path / "forged.safetensors"
    forged = {**archs.get_family(arch).defaults, **hp, "num_feat": 1024, "num_conv": 16}
    safetensors.torch.save_file(random_state_dict(arch, hp, seed=21), str(path),
                                metadata={META_ARCH: arch, META_HPARAMS: json.dumps(forged)})
    proc = subprocess.run([sys.executable, "-c", FORGE, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    assert "forged.safetensors" in found["outcome"] and "shape mismatch" in found["outcome"], found
    assert found["grew_mb"] < 150, found   # building it for real allocates > 600 MB


def test_unbuildable_hyperparameters_are_a_mismatch_not_a_crash(tmp_path: Path) -> None:
    arch, hp = SMALL["rrdbnet_x4"]
    for bad in ({"num_feat": "wide"}, {"num_feat": -4}, {"bogus": 1}, {"scale": 3}):
        path = tmp_path / "odd.safetensors"
        save_model(path, random_state_dict(arch, hp, seed=22), arch, {**hp, **bad})
        with pytest.raises(errors.ArchitectureMismatchError, match="odd.safetensors.*cannot build rrdbnet"):
            load_model(path)


def test_weight_dtypes_8_bit_floats_widened_and_non_floats_refused(tmp_path: Path) -> None:
    """fp8 weights were an internal error (isfinite has no fp8 kernel); integer, bool and complex
    weights were cast into the float network silently, giving garbage."""
    arch, hp = SMALL["compact_prelu"]
    sd = random_state_dict(arch, hp, 3)
    x = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
    safetensors.torch.save_file(fp8, str(tmp_path / "fp8.safetensors"))
    widened = {k: v.float() for k, v in fp8.items()}
    assert torch.equal(forward(load_model(tmp_path / "fp8.safetensors"), x), run(arch, {**hp}, widened, x))
    for dtype in (torch.int64, torch.bool, torch.complex64):
        safetensors.torch.save_file({k: v.to(dtype) for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
        with pytest.raises(errors.WeightsError) as info:
            load_model(tmp_path / "bad.safetensors")
        assert "floating point" in info.value.message and info.value.path == str(tmp_path / "bad.safetensors")
