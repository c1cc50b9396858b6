"""Compatibility module: the data set readers now live in :mod:`camlens.data`.

``from camlens import datasets`` and ``from camlens.datasets import open_dataset`` keep working; new code
imports from :mod:`camlens.data`.
"""

from camlens.data import (
    Batch,
    DatasetError,
    ImageDataset,
    LocalizationSet,
    Sample,
    Skipped,
    collate,
    load_masks,
    open_dataset,
    read_csv,
    read_ilsvrc,
    read_wsol_metadata,
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
