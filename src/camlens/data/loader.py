"""Model inputs of a :class:`LocalizationSet` for a ``torch.utils.data.DataLoader``, and ground-truth masks.

:class:`ImageDataset` reads each image with :func:`camlens.data.images.load_image` in its STORED orientation
(annotations refer to the stored pixel grid) and resizes it without crop; :func:`collate` batches it and lists
the images a ``skip_bad`` data set left out. :func:`load_masks` reads wsolevaluation's mask annotations.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from camlens.data.images import IMAGENET_MEAN, IMAGENET_STD, MAX_PIXELS, load_image, preprocess_with_geometry
from camlens.data.samples import DatasetError, LocalizationSet, Sample
from camlens.geometry import Geometry

__all__ = ["Batch", "ImageDataset", "Skipped", "collate", "load_masks"]


def _read_image(path: Path, max_pixels: int | None = MAX_PIXELS) -> Any:
    """An 8-bit RGB PIL image in its STORED orientation (no EXIF rotation: annotations use the stored grid).

    :func:`camlens.data.images.load_image` reads it (header-checked pixel budget, bombs, 16-bit, RGBA, palette);
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
    """What :func:`collate` returns: the pair ``(images, indices)``, plus the images it left out in ``skipped``
    and, in ``sizes``, each kept image's stored (W, H) (None where unknown), read where it was decoded: a
    DataLoader worker, so the main process need not open the file again."""

    skipped: list[Skipped]
    sizes: list[tuple[int, int] | None]

    def __new__(
        cls,
        images: torch.Tensor,
        indices: torch.Tensor,
        skipped: Sequence[Skipped] = (),
        sizes: Sequence[tuple[int, int] | None] = (),
    ) -> Batch:
        batch = super().__new__(cls, (images, indices))
        batch.skipped = list(skipped)
        batch.sizes = list(sizes) or [None] * len(indices)
        return batch

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers send batches to the main process by pickle
        return (Batch, (self[0], self[1], self.skipped, self.sizes))


class _Item(tuple[torch.Tensor, int]):
    """``(image, index)`` as :class:`ImageDataset` gives it, with the image's stored (W, H) in ``size``."""

    size: tuple[int, int]

    def __new__(cls, image: torch.Tensor, index: int, size: tuple[int, int]) -> _Item:
        item = super().__new__(cls, (image, index))
        item.size = size
        return item

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Item, (self[0], self[1], self.size))


class ImageDataset(Dataset[Union[tuple[torch.Tensor, int], Skipped]]):
    """Model inputs of a :class:`LocalizationSet`: ``(image (3, size, size), index)``.

    Each image is read in its stored orientation, resized WITHOUT cropping to ``size x size`` (bilinear with
    antialiasing, as :func:`camlens.data.images.preprocess`) and normalised with ``mean``/``std``. Because nothing is
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
        return _Item(x[0], index, image.size)

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
    return Batch(images, indices, skipped, [getattr(item, "size", None) for item in kept])


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
