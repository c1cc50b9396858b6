"""Weakly-supervised object localisation (WSOL) metrics: boxes and masks from class activation maps.

Two protocols are implemented, each as its paper defines it:

* **CAM paper** (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016,
  sec. 3.1 and Table 2, following the ILSVRC rules of Russakovsky et al., IJCV 2015, sec. 4): one box
  per image, from the map thresholded at 20% of its max (largest 8-connected component, see
  :mod:`camlens.geometry`). Top-1 localisation is correct when the top-1 class is the label AND the box
  has IoU >= 0.5 with some ground-truth box; top-5 when the label is among the top-5 classes AND the
  box of the label's map has IoU >= 0.5. GT-known localisation drops the class condition.
* **Choe et al.**, "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020, sec. 4
  (MaxBoxAcc, PxAP), and "Evaluation for Weakly Supervised Object Localization: Protocol, Metrics, and
  Datasets", TPAMI 2022 (MaxBoxAccV2): the map is min-max normalised and thresholded at
  every ``tau`` of a grid; BoxAcc(tau, delta) is the fraction of images whose box at ``tau`` has
  IoU >= delta with some ground-truth box. MaxBoxAcc = max over tau of BoxAcc(tau, 0.5) with the box of
  the largest component; MaxBoxAccV2 = mean over delta in {0.3, 0.5, 0.7} of max over tau of BoxAcc,
  where an image counts when ANY component's box matches ANY ground-truth box ("multi-contour").
  PxAP (for masks) is the area under the pixel precision-recall curve over the same grid.

Differences from the wsolevaluation reference code (clovaai/wsolevaluation, ``evaluation.py``), which is
the definition most WSOL numbers are computed with:

* It thresholds a ``uint8`` copy of the map (``uint8(map * 255) > int(tau * 255)``, truncating both), so
  a grid finer than 1/255 (its interval is 0.01 or 0.001 depending on the entry point) has at most 256
  distinct levels; we compare the float map with the float threshold (``map > tau``), a real threshold
  resolution.
* Its boxes are mixed-convention: ``cv2.boundingRect`` gives end-exclusive ``x + w``, which is then
  clipped to ``width - 1`` and scored by an IoU that treats boxes as inclusive (``+ 1`` on each side), so
  a predicted box is one pixel too wide and too tall except where it touches the right or bottom border.
  Ground-truth boxes are rescaled to 224 x 224 with ``int()`` truncation. We keep every box END-EXCLUSIVE
  ``[x0, y0, x1, y1)`` in original-image pixels and compute areas as ``(x1 - x0) * (y1 - y0)``.
* It ranks components by ``cv2.contourArea`` (polygon area; 0 for a one-pixel-wide line) and, in
  multi-contour mode, also boxes the contours of holes (``RETR_TREE``); we rank by pixel count and box
  each 8-connected component once (a hole's box lies inside its component's box, so "any box matches"
  differs only when the hole's box alone matches a ground-truth box).
* A map with no pixel above the threshold yields the box ``[0, 0, 0, 0]`` there (a one-pixel box at the
  corner under its inclusive IoU); we yield no box, which never matches.
* Maps are resized with ``cv2.INTER_CUBIC`` to 224 x 224 there; here the caller passes maps at the
  original image size (:func:`camlens.geometry.resize_map`, bilinear).

Examples:
    >>> meter = LocalizationMeter()
    >>> for cam, boxes, label, top5 in samples:  # cam: the label's map at the image's size
    ...     meter.add(cam, boxes, label, top5)
    >>> meter.compute()["maxboxacc_v2"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from camlens.geometry import _as_map, _check_boxes, _check_mode, _to_numpy, box_iou, boxes_from_map

__all__ = ["LocalizationMeter", "box_iou", "boxes_at_thresholds"]

# The CAM paper's / ILSVRC's IoU criterion for a correct box.
_LOC_IOU = 0.5


def _minmax(m: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] in float64; a (near-)constant map becomes all zeros.

    As wsolevaluation's ``normalize_scoremap`` (constant -> zeros) and :func:`camlens.normalize_maps`
    (a range within 16 ulps of the magnitude counts as constant, so rounding noise is not amplified).
    """
    if m.size == 0:
        raise ValueError("cam: the map is empty")
    low, high = float(m.min()), float(m.max())
    eps = np.finfo(m.dtype).eps if np.issubdtype(m.dtype, np.floating) else np.finfo(np.float64).eps
    if not high - low > 16 * eps * max(abs(high), abs(low)):
        return np.zeros(m.shape, dtype=np.float64)
    return (m.astype(np.float64) - low) / (high - low)


def _check_thresholds(thresholds: Any, increasing: bool = False) -> np.ndarray:
    t = _to_numpy(thresholds).astype(np.float64)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"thresholds: expected a non-empty 1-D sequence, got shape {t.shape}")
    if not (np.isfinite(t).all() and (t >= 0).all() and (t <= 1).all()):
        raise ValueError("thresholds: each must be a fraction of the normalised map in [0, 1]")
    if increasing and not (np.diff(t) > 0).all():
        raise ValueError("cam_thresholds: must be strictly increasing, e.g. np.arange(100) / 100")
    return t


def _expand(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, value)``: for each i, ``count[i]`` entries ``first[i], first[i] + 1, ...`` owned by i, vectorised."""
    owner = np.repeat(np.arange(len(count)), count)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
    return owner, first[owner] + offset


def _sweep(m: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All component boxes of ``m > t`` for every t of ``thresholds`` at once, from the runs of every row.

    The 8-connected components of every threshold come from ONE connected-components call on a graph of row
    runs (the run-based labelling of Rosenfeld & Pfaltz, "Sequential operations in digital picture
    processing", JACM 1966, done for all thresholds together):

    1. each pixel's level: how many (sorted) thresholds lie below its value, so it is in the mask of the
       k-th smallest threshold iff ``k < level`` (the masks are nested);
    2. the runs of every mask in every row, all thresholds at once: at a boundary of a row where the level
       steps up from a to b, a run starts for every k in [a, b); where it steps down from b to a, one ends.
       Generated in raster order and stably sorted by k, starts and ends pair up;
    3. a run touches a run of the next row of the same threshold (8-connectivity) when their columns
       overlap or meet at a corner: found by two ``searchsorted`` over the sorted runs;
    4. ``scipy.sparse.csgraph.connected_components`` on the run graph; each component's box, pixel count
       and first pixel in raster order are reductions over its runs.

    The cost grows with the number of runs (for a smooth map about rows x thresholds x components), not with
    thresholds x pixels as one labelling per threshold does: on a 500 x 375 upsampled CAM with 100 thresholds,
    18 ms instead of 250-450 ms (``benchmarks/bench_evaluate.py``). ``tests/test_localization.py`` keeps the
    labelling per threshold (``scipy.ndimage.label``) as the oracle and requires identical boxes in identical
    order.

    Returns the boxes (N, 4) float64 grouped by threshold in the order of ``thresholds`` and, within a
    threshold, largest component first (ties in raster order of their first pixel, the order in which
    ``ndimage.label`` numbers them), and the number of boxes per threshold (T,).
    """
    n_t = len(thresholds)
    order = np.argsort(thresholds, kind="stable")
    height, width = m.shape
    level = np.searchsorted(thresholds[order], m, side="left")
    level[np.isnan(m)] = 0  # NaN is above no threshold
    small = np.int16 if n_t < 2**15 else np.int64  # int16: numpy's stable sort is a radix sort
    padded = np.zeros((height, width + 2), dtype=small)
    padded[:, 1:-1] = level
    left, right = padded[:, :-1], padded[:, 1:]  # (H, W + 1): the levels either side of column boundary x
    up_row, up_x = np.nonzero(right > left)
    down_row, down_x = np.nonzero(left > right)
    low = left[up_row, up_x].astype(np.int64)
    up_owner, up_k = _expand(low, right[up_row, up_x] - low)
    low = right[down_row, down_x].astype(np.int64)
    down_owner, down_k = _expand(low, left[down_row, down_x] - low)
    by_k = np.argsort(up_k.astype(small), kind="stable")
    k, starts = up_k[by_k], up_owner[by_k]
    row, start = up_row[starts], up_x[starts]
    end = down_x[down_owner[np.argsort(down_k.astype(small), kind="stable")]]
    if len(k) == 0:
        return np.zeros((0, 4), dtype=np.float64), np.zeros(n_t, dtype=np.int64)
    # runs sorted by (k, row, start); in the next row of the same k, the runs with end >= start and
    # start <= end touch this one (their columns overlap or meet diagonally)
    stride = width + 2
    group = (k * height + row) * stride
    below = group + stride  # (k, row + 1)
    first = np.searchsorted(group + end, below + start, side="left")
    last = np.searchsorted(group + start, below + end, side="right")
    count = np.where(row < height - 1, np.maximum(last - first, 0), 0)
    src, dst = _expand(first, count)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(len(k), len(k)))
    label = connected_components(graph, directed=False)[1]
    by = np.argsort(label, kind="stable")
    cuts = np.flatnonzero(np.r_[True, label[by][1:] != label[by][:-1]])
    which = order[k[by][cuts]]  # back to the caller's threshold index
    boxes = np.stack(
        [
            np.minimum.reduceat(start[by], cuts),
            np.minimum.reduceat(row[by], cuts),
            np.maximum.reduceat(end[by], cuts),
            np.maximum.reduceat(row[by], cuts) + 1,
        ],
        1,
    )
    size = np.add.reduceat((end - start)[by], cuts)
    first_pixel = np.minimum.reduceat((row * width + start)[by], cuts)
    ranked = np.lexsort((first_pixel, -size, which))
    return boxes[ranked].astype(np.float64), np.bincount(which, minlength=n_t)


def boxes_at_thresholds(cam: Any, thresholds: Any, mode: str = "all") -> list[np.ndarray]:
    """Boxes of the min-max-normalised map at many thresholds at once (Choe et al., CVPR 2020).

    The map is normalised to [0, 1] (a constant map becomes zeros), and at each threshold ``t`` the
    8-connected components of ``map > t`` are boxed, as :func:`camlens.geometry.boxes_from_map` does for
    one threshold. All thresholds are labelled at once, by one connected-components call on the runs of
    every row of every mask (``_sweep``), instead of one labelling per threshold. Float maps, float thresholds: no
    ``uint8`` quantisation (unlike the reference's cv2 path), so close thresholds give different boxes.

    Args:
        cam: (H, W) map, any scale and sign.
        thresholds: (T,) fractions in [0, 1] of the normalised map.
        mode: ``"all"`` (every component, largest first) or ``"largest"`` (at most one box per threshold).

    Returns:
        A list of T float64 arrays (n_t, 4) of END-EXCLUSIVE boxes [x0, y0, x1, y1) in the map's pixels;
        (0, 4) where nothing is above the threshold.

    Examples:
        >>> boxes_at_thresholds(cam, np.arange(100) / 100)[20]  # the boxes at 20% of the range
    """
    m = _minmax(_as_map(cam))
    t = _check_thresholds(thresholds)
    _check_mode(mode)
    boxes, per_threshold = _sweep(m, t)
    groups = np.split(boxes, np.cumsum(per_threshold)[:-1])
    return [g[:1] for g in groups] if mode == "largest" else groups


def _check_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    m = _to_numpy(mask)
    if m.shape != shape:
        raise ValueError(f"{name}: shape {m.shape} differs from the map's {shape}; resize it to the image size")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(
                f"{name}: expected a boolean mask (or 0/1 values), got values {np.unique(m)[:5].tolist()}...; "
                "pass regions to leave out (wsolevaluation's 255) as a separate boolean ignore= mask"
            )
        m = m.astype(bool)
    return m


def _iou_name(delta: float) -> str:
    return f"{round(delta * 100):d}"


class LocalizationMeter:
    """Accumulates the CAM paper's and Choe et al.'s localisation metrics over a data set, one image at a time.

    For each image give the map of its GROUND-TRUTH class at the original image size (e.g.
    ``camlens.geometry.original_maps(exp.raw[i, k], (H, W))`` with ``targets=labels``: ReLU, resized,
    divided by its max), its ground-truth boxes in original-image pixels (END-EXCLUSIVE [x0, y0, x1, y1)),
    its label and the model's predicted classes, best first. Two normalisations, each where its paper
    uses it:

    * CAM paper / ILSVRC (Zhou et al. 2016, Table 2; Russakovsky et al. 2015, sec. 4): one box from the
      map as given at ``box_threshold`` x its MAX (largest component, :func:`camlens.geometry.boxes_from_map`;
      the box :meth:`camlens.Explanation.boxes` and ``camlens explain`` give);
      ``loc_ok`` = its IoU with some ground-truth box is >= 0.5.

      - top-1 loc error: wrong unless ``top-1 == label`` and ``loc_ok``;
      - top-k loc error: wrong unless ``label in top-k`` and ``loc_ok``; the box of the label's map is the
        only one that can be correct (a box of another class never counts), so the label's map suffices;
      - GT-known loc accuracy: ``loc_ok`` alone (the class is taken as known);
      - top-1 / top-k classification errors.
    * Choe et al., CVPR 2020 and TPAMI 2022 (definitions of wsolevaluation's ``BoxEvaluator``): the map
      is MIN-MAX normalised, and for each threshold tau of ``cam_thresholds`` every 8-connected
      component of ``map > tau`` is boxed.

      - ``maxboxacc``: max over tau of the fraction of images whose LARGEST component's box has
        IoU >= 0.5 with some ground-truth box (MaxBoxAcc, the CVPR 2020 version);
      - ``maxboxacc_v2_{30,50,70}``: max over tau of the fraction of images where ANY component's box has
        IoU >= delta with ANY ground-truth box; ``maxboxacc_v2``: their mean (MaxBoxAccV2). The best tau
        is chosen separately per delta, as in the reference.
      - ``pxap`` (only when masks were given): pixel average precision, the area under the
        precision-recall curve of the pixel classifier ``map >= tau`` against the foreground mask, pixels
        pooled over all images: ``sum_i P(tau_i) * (R(tau_i) - R(tau_{i+1}))`` over the thresholds in
        decreasing order plus the top point tau = 1 (the map's maximum), with R = 0 above it; points with
        no positive prediction are skipped. As the reference, it uses ``>=`` (its histogram bins are
        closed on the left), accumulates histograms of map values on foreground and background pixels
        (here with ``np.bincount``), and leaves ignored pixels out of the background (never out of the
        foreground).

    ``compute()`` gives percentages (``n`` is a count, ``*_best_threshold`` a fraction of the normalised
    map; ties pick the lowest threshold). With the default grid (k / 100) and ``box_threshold=0.2``, for a
    map whose minimum is 0 the largest-box accuracy at tau = 0.2 equals ``gt_known_loc_acc``, and then
    ``maxboxacc >= gt_known_loc_acc``.

    Args:
        iou_thresholds: the deltas of MaxBoxAccV2, as fractions.
        cam_thresholds: the tau grid, strictly increasing in [0, 1]; default ``np.arange(100) / 100``
            (the reference's ``np.arange(0, 1, 0.01)``, computed so each value is the double nearest k / 100).
        box_threshold: the CAM paper's fraction of the max for the single box (0.2 in the paper).
        topk: k of the top-k errors (keys ``top{k}_cls_err`` and ``top{k}_loc_err``).

    Attributes:
        per_image: one dict per image added: ``index`` (order of addition), ``key`` (what ``add`` got),
            ``label``, ``pred`` (top-1), ``iou`` (best IoU of the CAM-paper box with a ground-truth box),
            ``box`` (that box as an int tuple in image pixels, or None), ``cls_correct`` (top-1),
            ``loc_correct`` (top-1 localisation), ``gt_known`` (IoU >= 0.5). Use it to pick examples.

    Examples:
        >>> meter = LocalizationMeter()
        >>> meter.add(cam, [[10, 20, 110, 90]], label=3, topk_pred=[3, 7, 1, 0, 2])
        >>> meter.compute()["top1_loc_err"]
    """

    def __init__(
        self,
        iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
        cam_thresholds: Any = None,
        box_threshold: float = 0.2,
        topk: int = 5,
    ) -> None:
        deltas = tuple(float(d) for d in iou_thresholds)
        if not deltas:
            raise ValueError("iou_thresholds: give at least one, e.g. (0.3, 0.5, 0.7)")
        for d in deltas:
            if not 0.0 < d <= 1.0:
                raise ValueError(f"iou_thresholds: {d} is not in (0, 1]; give fractions (0.5, not 50)")
        if len({_iou_name(d) for d in deltas}) != len(deltas):
            raise ValueError(f"iou_thresholds: {deltas} repeat a value (to the percent)")
        self.iou_thresholds = deltas
        grid = np.arange(100) / 100 if cam_thresholds is None else cam_thresholds
        self.cam_thresholds = _check_thresholds(grid, increasing=True)
        self.box_threshold = float(box_threshold)
        if not 0.0 <= self.box_threshold <= 1.0:
            raise ValueError(f"box_threshold must be in [0, 1], got {box_threshold}")
        if int(topk) != topk or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        self.topk = int(topk)
        # PxAP operating points: the thresholds plus the top point 1.0 (the pixels at the map's max).
        self._edges = self.cam_thresholds if self.cam_thresholds[-1] >= 1.0 else np.append(self.cam_thresholds, 1.0)
        self.reset()

    def reset(self) -> None:
        """Forget every image added."""
        self.n = 0
        self._top1_cls = 0
        self._topk_cls = 0
        self._top1_loc = 0
        self._topk_loc = 0
        self._gt_known = 0
        t = len(self.cam_thresholds)
        self._largest_correct = np.zeros(t, dtype=np.int64)
        self._any_correct = np.zeros((len(self.iou_thresholds), t), dtype=np.int64)
        self._n_masks = 0
        self._fg_hist = np.zeros(len(self._edges) + 1, dtype=np.int64)
        self._bg_hist = np.zeros(len(self._edges) + 1, dtype=np.int64)
        self.per_image: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return self.n

    def add(
        self,
        cam: Any,
        gt_boxes: Any,
        label: int,
        topk_pred: Sequence[int] | Any,
        mask: Any = None,
        *,
        ignore: Any = None,
        key: Any = None,
    ) -> None:
        """Add one image.

        Args:
            cam: (H, W) map of the ground-truth class at the original image size, any scale.
            gt_boxes: (n, 4) ground-truth boxes [x0, y0, x1, y1) in image pixels, END-EXCLUSIVE (a VOC/ILSVRC
                XML box with inclusive 1-based xmin..xmax is ``[xmin - 1, ymin - 1, xmax, ymax]``); n >= 1.
            label: ground-truth class id.
            topk_pred: predicted class ids, best first, at least ``topk`` of them.
            mask: optional (H, W) boolean foreground mask, for PxAP.
            ignore: optional (H, W) boolean mask of pixels to leave out of PxAP's background.
            key: anything identifying the image (path, id), stored in ``per_image``.
        """
        m = _minmax(_as_map(cam))
        gt = _check_boxes(gt_boxes, "gt_boxes")
        if len(gt) == 0:
            raise ValueError("gt_boxes: the image has no ground-truth box; leave it out or give its boxes")
        preds = [int(p) for p in _to_numpy(topk_pred).ravel()]
        if len(preds) < self.topk:
            raise ValueError(f"topk_pred: need at least topk={self.topk} predicted classes, got {len(preds)}")
        label = int(label)

        # CAM paper: one box at box_threshold x the map's max (not min-max: camlens.geometry); the
        # threshold sweeps below use Choe et al.'s min-max normalised map
        box = boxes_from_map(_as_map(cam), self.box_threshold, mode="largest")
        best = float(box_iou(box, gt).max()) if len(box) else 0.0
        loc_ok = best >= _LOC_IOU
        cls_ok = preds[0] == label
        self._top1_cls += cls_ok
        self._topk_cls += label in preds[: self.topk]
        self._top1_loc += cls_ok and loc_ok
        self._topk_loc += label in preds[: self.topk] and loc_ok
        self._gt_known += loc_ok

        # Choe et al.: every component at every threshold, one labelling call.
        boxes, per_threshold = _sweep(m, self.cam_thresholds)
        t = len(self.cam_thresholds)
        largest_iou, any_iou = np.zeros(t), np.zeros(t)
        if len(boxes):
            ious = box_iou(boxes, gt).max(axis=1)
            starts = np.cumsum(per_threshold) - per_threshold
            has = per_threshold > 0
            largest_iou[has] = ious[starts[has]]  # the largest component comes first in each group
            any_iou[has] = np.maximum.reduceat(ious, starts[has])
        self._largest_correct += largest_iou >= _LOC_IOU
        self._any_correct += any_iou[None, :] >= np.asarray(self.iou_thresholds)[:, None]

        if mask is not None:
            self._histogram(m, mask, ignore)
        elif ignore is not None:
            raise ValueError("ignore= is only used with mask= (PxAP); give the foreground mask too")

        self.per_image.append(
            {
                "index": self.n,
                "key": key,
                "label": label,
                "pred": preds[0],
                "iou": best,
                "box": tuple(int(v) for v in box[0]) if len(box) else None,
                "cls_correct": cls_ok,
                "loc_correct": cls_ok and loc_ok,
                "gt_known": loc_ok,
            }
        )
        self.n += 1

    @property
    def n_masks(self) -> int:
        """Images that contributed a foreground mask (to PxAP)."""
        return self._n_masks

    def add_mask(self, cam: Any, mask: Any, *, ignore: Any = None) -> None:
        """Add one image annotated by a mask only (no box, e.g. wsolevaluation's OpenImages): PxAP only.

        Box metrics do not count it; :meth:`compute` reports PxAP over every mask given, here or to :meth:`add`.
        """
        self._histogram(_minmax(_as_map(cam)), mask, ignore)

    def _histogram(self, m: np.ndarray, mask: Any, ignore: Any) -> None:
        fg = _check_mask(mask, m.shape, "mask")
        bg = ~fg
        if ignore is not None:
            bg &= ~_check_mask(ignore, m.shape, "ignore")
        level = np.searchsorted(self._edges, m, side="right")  # number of thresholds <= value
        self._fg_hist += np.bincount(level[fg], minlength=len(self._edges) + 1)
        self._bg_hist += np.bincount(level[bg], minlength=len(self._edges) + 1)
        self._n_masks += 1

    def update(
        self,
        cams: Any,
        gt_boxes: Sequence[Any],
        labels: Any,
        topk_preds: Any,
        masks: Sequence[Any] | None = None,
        *,
        ignores: Sequence[Any] | None = None,
        keys: Sequence[Any] | None = None,
    ) -> None:
        """Add a batch: ``cams`` (B, H, W) or a sequence of B maps (images of different sizes), one entry per
        image in ``gt_boxes``, ``labels`` (B,), ``topk_preds`` (B, k), and optionally ``masks``, ``ignores``,
        ``keys`` (each a sequence of B, entries may be None)."""
        cams = list(cams)
        b = len(cams)
        labels = _to_numpy(labels).ravel().tolist()
        preds = _to_numpy(topk_preds)
        if preds.ndim != 2:
            raise ValueError(f"topk_preds: expected (B, k) predicted class ids, got shape {preds.shape}")
        lists = {"gt_boxes": gt_boxes, "labels": labels, "topk_preds": preds}
        lists.update({name: v for name, v in (("masks", masks), ("ignores", ignores), ("keys", keys)) if v is not None})
        for name, values in lists.items():
            if len(values) != b:
                raise ValueError(f"{name}: {len(values)} entries for a batch of {b} maps")
        for i in range(b):
            self.add(
                cams[i],
                gt_boxes[i],
                labels[i],
                preds[i],
                None if masks is None else masks[i],
                ignore=None if ignores is None else ignores[i],
                key=None if keys is None else keys[i],
            )

    def merge(self, other: LocalizationMeter) -> LocalizationMeter:
        """Add ``other``'s images to this meter (e.g. from another worker); returns self.

        Both must have the same settings. ``other``'s ``per_image`` records are appended with their
        ``index`` shifted by this meter's count, as if its images had been added after this meter's.
        """
        if not isinstance(other, LocalizationMeter):
            raise TypeError(f"merge: expected a LocalizationMeter, got {type(other).__name__}")
        same = (
            self.iou_thresholds == other.iou_thresholds
            and np.array_equal(self.cam_thresholds, other.cam_thresholds)
            and self.box_threshold == other.box_threshold
            and self.topk == other.topk
        )
        if not same:
            raise ValueError("merge: the meters differ in iou_thresholds, cam_thresholds, box_threshold or topk")
        self._top1_cls += other._top1_cls
        self._topk_cls += other._topk_cls
        self._top1_loc += other._top1_loc
        self._topk_loc += other._topk_loc
        self._gt_known += other._gt_known
        self._largest_correct += other._largest_correct
        self._any_correct += other._any_correct
        self._n_masks += other._n_masks
        self._fg_hist += other._fg_hist
        self._bg_hist += other._bg_hist
        self.per_image.extend({**r, "index": r["index"] + self.n} for r in other.per_image)
        self.n += other.n
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything added so far as plain Python values (JSON-ready: ints, lists, the ``per_image`` records),
        for :meth:`load_state_dict`; the settings are not included (give the same ones to the new meter)."""
        return {
            "n": self.n,
            "counts": [self._top1_cls, self._topk_cls, self._top1_loc, self._topk_loc, self._gt_known, self._n_masks],
            "largest_correct": self._largest_correct.tolist(),
            "any_correct": self._any_correct.tolist(),
            "fg_hist": self._fg_hist.tolist(),
            "bg_hist": self._bg_hist.tolist(),
            "per_image": [{**r, "box": None if r["box"] is None else list(r["box"])} for r in self.per_image],
        }

    def load_state_dict(self, state: dict[str, Any]) -> LocalizationMeter:
        """Replace this meter's images by those of ``state`` (from :meth:`state_dict` of a meter with the same
        settings); returns self. Used to resume and to merge evaluations run in several processes."""
        largest = np.asarray(state["largest_correct"], dtype=np.int64)
        counts = np.asarray(state["any_correct"], dtype=np.int64)
        fg, bg = np.asarray(state["fg_hist"], dtype=np.int64), np.asarray(state["bg_hist"], dtype=np.int64)
        if largest.shape != self._largest_correct.shape or counts.shape != self._any_correct.shape:
            raise ValueError("load_state_dict: the state was saved by a meter with other cam or IoU thresholds")
        if fg.shape != self._fg_hist.shape or bg.shape != self._bg_hist.shape:
            raise ValueError("load_state_dict: the state was saved by a meter with other cam thresholds")
        self.n = int(state["n"])
        (self._top1_cls, self._topk_cls, self._top1_loc, self._topk_loc, self._gt_known, self._n_masks) = (
            int(c) for c in state["counts"]
        )
        self._largest_correct, self._any_correct, self._fg_hist, self._bg_hist = largest, counts, fg, bg
        self.per_image = [{**r, "box": None if r["box"] is None else tuple(r["box"])} for r in state["per_image"]]
        return self

    def curves(self) -> dict[str, np.ndarray]:
        """Box accuracy (percent) at every cam threshold: ``thresholds`` (T,), ``boxacc`` (T,) for the
        largest box at IoU 0.5, and ``boxacc_v2_{delta}`` (T,) for all boxes (Choe et al. 2020, Fig. 5)."""
        if self.n == 0:
            raise ValueError("no images added yet: call add() or update() first")
        out = {"thresholds": self.cam_thresholds.copy(), "boxacc": 100.0 * self._largest_correct / self.n}
        for d, row in zip(self.iou_thresholds, self._any_correct):
            out[f"boxacc_v2_{_iou_name(d)}"] = 100.0 * row / self.n
        return out

    def _pxap(self) -> float:
        # tp[i] / fp[i]: foreground / background pixels with value >= edges[i] (suffix sums of the histograms).
        tp = np.cumsum(self._fg_hist[::-1])[::-1][1:].astype(np.float64)
        fp = np.cumsum(self._bg_hist[::-1])[::-1][1:].astype(np.float64)
        positives = self._fg_hist.sum()
        if positives == 0:
            return float("nan")  # no foreground pixel: recall is undefined
        recall = tp / positives
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        gain = recall - np.append(recall[1:], 0.0)  # recall grows as the threshold decreases
        return float(100.0 * np.sum((precision * gain)[predicted > 0]))

    def compute(self) -> dict[str, float]:
        """The metrics so far, in percent (see the class docstring for each definition).

        With mask-only images alone (:meth:`add_mask`), only ``pxap`` and ``n_masks``."""
        if self.n == 0 and self._n_masks:
            return {"pxap": self._pxap(), "n_masks": float(self._n_masks)}
        if self.n == 0:
            raise ValueError("no images added yet: call add() or update() first")
        n, k = self.n, self.topk
        curves = self.curves()
        result: dict[str, float] = {
            "n": float(n),
            "top1_cls_err": 100.0 * (1 - self._top1_cls / n),
            f"top{k}_cls_err": 100.0 * (1 - self._topk_cls / n),
            "top1_loc_err": 100.0 * (1 - self._top1_loc / n),
            f"top{k}_loc_err": 100.0 * (1 - self._topk_loc / n),
            "gt_known_loc_acc": 100.0 * self._gt_known / n,
        }
        best = int(np.argmax(curves["boxacc"]))
        result["maxboxacc"] = float(curves["boxacc"][best])
        result["maxboxacc_best_threshold"] = float(self.cam_thresholds[best])
        per_delta = []
        for d in self.iou_thresholds:
            name = f"maxboxacc_v2_{_iou_name(d)}"
            acc = curves[f"boxacc_v2_{_iou_name(d)}"]
            best = int(np.argmax(acc))
            result[name] = float(acc[best])
            result[f"{name}_best_threshold"] = float(self.cam_thresholds[best])
            per_delta.append(acc[best])
        result["maxboxacc_v2"] = float(np.mean(per_delta))
        if self._n_masks:
            result["pxap"] = self._pxap()
            result["n_masks"] = float(self._n_masks)
        return result
