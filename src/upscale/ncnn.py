"""ncnn ``.param`` + ``.bin`` -> one of our architectures and a canonical (BasicSR-layout) state dict.

Formats, as ncnn documents them (``param-and-model-file-structure``, ``operation-param-weight-table``):

- ``.param`` is text: the magic ``7767517``, then ``layer_count blob_count``, then one line per layer:
  ``type name n_in n_out in_blobs... out_blobs... key=value...``. Keys 0..19 hold scalars; a key
  ``-23300 - i`` holds an array for index ``i`` written ``count,v1,v2,...``. A value with a decimal
  point or an exponent is a float, otherwise an integer. A blob read by several layers goes through a
  ``Split`` layer, whose outputs are aliases of its input.
- ``.bin`` is every layer's weights in layer order. A Convolution's weight buffer starts with a 4-byte
  little-endian tag (0 = float32 follows, 0x01306B47 = float16 follows, padded to 4 bytes; other tags
  are quantized storage, which we refuse); its bias and a PReLU's slopes are raw float32 without a tag.

The graph is matched by data flow (which blob feeds which layer), not by layer order, against the two
families ncnn super-resolution models are made of: RRDBNet (ESRGAN / Real-ESRGAN) and SRVGGNetCompact
(Real-ESRGAN's compact "animevideov3" nets). Every layer must be accounted for, except one thing we
drop on purpose: a trailing bilinear/bicubic ``Interp`` after a compact net. Real-ESRGAN ships its
animevideov3 x2 and x3 ncnn models as the x4 network followed by a bicubic x0.5 / x0.75 downscale; the
converted model is the x4 network, and ``NcnnModel.post_resize`` says what was dropped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from .errors import ConversionError

log = logging.getLogger(__name__)

MAGIC = 7767517
TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
ARRAY_KEY_BASE = -23300

Value = Union[int, float, tuple]

# Layer types our two families are drawn with and that carry no weights in the .bin.
_WEIGHTLESS = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle",
                         "Reorg", "ReLU"})
_INTERP_MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class Layer:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, Value]
    line: int
    source: str  # the .param file, for messages

    def get(self, key: int, default: int | float) -> int | float:
        """A scalar parameter."""
        value = self.params.get(key, default)
        if isinstance(value, tuple):
            raise ConversionError(f"line {self.line}: parameter {key} of {self.name} must be a number, not "
                                  "an array", path=self.source)
        return value

    def array(self, key: int) -> tuple:
        """An array parameter (empty when absent)."""
        value = self.params.get(key, ())
        if not isinstance(value, tuple):
            raise ConversionError(f"line {self.line}: parameter {key} of {self.name} must be an array",
                                  path=self.source)
        return value


@dataclass(frozen=True)
class NcnnModel:
    """What a .param/.bin pair converts to, plus what is needed to run the original in ncnn."""

    arch: str
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    input_blob: str
    output_blob: str
    post_resize: tuple[str, float] | None  # (mode, factor) of a dropped trailing Interp, else None


def read_ncnn(param_path: str | Path, bin_path: str | Path | None = None
              ) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(architecture name, hyperparameters, canonical state dict) of an ncnn model.

    ``bin_path`` defaults to the .param path with the suffix ``.bin``. Raises ``ConversionError``
    naming the file and what did not match when the pair is not an RRDBNet or SRVGGNetCompact graph.
    """
    model = inspect_ncnn(param_path, bin_path)
    return model.arch, model.hparams, model.state_dict


def inspect_ncnn(param_path: str | Path, bin_path: str | Path | None = None) -> NcnnModel:
    """Parse both files, match the graph to an architecture and collect its weights."""
    param_path = Path(param_path)
    bin_path = param_path.with_suffix(".bin") if bin_path is None else Path(bin_path)
    layers = parse_param(_read_bytes(param_path).decode("utf-8", errors="replace"), param_path)
    weights = _read_weights(layers, _read_bytes(bin_path), param_path, bin_path)
    graph = _Graph(layers, weights, param_path)
    if any(layer.type == "Concat" for layer in layers):
        arch, hparams = "rrdbnet", _match_rrdbnet(graph)
    elif any(layer.type == "PixelShuffle" for layer in layers):
        arch, hparams = "compact", _match_compact(graph)
    else:
        raise ConversionError("not an RRDBNet or SRVGGNetCompact graph (it has neither Concat nor "
                              "PixelShuffle layers)", path=param_path)
    graph.check_all_used()
    if graph.post_resize is not None:
        mode, factor = graph.post_resize
        log.warning("%s: dropped the trailing %s resize x%g; the converted model upscales x%d",
                    param_path, mode, factor, hparams["scale"])
    return NcnnModel(arch, hparams, graph.state_dict, graph.input_blob, graph.output_blob, graph.post_resize)


# --- .param -------------------------------------------------------------------------------------
def parse_param(text: str, path: str | Path) -> list[Layer]:
    """Layers of a text .param, checked for the header counts and for blobs read before written."""
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or lines[0][1] != [str(MAGIC)]:
        raise ConversionError(f"not a text ncnn .param (first line is not the magic {MAGIC})", path=path)
    if len(lines) < 2 or len(lines[1][1]) != 2 or not all(t.isdigit() for t in lines[1][1]):
        raise ConversionError("second line must be 'layer_count blob_count'", path=path)
    layer_count, blob_count = (int(t) for t in lines[1][1])
    layers = [_parse_layer(tokens, n, path) for n, tokens in lines[2:]]
    if len(layers) != layer_count:
        raise ConversionError(f"header says {layer_count} layers, the file has {len(layers)}", path=path)
    produced: set[str] = set()
    names: set[str] = set()
    for layer in layers:
        if layer.name in names:
            raise ConversionError(f"line {layer.line}: layer name {layer.name!r} is used twice", path=path)
        names.add(layer.name)
        for blob in layer.inputs:
            if blob not in produced:
                raise ConversionError(f"line {layer.line}: layer {layer.name} reads blob {blob!r} "
                                      "before any layer writes it", path=path)
        for blob in layer.outputs:
            if blob in produced:
                raise ConversionError(f"line {layer.line}: blob {blob!r} is written twice", path=path)
            produced.add(blob)
    if len(produced) != blob_count:
        raise ConversionError(f"header says {blob_count} blobs, the layers write {len(produced)}", path=path)
    return layers


def _parse_layer(tokens: list[str], line: int, path: str | Path) -> Layer:
    where = f"line {line}"
    if len(tokens) < 4 or not tokens[2].isdigit() or not tokens[3].isdigit():
        raise ConversionError(f"{where}: expected 'type name n_in n_out ...'", path=path)
    n_in, n_out = int(tokens[2]), int(tokens[3])
    if len(tokens) < 4 + n_in + n_out:
        raise ConversionError(f"{where}: layer {tokens[1]} lists fewer blobs than its counts say", path=path)
    params: dict[int, Value] = {}
    for item in tokens[4 + n_in + n_out:]:
        key_text, sep, raw = item.partition("=")
        try:
            key = int(key_text)
            if not sep:
                raise ValueError(item)
            if key <= ARRAY_KEY_BASE:
                key, value = ARRAY_KEY_BASE - key, _parse_counted_array(raw)
            else:
                value = _parse_value(raw)
        except ValueError:
            raise ConversionError(f"{where}: cannot read parameter {item!r} of layer {tokens[1]}",
                                  path=path) from None
        if key in params:
            raise ConversionError(f"{where}: parameter {key} of layer {tokens[1]} is given twice", path=path)
        params[key] = value
    return Layer(tokens[0], tokens[1], tuple(tokens[4:4 + n_in]), tuple(tokens[4 + n_in:4 + n_in + n_out]),
                 params, line, str(path))


def _parse_number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_counted_array(text: str) -> tuple:
    count, *items = text.split(",")
    if int(count) != len(items):
        raise ValueError(text)
    return tuple(_parse_number(t) for t in items)


def _parse_value(text: str) -> Value:
    """A number, or an array in the modern spelling without a count. String values (which none of the
    layer types we convert use) are refused as unreadable."""
    if "," in text:
        return tuple(_parse_number(t) for t in text.split(","))
    return _parse_number(text)


# --- .bin ---------------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConversionError(f"cannot read: {err.strerror or err}", path=path) from None


class _BinReader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def _take(self, nbytes: int, what: str) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise ConversionError(f"truncated: {what} needs {nbytes} bytes at offset {self.pos}, the file "
                                  f"has {len(self.data)}", path=self.path)
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def raw_fp32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> np.ndarray:
        tag = int.from_bytes(self._take(4, what), "little")
        if tag == TAG_FP32:
            return self.raw_fp32(count, what)
        if tag == TAG_FP16:
            padded = (2 * count + 3) // 4 * 4
            return np.frombuffer(self._take(padded, what)[:2 * count], dtype="<f2").astype(np.float32)
        raise ConversionError(f"{what}: weight storage tag 0x{tag:08X} at offset {self.pos - 4} is "
                              "quantized (int8 or table); only float32 and float16 are supported",
                              path=self.path)


def _read_weights(layers: list[Layer], data: bytes, param_path: Path, bin_path: Path
                  ) -> dict[str, tuple[np.ndarray, ...]]:
    """Each weighted layer's arrays, read in layer order: Convolution (weight, bias), PReLU (slope,)."""
    reader = _BinReader(data, bin_path)
    weights: dict[str, tuple[np.ndarray, ...]] = {}
    for layer in layers:
        what = f"layer {layer.name} ({layer.type})"
        if layer.type == "Convolution":
            if layer.get(8, 0) != 0:
                raise ConversionError(f"{what} is int8-quantized; only float models convert", path=param_path)
            if len(layer.inputs) != 1:
                raise ConversionError(f"{what} takes its weights from blobs; not supported", path=param_path)
            weight = reader.tagged(_int_param(layer, 6, param_path), what)
            bias = reader.raw_fp32(_int_param(layer, 0, param_path), what) if layer.get(5, 0) else None
            weights[layer.name] = (weight,) if bias is None else (weight, bias)
        elif layer.type == "PReLU":
            weights[layer.name] = (reader.raw_fp32(_int_param(layer, 0, param_path), what),)
        elif layer.type not in _WEIGHTLESS:
            raise ConversionError(f"line {layer.line}: layer type {layer.type} ({layer.name}) is not part of "
                                  "an RRDBNet or SRVGGNetCompact graph", path=param_path)
    if reader.pos != len(data):
        raise ConversionError(f"{len(data) - reader.pos} bytes left over after the last layer's weights: the "
                              f".bin does not belong to {param_path.name}", path=bin_path)
    return weights


def _int_param(layer: Layer, key: int, path: Path) -> int:
    value = layer.get(key, 0)
    if not isinstance(value, int) or value < 0:
        raise ConversionError(f"line {layer.line}: parameter {key} of {layer.name} must be a count, not "
                              f"{value!r}", path=path)
    return value


# --- graph matching -----------------------------------------------------------------------------
Activation = Union[tuple[str], tuple[str, float], tuple[str, np.ndarray]]


class _Graph:
    """Data-flow view of the layers (Split outputs resolved to their source) and the match's state."""

    def __init__(self, layers: list[Layer], weights: dict[str, tuple[np.ndarray, ...]], path: Path) -> None:
        self.path = path
        self.layers = layers
        self.weights = weights
        self.alias: dict[str, str] = {}
        self.consumers: dict[str, list[Layer]] = defaultdict(list)
        self.used: set[str] = set()
        self.state_dict: dict[str, torch.Tensor] = {}
        self.post_resize: tuple[str, float] | None = None
        inputs = [layer for layer in layers if layer.type == "Input"]
        if len(inputs) != 1 or len(inputs[0].outputs) != 1:
            raise self.error(f"expected exactly one Input layer with one blob, found {len(inputs)}")
        self.input_blob = inputs[0].outputs[0]
        for layer in layers:
            if layer.type == "Split":
                if len(layer.inputs) != 1:
                    raise self.error("Split must read one blob", layer)
                for blob in layer.outputs:
                    self.alias[blob] = self.resolve(layer.inputs[0])
            else:
                for blob in layer.inputs:
                    self.consumers[self.resolve(blob)].append(layer)
        ends = [b for layer in layers if layer.type != "Split" for b in layer.outputs if not self.consumers[b]]
        if len(ends) != 1:
            raise self.error(f"expected one output blob (written and never read), found {len(ends)}: "
                             f"{', '.join(ends[:5])}")
        self.output_blob = ends[0]

    def error(self, message: str, layer: Layer | None = None) -> ConversionError:
        where = f"line {layer.line}: layer {layer.name} ({layer.type}): " if layer else ""
        return ConversionError(where + message, path=self.path)

    def resolve(self, blob: str) -> str:
        return self.alias.get(blob, blob)

    def ins(self, layer: Layer) -> tuple[str, ...]:
        return tuple(self.resolve(b) for b in layer.inputs)

    def take(self, blob: str, types: tuple[str, ...], what: str, match=lambda layer: True) -> Layer:
        """The one unused layer of one of ``types`` that reads ``blob`` and satisfies ``match``."""
        found = [c for c in self.consumers[blob] if c.type in types and c.name not in self.used and match(c)]
        if len(found) != 1:
            raise self.error(f"expected one {what} reading blob {blob!r}, found {len(found)}")
        layer = found[0]
        if len(layer.outputs) != 1:
            raise self.error("expected one output blob", layer)
        self.used.add(layer.name)
        return layer

    def has_consumer(self, blob: str, layer_type: str) -> bool:
        return any(c.type == layer_type and c.name not in self.used for c in self.consumers[blob])

    def conv(self, blob: str, key: str, in_ch: int | None = None, out_ch: int | None = None
             ) -> tuple[str, int, int, Activation]:
        """Take the 3x3/stride 1/pad 1 Convolution reading ``blob`` (and a ReLU/PReLU right after it),
        store its weights under ``key``; returns (output blob, in channels, out channels, activation)."""
        layer = self.take(blob, ("Convolution",), f"Convolution ({key})")
        p = layer.get
        num_output = int(p(0, 0))
        kernel = (p(11, p(1, 0)), p(1, 0))
        dilation = (p(12, p(2, 1)), p(2, 1))
        stride = (p(13, p(3, 1)), p(3, 1))
        pad_left = p(4, 0)
        pads = (pad_left, p(15, pad_left), p(14, pad_left), p(16, p(14, pad_left)))
        if kernel != (3, 3) or dilation != (1, 1) or stride != (1, 1) or pads != (1, 1, 1, 1):
            raise self.error(f"expected a 3x3 convolution with stride 1, dilation 1 and padding 1 ({key}); "
                             f"found kernel {kernel}, stride {stride}, dilation {dilation}, pads {pads}", layer)
        if p(5, 0) != 1 or p(18, 0.0) != 0:
            raise self.error(f"expected a bias and zero padding value ({key})", layer)
        weight, bias = self.weights[layer.name]
        if num_output <= 0 or weight.size % (num_output * 9):
            raise self.error(f"weight_data_size {weight.size} is not num_output {num_output} x in x 3 x 3", layer)
        in_found = weight.size // (num_output * 9)
        if (in_ch is not None and in_found != in_ch) or (out_ch is not None and num_output != out_ch):
            raise self.error(f"expected {in_ch or '?'} -> {out_ch or '?'} channels ({key}), found "
                             f"{in_found} -> {num_output}", layer)
        self.state_dict[f"{key}.weight"] = torch.from_numpy(weight.reshape(num_output, in_found, 3, 3).copy())
        self.state_dict[f"{key}.bias"] = torch.from_numpy(bias.copy())
        out, act = self._activation(layer, num_output)
        return out, in_found, num_output, act

    def _activation(self, layer: Layer, channels: int) -> tuple[str, Activation]:
        """The activation fused into a Convolution (9=activation_type) or in a layer right after it."""
        out = layer.outputs[0]
        kind = layer.get(9, 0)
        if kind == 1:
            return out, ("leaky", 0.0)
        if kind == 2:
            params = layer.array(10)
            return out, ("leaky", float(params[0]) if params else 0.0)
        if kind != 0:
            raise self.error(f"fused activation type {kind} is not ReLU or LeakyReLU", layer)
        after = [c for c in self.consumers[out] if c.name not in self.used]
        if len(after) == 1 and after[0].type == "ReLU":
            relu = self.take(out, ("ReLU",), "ReLU")
            return relu.outputs[0], ("leaky", float(relu.get(0, 0.0)))
        if len(after) == 1 and after[0].type == "PReLU":
            prelu = self.take(out, ("PReLU",), "PReLU")
            (slope,) = self.weights[prelu.name]
            if slope.size != channels:
                raise self.error(f"expected {channels} slopes, found {slope.size}", prelu)
            return prelu.outputs[0], ("prelu", slope)
        return out, ("none",)

    def expect_act(self, act: Activation, wanted: Activation, key: str, blob: str) -> None:
        same = act[0] == wanted[0] and (len(wanted) == 1 or abs(float(act[1]) - float(wanted[1])) < 1e-6)
        if not same:
            raise self.error(f"expected activation {_describe(wanted)} after {key} (blob {blob!r}), found "
                             f"{_describe(act)}")

    def weighted_sum(self, a: str, b: str, coeff_a: float, what: str) -> str:
        """Take the layer computing ``coeff_a * a + b`` (Eltwise sum with coefficients, or BinaryOp add
        when ``coeff_a`` is 1); returns its output blob."""
        def match(layer: Layer) -> bool:
            if sorted(self.ins(layer)) != sorted((a, b)):
                return False
            if layer.type == "BinaryOp":
                return coeff_a == 1 and layer.get(0, 0) == 0 and layer.get(1, 0) == 0
            coeffs = layer.array(1) or (1.0, 1.0)
            if layer.get(0, 0) != 1 or len(coeffs) != 2:
                return False
            by_blob = dict(zip(self.ins(layer), coeffs))
            return abs(by_blob[a] - coeff_a) < 1e-6 and abs(by_blob[b] - 1.0) < 1e-6
        return self.take(a, ("Eltwise", "BinaryOp"), what, match).outputs[0]

    def interp(self, blob: str, mode: str, factor: float, what: str) -> str:
        layer = self.take(blob, ("Interp",), what)
        found_mode = _INTERP_MODES.get(layer.get(0, 0), f"type {layer.get(0, 0)}")
        scales = (float(layer.get(1, 1.0)), float(layer.get(2, 1.0)))
        if found_mode != mode or scales != (factor, factor) or layer.get(3, 0) or layer.get(4, 0) \
                or layer.get(5, 0) or layer.get(6, 0):
            raise self.error(f"expected {what}: {mode} x{factor:g}; found {found_mode} x{scales}", layer)
        return layer.outputs[0]

    def check_all_used(self) -> None:
        for layer in self.layers:
            if layer.type not in ("Input", "Split") and layer.name not in self.used:
                raise self.error("not part of the matched network", layer)


def _describe(act: Activation) -> str:
    if act[0] == "leaky":
        return "ReLU" if act[1] == 0 else f"LeakyReLU({act[1]:g})"
    return "PReLU" if act[0] == "prelu" else "none"


def _match_rrdbnet(g: _Graph) -> dict[str, Any]:
    """conv_first -> N x RRDB -> conv_body (+ trunk) -> 2 x (nearest x2, conv, lrelu) -> conv_hr -> conv_last."""
    lrelu: Activation = ("leaky", 0.2)
    x, unshuffle = g.input_blob, 1
    if g.has_consumer(x, "Reorg"):
        reorg = g.take(x, ("Reorg",), "Reorg (pixel unshuffle)")
        factor = reorg.get(0, 0)
        if factor not in (2, 4) or reorg.get(1, 0) != 0:
            raise g.error("expected a pixel unshuffle by 2 or 4 in PyTorch channel order (mode 0)", reorg)
        unshuffle = int(factor)
        x = reorg.outputs[0]
    feat, in_ch, num_feat, act = g.conv(x, "conv_first")
    g.expect_act(act, ("none",), "conv_first", feat)
    if in_ch % (unshuffle * unshuffle):
        raise g.error(f"conv_first reads {in_ch} channels, not a multiple of the unshuffle {unshuffle}^2")
    trunk, num_block, num_grow_ch = feat, 0, None
    while g.has_consumer(trunk, "Concat"):
        block_in = trunk
        for r in (1, 2, 3):
            trunk, num_grow_ch = _match_rdb(g, trunk, f"body.{num_block}.rdb{r}", num_feat, num_grow_ch)
        trunk = g.weighted_sum(trunk, block_in, 0.2, f"RRDB residual (body.{num_block})")
        num_block += 1
    if num_block == 0:
        raise g.error("no residual-in-residual dense block after conv_first")
    body, _, _, act = g.conv(trunk, "conv_body", num_feat, num_feat)
    g.expect_act(act, ("none",), "conv_body", body)
    out = g.weighted_sum(body, feat, 1.0, "trunk sum (conv_first + conv_body)")
    for key in ("conv_up1", "conv_up2"):
        out = g.interp(out, "nearest", 2.0, f"nearest x2 upsampling before {key}")
        out, _, _, act = g.conv(out, key, num_feat, num_feat)
        g.expect_act(act, lrelu, key, out)
    out, _, _, act = g.conv(out, "conv_hr", num_feat, num_feat)
    g.expect_act(act, lrelu, "conv_hr", out)
    out, _, num_out_ch, act = g.conv(out, "conv_last", num_feat)
    g.expect_act(act, ("none",), "conv_last", out)
    if out != g.output_blob:
        raise g.error(f"conv_last writes {out!r}, but the graph's output is {g.output_blob!r}")
    return {"num_in_ch": in_ch // (unshuffle * unshuffle), "num_out_ch": num_out_ch, "num_feat": num_feat,
            "num_block": num_block, "num_grow_ch": num_grow_ch, "scale": {1: 4, 2: 2, 4: 1}[unshuffle]}


def _match_rdb(g: _Graph, x: str, key: str, num_feat: int, num_grow_ch: int | None) -> tuple[str, int]:
    """Five convs, each reading the concat of the block input and every earlier conv's output."""
    feats = [x]
    for k in range(1, 6):
        src = x
        if k > 1:
            wanted = tuple(feats)
            src = g.take(feats[-1], ("Concat",), f"Concat of {k} blobs ({key}.conv{k} input)",
                         lambda layer: g.ins(layer) == wanted and layer.get(0, 0) == 0).outputs[0]
        out_ch = num_feat if k == 5 else num_grow_ch
        in_ch = num_feat + (k - 1) * (num_grow_ch or 0)
        out, _, found_out, act = g.conv(src, f"{key}.conv{k}", in_ch, out_ch)
        num_grow_ch = num_grow_ch or found_out
        g.expect_act(act, ("none",) if k == 5 else ("leaky", 0.2), f"{key}.conv{k}", out)
        feats.append(out)
    return g.weighted_sum(feats[-1], x, 0.2, f"dense block residual ({key})"), num_grow_ch


_COMPACT_ACTS = {"prelu": ("prelu",), "lrelu": ("leaky", 0.1), "relu": ("leaky", 0.0)}


def _match_compact(g: _Graph) -> dict[str, Any]:
    """conv -> act -> (conv -> act) x num_conv -> conv -> PixelShuffle(s), + nearest-upsampled input."""
    x = g.input_blob
    blob, index, act_type = x, 0, None
    num_in_ch = num_feat = None
    while True:
        key = f"body.{index}"
        blob, in_ch, out_ch, act = g.conv(blob, key, num_feat if index else None)
        if g.has_consumer(blob, "PixelShuffle") and act == ("none",) and index > 0:
            break
        if index == 0:
            num_in_ch, num_feat = in_ch, out_ch
        elif out_ch != num_feat:
            raise g.error(f"{key} writes {out_ch} channels, expected num_feat {num_feat}")
        found = next((name for name, a in _COMPACT_ACTS.items() if a[0] == act[0] and
                      (len(a) == 1 or abs(float(act[1]) - a[1]) < 1e-6)), None)
        if found is None or act_type not in (None, found):
            raise g.error(f"activation after {key} is {_describe(act)}; expected "
                          f"{act_type or 'PReLU, LeakyReLU(0.1) or ReLU'}")
        act_type = found
        if act[0] == "prelu":
            g.state_dict[f"body.{index + 1}.weight"] = torch.from_numpy(act[1].copy())
        index += 2
    shuffle = g.take(blob, ("PixelShuffle",), "PixelShuffle")
    scale = shuffle.get(0, 1)
    if not isinstance(scale, int) or scale < 1 or shuffle.get(1, 0) != 0 or out_ch % (scale * scale):
        raise g.error(f"expected a PyTorch-order pixel shuffle of {out_ch} channels", shuffle)
    skip = g.interp(x, "nearest", float(scale), f"nearest x{scale} upsampling of the input")
    out = g.weighted_sum(shuffle.outputs[0], skip, 1.0, "sum of pixel shuffle and upsampled input")
    if out != g.output_blob and g.has_consumer(out, "Interp"):
        resize = g.take(out, ("Interp",), "output resize")
        mode = _INTERP_MODES.get(resize.get(0, 0))
        factor = float(resize.get(1, 1.0))
        if mode not in ("bilinear", "bicubic") or float(resize.get(2, 1.0)) != factor or resize.get(3, 0) \
                or resize.get(4, 0) or resize.get(5, 0) or resize.get(6, 0):
            raise g.error("expected a uniform bilinear or bicubic output resize by a factor", resize)
        g.post_resize = (mode, factor)
        out = resize.outputs[0]
    if out != g.output_blob:
        raise g.error(f"the network ends at {out!r}, but the graph's output is {g.output_blob!r}")
    return {"num_in_ch": num_in_ch, "num_out_ch": out_ch // (scale * scale), "num_feat": num_feat,
            "num_conv": index // 2 - 1, "scale": scale, "act_type": act_type}
