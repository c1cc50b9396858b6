"""ImageNet (ILSVRC CLS-LOC) style folders: images plus Pascal VOC XML boxes (:func:`read_ilsvrc`).

VOC boxes are 1-based and inclusive; they become camlens' ``[xmin - 1, ymin - 1, xmax, ymax)``.
Annotation XML is untrusted input: :func:`_parse_xml` is an expat parser made for hostile XML (entity
declarations refused, no "billion laughs", no external DTD).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camlens.data._parsing import (
    _INT,
    _boxes,
    _check_box,
    _check_class_id,
    _Classes,
    _lines,
    _number,
    _positive_int,
    _read_classes,
)
from camlens.data.images import IMAGE_SUFFIXES
from camlens.data.samples import ClassesArg, DatasetError, LocalizationSet, PathLike, Sample

__all__ = ["read_ilsvrc"]


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
