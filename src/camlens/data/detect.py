"""Which reader a path needs: :func:`open_dataset` detects the format and calls it."""

from __future__ import annotations

from pathlib import Path

from camlens.data.csvfile import read_csv
from camlens.data.ilsvrc import read_ilsvrc
from camlens.data.samples import ClassesArg, DatasetError, LocalizationSet, PathLike
from camlens.data.wsol import _WSOL_FILES, read_wsol_metadata

__all__ = ["open_dataset"]

_FORMATS = ("ilsvrc", "wsol", "csv")


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
