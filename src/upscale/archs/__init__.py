"""Architecture families as data: one record per family, built from the modules beside this file.

Each family module provides ``build(**hparams)``, ``detect(state_dict) -> hparams | None`` (on our
canonical key layout), ``size_multiple(hparams)`` and ``receptive_radius(hparams)`` (input pixels of
context a tile needs on each side to reproduce the untiled output exactly). The family owns its keys:
where other programs save it under other names, ``canonicalize(state_dict) -> renamed | None`` and
``explain(state_dict) -> hint`` live beside ``detect``, and so does the matcher of its ncnn graph
(``NcnnMatch``). No family knows about files; ``upscale.loading`` and ``upscale.ncnn`` read them.

Importing this package is light: the family modules (and torch with them) load when ``FAMILIES``,
``BY_NAME``, ``get_family`` or ``build_module`` is first used; ``catalog`` (names and default
hyperparameters) needs no torch, which is what the registry reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class NcnnMatch:
    """How ``upscale.ncnn`` recognises a family's graph: ``marker``, a layer type only its graphs have,
    selects it; ``match(graph) -> hparams`` takes every layer through the graph matcher (storing the
    weights under canonical keys) or raises the matcher's ``ConversionError``."""

    marker: str
    title: str          # the network's usual name, for messages ("RRDBNet")
    match: Callable[[Any], dict]


Renamer = Callable[[Mapping[str, Any]], "dict | None"]


@dataclass(frozen=True)
class ArchFamily:
    name: str
    defaults: dict[str, Any]
    build: Callable[..., nn.Module]
    detect: Callable[[dict], dict | None]
    size_multiple: Callable[[dict], int]
    receptive_radius: Callable[[dict], int]
    # containers of identical repeated blocks: torch.compile compiles one block's graph and reuses it
    # for the others (regional compilation) instead of tracing the whole deep network; empty = whole
    compile_regions: tuple[str, ...] = ()
    canonicalize: Renamer | None = None             # a legacy layout -> canonical keys, else None
    explain: Callable[[Mapping[str, Any]], str] | None = None  # hint when keys almost match
    ncnn: NcnnMatch | None = None
    # the inference form of a network trained in another (re-parameterised) form:
    # (state dict, hparams) -> (state dict, hparams) of the same function; None = already plain
    deploy: Callable[[Mapping[str, Any], dict], "tuple[dict, dict]"] | None = None
    # the layout the authors' own code (and tools that detect it, e.g. spandrel/chaiNNer) expect, where
    # ours differs: (state dict, hparams) -> (state dict, hparams); None = our keys are theirs
    authors_layout: Callable[[Mapping[str, Any], dict], "tuple[dict, dict]"] | None = None
    # hparams a file with our metadata means when its metadata does not name them (written before they
    # existed, when the network always behaved this way); files without our metadata get ``defaults``
    metadata_defaults: dict[str, Any] = field(default_factory=dict)
    # nodes of the OpenVINO graph (a regex over their names) kept in fp32 when OpenVINO infers in bf16:
    # where the family's own forward keeps fp32 under autocast; "" = none
    openvino_fp32: str = ""


@functools.lru_cache(maxsize=1)
def families() -> tuple[ArchFamily, ...]:
    """Every family, its module imported (torch with it) on the first call."""
    from . import compact, rrdbnet, span, srcnn, srresnet, tiny

    return (
        ArchFamily(rrdbnet.NAME, rrdbnet.DEFAULTS, rrdbnet.build, rrdbnet.detect, rrdbnet.size_multiple,
                   rrdbnet.receptive_radius, compile_regions=("body",), canonicalize=rrdbnet.canonicalize,
                   explain=rrdbnet.explain, ncnn=NcnnMatch(rrdbnet.NCNN_MARKER, rrdbnet.TITLE, rrdbnet.match_ncnn),
                   openvino_fp32=rrdbnet.OPENVINO_FP32),
        ArchFamily(compact.NAME, compact.DEFAULTS, compact.build, compact.detect, compact.size_multiple,
                   compact.receptive_radius,
                   ncnn=NcnnMatch(compact.NCNN_MARKER, compact.TITLE, compact.match_ncnn)),
        ArchFamily(srresnet.NAME, srresnet.DEFAULTS, srresnet.build, srresnet.detect, srresnet.size_multiple,
                   srresnet.receptive_radius, compile_regions=("body",)),
        ArchFamily(srresnet.MS_NAME, srresnet.MS_DEFAULTS, srresnet.build_ms, srresnet.detect_ms,
                   srresnet.size_multiple, srresnet.receptive_radius_ms, compile_regions=("body",),
                   canonicalize=srresnet.canonicalize_ms),
        ArchFamily(span.NAME, span.DEFAULTS, span.build, span.detect, span.size_multiple, span.receptive_radius,
                   canonicalize=span.canonicalize, explain=span.explain, deploy=span.collapse,
                   authors_layout=span.authors_layout, metadata_defaults=span.METADATA_DEFAULTS),
        ArchFamily(srcnn.NAME, srcnn.DEFAULTS, srcnn.build, srcnn.detect, srcnn.size_multiple, srcnn.receptive_radius),
        ArchFamily(tiny.NAME, tiny.DEFAULTS, tiny.build, tiny.detect, tiny.size_multiple, tiny.receptive_radius),
    )


@functools.lru_cache(maxsize=1)
def by_name() -> dict[str, ArchFamily]:
    return {f.name: f for f in families()}


def __getattr__(name: str) -> Any:
    # FAMILIES and BY_NAME as module attributes, built on first use (PEP 562)
    if name == "FAMILIES":
        return families()
    if name == "BY_NAME":
        return by_name()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_family(name: str) -> ArchFamily:
    try:
        return by_name()[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(by_name())}") from None


def build_module(arch: str, hparams: dict[str, Any]) -> nn.Module:
    family = get_family(arch)
    return family.build(**{**family.defaults, **hparams})
