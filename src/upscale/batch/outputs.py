"""Which input owns each output when one run writes several (``upscale batch``, ``upscale a.png b.png``).

The rule, in one place: outputs are told apart by the file writing them would write (their real path:
outputs are written through symlinks, of the file or of a folder above it). The first input, in the
run's order, to claim an output owns it; another input whose output is that same file is refused
(``SHARED``), and so is an output that is one of the run's inputs (``INPUT``): inputs are never
overwritten. Pure: only the paths' links are looked at, never a file's contents; each caller words
the refusal in its own line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Hashable, Iterable, TypeVar

Who = TypeVar("Who", bound=Hashable)   # how a caller names an input: a relative path, a Path as typed

SHARED = "shared"   # another input claimed the same output first
INPUT = "input"     # the output is (through a symlink, or as named) one of the inputs


@dataclass(frozen=True)
class Clash:
    """Why an input may not write its output: ``SHARED`` with the input that owns it (as claimed), or
    ``INPUT`` with the input it would write over (as given)."""

    kind: str
    other: object


class OutputOwners(Generic[Who]):
    """The outputs of one run's ``inputs``: ``claim`` each output (all of them, in the run's order,
    before any is refused), then ask ``clash`` of each one to be written."""

    def __init__(self, inputs: Iterable[Path]) -> None:
        self._given = list(inputs)
        self._inputs: dict[str, Path] | None = None   # real path -> input as given, made when first needed
        self._owner: dict[str, Who] = {}
        self._folders: dict[Path, str] = {}

    def claim(self, output: Path, who: Who) -> Who:
        """The input that owns ``output``: ``who``, unless another claimed the same file first."""
        return self._owner.setdefault(self._real(output), who)

    def clash(self, output: Path, who: Who) -> Clash | None:
        """Why ``who`` (which claimed ``output``) may not write it: another input owns it, or it is an
        input (``who``'s own too: the caller may leave that one to its own words); None when it may."""
        real = self._real(output)
        first = self._owner.get(real, who)
        if first != who:
            return Clash(SHARED, first)
        if not os.path.lexists(real):       # nothing there: not an input
            return None
        if self._inputs is None:
            self._inputs = {}
            for given in self._given:
                self._inputs.setdefault(self._real(given), given)
        leads_to = self._inputs.get(real)
        return None if leads_to is None else Clash(INPUT, leads_to)

    def _real(self, path: Path) -> str:
        """Where writing ``path`` writes: its real path (the folder's resolved once per folder)."""
        folder = self._folders.get(path.parent)
        if folder is None:
            folder = self._folders[path.parent] = os.path.realpath(path.parent)
        real = os.path.join(folder, path.name)
        return os.path.realpath(real) if os.path.islink(real) else real
