"""models.toml validation, lookup and the user registry (issue 3, Must show 5)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from click.testing import CliRunner

from upscale import errors, loading, registry
from upscale.archs import BY_NAME, build_module
from upscale.cli import cli

HUB_SOURCE = ('{ type = "hub", repo_id = "org/repo", filename = "w.pth", revision = "' + "a" * 40
              + '", sha256 = "' + "b" * 64 + '", size = 10 }')


def entry(name: str = "m1", *, drop: tuple[str, ...] = (), **fields: str) -> str:
    """One [[model]] table as TOML; ``fields`` are raw TOML values replacing the defaults."""
    values = {"name": f'"{name}"', "description": '"a model"', "arch": '"rrdbnet"', "scale": "4", "kind": '"gan"',
              "license": '"MIT"', "source": HUB_SOURCE}
    values.update(fields)
    return "[[model]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if k not in drop)


def parse(*entries: str) -> registry.Registry:
    return registry.build_registry(registry.parse_registry("\n".join(entries), "test.toml"))


def fails(*entries: str) -> str:
    with pytest.raises(errors.RegistryError) as info:
        parse(*entries)
    message = str(info.value)
    assert "\n" not in message and message.startswith("test.toml: ")
    return message


# --- Must show 5 ---------------------------------------------------------------------------------
def test_duplicate_name_fails_naming_the_entry():
    message = fails(entry("twice"), entry("other"), entry("twice"))
    assert "'twice'" in message and "defined twice" in message


def test_missing_sha256_fails_naming_the_entry():
    source = HUB_SOURCE.replace(', sha256 = "' + "b" * 64 + '"', "")
    assert "sha256" not in source
    message = fails(entry("ok"), entry("no-hash", source=source))
    assert "'no-hash'" in message and "sha256" in message


def test_unknown_architecture_fails_naming_the_entry():
    message = fails(entry("ok"), entry("weird", arch='"swinir"'))
    assert "'weird'" in message and "unknown architecture 'swinir'" in message


# --- the other checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, drop, expected", [
    ({"colour": '"red"'}, (), "unknown field(s) colour"),
    ({}, ("license",), "missing required field(s) license"),
    ({"scale": "0"}, (), "scale must be a positive integer"),
    ({"scale": "2"}, (), "scale 2 disagrees with hparams.scale 4"),
    ({"kind": '"best"'}, (), "kind must be one of"),
    ({"hparams": "{ num_blocks = 3 }"}, (), "unknown rrdbnet hyperparameter(s) num_blocks"),
    ({"source": HUB_SOURCE.replace('"' + "b" * 64 + '"', '"abc"')}, (), "sha256 must be 64 lowercase hex"),
    ({"source": HUB_SOURCE.replace("size = 10", "mirror = 1")}, (), "unknown hub source field(s) mirror"),
    ({"source": '{ type = "ftp", url = "x" }'}, (), "source type must be hub, package or file"),
    ({"source": '{ type = "file", path = "relative/w.pth" }'}, (), "source.path must be absolute"),
])
def test_bad_entries_fail_naming_the_entry(fields, drop, expected):
    message = fails(entry("bad", drop=drop, **fields))
    assert "'bad'" in message and expected in message


def test_twin_must_exist_and_be_the_same_network():
    assert "twin 'ghost' does not exist" in fails(entry("a", twin='"ghost"'))
    message = fails(entry("a", twin='"b"'), entry("b", hparams="{ num_block = 6 }", kind='"psnr"'))
    assert "'a'" in message and "different network" in message
    assert parse(entry("a", twin='"b"'), entry("b", kind='"psnr"')).find("a").twin == "b"


def test_not_toml_is_a_registry_error():
    assert "not valid TOML" in fails("[[model]\nname = ")


def test_valid_entry_becomes_a_frozen_spec_with_full_hparams():
    spec = parse(entry("m", hparams="{ num_block = 6 }")).find("m")
    assert spec.hparams == {**BY_NAME["rrdbnet"].defaults, "num_block": 6}
    assert spec.source == registry.HubSource("org/repo", "w.pth", "a" * 40, "b" * 64, size=10)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.hparams["num_block"] = 1  # type: ignore[index]


# --- the packaged registry -------------------------------------------------------------------------
def test_packaged_registry_has_the_issue_models_pinned_and_hashed():
    specs = {s.name: s for s in registry.load_registry(user=None).models.values()}
    for name in ("esrgan", "esrgan-psnr", "esrgan-x2", "esrgan-classic", "esrgan-classic-psnr", "compact", "anime"):
        spec = specs[name]
        assert isinstance(spec.source, registry.HubSource)
        assert re.fullmatch(r"[0-9a-f]{40}", spec.source.revision), name
        assert spec.source.sha256_note, name
    assert specs["esrgan"].source.sha256 == "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1"
    assert specs["esrgan"].source.size == 67_040_989
    assert specs["esrgan-x2"].source.sha256 == "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb"
    assert specs["compact"].source.sha256 == "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292"
    assert specs["anime"].source.sha256 == "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da"
    assert (specs["esrgan-x2"].scale, specs["anime"].hparams["num_block"]) == (2, 6)
    assert specs["compact"].arch == "compact" and specs["compact"].hparams["num_conv"] == 32
    for gan, psnr in (("esrgan", "esrgan-psnr"), ("esrgan-classic", "esrgan-classic-psnr")):
        assert (specs[gan].kind, specs[psnr].kind, specs[gan].twin, specs[psnr].twin) == ("gan", "psnr", psnr, gan)


def test_bf16_safe_only_where_measured():
    """--precision auto runs a registry model in bf16 only when its entry says it was measured safe;
    an entry that says nothing runs in fp32."""
    assert parse(entry("m")).find("m").bf16_safe is False
    assert parse(entry("m", bf16_safe="true")).find("m").bf16_safe is True
    specs = {s.name: s for s in registry.load_registry(user=None).models.values()}
    measured = {name for name, spec in specs.items() if spec.bf16_safe}
    # measured with benchmarks/bf16_check.py (docs/perf.md): ours and Real-ESRGAN x4plus pass; x4plus
    # anime does not (49.7 dB on Set14 bridge); Hub models whose weights could not be measured here
    # stay unflagged
    assert measured == {"default-x4", "default-x2", "default-x4-gan", "default-x4-v1", "default-x2-v1",
                        "srcnn-x4", "srcnn-x2", "esrgan"}


def test_lookup_and_close_names(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path))
    assert registry.find_model("esrgan").name == "esrgan" and registry.find_model("nope") is None
    with pytest.raises(errors.ModelNotFoundError) as info:
        registry.get_model("esrgna")
    assert "did you mean esrgan" in str(info.value)
    assert registry.default_model_for_scale(4).name == "default-x4"   # the shipped defaults
    assert registry.default_model_for_scale(1.5).name == "default-x2"


# --- the user registry -----------------------------------------------------------------------------
def tiny_file(tmp_path, name="mine.pth"):
    torch.manual_seed(3)
    net = build_module("compact", {"num_feat": 4, "num_conv": 1, "scale": 2})
    path = tmp_path / name
    torch.save(net.state_dict(), path)
    return path


_ADD = ("import sys, time; from pathlib import Path; from upscale import user_registry\n"
        "while not Path(sys.argv[3]).exists(): time.sleep(0.01)   # start together\n"
        "for i in range(int(sys.argv[2])):\n"
        "    user_registry.add_user_model(f'{sys.argv[1]}-{i}', sys.argv[4], arch='compact',\n"
        "                            hparams={'num_feat': 4, 'num_conv': 1, 'scale': 2})\n")


def test_models_added_by_processes_at_once_are_all_kept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    path, go = tiny_file(tmp_path), tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _ADD, f"p{n}", "12", str(go), str(path)], env=dict(os.environ))
             for n in range(3)]
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    registry._CACHE.clear()
    added = {spec.name for spec in registry.all_models() if spec.origin == str(tmp_path / "cfg" / "models.toml")}
    assert added == {f"p{n}-{i}" for n in range(3) for i in range(12)}


def test_models_add_registers_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    path = tiny_file(tmp_path)
    result = CliRunner().invoke(cli, ["models", "add", "mine", str(path), "--license", "CC0-1.0"])
    assert result.exit_code == 0, result.output
    spec = registry.get_model("mine")
    assert (spec.arch, spec.scale, spec.license) == ("compact", 2, "CC0-1.0")
    assert spec.source == registry.FileSource(path.resolve(), hashlib.sha256(path.read_bytes()).hexdigest(),
                                              path.stat().st_size)
    assert spec.hparams["num_conv"] == 1 and spec.hparams["act_type"] == "prelu"
    assert spec.origin == str(tmp_path / "cfg" / "models.toml")
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == [".models.toml.lock", "models.toml"]  # no temp
    assert spec.bf16_safe is False                                            # not measured: fp32 in auto

    from upscale import hub
    assert hub.weights_path(spec) == path.resolve()
    assert loading.load_model(hub.weights_path(spec)).scale == 2

    listing = CliRunner().invoke(cli, ["models"])
    assert any(line.split()[0] == "mine" and line.split()[-1] == "local" for line in listing.output.splitlines())

    second = tiny_file(tmp_path, "again.pth")
    result = CliRunner().invoke(cli, ["models", "add", "mine", str(second)])
    assert result.exit_code == 1 and "'mine' is registered already; pass --replace" in result.output
    result = CliRunner().invoke(cli, ["models", "add", "esrgan", str(second)])
    assert result.exit_code == 1 and "'esrgan' is defined twice" in result.output
    assert len(registry.parse_registry((tmp_path / "cfg" / "models.toml").read_text(), "user")) == 1
    result = CliRunner().invoke(cli, ["models", "add", "measured", str(second), "--bf16-safe"])
    assert result.exit_code == 0, result.output
    assert registry.get_model("measured").bf16_safe is True


def test_models_show_and_remove(tmp_path, monkeypatch):
    """`models show NAME` prints one record (text or JSON, with the registry file it comes from);
    `models remove NAME` takes a user model out, leaving its file and the other entries (comments
    too), and refuses a packaged model, an unknown name and a model that is another's twin."""
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    user = tmp_path / "cfg" / "models.toml"
    path = tiny_file(tmp_path)
    for args in (["a", "--kind", "psnr"], ["b", "--kind", "gan", "--twin", "a"], ["c"]):
        result = CliRunner().invoke(cli, ["models", "add", args[0], str(path), *args[1:]])
        assert result.exit_code == 0, result.output
    user.write_text("# my models\n" + user.read_text())

    shown = CliRunner().invoke(cli, ["models", "show", "b"])
    assert shown.exit_code == 0 and "twin: a" in shown.output and f"registry: {user}" in shown.output
    assert f"file: {path.resolve()}" in shown.output
    assert "twin:" not in CliRunner().invoke(cli, ["models", "show", "c"]).output     # none set: not shown
    record = json.loads(CliRunner().invoke(cli, ["models", "show", "esrgan", "--json"]).output)
    assert record["name"] == "esrgan" and record["source"]["type"] == "hub" and record["registry"].endswith(".toml")
    assert record["file"].endswith(".safetensors") and record["cached"] is False    # where it would be put

    refused = CliRunner().invoke(cli, ["models", "remove", "a"])
    assert refused.exit_code == 1 and "'a' is the twin of b; remove that first" in refused.output
    refused = CliRunner().invoke(cli, ["models", "remove", "esrgan"])
    assert refused.exit_code == 1 and "comes with upscale" in refused.output
    refused = CliRunner().invoke(cli, ["models", "remove", "nope"])
    assert refused.exit_code != 0 and "'nope' is neither a registry model" in refused.output
    assert [s.name for s in registry.parse_registry(user.read_text(), "user")] == ["a", "b", "c"]
    moved = path.with_name("moved.pth")
    path.rename(moved)
    rows = CliRunner().invoke(cli, ["models"]).output.splitlines()
    assert next(r for r in rows if r.split()[0] == "c").split()[-1] == "missing"     # its file is gone
    moved.rename(path)

    for name in ("b", "a"):
        result = CliRunner().invoke(cli, ["models", "remove", name])
        assert result.exit_code == 0 and f"removed {name}" in result.output, result.output
    assert [s.name for s in registry.parse_registry(user.read_text(), "user")] == ["c"]
    assert user.read_text().startswith("# my models") and path.is_file()
    assert registry.find_model("a") is None and registry.get_model("c").origin == str(user)


def test_models_table_shows_the_license_without_its_notes(tmp_path, monkeypatch):
    """The shipped models' license notes ("...; trained on research-use images (T91, BSD200), distilled
    from ...") made every row of `upscale models` 181 characters wide; the table shows the license up to
    the first ';' and `--json` keeps the whole text."""
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    table = CliRunner().invoke(cli, ["models"])
    assert table.exit_code == 0 and max(len(line) for line in table.output.splitlines()) <= 100, table.output
    spec = registry.get_model("default-x4")
    row = next(line for line in table.output.splitlines() if line.split()[0] == "default-x4")
    assert spec.license.split(";")[0] in row and spec.license not in row
    listed = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert next(m for m in listed if m["name"] == "default-x4")["license"] == spec.license


def test_models_add_of_an_ncnn_param_says_how_to_register_it(tmp_path, monkeypatch):
    """`-m X.param` runs an ncnn pair, but `models add NAME X.param` said "unsupported weights format
    '.param'" as if ncnn were unknown; the registry records one file, so it says to convert first."""
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    param = tmp_path / "anime.param"
    param.write_text("7767517\n0 0\n")
    result = CliRunner().invoke(cli, ["models", "add", "anime", str(param)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"upscale convert {param} {tmp_path / 'anime.safetensors'}" in lines[0]
    assert "upscale models add anime " in lines[0] and not (tmp_path / "cfg" / "models.toml").exists()


def test_a_registered_file_that_changed_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    path = tiny_file(tmp_path)
    assert CliRunner().invoke(cli, ["models", "add", "mine", str(path)]).exit_code == 0
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    from upscale import hub
    with pytest.raises(errors.ChecksumError) as info:
        hub.weights_path(registry.get_model("mine"))
    assert info.value.expected in str(info.value) and info.value.actual in str(info.value)
    # what the message says to do works: the entry is replaced in place, other entries and comments kept
    user = tmp_path / "cfg" / "models.toml"
    other = tiny_file(tmp_path, "other.pth")
    assert CliRunner().invoke(cli, ["models", "add", "other", str(other)]).exit_code == 0
    user.write_text("# my models\n" + user.read_text())
    advice = f"upscale models add mine {path.resolve()} --replace"
    assert advice in str(info.value)
    result = CliRunner().invoke(cli, advice.split()[1:])
    assert result.exit_code == 0, result.output
    registry._CACHE.clear()
    assert hub.weights_path(registry.get_model("mine")) == path.resolve()
    text = user.read_text()
    assert text.startswith("# my models\n") and text.count("[[model]]") == 2 and 'name = "other"' in text


def test_invalid_user_registry_is_reported_with_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path))
    (tmp_path / "models.toml").write_text(entry("broken", arch='"nonet"'))
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 1
    assert f"{tmp_path / 'models.toml'}: model 'broken': unknown architecture 'nonet'" in result.output


def test_models_lists_the_packaged_models_with_their_real_sizes(tmp_path, monkeypatch):
    """Issue 16: the packaged models showed size "?". Issue 15: seven now (SPAN x4/x2, the GAN twin,
    the first-generation compact pair, SRCNN x4/x2)."""
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path))
    packaged = [s for s in registry.all_models() if isinstance(s.source, registry.PackageSource)]
    assert len(packaged) == 7
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    for spec in packaged:
        size = spec.source.path.stat().st_size
        assert spec.size == size
        assert f"{size / 1e6:.1f} MB" in rows[spec.name] and " ? " not in rows[spec.name], rows[spec.name]
    listed = {m["name"]: m for m in json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)}
    assert all(listed[s.name]["size"] == s.source.path.stat().st_size for s in packaged)


def test_replace_keeps_entries_whose_headers_carry_comments_or_spaces(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    first, second = tiny_file(tmp_path, "a.pth"), tiny_file(tmp_path, "b.pth")
    for name, path in (("mya", first), ("myb", second), ("myc", second)):
        assert CliRunner().invoke(cli, ["models", "add", name, str(path)]).exit_code == 0
    user = tmp_path / "cfg" / "models.toml"
    text = user.read_text()
    parts = text.split("[[model]]\n")
    user.write_text(parts[0] + "[[model]]\n" + parts[1] + "[[model]]  # my second model\n" + parts[2]
                    + "  [[ model ]]\n" + parts[3])
    registry._CACHE.clear()
    assert {s.name for s in registry.all_models()} >= {"mya", "myb", "myc"}
    result = CliRunner().invoke(cli, ["models", "add", "mya", str(second), "--replace"])
    assert result.exit_code == 0, result.output
    registry._CACHE.clear()
    names = [s.name for s in registry.parse_registry(user.read_text(), "user")]
    assert sorted(names) == ["mya", "myb", "myc"] and "# my second model" in user.read_text()


def test_a_folder_named_like_a_model_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default-x2").mkdir()
    from upscale.resolve import resolve_model

    assert resolve_model("default-x2").name == "default-x2"
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(errors.ModelNotFoundError, match="is not a weights file"):
        resolve_model("not-a-model")
    with pytest.raises(errors.ModelNotFoundError):        # too long to be a path: not an OSError
        resolve_model("a" * 300)


def test_a_user_registry_that_is_not_utf8_or_names_a_path_outside_its_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path))
    (tmp_path / "models.toml").write_bytes(b'[[model]]\nname = "caf\xe9"\n')
    registry._CACHE.clear()
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 1 and "not UTF-8" in result.output and "internal error" not in result.output
    assert str(tmp_path / "models.toml") in result.output
    for filename in ("../../etc/passwd", "/etc/passwd", "a/./b.pth", "a//b.pth"):
        source = HUB_SOURCE.replace('filename = "w.pth"', f'filename = "{filename}"')
        assert "source.filename must be a path inside the repository" in fails(entry(source=source))
    parse(entry(source=HUB_SOURCE.replace('filename = "w.pth"', 'filename = "models/w.pth"')))   # a sub-folder: fine


def test_models_add_refuses_twins_that_are_not_a_psnr_gan_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(tmp_path / "cfg"))
    path = tiny_file(tmp_path)
    assert CliRunner().invoke(cli, ["models", "add", "mine", str(path)]).exit_code == 0     # kind other
    result = CliRunner().invoke(cli, ["models", "add", "tw", str(path), "--kind", "gan", "--twin", "mine"])
    assert result.exit_code == 1 and "twins are a psnr model and a gan model" in result.output
    assert CliRunner().invoke(cli, ["models", "add", "mine", str(path), "--kind", "psnr", "--replace"]).exit_code == 0
    result = CliRunner().invoke(cli, ["models", "add", "tw", str(path), "--kind", "gan", "--twin", "mine"])
    assert result.exit_code == 0, result.output
