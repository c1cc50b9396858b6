"""Boxes from maps by the CAM paper's protocol (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization", sec. 3.1).

"We segment the regions of which the value is above 20% of the max value of the CAM. Then we take the
bounding box that covers the largest connected component in the segmentation map."

Conventions used everywhere in camlens:

* A box is ``[x0, y0, x1, y1)``: 0-based, END-EXCLUSIVE, in pixels, so a box covering only pixel
  (row 3, col 5) is ``[5, 3, 6, 4]`` and its area is ``(x1 - x0) * (y1 - y0)``.
* "Above" is strict: a pixel belongs to the region when ``value > threshold * max``. This is the
  paper's wording and the ``cv2.THRESH_BINARY`` rule (``src > thresh``) of the wsolevaluation reference
  code (Choe et al., CVPR 2020), and it makes ``threshold=0`` mean "the positive part of the map".
* Connected components are 8-connected (a pixel touches its 8 neighbours), as the outer contours of
  ``cv2.findContours`` in the reference code. The largest component is the one with the most pixels
  (ties: the first in raster order); the reference code ranks contours by ``cv2.contourArea``, the area
  of the polygon through the boundary pixels' centres, which can differ for thin or ragged shapes.

Example:
    >>> cam = resize_map(exp.maps[0, 0], size=(image.height, image.width))  # map in image pixels
    >>> boxes_from_map(cam, 0.2)  # (1, 4) array: the CAM paper's box, in original-image pixels
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = ["box_from_map", "boxes_from_map", "components", "iou", "resize_map"]

_MODES = ("largest", "all")
# 8-connectivity in the plane (the CAM paper's "connected component"; cv2's outer contours).
_EIGHT = np.ones((3, 3), dtype=bool)


def _as_map(cam: Any, name: str = "cam") -> np.ndarray:
    """A (H, W) finite float numpy map from a numpy array or a tensor (float32 stays float32)."""
    if isinstance(cam, torch.Tensor):
        cam = cam.detach().cpu().numpy()
    m = np.asarray(cam)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a (H, W) map, got shape {m.shape}; pass one map at a time")
    if m.dtype == bool or not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
        raise TypeError(f"{name}: expected a real-valued map, got dtype {m.dtype}")
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float64)
    if m.size and not np.isfinite(m).all():
        raise ValueError(f"{name}: the map has NaN or infinite values; fix the method or the input first")
    return m


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be a fraction of the map's max in [0, 1], got {threshold}")
    return t


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return mode


def _boxes_of_labels(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [x0, y0, x1, y1) (count, 4) and pixel counts (count,) of labels 1..count in a (H, W) image."""
    slices = ndimage.find_objects(labels, max_label=count)
    boxes = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices], dtype=np.float64)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return boxes.reshape(-1, 4), sizes


def boxes_from_map(cam: torch.Tensor | np.ndarray, threshold: float = 0.2, mode: str = "largest") -> np.ndarray:
    """Boxes of the 8-connected regions where ``cam > threshold * cam.max()`` (Zhou et al. 2016, sec. 3.1).

    Args:
        cam: (H, W) map, any scale and sign (numpy array or tensor).
        threshold: fraction of the map's maximum; the CAM paper uses 0.2.
        mode: ``"largest"``: the box of the component with the most pixels (the CAM paper's protocol);
            ``"all"``: one box per component (the "multi-contour" boxes of MaxBoxAccV2, Choe et al. 2020),
            largest component first, ties in raster order.

    Returns:
        (n, 4) float64 array of END-EXCLUSIVE boxes [x0, y0, x1, y1) in the map's pixels; an empty (0, 4)
        array when the map's maximum is not positive (nothing to localise) or no pixel is above the
        threshold (``threshold=1``).

    Example:
        >>> cam = np.zeros((6, 8)); cam[1:3, 2:5] = 1.0
        >>> boxes_from_map(cam)
        array([[2., 1., 5., 3.]])
    """
    m = _as_map(cam)
    t = _check_threshold(threshold)
    _check_mode(mode)
    peak = float(m.max()) if m.size else 0.0
    if not peak > 0:
        return np.zeros((0, 4), dtype=np.float64)
    labels, count = ndimage.label(m > t * peak, structure=_EIGHT)
    if count == 0:
        return np.zeros((0, 4), dtype=np.float64)
    boxes, sizes = _boxes_of_labels(labels, count)
    if mode == "largest":
        k = int(np.argmax(sizes))  # argmax takes the first of equal sizes: raster order
        return boxes[k : k + 1]
    return boxes[np.argsort(-sizes, kind="stable")]


def box_from_map(cam: torch.Tensor | np.ndarray, threshold: float = 0.2) -> tuple[int, int, int, int] | None:
    """Bounding box [x0, y0, x1, y1) of the largest connected region above ``threshold`` x max.

    The CAM paper's box (see :func:`boxes_from_map` with ``mode="largest"``) as a tuple of ints, in the
    map's pixels, end-exclusive. ``None`` for a map whose maximum is not positive (nothing to localise).
    """
    boxes = boxes_from_map(cam, threshold, mode="largest")
    if len(boxes) == 0:
        return None
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    return x0, y0, x1, y1


def components(mask: np.ndarray | torch.Tensor) -> list[np.ndarray]:
    """8-connected components of a boolean (H, W) mask, each as an (N, 2) array of (row, col).

    Components come in raster order of their first pixel; the pixels of each in raster order.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a (H, W) boolean mask, got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=_EIGHT)
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    order = inside[np.argsort(flat[inside], kind="stable")]  # stable: raster order within a component
    rows, cols = np.unravel_index(order, mask.shape)
    pixels = np.stack([rows, cols], axis=1)
    counts = np.bincount(flat[inside], minlength=count + 1)[1:]
    return list(np.split(pixels, np.cumsum(counts)[:-1])) if count else []


def resize_map(cam: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``size = (H, W)`` (e.g. the original image's), as float64 numpy.

    Half-pixel-centre sampling (``align_corners=False``), the convention of ``torch.nn.functional.interpolate``,
    PIL and ``cv2.INTER_LINEAR``, and the one :attr:`camlens.Explanation.maps` uses to upsample. Give
    ``(image.height, image.width)`` for a PIL image (whose ``.size`` is (W, H)). The wsolevaluation reference
    resizes with ``cv2.INTER_CUBIC`` instead; bilinear never overshoots the input's range.

    Args:
        cam: (..., h, w) map(s), numpy array or tensor.
        size: output (H, W) in pixels.

    Returns:
        (..., H, W) float64 array.

    Example:
        >>> cam = resize_map(exp.maps[0, 0], size=(375, 500))
        >>> boxes_from_map(cam)  # boxes in the 500x375 image's pixels
    """
    if isinstance(size, (int, np.integer)) or len(size) != 2:
        raise ValueError(f"size must be (H, W), got {size!r}")
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive (H, W), got {size!r}")
    x = cam.detach().cpu() if isinstance(cam, torch.Tensor) else torch.from_numpy(np.asarray(cam))
    if x.ndim < 2:
        raise ValueError(f"cam: expected a (..., h, w) map, got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"cam: expected a real-valued map, got dtype {x.dtype}")
    from camlens.geometry import resize

    return resize(x.to(torch.float64), (height, width)).numpy().copy()


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1) boxes: one entry of
    :func:`camlens.metrics.localization.box_iou`, the one IoU of camlens."""
    from camlens.metrics.localization import box_iou

    return float(box_iou(np.asarray([a], dtype=np.float64), np.asarray([b], dtype=np.float64))[0, 0])
