"""The one path from a low-resolution map to original-image pixels and a box.

Every consumer (``camlens explain``, :meth:`camlens.Explanation.boxes` / ``overlay``, ``camlens
evaluate``, ``camlens bench wsol``, the report) goes through :func:`original_maps` and
:func:`box`, so the box ``explain`` prints is the box ``evaluate`` scores.

The path, following the CAM authors' ILSVRC script (``ILSVRC_generate_heatmap.m``: the class map is
resized to the original image and divided by its maximum; negative values do not survive the 8-bit
heatmap it writes) and the CAM paper, sec. 3.1 ("we segment the regions of which the value is above
20% of the max value of the CAM"):

1. ReLU of the method's raw map at the layer's resolution (NaN and inf count as 0);
2. bilinear resize (``align_corners=False``), straight from the layer's grid to the photo's
   (H0, W0): the preprocessing is a plain resize of the whole photo (:class:`Geometry`), so the
   layer's grid spans the photo exactly;
3. division by the map's maximum: values in [0, 1], where ``threshold`` means a fraction of the max
   (an all-zero map stays zero);
4. the box: the largest 8-connected region above ``threshold`` (default 0.2), its bounding box
   ``[x0, y0, x1, y1)`` in original pixels (:func:`box_from_map`).

Where we depart: the authors resize with MATLAB's ``imresize`` (bicubic, which overshoots and can
go negative near edges); we resize bilinearly, which stays within the map's range. Choe et al.'s
MaxBoxAcc / MaxBoxAccV2 / PxAP sweeps min-max normalise the same map before their thresholds
(:mod:`camlens.metrics.localization`), as their paper does; :attr:`camlens.Explanation.maps` is a
min-max view at the model input's resolution, for display and the input-perturbation metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torchvision.ops import box_iou as _pairwise_iou

__all__ = [
    "Geometry",
    "box",
    "box_from_map",
    "box_iou",
    "boxes_from_map",
    "components",
    "iou",
    "original_maps",
    "resize",
    "resize_map",
]


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) maps -> (..., H, W): THE map resizer of camlens (bilinear, half-pixel centres).

    ``align_corners=False`` is the convention of PIL, ``cv2.INTER_LINEAR`` and the CAM authors'
    ``imresize``; bilinear never overshoots the input's range. The dtype is kept (float64 stays
    float64); integer maps become float32.
    """
    if maps.dim() < 2:
        raise ValueError(f"maps: expected (..., h, w), got shape {tuple(maps.shape)}")
    lead, (h, w) = tuple(maps.shape[:-2]), tuple(maps.shape[-2:])
    x = maps if maps.is_floating_point() else maps.float()
    x = x.reshape(-1, 1, h, w)
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *x.shape[-2:])


def original_maps(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) raw maps -> (..., H, W) float32 maps in [0, 1] at ``size``: ReLU, bilinear, / max.

    Maps are resized one at a time, so K maps of a 50-megapixel photo never need K photo-sized
    temporaries at once. See the module docstring for the protocol and its source.
    """
    if raw.dim() < 2:
        raise ValueError(f"raw: expected (..., h, w) maps, got shape {tuple(raw.shape)}")
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be a positive (H, W), got {size!r}")
    lead = tuple(raw.shape[:-2])
    flat = raw.detach().reshape(-1, *raw.shape[-2:])
    out = torch.empty((flat.shape[0], height, width), dtype=torch.float32, device=raw.device)
    for i, m in enumerate(flat):
        positive = m.float().nan_to_num(0.0, 0.0, 0.0).clamp_(min=0)
        up = resize(positive, (height, width))
        peak = float(up.max())
        out[i] = up.div_(peak) if peak > 0 else up.zero_()
    return out.reshape(*lead, height, width)


def box(cam: torch.Tensor | np.ndarray, threshold: float = 0.2) -> list[int] | None:
    """The CAM paper's box of a map from :func:`original_maps`: ``[x0, y0, x1, y1)`` or ``None``.

    The largest 8-connected region where ``cam > threshold * max(cam)``; ``None`` when nothing is
    positive.
    """
    found = box_from_map(cam, threshold)
    return None if found is None else list(found)


# ---------------------------------------------------------------------------------------------- boxes
#
# Conventions used everywhere in camlens:
#
# * A box is ``[x0, y0, x1, y1)``: 0-based, END-EXCLUSIVE, in pixels, so a box covering only pixel
#   (row 3, col 5) is ``[5, 3, 6, 4]`` and its area is ``(x1 - x0) * (y1 - y0)``.
# * "Above" is strict: a pixel belongs to the region when ``value > threshold * max``: the CAM paper's
#   wording and the ``cv2.THRESH_BINARY`` rule (``src > thresh``) of the wsolevaluation reference code
#   (Choe et al., CVPR 2020); ``threshold=0`` means "the positive part of the map".
# * Connected components are 8-connected, as the outer contours of ``cv2.findContours`` in the reference
#   code. The largest component is the one with the most pixels (ties: the first in raster order); the
#   reference code ranks contours by ``cv2.contourArea``, which can differ for thin or ragged shapes.

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

    Examples:
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

    Examples:
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
    return resize(x.to(torch.float64), (height, width)).numpy().copy()


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1) boxes: one entry of :func:`box_iou`."""
    return float(box_iou(np.asarray([a], dtype=np.float64), np.asarray([b], dtype=np.float64))[0, 0])


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_boxes(boxes: Any, name: str) -> np.ndarray:
    """(N, 4) float64 end-exclusive boxes with x1 >= x0 and y1 >= y0."""
    b = _to_numpy(boxes).astype(np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name}: expected (N, 4) boxes [x0, y0, x1, y1), got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name}: boxes have NaN or infinite coordinates")
    bad = np.flatnonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))
    if len(bad):
        raise ValueError(
            f"{name}: box {bad[0]} = {b[bad[0]].tolist()} has x1 < x0 or y1 < y0; boxes are [x0, y0, x1, y1) "
            "(corners, not x, y, width, height)"
        )
    return b


def box_iou(a: Any, b: Any) -> np.ndarray:
    """Pairwise intersection over union of END-EXCLUSIVE boxes [x0, y0, x1, y1), vectorised.

    ``IoU = |A n B| / (|A| + |B| - |A n B|)`` with ``|A| = (x1 - x0) * (y1 - y0)`` (no ``+ 1``: the
    wsolevaluation reference adds 1 to every side because it treats x1, y1 as inclusive). For
    end-exclusive integer boxes the pixel count of a box is exactly that continuous area, so the IoU is
    ``torchvision.ops.box_iou``'s, computed by it in float64. Boxes of zero area have IoU 0 with
    everything (two of them: 0, where torchvision's 0 / 0 gives NaN).

    Args:
        a: (N, 4) boxes (a single (4,) box is taken as (1, 4)).
        b: (M, 4) boxes.

    Returns:
        (N, M) float64 array of IoUs in [0, 1].

    Examples:
        >>> box_iou([[0, 0, 2, 2]], [[1, 0, 3, 2], [5, 5, 6, 6]])
        array([[0.33333333, 0.        ]])
    """
    a, b = _check_boxes(a, "a"), _check_boxes(b, "b")
    iou = _pairwise_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    return np.nan_to_num(iou, nan=0.0)  # 0 / 0: both boxes empty


@dataclass(frozen=True)
class Geometry:
    """How a photo of ``original`` (H0, W0) became a model input of ``size`` (H, W): a plain resize.

    A crop or a letterbox would add fields here and change :meth:`to_original`; every consumer would
    follow, since none maps pixels by itself.
    """

    original: tuple[int, int]
    size: tuple[int, int]

    def to_original(self, raw: torch.Tensor) -> torch.Tensor:
        """(..., h, w) raw maps (any resolution: the layer's, or the input's for pixel methods) ->
        (..., H0, W0) maps in [0, 1] on the photo (:func:`original_maps`)."""
        return original_maps(raw, self.original)

    def boxes(self, raw: torch.Tensor, threshold: float = 0.2) -> list[list[int] | None]:
        """One CAM-paper box per raw map (flattened over the leading dims), in original pixels."""
        flat = raw.reshape(-1, *raw.shape[-2:])
        return [box(self.to_original(m), threshold) for m in flat]

    def map_to_original(self, maps: torch.Tensor) -> torch.Tensor:
        """(..., H, W) maps at the input's resolution -> (..., H0, W0), bilinear, clamped to [0, 1].

        For maps already at the input's resolution (``Explanation.maps``); raw maps should go through
        :meth:`to_original`, the path boxes are computed on.
        """
        return resize(maps.float(), self.original).clamp_(0, 1)

    def box_to_original(self, box: tuple[int, int, int, int]) -> list[int]:
        """[x0, y0, x1, y1) in input pixels -> the smallest box covering the same region in original pixels."""
        sy, sx = self.original[0] / self.size[0], self.original[1] / self.size[1]
        x0, y0, x1, y1 = box
        return [
            int(np.floor(x0 * sx)),
            int(np.floor(y0 * sy)),
            min(self.original[1], int(np.ceil(x1 * sx))),
            min(self.original[0], int(np.ceil(y1 * sy))),
        ]
