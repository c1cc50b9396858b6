"""Data sets for weakly-supervised object localisation (WSOL): images, class labels, ground-truth boxes.

Three on-disk formats give one result, a :class:`LocalizationSet` (a list of :class:`Sample`):

* ``"ilsvrc"``: an ImageNet (ILSVRC CLS-LOC) style folder, images plus Pascal VOC XML box files
  (:func:`read_ilsvrc`, module :mod:`camlens.data.ilsvrc`).
* ``"wsol"``: the metadata of Choe et al., "Evaluating Weakly Supervised Object Localization Methods
  Right", CVPR 2020 (github.com/clovaai/wsolevaluation): ``image_ids.txt``, ``class_labels.txt``,
  ``localization.txt`` and optionally ``image_sizes.txt`` (:func:`read_wsol_metadata`, :mod:`camlens.data.wsol`).
* ``"csv"``: ``path,class,x0,y0,x1,y1``, one row per box (:func:`read_csv`, :mod:`camlens.data.csvfile`).

:func:`open_dataset` tells them apart (:mod:`camlens.data.detect`). :class:`ImageDataset` turns a set into model
inputs for a ``torch.utils.data.DataLoader`` (resize without crop, as :func:`camlens.data.images.preprocess` does;
:mod:`camlens.data.loader`). The data model is :mod:`camlens.data.samples`; the one image loader is
:func:`camlens.data.images.load_image` (also ``camlens.zoo.load_image``).

Box convention (the one used everywhere in camlens): float64 ``[x0, y0, x1, y1)``, 0-based and
END-EXCLUSIVE, in pixels of the image as stored in the file (a box covering the whole W x H image is
``[0, 0, W, H)``). Each reader converts its format's convention to this one and says how.

Images are read as stored: EXIF orientation is deliberately NOT applied (``upright=False``), because box
annotations (ImageNet's XML, wsolevaluation's metadata, which its own loader reads with a plain
``PIL.Image.open``) are given in the stored pixel grid. Annotation XML is untrusted input too: entity
declarations are refused (no "billion laughs").

Every problem raises :class:`DatasetError` whose message starts with ``file:line:`` and ends with what to
do about it.

Examples:
    >>> data = open_dataset("ILSVRC/Data/CLS-LOC/val", labels="val_labels.txt", classes="LOC_synset_mapping.txt")
    >>> loader = torch.utils.data.DataLoader(ImageDataset(data), batch_size=32, num_workers=2, collate_fn=collate)
    >>> for images, indices in loader: ...  # data[int(i)].boxes are the ground truth of images[k]
"""

from camlens.data.csvfile import read_csv
from camlens.data.detect import open_dataset
from camlens.data.ilsvrc import read_ilsvrc
from camlens.data.loader import Batch, ImageDataset, Skipped, collate, load_masks
from camlens.data.samples import DatasetError, LocalizationSet, Sample
from camlens.data.wsol import read_wsol_metadata

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
