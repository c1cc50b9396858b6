"""Parsing and error helpers the readers share: text lines, numbers, boxes, class lists.

Every problem raises :class:`~camlens.data.samples.DatasetError` naming ``file:line`` and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from camlens.data.samples import ClassesArg, DatasetError

_WNID_LINE = re.compile(r"^(n\d{8})(\s.*)?$")  # "n01440764 tench, Tinca tinca" (LOC_synset_mapping.txt)
_INT = re.compile(r"^[+-]?\d+$")
_CLIP_FIX = "fix the coordinates, or pass clip=True to clip boxes to the image"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank, non-comment (``#``) lines of a UTF-8 text file, stripped, with 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError("no such file", path) from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"not a UTF-8 text file ({err.reason} at byte {err.start})", path) from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _number(text: str, what: str, file: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{what} is {text.strip()!r}, not a number; write a plain number", file, line) from None
    if not np.isfinite(value):
        raise DatasetError(f"{what} is {text.strip()!r}; coordinates must be finite numbers", file, line)
    return value


def _positive_int(text: str, what: str, file: Path, line: int) -> int:
    if not _INT.match(text.strip()) or int(text) <= 0:
        raise DatasetError(f"{what} is {text.strip()!r}; it must be a positive integer", file, line)
    return int(text)


def _check_box(
    box: Sequence[float],
    size: tuple[int, int] | None,
    clip: bool,
    file: Path,
    line: int | None,
    shown: str,
) -> np.ndarray:
    """Validate one end-exclusive box (``shown`` is how the file wrote it) and return it as float64."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if clip:
        x0, y0 = max(x0, 0.0), max(y0, 0.0)
        if size is not None:
            x1, y1 = min(x1, float(size[0])), min(y1, float(size[1]))
    if x1 <= x0 or y1 <= y0:
        raise DatasetError(
            f"box {shown} is empty (converted [x0, y0, x1, y1) = [{x0:g}, {y0:g}, {x1:g}, {y1:g}) needs x1 > x0 and "
            "y1 > y0); fix the coordinates",
            file,
            line,
        )
    if x0 < 0 or y0 < 0:
        raise DatasetError(f"box {shown} has a negative coordinate; {_CLIP_FIX}", file, line)
    if size is not None and (x1 > size[0] or y1 > size[1]):
        raise DatasetError(
            f"box {shown} (converted [{x0:g}, {y0:g}, {x1:g}, {y1:g})) extends past the {size[0]} x {size[1]} "
            f"image; {_CLIP_FIX}",
            file,
            line,
        )
    return np.array([x0, y0, x1, y1], dtype=np.float64)


def _boxes(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, 4), dtype=np.float64)


class _Classes:
    """Class names (wnids or words) in the model's order, and the lookup name -> id."""

    def __init__(self, names: list[str], source: str) -> None:
        self.names = names
        self.source = source
        self.index = {name: i for i, name in enumerate(names)}
        folded: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            folded.setdefault(name.casefold(), []).append(i)
        self.folded = {name: ids[0] for name, ids in folded.items() if len(ids) == 1}

    def id_of(self, name: str) -> int | None:
        found = self.index.get(name)
        return self.folded.get(name.casefold()) if found is None else found

    def unknown(self, name: str) -> str:
        head = ", ".join(repr(n) for n in self.names[:4])
        more = ", ..." if len(self.names) > 4 else ""
        return (
            f"unknown class {name!r}: not among the {len(self.names)} classes of {self.source} ({head}{more}); "
            "fix the name, or pass classes= with the model's class list (wnids or names, in model order)"
        )


def _read_classes(classes: ClassesArg) -> _Classes | None:
    """``classes`` as a list of names, or a text file with one per line (``n01440764 tench`` keeps the wnid)."""
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        path = Path(classes)
        if not path.is_file():
            raise DatasetError(
                "class list file not found; pass a text file with one class (wnid or name) per line in the "
                "model's class order, or a list of names",
                path,
            )
        names: list[str] = []
        seen: dict[str, int] = {}
        for number, line in _lines(path):
            match = _WNID_LINE.match(line)
            name = match.group(1) if match else line
            if name in seen:
                raise DatasetError(
                    f"class {name!r} listed twice (first on line {seen[name]}); remove one", path, number
                )
            seen[name] = number
            names.append(name)
        if not names:
            raise DatasetError("the class list is empty; write one class per line in model order", path)
        return _Classes(names, str(path))
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes is an empty list; pass the model's class names in order, or None")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"classes lists {duplicates[:3]} more than once; each class must appear once")
    return _Classes(names, "the given classes")


def _check_class_id(label: int, classes: _Classes | None, file: Path, line: int | None) -> int:
    if label < 0:
        raise DatasetError(f"class id {label} is negative; class ids count from 0 in the model's order", file, line)
    if classes is not None and label >= len(classes.names):
        raise DatasetError(
            f"class id {label} is out of range for {len(classes.names)} classes ({classes.source}); "
            "use an id below that or pass the right classes=",
            file,
            line,
        )
    return label
