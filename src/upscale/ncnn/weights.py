"""The ``.bin`` of an ncnn model: every weighted layer's arrays in layer order (tagged float32 /
float16 convolution weights; raw float32 biases and PReLU slopes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConversionError
from .graph import titles
from .param import Layer

TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38

# Layer types our families are drawn with and that carry no weights in the .bin.
_WEIGHTLESS = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle",
                         "Reorg", "ReLU"})


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConversionError(f"cannot read: {err.strerror or err}", path=path) from None


class _BinReader:
    """Reads a .bin in layer order. ``sizes``: the file sizes this .param implies with every weight
    buffer in float32 and in float16, to tell a .bin of another network from quantized storage."""

    def __init__(self, data: bytes, path: Path, param_path: Path, sizes: tuple[int, int]) -> None:
        self.data, self.path, self.param_path, self.sizes, self.pos = data, path, param_path, sizes, 0

    def size_mismatch(self) -> str | None:
        """'size mismatch: ...' when the file fits this .param in neither float32 nor float16, else None."""
        if len(self.data) in self.sizes:
            return None
        fp32, fp16 = self.sizes
        return (f"size mismatch: expected {fp32} bytes of fp32 weights (or {fp16} of fp16) for "
                f"{self.param_path.name}, got {len(self.data)}; the .bin does not belong to this .param")

    def _take(self, nbytes: int, what: str) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise ConversionError(f"truncated: {what} needs {nbytes} bytes at offset {self.pos}, the file "
                                  f"has {len(self.data)}" + (f" ({self.size_mismatch()})" if self.size_mismatch()
                                                             else ""), path=self.path)
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
        where = f"{what}: weight storage tag 0x{tag:08X} at offset {self.pos - 4}"
        if tag == TAG_INT8:
            raise ConversionError(f"{where} is int8-quantized; only float32 and float16 are supported",
                                  path=self.path)
        mismatch = self.size_mismatch()
        if mismatch:  # reading another network's weights lands on bytes that are no tag at all
            raise ConversionError(f"{mismatch} ({where} is not a storage tag)", path=self.path)
        raise ConversionError(f"{where} is quantized (table); only float32 and float16 are supported",
                              path=self.path)


def _weight_plan(layers: list[Layer], param_path: Path) -> list[tuple[Layer, int, int]]:
    """(layer, weight count, bias count) of each weighted layer, in .bin order: Convolution (tagged
    weight, raw bias when it has one), PReLU (raw slopes, bias count 0)."""
    plan: list[tuple[Layer, int, int]] = []
    for layer in layers:
        what = f"layer {layer.name} ({layer.type})"
        if layer.type == "Convolution":
            if layer.get(8, 0) != 0:
                raise ConversionError(f"{what} is int8-quantized; only float models convert", path=param_path)
            if len(layer.inputs) != 1:
                raise ConversionError(f"{what} takes its weights from blobs; not supported", path=param_path)
            bias = _int_param(layer, 0, param_path) if layer.get(5, 0) else 0
            plan.append((layer, _int_param(layer, 6, param_path), bias))
        elif layer.type == "PReLU":
            plan.append((layer, _int_param(layer, 0, param_path), 0))
        elif layer.type not in _WEIGHTLESS:
            raise ConversionError(f"line {layer.line}: layer type {layer.type} ({layer.name}) is not part of "
                                  f"{titles()} graph", path=param_path)
    return plan


def _plan_sizes(plan: list[tuple[Layer, int, int]]) -> tuple[int, int]:
    """Bytes of the .bin with every tagged buffer in float32, and in float16 (padded to 4 bytes)."""
    fp32 = fp16 = 0
    for layer, count, bias in plan:
        if layer.type == "Convolution":
            fp32 += 4 + 4 * count + 4 * bias
            fp16 += 4 + (2 * count + 3) // 4 * 4 + 4 * bias
        else:
            fp32 += 4 * count
            fp16 += 4 * count
    return fp32, fp16


def read_weights(layers: list[Layer], data: bytes, param_path: Path, bin_path: Path
                  ) -> dict[str, tuple[np.ndarray, ...]]:
    """Each weighted layer's arrays, read in layer order: Convolution (weight, bias), PReLU (slope,)."""
    plan = _weight_plan(layers, param_path)
    reader = _BinReader(data, bin_path, param_path, _plan_sizes(plan))
    weights: dict[str, tuple[np.ndarray, ...]] = {}
    for layer, count, bias in plan:
        what = f"layer {layer.name} ({layer.type})"
        if layer.type == "Convolution":
            weight = reader.tagged(count, what)
            weights[layer.name] = (weight, reader.raw_fp32(bias, what)) if layer.get(5, 0) else (weight,)
        else:
            weights[layer.name] = (reader.raw_fp32(count, what),)
    if reader.pos != len(data):
        raise ConversionError(f"{len(data) - reader.pos} bytes left over after the last layer's weights: "
                              + (reader.size_mismatch() or f"the .bin does not belong to {param_path.name}"),
                              path=bin_path)
    return weights


def _int_param(layer: Layer, key: int, path: Path) -> int:
    value = layer.get(key, 0)
    if not isinstance(value, int) or value < 0:
        raise ConversionError(f"line {layer.line}: parameter {key} of {layer.name} must be a count, not "
                              f"{value!r}", path=path)
    return value
