"""The model registry: ``models.toml`` (package data) plus an optional user registry, validated into
frozen ``ModelSpec`` records. No network and no torch here; ``upscale.hub`` turns a spec into a file.

Each entry is a ``[[model]]`` table::

    [[model]]
    name = "esrgan"                     # unique across the packaged and the user registry
    description = "..."
    arch = "rrdbnet"                    # a family in upscale.archs
    scale = 4                           # native scale; must agree with hparams.scale when given
    kind = "gan"                        # psnr | gan | other
    twin = "esrgan-psnr"                # optional: the same network trained the other way
    license = "BSD-3-Clause"
    bf16_safe = true                    # optional, default false: set it only after measuring fp32 vs
                                        # bf16 >= 50 dB on every natural test image (benchmarks/bf16_check.py);
                                        # --precision auto runs unflagged models in fp32
    default = false                     # optional: the default model for its scale
    hparams = { num_block = 23 }        # optional: overrides of the family's defaults
    source = { type = "hub", repo_id = "...", filename = "...", revision = "<commit>",
               sha256 = "...", size = 123, sha256_confirmed = true, sha256_note = "..." }

Source types: ``hub`` (a file in a Hugging Face repo, pinned and hashed), ``package`` (a file under
``upscale/weights/`` shipped in the wheel) and ``file`` (a local file; what ``upscale models add``
writes into the user registry).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Union

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from . import errors
from .archs.catalog import DEFAULTS as ARCH_DEFAULTS

KINDS = ("psnr", "gan", "other")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_MODEL_FIELDS = {"name", "description", "arch", "scale", "kind", "twin", "license", "bf16_safe", "default",
                 "hparams", "source"}
_REQUIRED_FIELDS = ("name", "description", "arch", "scale", "kind", "license", "source")
_SOURCE_FIELDS = {
    "hub": ({"type", "repo_id", "filename", "revision", "sha256", "size", "sha256_confirmed", "sha256_note"},
            ("repo_id", "filename", "revision", "sha256")),
    "package": ({"type", "filename", "sha256"}, ("filename",)),
    "file": ({"type", "path", "sha256", "size"}, ("path",)),
}


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    filename: str
    revision: str              # a pinned commit sha (or a branch name, which the note must explain)
    sha256: str
    size: int | None = None    # bytes
    sha256_confirmed: bool = False
    sha256_note: str = ""      # where the hash comes from


@dataclass(frozen=True)
class PackageSource:
    filename: str              # under upscale/weights/
    sha256: str | None = None

    @property
    def path(self) -> Path:
        return Path(str(resources.files("upscale").joinpath("weights", self.filename)))

    @property
    def size(self) -> int | None:
        """Bytes of the shipped file (None when it is missing)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return None


@dataclass(frozen=True)
class FileSource:
    path: Path
    sha256: str | None = None
    size: int | None = None


Source = Union[HubSource, PackageSource, FileSource]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    arch: str
    hparams: Mapping[str, Any]   # read-only; the family's defaults merged with the entry's overrides
    scale: int
    kind: str
    twin: str | None
    license: str
    source: Source
    bf16_safe: bool = False      # measured safe in bf16 (see the module docstring)
    default: bool = False
    origin: str = ""             # the registry file the entry came from, for messages

    @property
    def source_type(self) -> str:
        return {HubSource: "hub", PackageSource: "package", FileSource: "file"}[type(self.source)]

    @property
    def size(self) -> int | None:
        """Size in bytes of the weights file: recorded in the registry, or the shipped file's own."""
        return getattr(self.source, "size", None)


# --- locations ------------------------------------------------------------------------------------
def packaged_registry_path() -> Path:
    return Path(str(resources.files("upscale").joinpath("models.toml")))


def user_registry_path() -> Path:
    """``$UPSCALE_CONFIG_DIR/models.toml``, else ``$XDG_CONFIG_HOME/upscale`` or ``~/.config/upscale``."""
    base = os.environ.get("UPSCALE_CONFIG_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config"), "upscale")
    return Path(base) / "models.toml"


# --- parsing and validation -----------------------------------------------------------------------
def parse_registry(text: str, origin: str) -> list[ModelSpec]:
    """Validate one registry file's text into specs (twins are checked by ``build_registry``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise errors.RegistryError(f"not valid TOML: {err}", path=origin) from None
    unknown = set(data) - {"model"}
    if unknown:
        raise errors.RegistryError(f"unknown top-level key(s) {', '.join(sorted(unknown))}; entries are "
                                   "[[model]] tables", path=origin)
    entries = data.get("model", [])
    if not isinstance(entries, list):
        raise errors.RegistryError("'model' must be an array of tables ([[model]])", path=origin)
    return [_parse_entry(entry, i, origin) for i, entry in enumerate(entries)]


def _parse_entry(entry: Any, index: int, origin: str) -> ModelSpec:
    label = f"entry #{index + 1}"
    if not isinstance(entry, dict):
        raise errors.RegistryError(f"{label} is not a table", path=origin)
    name = entry.get("name")
    if isinstance(name, str):
        label = f"model {name!r}"

    def fail(problem: str) -> errors.RegistryError:
        return errors.RegistryError(f"{label}: {problem}", path=origin)

    missing = [f for f in _REQUIRED_FIELDS if f not in entry]
    if missing:
        raise fail(f"missing required field(s) {', '.join(missing)}")
    unknown = set(entry) - _MODEL_FIELDS
    if unknown:
        raise fail(f"unknown field(s) {', '.join(sorted(unknown))}")
    for key in ("name", "description", "arch", "kind", "license"):
        if not isinstance(entry[key], str):
            raise fail(f"'{key}' must be a string")
    if not NAME_RE.match(name):
        raise fail("name must start with a letter or digit and use only letters, digits, '.', '_' and '-'")
    arch = entry["arch"]
    if arch not in ARCH_DEFAULTS:
        raise fail(f"unknown architecture {arch!r}; known: {', '.join(ARCH_DEFAULTS)}")
    kind = entry["kind"]
    if kind not in KINDS:
        raise fail(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    twin = entry.get("twin")
    if twin is not None and (not isinstance(twin, str) or twin == name):
        raise fail("twin must be the name of another model")
    for key in ("bf16_safe", "default"):
        if key in entry and not isinstance(entry[key], bool):
            raise fail(f"'{key}' must be true or false")

    defaults = ARCH_DEFAULTS[arch]
    overrides = entry.get("hparams", {})
    if not isinstance(overrides, dict):
        raise fail("hparams must be a table")
    unknown_hp = set(overrides) - set(defaults)
    if unknown_hp:
        raise fail(f"unknown {arch} hyperparameter(s) {', '.join(sorted(unknown_hp))}; known: "
                   f"{', '.join(defaults)}")
    hparams = {**defaults, **overrides}
    scale = entry["scale"]
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise fail(f"scale must be a positive integer, not {scale!r}")
    if "scale" in hparams and hparams["scale"] != scale:
        raise fail(f"scale {scale} disagrees with hparams.scale {hparams['scale']}")

    source = _parse_source(entry["source"], fail)
    return ModelSpec(name=name, description=entry["description"], arch=arch,
                     hparams=MappingProxyType(dict(hparams)), scale=scale, kind=kind, twin=twin,
                     license=entry["license"], source=source, bf16_safe=entry.get("bf16_safe", False),
                     default=entry.get("default", False), origin=origin)


def _parse_source(raw: Any, fail: Any) -> Source:
    if not isinstance(raw, dict) or "type" not in raw:
        raise fail("source must be a table with a 'type' (hub, package or file)")
    kind = raw["type"]
    if kind not in _SOURCE_FIELDS:
        raise fail(f"source type must be hub, package or file, not {kind!r}")
    allowed, required = _SOURCE_FIELDS[kind]
    missing = [f for f in required if f not in raw]
    if missing:
        raise fail(f"{kind} source is missing {', '.join(missing)}")
    unknown = set(raw) - allowed
    if unknown:
        raise fail(f"unknown {kind} source field(s) {', '.join(sorted(unknown))}")
    for key in ("repo_id", "filename", "revision", "path", "sha256_note"):
        if key in raw and not (isinstance(raw[key], str) and (raw[key] or key == "sha256_note")):
            raise fail(f"source.{key} must be a non-empty string")
    if "sha256" in raw and not (isinstance(raw["sha256"], str) and SHA256_RE.match(raw["sha256"])):
        raise fail("source.sha256 must be 64 lowercase hex digits")
    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise fail("source.size must be a positive integer (bytes)")
    if "sha256_confirmed" in raw and not isinstance(raw["sha256_confirmed"], bool):
        raise fail("source.sha256_confirmed must be true or false")
    if kind == "hub":
        if raw["repo_id"].count("/") != 1:
            raise fail(f"source.repo_id must look like owner/name, not {raw['repo_id']!r}")
        parts = raw["filename"].replace("\\", "/").split("/")
        if raw["filename"].startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise fail(f"source.filename must be a path inside the repository, not {raw['filename']!r}")
        return HubSource(repo_id=raw["repo_id"], filename=raw["filename"], revision=raw["revision"],
                         sha256=raw["sha256"], size=size, sha256_confirmed=raw.get("sha256_confirmed", False),
                         sha256_note=raw.get("sha256_note", ""))
    if kind == "package":
        if "/" in raw["filename"] or "\\" in raw["filename"] or raw["filename"].startswith("."):
            raise fail("source.filename must be a plain file name under upscale/weights/")
        return PackageSource(filename=raw["filename"], sha256=raw.get("sha256"))
    path = Path(raw["path"]).expanduser()
    if not path.is_absolute():
        raise fail(f"source.path must be absolute, not {raw['path']!r}")
    return FileSource(path=path, sha256=raw.get("sha256"), size=size)


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, ModelSpec]   # in file order: packaged first, then the user's

    def find(self, name: str) -> ModelSpec | None:
        return self.models.get(name)


def build_registry(specs: list[ModelSpec]) -> Registry:
    """Check names are unique and twins exist and match; returns the lookup table."""
    by_name: dict[str, ModelSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            first = by_name[spec.name]
            where = first.origin if first.origin == spec.origin else f"{first.origin} and {spec.origin}"
            raise errors.RegistryError(f"model {spec.name!r} is defined twice (in {where})", path=spec.origin)
        by_name[spec.name] = spec
    for spec in specs:
        if spec.twin is None:
            continue
        twin = by_name.get(spec.twin)
        if twin is None:
            raise errors.RegistryError(f"model {spec.name!r}: twin {spec.twin!r} does not exist", path=spec.origin)
        if twin.arch != spec.arch or dict(twin.hparams) != dict(spec.hparams):
            raise errors.RegistryError(f"model {spec.name!r}: twin {spec.twin!r} is a different network "
                                       f"({twin.arch} {dict(twin.hparams)})", path=spec.origin)
    return Registry(MappingProxyType(by_name))


def load_registry(packaged: Path | None = None, user: Path | None = None) -> Registry:
    """Read and validate the packaged registry and (when it exists) the user registry."""
    packaged = packaged or packaged_registry_path()
    specs = parse_registry(packaged.read_text(encoding="utf-8"), str(packaged))
    for spec in specs:
        if isinstance(spec.source, FileSource):
            raise errors.RegistryError(f"model {spec.name!r}: a packaged entry cannot use a local file source",
                                       path=str(packaged))
        if isinstance(spec.source, PackageSource) and not spec.source.path.is_file():
            raise errors.RegistryError(f"model {spec.name!r}: packaged weights {spec.source.filename} are "
                                       "missing from upscale/weights/", path=str(packaged))
    if user is not None and user.is_file():
        try:
            text = user.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else (err.strerror or str(err))
            raise errors.RegistryError(f"cannot read the user registry ({why})", path=str(user)) from None
        user_specs = parse_registry(text, str(user))
        for spec in user_specs:
            if isinstance(spec.source, PackageSource):
                raise errors.RegistryError(f"model {spec.name!r}: package sources are for the packaged registry",
                                           path=str(user))
        specs += user_specs
    return build_registry(specs)


_CACHE: dict[tuple[str, int | None], Registry] = {}


def current_registry() -> Registry:
    """The packaged + user registry, re-read when the user file changes."""
    user = user_registry_path()
    try:
        stamp: int | None = user.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (str(user), stamp)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_registry(user=user)
    return _CACHE[key]


# --- lookup ---------------------------------------------------------------------------------------
def all_models() -> list[ModelSpec]:
    return list(current_registry().models.values())


def find_model(name: str) -> ModelSpec | None:
    return current_registry().find(name)


def get_model(name: str) -> ModelSpec:
    """The spec named ``name``; ``ModelNotFoundError`` with the closest names otherwise."""
    spec = find_model(name)
    if spec is not None:
        return spec
    names = list(current_registry().models)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(names)}"
    raise errors.ModelNotFoundError(f"{name!r} is neither a registry model nor an existing file{hint} "
                                    "(see `upscale models`)")


def default_model_for_scale(scale: float) -> ModelSpec | None:
    """The ``default = true`` model whose native scale is nearest to ``scale`` (ties go up); None if none."""
    defaults = [s for s in all_models() if s.default]
    if not defaults:
        return None
    return min(defaults, key=lambda s: (abs(s.scale - scale), -s.scale))

def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def forget_cached() -> None:
    """Drop the registry read last, so the next lookup reads the files again (after editing one)."""
    _CACHE.clear()
