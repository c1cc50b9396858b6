"""The data model of a localisation data set: :class:`Sample`, :class:`LocalizationSet`, :class:`DatasetError`.

Box convention (the one used everywhere in camlens): float64 ``[x0, y0, x1, y1)``, 0-based and
END-EXCLUSIVE, in pixels of the image as stored in the file (a box covering the whole W x H image is
``[0, 0, W, H)``). Each reader converts its format's convention to this one and says how.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = ["ClassesArg", "DatasetError", "LocalizationSet", "PathLike", "Sample"]

PathLike = Union[str, "os.PathLike[str]"]
ClassesArg = Union[Sequence[str], str, "os.PathLike[str]", None]


class DatasetError(ValueError):
    """A data set file or folder is missing or malformed.

    The message reads ``FILE:LINE: problem; what to do`` (``FILE: ...`` when no line applies), so it can be
    pasted into an editor's "go to". ``file`` and ``line`` are also attributes, and ``problem`` is the message
    without them.
    """

    def __init__(self, message: str, file: PathLike | None = None, line: int | None = None) -> None:
        where = "" if file is None else f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(where + message)
        self.problem = message
        self.file = None if file is None else Path(file)
        self.line = line


@dataclass(frozen=True)
class Sample:
    """One image with its class and ground truth.

    Attributes:
        path: absolute image path.
        label: class id in the MODEL's class order.
        boxes: (n, 4) float64 ``[x0, y0, x1, y1)``, 0-based, end-exclusive, original image pixels; may be (0, 4)
            (mask-annotated data, or an image whose annotation has no box of its class). Read-only.
        mask: ground-truth foreground mask image (first instance mask when there are several, see ``masks``).
        ignore: wsolevaluation OpenImages "ignore" mask (region to leave out of PxAP), or None.
        image_id: the id / relative path as written in the annotation files.
        size: (W, H) of the image when the annotation states it (VOC ``<size>``, ``image_sizes.txt``), else None.
        masks: all instance masks of the image (their union is the foreground), empty when there are none.
    """

    path: Path
    label: int
    boxes: np.ndarray
    mask: Path | None = None
    ignore: Path | None = None
    image_id: str = ""
    size: tuple[int, int] | None = None
    masks: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        boxes = np.array(self.boxes, dtype=np.float64).reshape(-1, 4)
        boxes.setflags(write=False)
        object.__setattr__(self, "boxes", boxes)
        if self.mask is not None and not self.masks:
            object.__setattr__(self, "masks", (self.mask,))

    def _key(self) -> tuple[Any, ...]:
        return (self.path, self.label, self.mask, self.ignore, self.image_id, self.size, self.masks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return self._key() == other._key() and np.array_equal(self.boxes, other.boxes)

    def __hash__(self) -> int:
        return hash((*self._key(), self.boxes.tobytes()))


@dataclass
class LocalizationSet:
    """A localisation data set: samples in a fixed order, and the class names when known.

    Attributes:
        samples: the images, in file order (annotation-file order, or sorted relative paths for a scanned folder).
        classes: class names or wnids in the model's class order when known (``classes[sample.label]``), else None.
        root: the folder image paths are relative to.
        format: ``"ilsvrc"``, ``"wsol"`` or ``"csv"``.
    """

    samples: list[Sample]
    classes: list[str] | None
    root: Path
    format: str

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        boxes = sum(len(s.boxes) for s in self.samples)
        classes = "unknown" if self.classes is None else str(len(self.classes))
        return (
            f"LocalizationSet(format={self.format!r}, root='{self.root}', images={len(self.samples)}, "
            f"boxes={boxes}, classes={classes})"
        )
