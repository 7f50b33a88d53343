"""`upscale batch`: discovery, naming, skip/resume, failures, kill -9 + resume, Ctrl-C, sharding.

Issue 4, Must show 1 (20 good + 6 bad files: exit 3, good outputs only, every failure reported),
2 (killed at several points and resumed: byte-identical to an uninterrupted run, no temp files left)
and 3 (--shard 1/3 .. 3/3 partition the work exactly).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from upscale import errors
from upscale.archs import build_module
from upscale.batch import FAILED, SKIPPED, parse_shard, plan_batch, shard_of
from upscale.cli import cli
from upscale.io import is_temp_file, read_image, temp_path_for
from upscale.loading import save_model

# fp32 without compile, and a fixed thread count: the same settings in every process, so outputs
# of different processes can be compared byte for byte.
FAST = ["--precision", "fp32", "--compile", "off", "--threads", "2"]


# --- helpers ---------------------------------------------------------------------------------------

def _save(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB", **params) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr, "RGBA").convert(mode).save(path, **params)
    return path


def _outputs(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every finished output under ``folder`` (temporary files excluded)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and not is_temp_file(p)}


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temp_file(p)]


def _invoke(args: list) -> object:
    return CliRunner().invoke(cli, ["batch", *map(str, args)], catch_exceptions=False)


def _model(tmp_path_factory, arch: str, hp: dict, seed: int) -> str:
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    path = tmp_path_factory.mktemp("w") / f"{arch}.safetensors"
    save_model(path, build_module(arch, hp).state_dict(), arch, hp)
    return str(path)


@pytest.fixture(scope="module")
def small_x2(tmp_path_factory) -> str:
    hp = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2, "scale": 2, "act_type": "prelu"}
    return _model(tmp_path_factory, "compact", hp, 0)


@pytest.fixture(scope="module")
def resume_set(tmp_path_factory) -> tuple[Path, Path, list]:
    """30 images in two folders, a model slow enough (~10 ms an image) to be stopped mid-run, and
    the outputs of one uninterrupted run to compare everything else with."""
    model = _model(tmp_path_factory, "tiny", {"num_in_ch": 3, "num_out_ch": 3, "scale": 2}, 1)
    src = tmp_path_factory.mktemp("resume_in")
    for i in range(30):
        _save(src / ("a" if i % 2 else "b") / f"img{i:02d}.png", (32 + i % 3 * 4, 32), seed=100 + i)
    args = ["-m", model, "--recursive", *FAST, "-q"]
    ref = tmp_path_factory.mktemp("resume_ref")
    res = _invoke([src, "--out", ref, *args])
    assert res.exit_code == 0, res.output
    return src, ref, args


# --- planning (no model) ---------------------------------------------------------------------------

def test_plan_names_mirrors_skips_and_cleans(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "a.png", (8, 8), 0)
    _save(src / "sub" / "b.jpeg", (8, 8), 1)
    _save(src / "sub" / "c.tif", (8, 8), 2)
    (src / "notes.txt").write_text("not an image")
    (src / "sub" / "d.gif").write_bytes(b"GIF89a")           # readable by Pillow, but not an output format
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "b_x4.jpg").write_bytes(b"done earlier")  # skipped: the output exists
    stale = temp_path_for(out / "a_x4.png")
    stale.write_bytes(b"half an image")                      # left by a killed run

    flat = plan_batch(src, out, outscale=4.0)
    assert [j.rel for j in flat.jobs] == ["a.png"] and flat.known == ()
    assert flat.jobs[0].output == out / "a_x4.png"
    assert flat.stale_temps_removed == 1 and not stale.exists()

    deep = plan_batch(src, out, outscale=4.0, recursive=True)
    assert [(j.rel, j.output) for j in deep.jobs] == [("a.png", out / "a_x4.png"),
                                                      ("sub/c.tif", out / "sub" / "c_x4.tif")]
    assert [(o.input, o.status) for o in deep.known] == [("sub/b.jpeg", SKIPPED)]
    assert deep.total_found == 3

    redo = plan_batch(src, out, outscale=2.5, recursive=True, overwrite=True, output_format="webp",
                      globs=("sub/*",))
    assert [(j.rel, j.output.name) for j in redo.jobs] == [("sub/b.jpeg", "b_x2.5.webp"), ("sub/c.tif", "c_x2.5.webp")]


def test_plan_collisions_agree_across_shards(tmp_path):
    src = tmp_path / "in"
    for name in ("p.jpeg", "p.jpg", "q.png"):
        _save(src / name, (8, 8), 0)
    whole = plan_batch(src, tmp_path / "out", outscale=2.0)
    assert [j.rel for j in whole.jobs] == ["p.jpeg", "q.png"]
    (clash,) = whole.known
    assert clash.input == "p.jpg" and clash.status == FAILED and "p.jpeg" in clash.reason
    shards = [plan_batch(src, tmp_path / "out", outscale=2.0, shard=(k, 3)) for k in (1, 2, 3)]
    assert sorted(j.rel for p in shards for j in p.jobs) == ["p.jpeg", "q.png"]
    assert [o.input for p in shards for o in p.known] == ["p.jpg"]


def test_output_folder_inside_input_is_not_an_input(tmp_path):
    _save(tmp_path / "a.png", (8, 8), 0)
    _save(tmp_path / "up" / "a_x2.png", (16, 16), 0)
    plan = plan_batch(tmp_path, tmp_path / "up", outscale=2.0, recursive=True)
    assert plan.total_found == 1 and plan.jobs == ()
    assert [(o.input, o.output, o.status) for o in plan.known] == [("a.png", str(tmp_path / "up" / "a_x2.png"),
                                                                     SKIPPED)]
    with pytest.raises(errors.UsageError, match="must differ"):
        plan_batch(tmp_path, tmp_path, outscale=2.0)


def test_shards_partition_any_set_of_names():
    names = [f"d{i % 7}/img_{i}.png" for i in range(300)]
    owners = [shard_of(n, 3) for n in names]
    assert set(owners) == {1, 2, 3}
    assert all(60 < owners.count(k) < 140 for k in (1, 2, 3))
    assert [shard_of(n, 3) for n in reversed(names)] == owners[::-1]  # a name's shard is its own affair
    assert all(shard_of(n, 1) == 1 for n in names)
    # Fixed values: the assignment must be the same in every process, machine and version (a salted
    # hash() would split a folder differently in each of the N processes).
    assert [shard_of(n, 3) for n in ("a/img00.png", "cat.jpg", "x/y/z.tif")] == [3, 2, 2]
    assert shard_of("cat.jpg", 1000) == 765
    assert parse_shard("2/5") == (2, 5)
    for bad in ("0/3", "4/3", "x", "1/0", "1/2/3"):
        with pytest.raises(errors.UsageError):
            parse_shard(bad)


def test_usage_errors_exit_2_and_unusable_model_exits_1(tmp_path):
    _save(tmp_path / "a.png", (8, 8), 0)
    assert _invoke([tmp_path, "--out", tmp_path / "o", "--shard", "4/3"]).exit_code == 2
    assert _invoke([tmp_path]).exit_code == 2                        # --out is required
    assert _invoke([tmp_path / "missing", "--out", tmp_path / "o"]).exit_code == 2
    assert _invoke([tmp_path, "--out", tmp_path / "o", "--report", tmp_path / "no" / "r.json"]).exit_code == 2
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    res = _invoke([tmp_path, "--out", tmp_path / "o", "-m", junk, *FAST])
    assert res.exit_code == 1 and "junk.safetensors" in res.output
    assert not (tmp_path / "o" / "a_x2.png").exists()


# --- Must show 1: good and bad files ---------------------------------------------------------------

def test_good_and_bad_files(tmp_path, small_x2):
    src, out = tmp_path / "in", tmp_path / "out"
    good: dict[str, tuple[int, int]] = {}
    modes = ["RGB", "RGBA", "L", "P"]
    for i in range(20):
        size = (24 + i % 13 * 2, 48 - i % 7 * 3)
        folder = ["", "trip/", "trip/day2/"][i % 3]
        if i % 5 == 4:
            name = f"{folder}photo{i}.jpg" if i % 2 else f"{folder}photo{i}.jpeg"
            _save(src / name, size, i, "RGB", quality=90)
        elif i == 7:
            name = f"{folder}pic{i}.webp"
            _save(src / name, size, i)
        else:
            name = f"{folder}pic{i}.png"
            _save(src / name, size, i, modes[i % 4])
        good[name] = size
    _save(src / "cmyk.jpg", (32, 24), 50, "CMYK")
    good["cmyk.jpg"] = (32, 24)
    deep = (np.random.default_rng(51).integers(0, 65536, (20, 28))).astype(np.uint16)
    PILImage.fromarray(deep).save(src / "deep16.png")
    good["deep16.png"] = (28, 20)
    whole = _save(tmp_path / "whole.png", (40, 40), 52).read_bytes()
    (src / "trip" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("this is a text file with a .png name\n")
    _save(src / "bomb.png", (64, 64), 53)                          # 4096 pixels, over --max-pixels 3000
    (src / "README.txt").write_text("ignored: not an image by its extension")
    report = tmp_path / "report.json"

    args = [src, "--out", out, "-m", small_x2, "--recursive", "--max-pixels", "3000", "--report", report,
            "--json", *FAST]
    res = _invoke(args)
    assert res.exit_code == 3, res.output

    expected = {}
    for name, size in good.items():
        stem, ext = name.rsplit(".", 1)
        expected[f"{stem}_x2.{'jpg' if ext == 'jpeg' else ext}"] = (size[0] * 2, size[1] * 2)
    produced = _outputs(out)
    assert set(produced) == set(expected)
    for name, size in expected.items():
        with PILImage.open(out / name) as im:
            im.load()
            assert im.size == size, name
    assert read_image(out / "deep16_x2.png").bit_depth == 16
    assert read_image(out / "cmyk_x2.jpg").pixels.shape == (48, 64, 3)

    bad = {"trip/truncated.png": "truncated", "empty.jpg": "empty", "text.png": "not a recognised image",
           "bomb.png": "limit"}
    files = {f["input"]: f for f in json.loads(report.read_text())["files"]}
    assert set(files) == set(good) | set(bad)
    for name, word in bad.items():
        assert files[name]["status"] == FAILED and word in files[name]["reason"], files[name]
        assert f"failed: {name}: " in res.stderr
    assert all(files[name]["status"] == "done" for name in good)
    summary = json.loads(res.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (22, 0, 4)
    assert "22 done, 0 skipped, 4 failed" in res.stderr
    assert not _temps(out)

    again = _invoke(args)                                           # resume: nothing left to do
    assert again.exit_code == 3
    assert (json.loads(again.stdout)["skipped"], json.loads(again.stdout)["failed"]) == (22, 4)
    assert _outputs(out) == produced


# --- Must show 2: kill -9 and Ctrl-C at several points, then resume --------------------------------

def _start(src: Path, out: Path, args: list, *, quiet: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "upscale", "batch", str(src), "--out", str(out), *map(str, args)]
    if not quiet:
        cmd.remove("-q")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop_after(proc: subprocess.Popen, out: Path, count: int, sig: int) -> None:
    """Send ``sig`` as soon as ``count`` outputs exist; the run must not have finished by then."""
    deadline = time.monotonic() + 120
    while len(_outputs(out)) < count:
        assert proc.poll() is None, f"finished before {count} outputs: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.002)
    proc.send_signal(sig)
    proc.wait(timeout=60)


def test_interrupted_runs_resume_to_identical_outputs(tmp_path, resume_set):
    src, ref, args = resume_set
    reference = _outputs(ref)
    assert len(reference) == 30
    out = tmp_path / "out"

    # Ctrl-C: the images in flight are finished, nothing partial, the summary so far, exit 130.
    proc = _start(src, out, args, quiet=False)
    _stop_after(proc, out, 2, signal.SIGINT)
    assert proc.returncode == 130, proc.stderr.read()
    assert "interrupted after" in proc.stderr.read()
    assert not _temps(out)
    partial = _outputs(out)
    assert 2 <= len(partial) < 30 and all(reference[name] == data for name, data in partial.items())

    # kill -9 at later points: only whole outputs ever appear, each identical to the reference.
    for count in (len(partial) + 5, 24):
        proc = _start(src, out, args)
        _stop_after(proc, out, count, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
        partial = _outputs(out)
        assert count <= len(partial) < 30 and all(reference[name] == data for name, data in partial.items())

    res = _invoke([src, "--out", out, *args, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["skipped"] == len(partial) and summary["done"] == 30 - len(partial)
    assert _outputs(out) == reference
    assert not _temps(out)


# --- Must show 3: shards -----------------------------------------------------------------------------

def test_shards_together_make_the_unsharded_set(tmp_path, resume_set):
    src, ref, args = resume_set
    reference = {name: data for name, data in _outputs(ref).items() if name.startswith("a/")}
    assert len(reference) == 15
    parts = []
    for k in (1, 2, 3):  # over the files of one sub-folder (--glob), to keep the test short
        res = _invoke([src, "--out", tmp_path / str(k), *args, "--glob", "a/*", "--shard", f"{k}/3"])
        assert res.exit_code == 0, res.output
        parts.append(_outputs(tmp_path / str(k)))
    assert all(parts) and sum(len(p) for p in parts) == len(reference)
    assert {name: data for p in parts for name, data in p.items()} == reference


def test_planned_work_counts_the_whole_shard_whatever_is_done(tmp_path):
    """--compile decides from this (on or off, the tile shape): it must not change when a run is resumed."""
    from upscale.batch import planned_work

    def planned_pixels(*args, **kwargs):
        return planned_work(*args, **kwargs).pixels

    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    _save(src / "a.png", (30, 20), 1)
    _save(src / "sub" / "b.jpg", (10, 10), 2)
    (src / "broken.png").write_bytes(b"not an image")
    out.mkdir()
    before = planned_pixels(src, recursive=True, exclude=out)
    assert before == 30 * 20 + 10 * 10
    assert planned_pixels(src, exclude=out) == 30 * 20                 # not recursive
    (out / "a_x4.png").write_bytes(b"done already")                    # a resumed run
    assert planned_pixels(src, recursive=True, exclude=out) == before
    shards = [planned_pixels(src, recursive=True, shard=(k, 2), exclude=out) for k in (1, 2)]
    assert sum(shards) == before
    assert planned_work(src, recursive=True, exclude=out).shape is None           # two sizes
    assert planned_work(src, exclude=out).shape == (20, 30)                       # one: (height, width)
