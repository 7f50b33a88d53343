"""The hostile-input corpus of issue 16, as one parametrised table run through the real CLI.

Every input is made here (nothing downloaded, nothing from ../shared). Each case states the exit code
the README's "Exit codes" promise (0 ok, 1 failure, 2 usage) and is checked for:

- that exit code, with no traceback and no "internal error" on either stream;
- on failure, exactly one line on stderr, naming the file involved (and the flag, for bad options);
- no file left behind: the case's folder holds afterwards exactly what it held before, plus the
  outputs an exit-0 case is expected to write (no temp files, no partial outputs, no report), and
  the files a case must not touch still hold their bytes.

Most cases run in this process through click's CliRunner (fast); the ones that could hang, or that
allocate without limit when the product does not check first, run in a subprocess under a time
limit and a 3 GiB address-space limit, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import random
import re
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image as PILImage
from safetensors.torch import save_file

from upscale.archs import build_module
from upscale.atomic import is_temp_name
from upscale.batch import JOURNAL_NAME
from upscale.cli import cli
from upscale.cli.progress import PLAIN_EVERY_S
from upscale.loading import save_model

FAST = ["--precision", "fp32", "--compile", "off"]
TINY_HP = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2, "scale": 4, "act_type": "prelu"}
ISOLATED_MEMORY = 3 << 30  # address-space limit of the subprocess cases
ISOLATED_SECONDS = 120
SENTINEL = "payload_ran"


# --- the environment: every cache and config folder inside tmp, the Hub off ---------------------------
@pytest.fixture(autouse=True)
def private_env(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("env")
    values = {"UPSCALE_CACHE": root / "cache", "HF_HOME": root / "hf", "UPSCALE_CONFIG_DIR": root / "config",
              "XDG_CACHE_HOME": root / "xdg", "HF_HUB_OFFLINE": "1"}
    for key, value in values.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("UPSCALE_DEBUG", raising=False)
    return values


@pytest.fixture(scope="module")
def tiny(tiny_x4) -> Path:
    """A 0.01 M-parameter x4 compact network saved as safetensors (outside every case's folder)."""
    return Path(tiny_x4)


# --- image makers ---------------------------------------------------------------------------------------
def pixels(w: int = 64, h: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def encode(fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(pixels()).save(buf, fmt, **params)
    return buf.getvalue()


def save_png(path: Path, w: int = 64, h: int = 64) -> Path:
    PILImage.fromarray(pixels(w, h)).save(path)
    return path


FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tif": "TIFF", "bmp": "BMP"}


def _patched(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def corrupt(ext: str, good: bytes) -> bytes:
    """The file with its structure broken where each format keeps it (each checked to fail in Pillow)."""
    if ext == "png":  # a flipped byte inside IDAT: the chunk's CRC no longer matches
        at = good.find(b"IDAT") + 10
        return _patched(good, at, bytes([good[at] ^ 0xFF]))
    if ext == "jpg":  # garbage in the entropy-coded scan
        at = good.find(b"\xff\xda") + 20
        return _patched(good, at, random.Random(2).randbytes(380))
    if ext == "webp":  # the VP8 frame header zeroed
        return _patched(good, 20, bytes(20))
    if ext == "tif":  # the first IFD's offset points far past the end
        return _patched(good, 4, struct.pack("<I" if good[:2] == b"II" else ">I", 10 ** 8))
    return _patched(good, 10, struct.pack("<I", 10 ** 7))  # bmp: pixel data offset past the end


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims ``w`` x ``h`` RGB pixels and carries a few bytes of them."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(64)))
            + png_chunk(b"IEND", b""))


def ztxt_bomb(good_png: bytes) -> bytes:
    """A valid 64x64 PNG with a zTXt chunk that inflates to 256 MiB of zeros (about 250 KB on disk)."""
    squeeze = zlib.compressobj(9)
    packed = b"".join(squeeze.compress(bytes(1 << 24)) for _ in range(16)) + squeeze.flush()
    at = good_png.find(b"IDAT") - 4
    return good_png[:at] + png_chunk(b"zTXt", b"Comment\x00\x00" + packed) + good_png[at:]


def frames(n: int = 3) -> list[PILImage.Image]:
    return [PILImage.fromarray(pixels(seed=i)) for i in range(n)]


def save_frames(path: Path, fmt: str) -> None:
    first, *rest = frames()
    if fmt == "GIF":
        first, *rest = [f.convert("P") for f in [first, *rest]]
    first.save(path, fmt, save_all=True, append_images=rest, **({"duration": 100} if fmt != "TIFF" else {}))


def corrupt_exif_jpeg(path: Path) -> None:
    """A JPEG whose EXIF block declares more IFD entries than it holds."""
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x09\x01\x12\x00\x03\x00\x00\x00\x01\x00"
    PILImage.fromarray(pixels()).save(path, "JPEG", quality=90, exif=exif)


# --- weights makers ---------------------------------------------------------------------------------------
class ExecOnLoad:
    """Unpickling this runs ``exec``, which would create ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').close()",))


class ShellOnLoad:
    """Unpickling this calls ``os.system``, which would create ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch '{self.target}'",))


def tiny_state(seed: int = 0, **over) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_module("compact", {**TINY_HP, **over}).state_dict()


def save_with_metadata(path: Path, sd: dict, arch: str, hparams: str) -> None:
    """Safetensors with our metadata keys written by hand (``hparams`` as the raw JSON text)."""
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={"upscale.arch": arch, "upscale.hparams": hparams, "upscale.format": "1"})


def write_ncnn_compact(stem: Path, sd: dict, num_conv: int, scale: int) -> tuple[Path, Path]:
    """The compact network as an ncnn pair: conv/PReLU chain, PixelShuffle, nearest skip, add."""
    lines, blob = [], ["in_s0"]
    weights = bytearray()

    def layer(kind: str, ins: list[str], params: str) -> str:
        out = f"b{len(lines)}"
        lines.append(f"{kind} l{len(lines)} {len(ins)} 1 {' '.join(ins)} {out} {params}".rstrip())
        return out

    x = blob[0]
    for i in range(num_conv + 2):
        w, b = sd[f"body.{2 * i}.weight"].numpy(), sd[f"body.{2 * i}.bias"].numpy()
        x = layer("Convolution", [x], f"0={w.shape[0]} 1=3 4=1 5=1 6={w.size}")
        weights += struct.pack("<I", 0) + w.astype("<f4").tobytes() + b.astype("<f4").tobytes()
        if i < num_conv + 1:
            slope = sd[f"body.{2 * i + 1}.weight"].numpy()
            x = layer("PReLU", [x], f"0={slope.size}")
            weights += slope.astype("<f4").tobytes()
    up = layer("PixelShuffle", [x], f"0={scale}")
    skip = layer("Interp", ["in_s1"], f"0=1 1={float(scale):e} 2={float(scale):e}")
    layer("BinaryOp", [up, skip], "0=0")
    head = ["Input in 0 1 in", "Split split_in 1 2 in in_s0 in_s1"]
    body = head + lines
    text = "\n".join(["7767517", f"{len(body)} {len(body) + 1}", *body]) + "\n"
    param, binary = stem.with_suffix(".param"), stem.with_suffix(".bin")
    param.write_text(text)
    binary.write_bytes(bytes(weights))
    return param, binary


# --- the table ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    args: list[str]
    names: list[str] = dataclasses.field(default_factory=list)       # must appear in the message
    outputs: list[str] = dataclasses.field(default_factory=list)     # files an exit-0 run adds
    keep: list[Path] = dataclasses.field(default_factory=list)       # files whose bytes must not change
    warn: str | None = None                                          # regex a stderr line must match
    forbid: list[str] = dataclasses.field(default_factory=list)      # phrases the message must not say


@dataclasses.dataclass
class Case:
    id: str
    code: int
    build: Callable[[Path, Path], Prepared]   # (case folder, tiny model) -> what to run
    isolate: bool = False                     # subprocess with time and memory limits
    marks: tuple = ()


def run_image(src: Path, *extra: str, names=None, model: Path | str | None = None, **kw) -> Callable:
    """A case that runs ``upscale IMAGE`` on the file ``src`` builds, with the tiny model."""
    def build(work: Path, tiny: Path) -> Prepared:
        path = src(work)
        quiet = [] if kw.get("warn") else ["-q"]
        chosen = str(model(work) if callable(model) else (model or tiny))
        return Prepared([str(path), "-m", chosen, *FAST, *quiet, *extra],
                        names=[path.name] if names is None else names, **kw)
    return build


def written(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        path = work / name
        path.write_bytes(data() if callable(data) else data)
        return path
    return make


def good_png(name: str = "good.png") -> Callable[[Path], Path]:
    return lambda work: save_png(work / name)


def image_cases() -> list[Case]:
    cases = []
    for ext, fmt in FORMATS.items():
        good = encode(fmt)
        for label, data in (("empty", b""), ("truncated", good[: len(good) // 2]),
                            ("random", random.Random(ext).randbytes(len(good))), ("corrupt", corrupt(ext, good))):
            cases.append(Case(f"{ext}-{label}", 1, run_image(written(f"bad_{label}.{ext}", data))))
    ihdr = bytearray(encode("PNG"))
    ihdr[29] ^= 0xFF
    cases += [
        Case("png-ihdr-crc", 1, run_image(written("ihdr.png", bytes(ihdr)))),
        Case("bomb-900mp-header", 1, run_image(written("bomb.png", png_header_only(30000, 30000))), isolate=True),
        Case("ztxt-bomb", 1, run_image(written("ztxt.png", lambda: ztxt_bomb(encode("PNG")))), isolate=True),
    ]
    return cases


def _symlink_loop(work: Path) -> Path:
    (work / "loop_a.png").symlink_to(work / "loop_b.png")
    (work / "loop_b.png").symlink_to(work / "loop_a.png")
    return work / "loop_a.png"


def _dangling(work: Path) -> Path:
    (work / "dangling.png").symlink_to(work / "gone.png")
    return work / "dangling.png"


def _fifo(work: Path) -> Path:
    os.mkfifo(work / "pipe.png")
    return work / "pipe.png"


def _folder(work: Path) -> Path:
    (work / "album.png").mkdir()
    return work / "album.png"


def _through_file(work: Path) -> Path:
    (work / "afile").write_text("a plain file\n")
    return work / "afile" / "x.png"


def _unreadable(work: Path) -> Path:
    path = save_png(work / "locked.png")
    path.chmod(0)
    return path


def _planted_link(work: Path) -> Path:
    """Issue 16 #1: a symlink where the old predictable temp name of the output would go."""
    src = save_png(work / "a.png")
    (work / ".a_x4.png.upscale-tmp").symlink_to(src)
    return src


def filesystem_cases() -> list[Case]:
    posix = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
    root = pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
    return [
        Case("symlink-loop", 1, run_image(_symlink_loop)),
        Case("dangling-symlink", 1, run_image(_dangling)),
        Case("fifo", 1, run_image(_fifo), isolate=True, marks=(posix,)),
        Case("folder-as-image", 2, run_image(_folder)),      # usage: it points to `upscale batch`
        Case("path-through-a-file", 1, run_image(_through_file, names=["afile"])),
        Case("unreadable-chmod-000", 1, run_image(_unreadable), marks=(root,)),
        Case("planted-temp-symlink", 0, lambda work, tiny: Prepared(
            [str(_planted_link(work)), "-m", str(tiny), *FAST, "-q"], outputs=["a_x4.png"],
            keep=[work / "a.png"])),
    ]


MULTI = "frame|page|animat"


def _saved(name: str, mode: str, **params) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        if mode in ("I;16", "I;16-tif"):
            deep = (np.random.default_rng(3).integers(0, 65536, (64, 64))).astype(np.uint16)
            PILImage.fromarray(deep).save(work / name)
        else:
            channels = 4 if mode in ("RGBA", "LA", "P+t") else 3
            im = PILImage.fromarray(pixels(channels=channels), "RGBA" if channels == 4 else "RGB")
            if mode == "P+t":
                im = im.convert("P")
                params["transparency"] = 0
            else:
                im = im.convert(mode)
            im.save(work / name, **params)
        return work / name
    return make


def _multi(name: str, fmt: str) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        save_frames(work / name, fmt)
        return work / name
    return make


def mode_cases() -> list[Case]:
    def ok(case_id: str, make: Callable, out: str, **kw) -> Case:
        def build(work: Path, tiny: Path) -> Prepared:
            return run_image(make, "-o", str(work / out), outputs=[out], **kw)(work, tiny)
        return Case(case_id, 0, build)

    return [
        ok("palette", _saved("pal.png", "P"), "pal_x4.png"),
        ok("palette-transparency", _saved("palt.png", "P+t"), "palt_x4.png"),
        ok("cmyk-jpeg", _saved("cmyk.jpg", "CMYK", quality=90), "cmyk_x4.jpg"),
        ok("16-bit-png", _saved("deep.png", "I;16"), "deep_x4.png"),
        ok("16-bit-tiff", _saved("deep.tif", "I;16-tif"), "deep_x4.tif"),
        ok("grey", _saved("grey.png", "L"), "grey_x4.png"),
        ok("grey-alpha", _saved("ga.png", "LA"), "ga_x4.png"),
        ok("rgba", _saved("rgba.png", "RGBA"), "rgba_x4.png"),
        ok("animated-gif", _multi("anim.gif", "GIF"), "anim_x4.png", warn=MULTI),
        ok("animated-webp", _multi("anim.webp", "WEBP"), "anim_x4.webp", warn=MULTI),
        ok("apng", _multi("anim.png", "PNG"), "anim_x4.png", warn=MULTI),
        ok("multipage-tiff", _multi("pages.tif", "TIFF"), "pages_x4.tif", warn=MULTI),
        ok("corrupt-exif", lambda w: (corrupt_exif_jpeg(w / "exif.jpg"), w / "exif.jpg")[1], "exif_x4.jpg",
           warn=".*"),
    ]


def _weights(name: str, make: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        path = work / name
        make(path)
        return path
    return build


def weights_case(case_id: str, name: str, make: Callable[[Path], None], isolate: bool = False) -> Case:
    """``upscale photo.png -m WEIGHTS`` with a hostile weights file: exit 1, the file named."""
    def build(work: Path, tiny: Path) -> Prepared:
        weights = _weights(name, make)(work)
        image = save_png(work / "photo.png")
        return Prepared([str(image), "-m", str(weights), *FAST, "-q"], names=[weights.name])
    return Case(case_id, 1, build, isolate=isolate)


def _raw_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(ExecOnLoad(path.with_name(SENTINEL)), protocol=2))


def _zip_global(path: Path) -> None:
    torch.save({"params": {"body.0.weight": torch.zeros(1), "extra": ShellOnLoad(path.with_name(SENTINEL))}}, path)


def _proto4_ckpt(path: Path) -> None:
    path.write_bytes(pickle.dumps({"state_dict": ExecOnLoad(path.with_name(SENTINEL))}, protocol=4))


def _nan(path: Path) -> None:
    sd = tiny_state()
    sd["body.2.weight"] = torch.full_like(sd["body.2.weight"], math.nan)
    save_model(path, sd, "compact", TINY_HP)


def _forged(num_feat: int) -> Callable[[Path], None]:
    return lambda path: save_with_metadata(path, tiny_state(), "compact", json.dumps({**TINY_HP, "num_feat": num_feat}))


def _truncated(path: Path) -> None:
    save_model(path, tiny_state(), "compact", TINY_HP)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_arch(path: Path) -> None:
    save_with_metadata(path, tiny_state(), "rrdbnet", json.dumps({"num_feat": 8, "num_block": 1, "scale": 4}))


def _bad_metadata(path: Path) -> None:
    save_with_metadata(path, tiny_state(), "compact", '["not", "an", "object"]')


def weights_cases() -> list[Case]:
    return [
        weights_case("raw-pickle-exec", "evil.pth", _raw_pickle),
        weights_case("zip-torch-os-system", "evil_zip.pth", _zip_global),
        weights_case("protocol-4-ckpt", "evil.ckpt", _proto4_ckpt),
        weights_case("nan-weights", "nan.safetensors", _nan),
        weights_case("forged-num-feat-60000", "forged.safetensors", _forged(60000), isolate=True),
        weights_case("forged-num-feat-4000", "forged4k.safetensors", _forged(4000), isolate=True),
        weights_case("truncated-safetensors", "half.safetensors", _truncated),
        weights_case("wrong-arch-metadata", "wrongarch.safetensors", _wrong_arch),
        weights_case("bad-metadata-json", "badmeta.safetensors", _bad_metadata),
        Case("ncnn-mismatched-bin", 1, _ncnn_mismatch),
        Case("convert-wrong-arch-metadata", 1, _convert_case("wrongarch.safetensors", _wrong_arch)),
        Case("convert-bad-metadata-json", 1, _convert_case("badmeta.safetensors", _bad_metadata)),
        Case("convert-output-through-a-file", 1, _convert_through_file),
    ]


def _ncnn_mismatch(work: Path, tiny: Path) -> Prepared:
    """A .param for width 8 beside the .bin of a width-4 network (same layer list)."""
    param, binary = write_ncnn_compact(work / "net", tiny_state(), 2, 4)
    other = work / "other"
    _, other_bin = write_ncnn_compact(other, tiny_state(1, num_feat=4), 2, 4)
    other_bin.replace(binary)
    other.with_suffix(".param").unlink()
    image = save_png(work / "photo.png")
    return Prepared([str(image), "-m", str(param), *FAST, "-q"], names=["net.bin"], forbid=["quantized"])


def _convert_case(name: str, make: Callable[[Path], None]) -> Callable:
    def build(work: Path, tiny: Path) -> Prepared:
        make(work / name)
        return Prepared(["convert", str(work / name), str(work / "converted.safetensors")], names=[name])
    return build


def _convert_through_file(work: Path, tiny: Path) -> Prepared:
    torch.save({"params": tiny_state()}, work / "g.pth")
    (work / "afile").write_text("a plain file\n")
    return Prepared(["convert", str(work / "g.pth"), str(work / "afile" / "out.safetensors")], names=["afile"])


def _junk_model(work: Path) -> Path:
    path = work / "junk.safetensors"
    path.write_bytes(bytes(64))
    return path


def option_cases() -> list[Case]:
    image = good_png("photo.png")
    cases = []
    for value in ("0", "-1", "nan"):
        cases.append(Case(f"scale-{value}", 2, run_image(image, "-s", value, names=["--scale"])))
        # checked before the model is read: a broken weights file must not be what is reported
        cases.append(Case(f"scale-{value}-before-model", 2,
                          run_image(image, "-s", value, names=["--scale"], model=_junk_model)))
    cases += [
        Case("scale-1000-memory", 1, run_image(image, "-s", "1000", names=[]), isolate=True),
        Case("scale-1e9", 1, run_image(image, "-s", "1e9", names=[]), isolate=True),
        # an output the writer cannot produce is "cannot write output" (exit 1), as README documents
        Case("bad-output-extension", 1, lambda work, tiny: run_image(
            image, "-o", str(work / "out.xyz"), names=["out.xyz"])(work, tiny)),
        Case("bad-output-extension-before-model", 1, lambda work, tiny: run_image(
            image, "-o", str(work / "out.xyz"), names=["out.xyz"], model=_junk_model)(work, tiny)),
        Case("output-through-a-file", 1, _output_through_file),
        Case("output-is-a-folder", 1, _output_is_folder),
        Case("format-jpg-into-png", 2, lambda work, tiny: run_image(
            image, "--format", "jpg", "-o", str(work / "y.png"), names=["y.png"])(work, tiny)),
        Case("batch-report-is-an-input", 2, _report_on("in/good.png")),
        Case("batch-report-is-an-output", 2, _report_on("out/good_x4.png")),
        Case("batch-zero-byte-output-is-redone", 0, _zero_byte_output),
        Case("interp-output-exists", 1, _interp_case("taken.safetensors")),
        Case("interp-output-is-its-psnr-input", 1, _interp_case("psnr.safetensors")),
        Case("interp-output-is-its-gan-input-force", 1, _interp_case("gan.safetensors", "--force")),
    ]
    return cases


def _output_through_file(work: Path, tiny: Path) -> Prepared:
    (work / "afile").write_text("a plain file\n")
    return run_image(good_png("photo.png"), "-o", str(work / "afile" / "x.png"), names=["afile"],
                     forbid=["does not exist"])(work, tiny)


def _output_is_folder(work: Path, tiny: Path) -> Prepared:
    """-o DIR puts the output in DIR under its default name: where that name is itself a folder."""
    (work / "existing_dir" / "photo_x4.png").mkdir(parents=True)
    return run_image(good_png("photo.png"), "-o", str(work / "existing_dir"), names=["photo_x4.png"],
                     forbid=["--force"])(work, tiny)


def _batch_input(work: Path) -> tuple[Path, Path]:
    (work / "in").mkdir()
    save_png(work / "in" / "good.png")
    save_png(work / "in" / "other.png", 40, 32)
    return work / "in", work / "out"


def _report_on(rel: str) -> Callable:
    def build(work: Path, tiny: Path) -> Prepared:
        src, out = _batch_input(work)
        out.mkdir()
        report = work / rel
        keep = [report] if report.exists() else []
        return Prepared(["batch", str(src), "--out", str(out), "--report", str(report), "-m", str(tiny), *FAST, "-q"],
                        names=[report.name], keep=keep)
    return build


def _zero_byte_output(work: Path, tiny: Path) -> Prepared:
    """Issue 16 #7: a zero-byte output left by a crash is not a finished output."""
    src, out = _batch_input(work)
    out.mkdir()
    (out / "good_x4.png").write_bytes(b"")
    return Prepared(["batch", str(src), "--out", str(out), "-m", str(tiny), *FAST, "-q"],
                    outputs=["out/good_x4.png", "out/other_x4.png"])


def _interp_case(target: str, *extra: str) -> Callable:
    def build(work: Path, tiny: Path) -> Prepared:
        save_model(work / "psnr.safetensors", tiny_state(1), "compact", TINY_HP)
        save_model(work / "gan.safetensors", tiny_state(2), "compact", TINY_HP)
        if not (work / target).exists():
            save_model(work / target, tiny_state(3), "compact", TINY_HP)
        return Prepared(["interp", "--alpha", "0.5", "--psnr", str(work / "psnr.safetensors"),
                         "--gan", str(work / "gan.safetensors"), "-o", str(work / target), *extra],
                        names=[target], keep=[work / target, work / "psnr.safetensors", work / "gan.safetensors"])
    return build


CASES = [*image_cases(), *filesystem_cases(), *mode_cases(), *weights_cases(), *option_cases()]


# --- running and checking -------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    uncaught: str = ""


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ISOLATED_MEMORY, ISOLATED_MEMORY))


def run_cli(args: list[str], isolate: bool) -> Outcome:
    if isolate:
        try:
            proc = subprocess.run([sys.executable, "-m", "upscale", *args], capture_output=True, text=True,
                                  timeout=ISOLATED_SECONDS, preexec_fn=_limits, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired:
            pytest.fail(f"`upscale {' '.join(args)}` still running after {ISOLATED_SECONDS} s")
        return Outcome(proc.returncode, proc.stdout, proc.stderr)
    res = CliRunner().invoke(cli, args, catch_exceptions=True)
    uncaught = "" if res.exception is None or isinstance(res.exception, SystemExit) else repr(res.exception)
    return Outcome(res.exit_code, res.stdout, res.stderr, uncaught)


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Relative path -> file bytes (or a marker for folders, links and other kinds), hidden ones too."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "folder"
            elif path.is_file():
                found[rel] = "file"
            else:
                found[rel] = "other"
    return found


def message_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def check(case: Case, prep: Prepared, out: Outcome, before: dict, after: dict, work: Path, kept: dict) -> None:
    said = f"exit {out.code}\nstderr: {out.stderr!r}\nstdout: {out.stdout[-400:]!r}"
    assert not out.uncaught, f"uncaught {out.uncaught}\n{said}"
    for stream in (out.stdout, out.stderr):
        assert "Traceback" not in stream and "internal error" not in stream, said
    assert out.code == case.code, said
    lines = message_lines(out.stderr)
    if case.code != 0:
        assert len(lines) == 1, f"want one line on stderr\n{said}"
        for name in prep.names:
            assert name in lines[0], f"the message does not name {name}\n{said}"
    else:
        assert "\r" not in out.stderr and len(lines) <= 15, f"progress noise off a terminal\n{said}"
        if prep.warn:
            assert any(re.search(prep.warn, ln, re.I) for ln in lines), f"no warning matching {prep.warn!r}\n{said}"
            named = [ln for ln in lines if any(n in ln for n in prep.names)]
            assert named, f"the warning does not name {prep.names}\n{said}"
    for phrase in prep.forbid:
        assert phrase not in out.stderr, f"message says {phrase!r}\n{said}"
    added = {rel for rel in after if rel not in before and Path(rel).name != JOURNAL_NAME}   # images only
    new = {rel for rel in prep.outputs if rel not in before}
    assert added == new, f"files added {sorted(added)}, expected {sorted(new)}\n{said}"
    assert not [rel for rel in after if is_temp_name(Path(rel).name) or rel.endswith(".tmp")], sorted(after)
    for rel in prep.outputs:
        with PILImage.open(work / rel) as im:
            im.load()
    for path, data in kept.items():
        assert path.read_bytes() == data, f"{path.name} was changed\n{said}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_hostile_case(case: Case, tmp_path: Path, tiny: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prep = case.build(work, tiny)
    kept = {p: p.read_bytes() for p in prep.keep}
    before = snapshot(work)
    outcome = run_cli(prep.args, case.isolate)
    after = snapshot(work)
    try:
        check(case, prep, outcome, before, after, work, kept)
    finally:
        assert not (work / SENTINEL).exists(), "pickled code ran"
        for path in work.rglob("*"):
            if not path.is_symlink() and path.exists():
                path.chmod(0o700 if path.is_dir() else 0o600)


# --- dedicated cases the table cannot say -------------------------------------------------------------
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("tile", [["--tile", "1"], ["--tile", "4"], ["--tile", "16", "--overlap", "32"]],
                         ids=["tile-1", "tile-4", "tile-16-overlap-32"])
def test_small_tile_never_trades_seams_silently(tmp_path: Path, tiny: Path, tile: list[str]) -> None:
    """Issue 16 #4 and #14: a small tile is either refused naming --tile (exit 2) or runs saying so
    (in flags, not parameter names), with output equal to the untiled result (`--tile 1` was 26.6 dB
    off it) and plain periodic progress lines off a terminal, not thousands of bar frames."""
    src = save_png(tmp_path / "photo.png")
    ref = run_cli([str(src), "-m", str(tiny), *FAST, "-q", "--tile", "0", "-o", str(tmp_path / "ref.png")], False)
    assert ref.code == 0, ref.stderr
    started = time.monotonic()
    out = run_cli([str(src), "-m", str(tiny), *FAST, *tile, "-o", str(tmp_path / "t1.png")], False)
    # off a terminal: a line per tenth of the work, or one per PLAIN_EVERY_S on a slow (loaded) machine
    allowed = 15 + int((time.monotonic() - started) / PLAIN_EVERY_S)
    lines = message_lines(out.stderr)
    assert not out.uncaught and "internal error" not in out.stderr, out
    assert "\r" not in out.stderr and len(lines) <= allowed, f"{len(lines)} lines on stderr"
    assert "tile_px" not in out.stderr and "overlap_px" not in out.stderr, f"parameter names shown: {out.stderr!r}"
    if out.code == 2:
        assert len(lines) == 1 and "--tile" in lines[0], out.stderr
        assert not (tmp_path / "t1.png").exists()
        return
    assert out.code == 0, out.stderr
    assert any(re.search("tile|overlap", ln, re.I) for ln in lines), f"changed without saying so: {out.stderr!r}"
    with PILImage.open(tmp_path / "ref.png") as a, PILImage.open(tmp_path / "t1.png") as b:
        assert _psnr(np.asarray(a), np.asarray(b)) >= 50.0
