"""Plain CSV box files, ``path,class,x0,y0,x1,y1`` one row per box (:func:`read_csv`).

Boxes are END-EXCLUSIVE 0-based pixels, camlens' own convention, taken as written.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from camlens.data._parsing import _INT, _boxes, _check_box, _check_class_id, _number, _read_classes
from camlens.data.samples import ClassesArg, DatasetError, LocalizationSet, PathLike, Sample

__all__ = ["read_csv"]

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
