"""End to end through the real CLI (click's runner in-process): `upscale IMAGE ...`.

Issue 2, Must show 4 (-s 3 with a x4 model gives exactly 3x) and 5 (each bad input gives a one-line
error, exit 1 and no output file).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from upscale.archs import build_module
from upscale.cli import cli

FAST = ["--precision", "fp32", "--compile", "off", "-q"]


def _photo(path, size=(23, 17), mode="RGB"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PILImage.fromarray(arr).convert(mode).save(path)
    return path


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_default_name_and_exact_fractional_scale(tmp_path, tiny_x4):
    src = _photo(tmp_path / "cat.png")
    res = _invoke([src, "-m", tiny_x4, "-s", "3", *FAST])
    assert res.exit_code == 0, res.output
    out = tmp_path / "cat_x3.png"
    with PILImage.open(out) as im:
        assert im.size == (69, 51)
    # never overwrite without --force; --force does
    again = _invoke([src, "-m", tiny_x4, "-s", "3", *FAST])
    assert again.exit_code == 1 and "exists already" in again.output
    assert _invoke([src, "-m", tiny_x4, "-s", "3", "--force", *FAST]).exit_code == 0


def test_native_scale_with_unshuffle_model_odd_size(tmp_path, tiny_x2_rrdb):
    src = _photo(tmp_path / "odd.png", size=(21, 15))  # not a multiple of the unshuffle factor
    res = _invoke([src, "-m", tiny_x2_rrdb, "-o", tmp_path / "o.png", *FAST])
    assert res.exit_code == 0, res.output
    with PILImage.open(tmp_path / "o.png") as im:
        assert im.size == (42, 30)


def test_refuses_to_overwrite_input(tmp_path, tiny_x4):
    src = _photo(tmp_path / "a.png")
    res = _invoke([src, "-m", tiny_x4, "-o", src, "--force", *FAST])
    assert res.exit_code == 1 and "overwrite the input" in res.output


def _bad_inputs(tmp_path):
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a jpeg\n")
    good = _photo(tmp_path / "good.png", size=(64, 64))
    trunc_png = tmp_path / "trunc.png"
    trunc_png.write_bytes(good.read_bytes()[:200])
    jpg = tmp_path / "good.jpg"
    PILImage.open(good).save(jpg, quality=90)
    trunc_jpg = tmp_path / "trunc.jpg"
    trunc_jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    return {"missing": tmp_path / "missing.png", "zero-byte": zero, "text named .jpg": text,
            "truncated png": trunc_png, "truncated jpeg": trunc_jpg}


def test_bad_inputs_one_line_exit_1_no_output(tmp_path, tiny_x4):
    for label, path in _bad_inputs(tmp_path).items():
        before = set(os.listdir(tmp_path))
        res = _invoke([path, "-m", tiny_x4, *FAST])
        assert res.exit_code == 1, (label, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(path.name) in lines[0], (label, res.output)
        assert set(os.listdir(tmp_path)) == before, label


def test_bomb_limit_and_override(tmp_path, tiny_x4):
    src = _photo(tmp_path / "big.png", size=(40, 40))
    res = _invoke([src, "-m", tiny_x4, "--max-pixels", "1000", *FAST])
    assert res.exit_code == 1 and "big.png" in res.output
    assert not (tmp_path / "big_x4.png").exists()
    assert _invoke([src, "-m", tiny_x4, "--max-pixels", "2000", *FAST]).exit_code == 0


def test_unwritable_output_dir(tmp_path, tiny_x4, locked_folder):
    """Refused before the model loads (a file named as weights that would fail to load says so)."""
    src = _photo(tmp_path / "a.png")
    res = _invoke([src, "-m", tiny_x4, "-o", locked_folder / "a.png", *FAST])
    assert res.exit_code == 1 and list(locked_folder.iterdir()) == []
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    res = _invoke([src, "-m", junk, "-o", locked_folder / "a_x4.png"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "cannot write in" in lines[0] and "junk" not in lines[0], lines


def test_missing_output_dir(tmp_path, tiny_x4):
    src = _photo(tmp_path / "a.png")
    res = _invoke([src, "-m", tiny_x4, "-o", tmp_path / "nope" / "a.png", *FAST])
    assert res.exit_code == 1 and "nope" in res.output


def test_bad_weights(tmp_path, tiny_x4):
    src = _photo(tmp_path / "a.png")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(open(tiny_x4, "rb").read()[:100])
    res = _invoke([src, "-m", corrupt, *FAST])
    assert res.exit_code == 1 and "corrupt.safetensors" in res.output
    assert not (tmp_path / "a_x4.png").exists()

    pytest.importorskip("torch")
    from safetensors.torch import save_file
    hp = {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 4}
    sd = build_module("rrdbnet", hp).state_dict()
    sd.pop("conv_hr.weight")
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(wrong),
              metadata={"upscale.arch": "compact", "upscale.hparams": '{"scale": 4}', "upscale.format": "1"})
    res = _invoke([src, "-m", wrong, *FAST])
    assert res.exit_code == 1 and "wrong.safetensors" in res.output and "compact" in res.output


def test_fp16_on_cpu_is_a_usage_error(tmp_path, tiny_x4):
    src = _photo(tmp_path / "a.png")
    res = _invoke([src, "-m", tiny_x4, "--precision", "fp16", "--compile", "off", "-q"])
    assert res.exit_code == 1 and "fp16" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
    assert not (tmp_path / "a_x4.png").exists()


def test_unknown_model_name(tmp_path):
    src = _photo(tmp_path / "a.png")
    res = _invoke([src, "-m", "no-such-model", *FAST])
    assert res.exit_code == 2 and "no-such-model" in res.output


# --- issue 16 defects ------------------------------------------------------------------------------

def _one_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture
def keep_log_levels():
    """-v/-vv change logger levels for the rest of the process: put them back after the test."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("upscale")]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


def test_group_options_before_and_after_the_image(tmp_path, tiny_x4, keep_log_levels):
    """#11: -v/-vv/-q/--version work in every position with the implicit `run`."""
    src = _photo(tmp_path / "a.png")
    fast = ["--precision", "fp32", "--compile", "off", "--force"]
    for args in (["-v", src], ["-vv", "run", src], [src, "-v"], ["-q", src], [src, "-q", "-v"],
                 ["--verbose", "run", src, "-vv"]):
        res = _invoke([*args, "-m", tiny_x4, *fast])
        assert res.exit_code == 0, (args, res.output)
        assert (tmp_path / "a_x4.png").exists()
    assert _invoke(["-q", src, "-m", tiny_x4, *fast]).stderr == ""          # the group's -q reaches run
    assert "a_x4.png" in _invoke([src, "-m", tiny_x4, *fast]).stderr
    for args in (["--version"], ["-v", "--version"], [src, "--version"], ["models", "--version"],
                 ["batch", tmp_path, "--version"]):
        res = _invoke(args)
        assert res.exit_code == 0 and res.stdout.startswith("upscale, version"), (args, res.output)
    assert _invoke(["-v", "models"]).exit_code == 0
    assert _invoke(["--verbose", "batch", tmp_path, "--out", tmp_path / "o", "-m", tiny_x4, *fast[:4]]).exit_code == 0


def test_usage_errors_are_one_line_exit_2(tmp_path):
    src = _photo(tmp_path / "a.png")
    for args, words in (([src, "--no-such-flag"], ("--no-such-flag", "upscale run --help")),
                        (["batch", tmp_path], ("--out", "upscale batch --help")),
                        (["--bogus", src], ("--bogus", "upscale run --help")),
                        ([src, "--tile", "big"], ("--tile", "upscale run --help"))):
        res = _invoke(args)
        line = _one_line(res)
        assert res.exit_code == 2 and line.startswith("upscale: usage: "), (args, res.stderr)
        assert all(w in line for w in words), line


def test_bad_scale_and_output_are_refused_before_the_model_loads(tmp_path):
    """#13 and #9: the model file is junk, so an answer about it would mean it was loaded first."""
    src = _photo(tmp_path / "a.png")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "adir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")    # -o link/ said only "link is not a folder"
    dangling = f"link is a symlink to {tmp_path / 'nowhere'}, which does not exist"
    cases = [(["-s", "0"], 2, "--scale"), (["-s", "-1"], 2, "--scale"), (["-s", "nan"], 2, "--scale"),
             (["-s", "1e9"], 1, "needs"), (["-s", "100000"], 1, "needs"),
             (["-o", tmp_path / "a.xyz"], 1, "'.xyz'"),
             (["-o", tmp_path / "afile" / "x.png"], 1, "afile is not a folder"),
             (["-o", f"{tmp_path / 'link'}/"], 1, dangling), (["-o", tmp_path / "link" / "x.png"], 1, dangling)]
    for args, code, words in cases:
        res = _invoke([src, "-m", junk, *args, *FAST])
        line = _one_line(res)
        assert res.exit_code == code and words in line and "junk" not in line, (args, res.stderr)
        assert "--force" not in line and "internal error" not in line
    assert sorted(os.listdir(tmp_path)) == ["a.png", "adir", "afile", "junk.safetensors", "link"]


def test_a_killed_runs_temp_is_swept_by_the_next_run(tmp_path, tiny_x4):
    """#10: the temp a killed single-image run left beside its target is removed by the next run."""
    src = _photo(tmp_path / "a.png")
    target = tmp_path / "a_x4.png"
    code = ("import os, sys; from upscale import atomic\n"
            "with atomic.atomic_file(sys.argv[1]) as f:\n"
            "    f.write(b'half'); f.flush(); os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(target)], check=True)
    assert len(os.listdir(tmp_path)) == 2                      # a.png and the dead run's temp
    assert _invoke([src, "-m", tiny_x4, *FAST]).exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_x4.png"]


def test_progress_off_a_terminal_is_a_few_plain_lines(tmp_path, tiny_x4):
    """#14: --tile 1 used to print thousands of bar fragments into a log."""
    src = _photo(tmp_path / "a.png", size=(40, 30))
    res = _invoke([src, "-m", tiny_x4, "--tile", "4", "--precision", "fp32", "--compile", "off"])
    assert res.exit_code == 0, res.output
    assert "\r" not in res.stderr and "\x1b" not in res.stderr
    lines = res.stderr.splitlines()
    assert 2 <= len(lines) <= 12, lines
    notice = [ln for ln in lines if "computes each pixel" in ln]   # the cost of a tiny tile, said once
    assert len(notice) == 1 and "--tile 4" in notice[0] and "tile_px" not in notice[0]
    assert all(ln.startswith("upscale: a.png: ") for ln in lines[:-1] if ln not in notice)
    assert "a_x4.png" in lines[-1]


def test_cli_import_and_help_leave_torch_unimported():
    """Registering the commands (the train command's help reads the presets) must not import the
    training loop or torch: `upscale --help`, `tune --show` and usage errors answer at once."""
    code = ("import sys; from click.testing import CliRunner; from upscale.cli import cli; "
            "r = CliRunner().invoke(cli, ['train', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'upscale.train.loop') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_formats_read_but_not_written_come_out_as_png(tmp_path, tiny_x4):
    # a palette image with a transparent index, as GIF and as PNG: the same pixels in, the same PNG out
    rng = np.random.default_rng(5)
    pal = PILImage.fromarray(rng.integers(0, 256, (13, 19, 3), dtype=np.uint8)).quantize(16)
    pal.save(tmp_path / "sprite.gif", transparency=3)
    (tmp_path / "ref").mkdir()
    pal.save(tmp_path / "ref" / "sprite.png", transparency=3)
    for src in (tmp_path / "sprite.gif", tmp_path / "ref" / "sprite.png"):
        res = _invoke([src, "-m", tiny_x4, *FAST])
        assert res.exit_code == 0, res.output
    assert not (tmp_path / "sprite_x4.gif").exists()
    with PILImage.open(tmp_path / "sprite_x4.png") as a, PILImage.open(tmp_path / "ref" / "sprite_x4.png") as b:
        assert a.format == "PNG" and a.size == (76, 52) and a.mode == "RGBA"
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # JPEG's other spellings stay JPEG; --format still chooses
    _photo(tmp_path / "cam.jfif")
    assert _invoke([tmp_path / "cam.jfif", "-m", tiny_x4, *FAST]).exit_code == 0
    with PILImage.open(tmp_path / "cam_x4.jpg") as im:
        assert im.format == "JPEG"
    assert _invoke([tmp_path / "sprite.gif", "-m", tiny_x4, "--format", "webp", *FAST]).exit_code == 0
    assert (tmp_path / "sprite_x4.webp").is_file()
    # naming a GIF output is still refused, before any work
    res = _invoke([tmp_path / "sprite.gif", "-m", tiny_x4, "-o", tmp_path / "big.gif", *FAST])
    assert res.exit_code != 0 and "unknown output extension '.gif'" in res.output
    assert not (tmp_path / "big.gif").exists()


@pytest.mark.parametrize("ext, feature", [(".avif", "avif"), (".jp2", "jpg_2000"), (".tga", None), (".ppm", None)])
def test_other_inputs_read_but_maybe_not_written(tmp_path, tiny_x4, ext, feature):
    from PIL import features

    from upscale.io import SUPPORTED_EXTENSIONS
    if feature and not features.check(feature):
        pytest.skip(f"this Pillow cannot read {ext}")
    src = _photo(tmp_path / f"pic{ext}")
    res = _invoke([src, "-m", tiny_x4, *FAST])
    assert res.exit_code == 0, res.output
    out_ext = ext if ext in SUPPORTED_EXTENSIONS else ".png"        # AVIF is written where Pillow can
    with PILImage.open(tmp_path / f"pic_x4{out_ext}") as im:
        assert im.format == out_ext[1:].upper() and im.size == (92, 68)


def test_a_folder_given_to_run_points_to_batch(tmp_path, tiny_x4):
    folder = tmp_path / "holiday"
    folder.mkdir()
    _photo(folder / "a.png")
    res = _invoke([folder, "-m", tiny_x4, *FAST])
    assert res.exit_code == 2
    assert res.output.strip() == f"upscale: usage: {folder} is a folder; for every image in it: upscale batch {folder} --out OUT_DIR"
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_xmp_and_exif_reach_the_output(tmp_path, tiny_x4):
    from upscale.io import read_image

    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:rights>CC BY 4.0</dc:rights>'
           b'</rdf:Description></rdf:RDF></x:xmpmeta>')
    exif = PILImage.Exif()
    exif[0x010F] = "UpscaleTestCam"
    rng = np.random.default_rng(1)
    PILImage.fromarray(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)).save(
        tmp_path / "shot.jpg", exif=exif.tobytes(), xmp=xmp)
    for out in ("shot_x4.jpg", "shot.png"):
        res = _invoke([tmp_path / "shot.jpg", "-m", tiny_x4, *FAST] + ([] if out.endswith(".jpg") else
                                                                      ["-o", tmp_path / out]))
        assert res.exit_code == 0, res.output
        back = read_image(tmp_path / out)
        assert back.xmp == xmp and back.pixels.shape == (68, 92, 3)
        with PILImage.open(tmp_path / out) as im:
            assert im.getexif()[0x010F] == "UpscaleTestCam"


def test_heic_photos_read_upright_into_png_with_their_exif(tmp_path, tiny_x4):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    exif = PILImage.Exif()
    exif[0x0112], exif[0x010F] = 6, "UpscaleTestCam"        # stored turned: shown 17 wide, 23 high
    rng = np.random.default_rng(2)
    PILImage.fromarray(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)).save(tmp_path / "phone.heic",
                                                                                exif=exif.tobytes(), quality=90)
    res = _invoke([tmp_path / "phone.heic", "-m", tiny_x4, *FAST])
    assert res.exit_code == 0, res.output
    with PILImage.open(tmp_path / "phone_x4.png") as im:
        assert im.size == (68, 92) and im.getexif()[0x010F] == "UpscaleTestCam" and im.getexif()[0x0112] == 1


def test_heic_without_its_plugin_says_how_to_install_it(tmp_path, tiny_x4):
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")   # never decoded: the plugin is missing
    code = ("import sys; sys.modules['pillow_heif'] = None   # as where the heif extra is not installed\n"
            "from upscale.cli import main; sys.argv = ['upscale'] + sys.argv[1:]; main()\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "phone.heic"), "-m", tiny_x4, *FAST],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"upscale: cannot read image: {tmp_path / 'phone.heic'}: HEIC/HEIF needs the "
                                  "pillow-heif package: pip install 'upscale[heif]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phone.heic"]


def _animated_gif(path, frames=3, size=(19, 13), transparent=False, loop=2):
    rng = np.random.default_rng(4)
    pictures = [PILImage.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).quantize(8)
                for _ in range(frames)]
    extra = ({"transparency": 0} if transparent else {}) | ({} if loop is None else {"loop": loop})
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=[80, 160, 240][:frames], **extra)
    return path


def test_every_frame_of_an_animated_gif_becomes_an_apng_with_its_timing(tmp_path, tiny_x4):
    src = _animated_gif(tmp_path / "wave.gif")
    res = _invoke([src, "-m", tiny_x4, "--frames", "all", *FAST])
    assert res.exit_code == 0, res.output
    with PILImage.open(src) as gif:                   # each frame as Pillow composes it, upscaled alone
        singles = []
        for i in range(3):
            gif.seek(i)
            gif.convert("RGB").save(tmp_path / f"f{i}.png")
            assert _invoke([tmp_path / f"f{i}.png", "-m", tiny_x4, *FAST]).exit_code == 0
            with PILImage.open(tmp_path / f"f{i}_x4.png") as one:
                singles.append(np.asarray(one.convert("RGB")))
    with PILImage.open(tmp_path / "wave_x4.png") as apng:
        assert (apng.format, apng.n_frames, apng.size, apng.info["loop"]) == ("PNG", 3, (76, 52), 2)
        for i in range(3):
            apng.seek(i)
            assert apng.info["duration"] == [80, 160, 240][i]
            assert np.array_equal(np.asarray(apng.convert("RGB")), singles[i]), i
    once = _animated_gif(tmp_path / "once.gif", loop=None)   # no loop extension: played once, and so is the output
    with PILImage.open(once) as check:
        assert "loop" not in check.info
    assert _invoke([once, "-m", tiny_x4, "--frames", "all", *FAST]).exit_code == 0
    with PILImage.open(tmp_path / "once_x4.png") as apng:
        assert apng.n_frames == 3 and apng.info["loop"] == 1
    res = _invoke([src, "-m", tiny_x4, "--frames", "all", "-o", tmp_path / "wave.webp", *FAST])
    assert res.exit_code == 0, res.output
    with PILImage.open(tmp_path / "wave.webp") as webp:
        assert (webp.format, webp.n_frames, webp.size) == ("WEBP", 3, (76, 52))


def test_frames_all_refuses_a_format_without_animation_and_leaves_other_inputs_alone(tmp_path, tiny_x4):
    src = _animated_gif(tmp_path / "wave.gif", transparent=True)
    res = _invoke([src, "-m", tiny_x4, "--frames", "all", "-s", "4", "-o", tmp_path / "wave.jpg", *FAST])
    assert res.exit_code == 1 and "JPEG holds no animation; write .png (APNG) or .webp" in res.output
    assert not (tmp_path / "wave.jpg").exists()
    res = _invoke([src, "-m", tiny_x4, "--frames", "all", *FAST])              # transparency kept
    with PILImage.open(tmp_path / "wave_x4.png") as apng:
        assert apng.n_frames == 3 and apng.mode == "RGBA"
    # the default reads the first frame only; a still image is the same either way (16 bit kept)
    res = CliRunner().invoke(cli, [str(src), "-m", tiny_x4, "-o", str(tmp_path / "first.png"), "--precision", "fp32",
                                   "--compile", "off"], catch_exceptions=False)
    assert res.exit_code == 0 and "3 frames; only the first is read" in res.output
    with PILImage.open(tmp_path / "first.png") as im:
        assert getattr(im, "n_frames", 1) == 1
    still = tmp_path / "deep.png"
    PILImage.fromarray(np.full((9, 11), 40000, np.uint16)).save(still)
    assert _invoke([still, "-m", tiny_x4, "--frames", "all", *FAST]).exit_code == 0
    with PILImage.open(tmp_path / "deep_x4.png") as im:
        assert im.mode in ("I;16", "I") and im.size == (44, 36)


def test_an_animation_whose_outputs_cannot_all_be_held_is_refused_naming_the_file():
    from upscale import api, errors
    from upscale.io import Image

    frame = Image(np.zeros((100, 100, 3), np.uint8), None)
    api.check_output_memory(frame, 4, path="a.gif", frames=3)                  # 1.4 MB: fine
    with pytest.raises(errors.ResourceError) as err:
        api.check_output_memory(frame, 4, path="a.gif", frames=10**7)          # 4.8 TB of frames
    assert err.value.path == "a.gif" and err.value.message.startswith("output 10000000 frames of 400 x 400 x 3 need ")
    with pytest.raises(errors.ResourceError):
        api.check_output_memory(frame, 3, native_scale=4, path="a.gif", frames=10**7)


def test_upscale_animation_checks_all_frames_outputs_before_running_any(tiny_x4):
    """The API path (what batch --frames all calls) refuses as run does, before the first frame."""
    from upscale import errors, load_model
    from upscale.api import Upscaler
    from upscale.engine import EngineOptions
    from upscale.io import Animation, Image

    def no_frame_may_run(done, total):
        raise AssertionError(f"frame {done} of {total} ran")

    frame = Image(np.zeros((200, 200, 3), np.uint8), None)
    up = Upscaler(load_model(tiny_x4), EngineOptions(tile_px=0, device="cpu"))
    assert len(up.upscale_animation(Animation([frame] * 2)).frames) == 2
    with pytest.raises(errors.ResourceError):     # 10**6 outputs of 800x800x3: 1.9 TB
        up.upscale_animation(Animation([frame] * 10**6), on_frame=no_frame_may_run)



def test_frames_all_reads_only_gif_webp_and_png_as_animations(tmp_path, tiny_x4):
    """An MPO's second picture and a TIFF's pages are not frames; an APNG's default image is not part
    of its animation; a missing or empty file says so, as without --frames all."""
    from upscale.io import frame_count, read_frames

    def pictures(n):    # fresh ones for each file: Pillow leaves an appended image's settings on it
        rng = np.random.default_rng(n)
        return [PILImage.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)) for _ in range(n)]

    pics = pictures(2)
    pics[0].save(tmp_path / "stereo.jpg", format="MPO", save_all=True, append_images=pics[1:])
    pics = pictures(3)
    pics[0].save(tmp_path / "pages.tif", save_all=True, append_images=pics[1:])
    for name in ("stereo.jpg", "pages.tif"):
        assert frame_count(tmp_path / name) == 1
        res = _invoke([tmp_path / name, "-m", tiny_x4, "--frames", "all", *FAST])
        assert res.exit_code == 0, res.output
    pics = pictures(4)
    pics[0].save(tmp_path / "default.png", save_all=True, append_images=pics[1:], default_image=True,
                 duration=[0, 40, 50, 60], loop=0)
    animation = read_frames(tmp_path / "default.png")
    assert frame_count(tmp_path / "default.png") == 3 and len(animation.frames) == 3
    with PILImage.open(tmp_path / "default.png") as im:       # Pillow's images 1..3 are the animation
        for i, frame in enumerate(animation.frames, start=1):
            im.seek(i)
            assert np.array_equal(frame.pixels, np.asarray(im.convert("RGB")))
            assert animation.durations_ms[i - 1] == (im.info.get("duration") or 100)
    (tmp_path / "empty.gif").write_bytes(b"")
    for name, words in (("missing.gif", "file not found"), ("empty.gif", "file is empty")):
        res = _invoke([tmp_path / name, "-m", tiny_x4, "--frames", "all", *FAST])
        assert res.exit_code == 1 and words in res.stderr, res.stderr


def test_name_template_for_one_image(tmp_path, tiny_x4):
    src = _photo(tmp_path / "cat.png")
    res = _invoke([src, "-m", tiny_x4, "--name", "{stem}-big", *FAST])
    assert res.exit_code == 0 and (tmp_path / "cat-big.png").is_file(), res.output
    res = _invoke([src, "-m", tiny_x4, "--name", "{stem}", *FAST])       # that is the input: refused
    assert res.exit_code == 1 and "overwrite the input" in res.stderr


def test_a_newline_in_a_file_name_stays_one_line_and_an_apng_of_one_frame_behind_a_default(tmp_path, tiny_x4):
    from upscale.io import read_frames

    src = _photo(tmp_path / "a\nb.png")
    res = _invoke([src, "-m", tiny_x4, *[a for a in FAST if a != "-q"]])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 0 and any("a\\nb.png -> " in ln and "a\\nb_x4.png (" in ln for ln in lines), lines
    default, frame = (PILImage.fromarray(np.full((5, 7, 3), v, np.uint8)) for v in (10, 200))
    default.save(tmp_path / "one.png", save_all=True, append_images=[frame], default_image=True)
    animation = read_frames(tmp_path / "one.png")               # its animation: the one frame, not the default
    assert len(animation.frames) == 1 and int(animation.frames[0].pixels.max()) == 200


def test_the_resize_buffer_that_does_not_fit_is_named_as_such():
    """-s 30 on a large image: the uint8 output fits, the float32 image the resize builds does not;
    the message said 'output ... needs 40 GiB' (4x the output) and, from the API, named no file."""
    import math

    import torch

    from upscale import api, errors
    from upscale.engine.cost import available_memory_bytes
    from upscale.io import Image

    frame = Image(np.zeros((100, 100, 3), np.uint8), None)
    free = available_memory_bytes(torch.device("cpu"))
    scale = math.sqrt(free / 6) / 100             # uint8 output: half of what is free; float32: twice
    api.check_output_memory(frame, scale, path="a.png")
    with pytest.raises(errors.ResourceError) as err:
        api.check_output_memory(frame, scale, native_scale=4, path="a.png")
    assert err.value.path == "a.png" and err.value.message.startswith("resizing to ")


def test_q_after_any_command(tmp_path, monkeypatch):
    """README: -v/-vv/-q go before or after the sub-command (tune, models, interp, convert had no -q)."""
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))
    for args in (["tune", "--show", "-q"], ["models", "-q"], ["models", "-v"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, (args, res.output)
    for args in (["interp", "--alpha", "2", "-q"], ["convert", "-q"], ["models", "pull", "-q"],
                 ["models", "add", "-v"]):                                   # refused for other reasons
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and "No such option" not in res.output, (args, res.output)


def test_an_output_its_format_cannot_hold_is_refused_before_the_model_runs(tmp_path, tiny_x4):
    """WebP holds 16383 px a side, JPEG 65500: the encoder failed after the whole model run (JPEG in
    two lines, one of them libjpeg's own)."""
    from upscale.io import MAX_SIDE

    src = tmp_path / "wide.png"
    PILImage.fromarray(np.zeros((2, MAX_SIDE["WEBP"] // 4 + 1, 3), np.uint8)).save(src)
    junk = tmp_path / "junk.safetensors"             # the model is never loaded when -s is given
    junk.write_bytes(b"\0" * 64)
    res = _invoke([src, "-m", junk, "-s", "4", "-o", tmp_path / "w.webp"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "WEBP holds at most 16383 px" in lines[0], lines
    res = _invoke([src, "-m", tiny_x4, "-o", tmp_path / "w.webp", *FAST])     # scale from the model
    assert res.exit_code == 1 and "WEBP holds at most" in res.stderr and not (tmp_path / "w.webp").exists()
    assert _invoke([src, "-m", tiny_x4, "-o", tmp_path / "w.png", *FAST]).exit_code == 0


def test_whole_image_windows_beyond_memory_are_refused_before_any_work(monkeypatch):
    """--tile 0 on a large image: the kernel would kill the process with no word."""
    from upscale import errors
    from upscale.archs import build_module
    from upscale.engine import Engine, EngineOptions
    from upscale.model import Model

    hp = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 1, "scale": 2}
    engine = Engine(Model(build_module("compact", hp), "compact", hp),
                    EngineOptions(device="cpu", precision="fp32", tile_px=0, compile="off"))
    monkeypatch.setattr("upscale.engine.core.available_memory_bytes", lambda device: 2**10)   # 1 KiB free
    with pytest.raises(errors.ResourceError) as err:
        engine.upscale(np.zeros((64, 64, 3), np.uint8))
    assert "one 64x64 window need about" in err.value.message and "tile_px auto" in err.value.message


def test_running_out_of_memory_in_the_model_names_the_image(tmp_path, tiny_x4, monkeypatch):
    src = _photo(tmp_path / "cat.png")
    monkeypatch.setattr("upscale.engine.core.available_memory_bytes", lambda device: 2**10)
    res = _invoke([src, "-m", tiny_x4, "--tile", "0", *FAST])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and f"{src}: one " in lines[0] and "activations" in lines[0], lines
    assert not (tmp_path / "cat_x4.png").exists()


def test_an_avif_whose_encoder_cannot_fit_is_refused_before_the_model(tmp_path, tiny_x4):
    """AVIF's encoder holds about ten times the output beside it (docs/perf.md); an output that fits
    in memory but whose AVIF encode would not is refused up front, naming the encoder, with nothing
    written; the same output as PNG (whose encoder needs less than the output) goes ahead."""
    import math

    import torch

    from upscale import api, errors
    from upscale.engine.cost import available_memory_bytes
    from upscale.io import Image

    frame = Image(np.zeros((100, 100, 3), np.uint8), None)
    free = available_memory_bytes(torch.device("cpu"))
    scale = math.sqrt(free / 4 / 3) / 100        # the uint8 output is a quarter of what is free
    api.check_output_memory(frame, scale, path="a.png", encoder="PNG")
    with pytest.raises(errors.ResourceError) as err:
        api.check_output_memory(frame, scale, path="a.avif", encoder="AVIF")
    assert "AVIF encoder's working memory" in err.value.message and err.value.path == "a.avif"

    src = _photo(tmp_path / "a.png", size=(100, 100))
    res = _invoke([str(src), "-s", f"{scale:.3f}", "-m", tiny_x4, "-o", str(tmp_path / "out.avif")])
    assert res.exit_code == 1 and "AVIF encoder's working memory" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "a.png" in res.output
    assert not (tmp_path / "out.avif").exists()


def test_batch_fails_an_avif_whose_encoder_cannot_fit_before_its_model_pass(tmp_path, tiny_x4):
    import math

    import torch

    from upscale.engine.cost import available_memory_bytes

    (tmp_path / "in").mkdir()
    _photo(tmp_path / "in" / "a.png", size=(100, 100))
    scale = math.sqrt(available_memory_bytes(torch.device("cpu")) / 4 / 3) / 100
    res = _invoke(["batch", tmp_path / "in", "--out", tmp_path / "out", "-s", f"{scale:.3f}", "-m", tiny_x4,
                   "--format", "avif", *FAST])
    assert res.exit_code == 3 and "AVIF encoder's working memory" in res.output, res.output
    assert not list((tmp_path / "out").glob("*.avif"))


def test_long_input_names(tmp_path, tiny_x4):
    """A 240-byte input name: its output (and the output's temp file) are written. A 250-byte one,
    whose output name would be 257 bytes: refused before the model with one line (run: exit 1; batch:
    that file fails, exit 3)."""
    ok = _photo(tmp_path / ("c" * 236 + ".png"))
    res = _invoke([ok, "-s", "2", "-m", tiny_x4, *FAST])
    assert res.exit_code == 0, res.output
    assert (tmp_path / ("c" * 236 + "_x2.png")).is_file()
    (tmp_path / "in").mkdir()
    long = _photo(tmp_path / "in" / ("b" * 250 + ".png"))
    res = _invoke([long, "-s", "2", "-m", tiny_x4, *FAST])
    assert res.exit_code == 1 and "its name is 257 bytes long" in res.output, res.output
    res = _invoke(["batch", tmp_path / "in", "--out", tmp_path / "out", "-s", "2", "-m", tiny_x4, *FAST])
    assert res.exit_code == 3 and "its name is 257 bytes long" in res.output and "--name" in res.output, res.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_an_image_fails_in_one_line_and_never_blocks(tmp_path, tiny_x4):
    """A FIFO (or /dev/stdin from a pipe) is read more than once (header, hash, pixels): the run said
    'file is empty' and a batch hung forever hashing it for its journal. Both now name it as not a
    regular file; the batch does the other images."""
    (tmp_path / "in").mkdir()
    _photo(tmp_path / "in" / "a.png")
    os.mkfifo(tmp_path / "in" / "f.png")
    res = _invoke([tmp_path / "in" / "f.png", "-s", "2", "-m", tiny_x4, *FAST])
    assert res.exit_code == 1 and "is not a regular file" in res.output, res.output
    proc = subprocess.run([sys.executable, "-m", "upscale", "batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                           "-s", "2", "-m", tiny_x4, *FAST], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "f.png: is not a regular file" in proc.stderr, proc.stderr
    assert (tmp_path / "out" / "a_x2.png").is_file()


def test_o_naming_a_folder_puts_the_output_in_it(tmp_path, tiny_x4):
    """`upscale a.png -o out/` (an existing folder): out/a_x4.png, as with several images; an existing
    output there still needs --force."""
    src = _photo(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    res = _invoke([src, "-m", tiny_x4, "-o", tmp_path / "out", *FAST])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "out")) == ["a_x4.png"]
    res = _invoke([src, "-m", tiny_x4, "-o", tmp_path / "out", "--name", "{stem}-big", *FAST])
    assert res.exit_code == 0 and (tmp_path / "out" / "a-big.png").is_file(), res.output
    res = _invoke([src, "-m", tiny_x4, "-o", tmp_path / "out", *FAST])
    assert res.exit_code == 1 and "exists already" in res.output, res.output


def test_the_16_bit_note_reads_right_through_the_cli(tmp_path, tiny_x4):
    """The engine's one line about a 16-bit image in bf16, as the CLI prints it: 'precision' is a flag
    once (the CLI words each parameter named as its flag), not in every place the word appeared."""
    arr = (np.random.default_rng(1).random((12, 16, 3)) * 65535).astype(np.uint16)
    src = tmp_path / "g16.tif"
    from upscale.io import Image, write_image
    write_image(Image(arr, None), src)
    res = _invoke([src, "-m", tiny_x4, "--precision", "bf16", "--compile", "off"])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if "16-bit input computed in bf16" in l)
    assert line.count("--precision") == 1 and "--precision fp32 keeps all 16 bits" in line, line


def test_an_empty_input_or_output_path_is_a_usage_error(tmp_path, tiny_x4):
    """`upscale ""` (an unset shell variable) said "'.' is a folder"; `-o ""` wrote into the current
    folder."""
    src = _photo(tmp_path / "a.png")
    for args, line in (([""], "the input path is empty"), ([src, ""], "the input path is empty (IMAGE 2 of 2)"),
                       ([src, "-o", ""], "the output path (-o) is empty")):
        res = _invoke([*args, "-m", tiny_x4, *FAST])
        assert (res.exit_code, res.output) == (2, f"upscale: usage: {line}\n"), args
    assert os.listdir(tmp_path) == ["a.png"]


def test_o_with_a_trailing_slash_makes_that_folder_when_the_output_is_written(tmp_path, tiny_x4):
    """`upscale a.png -o results/` (no such folder yet) said "unknown output extension": a trailing
    slash names a folder; it is made (its parent must exist) as the output is written, never by a run
    that fails before that."""
    src, other = _photo(tmp_path / "a.png"), _photo(tmp_path / "b.png")
    res = _invoke([src, "-m", tiny_x4, "-o", f"{tmp_path / 'new'}/", *FAST])
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path / "new") == ["a_x4.png"]
    res = _invoke([src, other, "-m", tiny_x4, "-o", f"{tmp_path / 'many'}/", *FAST])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "many")) == ["a_x4.png", "b_x4.png"]
    before = sorted(os.listdir(tmp_path))
    res = _invoke([src, "-m", tiny_x4, "-o", f"{tmp_path / 'nope' / 'new'}/", *FAST])
    assert res.exit_code == 1 and res.output == (f"upscale: cannot write output: {tmp_path / 'nope' / 'new'}/: "
                                                 f"output folder {tmp_path / 'nope'} does not exist\n"), res.output
    res = _invoke([src, "-m", tiny_x4, "-o", f"{other}/", *FAST])
    assert res.exit_code == 1 and f"{other} is not a folder" in res.output, res.output
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(open(tiny_x4, "rb").read()[:100])
    res = _invoke([src, "-m", corrupt, "-o", f"{tmp_path / 'late'}/", *FAST])
    assert res.exit_code == 1 and "corrupt.safetensors" in res.output, res.output
    assert sorted(os.listdir(tmp_path)) == sorted([*before, "corrupt.safetensors"])
