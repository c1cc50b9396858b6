"""wsolevaluation metadata (Choe et al., "Evaluating WSOL Methods Right", CVPR 2020): :func:`read_wsol_metadata`.

Boxes in ``localization.txt`` are 0-based with INCLUSIVE ``x1, y1``; they become ``[x0, y0, x1 + 1, y1 + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from camlens.data._parsing import _INT, _boxes, _check_box, _check_class_id, _lines, _number, _positive_int
from camlens.data.samples import DatasetError, LocalizationSet, PathLike, Sample

__all__ = ["read_wsol_metadata"]

_WSOL_FILES = ("image_ids.txt", "class_labels.txt", "localization.txt", "image_sizes.txt")


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
