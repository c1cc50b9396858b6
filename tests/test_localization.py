"""Boxes from maps (camlens.localize) and localisation metrics (camlens.metrics.localization).

Every expected box and metric below is worked out by hand in the comment next to it. Boxes are
END-EXCLUSIVE [x0, y0, x1, y1): a blob over rows 1..2 and columns 2..4 is [2, 1, 5, 3].
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camlens.localize import box_from_map, boxes_from_map, components, iou, resize_map
from camlens.metrics import localization as loc
from camlens.metrics.localization import LocalizationMeter, box_iou, boxes_at_thresholds

EMPTY = np.zeros((0, 4))
GRID = np.arange(100) / 100


def two_blobs() -> np.ndarray:
    # A: rows 1..2, cols 1..2 at 1.0 (4 px);  B: rows 4..6, cols 5..8 at 0.5 (12 px).
    cam = np.zeros((8, 10))
    cam[1:3, 1:3] = 1.0
    cam[4:7, 5:9] = 0.5
    return cam


# ---------------------------------------------------------------- boxes_from_map


def test_one_blob():
    cam = np.zeros((6, 8))
    cam[1:3, 2:5] = 1.0  # rows 1..2, cols 2..4
    np.testing.assert_array_equal(boxes_from_map(cam), [[2, 1, 5, 3]])
    np.testing.assert_array_equal(boxes_from_map(cam, mode="all"), [[2, 1, 5, 3]])
    assert box_from_map(cam) == (2, 1, 5, 3)
    assert boxes_from_map(cam).dtype == np.float64


def test_two_blobs_largest_vs_all():
    cam = two_blobs()
    # At 0.2 x max = 0.2 both blobs are above; B has 12 px > A's 4 px, although A holds the max.
    np.testing.assert_array_equal(boxes_from_map(cam, 0.2), [[5, 4, 9, 7]])
    # "all": largest first.
    np.testing.assert_array_equal(boxes_from_map(cam, 0.2, mode="all"), [[5, 4, 9, 7], [1, 1, 3, 3]])
    # At 0.6 x max = 0.6 only A (1.0) is above.
    np.testing.assert_array_equal(boxes_from_map(cam, 0.6, mode="all"), [[1, 1, 3, 3]])
    assert box_from_map(cam, 0.6) == (1, 1, 3, 3)


def test_diagonal_pixels_are_one_component():
    # (0, 0) and (1, 1) touch by a corner: one 8-connected component.
    cam = np.zeros((4, 4))
    cam[0, 0] = cam[1, 1] = 1.0
    np.testing.assert_array_equal(boxes_from_map(cam, mode="all"), [[0, 0, 2, 2]])
    # (0, 0) and (0, 2) do not touch: two components of 1 px, raster order on the tie.
    cam = np.zeros((4, 4))
    cam[0, 0] = cam[0, 2] = 1.0
    np.testing.assert_array_equal(boxes_from_map(cam, mode="all"), [[0, 0, 1, 1], [2, 0, 3, 1]])
    np.testing.assert_array_equal(boxes_from_map(cam), [[0, 0, 1, 1]])


def test_blob_touching_the_border():
    # rows 2..4, cols 3..5 of a 5 x 6 map: the box ends at the map's height and width (end-exclusive).
    # (wsolevaluation would give [3, 2, 5, 4] there: x + w clipped to width - 1, then read as inclusive.)
    cam = np.zeros((5, 6))
    cam[2:5, 3:6] = 1.0
    np.testing.assert_array_equal(boxes_from_map(cam), [[3, 2, 6, 5]])
    full = np.ones((3, 4))
    np.testing.assert_array_equal(boxes_from_map(full), [[0, 0, 4, 3]])


def test_all_zero_and_all_negative_maps_have_no_box():
    for cam in (np.zeros((5, 5)), -np.ones((5, 5))):
        assert boxes_from_map(cam).shape == (0, 4)
        assert boxes_from_map(cam, mode="all").shape == (0, 4)
        assert box_from_map(cam) is None


def test_map_with_negative_values():
    # -1 background, a 2x2 blob at 2.0 and one pixel at 0.3.
    cam = -np.ones((6, 6))
    cam[2:4, 2:4] = 2.0
    cam[0, 0] = 0.3
    # 0.2 x max = 0.4: 0.3 is not above, -1 never is.
    np.testing.assert_array_equal(boxes_from_map(cam, 0.2, mode="all"), [[2, 2, 4, 4]])
    # 0.1 x max = 0.2: the 0.3 pixel joins as its own component (1 px < 4 px).
    np.testing.assert_array_equal(boxes_from_map(cam, 0.1, mode="all"), [[2, 2, 4, 4], [0, 0, 1, 1]])
    # threshold 0: "the positive part of the map".
    np.testing.assert_array_equal(boxes_from_map(cam, 0.0, mode="all"), [[2, 2, 4, 4], [0, 0, 1, 1]])


def test_threshold_exactly_at_a_value_is_not_above():
    # max 1.0 at (1, 1); 0.25 at (1, 2); 0.5 at (2, 1). All values and products are exact in binary.
    cam = np.zeros((4, 4))
    cam[1, 1], cam[1, 2], cam[2, 1] = 1.0, 0.25, 0.5
    # threshold 0.25: 0.25 > 0.25 is false, 0.5 is in: rows 1..2, col 1.
    np.testing.assert_array_equal(boxes_from_map(cam, 0.25), [[1, 1, 2, 3]])
    # threshold 0.5: only the max.
    np.testing.assert_array_equal(boxes_from_map(cam, 0.5), [[1, 1, 2, 2]])
    # just below 0.25: all three.
    np.testing.assert_array_equal(boxes_from_map(cam, 0.24), [[1, 1, 3, 3]])
    # threshold 1: nothing is above the max.
    assert boxes_from_map(cam, 1.0).shape == (0, 4)
    # the scale of the map does not matter (threshold x max): x 8 is exact.
    np.testing.assert_array_equal(boxes_from_map(8 * cam, 0.25), [[1, 1, 2, 3]])


def test_tensor_input_and_float32():
    cam = two_blobs()
    np.testing.assert_array_equal(boxes_from_map(torch.tensor(cam, dtype=torch.float32)), boxes_from_map(cam))
    assert box_from_map(torch.tensor(cam)) == (5, 4, 9, 7)


def test_bad_arguments():
    cam = two_blobs()
    with pytest.raises(ValueError, match="mode"):
        boxes_from_map(cam, mode="biggest")
    with pytest.raises(ValueError, match="threshold"):
        boxes_from_map(cam, 20)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        boxes_from_map(cam[None])
    bad = cam.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        boxes_from_map(bad)


def test_components():
    mask = np.array(
        [
            [1, 0, 0, 1],
            [0, 1, 0, 1],
            [0, 0, 0, 0],
        ],
        dtype=bool,
    )
    # (0,0)-(1,1) joined diagonally; (0,3)-(1,3) joined vertically. Raster order of first pixels.
    parts = components(mask)
    assert len(parts) == 2
    np.testing.assert_array_equal(parts[0], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(parts[1], [[0, 3], [1, 3]])
    assert components(np.zeros((3, 3), dtype=bool)) == []


# ---------------------------------------------------------------- resize_map


def test_resize_map_by_hand_and_box_in_image_pixels():
    # 2x2 -> 4x4, half-pixel centres: output i samples input (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25,
    # clamped to [0, 1], so the weight of input index 1 along each axis is w = [0, 0.25, 0.75, 1].
    # With input [[0, 0], [0, 1]] the output is the outer product w_y w_x.
    w = np.array([0, 0.25, 0.75, 1])
    out = resize_map(np.array([[0.0, 0.0], [0.0, 1.0]]), (4, 4))
    np.testing.assert_allclose(out, np.outer(w, w), atol=1e-12)
    # Above 0.2: row 1 has 0.25 at col 3; row 2 0.5625, 0.75 at cols 2, 3; row 3 0.25, 0.75, 1 at cols 1..3
    # (0.1875 is below): one component, rows 1..3, cols 1..3.
    np.testing.assert_array_equal(boxes_from_map(out), [[1, 1, 4, 4]])


def test_resize_map_to_a_500x375_image():
    # 2x2 map with its max in the bottom-right cell, resized to H=375, W=500.
    # x weight of column 1: (j + 0.5) * 2 / 500 - 0.5, > 0.2 from j = 175 (0.202; j = 174 gives 0.198).
    # y weight of row 1:    (i + 0.5) * 2 / 375 - 0.5, > 0.2 from i = 131 (0.2013; i = 130 gives 0.196).
    # The bottom-right pixels have weight 1 along the other axis, so the box is [175, 131, 500, 375).
    out = resize_map(torch.tensor([[0.0, 0.0], [0.0, 1.0]]), (375, 500))
    assert out.shape == (375, 500) and out.dtype == np.float64
    np.testing.assert_array_equal(boxes_from_map(out), [[175, 131, 500, 375]])


def test_resize_map_matches_pil_bilinear_upsampling():
    from PIL import Image

    cam = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    ours = resize_map(cam, (40, 50))
    pil = np.asarray(Image.fromarray(cam, mode="F").resize((50, 40), Image.BILINEAR))
    np.testing.assert_allclose(ours, pil, atol=1e-5)


def test_resize_map_leading_dims_and_errors():
    cams = np.random.default_rng(1).random((2, 3, 5, 5))
    out = resize_map(cams, (10, 12))
    assert out.shape == (2, 3, 10, 12)
    np.testing.assert_allclose(out[1, 2], resize_map(cams[1, 2], (10, 12)))
    np.testing.assert_array_equal(resize_map(cams[0, 0], (5, 5)), cams[0, 0])
    with pytest.raises(ValueError, match="size"):
        resize_map(cams[0, 0], (10,))
    with pytest.raises(ValueError, match="size"):
        resize_map(cams[0, 0], (0, 4))


# ---------------------------------------------------------------- box_iou


def test_box_iou_by_hand():
    a = [[0, 0, 2, 2], [0, 0, 4, 4]]  # 4 px and 16 px
    b = [
        [0, 0, 2, 2],  # a[0]: identical -> 1;            a[1]: inside, 4/16
        [1, 0, 3, 2],  # a[0]: 1x2 = 2 px, 2/(4+4-2) = 1/3; a[1]: inside, 4/16
        [5, 5, 6, 6],  # disjoint from both -> 0
        [2, 0, 4, 2],  # a[0]: touches along x = 2, no pixel in common (end-exclusive) -> 0; a[1]: inside, 4/16
        [1, 1, 3, 3],  # a[0]: pixel (1, 1), 1/(4+4-1) = 1/7; a[1]: contained, 4/16
        [1, 1, 1, 3],  # zero width: IoU 0 with everything
    ]
    expected = [[1, 1 / 3, 0, 0, 1 / 7, 0], [1 / 4, 1 / 4, 0, 1 / 4, 1 / 4, 0]]
    got = box_iou(a, b)
    assert got.shape == (2, 6)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # the scalar helper agrees
    for i, box_a in enumerate(a):
        for j, box_b in enumerate(b):
            assert iou(tuple(box_a), tuple(box_b)) == pytest.approx(got[i, j])
    # one (4,) box is one row; empty inputs give empty matrices
    np.testing.assert_allclose(box_iou([0, 0, 2, 2], [1, 0, 3, 2]), [[1 / 3]])
    assert box_iou(EMPTY, b).shape == (0, 6)
    assert box_iou(a, EMPTY).shape == (2, 0)


def test_box_iou_rejects_bad_boxes():
    with pytest.raises(ValueError, match="x1 < x0"):
        box_iou([[3, 0, 1, 2]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou([[0, 0, 1]], [[0, 0, 1, 1]])


def test_box_iou_counts_pixels():
    # end-exclusive integer boxes: the IoU is the IoU of the pixel sets, counted on a 70 x 70 grid
    rng = np.random.default_rng(3)
    xy = rng.integers(0, 50, size=(2, 30, 2))
    wh = rng.integers(0, 20, size=(2, 30, 2))
    boxes = np.concatenate([xy, xy + wh], axis=2)

    def pixels(box):
        mask = np.zeros((70, 70), dtype=bool)
        mask[box[1] : box[3], box[0] : box[2]] = True
        return mask

    masks = [[pixels(b) for b in side] for side in boxes]
    counted = np.array(
        [[(p & q).sum() / max((p | q).sum(), 1) for q in masks[1]] for p in masks[0]]  # empty | empty: IoU 0
    )
    np.testing.assert_allclose(box_iou(boxes[0], boxes[1]), counted, rtol=0, atol=1e-15)
    # two empty boxes, even the same one: 0, not 0 / 0
    np.testing.assert_array_equal(box_iou([[1, 1, 1, 3], [4, 4, 4, 4]], [[1, 1, 1, 3]]), [[0.0], [0.0]])
    # real-valued boxes: [0, 0, 1.5, 2) and [0.5, 0, 2, 2) overlap 1 x 2 = 2 of 3 + 3 - 2 = 4
    assert box_iou([0, 0, 1.5, 2], [0.5, 0, 2, 2])[0, 0] == 0.5


def test_reference_convention_differs_by_one_pixel():
    # A perfect 3x3 box: ours scores IoU 1. wsolevaluation reads cv2's x + w (end-exclusive) as inclusive
    # and the ground truth as inclusive: pred [1, 1, 4, 4] covers 4x4 = 16 px, gt [1, 1, 3, 3] 3x3 = 9 px,
    # intersection 9: IoU 9/16 = 0.5625, which fails the 0.7 criterion of MaxBoxAccV2.
    cam = np.zeros((6, 6))
    cam[1:4, 1:4] = 1.0
    box = boxes_from_map(cam)
    np.testing.assert_array_equal(box, [[1, 1, 4, 4]])
    assert box_iou(box, [[1, 1, 4, 4]])[0, 0] == 1.0

    def inclusive_iou(a, b):  # the reference's formula, + 1 on each side
        iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
        return iw * ih / (area(a) + area(b) - iw * ih)

    assert inclusive_iou([1, 1, 4, 4], [1, 1, 3, 3]) == 9 / 16


# ---------------------------------------------------------------- boxes_at_thresholds


def test_boxes_at_thresholds_by_hand():
    # two_blobs normalised: A = 1.0, B = 0.5, background 0 (min 0, max 1: unchanged).
    got = boxes_at_thresholds(two_blobs(), [0.0, 0.4, 0.5, 0.99], mode="all")
    np.testing.assert_array_equal(got[0], [[5, 4, 9, 7], [1, 1, 3, 3]])  # 0.5 > 0 and 1 > 0; B larger
    np.testing.assert_array_equal(got[1], [[5, 4, 9, 7], [1, 1, 3, 3]])
    np.testing.assert_array_equal(got[2], [[1, 1, 3, 3]])  # 0.5 > 0.5 is false
    np.testing.assert_array_equal(got[3], [[1, 1, 3, 3]])
    largest = boxes_at_thresholds(two_blobs(), [0.0, 0.4, 0.5, 0.99], mode="largest")
    assert [b.tolist() for b in largest] == [[[5, 4, 9, 7]], [[5, 4, 9, 7]], [[1, 1, 3, 3]], [[1, 1, 3, 3]]]
    # min-max normalisation: shifting and scaling the map changes nothing (x 4 - 3 is exact here).
    shifted = boxes_at_thresholds(4 * two_blobs() - 3, [0.0, 0.4, 0.5, 0.99], mode="all")
    for a, b in zip(got, shifted):
        np.testing.assert_array_equal(a, b)
    # a constant map has no box at any threshold (wsolevaluation's normalize_scoremap makes it zeros)
    assert all(b.shape == (0, 4) for b in boxes_at_thresholds(np.full((4, 4), 3.0), GRID))


def test_float_threshold_resolution():
    # A pixel at 0.501 of the range. wsolevaluation quantises it to uint8 127 and compares with
    # int(t * 255) = 127 for t = 0.499, 0.5, 0.5005, 0.501: "127 > 127" excludes it at all four. On float
    # maps it is above the first three and not above 0.501.
    cam = np.zeros((3, 3))
    cam[0, 0], cam[2, 2] = 1.0, 0.501
    got = boxes_at_thresholds(cam, [0.499, 0.5, 0.5005, 0.501])
    assert [len(b) for b in got] == [2, 2, 2, 1]


def naive_sweep(cam: np.ndarray, thresholds: np.ndarray, mode: str) -> list[np.ndarray]:
    m = loc._minmax(cam)
    return [boxes_from_map(m, t, mode) for t in thresholds]


@pytest.mark.parametrize("seed", range(4))
def test_boxes_at_thresholds_equals_a_loop_per_threshold(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    maps = [
        rng.standard_normal((23, 31)),  # noise: many small components
        ndimage.gaussian_filter(rng.standard_normal((48, 40)), 3),  # smooth blobs
        resize_map(np.maximum(rng.standard_normal((7, 7)), 0), (56, 64)),  # an upsampled ReLU CAM
    ]
    unsorted = np.concatenate([rng.random(30), [0.0, 0.5, 0.5]])  # any order, duplicates
    for cam in maps:
        for thresholds in (GRID, unsorted):
            for mode in ("all", "largest"):
                got = boxes_at_thresholds(cam, thresholds, mode)
                want = naive_sweep(cam, thresholds, mode)
                assert len(got) == len(thresholds)
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g, w)


def _label_stack(m, thresholds, crop):
    """The sweep as camlens computed it before the run graph (one ``ndimage.label`` per cropped stack of
    thresholds, 8-connected inside a slice only): the oracle of :func:`loc._sweep`, boxes AND their order."""
    from scipy import ndimage

    y0, y1, x0, x1 = crop
    slice_eight = np.zeros((3, 3, 3), dtype=bool)
    slice_eight[1] = True
    stack = m[None, y0:y1, x0:x1] > thresholds[:, None, None]
    labels, count = ndimage.label(stack, structure=slice_eight)
    if count == 0:
        return np.zeros((0, 5), dtype=np.int64), np.zeros(0, dtype=np.int64)
    found = np.array(
        [(s[0].start, s[2].start, s[1].start, s[2].stop, s[1].stop) for s in ndimage.find_objects(labels, count)],
        dtype=np.int64,
    )
    found[:, [1, 3]] += x0
    found[:, [2, 4]] += y0
    return found, np.bincount(labels[stack], minlength=count + 1)[1:]


def labelled_sweep(m, thresholds, budget=2**20):
    order = np.argsort(thresholds, kind="stable")
    ts = thresholds[order]
    rows = m.max(axis=1)[None, :] > ts[:, None]
    cols = m.max(axis=0)[None, :] > ts[:, None]
    height, width = m.shape
    y0, y1 = rows.argmax(axis=1), height - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), width - cols[:, ::-1].argmax(axis=1)
    area = np.where(rows.any(axis=1), (y1 - y0) * (x1 - x0), 0)
    found, sizes = [np.zeros((0, 5), dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    i = 0
    while i < len(ts) and area[i] > 0:
        j = i + 1
        while j < len(ts) and 2 * area[j] > area[i] and j - i < max(1, budget // int(area[i])):
            j += 1
        f, s = _label_stack(m, ts[i:j], (int(y0[i]), int(y1[i]), int(x0[i]), int(x1[i])))
        f[:, 0] = order[f[:, 0] + i]
        found.append(f)
        sizes.append(s)
        i = j
    rows_all, size = np.concatenate(found), np.concatenate(sizes)
    ranked = np.lexsort((-size, rows_all[:, 0]))
    return rows_all[ranked, 1:].astype(np.float64), np.bincount(rows_all[:, 0], minlength=len(thresholds))


@pytest.mark.parametrize("seed", range(3))
def test_sweep_equals_the_labelling_per_threshold_stack(seed):
    # identical boxes in identical order (largest first, ties in raster order) on noise (many one-pixel
    # ties), few-valued maps (plateaus exactly at thresholds), smooth blobs and upsampled CAMs, for the
    # default grid and unsorted thresholds with duplicates
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    for _ in range(10):
        maps = [
            rng.standard_normal((23, 31)),
            rng.integers(0, 3, (9, 11)).astype(float),
            ndimage.gaussian_filter(rng.standard_normal((48, 40)), 3),
            resize_map(np.maximum(rng.standard_normal((7, 7)), 0), (75, 100)),
        ]
        for cam in maps:
            m = loc._minmax(cam)
            for thresholds in (GRID, np.concatenate([rng.random(30), [0.0, 0.5, 0.5, 1.0]])):
                got, got_count = loc._sweep(m, thresholds)
                want, want_count = labelled_sweep(m, thresholds, budget=int(rng.integers(1, 5000)))
                np.testing.assert_array_equal(got, want)
                np.testing.assert_array_equal(got_count, want_count)


def test_sweep_of_an_empty_mask_and_a_nan():
    m = np.zeros((4, 5))
    boxes, count = loc._sweep(m, GRID)
    assert boxes.shape == (0, 4) and count.sum() == 0
    m[1, 2], m[2, 3], m[0, 0] = 1.0, np.nan, 0.5  # NaN is above no threshold: (2, 1) and (0, 0) alone
    boxes, count = loc._sweep(m, np.array([0.4, 0.9]))
    np.testing.assert_array_equal(boxes, [[0, 0, 1, 1], [2, 1, 3, 2], [2, 1, 3, 2]])
    np.testing.assert_array_equal(count, [2, 1])


# ---------------------------------------------------------------- LocalizationMeter


def four_images() -> list[dict]:
    """Four 10x10 images with piecewise-constant maps whose values are dyadic (exact in float32, and under
    the tests' x 3 - 1), so no map value lands a rounding error away from a k/100 threshold."""
    # 1: label 3, top-1 right. Map: block rows 2..5, cols 2..5 (16 px) at 1. GT [2, 2, 6, 8) (24 px).
    #    The block is the only component at every t in [0, 0.99]: IoU 16/24 = 0.667 (>= 0.5, < 0.7).
    cam1 = np.zeros((10, 10))
    cam1[2:6, 2:6] = 1.0
    # 2: label 0, top-1 wrong (1), label second. Map: block rows/cols 0..3 at 1, inside a halo
    #    rows/cols 0..5 at 0.125. GT [0, 0, 4, 4). For t <= 0.12 (13 thresholds) the box is the halo's
    #    [0, 0, 6, 6): IoU 16/36 = 0.444; for t >= 0.13 the block's: IoU 1.
    cam2 = np.zeros((10, 10))
    cam2[0:6, 0:6] = 0.125
    cam2[0:4, 0:4] = 1.0
    # 3: label 2, top-1 right. Two GT boxes [0, 0, 3, 3) and [7, 7, 10, 10). Map: blob a rows/cols 0..2
    #    at 0.5 (9 px, IoU 1 with the first GT), blob b rows/cols 5..9 at 1.0 (25 px; with the second GT
    #    9/25 = 0.36). t < 0.5: both, b largest; t >= 0.5: b alone.
    cam3 = np.zeros((10, 10))
    cam3[0:3, 0:3] = 0.5
    cam3[5:10, 5:10] = 1.0
    # 4: label 5, not in the top-5. All-zero map: no box anywhere.
    cam4 = np.zeros((10, 10))
    return [
        {"cam": cam1, "gt": [[2, 2, 6, 8]], "label": 3, "top5": [3, 1, 2, 4, 5]},
        {"cam": cam2, "gt": [[0, 0, 4, 4]], "label": 0, "top5": [1, 0, 2, 3, 4]},
        {"cam": cam3, "gt": [[0, 0, 3, 3], [7, 7, 10, 10]], "label": 2, "top5": [2, 0, 1, 3, 4]},
        {"cam": cam4, "gt": [[1, 1, 5, 5]], "label": 5, "top5": [7, 8, 9, 1, 2]},
    ]


# Worked out from four_images():
#   classification: top-1 right for 1, 3 -> 50% error; label in top-5 for 1, 2, 3 -> 25% error.
#   CAM-paper box at 0.2: 1 -> block, IoU 0.667 ok; 2 -> block (0.125 is not above 0.2), IoU 1 ok;
#     3 -> b (largest), IoU 0.36 not ok; 4 -> none.
#     top-1 loc: only 1 (2 has the wrong top-1) -> 75% error; top-5 loc: 1 and 2 -> 50% error;
#     GT-known: 1 and 2 -> 50%.
#   MaxBoxAcc (largest box, IoU >= 0.5): 1 at every t, 2 for t >= 0.13, 3 never (0.36), 4 never
#     -> 50% first reached at t = 0.13.
#   MaxBoxAccV2, any box:
#     delta 0.3: 1 always (0.667), 2 always (0.444 or 1), 3 always (a: 1 for t < 0.5; b: 0.36 after) -> 75% at 0.
#     delta 0.5: 1 always, 2 for t >= 0.13, 3 for t < 0.5 (only a matches) -> 75% in [0.13, 0.5), first 0.13.
#     delta 0.7: 1 never (0.667), 2 for t >= 0.13, 3 for t < 0.5 -> 50% at 0.13.
#     mean (75 + 75 + 50) / 3 = 66.67.
EXPECTED = {
    "n": 4.0,
    "top1_cls_err": 50.0,
    "top5_cls_err": 25.0,
    "top1_loc_err": 75.0,
    "top5_loc_err": 50.0,
    "gt_known_loc_acc": 50.0,
    "maxboxacc": 50.0,
    "maxboxacc_best_threshold": 0.13,
    "maxboxacc_v2_30": 75.0,
    "maxboxacc_v2_30_best_threshold": 0.0,
    "maxboxacc_v2_50": 75.0,
    "maxboxacc_v2_50_best_threshold": 0.13,
    "maxboxacc_v2_70": 50.0,
    "maxboxacc_v2_70_best_threshold": 0.13,
    "maxboxacc_v2": 200 / 3,
}


def check_expected(result: dict[str, float]) -> None:
    assert set(result) == set(EXPECTED)  # no pxap without masks
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


def test_meter_by_hand():
    meter = LocalizationMeter()
    for i, im in enumerate(four_images()):
        meter.add(im["cam"], im["gt"], im["label"], im["top5"], key=f"img{i}")
    check_expected(meter.compute())
    assert len(meter) == 4

    # the curves behind the maxima: the largest box at t = 0.2 is the CAM paper's box, = GT-known 50%
    curves = meter.curves()
    assert curves["boxacc"][20] == 50.0
    np.testing.assert_array_equal(curves["boxacc"][:13], 25.0)  # t <= 0.12: only image 1
    np.testing.assert_array_equal(curves["boxacc"][13:], 50.0)  # then images 1 and 2
    np.testing.assert_array_equal(curves["boxacc_v2_50"][50:], 50.0)  # t >= 0.5: images 1 and 2

    rec = meter.per_image
    assert [r["index"] for r in rec] == [0, 1, 2, 3]
    assert rec[0]["key"] == "img0" and rec[0]["box"] == (2, 2, 6, 6) and rec[0]["iou"] == pytest.approx(2 / 3)
    assert rec[1] == {
        "index": 1,
        "key": "img1",
        "label": 0,
        "pred": 1,
        "iou": 1.0,
        "box": (0, 0, 4, 4),
        "cls_correct": False,
        "loc_correct": False,
        "gt_known": True,
    }
    assert rec[2]["box"] == (5, 5, 10, 10) and rec[2]["iou"] == pytest.approx(0.36) and not rec[2]["gt_known"]
    assert rec[3]["box"] is None and rec[3]["iou"] == 0.0


def test_meter_largest_box_curve_at_the_box_threshold_is_gt_known():
    # The sweep's largest box at tau = 0.20 (grid index 20) is the CAM-paper box at box_threshold = 0.2.
    from scipy import ndimage

    rng = np.random.default_rng(11)
    meter = LocalizationMeter()
    for _ in range(12):
        # a ReLU'd map (minimum 0), as camlens.geometry.original_maps gives: max and min-max agree
        cam = np.maximum(ndimage.gaussian_filter(rng.standard_normal((30, 40)), 3), 0.0)
        gt = boxes_from_map(loc._minmax(cam), rng.uniform(0.0, 0.7))  # near the 0.2 box or not
        meter.add(cam, gt, 0, [0, 1, 2, 3, 4])
    result = meter.compute()
    assert 0 < result["gt_known_loc_acc"] < 100  # the case is not trivial
    assert meter.curves()["boxacc"][20] == result["gt_known_loc_acc"]
    assert result["maxboxacc"] >= result["gt_known_loc_acc"]


def test_meter_is_invariant_to_the_maps_scale_and_offset():
    meter = LocalizationMeter()
    for im in four_images():
        meter.add(3 * im["cam"] - 1, im["gt"], im["label"], im["top5"])  # dyadic values stay exact
    check_expected(meter.compute())


def test_meter_update_with_tensors_and_merge():
    images = four_images()
    batch = LocalizationMeter()
    batch.update(
        torch.tensor(np.stack([im["cam"] for im in images[:2]]), dtype=torch.float32),
        [im["gt"] for im in images[:2]],
        torch.tensor([im["label"] for im in images[:2]]),
        torch.tensor([im["top5"] for im in images[:2]]),
        keys=["a", "b"],
    )
    rest = LocalizationMeter()
    rest.update(
        [im["cam"] for im in images[2:]],
        [im["gt"] for im in images[2:]],
        [2, 5],
        [images[2]["top5"], images[3]["top5"]],
    )
    batch.merge(rest)
    check_expected(batch.compute())
    assert [r["index"] for r in batch.per_image] == [0, 1, 2, 3]
    assert [r["key"] for r in batch.per_image] == ["a", "b", None, None]
    with pytest.raises(ValueError, match="differ"):
        batch.merge(LocalizationMeter(iou_thresholds=(0.5,)))


def test_meter_state_through_json_and_merged_halves_equal_the_whole():
    import json

    images = four_images()
    whole, halves = LocalizationMeter(), [LocalizationMeter(), LocalizationMeter()]
    for i, im in enumerate(images):
        mask = im["cam"] > 0  # some foreground, so PxAP's histograms travel too
        whole.add(im["cam"], im["gt"], im["label"], im["top5"], mask=mask, key=f"k{i}")
        halves[i // 2].add(im["cam"], im["gt"], im["label"], im["top5"], mask=mask, key=f"k{i}")
    merged = LocalizationMeter()
    for half in halves:
        merged.merge(LocalizationMeter().load_state_dict(json.loads(json.dumps(half.state_dict()))))
    check_expected({k: v for k, v in merged.compute().items() if k not in ("pxap", "n_masks")})
    assert merged.compute() == whole.compute()
    assert merged.per_image == whole.per_image and merged.n_masks == 4
    with pytest.raises(ValueError, match="other cam"):
        LocalizationMeter(cam_thresholds=[0.1, 0.5]).load_state_dict(whole.state_dict())


def test_meter_topk_names_and_errors():
    meter = LocalizationMeter(topk=2)
    im = four_images()[1]  # label 0 is the second prediction
    meter.add(im["cam"], im["gt"], im["label"], im["top5"][:2])
    result = meter.compute()
    assert result["top2_cls_err"] == 0.0 and result["top2_loc_err"] == 0.0 and "top5_cls_err" not in result
    with pytest.raises(ValueError, match="topk"):
        meter.add(im["cam"], im["gt"], im["label"], [1])
    with pytest.raises(ValueError, match="no ground-truth box"):
        meter.add(im["cam"], EMPTY, im["label"], im["top5"])
    with pytest.raises(ValueError, match="fractions"):
        LocalizationMeter(iou_thresholds=(30, 50, 70))
    with pytest.raises(ValueError, match="increasing"):
        LocalizationMeter(cam_thresholds=[0.5, 0.2])
    with pytest.raises(ValueError, match="no images"):
        LocalizationMeter().compute()
    with pytest.raises(ValueError, match="batch of 2"):
        LocalizationMeter().update(np.zeros((2, 4, 4)), [[[0, 0, 1, 1]]], [0, 0], [[0], [0]])


# ---------------------------------------------------------------- PxAP


def pxap_case() -> tuple[np.ndarray, np.ndarray]:
    cam = np.array([[1.0, 0.5, 0.5], [0.25, 0.0, 0.0]])
    fg = np.array([[True, True, False], [True, False, False]])
    return cam, fg


def test_pxap_by_hand():
    # foreground values 1, 0.5, 0.25; background 0.5, 0, 0. Operating points map >= t, t decreasing:
    #   t = 1 (top point) .. 0.51: tp 1, fp 0 -> P 1,   R 1/3   (gain 1/3)
    #   t = 0.50 .. 0.26:          tp 2, fp 1 -> P 2/3, R 2/3   (gain 1/3)
    #   t = 0.25 .. 0.01:          tp 3, fp 1 -> P 3/4, R 1     (gain 1/3)
    #   t = 0:                     tp 3, fp 3 -> P 1/2, R 1     (gain 0)
    # PxAP = 1/3 + 2/9 + 1/4 = 29/36.
    cam, fg = pxap_case()
    meter = LocalizationMeter()
    meter.add(cam, [[0, 0, 2, 2]], 0, [0, 1, 2, 3, 4], mask=fg)
    result = meter.compute()
    assert result["pxap"] == pytest.approx(100 * 29 / 36)
    assert result["n_masks"] == 1.0


def test_pxap_ignore_mask_and_pooling():
    cam, fg = pxap_case()
    # Ignoring the background 0.5 pixel: tp 1, 2, 3 with fp 0 at every point -> P = 1 everywhere, PxAP 100.
    ignore = np.array([[False, False, True], [False, False, False]])
    meter = LocalizationMeter()
    meter.add(cam, [[0, 0, 2, 2]], 0, [0, 1, 2, 3, 4], mask=fg, ignore=ignore)
    assert meter.compute()["pxap"] == pytest.approx(100.0)
    # Ignore never removes foreground (the reference's ignore = ignore box minus foreground).
    meter = LocalizationMeter()
    meter.add(cam, [[0, 0, 2, 2]], 0, [0, 1, 2, 3, 4], mask=fg, ignore=fg)
    assert meter.compute()["pxap"] == pytest.approx(100 * 29 / 36)
    # Pixels pool over images: the same image twice has the same PR curve; an image without a mask does
    # not enter PxAP.
    meter = LocalizationMeter()
    meter.update(
        [cam, cam, cam], [[[0, 0, 2, 2]]] * 3, [0, 0, 0], [[0, 1, 2, 3, 4]] * 3, masks=[fg, fg.astype(np.uint8), None]
    )
    assert meter.compute()["pxap"] == pytest.approx(100 * 29 / 36)
    assert meter.compute()["n_masks"] == 2.0
    with pytest.raises(ValueError, match="boolean"):
        meter.add(cam, [[0, 0, 2, 2]], 0, [0, 1, 2, 3, 4], mask=fg.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="shape"):
        meter.add(cam, [[0, 0, 2, 2]], 0, [0, 1, 2, 3, 4], mask=fg[:1])


def test_pxap_matches_sklearn_when_the_values_are_on_the_grid():
    # Average precision over the distinct scores (sklearn) equals the grid version when every distinct
    # map value is a grid threshold: values k / 20 with the default k / 100 grid.
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    meter = LocalizationMeter()
    scores, truth = [], []
    for _ in range(3):
        cam = rng.integers(0, 21, size=(12, 15)) / 20
        cam[0, 0], cam[0, 1] = 0.0, 1.0  # min 0 and max 1: the normalisation leaves the values alone
        fg = rng.random((12, 15)) < cam  # foreground likelier where the map is high
        meter.add(cam, [[0, 0, 5, 5]], 0, [0, 1, 2, 3, 4], mask=fg)
        scores.append(cam.ravel())
        truth.append(fg.ravel())
    expected = 100 * metrics.average_precision_score(np.concatenate(truth), np.concatenate(scores))
    assert meter.compute()["pxap"] == pytest.approx(expected, abs=1e-9)


def test_mask_only_images_count_for_pxap_alone() -> None:
    # one mask-only image: map [[0.9, 0.1], [0.1, 0.1]] -> min-max [[1, 0], [0, 0]]; foreground = top-left pixel.
    # Every threshold > 0 selects exactly the foreground: precision 1, recall 1 -> PxAP 100.
    meter = LocalizationMeter()
    cam = np.array([[0.9, 0.1], [0.1, 0.1]])
    mask = np.array([[True, False], [False, False]])
    meter.add_mask(cam, mask)
    assert len(meter) == 0 and meter.n_masks == 1
    assert meter.compute() == {"pxap": pytest.approx(100.0), "n_masks": 1.0}
    # a boxed image added afterwards brings the box metrics; PxAP still pools both masks
    meter.add(cam, [[0, 0, 1, 1]], 3, [3, 1, 2, 0, 4], mask=mask)
    result = meter.compute()
    assert result["n"] == 1 and result["n_masks"] == 2 and result["pxap"] == pytest.approx(100.0)
    assert result["top1_loc_err"] == pytest.approx(0.0)


def test_meter_cam_paper_box_is_a_fraction_of_the_max_not_of_the_range():
    # background 0.3, a weak region 0.4, the object 1.0: 20% of the max (0.2) keeps every pixel (the
    # CAM paper's rule); min-max normalisation would keep only the object (its threshold 0.44)
    cam = np.full((4, 8), 0.3)
    cam[:, 2:5] = 1.0
    cam[:, 5:7] = 0.4
    meter = LocalizationMeter()
    meter.add(cam, np.array([[0, 0, 8, 4]]), 0, [0, 1, 2, 3, 4])
    assert meter.per_image[0]["box"] == (0, 0, 8, 4) and meter.per_image[0]["iou"] == 1.0
    # Choe et al.'s sweep min-max normalises: at tau = 0.2 only the object's columns remain
    assert tuple(boxes_from_map(loc._minmax(cam), 0.2)[0]) == (2, 0, 5, 4)
    assert meter.curves()["boxacc"][20] == 0.0  # IoU 12/32 < 0.5 at tau = 0.2 of the range


def test_demo_table_is_identical_with_the_labelling_per_threshold(tmp_path, monkeypatch):
    # the whole evaluate table (every digit) and per-image records on the built-in photos with the real model
    pytest.importorskip("skimage")
    from camlens import zoo
    from camlens.evaluate import demo_dataset, evaluate

    csv = demo_dataset(tmp_path)
    bundle = zoo.load_model()

    def table():
        result = evaluate(bundle, csv, "cam,gradcam", batch_size=4, workers=0, progress=False, examples=0)
        return {m: {k: v for k, v in row.items() if k != "seconds_per_image"} for m, row in result.rows.items()}, (
            result.per_image
        )

    fast = table()
    calls = []
    monkeypatch.setattr(loc, "_sweep", lambda m, t: calls.append(m.shape) or labelled_sweep(m, t))
    assert table() == fast
    assert sorted(calls) == sorted([(300, 451), (400, 600), (427, 640), (500, 741)] * 2)  # 4 photos x 2 methods
