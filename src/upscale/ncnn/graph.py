"""Data-flow matching of an ncnn graph: the primitives a family's matcher (``archs.NcnnMatch``) uses to
take layers by which blob feeds them and to store their weights under canonical keys."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .. import archs
from ..errors import ConversionError
from .param import Layer

_INTERP_MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}

MATCHABLE = tuple(f for f in archs.FAMILIES if f.ncnn is not None)


def titles() -> str:
    """"an RRDBNet or SRVGGNetCompact": the families whose graphs we can match, for messages."""
    return "an " + " or ".join(f.ncnn.title for f in MATCHABLE)


Activation = Union[tuple[str], tuple[str, float], tuple[str, np.ndarray]]


class Graph:
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

    INTERP_MODES = _INTERP_MODES

    def describe(self, act: Activation) -> str:
        return _describe(act)

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
