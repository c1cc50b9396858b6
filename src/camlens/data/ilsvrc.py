"""Data set readers for weakly-supervised object localisation (WSOL): images, class labels, ground-truth boxes.

Three on-disk formats give one result, a :class:`LocalizationSet` (a list of :class:`Sample`):

* ``"ilsvrc"``: an ImageNet (ILSVRC CLS-LOC) style folder, images plus Pascal VOC XML box files
  (:func:`read_ilsvrc`).
* ``"wsol"``: the metadata of Choe et al., "Evaluating Weakly Supervised Object Localization Methods
  Right", CVPR 2020 (github.com/clovaai/wsolevaluation): ``image_ids.txt``, ``class_labels.txt``,
  ``localization.txt`` and optionally ``image_sizes.txt`` (:func:`read_wsol_metadata`).
* ``"csv"``: ``path,class,x0,y0,x1,y1``, one row per box (:func:`read_csv`).

:func:`open_dataset` tells them apart. :class:`ImageDataset` turns a set into model inputs for a
``torch.utils.data.DataLoader`` (resize without crop, as :func:`camlens.zoo.preprocess` does).

Box convention (the one used everywhere in camlens): float64 ``[x0, y0, x1, y1)``, 0-based and
END-EXCLUSIVE, in pixels of the image as stored in the file (a box covering the whole W x H image is
``[0, 0, W, h)``). Each reader converts its format's convention to this one and says how.

Images are read by :func:`camlens.zoo.load_image` (pixel budget checked from the header) as stored: EXIF
orientation is deliberately NOT applied (``upright=False``), because box annotations (ImageNet's XML,
wsolevaluation's metadata, which its own loader reads with a plain ``PIL.Image.open``) are given in the stored
pixel grid. Annotation XML is untrusted input too: entity declarations are refused (no "billion laughs").

Every problem raises :class:`DatasetError` whose message starts with ``file:line:`` and ends with what to
do about it.

Example:
    >>> data = open_dataset("ILSVRC/Data/CLS-LOC/val", labels="val_labels.txt", classes="LOC_synset_mapping.txt")
    >>> loader = torch.utils.data.DataLoader(ImageDataset(data), batch_size=32, num_workers=2, collate_fn=collate)
    >>> for images, indices in loader: ...  # data[int(i)].boxes are the ground truth of images[k]
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from camlens.zoo import (
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_PIXELS,
    Geometry,
    load_image,
    preprocess_with_geometry,
)

__all__ = [
    "Batch",
    "DatasetError",
    "ImageDataset",
    "LocalizationSet",
    "Sample",
    "Skipped",
    "collate",
    "load_masks",
    "open_dataset",
    "read_csv",
    "read_ilsvrc",
    "read_wsol_metadata",
]

PathLike = Union[str, "os.PathLike[str]"]
ClassesArg = Union[Sequence[str], str, "os.PathLike[str]", None]

_FORMATS = ("ilsvrc", "wsol", "csv")
_WSOL_FILES = ("image_ids.txt", "class_labels.txt", "localization.txt", "image_sizes.txt")
_WNID_LINE = re.compile(r"^(n\d{8})(\s.*)?$")  # "n01440764 tench, Tinca tinca" (LOC_synset_mapping.txt)
_INT = re.compile(r"^[+-]?\d+$")
_CLIP_FIX = "fix the coordinates, or pass clip=True to clip boxes to the image"


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


# ----------------------------------------------------------------------------------------------- helpers


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


# ------------------------------------------------------------------------------------------ Pascal VOC XML


@dataclass
class _Node:
    tag: str
    line: int
    text: str = ""
    children: list[_Node] = field(default_factory=list)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)


@dataclass
class _Object:
    name: str
    box: np.ndarray  # converted, end-exclusive
    line: int


@dataclass
class _Voc:
    path: Path
    size: tuple[int, int] | None
    objects: list[_Object]


def _parse_xml(path: Path) -> _Node:
    """The element tree of an XML file with each element's line number (ElementTree does not keep them).

    Annotation files are untrusted input, so the parser is made for hostile XML (as defusedxml does, without the
    dependency): any entity declaration (the "billion laughs" of nested internal entities, external and unparsed
    entities) is refused when it is declared, before it can be expanded, no external DTD or parameter entity is
    read, and element text is gathered in a list and joined once (linear, however many pieces expat hands over).
    """
    from xml.parsers import expat

    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    stack: list[tuple[_Node, list[str]]] = []
    top: list[_Node] = []

    def refuse(*_args: Any) -> int:
        raise DatasetError(
            "entity declarations are refused in annotation XML (untrusted input); remove the <!ENTITY> "
            "declarations (Pascal VOC files need none)",
            path,
            parser.CurrentLineNumber,
        )

    def start(tag: str, _attrs: dict[str, str]) -> None:
        node = _Node(tag, parser.CurrentLineNumber)
        (stack[-1][0].children if stack else top).append(node)
        stack.append((node, []))

    def end(_tag: str) -> None:
        node, parts = stack.pop()
        node.text = "".join(parts)

    def text(data: str) -> None:
        if stack:
            stack[-1][1].append(data)

    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        with open(path, "rb") as handle:
            parser.ParseFile(handle)
    except expat.ExpatError as err:
        raise DatasetError(
            f"not well-formed XML ({expat.ErrorString(err.code)}, column {err.offset + 1}); fix or regenerate the file",
            path,
            err.lineno,
        ) from None
    return top[0]


def _read_voc(path: Path, clip: bool) -> _Voc:
    """Objects of a Pascal VOC / ImageNet XML file, boxes converted from 1-based inclusive to 0-based exclusive.

    VOC writes the pixel columns ``xmin..xmax`` counting from 1 and including both ends (the VOC devkit's
    ``PASreadrecord``; ImageNet's CLS-LOC XML follows it, ``xmax`` reaching the image width), so the
    0-based end-exclusive box is ``[xmin - 1, ymin - 1, xmax, ymax)``.
    """
    root = _parse_xml(path)
    if root.tag != "annotation":
        raise DatasetError(
            f"expected an <annotation> root element (Pascal VOC), found <{root.tag}>; is this a VOC file?",
            path,
            root.line,
        )
    size = None
    size_node = root.find("size")
    if size_node is not None:
        dims = []
        for tag in ("width", "height"):
            node = size_node.find(tag)
            if node is None:
                raise DatasetError(f"<size> has no <{tag}>; add it or remove <size>", path, size_node.line)
            dims.append(_positive_int(node.text, f"<size><{tag}>", path, node.line))
        size = (dims[0], dims[1])
    objects = []
    for k, obj in enumerate((c for c in root.children if c.tag == "object"), 1):
        name_node = obj.find("name")
        if name_node is None or not name_node.text.strip():
            raise DatasetError(f"<object> number {k} has no <name>; add the class wnid", path, obj.line)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"<object> number {k} has no <bndbox>; add xmin/ymin/xmax/ymax", path, obj.line)
        values = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            node = bndbox.find(tag)
            if node is None:
                raise DatasetError(f"<bndbox> of object {k} has no <{tag}>; add it", path, bndbox.line)
            values.append(_number(node.text, f"<{tag}>", path, node.line))
        xmin, ymin, xmax, ymax = values
        shown = f"<bndbox> xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} (object {k})"
        box = _check_box((xmin - 1, ymin - 1, xmax, ymax), size, clip, path, bndbox.line, shown)
        objects.append(_Object(name_node.text.strip(), box, obj.line))
    return _Voc(path, size, objects)


def _annotation_dirs(root: Path, annotations: PathLike | None) -> list[Path]:
    if annotations is not None:
        folder = Path(annotations).absolute()
        if not folder.is_dir():
            raise DatasetError("annotation folder not found; pass the folder that holds the VOC .xml files", folder)
        return [folder]
    candidates = [root, root / "Annotations", root / "annotations", root.parent / "Annotations"]
    candidates.append(root.parent / "annotations")
    parts = root.parts
    for i, part in enumerate(parts):  # ILSVRC/Data/CLS-LOC/val -> ILSVRC/Annotations/CLS-LOC/val
        if part == "Data":
            candidates.append(Path(*parts[:i], "Annotations", *parts[i + 1 :]))
    unique: list[Path] = []
    for folder in candidates:
        if folder.is_dir() and folder not in unique:
            unique.append(folder)
    return unique


def _find_xml(rel: str, dirs: list[Path]) -> Path | None:
    """The XML of image ``rel``: same relative path, else same file name, in the first folder that has it."""
    stem = Path(rel).with_suffix(".xml")
    for folder in dirs:
        for candidate in (folder / stem, folder / stem.name):
            if candidate.is_file():
                return candidate
    return None


def _resolve_image(root: Path, rel: str) -> Path | None:
    path = root / rel
    if path.is_file():
        return path
    if not Path(rel).suffix:  # "ILSVRC2012_val_00000001" -> .JPEG
        for suffix in sorted(IMAGE_SUFFIXES):
            for candidate in (path.with_name(path.name + suffix), path.with_name(path.name + suffix.upper())):
                if candidate.is_file():
                    return candidate
    return None


@dataclass
class _Entry:
    rel: str
    path: Path
    token: str | None  # the class as written (int or name), None: from the XML
    where: tuple[Path, int | None]  # where the class was written


def _scan(root: Path) -> list[_Entry]:
    images = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not images:
        raise DatasetError(
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder or its sub-folders; pass the "
            "folder that holds the images",
            root,
        )
    depths = {len(Path(rel).parts) for rel, _ in images}
    if depths == {1}:
        return [_Entry(rel, path, None, (path, None)) for rel, path in images]
    if depths == {2}:
        return [_Entry(rel, path, Path(rel).parts[0], (root / Path(rel).parts[0], None)) for rel, path in images]
    deep = next(rel for rel, _ in images if len(Path(rel).parts) != 2)
    raise DatasetError(
        f"images are neither all directly in this folder nor all in class sub-folders root/CLASS/IMAGE "
        f"(e.g. {deep!r}); point root at the folder whose sub-folders are the classes, or pass labels= "
        "(a file of 'relative/path label' lines)",
        root,
    )


def _read_labels(path: Path, root: Path) -> list[_Entry]:
    if not path.is_file():
        raise DatasetError("labels file not found; pass a text file of 'relative/path label' lines", path)
    entries: list[_Entry] = []
    seen: dict[str, int] = {}
    for number, line in _lines(path):
        parts = line.rsplit(",", 1) if "," in line else line.rsplit(None, 1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DatasetError(
                f"expected 'relative/path label' (label: class id or wnid), found {line!r}; fix the line", path, number
            )
        rel, token = parts[0].strip(), parts[1].strip()
        if rel in seen:
            raise DatasetError(f"image {rel!r} listed twice (first on line {seen[rel]}); keep one line", path, number)
        seen[rel] = number
        image = _resolve_image(root, rel)
        if image is None:
            raise DatasetError(
                f"image file {root / rel} not found; fix the path (relative to {root}) or remove the line", path, number
            )
        entries.append(_Entry(rel, image.absolute(), token, (path, number)))
    if not entries:
        raise DatasetError("the labels file lists no images; the data set is empty", path)
    return entries


def read_ilsvrc(
    root: PathLike,
    labels: PathLike | None = None,
    classes: ClassesArg = None,
    *,
    annotations: PathLike | None = None,
    missing: str = "skip",
    clip: bool = False,
    progress: bool = False,
) -> LocalizationSet:
    """Read an ImageNet (ILSVRC CLS-LOC) style folder: images and Pascal VOC XML boxes.

    Layouts:

    * class sub-folders ``root/n01440764/x.JPEG``: the first folder under ``root`` is the image's class.
    * flat images ``root/x.JPEG`` (ILSVRC val): the class comes from ``labels`` or, without it, from the
      XML object names (all objects of an image must then name one class).
    * ``labels``: a text file of ``relative/path label`` lines (whitespace or one comma between; ``label`` a
      class id in model order or a wnid / name). Only the listed images are read, in file order.

    The XML of ``root/REL.JPEG`` is ``REL.xml`` (or just its file name) looked up, in this order, beside the
    image, in ``root/Annotations``, ``root/annotations``, ``root/../Annotations``, ``root/../annotations`` and,
    for the official layout ``ILSVRC/Data/CLS-LOC/val``, in ``ILSVRC/Annotations/CLS-LOC/val``; or only in
    ``annotations`` when given. VOC boxes (1-based, inclusive) become ``[xmin - 1, ymin - 1, xmax, ymax)``.

    Ground truth: only boxes of objects whose ``<name>`` is the image's class are kept: the CAM paper
    (Zhou et al., CVPR 2016, sec. 3.1, following the ILSVRC localisation protocol) counts a prediction as
    correct when it overlaps "any ground-truth box of that class".

    Class ids: with ``classes`` (list of wnids or names in the MODEL's order, or a text file with one per line,
    e.g. ``LOC_synset_mapping.txt``), wnids map through it. Without it, ids are positions in the SORTED list of
    wnids found. When all 1000 ImageNet synsets are present that is ImageNet's standard class order (the order
    of torchvision's and timm's models); on a subset it is NOT, so pass ``classes`` for a pretrained model.

    Args:
        root: the image folder.
        labels: optional labels file (see above).
        classes: optional class list in model order.
        annotations: the folder of XML files, instead of the automatic search.
        missing: images without an XML file: ``"skip"`` (with a warning), ``"error"``, or ``"keep"`` them with
            no box (needs a class from folder or labels).
        clip: clip boxes that cross the image border (per ``<size>``) instead of raising.
        progress: show a progress bar while reading the XML files.

    Returns:
        A :class:`LocalizationSet` with ``format="ilsvrc"``.

    Raises:
        DatasetError: missing folder or file, malformed XML or labels line, unknown class, empty data set.
    """
    if missing not in ("skip", "error", "keep"):
        raise ValueError(f"missing must be 'skip', 'error' or 'keep', got {missing!r}")
    root = Path(root).absolute()
    if not root.is_dir():
        raise DatasetError("image folder not found; pass the folder that holds the images", root)
    known = _read_classes(classes)
    entries = _read_labels(Path(labels).absolute(), root) if labels is not None else _scan(root)
    dirs = _annotation_dirs(root, annotations)

    from tqdm.auto import tqdm

    found: list[tuple[_Entry, _Voc | None]] = []
    skipped: list[str] = []
    for entry in tqdm(entries, desc="reading annotations", unit="image", disable=not progress):
        xml = _find_xml(entry.rel, dirs)
        if xml is None:
            if missing == "error" or (missing == "keep" and entry.token is None):
                why = " (its class would come from the XML)" if entry.token is None else ""
                raise DatasetError(
                    f"no XML annotation for image {entry.rel!r}{why}; looked in: {', '.join(map(str, dirs))}; "
                    "pass annotations=FOLDER, or missing='skip'",
                    entry.path,
                )
            if missing == "skip":
                skipped.append(entry.rel)
                continue
        found.append((entry, None if xml is None else _read_voc(xml, clip)))
    if skipped:
        if len(skipped) == len(entries):
            raise DatasetError(
                f"none of the {len(entries)} images has an XML annotation (looked for e.g. "
                f"{Path(skipped[0]).with_suffix('.xml')} in: {', '.join(map(str, dirs))}); pass annotations=FOLDER",
                root,
            )
        warnings.warn(
            f"{len(skipped)} of {len(entries)} images under {root} have no XML annotation and were skipped "
            f"(e.g. {skipped[0]!r}); pass missing='error' to stop on them or missing='keep' to keep them without box",
            stacklevel=2,
        )

    # The class of each image, as written: folder / labels token, else the XML's single object name.
    tokens: list[tuple[str, tuple[Path, int | None]]] = []
    for entry, voc in found:
        if entry.token is not None:
            tokens.append((entry.token, entry.where))
            continue
        assert voc is not None  # entries without a class were skipped or raised above
        names = sorted({obj.name for obj in voc.objects})
        if len(names) != 1:
            problem = "has no <object>" if not names else f"has objects of {len(names)} classes {names}"
            raise DatasetError(
                f"{problem}, so the image's class is unknown; pass labels= (a file of 'relative/path label' lines)",
                voc.path,
                voc.objects[0].line if voc.objects else None,
            )
        tokens.append((names[0], (voc.path, voc.objects[0].line)))

    # Class ids: through `classes`, or sorted wnids, or integer ids as written.
    is_int = [bool(_INT.match(token)) for token, _ in tokens]
    if known is None and any(is_int) and not all(is_int):
        token, (file, line) = tokens[is_int.index(False)]
        raise DatasetError(
            f"class {token!r} is a name but other labels are class ids; use one kind, or pass classes= to map names",
            file,
            line,
        )
    if known is None and not any(is_int):
        known = _Classes(sorted({token for token, _ in tokens}), f"the {len({t for t, _ in tokens})} classes found")
    samples = []
    for (entry, voc), (token, (file, line)) in zip(found, tokens):
        if _INT.match(token):
            label = _check_class_id(int(token), known, file, line)
        else:
            assert known is not None
            looked_up = known.id_of(token)
            if looked_up is None:
                raise DatasetError(known.unknown(token), file, line)
            label = looked_up
        rows: list[np.ndarray] = []
        size = None
        if voc is not None:
            size = voc.size
            name = None if known is None else known.names[label]
            if name is None:
                names = sorted({obj.name for obj in voc.objects})
                if len(names) > 1:
                    raise DatasetError(
                        f"objects of {len(names)} classes {names} and the image's class is the id {token} with no "
                        "class names, so its boxes cannot be chosen; pass classes= (wnids in model order)",
                        voc.path,
                    )
                rows = [obj.box for obj in voc.objects]
            else:
                rows = [obj.box for obj in voc.objects if obj.name == name or obj.name.casefold() == name.casefold()]
        samples.append(Sample(entry.path, label, _boxes(rows), image_id=entry.rel, size=size))
    if not samples:
        raise DatasetError("the data set is empty", root)
    return LocalizationSet(samples, None if known is None else list(known.names), root, "ilsvrc")


# ------------------------------------------------------------------------------------- wsolevaluation


def _fields(line: str, count: Sequence[int], expected: str, file: Path, number: int) -> list[str]:
    parts = [p.strip() for p in line.split(",")]
    if len(parts) not in count:
        raise DatasetError(
            f"expected {expected} ({len(parts)} comma-separated fields found in {line!r}); fix the line", file, number
        )
    return parts


def read_wsol_metadata(
    metadata_dir: PathLike,
    image_root: PathLike,
    *,
    mask_root: PathLike | None = None,
    clip: bool = False,
) -> LocalizationSet:
    """Read wsolevaluation metadata (Choe et al., "Evaluating WSOL Methods Right", CVPR 2020).

    Files in ``metadata_dir`` (one split, e.g. ``metadata/ILSVRC/test``), as read by the authors'
    ``data_loaders.py`` (github.com/clovaai/wsolevaluation):

    * ``image_ids.txt``: one image path per line, relative to ``image_root``; it fixes the order.
    * ``class_labels.txt``: ``path,class_id``.
    * ``localization.txt``: boxes ``path,x0,y0,x1,y1``, one line per box (several lines for several boxes); or,
      for OpenImages, masks ``path,mask_path,ignore_path``, one line per instance mask, the ignore mask given on
      the image's first line only (later lines leave it empty). Mask paths are relative to ``mask_root``
      (default ``image_root``; the authors keep masks beside the images).
    * ``image_sizes.txt`` (optional): ``path,width,height``; boxes are then checked against the image.

    Box convention found in their code and data: ``x1, y1`` are INCLUSIVE (their ``calculate_multiple_iou``
    computes areas as ``(x1 - x0 + 1) * (y1 - y0 + 1)``; a box covering a 500-pixel-wide image ends at
    ``x1 = 499``, i.e. ImageNet's VOC boxes minus one at both ends). They become ``[x0, y0, x1 + 1, y1 + 1)``.
    A box with ``x1 == x0`` is one pixel wide and valid. Class ids are used as written (for ILSVRC they
    follow ImageNet's standard order), so ``classes`` is None.

    Args:
        metadata_dir: the folder with the metadata files.
        image_root: the folder the image ids are relative to (e.g. ``dataset/ILSVRC``).
        mask_root: the folder mask paths are relative to (default ``image_root``).
        clip: clip boxes that cross the image border (per ``image_sizes.txt``) instead of raising.

    Returns:
        A :class:`LocalizationSet` with ``format="wsol"``; mask data sets have no boxes but ``mask``, ``masks`` and
        ``ignore`` set (see :func:`load_masks`).

    Raises:
        DatasetError: missing folder or file, malformed line, an image without label or localisation, a missing
            image or mask file, empty data set.
    """
    meta = Path(metadata_dir).absolute()
    if not meta.is_dir():
        raise DatasetError(f"metadata folder not found; pass the folder with {', '.join(_WSOL_FILES[:3])}", meta)
    root = Path(image_root).absolute()
    if not root.is_dir():
        raise DatasetError("image folder not found; pass image_root, the folder the image ids are relative to", root)
    masks_root = root if mask_root is None else Path(mask_root).absolute()
    for name in _WSOL_FILES[:3]:
        if not (meta / name).is_file():
            raise DatasetError(f"{name} is missing from the metadata folder; wsolevaluation metadata needs it", meta)

    ids_file, labels_file, loc_file = (meta / name for name in _WSOL_FILES[:3])
    ids: dict[str, int] = {}
    for number, line in _lines(ids_file):
        if line in ids:
            raise DatasetError(f"image {line!r} listed twice (first on line {ids[line]}); keep one", ids_file, number)
        ids[line] = number
    if not ids:
        raise DatasetError("no image ids; the data set is empty", ids_file)

    labels: dict[str, tuple[int, int]] = {}
    for number, line in _lines(labels_file):
        image_id, text = _fields(line, (2,), "'path,class_id'", labels_file, number)
        if not _INT.match(text):
            raise DatasetError(f"class id {text!r} is not an integer; write 'path,class_id'", labels_file, number)
        label = _check_class_id(int(text), None, labels_file, number)
        if image_id in labels and labels[image_id][0] != label:
            first = labels[image_id][1]
            raise DatasetError(f"image {image_id!r} has another class on line {first}; keep one", labels_file, number)
        labels[image_id] = (label, number)

    sizes: dict[str, tuple[int, int]] = {}
    sizes_file = meta / _WSOL_FILES[3]
    if sizes_file.is_file():
        for number, line in _lines(sizes_file):
            image_id, w, h = _fields(line, (3,), "'path,width,height'", sizes_file, number)
            sizes[image_id] = (
                _positive_int(w, "width", sizes_file, number),
                _positive_int(h, "height", sizes_file, number),
            )

    boxes: dict[str, list[np.ndarray]] = {}
    masks: dict[str, list[Path]] = {}
    ignores: dict[str, tuple[Path, int]] = {}
    kind = None
    for number, line in _lines(loc_file):
        parts = _fields(line, (3, 5), "'path,x0,y0,x1,y1' (boxes) or 'path,mask,ignore' (masks)", loc_file, number)
        this = "boxes" if len(parts) == 5 else "masks"
        if kind is None:
            kind = this
        elif kind != this:
            raise DatasetError(
                f"a {this[:-1]} line in a file of {kind}; localization.txt holds either boxes or masks",
                loc_file,
                number,
            )
        image_id = parts[0]
        if image_id not in ids:
            continue  # another subset of the split (e.g. image_ids_proxy.txt); the authors' loader ignores it too
        if this == "boxes":
            x0, y0, x1, y1 = (_number(v, n, loc_file, number) for v, n in zip(parts[1:], ("x0", "y0", "x1", "y1")))
            shown = f"x0={x0:g} y0={y0:g} x1={x1:g} y1={y1:g} (x1, y1 inclusive)"
            box = _check_box((x0, y0, x1 + 1, y1 + 1), sizes.get(image_id), clip, loc_file, number, shown)
            boxes.setdefault(image_id, []).append(box)
            continue
        mask = masks_root / parts[1]
        if not parts[1] or not mask.is_file():
            raise DatasetError(f"mask file {mask} not found; check mask_root or the path", loc_file, number)
        masks.setdefault(image_id, []).append(mask)
        if parts[2]:
            ignore = masks_root / parts[2]
            if not ignore.is_file():
                raise DatasetError(
                    f"ignore mask file {ignore} not found; check mask_root or the path", loc_file, number
                )
            if image_id in ignores and ignores[image_id][0] != ignore:
                first = ignores[image_id][1]
                raise DatasetError(
                    f"image {image_id!r} has a second ignore mask (first on line {first}); one per image",
                    loc_file,
                    number,
                )
            ignores[image_id] = (ignore, number)

    samples = []
    for image_id, number in ids.items():
        path = root / image_id
        if not path.is_file():
            raise DatasetError(
                f"image file {path} not found; check image_root (the folder the ids are relative to)", ids_file, number
            )
        if image_id not in labels:
            raise DatasetError(
                f"image {image_id!r} has no label in {labels_file}; add a line '{image_id},CLASS_ID'", ids_file, number
            )
        if image_id not in boxes and image_id not in masks:
            raise DatasetError(
                f"image {image_id!r} has no box or mask in {loc_file}; add its localisation lines", ids_file, number
            )
        found_masks = tuple(masks.get(image_id, ()))
        samples.append(
            Sample(
                path,
                labels[image_id][0],
                _boxes(boxes.get(image_id, [])),
                mask=found_masks[0] if found_masks else None,
                ignore=ignores[image_id][0] if image_id in ignores else None,
                image_id=image_id,
                size=sizes.get(image_id),
                masks=found_masks,
            )
        )
    return LocalizationSet(samples, None, root, "wsol")


def load_masks(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth foreground and ignore region of a mask-annotated sample, as boolean (H, W) arrays.

    As wsolevaluation's ``get_mask`` (Choe et al., CVPR 2020): the foreground is the union of the instance
    masks (pixel > 0.5 on a 0-255 gray image), and the ignored pixels are the ignore mask minus the foreground.
    Sizes are the mask files' own (the image's, for wsolevaluation data).

    Raises:
        ValueError: the sample has no mask, or its masks differ in size.
    """
    from PIL import Image

    if not sample.masks:
        raise ValueError(f"sample {sample.image_id or sample.path} has no ground-truth mask (a box data set?)")
    arrays = []
    for path in sample.masks:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("L"), dtype=np.float32) > 0.5)
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"instance masks of {sample.image_id} differ in size: {[a.shape for a in arrays]}")
    foreground = np.logical_or.reduce(arrays)
    ignore = np.zeros_like(foreground)
    if sample.ignore is not None:
        with Image.open(sample.ignore) as image:
            ignore = (np.asarray(image.convert("L"), dtype=np.float32) > 0.5) & ~foreground
        if ignore.shape != foreground.shape:
            raise ValueError(f"ignore mask {sample.ignore} is {ignore.shape}, the masks are {foreground.shape}")
    return foreground, ignore


# ----------------------------------------------------------------------------------------------- CSV

_CSV_COLUMNS = {
    "path": ("path", "image", "image_path", "file", "filename", "file_name", "image_id", "img"),
    "class": ("class", "label", "class_id", "class_name", "category", "target"),
    "x0": ("x0", "xmin", "x_min", "left"),
    "y0": ("y0", "ymin", "y_min", "top"),
    "x1": ("x1", "xmax", "x_max", "right"),
    "y1": ("y1", "ymax", "y_max", "bottom"),
}


def _csv_header(row: list[str], file: Path) -> dict[str, int] | None:
    """Column positions from a header row, or None when ``row`` is data."""
    cells = [c.strip().lower() for c in row]
    if cells[0] not in _CSV_COLUMNS["path"]:
        return None
    positions: dict[str, int] = {}
    for key, aliases in _CSV_COLUMNS.items():
        hits = [i for i, c in enumerate(cells) if c in aliases]
        if hits:
            positions[key] = hits[0]
    if "class" not in positions:
        raise DatasetError(
            f"the header has no class column (one of {', '.join(_CSV_COLUMNS['class'])}); found {row}", file, 1
        )
    box_columns = [k for k in ("x0", "y0", "x1", "y1") if k in positions]
    if box_columns and len(box_columns) != 4:
        raise DatasetError(
            f"the header names box columns {box_columns} but not all four x0,y0,x1,y1 (or xmin,ymin,xmax,ymax)", file, 1
        )
    return positions


def read_csv(
    path: PathLike,
    image_root: PathLike | None = None,
    classes: ClassesArg = None,
    *,
    clip: bool = False,
) -> LocalizationSet:
    """Read a plain CSV of boxes: ``path,class,x0,y0,x1,y1``, one row per box.

    * Header optional: a first row whose first cell is ``path`` (or ``image``, ``file``, ``filename``, ...) names
      the columns, which may then come in any order, with extra columns ignored (``xmin``/``ymin``/``xmax``/
      ``ymax`` are accepted for ``x0``/``y0``/``x1``/``y1``).
    * ``class``: an integer class id in model order, or a name looked up in ``classes``.
    * Boxes are END-EXCLUSIVE 0-based pixels, camlens' own convention, taken as written: ``0,0,W,H`` is the
      whole W x H image. Several rows for one image give several boxes; all must give the same class.
    * A row ``path,class`` (or empty box cells) lists an image with no box.
    * Paths are relative to ``image_root`` (default: the CSV's folder) unless absolute.

    Args:
        path: the CSV file.
        image_root: the folder image paths are relative to.
        classes: class names in model order (list, or text file with one per line), needed for named classes.
        clip: clip negative coordinates to 0 instead of raising (the image size is not known here;
            :class:`ImageDataset` checks boxes against the loaded image).

    Returns:
        A :class:`LocalizationSet` with ``format="csv"``.

    Raises:
        DatasetError: missing file, a row with the wrong number of fields, a non-numeric coordinate, an empty box,
            an unknown class name, an image given two classes, a missing image file, an empty data set.
    """
    file = Path(path).absolute()
    if not file.is_file():
        raise DatasetError("CSV file not found; pass a file of 'path,class,x0,y0,x1,y1' rows", file)
    root = file.parent if image_root is None else Path(image_root).absolute()
    if not root.is_dir():
        raise DatasetError("image folder not found; pass image_root, the folder the CSV paths are relative to", root)
    known = _read_classes(classes)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"not a UTF-8 text file ({err.reason} at byte {err.start})", file) from None
    reader = csv.reader(io.StringIO(text))
    columns: dict[str, int] | None = None
    order: list[str] = []
    found: dict[str, tuple[Path, int, int, list[np.ndarray]]] = {}  # path -> image, label, line, boxes
    first = True
    for row in reader:
        number = reader.line_num
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if first:
            first = False
            columns = _csv_header(row, file)
            if columns is not None:
                continue
        if columns is None:
            if len(row) not in (2, 6):
                raise DatasetError(
                    f"expected 6 fields 'path,class,x0,y0,x1,y1' (or 2, 'path,class', for an image without box), "
                    f"found {len(row)}: {row}; fix the row",
                    file,
                    number,
                )
            cells = {"path": row[0], "class": row[1]}
            if len(row) == 6:
                cells.update(zip(("x0", "y0", "x1", "y1"), row[2:]))
        else:
            needed = max(columns.values()) + 1
            if len(row) < needed:
                raise DatasetError(
                    f"expected at least {needed} fields as in the header, found {len(row)}; fix the row", file, number
                )
            cells = {key: row[i] for key, i in columns.items()}
        rel, token = cells["path"].strip(), cells["class"].strip()
        if not rel:
            raise DatasetError("the path field is empty; write the image path", file, number)
        if _INT.match(token):
            label = _check_class_id(int(token), known, file, number)
        elif known is None:
            raise DatasetError(
                f"class {token!r} is not an integer id and no classes were given; pass classes= (names in model "
                "order, list or file) or write class ids",
                file,
                number,
            )
        else:
            looked_up = known.id_of(token)
            if looked_up is None:
                raise DatasetError(known.unknown(token), file, number)
            label = looked_up
        coords = [cells.get(k, "").strip() for k in ("x0", "y0", "x1", "y1")]
        box = None
        if any(coords):
            if not all(coords):
                raise DatasetError(f"some box fields are empty ({coords}); give all four or none", file, number)
            values = [_number(v, k, file, number) for v, k in zip(coords, ("x0", "y0", "x1", "y1"))]
            box = _check_box(
                values, None, clip, file, number, f"x0={coords[0]} y0={coords[1]} x1={coords[2]} y1={coords[3]}"
            )
        if rel not in found:
            image = Path(rel) if Path(rel).is_absolute() else root / rel
            if not image.is_file():
                raise DatasetError(f"image file {image} not found; fix the path (relative to {root})", file, number)
            found[rel] = (image, label, number, [])
            order.append(rel)
        elif found[rel][1] != label:
            raise DatasetError(
                f"image {rel!r} has class {token!r} here but class id {found[rel][1]} on line {found[rel][2]}; "
                "one class per image (its boxes are the ground truth of that class)",
                file,
                number,
            )
        if box is not None:
            found[rel][3].append(box)
    if not order:
        raise DatasetError("no data rows; the data set is empty", file)
    samples = [Sample(found[r][0], found[r][1], _boxes(found[r][3]), image_id=r) for r in order]
    return LocalizationSet(samples, None if known is None else list(known.names), root, "csv")


# ------------------------------------------------------------------------------------------ detection


def open_dataset(
    path: PathLike,
    image_root: PathLike | None = None,
    format: str = "auto",
    classes: ClassesArg = None,
    *,
    labels: PathLike | None = None,
    clip: bool = False,
    progress: bool = False,
) -> LocalizationSet:
    """Read a localisation data set in any supported format, detected from ``path``.

    Detection (``format="auto"``):

    * a ``.csv`` file: plain CSV (:func:`read_csv`), paths relative to ``image_root`` or the file's folder;
    * a folder with ``image_ids.txt``, or one of the wsolevaluation files itself: wsolevaluation metadata
      (:func:`read_wsol_metadata`), images under ``image_root`` (required);
    * another ``.txt`` file: an ILSVRC labels file (``relative/path label`` lines), images and XML under
      ``image_root`` (default: the file's folder);
    * any other folder: an ILSVRC-style image folder (:func:`read_ilsvrc`), with ``labels`` if given.

    Args:
        path: file or folder.
        image_root: folder the listed image paths are relative to (wsol, csv, labels file).
        format: ``"auto"``, ``"ilsvrc"``, ``"wsol"`` or ``"csv"``.
        classes: class list in model order (ilsvrc, csv).
        labels: labels file for an ILSVRC folder.
        clip: clip boxes to the image instead of raising.
        progress: progress bar while reading XML files.

    Raises:
        DatasetError: ``path`` missing, its format unknown, or any reader error.
    """
    p = Path(path).absolute()
    if format not in ("auto", *_FORMATS):
        raise ValueError(f"format must be 'auto', 'ilsvrc', 'wsol' or 'csv', got {format!r}")
    if not p.exists():
        raise DatasetError(
            "no such file or folder; pass an image folder (ILSVRC style), a wsolevaluation metadata folder "
            "(with image_ids.txt) or a CSV file",
            p,
        )
    fmt = format
    if fmt == "auto":
        if p.is_file():
            suffix = p.suffix.lower()
            fmt = (
                "csv" if suffix == ".csv" else "wsol" if p.name in _WSOL_FILES else "ilsvrc" if suffix == ".txt" else ""
            )
            if not fmt:
                raise DatasetError(
                    "cannot tell the data set format of this file; pass a .csv file, a wsolevaluation metadata folder, "
                    "an image folder, or format=",
                    p,
                )
        else:
            fmt = "wsol" if (p / "image_ids.txt").is_file() else "ilsvrc"
    if fmt == "csv":
        return read_csv(p, image_root, classes, clip=clip)
    if fmt == "wsol":
        meta = p.parent if p.is_file() else p
        if image_root is None:
            raise DatasetError(
                "wsolevaluation metadata lists image paths relative to a separate image folder; pass image_root "
                "(e.g. dataset/ILSVRC)",
                meta,
            )
        if classes is not None:
            raise ValueError("classes does not apply to wsolevaluation metadata: its class ids are used as written")
        return read_wsol_metadata(meta, image_root, clip=clip)
    if p.is_file():  # an ILSVRC labels file
        if labels is not None:
            raise ValueError(f"{p} is already the labels file; do not pass labels= as well")
        root = p.parent if image_root is None else Path(image_root)
        return read_ilsvrc(root, p, classes, clip=clip, progress=progress)
    if image_root is not None and Path(image_root).absolute() != p:
        raise ValueError("image_root does not apply to an ILSVRC image folder: the folder itself holds the images")
    return read_ilsvrc(p, labels, classes, clip=clip, progress=progress)


# ------------------------------------------------------------------------------------------ images


def _read_image(path: Path, max_pixels: int | None = MAX_PIXELS) -> Any:
    """An 8-bit RGB PIL image in its STORED orientation (no EXIF rotation: annotations use the stored grid).

    :func:`camlens.zoo.load_image` reads it (header-checked pixel budget, bombs, 16-bit, RGBA, palette);
    its ValueError becomes a :class:`DatasetError` naming the file.
    """
    try:
        return load_image(path, max_pixels=max_pixels, upright=False)
    except ValueError as err:
        if not path.is_file():
            raise DatasetError("image file not found (moved since the data set was read?)", path) from None
        reason = str(err).removeprefix(f"{path}: ")
        raise DatasetError(f"{reason}; remove it from the data set or replace it", path) from None


@dataclass(frozen=True)
class Skipped:
    """What :class:`ImageDataset` (with ``skip_bad=True``) gives for an image it cannot use: which and why.

    Attributes:
        index: the image's index in the data set.
        path: the image file.
        reason: the problem and what to do about it (a :class:`DatasetError` message without the file name).
    """

    index: int
    path: str
    reason: str


class Batch(tuple[torch.Tensor, torch.Tensor]):
    """What :func:`collate` returns: the pair ``(images, indices)``, plus the images it left out in ``skipped``."""

    skipped: list[Skipped]

    def __new__(cls, images: torch.Tensor, indices: torch.Tensor, skipped: Sequence[Skipped] = ()) -> Batch:
        batch = super().__new__(cls, (images, indices))
        batch.skipped = list(skipped)
        return batch

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers send batches to the main process by pickle
        return (Batch, (self[0], self[1], self.skipped))


class ImageDataset(Dataset[Union[tuple[torch.Tensor, int], Skipped]]):
    """Model inputs of a :class:`LocalizationSet`: ``(image (3, size, size), index)``.

    Each image is read in its stored orientation, resized WITHOUT cropping to ``size x size`` (bilinear with
    antialiasing, as :func:`camlens.zoo.preprocess`) and normalised with ``mean``/``std``. Because nothing is
    cropped, a map over the input covers the whole image: :meth:`geometry` maps it back to original pixels,
    where the ground-truth boxes live. Use :func:`collate` as the DataLoader's ``collate_fn``.

    Args:
        data: the data set.
        size: side of the square model input.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        max_pixels: refuse images with more pixels than this, checked from the file's header before decoding
            (``None``: no limit).
        skip_bad: give a :class:`Skipped` marker instead of raising for an image that cannot be used (unreadable,
            truncated, over the pixel budget, or not matching its annotation); :func:`collate` leaves it out of
            the batch and lists it in ``Batch.skipped``. This works in DataLoader workers.

    Raises (on access, unless ``skip_bad``):
        DatasetError: the image cannot be read, is over ``max_pixels``, its size differs from the annotation's,
            or a box lies outside it.
    """

    def __init__(
        self,
        data: LocalizationSet,
        size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        *,
        max_pixels: int | None = MAX_PIXELS,
        skip_bad: bool = False,
    ) -> None:
        if not isinstance(data, LocalizationSet):
            raise TypeError(f"data must be a LocalizationSet (see open_dataset), got {type(data).__name__}")
        if int(size) <= 0:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}")
        if max_pixels is not None and int(max_pixels) < 1:
            raise ValueError(f"max_pixels must be >= 1 or None (no limit), got {max_pixels}")
        self.data = data
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.skip_bad = bool(skip_bad)
        self._sizes: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Skipped:
        sample = self.data[index]
        try:
            image = _read_image(sample.path, self.max_pixels)
            self._check(sample, image.size)
        except DatasetError as err:
            if not self.skip_bad:
                raise
            return Skipped(int(index), str(sample.path), err.problem)
        self._sizes[index] = image.size
        x, _ = preprocess_with_geometry(image, self.size, self.mean, self.std)
        return x[0], index

    @staticmethod
    def _check(sample: Sample, size: tuple[int, int]) -> None:
        if sample.size is not None and tuple(sample.size) != tuple(size):
            raise DatasetError(
                f"the image is {size[0]} x {size[1]} but its annotation says {sample.size[0]} x {sample.size[1]}; "
                "the boxes would be misplaced: fix the annotation or use the original image",
                sample.path,
            )
        if len(sample.boxes) and ((sample.boxes[:, 2] > size[0]).any() or (sample.boxes[:, 3] > size[1]).any()):
            raise DatasetError(
                f"a ground-truth box {sample.boxes.tolist()} extends past the {size[0]} x {size[1]} image "
                f"({sample.image_id}); fix the annotation",
                sample.path,
            )

    def original_size(self, index: int) -> tuple[int, int]:
        """(W, H) of image ``index`` as stored: from the annotation when it says, else the file's header.

        Raises:
            DatasetError: the header cannot be read, or it claims more than ``max_pixels`` pixels.
        """
        sample = self.data[index]
        if sample.size is not None:
            return sample.size
        if index not in self._sizes:
            from PIL import Image

            over = False
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our budget replaces PIL's
                    with Image.open(sample.path) as image:
                        width, height = image.size
                over = self.max_pixels is not None and width * height > self.max_pixels
            except Image.DecompressionBombError:
                over = True
            except (OSError, SyntaxError, EOFError) as err:
                raise DatasetError(f"cannot read the image header ({err}); replace the file", sample.path) from None
            if over:  # load_image refuses it from the header too, before decoding: one message for both
                _read_image(sample.path, self.max_pixels)
                raise DatasetError("over the pixel budget; remove it from the data set", sample.path)
            self._sizes[index] = (width, height)
        return self._sizes[index]

    def geometry(self, index: int) -> Geometry:
        """How image ``index`` became the input: ``geometry(i).map_to_original(maps)`` gives original pixels."""
        width, height = self.original_size(index)
        return Geometry((height, width), (self.size, self.size))


def collate(batch: Sequence[tuple[torch.Tensor, int] | Skipped]) -> Batch:
    """``[(image, index) or Skipped, ...]`` -> ``(images (B, 3, S, S), indices (B,) int64)`` for a DataLoader.

    :class:`Skipped` markers (from ``ImageDataset(..., skip_bad=True)``) are left out of the tensors and listed
    in the result's ``skipped``; when every item was skipped, ``images`` is ``(0,)`` and ``indices`` empty.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    skipped = [item for item in batch if isinstance(item, Skipped)]
    kept = [item for item in batch if not isinstance(item, Skipped)]
    if not kept:
        return Batch(torch.zeros(0), torch.zeros(0, dtype=torch.long), skipped)
    images = torch.stack([item[0] for item in kept])
    indices = torch.tensor([int(item[1]) for item in kept], dtype=torch.long)
    return Batch(images, indices, skipped)
