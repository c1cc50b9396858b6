"""Layer-wise relevance propagation: hand-computed rules, conservation, agreement with zennit, the model untouched.

Agreement with zennit is measured on models whose batch norms have ``eps = 0``: zennit's canonizer merges a
batch norm into the convolution and leaves the batch norm with mean 0, variance 1, so it still divides by
sqrt(1 + eps) (0.999995 per layer at eps=1e-5); its canonized ResNet-18 computes logits 6e-5 (relative) away
from the model's own, and LRP maps differ by 3e-4 of their maximum. camlens folds the exact affine map the
forward applies. With eps = 0 both compute the model's function and agree to about 1e-6 of the map's maximum.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens.methods.lrp import LRP, AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus
from tests import nets

COMPOSITES = ["lrp-epsilon-plus", "lrp-epsilon-plus-flat", "lrp-epsilon-gamma-box", "lrp-epsilon-alpha2-beta1"]


class TwoLayer(nn.Module):
    """x (2) -> linear W1 -> ReLU -> linear W2 -> y (1), no biases; weights written down for hand computation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2, bias=False)
        self.fc2 = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, 2.0]]))
            self.fc2.weight.copy_(torch.tensor([[2.0, -1.0]]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


# x = (1, 2): z1 = (1 + 2, -1 + 4) = (3, 3) -> a = (3, 3) -> y = 2*3 - 3 = 3. R_y = y = 3.
# Output layer, epsilon: R_a = a_j w_j R_y / y = (3*2*3/3, 3*(-1)*3/3) = (6, -3).
X = torch.tensor([[[[1.0]], [[2.0]]]])  # (1, 2, 1, 1): a pixel method's (B, C, H, W) input
HAND = {
    # R_i = sum_j x_i w_ij R_j / z_j: x1: 1*1*6/3 + 1*(-1)*(-3)/3 = 3; x2: 2*1*6/3 + 2*2*(-3)/3 = 0
    "epsilon": (Epsilon(0.0), [3.0, 0.0]),
    # z+ = (1 + 2, 0 + 4) = (3, 4): x1: 1*1*6/3 + 0 = 2; x2: 2*1*6/3 + 2*2*(-3)/4 = 4 - 3 = 1
    "z-plus": (ZPlus(stabilizer=0.0), [2.0, 1.0]),
    # w^2 / sum w^2: neuron 1 (1, 1)/2 * 6 = (3, 3); neuron 2 (1, 4)/5 * (-3) = (-0.6, -2.4)
    "w-square": (WSquare(stabilizer=0.0), [2.4, 0.6]),
    # 1 / 2 each: (3, 3) + (-1.5, -1.5)
    "flat": (Flat(stabilizer=0.0), [1.5, 1.5]),
    # alpha 2, beta 1: neuron 1 has no negative part: 2 * (2, 4); neuron 2: 2 * (0, -3) minus its negative
    # part, x1 w- R / z- = 1*(-1)*(-3)/(-1) = -3 on x1
    "alpha2-beta1": (AlphaBeta(2.0, 1.0), [7.0, 2.0]),
}


@pytest.mark.parametrize("rule", list(HAND))
def test_hand_computed_rules_on_a_two_layer_net(rule: str) -> None:
    first, expected = HAND[rule]
    exp = LRP(TwoLayer(), composite="epsilon-plus", first=first, linear=Epsilon(0.0))(X, targets=0)
    assert exp.pixels is not None
    torch.testing.assert_close(exp.scores, torch.tensor([[3.0]]))
    torch.testing.assert_close(exp.pixels.flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-5)


class BiasFreeNet(nn.Module):
    """conv -> BN (no shift) -> ReLU (in place) -> max pool -> residual block (functional add) -> avg pool -> fc."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 5, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn1.bias.zero_()  # a shift is a bias: it would absorb relevance
            self.bn1.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            self.bn1.weight.abs_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu_(self.bn1(self.conv1(x))), 2)
        x = F.relu(x + self.conv3(F.relu(self.conv2(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


CONSERVING = {
    "epsilon -> 0": dict(conv=Epsilon(1e-9), linear=Epsilon(1e-9)),
    "epsilon-plus": dict(composite="epsilon-plus"),
    "epsilon-plus-flat": dict(composite="epsilon-plus-flat"),
    "epsilon-gamma-box": dict(composite="epsilon-gamma-box", low=-3.0, high=3.0),
    "w-square first": dict(first=WSquare(stabilizer=0.0)),  # sum w^2 > 0; 1e-6 leaks where BN scales w down
}


@pytest.mark.parametrize("rules", list(CONSERVING))
def test_relevance_sums_to_the_logit_without_biases(rules: str) -> None:
    model = BiasFreeNet()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).clamp(-3, 3)
    exp = LRP(model, **CONSERVING[rules])(x, targets="top2")  # type: ignore[arg-type]
    assert exp.pixels is not None
    sums = exp.pixels.sum((2, 3, 4))
    torch.testing.assert_close(sums, exp.scores, rtol=1e-5, atol=1e-5 * float(exp.scores.abs().max()))


def test_epsilon_absorbs_relevance_as_the_rule_says() -> None:
    """A large epsilon: the output layer passes on R * (z - b)/(z + eps) only; here by hand on TwoLayer."""
    exp = LRP(TwoLayer(), composite="epsilon-plus", first=Epsilon(0.0), linear=Epsilon(1.0))(X, targets=0)
    assert exp.pixels is not None
    # y = 3, output layer: R_a = a w R / (3 + 1) = (6, -3) * 3/4; first layer epsilon 0 conserves
    torch.testing.assert_close(exp.pixels.sum(), torch.tensor(3.0 * 3 / 4))


# ---------------------------------------------------------------- zennit


def _randomise_batch_norms(model: nn.Module, seed: int = 0, eps: float | None = 0.0) -> nn.Module:
    """Random statistics and affine parameters (else folding is a no-op); ``eps`` (None: kept) see above."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                if eps is not None:  # see the module docstring: zennit's merged batch norm divides by sqrt(1 + eps)
                    m.eps = eps
    return model.eval()


def _zennit_relevance(model: nn.Module, x: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """zennit's relevance for the top-1 class, one-hot x logit at the output; and the class ids."""
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canonizers = [ResNetCanonizer() if hasattr(model, "layer1") else VGGCanonizer()]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    low, high = (-mean / std).view(1, 3, 1, 1).expand_as(x), ((1 - mean) / std).view(1, 3, 1, 1).expand_as(x)
    composite = {
        "lrp-epsilon-plus": lambda: EpsilonPlus(canonizers=canonizers),
        "lrp-epsilon-plus-flat": lambda: EpsilonPlusFlat(canonizers=canonizers),
        "lrp-epsilon-gamma-box": lambda: EpsilonGammaBox(low=low, high=high, canonizers=canonizers),
        "lrp-epsilon-alpha2-beta1": lambda: EpsilonAlpha2Beta1(canonizers=canonizers),
    }[method]()
    xx = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(xx)
        ids = out.argmax(1)
        seed = torch.zeros_like(out)
        seed[torch.arange(len(x)), ids] = out[torch.arange(len(x)), ids].detach()  # one-hot x logit
        (relevance,) = torch.autograd.grad(out, xx, seed)
    return relevance, ids


def _agree(model: nn.Module, method: str) -> float:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    theirs, ids = _zennit_relevance(model, x, method)
    ours = camlens.explain(model, x, method=method, targets=ids[:, None]).pixels
    assert ours is not None
    scale = float(theirs.abs().max())
    # relative to the map's maximum: relevance of a random net spans many orders of magnitude
    torch.testing.assert_close(ours[:, 0], theirs, rtol=1e-5, atol=1e-5 * scale)
    return float((ours[:, 0] - theirs).abs().max()) / scale


@pytest.mark.parametrize("method", COMPOSITES)
@pytest.mark.parametrize("arch", ["vgg11", "resnet18"])
def test_agrees_with_zennit_per_composite(arch: str, method: str) -> None:
    pytest.importorskip("zennit")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    _agree(_randomise_batch_norms(getattr(torchvision.models, arch)()), method)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
def test_agrees_with_zennit_on_vgg16_and_resnet50(arch: str) -> None:
    pytest.importorskip("zennit")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    _agree(_randomise_batch_norms(getattr(torchvision.models, arch)()), "lrp-epsilon-gamma-box")


# ---------------------------------------------------------------- EfficientNet-Lite0


def _lite0_without_shifts() -> nn.Module:
    """Random EfficientNet-Lite0 with batch norms scaled to unit-variance outputs and no shifts (no biases at all)."""
    from camlens.models.efficientnet_lite import EfficientNetLite0

    torch.manual_seed(0)
    model = EfficientNetLite0()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0  # running statistics := this batch's
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
        for bn in bns:
            bn.running_mean.zero_()
            bn.bias.zero_()
        model._fc.bias.zero_()
    return model.eval()


@pytest.mark.parametrize("method", [*COMPOSITES, "lrp"])
def test_efficientnet_lite0_runs_and_conserves(method: str) -> None:
    """ReLU6 (one module used twice), TF "same" padding by F.pad, residual y + x, depthwise convolutions."""
    model = _lite0_without_shifts()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)).clamp(-2, 2)
    exp = camlens.explain(model, x, method=method, targets="top2", low=-2.0, high=2.0)
    assert exp.pixels is not None and torch.isfinite(exp.pixels).all()
    sums = exp.pixels.sum((2, 3, 4))
    if method == "lrp-epsilon-alpha2-beta1":  # alpha-beta conserves only where a neuron has both parts
        assert (sums != 0).all()
        return
    torch.testing.assert_close(sums, exp.scores, rtol=1e-4, atol=1e-4 * float(exp.scores.abs().max()))


def test_same_padding_is_not_an_input_for_the_flat_rule() -> None:
    """A 3x3 stride-2 "same" conv on 4x4 pads right/bottom only: flat splits R over real pixels (all conserved)."""
    from camlens.models.efficientnet_lite import _SameConv2d

    conv = _SameConv2d(1, 1, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(4, 1, bias=False)).eval()
    with torch.no_grad():
        model[2].weight.fill_(1.0)
    x = torch.ones(1, 1, 4, 4)
    exp = LRP(model, composite="epsilon-plus-flat")(x, targets=0)
    assert exp.pixels is not None
    # outputs (windows) cover 9, 6, 6, 4 real pixels with 9 each -> y = 9 + 6 + 6 + 4 = 25, R_j = z_j
    assert float(exp.scores) == 25.0
    torch.testing.assert_close(exp.pixels.sum(), torch.tensor(25.0))
    # pixel (0, 0) is only in window (0, 0): 9 real pixels, R = 9 -> 1 each
    torch.testing.assert_close(exp.pixels[0, 0, 0, 0, 0], torch.tensor(1.0))


# ---------------------------------------------------------------- the model is untouched


def _state(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[int]]:
    params = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()]
    return params, hooks


def _unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], list[int]]) -> None:
    params, hooks = _state(model)
    assert params.keys() == before[0].keys()
    for name, value in params.items():
        assert torch.equal(value, before[0][name]), f"{name} changed"  # bitwise
    assert hooks == before[1] and not any(hooks)
    assert all(p.grad is None for p in model.parameters())
    assert torch._C._len_torch_function_stack() == 0


def test_model_unchanged_after_a_call_and_after_an_exception() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = _randomise_batch_norms(torchvision.models.resnet18())
    before = _state(model)
    x = torch.randn(1, 3, 64, 64)
    for method in COMPOSITES:
        camlens.explain(model, x, method=method)
        _unchanged(model, before)

    def failing(output: torch.Tensor) -> torch.Tensor:
        raise KeyError("target failed")

    with pytest.raises(KeyError, match="target failed"):
        camlens.explain(model, x, method="lrp", targets=failing)
    _unchanged(model, before)
    assert model.layer1[0].relu.inplace and not model.training


def test_an_untreated_activation_is_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    before = _state(model)
    with pytest.raises(ValueError, match=r"module '1' \(SiLU\) has no LRP rule"):
        camlens.explain(model, torch.randn(1, 3, 8, 8), method="lrp")
    _unchanged(model, before)


def test_functional_and_inplace_relus_and_residual_add() -> None:
    """tests.nets.FunctionalNet: F.relu, torch.relu_, a residual add: the same as its module-free reference."""
    model = nets.FunctionalNet()
    x = nets.inputs(2, 8)
    exp = camlens.explain(model, x, method="lrp-epsilon-plus", targets="top2")
    assert exp.pixels is not None and torch.isfinite(exp.pixels).all()
    # the model's own output is unchanged by the interception (in-place ReLUs still write their argument)
    with torch.no_grad():
        torch.testing.assert_close(exp.output, model(x))


def test_rule_options_are_checked() -> None:
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="unknown LRP composite"):
        LRP(TwoLayer(), composite="epsilon")
    with pytest.raises(TypeError, match="must be an LRP rule"):
        LRP(TwoLayer(), conv="gamma")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):
        LRP(TwoLayer(), first=ZBox(low=[0.0, 0.0, 0.0], high=1.0))(X, targets=0)
    assert Gamma().gamma == 0.25
