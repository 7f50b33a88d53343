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

The graph is matched by data flow (which blob feeds which layer), not by layer order. This module is
the generic machinery (parsing, weight storage, the ``_Graph`` matcher's primitives); each family that
ncnn super-resolution models are made of owns its own matcher beside its network (``archs.NcnnMatch``:
RRDBNet for ESRGAN / Real-ESRGAN, SRVGGNetCompact for the compact "animevideov3" nets). Every layer
must be accounted for, except what a family's matcher drops on purpose and records in
``NcnnModel.post_resize`` (compact's trailing bicubic downscale of the x2/x3 animevideov3 files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConversionError
from .graph import MATCHABLE, Graph, titles
from .param import MAGIC, Layer, parse_param
from .weights import TAG_FP16, TAG_FP32, TAG_INT8, read_bytes, read_weights

__all__ = ["MAGIC", "TAG_FP16", "TAG_FP32", "TAG_INT8", "Layer", "NcnnModel", "inspect_ncnn", "parse_param",
           "read_ncnn"]

log = logging.getLogger(__name__)


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
    naming the file and what did not match when the pair is not the graph of a family we know.
    """
    model = inspect_ncnn(param_path, bin_path)
    return model.arch, model.hparams, model.state_dict


def inspect_ncnn(param_path: str | Path, bin_path: str | Path | None = None) -> NcnnModel:
    """Parse both files, match the graph to an architecture and collect its weights."""
    param_path = Path(param_path)
    bin_path = param_path.with_suffix(".bin") if bin_path is None else Path(bin_path)
    layers = parse_param(read_bytes(param_path).decode("utf-8", errors="replace"), param_path)
    weights = read_weights(layers, read_bytes(bin_path), param_path, bin_path)
    graph = Graph(layers, weights, param_path)
    types = {layer.type for layer in layers}
    family = next((f for f in MATCHABLE if f.ncnn.marker in types), None)
    if family is None:
        markers = " nor ".join(f.ncnn.marker for f in MATCHABLE)
        raise ConversionError(f"not {titles()} graph (it has neither {markers} layers)", path=param_path)
    arch, hparams = family.name, family.ncnn.match(graph)
    graph.check_all_used()
    if graph.post_resize is not None:
        mode, factor = graph.post_resize
        log.warning("%s: dropped the trailing %s resize x%g; the converted model upscales x%d",
                    param_path, mode, factor, hparams["scale"])
    return NcnnModel(arch, hparams, graph.state_dict, graph.input_blob, graph.output_blob, graph.post_resize)
