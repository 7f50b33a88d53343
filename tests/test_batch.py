"""`upscale batch`: discovery, naming, skip/resume, failures, kill -9 + resume, Ctrl-C, sharding.

Issue 4, Must show 1 (20 good + 6 bad files: exit 3, good outputs only, every failure reported),
2 (killed at several points and resumed: byte-identical to an uninterrupted run, no temp files left)
and 3 (--shard 1/3 .. 3/3 partition the work exactly).
"""

from __future__ import annotations

import json
import os
import shutil
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
from upscale import atomic
from upscale.batch import FAILED, JOURNAL_NAME, SKIPPED, parse_shard, plan_batch, shard_of
from upscale.cli import cli
from upscale.io import read_image

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


def is_temp_file(path: Path) -> bool:
    return atomic.is_temp_name(path.name)


def _dead_temp(target: Path) -> Path:
    """A temp file for ``target`` left by a process that was killed while writing it."""
    code = ("import os, sys; from upscale import atomic\n"
            "with atomic.atomic_file(sys.argv[1]) as f:\n"
            "    f.write(b'half an image'); f.flush(); os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(target)], check=True)
    (temp,) = [p for p in target.parent.iterdir() if atomic.is_temp_name(p.name) and p.name.startswith(f".{target.name}.")]
    return temp


def _outputs(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every finished output under ``folder`` (temporary files and the
    journal of what made them excluded)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not atomic.is_temp_name(p.name) and p.name != JOURNAL_NAME}


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if atomic.is_temp_name(p.name)]


def _invoke(args: list) -> object:
    return CliRunner().invoke(cli, ["batch", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def resume_set(tmp_path_factory, weights_file) -> tuple[Path, Path, list]:
    """30 images in two folders, a model slow enough (~10 ms an image) to be stopped mid-run, and
    the outputs of one uninterrupted run to compare everything else with."""
    model = str(weights_file("tiny", {"num_in_ch": 3, "num_out_ch": 3, "scale": 2}, 1))
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
    (src / "sub" / "d.gif").write_bytes(b"GIF89a")           # read, not written: its output is a PNG
    (src / "sub" / "e.xcf").write_bytes(b"gimp xcf")         # not a format io reads: ignored
    (out / "sub").mkdir(parents=True)
    _save(out / "sub" / "b_x4.jpg", (32, 32), 9)             # skipped: a complete output exists
    stale = _dead_temp(out / "a_x4.png")                     # left by a killed run

    flat = plan_batch(src, out, outscale=4.0)
    assert [j.rel for j in flat.jobs] == ["a.png"] and flat.known == ()
    assert flat.jobs[0].output == out / "a_x4.png"
    assert flat.stale_temps_removed == 1 and not stale.exists()

    deep = plan_batch(src, out, outscale=4.0, recursive=True)
    assert [(j.rel, j.output) for j in deep.jobs] == [("a.png", out / "a_x4.png"),
                                                      ("sub/c.tif", out / "sub" / "c_x4.tif"),
                                                      ("sub/d.gif", out / "sub" / "d_x4.png")]
    assert [(o.input, o.status) for o in deep.known] == [("sub/b.jpeg", SKIPPED)]
    assert deep.total_found == 4

    redo = plan_batch(src, out, outscale=2.5, recursive=True, overwrite=True, output_format="webp",
                      globs=("sub/*",))
    assert [(j.rel, j.output.name) for j in redo.jobs] == [("sub/b.jpeg", "b_x2.5.webp"), ("sub/c.tif", "c_x2.5.webp"),
                                                          ("sub/d.gif", "d_x2.5.webp")]


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


def test_outputs_that_a_linked_folder_makes_one_file_collide(tmp_path):
    """Outputs were told apart by name: with OUT_DIR/y a link to OUT_DIR/x, x/a.png and y/a.png both
    wrote out/x/a_x2.png, the second over the first. The rule (``batch.outputs``, which `upscale a b`
    shares) tells them apart by the file written."""
    from upscale.batch.outputs import INPUT, SHARED, OutputOwners

    src, out = tmp_path / "in", tmp_path / "out"
    for name in ("x/a.png", "y/a.png", "z/b.png"):
        _save(src / name, (8, 8), 0)
    (out / "x").mkdir(parents=True)
    (out / "y").symlink_to(out / "x")
    plan = plan_batch(src, out, outscale=2.0, recursive=True)
    assert [j.rel for j in plan.jobs] == ["x/a.png", "z/b.png"]
    assert [(o.input, o.status, o.reason) for o in plan.known] == [
        ("y/a.png", FAILED, f"output {out / 'y' / 'a_x2.png'} is also the output of x/a.png")]
    # the rule itself: the first claim owns a file; a link into an input is that input, its own too
    owners = OutputOwners([src / "x" / "a.png", src / "z" / "b.png"])
    assert owners.claim(out / "x" / "o.png", "one") == "one" and owners.claim(out / "y" / "o.png", "two") == "one"
    assert owners.clash(out / "y" / "o.png", "two") == owners.clash(out / "x" / "o.png", "two")
    assert owners.clash(out / "x" / "o.png", "two").kind == SHARED and owners.clash(out / "x" / "o.png", "one") is None
    (out / "z").symlink_to(src / "z")
    clash = owners.clash(out / "z" / "b.png", "three")
    assert clash.kind == INPUT and clash.other == src / "z" / "b.png"


def test_an_output_folder_that_is_a_link_to_nothing_exits_1_before_the_model_loads(tmp_path):
    """``--out link`` with ``link`` dangling passed the checks, loaded the model and then said only
    "cannot create the output folder: File exists"."""
    src = _folder(tmp_path / "in", 2)
    junk = tmp_path / "junk.safetensors"           # loading it would fail with another message
    junk.write_bytes(b"\x00" * 64)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "afile").write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")           # was "internal error: RuntimeError"
    dangling = f"link is a symlink to {tmp_path / 'nowhere'}, which does not exist"
    for out, words in (("link", dangling), ("link/", dangling), ("link/sub", dangling),
                       ("afile/sub", "afile is not a folder"), ("loop", "loop (Too many levels of symbolic links)")):
        res = _invoke([src, "--out", f"{tmp_path}/{out}", "-m", junk, *FAST])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and words in lines[0] and "junk" not in lines[0], res.stderr
    assert sorted(os.listdir(tmp_path)) == ["afile", "in", "junk.safetensors", "link", "loop"]


def test_an_input_folder_that_is_a_link_to_nothing_names_where_it_points(tmp_path):
    """``upscale batch link -o out`` with ``link`` dangling said only "Directory 'link' does not exist"
    (``plan_batch``: "link: not a folder"), as if there were no link; now one line names the link and
    its missing target, exit 2, before the model loads. Bench's and train's --data say the same."""
    from upscale.dataprep import list_images

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "afile").write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    dangling = f"link is a symlink to {tmp_path / 'nowhere'}, which does not exist"
    for src, words in (("link", dangling), ("link/", dangling), ("link/sub", dangling),
                       ("afile/sub", "afile is not a folder"), ("loop", "loop (Too many levels of symbolic links)"),
                       ("missing", "missing' does not exist")):
        res = _invoke([f"{tmp_path}/{src}", "--out", tmp_path / "out", "-m", junk, *FAST])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and words in lines[0] and "junk" not in lines[0], res.stderr
    with pytest.raises(errors.UsageError, match=f"/{dangling}$"):
        plan_batch(tmp_path / "link", tmp_path / "out", outscale=2.0)
    with pytest.raises(errors.DataError, match=f"/{dangling}$"):
        list_images(tmp_path / "link")
    assert sorted(os.listdir(tmp_path)) == ["afile", "junk.safetensors", "link", "loop"]


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

def test_good_and_bad_files(tmp_path, tiny_x2):
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

    args = [src, "--out", out, "-m", tiny_x2, "--recursive", "--max-pixels", "3000", "--report", report,
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
    report = tmp_path / "report.json"
    proc = _start(src, out, [*args, "--report", report], quiet=False)
    _stop_after(proc, out, 2, signal.SIGINT)
    assert proc.returncode == 130, proc.stderr.read()
    assert "interrupted after" in proc.stderr.read()
    assert not _temps(out)
    partial = _outputs(out)
    assert 2 <= len(partial) < 30 and all(reference[name] == data for name, data in partial.items())
    # the report has one entry per input: those the run never reached say so
    written = json.loads(report.read_text())
    statuses = {f["input"]: f["status"] for f in written["files"]}
    assert len(statuses) == 30 and written["interrupted"]
    assert sum(s == "done" for s in statuses.values()) == len(partial)
    assert sum(s == "not started" for s in statuses.values()) == written["not_started"] == 30 - len(partial)

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

    def plan(src, *, exclude, **kwargs):
        return plan_batch(src, exclude, outscale=4.0, **kwargs)

    def planned_pixels(*args, **kwargs):
        return planned_work(plan(*args, **kwargs)).pixels

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
    assert planned_work(plan(src, recursive=True, exclude=out)).shape is None     # two sizes
    assert planned_work(plan(src, exclude=out)).shape == (20, 30)                 # one: (height, width)


# --- issue 16 defects ------------------------------------------------------------------------------

def _folder(root: Path, count: int = 6) -> Path:
    for i in range(count):
        _save(root / f"img{i}.png", (12 + i, 10), seed=200 + i)
    return root


def test_resume_redoes_empty_broken_and_wrong_sized_outputs(tmp_path, tiny_x2):
    """#7: only a complete output (non-empty, header of the expected size) counts as done."""
    src = _folder(tmp_path / "in", 4)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _invoke([src, "--out", ref, "-m", tiny_x2, *FAST, "-q"]).exit_code == 0
    reference = _outputs(ref)
    out.mkdir()
    for name, data in reference.items():
        (out / name).write_bytes(data)
    (out / "img0_x2.png").write_bytes(b"")                              # zero bytes (e.g. disk full)
    (out / "img1_x2.png").write_bytes(reference["img1_x2.png"][:40])    # the header cut short
    _save(out / "img2_x2.png", (5, 5), 1)                               # an image, of the wrong size
    res = _invoke([src, "--out", out, "-m", tiny_x2, *FAST, "-q", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["done"], summary["skipped"]) == (3, 1)
    assert _outputs(out) == reference
    # cut after the header (it still reads, with the right size): redone too, in every output format
    for fmt in ("png", "jpg", "webp", "tif", "bmp"):
        ref_fmt, out_fmt = tmp_path / f"ref_{fmt}", tmp_path / f"out_{fmt}"
        args = ["-m", tiny_x2, *FAST, "-q", "--json", "--format", fmt]
        assert _invoke([src, "--out", ref_fmt, *args]).exit_code == 0
        shutil.copytree(ref_fmt, out_fmt)
        whole = (out_fmt / f"img3_x2.{fmt}").read_bytes()
        (out_fmt / f"img3_x2.{fmt}").write_bytes(whole[:len(whole) - 3])
        summary = json.loads(_invoke([src, "--out", out_fmt, *args]).stdout)
        assert (summary["done"], summary["skipped"]) == (1, 3), fmt
        assert _outputs(out_fmt) == _outputs(ref_fmt), fmt


def test_an_unwritable_output_or_report_folder_exits_1_before_the_model_loads(tmp_path, locked_folder):
    """The run could not start: one line naming the folder, exit 1, and the model is never loaded."""
    src = _folder(tmp_path / "in", 2)
    junk = tmp_path / "junk.safetensors"           # loading it would fail with another message
    junk.write_bytes(b"\x00" * 64)
    locked = locked_folder
    for out, report in ((locked, None), (locked / "sub", None), (tmp_path / "out", locked / "r.json")):
        res = _invoke([src, "--out", out, "-m", junk, *FAST, *(["--report", report] if report else [])])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and str(locked) in lines[0], res.stderr
        assert "cannot write" in lines[0] and "junk" not in lines[0]
    assert list(locked.iterdir()) == [] and not (tmp_path / "out").exists()


def test_report_path_that_could_replace_an_image_is_refused_before_any_work(tmp_path):
    """#2: an input, a planned output, or any image name inside IN/OUT: exit 2, one line, nothing touched."""
    src = _folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    junk = tmp_path / "junk.safetensors"           # the model is never loaded: refusal comes first
    junk.write_bytes(b"\x00" * 64)
    before = _outputs(src)
    for report in (src / "img0.png", out / "img0_x2.png", out / "later.JPG", src / "sub" / "x.webp"):
        if report.parent != out:
            report.parent.mkdir(exist_ok=True)
        res = _invoke([src, "--out", out, "-m", junk, "--report", report, *FAST])
        assert res.exit_code == 2, (report, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "--report" in lines[0] and "image" in lines[0], res.stderr
        assert _outputs(src) == before and not out.exists()
    res = _invoke([src, "--out", out, "-m", junk, "--report", out / "report.json", *FAST])
    assert res.exit_code == 1 and "junk.safetensors" in res.stderr      # a JSON name is fine


def test_compile_work_counts_only_images_reading_accepts(tmp_path):
    """#5: a file over the pixel limit, an unreadable one, or one whose output name collides adds nothing
    to the work that decides --compile auto."""
    from upscale.batch import planned_work

    src = tmp_path / "in"
    _save(src / "a.png", (30, 20), 1)
    _save(src / "bomb.png", (80, 80), 2)            # 6400 px: over --max-pixels 3000
    _save(src / "c.jpeg", (10, 10), 3)
    _save(src / "c.jpg", (40, 40), 4)               # same output name as c.jpeg: refused while planning
    (src / "broken.png").write_bytes(b"not an image")
    plan = plan_batch(src, tmp_path / "out", outscale=2.0)
    assert planned_work(plan, max_pixels=3000).pixels == 30 * 20 + 10 * 10
    assert planned_work(plan).pixels == 30 * 20 + 80 * 80 + 10 * 10


def test_two_concurrent_batches_into_one_folder_and_planted_symlinks(tmp_path, resume_set):
    """#1: two batches on one output folder both finish (neither deletes the other's temps); symlinks
    planted where the old predictable temps went, or where a dead run's temp was, are never followed."""
    src, ref, args = resume_set
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "a" / ".img01_x2.png.upscale-tmp").symlink_to(victim)          # the old temp name
    dead = _dead_temp(out / "a" / "img03_x2.png")
    dead.unlink()
    dead.symlink_to(victim)                                                # a dead process's temp name
    procs = [_start(src, out, args) for _ in range(2)]
    for proc in procs:
        proc.wait(timeout=300)
        assert proc.returncode == 0, proc.stderr.read()
    assert victim.read_text() == "keep me"
    assert _outputs(out) == {**_outputs(ref), "a/.img01_x2.png.upscale-tmp": b"keep me"}
    assert not _temps(out)


def test_shard_from_launcher_environment():
    from upscale.batch import shard_from_environment

    assert shard_from_environment({}) is None
    assert shard_from_environment({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "0",
                                   "LOCAL_WORLD_SIZE": "1"})[0] == (2, 3)        # global rank wins
    assert shard_from_environment({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"})[0] == (1, 2)
    assert shard_from_environment({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"})[0] == (4, 4)
    assert shard_from_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None      # one copy: everything
    with pytest.raises(errors.UsageError):
        shard_from_environment({"SLURM_PROCID": "4", "SLURM_NTASKS": "4"})


def test_two_launched_processes_split_the_folder(tmp_path, resume_set):
    """Launcher shards: two real `python -m upscale batch` processes with torchrun's variables and no
    --shard make disjoint outputs that together are the unsharded run's."""
    import os

    src, ref, args = resume_set
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID")}
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
        cmd = [sys.executable, "-m", "upscale", "batch", str(src), "--out", str(tmp_path / str(rank)),
               *map(str, args)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        proc.wait(timeout=300)
        assert proc.returncode == 0, proc.stderr.read()
    parts = [_outputs(tmp_path / str(rank)) for rank in (0, 1)]
    assert all(parts) and not set(parts[0]) & set(parts[1])
    assert {**parts[0], **parts[1]} == _outputs(ref)


def test_progress_off_a_terminal_is_plain_lines(tmp_path, tiny_x2):
    """#14: no bar fragments off a terminal: failure lines stand alone, progress lines are few."""
    src = _folder(tmp_path / "in", 12)
    (src / "bad.png").write_text("not a png")
    res = _invoke([src, "--out", tmp_path / "out", "-m", tiny_x2, *FAST])
    assert res.exit_code == 3
    assert "\r" not in res.stderr and "\x1b" not in res.stderr
    lines = res.stderr.splitlines()
    assert "upscale: failed: bad.png: not a recognised image (cannot identify image file)" in lines
    assert 1 <= sum("upscale: batch: " in ln for ln in lines) <= 11
    quiet = _invoke([src, "--out", tmp_path / "out2", "-m", tiny_x2, *FAST, "-q"])
    assert quiet.stderr.splitlines() == ["upscale: failed: bad.png: not a recognised image (cannot identify image file)"]
    (src / "bad.png").rename(src / "bad\nname.png")             # a newline in a name: still one line
    quiet = _invoke([src, "--out", tmp_path / "out3", "-m", tiny_x2, *FAST, "-q"])
    assert quiet.stderr.splitlines() == ["upscale: failed: bad\\nname.png: not a recognised image "
                                         "(cannot identify image file)"]


def test_frames_all_turns_animated_inputs_into_animations_and_resumes(tmp_path, tiny_x4):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "still.png", (9, 7), 1)
    rng = np.random.default_rng(6)
    gif = [PILImage.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).quantize(8) for _ in range(3)]
    gif[0].save(src / "loop.gif", save_all=True, append_images=gif[1:], duration=[50, 60, 70], loop=0)
    args = ["batch", str(src), "--out", str(out), "-m", tiny_x4, "--frames", "all", *FAST, "-q"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with PILImage.open(out / "loop_x4.png") as apng, PILImage.open(out / "still_x4.png") as still:
        assert (apng.n_frames, apng.size) == (3, (36, 28)) and getattr(still, "n_frames", 1) == 1
        apng.seek(2)
        assert apng.info["duration"] == 70
    again = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert json.loads(again.stdout)["skipped"] == 2                    # resumes: both outputs complete
    # an output of --frames first (one frame) is not the animation --frames all asks for: redone
    first = CliRunner().invoke(cli, [*args[:6], *args[8:], "--overwrite"], catch_exceptions=False)
    assert first.exit_code == 0 and PILImage.open(out / "loop_x4.png").n_frames == 1
    again = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert (json.loads(again.stdout)["done"], PILImage.open(out / "loop_x4.png").n_frames) == (1, 3)
    # a format without animation fails that file before the model runs it, and the run goes on
    res = CliRunner().invoke(cli, [*args[:3], str(tmp_path / "jpg"), *args[4:], "--format", "jpg"],
                             catch_exceptions=False)
    assert res.exit_code == 3 and sorted(_outputs(tmp_path / "jpg")) == ["still_x4.jpg"]


# --- the journal: a rerun with other settings, or after an input changed, redoes those outputs -----------

def test_a_rerun_redoes_what_other_settings_or_changed_inputs_made(tmp_path, tiny_x2, weights_file):
    other = str(weights_file("compact", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2,
                                         "scale": 2, "act_type": "prelu"}, 5, "other_x2"))
    src = _folder(tmp_path / "in", 4)
    out, fresh = tmp_path / "out", tmp_path / "fresh"

    said = []

    def run(model, folder, *extra):
        res = _invoke([src, "--out", folder, "-m", model, *FAST, "--json", *extra])
        assert res.exit_code == 0, res.output
        said[:] = [line for line in res.stderr.splitlines() if "redoing" in line]
        return json.loads(res.stdout)

    assert run(tiny_x2, out)["done"] == 4
    assert run(tiny_x2, out)["skipped"] == 4                       # same settings: resume as before
    summary = run(other, out)                                      # another model: every output redone
    assert (summary["done"], summary["skipped"]) == (4, 0)
    assert said == ["upscale: redoing 4 outputs made with other settings (model, scale, alpha mode, quality or --frames)"]
    run(other, fresh)
    assert _outputs(out) == _outputs(fresh)
    assert run(other, out)["skipped"] == 4
    assert run(other, out, "--quality", "80")["skipped"] == 4                # PNG has no quality
    assert run(other, out, "--format", "jpg")["done"] == 4
    assert run(other, out, "--format", "jpg", "--quality", "95")["skipped"] == 4   # the default, spelled out
    assert run(other, out, "--format", "jpg", "--quality", "80")["done"] == 4
    # an input whose pixels changed (same size, same dimensions) is redone; one only touched is not
    _save(src / "img1.png", (13, 10), seed=999)
    os.utime(src / "img2.png", ns=(1, 10**18))
    summary = run(tiny_x2, fresh)
    assert (summary["done"], summary["skipped"]) == (4, 0)         # other settings than `other`'s
    summary = run(tiny_x2, fresh)
    assert (summary["done"], summary["skipped"]) == (0, 4)
    _save(src / "img3.png", (15, 10), seed=1234)
    os.utime(src / "img0.png", ns=(1, 10**18))
    summary = run(tiny_x2, fresh)
    assert (summary["done"], summary["skipped"]) == (1, 3)
    assert said == ["upscale: redoing 1 output made from an input that has changed since"]


def test_without_a_journal_or_with_lines_that_do_not_parse_the_size_rule_decides(tmp_path, tiny_x2):
    src = _folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = [src, "--out", out, "-m", tiny_x2, *FAST, "-q", "--json"]
    assert _invoke(args).exit_code == 0
    journal = out / JOURNAL_NAME
    lines = [line for line in journal.read_text().splitlines() if line]     # each record opens a line
    assert len(lines) == 3 and all(json.loads(line)["settings"] for line in lines)
    journal.write_text("not json\n" + lines[0][:20] + "\n")          # cut and garbled
    assert json.loads(_invoke(args).stdout)["skipped"] == 3
    journal.unlink()                                                 # a folder made before the journal
    assert json.loads(_invoke(args).stdout)["skipped"] == 3


def test_name_template_for_a_folder_and_what_it_refuses(tmp_path, tiny_x2):
    """--name {stem} keeps the inputs' names in OUT_DIR (Real-ESRGAN's --suffix ''); a template
    without {stem}, with an unknown field or a folder is refused before the model loads."""
    src = _folder(tmp_path / "in", 3)
    _save(src / "sub" / "deep.jpg", (11, 10), seed=9, quality=90)
    out = tmp_path / "out"
    res = _invoke([src, "--out", out, "-m", tiny_x2, "-r", "--name", "{stem}", *FAST, "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(_outputs(out)) == ["img0.png", "img1.png", "img2.png", "sub/deep.jpg"]
    res = _invoke([src, "--out", tmp_path / "o2", "-m", tiny_x2, "--name", "hd-{stem}@{scale}x", *FAST, "-q"])
    assert res.exit_code == 0 and sorted(_outputs(tmp_path / "o2"))[0] == "hd-img0@2x.png"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\0" * 64)
    for template, words in (("fixed", "needs {stem}"), ("{stem}_{model}", "unknown field {model}"),
                            ("a/{stem}", "without folders"), ("{stem", "not a template")):
        res = _invoke([src, "--out", tmp_path / "o3", "-m", junk, "--name", template, *FAST])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and "--name" in lines[0] and words in lines[0], res.stderr


def test_journal_digest_of_a_batchnorm_model_and_frames_merged_by_the_writer(tmp_path, weights_file):
    """A 0-d buffer (BatchNorm's step count) is digested; an animation whose writer merged identical
    frames is still done on a rerun (the journal says --frames all made it, not its frame count)."""
    srgan = str(weights_file("srresnet", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1,
                                          "scale": 2, "bn": True}, 0, "bn_x2"))
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "still.png", (9, 7), 1)
    rng = np.random.default_rng(6)
    frames = [PILImage.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)) for _ in range(2)]
    frames.append(frames[-1].copy())                          # the last frame twice: merged on writing
    frames[0].save(src / "dup.gif", save_all=True, append_images=frames[1:], duration=[50, 60, 70], loop=0)
    args = [src, "--out", out, "-m", srgan, "--frames", "all", *FAST, "-q", "--json"]
    first = _invoke(args)
    assert first.exit_code == 0 and json.loads(first.stdout)["done"] == 2, first.output
    again = json.loads(_invoke(args).stdout)
    assert (again["done"], again["skipped"]) == (0, 2)
    switched = json.loads(_invoke([*args[:5], *args[7:]]).stdout)       # --frames first: the GIF redone
    assert (switched["done"], switched["skipped"]) == (1, 1)


def test_an_input_touched_but_unchanged_is_hashed_once(tmp_path, tiny_x2, monkeypatch):
    from upscale.batch import journal, settings_key
    from upscale import load_model

    src = _folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert _invoke([src, "--out", out, "-m", tiny_x2, *FAST, "-q"]).exit_code == 0
    os.utime(src / "img1.png", ns=(1, 10**18))
    hashed = []
    real = journal.sha256_file
    monkeypatch.setattr(journal, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    key = settings_key(load_model(tiny_x2), outscale=2.0, alpha_mode="model")
    for _ in range(3):
        plan = plan_batch(src, out, outscale=2.0, settings=key)
        assert len(plan.jobs) == 0 and len(plan.finished) == 3
    assert hashed == ["img1.png"]


# --- the journal when it cannot be written ----------------------------------------------------------

def _run_in_process(src, out, model_path, *, stop_during=False, break_journal=False):
    """run_batch in this process; ``stop_during``: the stop event is set while the (only) image is in
    the model, as Ctrl-C would; ``break_journal``: after planning, the journal's name becomes a folder,
    so every append fails (EISDIR), as a full disk or a journal made immutable meanwhile would."""
    import threading

    from upscale import api, load_model
    from upscale.batch import BatchSettings, Journal, run_batch, settings_key
    from upscale.engine import EngineOptions

    model = load_model(model_path)
    plan = plan_batch(src, out, outscale=float(model.scale))
    out.mkdir(exist_ok=True)
    if break_journal:
        (out / JOURNAL_NAME).mkdir()
    stop = threading.Event()
    settings = BatchSettings(outscale=float(model.scale), workers=1, journal=Journal(out),
                             settings_key=settings_key(model, outscale=float(model.scale), alpha_mode="model"))
    upscaler = api.Upscaler(model, EngineOptions(device="cpu", precision="fp32", tile_px=8, compile="off"))
    on_tiles = (lambda rel, done, total: stop.set()) if stop_during else None
    return run_batch(plan, upscaler, settings, stop=stop, on_tiles=on_tiles)


def test_ctrl_c_during_the_last_image_is_an_interrupted_run(tmp_path, tiny_x2):
    src = _folder(tmp_path / "in", 1)
    summary = _run_in_process(src, tmp_path / "out", tiny_x2, stop_during=True)
    assert summary.interrupted and summary.done == 1               # finished whole, and still exit 130


def test_an_output_that_cannot_be_recorded_is_removed_and_failed(tmp_path, tiny_x2):
    """An older line may describe that output (other settings): kept, it would be skipped as theirs."""
    src = _folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    summary = _run_in_process(src, out, tiny_x2, break_journal=True)
    assert summary.failed == 2 and all("not recorded" in o.reason for o in summary.outcomes)
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL_NAME]


def test_an_on_outcome_that_raises_stops_the_run_and_is_raised_without_a_hang(tmp_path, tiny_x2):
    """A callback that raised (a progress line on a closed stderr) killed the writer thread that called
    it, and the model thread waited for ever on the full queue; now the run stops as on Ctrl-C, the
    images in flight are written whole, and the exception comes out of ``run_batch``."""
    import threading

    from upscale import api, load_model
    from upscale.batch import BatchSettings, run_batch
    from upscale.engine import EngineOptions

    src, out = _folder(tmp_path / "in", 6), tmp_path / "out"
    model = load_model(tiny_x2)
    plan = plan_batch(src, out, outscale=2.0)
    out.mkdir()
    upscaler = api.Upscaler(model, EngineOptions(device="cpu", precision="fp32", compile="off"))

    def on_outcome(outcome: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    result: list[BaseException] = []

    def run() -> None:
        try:
            run_batch(plan, upscaler, BatchSettings(outscale=2.0, workers=1), on_outcome=on_outcome)
        except BaseException as err:  # noqa: BLE001
            result.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and len(result) == 1 and isinstance(result[0], BrokenPipeError)
    written = sorted(out.iterdir())
    assert 1 <= len(written) < 6 and not any(is_temp_file(p) for p in written)
    assert all(read_image(p).pixels.shape[0] == 20 for p in written)


def test_a_journal_that_cannot_be_added_to_or_named_as_the_report(tmp_path, tiny_x2):
    src = _folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _invoke([src, "--out", out, "-m", tiny_x2, *FAST, "-q"]).exit_code == 0
    res = _invoke([src, "--out", out, "-m", tiny_x2, *FAST, "--report", out / JOURNAL_NAME])
    assert res.exit_code == 2 and "journal" in res.stderr
    journal = out / JOURNAL_NAME
    journal.chmod(0o444)
    immutable = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(journal)],
                                                          capture_output=True).returncode == 0
    try:
        try:
            os.close(os.open(journal, os.O_WRONLY | os.O_APPEND))
            pytest.skip("this user can write a read-only file (root without chattr)")
        except OSError:
            pass
        res = _invoke([src, "--out", out, "-m", tiny_x2, *FAST, "-q"])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and JOURNAL_NAME in lines[0], res.stderr
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(journal)], check=True)
        journal.chmod(0o644)


def test_a_record_cut_short_by_a_full_disk_never_swallows_the_next(tmp_path):
    """A file size limit stands in for a full disk: the write is refused part way (OSError), and the
    next record, written later, still reads on its own line."""
    code = """
import resource, signal, sys
from pathlib import Path
from upscale.batch import Journal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
journal = Journal(Path(sys.argv[1]))
size = journal.path.stat().st_size if journal.path.exists() else 0
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, resource.RLIM_INFINITY))
try:
    journal.append(Path(sys.argv[1]) / "a_x2.png", "k1", {"size": 1})
except OSError as err:
    print("refused", err.errno)
"""
    out = tmp_path / "out"
    out.mkdir()
    from upscale.batch import Journal

    Journal(out).append(out / "b_x2.png", "k0", {"size": 2})
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert "refused" in proc.stdout, proc.stderr
    Journal(out).append(out / "c_x2.png", "k2", {"size": 3})
    records = Journal(out).read()
    assert sorted(records) == ["b_x2.png", "c_x2.png"] and records["c_x2.png"]["settings"] == "k2"


def test_sub_folders_with_frames_all_and_a_size_the_format_cannot_hold(tmp_path, tiny_x4):
    """An animation in a sub-folder failed with "output folder does not exist" (the reader checked a
    folder the writer makes); an output WebP cannot hold fails that file before the model, not after."""
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(8)
    gif = [PILImage.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).quantize(8) for _ in range(2)]
    (src / "sub").mkdir(parents=True)
    gif[0].save(src / "sub" / "anim.gif", save_all=True, append_images=gif[1:], duration=50, loop=0)
    _save(src / "wide.png", (4100, 2), 3)                           # x4: 16400 px, over WebP's 16383
    _save(src / "small.png", (9, 7), 4)
    res = _invoke([src, "--out", out, "-m", tiny_x4, "-r", "--frames", "all", "--format", "webp", *FAST,
                   "--json"])
    summary = json.loads(res.stdout)
    assert res.exit_code == 3 and (summary["done"], summary["failed"]) == (2, 1), res.output
    assert summary["failures"][0]["input"] == "wide.png" and "16383" in summary["failures"][0]["reason"]
    assert sorted(_outputs(out)) == ["small_x4.webp", "sub/anim_x4.webp"]


def test_a_run_started_with_sigint_ignored_is_not_stopped_by_it(tmp_path, resume_set):
    """A shell without job control starts `upscale batch ... &` with SIGINT ignored (POSIX): the
    script's Ctrl-C is not the run's. The run keeps it ignored and writes every output."""
    src, ref, args = resume_set
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "upscale", "batch", str(src), "--out", str(out), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    _stop_after(proc, out, 2, signal.SIGINT)
    assert proc.returncode == 0, proc.stderr.read()
    assert _outputs(out) == _outputs(ref)
