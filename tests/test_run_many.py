"""`upscale a.jpg b.jpg c.png -s 4` (what `upscale *.jpg -s 4` types): several images through `run`,
the model loaded once; refusals up front, one line per file; exit 0 / 3 / 1 / 2 / 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from click.testing import CliRunner
from PIL import Image as PILImage

from upscale.cli import cli

FAST = ["--precision", "fp32", "--compile", "off"]


def _photo(path, size=(13, 11), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _lines(text):
    return [ln for ln in text.splitlines() if ln.strip()]


def _junk(tmp_path):
    """Weights that fail to load: an answer that does not mention them came before the model loaded."""
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    return junk


def test_several_images_each_beside_its_input_one_line_each_in_the_order_given(tmp_path, tiny_x4):
    srcs = [_photo(tmp_path / name, seed=i) for i, name in enumerate(["c.png", "a.png", "sub/b.jpg"])]
    res = _invoke([*srcs, "-m", tiny_x4, "-s", "2", *FAST])
    assert res.exit_code == 0, res.output
    for out in (tmp_path / "c_x2.png", tmp_path / "a_x2.png", tmp_path / "sub" / "b_x2.jpg"):
        with PILImage.open(out) as im:
            assert im.size == (26, 22)
    progress = [ln for ln in _lines(res.stderr) if " -> " in ln]     # one line per image, not per tile
    assert [ln.split(": ")[1] for ln in progress] == ["1/3", "2/3", "3/3"], res.stderr
    assert [ln.split(" -> ")[0].rsplit(" ", 1)[1] for ln in progress] == [str(s) for s in srcs]
    # the same command again (--force) gives the same bytes; -q says nothing at all
    before = {p: p.read_bytes() for p in tmp_path.rglob("*_x2.*")}
    again = _invoke([*srcs, "-m", tiny_x4, "-s", "2", "--force", "-q", *FAST])
    assert again.exit_code == 0 and again.stderr == "", again.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*_x2.*")} == before


def test_o_names_an_existing_folder_for_several_images(tmp_path, tiny_x4):
    srcs = [_photo(tmp_path / "in" / n, seed=i) for i, n in enumerate(["a.png", "b.png"])]
    out = tmp_path / "out"
    out.mkdir()
    res = _invoke([*srcs, "-m", tiny_x4, "-o", out, "--name", "{stem}", "-q", *FAST])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]
    assert sorted(os.listdir(tmp_path / "in")) == ["a.png", "b.png"]


def test_o_that_is_not_a_folder_with_several_images_is_a_usage_error_before_anything(tmp_path):
    srcs = [_photo(tmp_path / n) for n in ("a.png", "b.png")]
    junk = _junk(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for output in (tmp_path / "a.png", tmp_path / "new.png", tmp_path / "nodir", tmp_path / "link"):
        res = _invoke([*srcs, "-m", junk, "-o", output, *FAST])
        lines = _lines(res.stderr)
        assert res.exit_code == 2 and len(lines) == 1, res.stderr
        assert "must name an existing folder" in lines[0] and "upscale run --help" in lines[0]
    # a link to nothing says so and where it points, -o link/ too (it cannot be made: exit 1)
    assert f"link is a symlink to {tmp_path / 'nowhere'}, which does not exist" in lines[0], lines
    res = _invoke([*srcs, "-m", junk, "-o", f"{tmp_path / 'link'}/", *FAST])
    link = tmp_path / "link"
    assert res.exit_code == 1 and _lines(res.stderr) == [f"upscale: cannot write output: {link}/: {link} is a "
                                                         f"symlink to {tmp_path / 'nowhere'}, which does not exist"]
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png", "junk.safetensors", "link"]


def test_a_missing_file_and_a_folder_are_said_first_and_the_others_go_on(tmp_path, tiny_x4):
    a, b = _photo(tmp_path / "a.png"), _photo(tmp_path / "b.png", seed=1)
    folder = tmp_path / "holiday"
    folder.mkdir()
    res = _invoke([a, tmp_path / "missing.png", folder, b, "-m", tiny_x4, *FAST])
    assert res.exit_code == 3, res.output
    lines = _lines(res.stderr)
    assert "missing.png: file not found" in lines[0] and lines[0].startswith("upscale: cannot read image: ")
    assert lines[1] == f"upscale: usage: {folder} is a folder; for every image in it: upscale batch {folder} --out OUT_DIR"
    assert lines[-1] == "upscale: 2 of 4 images written, 2 failed"
    assert (tmp_path / "a_x4.png").is_file() and (tmp_path / "b_x4.png").is_file()


def test_when_no_image_can_be_written_the_model_is_not_loaded_and_the_exit_is_1(tmp_path, tiny_x4):
    a, b = _photo(tmp_path / "a.png"), _photo(tmp_path / "b.png")
    junk = _junk(tmp_path)
    res = _invoke([tmp_path / "missing.png", tmp_path / "gone.png", "-m", junk, *FAST])
    assert res.exit_code == 1 and len(_lines(res.stderr)) == 2 and "junk" not in res.stderr, res.stderr
    (tmp_path / "a_x4.png").write_bytes(b"old")
    (tmp_path / "b_x4.png").write_bytes(b"old")
    res = _invoke([a, b, "-m", junk, "-s", "4", *FAST])
    lines = _lines(res.stderr)
    assert res.exit_code == 1 and len(lines) == 2 and "junk" not in res.stderr, res.stderr
    assert all("exists already; pass --force to overwrite" in ln for ln in lines)
    # without -s the names wait for the model's scale: still refused before any image is upscaled
    res = _invoke([a, b, "-m", tiny_x4, *FAST])
    assert res.exit_code == 1 and sum("exists already" in ln for ln in _lines(res.stderr)) == 2
    assert (tmp_path / "a_x4.png").read_bytes() == b"old"


def test_two_inputs_with_one_output_name_are_refused_naming_both(tmp_path, tiny_x4):
    a = _photo(tmp_path / "a.png")
    a_jpg = tmp_path / "a.jpg"
    PILImage.open(a).save(a_jpg)
    res = _invoke([a, a_jpg, "--format", "png", "-m", tiny_x4, "-q", *FAST])
    lines = _lines(res.stderr)
    assert res.exit_code == 3 and len(lines) == 1, res.stderr
    assert lines[0] == f"upscale: cannot write output: {a_jpg}: its output {tmp_path / 'a_x4.png'} is also the output of {a}"
    assert (tmp_path / "a_x4.png").is_file()
    # into one folder: the same name from two folders
    sub = _photo(tmp_path / "sub" / "a.png", seed=3)
    out = tmp_path / "out"
    out.mkdir()
    res = _invoke([a, sub, "-o", out, "-m", tiny_x4, "-q", *FAST])
    assert res.exit_code == 3 and str(sub) in res.stderr and f"also the output of {a}" in res.stderr
    assert os.listdir(out) == ["a_x4.png"]
    # the same file twice is one image
    res = _invoke([a, a, "-m", tiny_x4, "--force", "-q", *FAST])
    assert res.exit_code == 0 and res.stderr == ""


def test_an_output_over_another_input_of_the_run_is_refused_even_with_force(tmp_path, tiny_x4):
    a = _photo(tmp_path / "a.png")
    earlier = _photo(tmp_path / "a_x4.png", size=(52, 44), seed=2)
    kept = earlier.read_bytes()
    res = _invoke([a, earlier, "-m", tiny_x4, "--force", "-q", *FAST])
    assert res.exit_code == 3, res.output
    assert _lines(res.stderr) == [f"upscale: cannot write output: {a}: refusing to overwrite {earlier}, "
                                  "another input of this run"]
    assert earlier.read_bytes() == kept and (tmp_path / "a_x4_x4.png").is_file()
    # an input refused for its header is still an input: it was overwritten (upscale batch never did)
    broken = tmp_path / "b_x4.png"
    broken.write_bytes(b"not an image")
    b = _photo(tmp_path / "b.png", seed=3)
    res = _invoke([b, broken, "-m", tiny_x4, "--force", "-q", *FAST])
    assert res.exit_code == 1, res.output
    assert _lines(res.stderr)[1] == (f"upscale: cannot write output: {b}: refusing to overwrite {broken}, "
                                     "another input of this run")
    assert broken.read_bytes() == b"not an image"
    # nor through a link into an input: here the output folder's a_x4.png leads to b.png
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_x4.png").symlink_to(b)
    res = _invoke([a, b, "-o", out, "-m", tiny_x4, "--force", "-q", *FAST])
    assert res.exit_code == 3 and f"refusing to overwrite {out / 'a_x4.png'}, another input" in res.stderr
    assert (out / "b_x4.png").is_file() and PILImage.open(b).size == (13, 11)


def test_a_file_that_fails_to_decode_fails_alone_exit_3(tmp_path, tiny_x4):
    good = _photo(tmp_path / "good.png", size=(40, 40))
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:200])       # the header reads; the pixels do not
    last = _photo(tmp_path / "last.png", seed=1)
    res = _invoke([good, bad, last, "-m", tiny_x4, *FAST])
    assert res.exit_code == 3, res.output
    failed = [ln for ln in _lines(res.stderr) if "bad.png" in ln]
    assert len(failed) == 1 and failed[0].startswith("upscale: cannot read image: "), res.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.png", "good.png", "good_x4.png", "last.png", "last_x4.png"]


def test_frames_all_per_file_among_several(tmp_path, tiny_x4):
    frames = [PILImage.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=[50, 60, 70])
    still = _photo(tmp_path / "still.png")
    res = _invoke([tmp_path / "anim.gif", still, "--frames", "all", "-m", tiny_x4, *FAST])
    assert res.exit_code == 0, res.output
    assert "(48x40, 3 frames)" in res.stderr
    with PILImage.open(tmp_path / "anim_x4.png") as im:
        assert im.n_frames == 3 and im.size == (48, 40)
    assert (tmp_path / "still_x4.png").is_file()
    # an animated output its format cannot hold fails that file only, before the model
    res = _invoke([tmp_path / "anim.gif", still, "--frames", "all", "--format", "jpg", "-m", tiny_x4, "-q", *FAST])
    assert res.exit_code == 3 and len(_lines(res.stderr)) == 1 and "anim_x4.jpg: JPEG holds no animation" in res.stderr


def test_help_says_the_exit_codes_of_several_images():
    res = _invoke(["run", "--help"])
    text = " ".join(res.output.split())
    assert "IMAGE..." in text and "With several IMAGEs: 0 all written, 3 some failed" in text


def test_ctrl_c_stops_at_once_exit_130_and_leaves_only_whole_outputs(tmp_path, tiny_x4):
    srcs = [_photo(tmp_path / f"p{i}.png", size=(64, 64), seed=i) for i in range(8)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "upscale", *map(str, srcs), "-m", tiny_x4, "--tile", "4",
                             "--threads", "1", *FAST], stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if " -> " in line or not line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, (lines, rest)
    assert "upscale: interrupted; " in rest and "Traceback" not in rest
    outputs = sorted(p for p in os.listdir(tmp_path) if p.endswith("_x4.png"))
    assert 1 <= len(outputs) < len(srcs), outputs
    assert sorted(os.listdir(tmp_path)) == sorted([s.name for s in srcs] + outputs)     # no temp files
    for name in outputs:
        with PILImage.open(tmp_path / name) as im:
            im.load()
            assert im.size == (256, 256)
