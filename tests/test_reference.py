"""Tier 2: every registered method against its paper-literal reference (tests/reference/literal.py).

Four seeded networks from tests/nets.py, in float64, batch 2, targets "top2":

* GapNet (conv -> BN -> in-place ReLU -> GAP -> linear), layer ``features``;
* FcNet (conv -> ReLU -> flatten -> two linear layers; CAM does not apply), layer ``features``;
* SharedActNet (one ReLU module run twice), layer ``act@1``, its second call;
* FunctionalNet (functional and in-place ReLUs, residual add), layer ``conv2`` (pre-activation, signed).

``Explanation.raw`` (signed, before the ReLU) must match the reference to a relative 1e-10 of the map's
largest magnitude, element by element; pixel methods also compare ``Explanation.pixels``. The class ids
and their scores must be the reference's (sorted Python floats, one forward pass per sample).

Methods that draw at random are compared on their own draws, taken from their public functions and handed
to the reference (which imports nothing from camlens): SmoothGrad's noise (``smoothgrad_noise``), RISE's
grids and shifts (``RISE.draw``; the reference upsamples and crops them itself), LIME's binary samples
(``LIME.sample_matrix``; the superpixels are a label tensor). Each variant's options are small (a few
steps, samples, masks) so the tier stays fast. One variant needs a looser tolerance, said where it is listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

import camlens
from camlens.methods.integrated import smoothgrad_noise
from camlens.methods.lrp import Epsilon, WSquare
from camlens.methods.perturbation_input import LIME, RISE
from tests import nets
from tests.reference import literal as ref

RTOL = 1e-10

# tiny nets: intra-op threads only add synchronisation (10-100x slower on a loaded machine)
pytestmark = pytest.mark.usefixtures("one_thread")


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


class Variant(NamedTuple):
    """One method call and its reference. ``view``: "layer" (``raw`` is the reference's layer map), "pixels"
    (``pixels`` is the reference's (B, K, C, H, W) and ``raw`` its max over channels of |.|), "relevance" (the
    same ``pixels``, ``raw`` their sum over channels: LRP's heatmap) or "signed" (the
    reference is one signed map per pixel (B, K, H, W): ``raw`` itself, ``pixels`` it in every channel)."""

    method: str
    options: dict[str, Any]
    reference: Reference
    view: str = "layer"
    rtol: float = RTOL


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


# --------------------------------------------------------------------------- pixel methods integrating or perturbing


def _ig(**options: Any) -> Reference:
    """IG's reference with the method's options; the baseline image built by the reference."""
    rule, steps, base = options.get("rule", "gausslegendre"), options.get("steps", 50), options.get("baseline", "zero")

    def reference(m: nn.Module, x: torch.Tensor, mod: nn.Module, call: int, ids: torch.Tensor, case: Case):
        start = ref.blur(x) if base == "blur" else torch.full_like(x, 0.0 if base == "zero" else float(base))
        return ref.integrated_gradients(m, x, ids, start, rule, steps)

    return reference


def _smoothgrad(rule: str | None, **options: Any) -> Reference:
    """SmoothGrad's reference on the method's own noise (drawn by the public ``smoothgrad_noise``)."""

    def reference(m: nn.Module, x: torch.Tensor, mod: nn.Module, call: int, ids: torch.Tensor, case: Case):
        noise = smoothgrad_noise(x, options["samples"], options.get("noise", 0.15), options.get("seed", 0))
        return ref.smoothgrad(m, x, ids, noise, rule, options.get("squared", False))

    return reference


def _occlusion(**options: Any) -> Reference:
    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)

    return lambda m, x, mod, call, ids, case: ref.occlusion(
        m, x, ids, pair(options["window"]), pair(options["stride"]), options.get("baseline", 0.0),
        options.get("score", "probability"),
    )  # fmt: skip


def _rise(**options: Any) -> Reference:
    """RISE's reference on the method's grids and shifts (its public ``draw``), masks built by scikit-image."""

    def reference(m: nn.Module, x: torch.Tensor, mod: nn.Module, call: int, ids: torch.Tensor, case: Case):
        size = (x.shape[-2], x.shape[-1])
        grids, shifts = RISE(m, **options).draw(size)
        masks = ref.rise_masks(grids, shifts, size)
        return ref.rise(m, x, ids, masks, options.get("p", 0.5), options.get("score", "probability"))

    return reference


# LIME's superpixels for the tier: six blocks of an 8 x 8 image, labels neither 0-based nor contiguous
LIME_LABELS = torch.tensor([[7 * (u // 4) + 3 * min(v // 3, 2) + 1 for v in range(8)] for u in range(8)])


def _lime(**options: Any) -> Reference:
    """LIME's reference on the method's binary samples (its public ``sample_matrix``, seeded as it seeds)."""

    def reference(m: nn.Module, x: torch.Tensor, mod: nn.Module, call: int, ids: torch.Tensor, case: Case):
        labels = options["segmentation"]
        d = len(set(labels.flatten().tolist()))
        seed = options.get("seed", 0)
        z = LIME(m, **options).sample_matrix(d, torch.Generator().manual_seed(seed))
        return ref.lime(
            m, x, ids, labels, z, options.get("baseline", "mean"), options.get("kernel_width", 0.25),
            options.get("alpha", 1.0), options.get("score", "probability"),
        )  # fmt: skip

    return reference


def _lrp(composite: str, **options: Any) -> Reference:
    """LRP's reference: the composite's rules (with the method's options), rules given as objects translated."""

    def literal(rule: Any) -> tuple[Any, ...]:
        if isinstance(rule, Epsilon):
            return ("epsilon", rule.epsilon)
        if isinstance(rule, WSquare):
            return ("w-square", rule.stabilizer)
        raise TypeError(rule)

    rules = ref.lrp_composite(composite, **{k: v for k, v in options.items() if k not in ("first", "conv", "linear")})
    rules.update({k: literal(v) for k, v in options.items() if k in ("first", "conv", "linear")})
    return lambda m, x, mod, call, ids, case: ref.lrp(m, x, ids, rules, options.get("stabilizer", 1e-6))


NEW_VARIANTS = [
    Variant("integrated-gradients", {"steps": 8}, _ig(steps=8), "pixels"),
    Variant(
        "integrated-gradients",
        {"steps": 5, "rule": "riemann_trapezoid", "baseline": 0.5},
        _ig(steps=5, rule="riemann_trapezoid", baseline=0.5),
        "pixels",
    ),
    Variant(
        "integrated-gradients",
        {"steps": 4, "rule": "riemann_right", "baseline": "blur"},
        _ig(steps=4, rule="riemann_right", baseline="blur"),
        "pixels",
    ),
    Variant("smoothgrad", {"samples": 4}, _smoothgrad(None, samples=4), "pixels"),
    Variant(
        "smoothgrad",
        {"samples": 3, "noise": 0.3, "squared": True, "seed": 7},
        _smoothgrad(None, samples=3, noise=0.3, squared=True, seed=7),
        "pixels",
    ),
    Variant("smoothgrad-guided", {"samples": 4}, _smoothgrad("guided", samples=4), "pixels"),
    Variant("occlusion", {"window": 3, "stride": 2}, _occlusion(window=3, stride=2), "signed"),
    Variant(
        "occlusion",
        {
            "window": (4, 3),
            "stride": (3, 2),
            "baseline": torch.tensor([0.5, -0.25, 1.0]).view(3, 1, 1),
            "score": "logit",
        },
        _occlusion(window=(4, 3), stride=(3, 2), baseline=torch.tensor([0.5, -0.25, 1.0]).view(3, 1, 1), score="logit"),
        "signed",
    ),
    Variant("rise", {"n_masks": 12, "cells": 3, "seed": 1}, _rise(n_masks=12, cells=3, seed=1), "signed"),
    Variant(
        "rise",
        {"n_masks": 10, "cells": 2, "p": 0.3, "seed": 2, "score": "logit"},
        _rise(n_masks=10, cells=2, p=0.3, seed=2, score="logit"),
        "signed",
    ),
    Variant(
        "lime", {"segmentation": LIME_LABELS, "n_samples": 24}, _lime(segmentation=LIME_LABELS, n_samples=24), "signed"
    ),
    Variant(
        "lime",
        {
            "segmentation": LIME_LABELS,
            "n_samples": 20,
            "baseline": 0.25,
            "kernel_width": 0.5,
            "alpha": 0.1,
            "seed": 3,
            "score": "logit",
        },
        _lime(
            segmentation=LIME_LABELS, n_samples=20, baseline=0.25, kernel_width=0.5, alpha=0.1, seed=3, score="logit"
        ),
        "signed",
    ),
    Variant(
        "lime",
        {"segmentation": LIME_LABELS, "n_samples": 16, "baseline": "zero"},
        _lime(segmentation=LIME_LABELS, n_samples=16, baseline="zero"),
        "signed",
    ),
    # layer-wise relevance propagation: zennit's four composites and rule objects
    Variant("lrp", {}, _lrp("epsilon-plus-flat"), "relevance"),
    Variant(
        "lrp",
        {"composite": "epsilon-gamma-box", "first": WSquare(), "linear": Epsilon(0.25)},
        _lrp("epsilon-gamma-box", first=WSquare(), linear=Epsilon(0.25)),
        "relevance",
    ),
    Variant("lrp-epsilon-plus", {}, _lrp("epsilon-plus"), "relevance"),
    Variant("lrp-epsilon-plus-flat", {"epsilon": 0.1}, _lrp("epsilon-plus-flat", epsilon=0.1), "relevance"),
    Variant(
        "lrp-epsilon-gamma-box", {"low": -3.0, "high": 3.0}, _lrp("epsilon-gamma-box", low=-3.0, high=3.0), "relevance"
    ),
    Variant(
        "lrp-epsilon-gamma-box",
        {"gamma": 0.5, "low": [-2.0, -2.5, -3.0], "high": [2.0, 2.5, 3.0]},
        _lrp("epsilon-gamma-box", gamma=0.5, low=[-2.0, -2.5, -3.0], high=[2.0, 2.5, 3.0]),
        "relevance",
    ),
    # the default bounds: lrp.py computes the ImageNet bounds in float32 (-mean / std of float32 tensors), which
    # moves the map by ~4e-8 of its max against the float64 bounds; the float64 bounds above match to 1e-10
    Variant("lrp-epsilon-gamma-box", {}, _lrp("epsilon-gamma-box"), "relevance", rtol=1e-6),
    Variant("lrp-epsilon-alpha2-beta1", {}, _lrp("epsilon-alpha2-beta1"), "relevance"),
]


VARIANTS: list[Variant] = [
    Variant(
        "cam",
        {},
        lambda m, x, mod, call, ids, case: ref.cam(m, x, mod, call, m.get_submodule(case.head).weight, ids),
    ),
    Variant("eigencam", {}, lambda m, x, mod, call, ids, case: ref.eigencam(m, x, mod, call, ids)),
    Variant("eigencam", {"center": True}, lambda m, x, mod, call, ids, case: ref.eigencam(m, x, mod, call, ids, True)),
    *[
        Variant(name, options, _gradient(formula, sign), "pixels" if name == "guided-gradcam" else "layer")
        for name, formula in GRADIENT.items()
        for sign, options in SIGNS.items()
    ],
    *[
        Variant(name, options, _pixels(rule, sign), "pixels")
        for name, rule in PIXEL_RULES.items()
        for sign, options in SIGNS.items()
    ],
    Variant("scorecam", {}, lambda m, x, mod, call, ids, case: ref.scorecam(m, x, mod, call, ids)),
    Variant(
        "scorecam",
        {"score": "logit", "baseline": False},
        lambda m, x, mod, call, ids, case: ref.scorecam(m, x, mod, call, ids, "logit", baseline=False),
    ),
    Variant(
        # pytorch-grad-cam's settings
        "scorecam",
        {"score": "logit", "channel_softmax": True, "align_corners": True},
        lambda m, x, mod, call, ids, case: ref.scorecam(
            m, x, mod, call, ids, "logit", channel_softmax=True, align_corners=True
        ),
    ),
    Variant("ablationcam", {}, lambda m, x, mod, call, ids, case: ref.ablationcam(m, x, mod, call, ids)),
    *NEW_VARIANTS,
]


def _variant_id(v: Variant) -> str:
    def show(val: Any) -> str:
        return f"tensor{tuple(val.shape)}" if isinstance(val, torch.Tensor) else str(val)

    return v.method + "".join(f"-{k}={show(val)}" for k, val in v.options.items())


def test_every_registered_method_has_a_reference() -> None:
    assert set(camlens.methods()) == {v.method for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
@pytest.mark.parametrize("net", list(CASES))
def test_method_matches_paper_literal_reference(net: str, variant: Variant) -> None:
    method, options, reference, view, rtol = variant
    model, x, case = _setup(net)
    layer = case.layer if view == "layer" or method == "guided-gradcam" else None
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
    if view == "layer":
        assert exp.layer == case.layer
    else:
        assert exp.pixels is not None
        assert exp.layer == ("input" if method != "guided-gradcam" else case.layer)
        if view == "signed":
            assert_maps_close(exp.pixels, expected[:, :, None].expand_as(exp.pixels), rtol)
        else:
            assert_maps_close(exp.pixels.flatten(2, 3), expected.flatten(2, 3), rtol)
            # LRP's heatmap is the relevance summed over channels, signed; the others show max_c |.|
            expected = expected.sum(2) if view == "relevance" else ref.max_abs_over_channels(expected)
    assert_maps_close(exp.raw, expected, rtol)


def test_references_are_not_all_alike() -> None:
    """The comparisons above have teeth: on FunctionalNet (signed activation, non-linear tail) the
    references of different methods give different maps, so a method returning another one's map fails.
    The layer maps of conv2 and the pixel methods' views are all 8 x 8: every pair is compared."""
    model, x, case = _setup("FunctionalNet")
    mod, ids = _module(model, case), ref.top_ids(model, x, 2)
    view = ref.max_abs_over_channels
    rise_masks = ref.rise_masks(*RISE(model, n_masks=12, cells=3, seed=1).draw((8, 8)), (8, 8))
    lime_design = LIME(model, n_samples=24, segmentation=LIME_LABELS).sample_matrix(6, torch.Generator().manual_seed(0))
    maps = {
        "gradcam": ref.gradcam(model, x, mod, 0, ids),
        "gradcam++": ref.gradcampp(model, x, mod, 0, ids),
        "xgradcam": ref.xgradcam(model, x, mod, 0, ids),
        "hirescam": ref.hirescam(model, x, mod, 0, ids),
        "layercam": ref.layercam(model, x, mod, 0, ids),
        "ablationcam": ref.ablationcam(model, x, mod, 0, ids),
        "scorecam": ref.scorecam(model, x, mod, 0, ids),
        "saliency": view(ref.input_gradients(model, x, ids)),
        "integrated-gradients": view(ref.integrated_gradients(model, x, ids, torch.zeros_like(x), "gausslegendre", 8)),
        "smoothgrad": view(ref.smoothgrad(model, x, ids, smoothgrad_noise(x, 4), None)),
        "occlusion": ref.occlusion(model, x, ids, (3, 3), (2, 2), 0.0),
        "rise": ref.rise(model, x, ids, rise_masks, 0.5),
        "lime": ref.lime(model, x, ids, LIME_LABELS, lime_design),
        **{
            f"lrp-{name}": view(ref.lrp(model, x, ids, ref.lrp_composite(name, low=-3.0, high=3.0)))
            for name in ("epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1")
        },
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
