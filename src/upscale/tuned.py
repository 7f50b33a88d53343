"""The tuning cache: one small JSON file, ``machine.cache_dir() / "tune.json"``, holding what
``upscale tune`` measured, one entry per key.

A key is everything that makes a measurement valid here: the CPU's model and flags, torch's thread
count, the torch and openvino versions, the version of our own winograd kernels, the device, the
precision, and the network (arch + hparams as canonical JSON). An entry is used only when every part
of its key equals the running one; a stale entry is never used (a new tune of that key replaces it,
entries of other keys are kept).

Two kinds of entry: a plan (precision "fp32", "bf16" or "fp16": window, batch, compile, backend and
the seconds per window side measured), and, under precision "auto", which precision ``--precision
auto`` runs on this CPU (``{"precision": "fp32" | "bf16", "estimate_s": {precision: seconds}}``):
written where the CPU computes bf16 natively and both were measured, since native bf16 is not always
the faster (OpenVINO's x4plus ran 1.6x faster in f32 than in bf16 on a Xeon with avx512_bf16 and no
AMX, where on an AMX Xeon bf16 GEMM runs ~5x fp32). The machine's own probe (one convolution, for
models nobody tuned) is such an entry too, with arch "conv3x3-probe". Training's choice has the same
form under "train-auto" (its hparams part also holds the batch and patch size it was measured at).

A file that is not valid JSON of the expected shape is ignored with one warning (per content of the
file) and replaced by the next tune. Nothing here imports torch at module level or measures anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from . import atomic, errors, machine

log = logging.getLogger(__name__)

CACHE_NAME = "tune.json"
FORMAT = 1
AUTO = "auto"                          # the precision part of the key of an auto-precision choice
TRAIN_AUTO = "train-auto"              # the same for training (``train.runtime.settle_auto_precision``)
AUTO_CANDIDATES = ("bf16", "fp32")     # what --precision auto chooses between on a CPU with native bf16
BACKENDS = ("torch", "openvino", "winograd")   # ``upscale.backends``; torch first, the others measured beside it
# the versions of the kernels we write ourselves, part of every key: raised with each change that moves
# their speed, so that older timings are not trusted (winograd 1: torch.compile'd transforms, 2: C
# transforms around torch's GEMMs, 3: one C call per convolution, SRVGGNetCompact too)
KERNEL_VERSIONS = {"winograd": 3}
PROBE_ARCH = "conv3x3-probe"           # the machine's precision probe (engine.precision): its key's arch
PROBE_SHAPE = {"channels": 64, "side": 128}
# the machine's backend probe (``backends.probe``: torch or winograd for fp32 models nobody tuned): its
# key's arch; its entry is {"backend": ..., "estimate_s": {backend: seconds}} under precision "fp32"
BACKEND_PROBE_ARCH = "conv3x3-backend-probe"

# keys the fallback note was given for in this process (one info line per key)
_noted: set[str] = set()
# (path, inode, mtime_ns, size) -> entries, so the engine's per-image lookups do not re-read the file
_memo: dict[tuple[str, int, int, int], list[dict[str, Any]]] = {}


def cache_path() -> Path:
    return machine.cache_dir() / CACHE_NAME


def canonical(value: Any) -> str:
    """``value`` as canonical JSON (sorted keys, no spaces): equal values, equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def device_name(device: Any) -> str:
    """"cpu", or "cuda:<GPU name>" (a measurement on one GPU says nothing about another)."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(device)}"
    return kind


@functools.lru_cache(maxsize=1)
def _machine_part() -> tuple[str, str, str, str, int]:
    """(CPU model, digest of its flags, torch version, openvino version or "none", winograd kernels'
    version): fixed per process. torch's version as installed (its metadata: what ``torch.__version__``
    says, read without importing torch, so that ``upscale tune --show`` answers at once)."""
    cpu = machine.cpu_info()
    flags = hashlib.sha256(" ".join(sorted(cpu.flags)).encode()).hexdigest()[:16]
    torch_version = machine.package_version("torch")
    if torch_version is None:           # torch not installed as a distribution (a source tree on the path)
        import torch

        torch_version = torch.__version__
    return (cpu.model, flags, torch_version, machine.package_version("openvino") or "none",
            KERNEL_VERSIONS["winograd"])


def tuning_key(arch: str, hparams: dict[str, Any] | str, precision: str, device: Any,
               threads: int) -> dict[str, Any]:
    """The key of a measurement of network ``arch``/``hparams`` at ``precision`` ("fp32", "bf16",
    "fp16") on ``device`` with ``threads`` torch threads, on this machine with these versions."""
    cpu, flags, torch_version, openvino_version, winograd_version = _machine_part()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "threads": int(threads),
        "torch": torch_version,
        "openvino": openvino_version,
        "winograd": winograd_version,
        "device": device_name(device),
        "precision": precision,
        "arch": arch,
        "hparams": hparams if isinstance(hparams, str) else canonical(hparams),
    }


def describe(key: dict[str, Any]) -> str:
    """A short human name for a key: "compact 48x12 x4 bf16 2 threads"."""
    try:
        hp = json.loads(key["hparams"])
    except (TypeError, ValueError, KeyError):
        hp = {}
    depth = hp.get("num_conv", hp.get("num_block"))
    shape = f" {hp['num_feat']}x{depth}" if "num_feat" in hp and depth is not None else ""
    scale = f" x{hp['scale']}" if "scale" in hp else ""
    device = "" if key.get("device") == "cpu" else f" on {key.get('device')}"
    return f"{key.get('arch')}{shape}{scale} {key.get('precision')} {key.get('threads')} threads{device}"


def _valid_entry(entry: Any) -> bool:
    if not (isinstance(entry, dict) and isinstance(entry.get("key"), dict) and isinstance(entry.get("result"), dict)):
        return False
    result = entry["result"]
    if entry["key"].get("precision") in (AUTO, TRAIN_AUTO):
        return _valid_choice(result)
    if entry["key"].get("arch") == BACKEND_PROBE_ARCH:
        return _valid_choice(result, "backend", BACKENDS)
    window = result.get("window_px")
    numbers_ok = all(isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool)
                     for k in ("s_per_mp", "batch"))
    compile_ok = result.get("compile") is None or (
        isinstance(result["compile"], dict)
        and all(isinstance(result["compile"].get(k), (int, float)) for k in ("gain", "compile_s")))
    backend_ok = (result.get("backend") in (None, *BACKENDS)
                  and result.get("window_backend", "torch") in BACKENDS)
    tables_ok = all(_valid_table(result.get(k)) for k in ("window_seconds", "window_setup_s")) and _valid_tables(
        result.get("tables"))
    return (isinstance(window, int) and not isinstance(window, bool) and window > 0 and numbers_ok
            and compile_ok and backend_ok and tables_ok and isinstance(entry.get("when", ""), str))


def _valid_choice(result: dict[str, Any], field: str = "precision",
                  candidates: tuple[str, ...] = AUTO_CANDIDATES) -> bool:
    """A choice entry ("auto" precision, or the backend probe's): the ``field`` chosen, among the
    ``candidates`` whose estimates were measured."""
    estimates = result.get("estimate_s")
    return (isinstance(estimates, dict) and result.get(field) in estimates and all(
        k in candidates and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        for k, v in estimates.items()))


def _valid_tables(tables: Any) -> bool:
    """None (entries written before), or {backend: {"window_seconds": table, "window_setup_s": table}}."""
    if tables is None:
        return True
    return isinstance(tables, dict) and all(
        name in BACKENDS and isinstance(t, dict) and isinstance(t.get("window_seconds"), dict)
        and all(_valid_table(t.get(k)) for k in ("window_seconds", "window_setup_s")) for name, t in tables.items())


def _valid_table(table: Any) -> bool:
    """None (entries written before the tables existed), or {window side as text: seconds >= 0}."""
    if table is None:
        return True
    return isinstance(table, dict) and all(
        isinstance(k, str) and k.isdigit() and int(k) > 0 and isinstance(v, (int, float))
        and not isinstance(v, bool) and v >= 0 for k, v in table.items())


def _parse(text: str) -> list[dict[str, Any]] | None:
    """The entries of a cache file's text, or None when it is not a cache of this format."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("entries"), list)):
        return None
    entries = data["entries"]
    return entries if all(_valid_entry(e) for e in entries) else None


def load_entries() -> list[dict[str, Any]]:
    """Every entry of the cache file; [] when there is none. A corrupt file is ignored with one
    warning (once per content of the file in this process), never an error."""
    path = cache_path()
    try:
        st = path.stat()
    except OSError:
        return []
    memo_key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    if memo_key in _memo:
        return _memo[memo_key]
    try:
        entries = _parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        entries = None
    if entries is None:
        log.warning("tuning cache %s is unreadable or corrupt; ignoring it (the next `upscale tune` "
                    "rewrites it)", path)
        entries = []
    _memo.clear()
    _memo[memo_key] = entries
    return entries


def lookup(key: dict[str, Any]) -> dict[str, Any] | None:
    """The result stored for exactly ``key``, or None."""
    for entry in load_entries():
        if entry["key"] == key:
            return entry["result"]
    return None


def lookup_or_note(key: dict[str, Any], model_label: str) -> dict[str, Any] | None:
    """``lookup(key)``; when there is nothing, say once per key in this process (info level) that the
    defaults are used and how to measure."""
    result = lookup(key)
    if result is None:
        tag = canonical(key)
        if tag not in _noted:
            _noted.add(tag)
            label = model_label or "MODEL"
            log.info("no tuning for %s on this CPU: using defaults; run `upscale tune -m %s`",
                     describe(key), label)
    return result


def store(key: dict[str, Any], result: dict[str, Any], *, label: str, when: str | None = None) -> Path:
    """Put ``result`` under ``key`` (replacing that key's entry, keeping the others; a corrupt file
    is replaced), dated ``when`` (default: now); raises ``errors.TuneCacheError`` when the file
    cannot be written."""
    entry = {"key": key, "label": label, "when": when or time.strftime("%Y-%m-%dT%H:%M:%S%z"), "result": result}
    if not _valid_entry(entry):    # it would make the whole file read as corrupt
        raise ValueError(f"not a valid tuning result for {describe(key)}: {result!r}")
    path = cache_path()
    try:
        os.makedirs(path.parent, exist_ok=True)
        with atomic.updating(path):     # another process's entry, stored meanwhile, is kept
            entries = [e for e in load_entries() if e["key"] != key] + [entry]
            text = json.dumps({"format": FORMAT, "entries": entries}, indent=1, sort_keys=True) + "\n"
            atomic.sweep_temps_for(path)
            atomic.write_text(path, text, durable=False)   # a lost cache costs only a re-tune
    except OSError as err:
        raise errors.TuneCacheError(f"cannot write the tuning cache: {atomic.os_reason(err, path.parent)}",
                                    path=path) from err
    _noted.discard(canonical(key))
    return path


def preferred_backend(model: Any, precision: Any, threads: int | None) -> str | None:
    """The backend ``upscale tune`` measured fastest for ``model`` (a ``Model``) at ``precision`` (a
    resolved name, "fp32"/"bf16", or a torch dtype) with ``threads`` (None: torch's current count) on
    this CPU: "torch", "openvino" or "winograd"; None when the model was not tuned here (the caller uses
    the backend probe or its default; said once per process)."""
    import torch

    from .device import NAMES, resolve_precision

    threads = threads or torch.get_num_threads()
    if isinstance(precision, torch.dtype):
        name = NAMES[precision]
    elif precision == AUTO:      # as the engine resolves it, as far as the cache knows (nothing probed here)
        rule = NAMES[resolve_precision(AUTO, torch.device("cpu"), model)]
        name = auto_precision(model, rule, "cpu", threads)[0] or rule
    else:
        name = precision
    key = tuning_key(model.arch, model.hparams, name, "cpu", threads)
    result = lookup_or_note(key, model.name or model.source)
    return (result.get("backend") or "torch") if result else None


def remember_faster(key: dict[str, Any], seconds: dict[str, float], *, label: str, keep: bool = True) -> str:
    """The faster precision of ``seconds`` ({"bf16": s, "fp32": s}; bf16 on a tie), stored under ``key``
    as an auto choice (unless ``keep`` is False: measured on a busy machine, say). A cache that cannot
    be written costs a warning: the next process measures again."""
    chosen = min(AUTO_CANDIDATES, key=lambda name: seconds[name])
    if keep:
        store_choice(key, "precision", chosen, seconds, label=label)
    return chosen


def store_choice(key: dict[str, Any], field: str, chosen: str, seconds: dict[str, float], *, label: str,
                 extra: dict[str, Any] | None = None) -> bool:
    """Store a measured choice under ``key``: {``field``: chosen, "estimate_s": seconds (rounded), **extra}.
    Whether it was stored: a cache that cannot be written costs a warning, and the next process
    measures again."""
    try:
        store(key, {field: chosen, "estimate_s": {k: round(v, 6) for k, v in seconds.items()}, **(extra or {})},
              label=label)
    except errors.TuneCacheError as err:
        log.warning("%s; measured again in the next process", err.message)
        return False
    return True


def probe_key(threads: int) -> dict[str, Any]:
    """The key of the machine's precision probe (``engine.precision``) at ``threads`` threads."""
    return tuning_key(PROBE_ARCH, PROBE_SHAPE, AUTO, "cpu", threads)


def backend_probe_key(threads: int) -> dict[str, Any]:
    """The key of the machine's backend probe (``backends.probe``) at ``threads`` threads."""
    return tuning_key(BACKEND_PROBE_ARCH, PROBE_SHAPE, "fp32", "cpu", threads)


def auto_precision(model: Any, resolved: str, device: Any, threads: int) -> tuple[str | None, str]:
    """What ``--precision auto`` runs ``model`` in, as far as the cache knows: (``resolved``, "rule")
    unless that is bf16 on the CPU; then ``upscale tune``'s choice for this network and thread count
    (source "model"), else the machine probe's (source "probe"), else (None, "") when neither was
    measured (``engine.precision`` probes then)."""
    if resolved != "bf16" or device_name(device) != "cpu":
        return resolved, "rule"
    for key, source in ((tuning_key(model.arch, model.hparams, AUTO, "cpu", threads), "model"),
                        (probe_key(threads), "probe")):
        result = lookup(key)
        if result is not None:
            return result["precision"], source
    return None, ""
