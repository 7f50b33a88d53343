"""The text ``.param`` of an ncnn model -> ``Layer`` records, checked for the header counts and for
blobs read before they are written (the format is described in ``upscale.ncnn``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ..errors import ConversionError

MAGIC = 7767517
ARRAY_KEY_BASE = -23300

Value = Union[int, float, tuple]


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
