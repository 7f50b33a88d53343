"""The OpenVINO backend: the network we loaded, converted in memory by ``openvino.convert_model`` and
compiled by the CPU plugin, computing windows for the engine (NHWC float32 in, NHWC float32 out).

Start-up: converting a torch module costs seconds (tracing), compiling a fraction of that. So the
converted graph (shape-free, NHWC at both ends, fp32 weights) is kept as OpenVINO IR in
``machine.cache_dir() / "openvino"`` under a key of what it was made from (architecture,
hyperparameters, a digest of the weights, the openvino version); the next process reads it instead
of converting. Each window shape gets its own static compiled model (a small dict per instance),
and OpenVINO's own model cache (``CACHE_DIR``, same folder) lets a later process import those
compiled blobs instead of compiling again (an empty ``<graph key>.<shape>.compiled`` marker beside them
tells the engine's planner which shapes start warm). Graphs, markers and blobs unused for
``STALE_AFTER_S`` are removed whenever a new graph is stored (``prune_stale``).

Measured on an AMD EPYC (avx512_bf16, no AMX), 2 threads,
OpenVINO 2026.4, `upscale IMG -m default-x4` on 256x256 (docs/perf/openvino_start.json): process 1
9.8 s, process 2 3.8 s (torch: 3.7 s); with CACHE_DIR's blobs alone (no IR) 8.5 s, since converting
dominates (~5-7 s for default-x4, 25-100 s for x4plus on a loaded machine).

Precision: ``INFERENCE_PRECISION_HINT`` bf16 when the run's precision is bf16 and the CPU has native
bf16 (``machine.cpu_bf16_flags()``), f32 otherwise (OpenVINO would pick bf16 by itself on such CPUs).
Under bf16 the plugin rounds every node's output to bf16, autocast's fp32 islands included, so the
stored IR marks the nodes the family names (``ArchFamily.openvino_fp32``) with the runtime attribute
the plugin reads as "keep this node's precision" (``precise``, the one ``ov::disable_fp16_compression``
sets; Python cannot create it, so it is written into the IR's XML). Without them RRDBNet in bf16 fell
to 47.6 dB vs fp32 on a Set14 crop (rule: >= 50 dB); docs/perf.md, "OpenVINO bf16 keeps RRDBNet's fp32
islands".
Threads: ``INFERENCE_NUM_THREADS``; ``PERFORMANCE_HINT`` LATENCY (one window at a time, all threads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors
from ..archs import get_family
from ..atomic import sweep_temps, write_bytes
from ..machine import cache_dir, cpu_bf16_flags
from ..model import Model, model_digest
from . import OPENVINO_EXTRA

log = logging.getLogger(__name__)

GRAPH_FORMAT = "nhwc-2"      # bump when what is stored as IR changes (layout, conversion options, fp32 marks)
EXAMPLE_PX = 64              # side of the example window the conversion traces with
STALE_AFTER_S = 30 * 86400   # cached graphs and compiled blobs unused this long are removed (``prune_stale``)
WAIT_SLICE_MS = 100         # an inference is waited for in slices this long, so that Ctrl-C stops it at once


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise errors.UsageError(f"backend openvino needs the openvino package ({exc}); install it with "
                                f"{OPENVINO_EXTRA}, or use backend torch", params=("backend",)) from None
    return openvino


def graph_key(model: Model, openvino_version: str) -> str:
    """sha256 of what the converted graph depends on: arch, hyperparameters, weights, versions."""
    return model_digest(model, {"openvino": openvino_version, "format": GRAPH_FORMAT})


def openvino_folder() -> Path:
    return cache_dir() / "openvino"


class OpenVinoWindows:
    """``model`` prepared for OpenVINO's CPU plugin; call it with an (N, H, W, C) float32 batch of
    windows to get (N, H*s, W*s, C_out) float32 (not clamped, like ``Model.module``).

    ``precision``: the run's resolved precision name ("fp32" or "bf16"); ``threads``: CPU threads.
    Conversion, compilation and inference failures raise ``errors.BackendError``.
    """

    def __init__(self, model: Model, *, precision: str, threads: int) -> None:
        self._ov = _import_openvino()
        self.model = model
        self.label = model.name or model.source or model.arch
        self.hint = "bf16" if precision == "bf16" and cpu_bf16_flags() else "f32"
        self.folder = openvino_folder()
        self.config = {"INFERENCE_PRECISION_HINT": self.hint, "INFERENCE_NUM_THREADS": int(threads),
                       "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(self.folder)}
        self._core = self._ov.Core()
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._requests: dict[tuple[int, ...], Any] = {}      # one infer request per compiled shape
        self.graph_from_cache = False
        self._graph = self._load_graph()

    def is_warm(self, shape: tuple[int, ...]) -> bool:
        """Whether a batch of ``shape`` (N, H, W, C) starts without a full compile: compiled in this
        instance, or compiled by an earlier one with this graph (its blob is then in OpenVINO's model
        cache, which this process imports instead of compiling; ``_compile`` leaves a marker)."""
        return tuple(shape) in self._compiled or self._marker(shape).is_file()

    def _marker(self, shape: tuple[int, ...]) -> Path:
        return self.folder / f"{self._key}.{'x'.join(str(int(n)) for n in shape)}.compiled"

    @property
    def compiled_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The (N, H, W, C) batch shapes compiled so far, one compiled model each."""
        return tuple(self._compiled)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        compiled = self._compiled.get(batch.shape)
        if compiled is None:
            compiled = self._compile(batch.shape)
        request = self._requests.get(batch.shape)
        if request is None:
            request = self._requests[batch.shape] = compiled.create_infer_request()
        data = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            request.start_async({0: data}, share_inputs=True)
            while not request.wait_for(WAIT_SLICE_MS):   # Python runs between slices: Ctrl-C is heard
                pass
        except RuntimeError as exc:
            raise errors.BackendError(f"{self.label}: OpenVINO inference failed on a {_shape(batch.shape)} "
                                      f"batch ({_first_line(exc)})", params=("backend",)) from exc
        except BaseException:       # KeyboardInterrupt: stop OpenVINO's work now rather than wait for it
            request.cancel()
            try:        # the cancel takes effect here, within ~0.1 s; left to the request's destructor,
                request.wait()      # it waited for the whole inference (tens of seconds for x4plus)
            except RuntimeError:    # "Infer Request was canceled"
                pass
            raise
        return request.get_output_tensor(0).data.copy()

    # -- the graph: cached IR, or a fresh conversion --
    def _load_graph(self) -> Any:
        key = self._key = graph_key(self.model, self._ov.__version__)
        xml, weights = self.folder / f"{key}.xml", self.folder / f"{key}.bin"
        if xml.is_file() and weights.is_file() and not _sums_path(xml).is_file():
            log.debug("openvino: %s has no checksums (an older cache); converting again", xml)
        elif xml.is_file() and weights.is_file():
            try:
                if not _sums_match(xml, weights):
                    raise RuntimeError("its files do not match the checksums written with them")
                graph = self._core.read_model(str(xml), str(weights))
            except RuntimeError as exc:
                log.warning("openvino: ignoring unreadable cached graph %s (%s); converting again",
                            xml, _first_line(exc))
            else:
                self.graph_from_cache = True
                _touch(xml)                # its last use, for prune_stale
                log.debug("openvino: read the converted graph of %s from %s", self.label, xml)
                return graph
        return self._store(self._convert(), xml, weights)

    def _convert(self) -> Any:
        import torch

        ov = self._ov
        side = -(-EXAMPLE_PX // self.model.size_multiple) * self.model.size_multiple
        example = torch.zeros((1, self.model.in_channels, side, side), dtype=torch.float32)
        t0 = time.perf_counter()
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # the converter traces with torch.jit.trace, which torch now calls deprecated
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
                graph = ov.convert_model(self.model.module, example_input=example)
            graph = _nhwc(ov, graph)
        except Exception as exc:   # the converter raises many types (op not supported, tracing errors)
            raise errors.BackendError(f"{self.label}: OpenVINO cannot convert this network "
                                      f"({type(exc).__name__}: {_first_line(exc)}); use backend torch",
                                      params=("backend",)) from exc
        log.info("openvino: converted %s in %.1f s", self.label, time.perf_counter() - t0)
        return graph

    def _store(self, graph: Any, xml: Path, weights: Path) -> Any:
        """``graph`` as IR with the family's fp32 nodes marked (``keep_fp32``), saved at ``xml`` +
        ``weights``, each put in place atomically (the weights first: a reader looks for the .xml),
        and read back: this process compiles what the next one reads (and OpenVINO's compiled-model
        cache serves the next one). A failure to save only costs the next process a conversion: this
        one goes on with the marked graph from memory."""
        pattern = get_family(self.model.arch).openvino_fp32
        try:
            text, blob, marked = marked_ir(self._ov, graph, pattern)
        except (OSError, RuntimeError, ET.ParseError) as exc:
            raise errors.BackendError(f"{self.label}: OpenVINO cannot serialise the converted network "
                                      f"({_first_line(exc)}); use backend torch", params=("backend",)) from exc
        if pattern and not marked:
            log.warning("openvino: no node of %s matched its family's fp32 list (did OpenVINO rename "
                        "them?); in bf16 all of it runs in bf16", self.label)
        log.debug("openvino: %d nodes of %s kept in fp32", marked, self.label)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            sweep_temps(self.folder)          # temps left by writers that died
            write_bytes(weights, blob, durable=False)
            write_bytes(_sums_path(xml), json.dumps(_sums(text.encode(), blob)).encode(), durable=False)
            write_bytes(xml, text.encode(), durable=False)     # last: a reader that finds it finds the rest
            prune_stale(self.folder)       # a conversion is rare and slow: the time to tidy up
        except OSError as exc:
            log.warning("openvino: cannot cache the converted graph in %s (%s); the next run converts again",
                        self.folder, _first_line(exc))
            return read_ir(self._ov, self._core, text, blob)
        return self._core.read_model(str(xml), str(weights))

    # -- one compiled model per window shape --
    def _compile(self, shape: tuple[int, ...]) -> Any:
        t0 = time.perf_counter()
        try:
            graph = self._graph.clone()
            graph.reshape(list(shape))
            try:
                compiled = self._core.compile_model(graph, "CPU", self.config)
            except RuntimeError as exc:
                if "CACHE_DIR" not in self.config:
                    raise
                # OpenVINO fails where its model cache cannot be written (a read-only or blocked cache
                # folder): compile without it, as every later shape of this instance will
                log.warning("openvino: compiling without its model cache in %s (%s)", self.folder,
                            _first_line(exc))
                self.config = {k: v for k, v in self.config.items() if k != "CACHE_DIR"}
                compiled = self._core.compile_model(graph, "CPU", self.config)
        except RuntimeError as exc:
            raise errors.BackendError(f"{self.label}: OpenVINO cannot compile the network for "
                                      f"{_shape(shape)} windows ({_first_line(exc)}); use backend torch",
                                      params=("backend",)) from exc
        self._compiled[tuple(shape)] = compiled
        marker = self._marker(shape)
        try:
            if not marker.is_file():
                marker.touch()             # the next process: this shape's blob is in CACHE_DIR
        except OSError:
            pass                           # only costs a later estimate a compile it will not pay
        log.debug("openvino: compiled %s for %s windows (%s) in %.2f s", self.label, _shape(shape), self.hint,
                  time.perf_counter() - t0)
        return compiled


def prune_stale(folder: Path, now: float | None = None) -> list[Path]:
    """Remove from ``folder`` what no run used for ``STALE_AFTER_S``, and return it: converted graphs
    (``<key>.xml`` + ``.bin``; each read touches the .xml) with their shape markers, e.g. those of an
    older openvino or ``GRAPH_FORMAT``, and OpenVINO's compiled blobs not written since (OpenVINO
    never touches a blob it imports, so one still in use may go too: it is compiled again, once)."""
    cutoff = (time.time() if now is None else now) - STALE_AFTER_S
    removed = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".xml":
            stale = _mtime(path) < cutoff
        elif path.suffix in (".bin", ".compiled", ".sha256"):   # goes with its graph, or alone if it is gone
            graph = folder / f"{path.name.split('.')[0]}.xml"
            stale = _mtime(graph) < cutoff if graph.exists() else _mtime(path) < cutoff
        else:
            stale = path.suffix == ".blob" and _mtime(path) < cutoff
        if stale:
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    if removed:
        log.info("openvino: removed %d cache files unused for %d days from %s", len(removed),
                 STALE_AFTER_S // 86400, folder)
    return removed


def _sums_path(xml: Path) -> Path:
    return xml.with_suffix(".sha256")


def _sums(xml_bytes: bytes, blob: bytes) -> dict[str, str]:
    return {"xml": hashlib.sha256(xml_bytes).hexdigest(), "bin": hashlib.sha256(blob).hexdigest()}


def _sums_match(xml: Path, weights: Path) -> bool:
    """Whether a cached graph's files are the bytes written (their SHA-256 were stored beside them):
    a file changed or damaged since would otherwise compute wrong pixels without a word."""
    try:
        written = json.loads(_sums_path(xml).read_text(encoding="utf-8"))
        return written == _sums(xml.read_bytes(), weights.read_bytes())
    except (OSError, ValueError):
        return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")       # gone (another process pruned it) or unreadable: nothing to do


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass                      # a read-only cache is still a cache: only pruning is affected


def marked_ir(ov: Any, graph: Any, pattern: str) -> tuple[str, bytes, int]:
    """``graph`` serialised as IR (fp32 weights) with the layers matching ``pattern`` marked by
    ``keep_fp32``: (the XML, the weights, how many layers were marked)."""
    with tempfile.TemporaryDirectory(prefix="upscale-ov-") as tmp:
        staged = Path(tmp) / "graph.xml"
        ov.save_model(graph, str(staged), compress_to_fp16=False)
        text, marked = keep_fp32(staged.read_text(), pattern)
        return text, staged.with_suffix(".bin").read_bytes(), marked


def read_ir(ov: Any, core: Any, text: str, blob: bytes) -> Any:
    """The graph of IR held in memory (``marked_ir``'s XML and weights)."""
    return core.read_model(text.encode(), ov.Tensor(np.frombuffer(blob, dtype=np.uint8).copy()))


def keep_fp32(ir_xml: str, pattern: str) -> tuple[str, int]:
    """The IR ``ir_xml`` with every layer whose name matches ``pattern`` marked to keep fp32 under a
    bf16 (or f16) inference precision, and how many were marked ("" marks none). The mark is the
    runtime attribute ``precise`` version 0, which the IR reader turns into the one
    ``ov::disable_fp16_compression`` sets."""
    if not pattern:
        return ir_xml, 0
    root = ET.fromstring(ir_xml)
    wanted = re.compile(pattern)
    marked = 0
    for layer in root.iter("layer"):
        if wanted.search(layer.get("name", "")):
            info = layer.find("rt_info")
            if info is None:
                info = ET.SubElement(layer, "rt_info")
            ET.SubElement(info, "attribute", name="precise", version="0")
            marked += 1
    return ET.tostring(root, encoding="unicode"), marked


def _nhwc(ov: Any, graph: Any) -> Any:
    """``graph`` taking and giving NHWC tensors (the engine's window batches are NHWC in memory; the
    transposes then run inside OpenVINO)."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(graph)
    ppp.input().tensor().set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.output().tensor().set_layout(ov.Layout("NHWC"))
    ppp.output().model().set_layout(ov.Layout("NCHW"))
    return ppp.build()


def _shape(shape: tuple[int, ...]) -> str:
    n, h, w = shape[:3]
    return f"{n}x{h}x{w}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
