"""Editing the user registry (``upscale models add`` / ``remove``): entries written as TOML text into
the user's file, atomically and under a lock (``atomic.updating``), the whole new file validated with
the packaged registry before it replaces the old one, the other entries and comments kept as written.
Reading both registries is ``upscale.registry``'s."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from . import atomic, errors
from .archs.catalog import DEFAULTS as ARCH_DEFAULTS
from .registry import (ModelSpec, build_registry, forget_cached, get_model, packaged_registry_path, parse_registry,
                       sha256_file, user_registry_path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes; TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def format_entry(fields: dict[str, Any]) -> str:
    """One ``[[model]]`` table as TOML text."""
    return "[[model]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in fields.items() if v is not None)


# a line opening one [[model]] table, as TOML allows it written: spaces, a comment after it
_MODEL_HEADER = r"[ \t]*\[\[[ \t]*model[ \t]*\]\][ \t]*(?:#[^\n]*)?$"


def _without_entry(text: str, name: str) -> tuple[str, bool]:
    """Registry ``text`` less the ``[[model]]`` table named ``name`` (its other tables and comments
    kept as written), and whether there was one."""
    kept, removed = [], False
    for part in re.split(f"(?m)^(?={_MODEL_HEADER})", text):
        if re.match(_MODEL_HEADER, part, re.M):
            try:
                entry = tomllib.loads(part).get("model", [{}])[0]
            except (tomllib.TOMLDecodeError, IndexError, AttributeError):
                entry = {}
            if isinstance(entry, dict) and entry.get("name") == name:
                removed = True
                continue
        kept.append(part)
    return "".join(kept), removed


def add_user_model(name: str, path: str | Path, *, arch: str, hparams: Mapping[str, Any],
                   description: str | None = None, license: str = "unknown", kind: str = "other",
                   twin: str | None = None, bf16_safe: bool = False, replace: bool = False) -> ModelSpec:
    """Register a local weights file in the user registry (written atomically, validated first).

    ``arch``/``hparams`` are what the caller detected in the file; the file's sha256 and size are
    recorded so a later change to the file is noticed. ``bf16_safe``: the caller measured it (see
    ``upscale.registry``'s docstring). A user model of that name is a ``RegistryError`` unless
    ``replace``, which puts this entry in its place (a file that changed since it was registered is
    registered again so).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise errors.UsageError(f"{path} is not a file")
    size = path.stat().st_size
    defaults = ARCH_DEFAULTS[arch]
    overrides = {k: v for k, v in hparams.items() if defaults.get(k, object()) != v}
    fields: dict[str, Any] = {
        "name": name, "description": description or f"local file {path.name}", "arch": arch,
        "scale": int(hparams.get("scale", defaults.get("scale", 1))), "kind": kind, "twin": twin,
        "license": license, "bf16_safe": bf16_safe or None, "hparams": overrides or None,
        "source": {"type": "file", "path": str(path), "sha256": sha256_file(path), "size": size},
    }
    user = user_registry_path()
    packaged = packaged_registry_path()
    with _editing(user):     # a model another process adds meanwhile is kept
        old = user.read_text(encoding="utf-8") if user.is_file() else ""
        rest, had = _without_entry(old, name)
        if had and not replace:
            raise errors.RegistryError(f"model {name!r} is registered already; pass replace to register "
                                       "this file in its place", path=user, params=("replace",))
        new = (rest.rstrip("\n") + "\n\n" if rest.strip() else "") + format_entry(fields)
        new_specs = parse_registry(new, str(user))  # validate the whole new file before writing it
        table = build_registry(parse_registry(packaged.read_text(encoding="utf-8"), str(packaged)) + new_specs)
        other = table.find(twin) if twin is not None else None
        if other is not None and {kind, other.kind} != {"psnr", "gan"}:
            raise errors.RegistryError(f"twin {twin!r} is of kind {other.kind} and {name!r} of kind {kind}; "
                                       "twins are a psnr model and a gan model (set kind)", path=user)
        atomic.write_text(user, new)
    forget_cached()
    return get_model(name)


def remove_user_model(name: str) -> ModelSpec:
    """Take the model ``name`` out of the user registry (its weights file is left where it is) and
    return what it was. A packaged model, an unknown name, or a model another user model names as its
    twin is a ``RegistryError`` and nothing changes."""
    spec = get_model(name)      # ModelNotFoundError, with the closest names, for an unknown one
    user = user_registry_path()
    if spec.origin != str(user):
        raise errors.RegistryError(f"model {name!r} comes with upscale, not from your registry; only models "
                                   "added with `upscale models add` can be removed", path=spec.origin)
    with _editing(user):
        rest, had = _without_entry(user.read_text(encoding="utf-8"), name)
        if not had:     # removed by another process meanwhile
            raise errors.RegistryError(f"model {name!r} is no longer in the user registry", path=user)
        remaining = parse_registry(rest, str(user))
        twins = [s.name for s in remaining if s.twin == name]
        if twins:
            raise errors.RegistryError(f"model {name!r} is the twin of {', '.join(twins)}; remove "
                                       f"{'that' if len(twins) == 1 else 'those'} first", path=user)
        atomic.write_text(user, rest.rstrip("\n") + "\n" if rest.strip() else "")
    forget_cached()
    return spec


@contextlib.contextmanager
def _editing(user: Path) -> Iterator[None]:
    """The user registry ``user`` locked for one change (its folder made first); failing to read or
    write it is a one-line ``RegistryError`` naming it."""
    try:
        user.parent.mkdir(parents=True, exist_ok=True)
        with atomic.updating(user):
            yield
    except UnicodeDecodeError:
        raise errors.RegistryError("cannot read the user registry (not UTF-8 text)", path=user) from None
    except OSError as err:
        raise errors.RegistryError(f"cannot write the user registry ({atomic.os_reason(err, user.parent)})",
                                   path=user) from None
