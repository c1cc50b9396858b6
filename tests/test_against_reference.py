"""Tier 2: every class activation method equals its paper-literal reference (tests/reference/paper.py)
on seeded random networks, float64, batch 2, two targets per sample, several layer kinds."""

from __future__ import annotations

import pytest
import torch

import camlens
from tests import nets
from tests.reference import paper

CASES = {
    "gapnet": (lambda: nets.GapNet(channels=6, classes=5), "features", 0, 8),
    "fcnet": (lambda: nets.FcNet(channels=4, classes=3, size=6), "features", 0, 6),
    "shared-act@1": (lambda: nets.SharedActNet(classes=4), "act@1", 1, 8),
    "functional-conv2": (lambda: nets.FunctionalNet(classes=3), "conv2", 0, 6),
}


def _setup(case: str):
    make, layer, call, size = CASES[case]
    model = make().double()
    x = nets.inputs(2, size, dtype=torch.float64, seed=3)
    module = dict(model.named_modules())[layer.split("@")[0]]
    with torch.no_grad():
        ids = model(x).topk(2, dim=1).indices
    return model, x, layer, module, call, ids


def _check(exp: camlens.Explanation, expected: torch.Tensor) -> None:
    assert exp.raw.dtype == torch.float64
    torch.testing.assert_close(exp.raw, expected, rtol=1e-7, atol=1e-10)


GRADIENT = {
    "gradcam": paper.gradcam,
    "gradcam++": paper.gradcam_pp,
    "xgradcam": paper.xgradcam,
    "hirescam": paper.hirescam,
    "layercam": paper.layercam,
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", list(GRADIENT))
def test_gradient_methods(case: str, method: str) -> None:
    model, x, layer, module, call, ids = _setup(case)
    a, g = paper.gradients(model, module, call, x, ids)
    _check(camlens.explain(model, x, method=method, layer=layer, targets=ids), GRADIENT[method](a, g))


@pytest.mark.parametrize("case", list(CASES))
def test_gradcam_counterfactual(case: str) -> None:
    model, x, layer, module, call, ids = _setup(case)
    a, g = paper.gradients(model, module, call, x, ids)
    exp = camlens.explain(model, x, method="gradcam", layer=layer, targets=ids, counterfactual=True)
    _check(exp, paper.gradcam(a, -g))


@pytest.mark.parametrize("case", ["gapnet", "shared-act@1"])
def test_cam(case: str) -> None:
    model, x, layer, module, call, ids = _setup(case)
    a, _ = paper.gradients(model, module, call, x, ids)
    _check(
        camlens.explain(model, x, method="cam", layer=layer, targets=ids), paper.cam(a, model.fc.weight.detach(), ids)
    )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("score", "baseline"), [("prob", True), ("logit", False)])
def test_scorecam(case: str, score: str, baseline: bool) -> None:
    model, x, layer, module, call, ids = _setup(case)
    exp = camlens.explain(model, x, method="scorecam", layer=layer, targets=ids, score=score, baseline=baseline)
    _check(exp, paper.scorecam(model, module, call, x, ids, prob=score == "prob", baseline=baseline))


@pytest.mark.parametrize("case", list(CASES))
def test_ablationcam(case: str) -> None:
    model, x, layer, module, call, ids = _setup(case)
    _check(
        camlens.explain(model, x, method="ablationcam", layer=layer, targets=ids),
        paper.ablationcam(model, module, call, x, ids),
    )


@pytest.mark.parametrize("case", list(CASES))
def test_eigencam(case: str) -> None:
    model, x, layer, module, call, ids = _setup(case)
    a, _ = paper.gradients(model, module, call, x, ids)
    _check(camlens.explain(model, x, method="eigencam", layer=layer, targets=ids), paper.eigencam(a, 2))


def test_gradcam_pp_small_gradients_still_eq19() -> None:
    """Gradients of ~1e-4 (g^2 ~ 1e-8): a fixed eps = 1e-6 would change the result; eq. 19 does not care."""
    model, x, layer, module, call, ids = _setup("fcnet")
    with torch.no_grad():
        model.classifier[2].weight.mul_(1e-4)
    a, g = paper.gradients(model, module, call, x, ids)
    assert 0 < float(g.abs().max()) ** 2 < 1e-6
    _check(camlens.explain(model, x, method="gradcam++", layer=layer, targets=ids), paper.gradcam_pp(a, g))


def test_every_cam_method_has_a_reference() -> None:
    covered = {*GRADIENT, "cam", "scorecam", "ablationcam", "eigencam"}
    pixel = {"saliency", "guided-backprop", "deconvnet", "guided-gradcam"}  # tests/test_guided.py
    assert set(camlens.methods()) == covered | pixel
