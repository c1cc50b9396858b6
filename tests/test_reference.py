"""Tier 2: every registered method against its paper-literal reference (tests/reference/literal.py).

Four seeded networks from tests/nets.py, in float64, batch 2, targets "top2":

* GapNet (conv -> BN -> in-place ReLU -> GAP -> linear), layer ``features``;
* FcNet (conv -> ReLU -> flatten -> two linear layers; CAM does not apply), layer ``features``;
* SharedActNet (one ReLU module run twice), layer ``act@1``, its second call;
* FunctionalNet (functional and in-place ReLUs, residual add), layer ``conv2`` (pre-activation, signed).

``Explanation.raw`` (signed, before the ReLU) must match the reference to a relative 1e-10 of the map's
largest magnitude, element by element; pixel methods also compare ``Explanation.pixels``. The class ids
and their scores must be the reference's (sorted Python floats, one forward pass per sample).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import camlens
from tests import nets
from tests.reference import literal as ref

RTOL = 1e-10


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    layer: str  # as camlens takes it
    module: str  # the module the reference hooks
    call: int  # which of its calls
    head: str | None  # the linear layer after global average pooling (None: CAM does not apply)


CASES = {
    "GapNet": Case(lambda: nets.GapNet(channels=8, classes=5), "features", "features", 0, "fc"),
    "FcNet": Case(lambda: nets.FcNet(channels=4, classes=3, size=8), "features", "features", 0, None),
    "SharedActNet": Case(lambda: nets.SharedActNet(classes=4), "act@1", "act", 1, "fc"),
    # its GAP-ed tensor is relu_(conv2 + y), which no module returns: CAM applies to no layer of it
    "FunctionalNet": Case(lambda: nets.FunctionalNet(classes=3), "conv2", "conv2", 0, None),
}


def _setup(name: str) -> tuple[nn.Module, torch.Tensor, Case]:
    case = CASES[name]
    model = case.build().double().eval()
    x = nets.inputs(2, 8, seed=1, dtype=torch.float64)
    return model, x, case


def _module(model: nn.Module, case: Case) -> nn.Module:
    return model.get_submodule(case.module)


def assert_maps_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    """|actual - expected| <= rtol * (largest |expected| of that map), for every element."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype
    scale = expected.abs().flatten(-2).amax(-1)[..., None, None]
    err = (actual - expected).abs()
    bad = err > rtol * scale + 1e-300
    assert not bool(bad.any()), (
        f"max relative error {float((err / scale.clamp_min(1e-300)).max()):.3g} > {rtol}; "
        f"{int(bad.sum())} of {bad.numel()} elements differ"
    )


# reference(model, x, module, call, ids, case) -> the expected raw map (or pixels)
Reference = Callable[[nn.Module, torch.Tensor, nn.Module, int, torch.Tensor, Case], torch.Tensor]

# the layer methods whose reference takes the sign of the score (counterfactual: -1)
GRADIENT = {
    "gradcam": ref.gradcam,
    "gradcam++": ref.gradcampp,
    "xgradcam": ref.xgradcam,
    "hirescam": ref.hirescam,
    "layercam": ref.layercam,
    "guided-gradcam": ref.guided_gradcam,
}
PIXEL_RULES = {"saliency": None, "guided-backprop": "guided", "deconvnet": "deconvnet"}
SIGNS = {1.0: {}, -1.0: {"counterfactual": True}}


def _gradient(formula: Callable[..., torch.Tensor], sign: float) -> Reference:
    return lambda m, x, mod, call, ids, case: formula(m, x, mod, call, ids, sign)


def _pixels(rule: str | None, sign: float) -> Reference:
    return lambda m, x, mod, call, ids, case: ref.input_gradients(m, x, ids, rule, sign)


VARIANTS: list[tuple[str, dict[str, Any], Reference, bool]] = [
    # (method, options, reference, pixel method?)
    (
        "cam",
        {},
        lambda m, x, mod, call, ids, case: ref.cam(m, x, mod, call, m.get_submodule(case.head).weight, ids),
        False,
    ),
    ("eigencam", {}, lambda m, x, mod, call, ids, case: ref.eigencam(m, x, mod, call, ids), False),
    ("eigencam", {"center": True}, lambda m, x, mod, call, ids, case: ref.eigencam(m, x, mod, call, ids, True), False),
    *[
        (name, options, _gradient(formula, sign), name == "guided-gradcam")
        for name, formula in GRADIENT.items()
        for sign, options in SIGNS.items()
    ],
    *[
        (name, options, _pixels(rule, sign), True)
        for name, rule in PIXEL_RULES.items()
        for sign, options in SIGNS.items()
    ],
    ("scorecam", {}, lambda m, x, mod, call, ids, case: ref.scorecam(m, x, mod, call, ids), False),
    (
        "scorecam",
        {"score": "logit", "baseline": False},
        lambda m, x, mod, call, ids, case: ref.scorecam(m, x, mod, call, ids, "logit", baseline=False),
        False,
    ),
    (
        # pytorch-grad-cam's settings
        "scorecam",
        {"score": "logit", "channel_softmax": True, "align_corners": True},
        lambda m, x, mod, call, ids, case: ref.scorecam(
            m, x, mod, call, ids, "logit", channel_softmax=True, align_corners=True
        ),
        False,
    ),
    ("ablationcam", {}, lambda m, x, mod, call, ids, case: ref.ablationcam(m, x, mod, call, ids), False),
]


def _variant_id(v: tuple[str, dict[str, Any], Reference, bool]) -> str:
    return v[0] + "".join(f"-{k}={val}" for k, val in v[1].items())


def test_every_registered_method_has_a_reference() -> None:
    assert set(camlens.methods()) == {v[0] for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
@pytest.mark.parametrize("net", list(CASES))
def test_method_matches_paper_literal_reference(net: str, variant: tuple[str, dict[str, Any], Reference, bool]) -> None:
    method, options, reference, pixel = variant
    model, x, case = _setup(net)
    layer = None if pixel and method != "guided-gradcam" else case.layer
    if method == "cam" and case.head is None:
        # FcNet, FunctionalNet: the output is not linear(global pooling(layer)); CAM must refuse, not guess
        with pytest.raises(ValueError, match="gradcam"):
            camlens.explain(model, x, method="cam", layer=layer, targets="top2")
        return
    exp = camlens.explain(model, x, method=method, layer=layer, targets="top2", **options)
    ids = ref.top_ids(model, x, 2)
    assert torch.equal(exp.targets, ids)
    torch.testing.assert_close(exp.scores, ref.scores(model, x, ids), rtol=1e-12, atol=1e-12)
    expected = reference(model, x, _module(model, case), case.call, ids, case)
    if pixel:
        assert exp.pixels is not None
        assert_maps_close(exp.pixels.flatten(2, 3), expected.flatten(2, 3))
        expected = ref.max_abs_over_channels(expected)
        assert exp.layer == ("input" if method != "guided-gradcam" else case.layer)
    else:
        assert exp.layer == case.layer
    assert_maps_close(exp.raw, expected)


def test_references_are_not_all_alike() -> None:
    """The comparisons above have teeth: on FunctionalNet (signed activation, non-linear tail) the
    references of different methods give different maps, so a method returning another one's map fails."""
    model, x, case = _setup("FunctionalNet")
    mod, ids = _module(model, case), ref.top_ids(model, x, 2)
    maps = {
        "gradcam": ref.gradcam(model, x, mod, 0, ids),
        "gradcam++": ref.gradcampp(model, x, mod, 0, ids),
        "xgradcam": ref.xgradcam(model, x, mod, 0, ids),
        "hirescam": ref.hirescam(model, x, mod, 0, ids),
        "layercam": ref.layercam(model, x, mod, 0, ids),
        "ablationcam": ref.ablationcam(model, x, mod, 0, ids),
        "scorecam": ref.scorecam(model, x, mod, 0, ids),
    }
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            # not even proportional: compare the min-max normalised maps
            na = _minmax(maps[a])
            nb = _minmax(maps[b])
            assert not torch.allclose(na, nb, atol=1e-3), (a, b)


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - low) / (high - low)).view_as(m)


def test_guided_rules_differ_from_plain_gradient() -> None:
    """Saliency, guided backprop and deconvnet references differ on every network (each has ReLUs), so
    a rule silently not applied (e.g. on a functional or shared ReLU) fails the comparison above."""
    for net in CASES:
        model, x, _ = _setup(net)
        ids = ref.top_ids(model, x, 2)
        plain = ref.input_gradients(model, x, ids)
        guided = ref.input_gradients(model, x, ids, "guided")
        deconv = ref.input_gradients(model, x, ids, "deconvnet")
        assert not torch.allclose(plain, guided), net
        assert not torch.allclose(plain, deconv), net
        assert not torch.allclose(guided, deconv), net
        # and the rules do not vanish: a comparison against an all-zero reference would prove little
        assert bool((guided != 0).any()), net
        assert bool((deconv != 0).any()), net


# --------------------------------------------------------------------------- Grad-CAM++ on small gradients


def _shrink_head(model: nn.Module, factor: float) -> None:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)


@pytest.mark.parametrize("factor", [1e-2, 1e-4])
@pytest.mark.parametrize("net", ["GapNet", "FcNet", "FunctionalNet"])
def test_gradcampp_eq19_on_small_gradients(net: str, factor: float) -> None:
    """Real ImageNet models have dS/dA ~ 1e-4: G^2 is far below a fixed eps = 1e-6 in eq. 19's
    denominator. Scaling the last linear layer by 1e-2 (largest g^2 here 3e-9 .. 2e-7) or 1e-4 (largest
    g^2 3e-13 .. 2e-11) puts the tiny networks in that regime; camlens must still follow eq. 19 exactly
    (its zero test is relative, not a fixed epsilon)."""
    model, x, case = _setup(net)
    _shrink_head(model, factor)
    mod = _module(model, case)
    ids = ref.top_ids(model, x, 2)
    g2 = torch.stack([g for *_, g in ref.per_target(model, x, mod, case.call, ids)]).pow(2)
    assert float(g2.max()) < 1e-6  # the regime a fixed eps = 1e-6 would swamp
    exp = camlens.explain(model, x, method="gradcam++", layer=case.layer, targets="top2")
    literal = ref.gradcampp(model, x, mod, case.call, ids)
    assert_maps_close(exp.raw, literal)
    # and the test can tell: the same formula with eps = 1e-6 added is a different map
    with_eps = ref.gradcampp(model, x, mod, case.call, ids, eps=1e-6)
    with pytest.raises(AssertionError):
        assert_maps_close(with_eps, literal, rtol=1e-2)


def test_gradcampp_eq19_half_precision_small_gradients() -> None:
    """A float16 GapNet with the head scaled by 1e-2 (g ~ 1e-3, g^3 ~ 1e-9): Grad-CAM++ must still follow
    eq. 19 to half-precision accuracy. The reference runs the same (half-rounded) weights in float64."""
    half = nets.GapNet(channels=8, classes=5).half().eval()
    _shrink_head(half, 1e-2)
    x = nets.inputs(2, 8, seed=1).half()
    exp = camlens.explain(half, x, method="gradcam++", layer="features", targets="top2")
    model = nets.GapNet(channels=8, classes=5)
    model.load_state_dict(half.state_dict())
    model = model.double().eval()
    ids = ref.top_ids(model, x.double(), 2)
    assert torch.equal(exp.targets, ids)
    # sanity: plain Grad-CAM in float16 is within 1e-2 of its float64 reference in the same setting
    grad = camlens.explain(half, x, method="gradcam", layer="features", targets="top2")
    assert_maps_close(grad.raw.double(), ref.gradcam(model, x.double(), model.features, 0, ids), rtol=1e-2)
    assert_maps_close(exp.raw.double(), ref.gradcampp(model, x.double(), model.features, 0, ids), rtol=1e-2)


# --------------------------------------------------------------------------- float32


@pytest.mark.parametrize("method", ["cam", "gradcam", "hirescam", "layercam", "xgradcam", "ablationcam"])
def test_float32_model_close_to_float64_reference(method: str) -> None:
    """The default float32 path agrees with the float64 reference to float32 accuracy."""
    model64, x64, case = _setup("GapNet")
    model32 = case.build().float().eval()
    exp = camlens.explain(model32, x64.float(), method=method, layer=case.layer, targets="top2")
    assert exp.raw.dtype == torch.float32
    ids = ref.top_ids(model64, x64, 2)
    mod = _module(model64, case)
    expected = {
        "cam": lambda: ref.cam(model64, x64, mod, 0, model64.fc.weight, ids),
        "gradcam": lambda: ref.gradcam(model64, x64, mod, 0, ids),
        "hirescam": lambda: ref.hirescam(model64, x64, mod, 0, ids),
        "layercam": lambda: ref.layercam(model64, x64, mod, 0, ids),
        "xgradcam": lambda: ref.xgradcam(model64, x64, mod, 0, ids),
        "ablationcam": lambda: ref.ablationcam(model64, x64, mod, 0, ids),
    }[method]()
    assert_maps_close(exp.raw.double(), expected, rtol=1e-4)


# --------------------------------------------------------------------------- the reference's own pieces


def test_reference_bilinear_by_hand() -> None:
    """2x2 -> 4x4, align_corners=False: source rows/cols -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped
    to 1), so a row (a, b) becomes (a, .75a + .25b, .25a + .75b, b)."""
    m = torch.tensor([[0.0, 4.0], [0.0, 8.0]], dtype=torch.float64)
    expected = torch.tensor(
        [
            [0.0, 1.0, 3.0, 4.0],
            [0.0, 1.25, 3.75, 5.0],
            [0.0, 1.75, 5.25, 7.0],
            [0.0, 2.0, 6.0, 8.0],
        ],
        dtype=torch.float64,
    )
    assert torch.equal(ref.bilinear(m, (4, 4)), expected)
    # align_corners=True: source positions 0, 1/3, 2/3, 1: (a, 2a/3 + b/3, a/3 + 2b/3, b)
    assert torch.allclose(
        ref.bilinear(m, (4, 4), align_corners=True)[0], torch.tensor([0.0, 4 / 3, 8 / 3, 4.0]).double()
    )


def test_reference_gradients_are_per_sample() -> None:
    """The reference's gradient for sample 1 does not depend on sample 0 (one forward per sample)."""
    model, x, case = _setup("GapNet")
    mod = _module(model, case)
    ids = torch.tensor([[0], [0]])
    g = [gr for *_, gr in ref.per_target(model, x, mod, 0, ids)]
    x2 = x.clone()
    x2[0] = 0
    g2 = [gr for *_, gr in ref.per_target(model, x2, mod, 0, ids)]
    assert torch.equal(g[1], g2[1])
