"""Faithfulness metrics (camlens.metrics.faithfulness): hand-worked values, peers, batching, safety.

Most expected numbers come from ``Lin``, a model whose class-0 logit is the weighted pixel sum w . x
(class 1 is a constant 0, so the class-0 softmax probability is sigmoid(w . x)): removing or inserting a
pixel changes the score by exactly its weighted value, so every curve point can be written down.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

import camlens
from camlens.metrics.faithfulness import (
    Curve,
    aggregate_drop_increase,
    average_drop_increase,
    blur_substrate,
    deletion_curve,
    insertion_curve,
    noisy_linear_imputation,
    pointing_accuracy,
    pointing_game,
    road,
)
from tests import nets

torch.set_num_threads(1)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


class Lin(nn.Module):
    """Output [w . x, 0]: the class-0 logit is the weighted pixel sum, its probability sigmoid(w . x)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float64))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


# w = [[4, 3], [2, 1]] on a 1-channel 2x2 image of ones: logit 10.
W4 = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).view(1, 1, 2, 2)
ONES = torch.ones(1, 1, 2, 2, dtype=torch.float64)


# ------------------------------------------------------------------------------------ deletion / insertion


def test_deletion_insertion_hand_values_perfect_and_reversed() -> None:
    model = Lin(W4)
    perfect, reverse = W4[:, 0], -W4[:, 0]  # order 4,3,2,1 (the weights) and 1,2,3,4
    # Deletion to zeros, 4 steps of one pixel, perfect order: 10, 10-4=6, 6-3=3, 3-2=1, 0.
    # AUC = 0.25 * (10/2 + 6 + 3 + 1 + 0/2) = 3.75.
    d = deletion_curve(model, ONES, perfect, [0], steps=4, score="logit")
    np.testing.assert_allclose(d.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(d.scores, [[10, 6, 3, 1, 0]])
    np.testing.assert_allclose(d.auc, [3.75])
    # Reversed order removes 1, 2, 3, 4: 10, 9, 7, 4, 0; AUC = 0.25 * (5 + 9 + 7 + 4) = 6.25.
    d_rev = deletion_curve(model, ONES, reverse, [0], steps=4, score="logit")
    np.testing.assert_allclose(d_rev.scores, [[10, 9, 7, 4, 0]])
    np.testing.assert_allclose(d_rev.auc, [6.25])
    # Insertion from zeros, perfect: 0, 4, 7, 9, 10 -> AUC 0.25 * (0 + 4 + 7 + 9 + 5) = 6.25; reversed 0, 1, 3, 6, 10
    # -> 3.75. With a zero substrate and a linear score, insertion_k + deletion_k = 10 at every k.
    i = insertion_curve(model, ONES, perfect, [0], steps=4, substrate="zeros", score="logit")
    np.testing.assert_allclose(i.scores, [[0, 4, 7, 9, 10]])
    np.testing.assert_allclose(i.auc, [6.25])
    i_rev = insertion_curve(model, ONES, reverse, [0], steps=4, substrate="zeros", score="logit")
    np.testing.assert_allclose(i_rev.scores, [[0, 1, 3, 6, 10]])
    np.testing.assert_allclose(i_rev.auc, [3.75])
    # Two images in one call: identical rows to the separate calls.
    both = deletion_curve(model, ONES.repeat(2, 1, 1, 1), torch.cat([perfect, reverse]), [0, 0], steps=4, score="logit")
    np.testing.assert_allclose(both.scores, [[10, 6, 3, 1, 0], [10, 9, 7, 4, 0]])


def test_probability_score_is_softmax_of_the_target() -> None:
    # Class-0 probability = sigmoid(logit); the perfect deletion logits are 10, 6, 3, 1, 0.
    d = deletion_curve(Lin(W4), ONES, W4[:, 0], [0], steps=4)
    expected = [sigmoid(v) for v in (10, 6, 3, 1, 0)]
    np.testing.assert_allclose(d.scores, [expected], rtol=1e-12)
    auc = 0.25 * ((expected[0] + expected[-1]) / 2 + sum(expected[1:-1]))
    np.testing.assert_allclose(d.auc, [auc], rtol=1e-12)


def test_perfect_map_beats_random_and_reversed_with_exact_curves() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64) + 0.1  # all weights positive
    model, x = Lin(w), torch.ones(1, 1, 8, 8, dtype=torch.float64)
    random_map = torch.rand(1, 8, 8, generator=g, dtype=torch.float64)
    curves = {
        name: (
            deletion_curve(model, x, m, [0], steps=16, score="logit"),
            insertion_curve(model, x, m, [0], steps=16, substrate="zeros", score="logit"),
        )
        for name, m in {"perfect": w[:, 0], "random": random_map, "reversed": -w[:, 0]}.items()
    }
    # Literal reference: after removing the first 4k pixels of the order, the logit is the sum of w over the rest.
    for name, m in {"perfect": w[:, 0], "random": random_map}.items():
        order = np.argsort(-m.flatten().numpy(), kind="stable")
        flat_w = w.flatten().numpy()
        kept = [flat_w[order[4 * k :]].sum() for k in range(17)]
        np.testing.assert_allclose(curves[name][0].scores[0], kept, rtol=1e-12)
    d = {k: v[0].auc[0] for k, v in curves.items()}
    i = {k: v[1].auc[0] for k, v in curves.items()}
    assert d["perfect"] < d["random"] < d["reversed"]
    assert i["perfect"] > i["random"] > i["reversed"]
    # The perfect order gives the lowest deletion curve at every point (largest weights go first).
    for name in ("random", "reversed"):
        assert (curves["perfect"][0].scores <= curves[name][0].scores + 1e-12).all()


def test_steps_that_do_not_divide_the_pixels() -> None:
    # N = 4 pixels, 3 steps: step k removes floor(4k/3) pixels = 0, 1, 2, 4 -> fractions 0, .25, .5, 1.
    d = deletion_curve(Lin(W4), ONES, W4[:, 0], [0], steps=3, score="logit")
    np.testing.assert_allclose(d.fractions, [0, 0.25, 0.5, 1])
    np.testing.assert_allclose(d.scores, [[10, 6, 3, 0]])
    # Trapezoid over the actual fractions: .25 * (10 + 6) / 2 + .25 * (6 + 3) / 2 + .5 * (3 + 0) / 2 = 3.875.
    np.testing.assert_allclose(d.auc, [3.875])


def test_ties_follow_raster_order() -> None:
    # A constant map deletes row by row: w = [[1, 2], [3, 4]] -> 10, 10-1=9, 9-2=7, 7-3=4, 0.
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    d = deletion_curve(Lin(w), ONES, torch.zeros(1, 2, 2), [0], steps=4, score="logit")
    np.testing.assert_allclose(d.scores, [[10, 9, 7, 4, 0]])


def test_a_pixel_is_removed_in_every_channel() -> None:
    # 3 channels with weights 1, 10, 100 on a 1x2 image of ones: logit 2 * 111 = 222; removing the first pixel
    # (highest map value) drops all three channels at once: 111, then 0.
    w = torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    d = deletion_curve(
        Lin(w),
        torch.ones(1, 3, 1, 2, dtype=torch.float64),
        torch.tensor([[[1.0, 0.0]]]),
        [0],
        2,
        "zeros",
        score="logit",
    )
    np.testing.assert_allclose(d.scores, [[222, 111, 0]])


def test_substrates_by_hand() -> None:
    # Image [[1, 2], [3, 4]], w = 1: logit 10; the map is the image, so 4, 3, 2, 1 go first.
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    model, m = Lin(torch.ones(1, 1, 2, 2)), x[:, 0]

    def scores(substrate: object) -> list[float]:
        return deletion_curve(model, x, m, [0], 4, substrate, score="logit").scores[0].tolist()  # type: ignore[arg-type]

    # "mean" (2.5 per channel): 10, 10-4+2.5=8.5, 8.5-3+2.5=8, 8-2+2.5=8.5, 8.5-1+2.5=10.
    assert scores("mean") == pytest.approx([10, 8.5, 8, 8.5, 10])
    # a constant tensor 5 broadcast from (C, 1, 1): 10, 11, 13, 16, 20.
    assert scores(torch.full((1, 1, 1), 5.0)) == pytest.approx([10, 11, 13, 16, 20])
    # a callable: every pixel becomes -1: 10, 5, 1, -2, -4.
    assert scores(lambda t: torch.full_like(t, -1.0)) == pytest.approx([10, 5, 1, -2, -4])
    with pytest.raises(ValueError, match="substrate"):
        scores("noise")
    with pytest.raises(ValueError, match="broadcast"):
        scores(torch.zeros(2, 3, 3))


def test_blur_is_rises_gaussian_kernel() -> None:
    # RISE evaluation.py: gkern(11, 5) = gaussian_filter(delta) on the channel diagonal; conv2d with padding 5.
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = ndimage.gaussian_filter(delta, 5)
    kern = np.zeros((3, 3, 11, 11))
    for c in range(3):
        kern[c, c] = k
    x = nets.inputs(2, 16, dtype=torch.float64)
    expected = F.conv2d(x, torch.from_numpy(kern), padding=5)
    torch.testing.assert_close(blur_substrate(x), expected, rtol=0, atol=1e-12)
    # Insertion with the default (blur) substrate starts at the blurred image's score.
    model = nets.GapNet().double()
    sal = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    curve = insertion_curve(model, x, sal, [1, 2], steps=8)
    probs = model(expected).softmax(1)[[0, 1], [1, 2]].detach().numpy()
    np.testing.assert_allclose(curve.scores[:, 0], probs, rtol=1e-10)


def test_endpoints_are_the_image_and_the_substrate_for_a_camlens_explanation() -> None:
    model, x = nets.GapNet(), nets.inputs(2, 8)
    exp = camlens.explain(model, x, "gradcam")
    ids = exp.targets[:, 0]
    probs = model(x).softmax(1).gather(1, ids[:, None])[:, 0].detach().numpy()
    zero_probs = model(torch.zeros_like(x)).softmax(1).gather(1, ids[:, None])[:, 0].detach().numpy()
    d = deletion_curve(model, x, exp.maps[:, 0], ids, steps=8)
    i = insertion_curve(model, x, exp.maps, ids, steps=8, substrate="zeros")  # (B, K, H, W) with K = 1 works too
    np.testing.assert_allclose(d.scores[:, 0], probs, rtol=1e-6)
    np.testing.assert_allclose(i.scores[:, -1], probs, rtol=1e-6)
    np.testing.assert_allclose(d.scores[:, -1], zero_probs, rtol=1e-6)
    np.testing.assert_allclose(i.scores[:, 0], zero_probs, rtol=1e-6)


def test_target_forms_agree() -> None:
    model, x = nets.GapNet(), nets.inputs(3, 8)
    sal = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    top = model(x).argmax(1)
    by_none = deletion_curve(model, x, sal, None, steps=4)
    by_ids = deletion_curve(model, x, sal, top, steps=4)
    by_array = deletion_curve(model, x, sal, top.numpy(), steps=4)
    np.testing.assert_array_equal(by_none.scores, by_ids.scores)
    np.testing.assert_array_equal(by_array.scores, by_ids.scores)
    logit2 = deletion_curve(model, x, sal, [2, 2, 2], steps=4, score="logit")
    by_int = deletion_curve(model, x, sal, 2, steps=4, score="logit")
    by_callable = deletion_curve(model, x, sal, lambda out: out[:, 2], steps=4)
    np.testing.assert_array_equal(logit2.scores, by_callable.scores)
    np.testing.assert_array_equal(logit2.scores, by_int.scores)


def test_batch_size_does_not_change_the_result() -> None:
    model, x = nets.GapNet(), nets.inputs(3, 8)
    sal = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    for fn in (deletion_curve, insertion_curve):
        one = fn(model, x, sal, [0, 1, 2], steps=8, batch_size=1)
        many = fn(model, x, sal, [0, 1, 2], steps=8, batch_size=64)
        odd = fn(model, x, sal, [0, 1, 2], steps=8, batch_size=5)  # chunks that straddle images
        np.testing.assert_allclose(one.scores, many.scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(odd.scores, many.scores, rtol=0, atol=1e-6)
        # an image alone gives the same row as in the batch
        alone = fn(model, x[1:2], sal[1:2], [1], steps=8)
        np.testing.assert_allclose(alone.scores[0], many.scores[1], rtol=0, atol=1e-6)
    r1 = road(model, x, sal, [0, 1, 2], percentages=(0.25, 0.5), batch_size=1)
    r64 = road(model, x, sal, [0, 1, 2], percentages=(0.25, 0.5), batch_size=64)  # seeded noise: per image/fraction
    np.testing.assert_allclose(r1.scores, r64.scores, rtol=0, atol=1e-6)


def test_model_is_left_unchanged_and_training_mode_warns() -> None:
    model, x = nets.GapNet(), nets.inputs(2, 8)
    sal = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runs = [
        lambda: deletion_curve(model, x, sal, steps=4),
        lambda: insertion_curve(model, x, sal, steps=4),
        lambda: average_drop_increase(model, x, sal),
        lambda: road(model, x, sal, percentages=(0.5,)),
    ]
    for run in runs:
        run()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    model.train()
    for run in runs:
        with pytest.warns(UserWarning, match="training mode"):
            run()
        # training-mode forwards move BatchNorm's running statistics; they are restored
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())  # still in training mode: never switched


def test_bad_arguments_name_the_fix() -> None:
    model = Lin(W4)
    with pytest.raises(ValueError, match=r"saliency must have shape \(1, 2, 2\)"):
        deletion_curve(model, ONES, torch.zeros(1, 3, 3), [0])
    with pytest.raises(ValueError, match="steps must be"):
        deletion_curve(model, ONES, W4[:, 0], [0], steps=5)  # more steps than pixels
    with pytest.raises(ValueError, match="score must be"):
        deletion_curve(model, ONES, W4[:, 0], [0], steps=4, score="prob")
    with pytest.raises(ValueError, match="NaN"):
        deletion_curve(model, ONES, torch.full((1, 2, 2), float("nan")), [0], steps=4)
    with pytest.raises(ValueError, match="one id per image"):
        deletion_curve(model, ONES, W4[:, 0], [0, 1], steps=4)
    with pytest.raises(ValueError, match="out of range"):
        deletion_curve(model, ONES, W4[:, 0], [7], steps=4)
    with pytest.raises(ValueError, match="batch_size"):
        deletion_curve(model, ONES, W4[:, 0], [0], steps=4, batch_size=0)


# ------------------------------------------------------------------------------------ Average Drop / IC


def _ad_case() -> tuple[Lin, torch.Tensor, torch.Tensor]:
    # Image A = ones: Y = 10; map [[1, .5], [0, 0]] keeps 4*1 + 3*.5 = 5.5 = O.
    # Image B = [[1, 1], [1, -1]]: Y = 4 + 3 + 2 - 1 = 8; map [[1, 1], [1, 0]] hides the -1: O = 9 > Y.
    x = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 1.0], [1.0, -1.0]]]], dtype=torch.float64)
    maps = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]])
    return Lin(W4), x, maps


def test_average_drop_increase_by_hand() -> None:
    model, x, maps = _ad_case()
    # logits: A drops 100 * (10 - 5.5) / 10 = 45 %, no increase; B: no drop (O > Y), increase.
    drop, inc = average_drop_increase(model, x, maps, [0, 0], score="logit")
    np.testing.assert_allclose(drop, [45.0, 0.0])
    np.testing.assert_array_equal(inc, [0.0, 1.0])
    assert aggregate_drop_increase(drop, inc) == pytest.approx({"average_drop": 22.5, "increase_in_confidence": 50.0})
    # probabilities (the paper): A: 100 * (s(10) - s(5.5)) / s(10); B: s(9) > s(8) -> increase.
    drop, inc = average_drop_increase(model, x, maps, [0, 0])
    np.testing.assert_allclose(drop, [100 * (sigmoid(10) - sigmoid(5.5)) / sigmoid(10), 0.0], rtol=1e-12)
    np.testing.assert_array_equal(inc, [0.0, 1.0])


def test_average_drop_rejects_maps_outside_unit_range_and_flags_negative_scores() -> None:
    model, x, maps = _ad_case()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        average_drop_increase(model, x, maps * 2, [0, 0])
    # Y = -10 (logit of a negated image): dividing by it is meaningless -> NaN and a warning.
    with pytest.warns(UserWarning, match="not positive"):
        drop, _ = average_drop_increase(model, -x[:1], maps[:1], [0], score="logit")
    assert np.isnan(drop).all()


class _FixedCAM:
    """The smallest torchcam CAM extractor: it returns given maps (so torchcam scores our saliency)."""

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = model, maps

    def __call__(self, class_idx: object = None, scores: object = None, normalized: bool = True, **kw: object) -> list:
        return [self.maps]

    def fuse_cams(self, cams: list) -> torch.Tensor:
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):  # type: ignore[no-untyped-def]
        yield


def test_agrees_with_torchcam_metrics() -> None:
    metrics = pytest.importorskip("torchcam.metrics")
    model, x = nets.GapNet(), nets.inputs(3, 8)
    sal = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(5))
    softmax = partial(torch.softmax, dim=-1)
    # Deletion/insertion: torchcam takes ceil(N / steps) pixels per step; with N = 64 and 16 steps both take 4.
    for baseline, substrate in ((None, "zeros"), (blur_substrate, "blur")):
        theirs = metrics.DeletionInsertionMetric(_FixedCAM(model, sal), softmax, steps=16, baseline=baseline)
        theirs.update(x)
        summary = theirs.summary()
        d = deletion_curve(model, x, sal, None, steps=16, substrate=substrate)
        i = insertion_curve(model, x, sal, None, steps=16, substrate=substrate)
        assert d.auc.mean() == pytest.approx(summary["deletion_auc"], abs=1e-6)
        assert i.auc.mean() == pytest.approx(summary["insertion_auc"], abs=1e-6)
    # Average Drop / Increase: torchcam reports fractions, the paper (and camlens) percent.
    cam_maps = camlens.normalize_maps(sal)
    theirs = metrics.ClassificationMetric(_FixedCAM(model, cam_maps), softmax)
    theirs.update(x)
    drop, inc = average_drop_increase(model, x, cam_maps)
    assert drop.mean() / 100 == pytest.approx(theirs.summary()["avg_drop"], abs=1e-6)
    assert inc.mean() == pytest.approx(theirs.summary()["conf_increase"])


def test_agrees_with_pytorch_grad_cam_confidence_metrics() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x = nets.GapNet(), nets.inputs(4, 8, seed=7)
    maps = camlens.normalize_maps(torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(6)))
    ids = [0, 1, 2, 3]
    targets = [ClassifierOutputSoftmaxTarget(c) for c in ids]
    drop, inc = average_drop_increase(model, x, maps, ids)
    y = model(x).softmax(1)[range(4), ids].detach().numpy()
    # pytorch-grad-cam's "DropInConfidence" is max(0, Y - O), not divided by Y: ours * Y / 100.
    theirs_drop = DropInConfidence()(x, maps.numpy(), targets, model)
    np.testing.assert_allclose(drop * y / 100, theirs_drop, atol=1e-6)
    np.testing.assert_array_equal(inc, IncreaseInConfidence()(x, maps.numpy(), targets, model))


# ------------------------------------------------------------------------------------------------- ROAD


def test_imputation_of_single_pixels_by_hand() -> None:
    # Centre of [[0, 6, 0], [0, ?, 0], [0, 0, 12]]: direct neighbours 6, 0, 0, 0 weigh 1/6, diagonal 0, 0, 0, 12
    # weigh 1/12: 6/6 + 12/12 = 2.
    img = torch.tensor([[[0.0, 6.0, 0.0], [0.0, 99.0, 0.0], [0.0, 0.0, 12.0]]])
    removed = torch.zeros(3, 3, dtype=torch.bool)
    removed[1, 1] = True
    out = noisy_linear_imputation(img, removed)
    expected = img.clone()
    expected[0, 1, 1] = 2.0
    torch.testing.assert_close(out, expected)
    # Corner (0, 0) of [[?, 5], [5, 10]]: neighbours 5 (1/6), 5 (1/6), 10 (1/12), weights sum 5/12:
    # (5/6 + 5/6 + 10/12) / (5/12) = (30/12) / (5/12) = 6.
    img = torch.tensor([[[99.0, 5.0], [5.0, 10.0]]])
    removed = torch.tensor([[True, False], [False, False]])
    assert float(noisy_linear_imputation(img, removed)[0, 0, 0]) == pytest.approx(6.0)


def test_imputation_solves_removed_neighbours_together() -> None:
    # One row [0, X, Y, 3] with X, Y removed: X = (0 + Y) / 2, Y = (X + 3) / 2 -> X = 1, Y = 2 (a straight line),
    # in both channels (the second is the first times -2).
    img = torch.tensor([[[0.0, 50.0, 50.0, 3.0]], [[0.0, 50.0, 50.0, -6.0]]], dtype=torch.float64)
    removed = torch.tensor([[False, True, True, False]])
    out = noisy_linear_imputation(img, removed)
    torch.testing.assert_close(
        out, torch.tensor([[[0.0, 1.0, 2.0, 3.0]], [[0.0, -2.0, -4.0, -6.0]]], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="all removed"):
        noisy_linear_imputation(img, torch.ones(1, 4, dtype=torch.bool))


def test_imputation_noise_is_seeded_and_spares_kept_pixels() -> None:
    # A zero image with all but one pixel removed imputes zeros, plus N(0, 0.5^2) noise on the 1023 removed pixels.
    img = torch.zeros(1, 32, 32, dtype=torch.float64)
    removed = torch.ones(32, 32, dtype=torch.bool)
    removed[0, 0] = False
    img[0, 0, 0] = 0.0
    a = noisy_linear_imputation(img, removed, 0.5, np.random.default_rng(1))
    b = noisy_linear_imputation(img, removed, 0.5, np.random.default_rng(1))
    torch.testing.assert_close(a, b)
    assert float(a[0, 0, 0]) == 0.0
    assert float(a[0][removed].std()) == pytest.approx(0.5, rel=0.1)


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # numpy on tensors, in their code
def test_imputation_agrees_with_pytorch_grad_cam() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    g = torch.Generator().manual_seed(8)
    img = torch.randn(3, 12, 12, generator=g)
    removed = torch.rand(12, 12, generator=g) < 0.6
    theirs = NoisyLinearImputer(noise=0.0)(img, (~removed).float())  # their mask: 1 = kept
    torch.testing.assert_close(noisy_linear_imputation(img, removed), theirs, rtol=0, atol=1e-5)


def test_road_by_hand_on_a_row() -> None:
    # Row [0, 5, 2, 3], w = 1: base logit 10. Map [0, 1, .5, .2] ranks pixel 1 first, pixel 0 last.
    x = torch.tensor([0.0, 5.0, 2.0, 3.0], dtype=torch.float64).view(1, 1, 1, 4)
    model, sal = Lin(torch.ones(1, 1, 1, 4)), torch.tensor([[[0.0, 1.0, 0.5, 0.2]]])
    # MoRF 25 %: pixel 1 -> (0 + 2) / 2 = 1, logit 0+1+2+3 = 6; 50 %: pixels 1, 2 -> 1, 2 (a line), logit 6.
    morf = road(model, x, sal, [0], percentages=(0.25, 0.5), order="morf", noise=0.0, score="logit")
    np.testing.assert_allclose(morf.scores, [[6, 6]])
    np.testing.assert_allclose(morf.base, [10])
    np.testing.assert_allclose(morf.mean, [6])
    np.testing.assert_allclose(morf.auc, [0.25 * (6 + 6) / 2])
    # LeRF 25 %: pixel 0 (only neighbour 5) -> 5, logit 15; 50 %: pixels 0 and 3 -> 5 and 2, logit 5+5+2+2 = 14.
    lerf = road(model, x, sal, [0], percentages=(0.25, 0.5), order="lerf", noise=0.0, score="logit")
    np.testing.assert_allclose(lerf.scores, [[15, 14]])
    assert isinstance(lerf, Curve)
    with pytest.raises(ValueError, match="percentages"):
        road(model, x, sal, [0], percentages=(1.0,))
    with pytest.raises(ValueError, match="order"):
        road(model, x, sal, [0], order="most")


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # numpy on tensors, in their code
def test_road_agrees_with_pytorch_grad_cam() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # 10 x 10 = 100 pixels: pytorch-grad-cam's percentile q keeps the values below np.percentile(map, q), which for
    # 100 distinct values is exactly q of them, so q = 100 (1 - p) removes our fraction p; noise 0 on both sides.
    model, x = nets.GapNet(), nets.inputs(2, 10, seed=9)
    cams = torch.rand(2, 10, 10, generator=torch.Generator().manual_seed(9))
    ids = [1, 3]
    targets = [ClassifierOutputTarget(c) for c in ids]
    fractions = (0.1, 0.3, 0.5, 0.7, 0.9)
    for order, remover in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
        ours = road(model, x, cams, ids, percentages=fractions, order=order, noise=0.0, score="logit")
        for k, p in enumerate(fractions):
            metric = PerturbationConfidenceMetric(remover(round(100 * (1 - p)), NoisyLinearImputer(noise=0.0)))
            theirs = metric(x, cams.numpy(), targets, model)  # score after imputation minus score before
            np.testing.assert_allclose(ours.scores[:, k] - ours.base, theirs, atol=1e-5)


# ------------------------------------------------------------------------------------------ pointing game


def _peak(shape: tuple[int, int], *points: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape)
    for r, c in points:
        m[r, c] = 1.0
    return m


BOX = np.array([[10, 10, 15, 15]])  # columns and rows 10..14


def test_pointing_game_tolerance_by_hand() -> None:
    far = _peak((20, 20), (5, 5))  # 5 px left of and 5 px above the box: distance sqrt(50) = 7.07
    assert pointing_game([far], [BOX], tolerance=0).tolist() == [False]
    assert pointing_game([far], [BOX], tolerance=7).tolist() == [False]
    assert pointing_game([far], [BOX], tolerance=7.1).tolist() == [True]
    assert pointing_game([far], [BOX]).tolist() == [True]  # default 15 px
    inside = _peak((20, 20), (12, 12))
    assert pointing_game([inside], [BOX], tolerance=0).tolist() == [True]
    # End-exclusive: column 15 is outside [10, 15); one pixel away.
    edge = _peak((20, 20), (12, 15))
    assert pointing_game([edge], [BOX], tolerance=0).tolist() == [False]
    assert pointing_game([edge], [BOX], tolerance=1).tolist() == [True]
    # Exactly 15 px: 15 to the right of column 14 (TorchRay's strict "<" would miss), or 9 and 12 (9^2 + 12^2 = 15^2).
    # (28, 28) is 14 px off in both axes: 19.8 px away, a miss here (a square-grown box would count it).
    shape = (40, 40)
    hits = pointing_game(
        [_peak(shape, (12, 29)), _peak(shape, (12, 30)), _peak(shape, (26, 23)), _peak(shape, (28, 28))], [BOX] * 4
    )
    assert hits.tolist() == [True, False, True, False]


def test_pointing_game_ties_boxes_and_sizes() -> None:
    two = _peak((20, 20), (0, 0), (12, 12))  # first maximum (raster order) far away, second inside
    assert pointing_game([two], [BOX], tolerance=0, ties="first").tolist() == [False]
    assert pointing_game([two], [BOX], tolerance=0, ties="any").tolist() == [True]
    assert pointing_game([two], [BOX], tolerance=0, ties="all").tolist() == [False]
    both_in = _peak((20, 20), (10, 10), (14, 14))
    assert pointing_game([both_in], [BOX], tolerance=0, ties="all").tolist() == [True]
    # Several boxes: a hit on any of them; maps of different sizes in a list; a tensor batch.
    boxes = np.array([[0, 0, 2, 2], [10, 10, 15, 15]])
    assert pointing_game([_peak((20, 20), (12, 12)), _peak((30, 12), (1, 1))], [boxes, boxes], 0).tolist() == [
        True,
        True,
    ]
    batch = torch.from_numpy(np.stack([_peak((20, 20), (12, 12)), _peak((20, 20), (19, 0))]))
    assert pointing_game(batch[:, None], [BOX, BOX], tolerance=0).tolist() == [True, False]
    # Float boxes: pixel 9 (centre 9.5) is inside [9.4, ...) but not [9.6, ...).
    m = _peak((20, 20), (12, 9))
    assert pointing_game([m, m], [np.array([[9.4, 10, 15, 15]]), np.array([[9.6, 10, 15, 15]])], 0).tolist() == [
        True,
        False,
    ]
    with pytest.raises(ValueError, match="no ground-truth box"):
        pointing_game([m], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="empty box"):
        pointing_game([m], [np.array([[5, 5, 5, 9]])])


def test_pointing_game_matches_a_brute_force_disk() -> None:
    rng = np.random.default_rng(10)
    for _ in range(30):
        m = rng.random((30, 30))
        boxes = np.sort(rng.integers(0, 31, size=(2, 2, 2)), axis=2)  # (box, axis, [start, end])
        boxes = np.array([[b[0, 0], b[1, 0], b[0, 1] + 1, b[1, 1] + 1] for b in boxes])
        r, c = np.unravel_index(np.argmax(m), m.shape)
        region = np.zeros((30, 30), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            region[y0:y1, x0:x1] = True
        rows, cols = np.mgrid[:30, :30]
        for tol in (0, 3, 7.5, 15):
            expected = bool((region & (np.hypot(rows - r, cols - c) <= tol)).any())
            assert pointing_game([m], [boxes], tol).tolist() == [expected]


def test_pointing_game_on_masks_by_hand() -> None:
    # an L-shaped region: row 3, columns 2..6, and column 6, rows 3..7
    mask = np.zeros((10, 10), dtype=bool)
    mask[3, 2:7] = True
    mask[3:8, 6] = True
    on = _peak((10, 10), (5, 6))
    hole = _peak((10, 10), (5, 4))  # inside the L's bounding box, off its pixels: 2 px below (3, 4)
    assert pointing_game([on, hole], masks=[mask, mask], tolerance=0).tolist() == [True, False]
    # a box around the L would count the hole as a hit: the mask is what makes this a miss
    assert pointing_game([hole], [np.array([[2, 3, 7, 8]])], tolerance=0).tolist() == [True]
    assert pointing_game([hole], masks=[mask], tolerance=1.9).tolist() == [False]
    assert pointing_game([hole], masks=[torch.from_numpy(mask)], tolerance=2).tolist() == [True]
    # (9, 9): the nearest pixel of the L is (7, 6), 2 rows and 3 columns away: sqrt(13) = 3.606
    corner = _peak((10, 10), (9, 9))
    assert pointing_game([corner], masks=[mask], tolerance=3.6).tolist() == [False]
    assert pointing_game([corner], masks=[mask], tolerance=3.61).tolist() == [True]
    both = _peak((10, 10), (5, 6), (5, 4))  # two maxima: one on the L, one off it
    assert pointing_game([both], masks=[mask], tolerance=0, ties="all").tolist() == [False]
    assert pointing_game([both], masks=[mask], tolerance=0, ties="any").tolist() == [True]
    assert pointing_game([both], masks=[mask], tolerance=0).tolist() == [False]  # first in raster order: (5, 4)
    with pytest.raises(ValueError, match="either gt_boxes or masks"):
        pointing_game([on], [np.array([[0, 0, 1, 1]])], masks=[mask])
    with pytest.raises(ValueError, match="either gt_boxes or masks"):
        pointing_game([on])
    with pytest.raises(ValueError, match="mask 0 has shape"):
        pointing_game([on], masks=[mask[:5]])
    with pytest.raises(ValueError, match="mask 0 is empty"):
        pointing_game([on], masks=[np.zeros((10, 10), dtype=bool)])
    with pytest.raises(ValueError, match="1 masks"):
        pointing_game([on, on], masks=[mask])


def test_pointing_accuracy_is_the_mean_over_categories() -> None:
    hits = [True, False, False, True, True]
    # category 0: 1 hit in 3 -> 1/3; category 1: 2 in 2 -> 1; mean 2/3 (the plain fraction is 3/5).
    assert pointing_accuracy(hits, [0, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    assert pointing_accuracy(hits) == pytest.approx(3 / 5)
