"""Output names from untrusted input names, and the guarantee that every written path stays in ``--out``.

Image file names come from users and data sets, so they are hostile until proven otherwise: ``..``,
``...png`` (whose stem is ``..``), separators, control characters, names that collide with each other
(``a/cat.png`` and ``b/cat.png``, ``x.jpg`` and ``x.png``) or with the run's own files
(``results.jsonl.png``). :class:`NameBook` turns each input path into a name that is safe, unique
within the run and never one of the reserved names; :func:`inside` is the last check before a write.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

__all__: list[str] = []

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")
_MAX_LEN = 96
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_name(text: str, fallback: str = "image") -> str:
    """One path component from arbitrary text: ASCII letters, digits and ``._+=-``; no leading dots.

    Separators, ``..``, control and other characters become ``_``; the result is never empty, never
    starts with a dot (so never ``.`` or ``..``), and is at most 96 characters long.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("_", ascii_text).strip("._ ")
    name = re.sub(r"_+", "_", name)[:_MAX_LEN].rstrip("._ ")
    if not name or name.lower().split(".")[0] in _RESERVED:
        name = f"{fallback}_{name}" if name else fallback
    return name


class NameBook:
    """Unique, safe output names for the inputs of one run.

    A name is derived from the input's path relative to ``root`` (its folders joined with ``_`` and its
    suffix kept, so ``a/cat.png``, ``b/cat.png`` and ``a/cat.jpg`` stay apart), sanitised by
    :func:`safe_name`, compared without case (case-insensitive file systems) against the names already
    given and against ``reserved`` (the run's own files), and suffixed ``-2``, ``-3``... on a clash.
    """

    def __init__(self, reserved: set[str] | frozenset[str] = frozenset()) -> None:
        self._taken = {r.lower() for r in reserved}

    def name(self, path: str | Path, root: str | Path | None = None) -> str:
        path = Path(path)
        rel = path
        if root is not None:
            try:
                rel = path.resolve().relative_to(Path(root).resolve())
            except ValueError:
                rel = Path(path.name)
        else:
            rel = Path(path.name)
        parts = [*rel.parent.parts, rel.stem]
        base = safe_name("_".join(p for p in parts if p not in ("", ".", "/")))
        suffix = rel.suffix.lower().lstrip(".")
        if suffix and self._clash(base):
            base = safe_name(f"{base}_{suffix}")
        name, n = base, 1
        while self._clash(name):
            n += 1
            name = f"{base}-{n}"
        self._taken.add(name.lower())
        return name

    def _clash(self, name: str) -> bool:
        return name.lower() in self._taken


def inside(out: str | Path, *parts: str) -> Path:
    """``out / parts...``, refusing any path that would resolve outside ``out`` (the last line of defence)."""
    root = Path(out).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"refusing to write {path}: outside the output folder {root}")
    return path
