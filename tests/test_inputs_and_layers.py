"""Targets, layers and inputs: every form a user writes, and a clear error for every mistake."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import camlens
from tests import nets


@pytest.fixture
def model() -> nn.Module:
    return nets.GapNet(channels=8, classes=5)


@pytest.fixture
def x() -> torch.Tensor:
    return nets.inputs(2, 8)


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("targets", "ids"),
    [
        (3, [[3], [3]]),
        ([4, 0], [[4], [0]]),
        ([[4, 0], [1, 2]], [[4, 0], [1, 2]]),
        (torch.tensor([2, 1]), [[2], [1]]),
        (torch.tensor([[2, 1, 0], [0, 1, 2]]), [[2, 1, 0], [0, 1, 2]]),
    ],
)
def test_class_id_forms(model: nn.Module, x: torch.Tensor, targets: object, ids: list[list[int]]) -> None:
    exp = camlens.explain(model, x, targets=targets)
    assert exp.targets is not None and exp.targets.tolist() == ids
    logits = model(x).detach()
    torch.testing.assert_close(exp.scores, logits.gather(1, torch.tensor(ids)))


@pytest.mark.parametrize("spec", ["top3", " TOP3 "])
def test_topk(model: nn.Module, x: torch.Tensor, spec: str) -> None:
    exp = camlens.explain(model, x, targets=spec)
    expected = model(x).detach().topk(3, dim=1).indices
    assert exp.targets is not None and torch.equal(exp.targets, expected)


def test_none_is_top1(model: nn.Module, x: torch.Tensor) -> None:
    exp = camlens.explain(model, x)
    assert exp.targets is not None and exp.targets[:, 0].tolist() == model(x).argmax(1).tolist()


@pytest.mark.parametrize(
    ("targets", "error", "message"),
    [
        ([1, 2, 3], ValueError, "3 class ids for a batch of 2"),
        ([[1, 2]] * 3, ValueError, r"shape \(3, 2\) for a batch of 2"),
        (5, ValueError, "class id 5 is out of range"),
        (-1, ValueError, "class id -1 is out of range"),
        ([0.5, 1.0], TypeError, "must be integers"),
        (True, TypeError, "not a bool"),
        ("top0", ValueError, "K >= 1"),
        ("topX", ValueError, "not understood"),
        ("top99", ValueError, "only 5"),
        (lambda out: out[:1, 0], ValueError, r"shape \(2,\) or \(2, K\)"),
        (lambda out: 3.0, TypeError, "must return a tensor"),
    ],
)
def test_target_errors_name_the_problem(model, x, targets, error, message) -> None:
    with pytest.raises(error, match=message):
        camlens.explain(model, x, method="gradcam", targets=targets)


class _Segmenter(nn.Module):
    """(B, classes, H, W) output: class ids do not apply, a callable does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_segmentation_needs_a_callable(x: torch.Tensor) -> None:
    seg = _Segmenter()
    with pytest.raises(ValueError, match="callable"):
        camlens.explain(seg, x, method="gradcam", layer="features")
    exp = camlens.explain(seg, x, method="gradcam", layer="features", targets=lambda out: out[:, 1].sum((1, 2)))
    assert exp.targets is None
    # S = sum_ij (sum_k W_1k A_kij + b_1) through the 1x1 head: dS/dA_kij = W_1k at every pixel, so
    # alpha_k = W_1k and raw = sum_k W_1k A_k = the head's class-1 output without its bias, (2, 1, 8, 8)
    with torch.no_grad():
        expected = seg(x)[:, 1:2] - seg.head.bias[1]
    torch.testing.assert_close(exp.raw, expected, rtol=1e-5, atol=1e-6)


def test_cam_with_a_callable_suggests_gradcam(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="gradcam"):
        camlens.explain(model, x, method="cam", targets=lambda out: out[:, 0])


def test_cam_without_gap_head_suggests_gradcam(x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"linear\(global_avg_pool\(layer\)\).*gradcam"):
        camlens.explain(nets.FcNet(), x, method="cam")


def test_unknown_method_and_option(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="closest: gradcam"):
        camlens.explain(model, x, method="gradcm")
    assert camlens.get_method("Grad-CAM") is camlens.GradCAM
    assert camlens.get_method("GradCAM++") is camlens.GradCAMPlusPlus
    with pytest.raises(TypeError, match=r"no option 'bogus'.*counterfactual"):
        camlens.explain(model, x, method="gradcam", bogus=1)


def test_bad_inputs(model: nn.Module) -> None:
    with pytest.raises(TypeError, match="tensor"):
        camlens.explain(model, [[1.0]])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        camlens.explain(model, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="empty batch"):
        camlens.explain(model, torch.zeros(0, 3, 8, 8))
    single = camlens.explain(model, nets.inputs(1, 8)[0])  # (C, H, W) is one image
    assert single.raw.shape[0] == 1


# ---------------------------------------------------------------- layers


def test_layer_by_name_module_and_call(x: torch.Tensor) -> None:
    shared = nets.SharedActNet()
    by_call = camlens.explain(shared, x, layer="act@1")
    by_last = camlens.explain(shared, x, layer="act@-1")
    by_stem = camlens.explain(shared, x, layer="act@0")
    assert by_call.layer == by_last.layer == "act@1"
    assert by_call.raw.shape[-2:] == (4, 4) and by_stem.raw.shape[-2:] == (8, 8)
    torch.testing.assert_close(by_call.raw, by_last.raw)
    gap = nets.GapNet()
    assert camlens.explain(gap, x, layer=gap.features).layer == "features"


def test_module_running_twice_needs_a_call_index(x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"runs 2 times.*6x8x8, 10x4x4.*'act@0' .. 'act@1'"):
        camlens.explain(nets.SharedActNet(), x, layer="act")
    with pytest.raises(ValueError, match="call 5"):
        camlens.explain(nets.SharedActNet(), x, layer="act@5")


def test_unknown_layer_lists_near_names(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="layer 'feature' not found; closest: features"):
        camlens.explain(model, x, layer="feature")
    with pytest.raises(ValueError, match="not a submodule"):
        camlens.explain(model, x, layer=nn.ReLU())


def test_layer_that_never_runs(x: torch.Tensor) -> None:
    model = nets.GapNet()
    model.unused = nn.Conv2d(3, 3, 1).eval()
    with pytest.raises(ValueError, match="did not run"):
        camlens.explain(model, x, layer="unused")


@pytest.mark.parametrize(
    ("make", "size", "expected", "hw"),
    [
        (nets.GapNet, 8, "features", (4, 4)),
        (nets.SharedActNet, 8, "act@1", (4, 4)),
        (lambda: torchvision.models.resnet18(weights=None), 64, "layer4", (2, 2)),
        # VGG's ``features`` ends in pool5: conv5's ReLU before it (Grad-CAM's last conv layer)
        (lambda: torchvision.models.vgg11(weights=None), 64, "features.19", (4, 4)),
        (lambda: torchvision.models.mobilenet_v3_small(weights=None), 64, "features", (2, 2)),
    ],
)
def test_automatic_layer_is_the_last_spatial_one(make, size: int, expected: str, hw: tuple[int, int]) -> None:
    model = make().eval()
    exp = camlens.explain(model, nets.inputs(1, size), method="gradcam")
    assert exp.layer == expected
    assert exp.raw.shape[-2:] == hw


def test_intermediate_layer_modified_in_place_later_equals_plain_autograd() -> None:
    # vgg features.0 is a conv followed by an in-place ReLU: A and dS/dA are those of the conv output
    model = torchvision.models.vgg11(weights=None).eval()
    x = nets.inputs(1, 32)
    exp = camlens.explain(model, x, method="hirescam", layer="features.0", targets=3)
    store = {}

    def keep(m: nn.Module, i: object, o: torch.Tensor) -> torch.Tensor:
        store["a"] = o  # the conv output itself; the network continues on a copy the ReLU may overwrite
        return o.clone()

    handle = model.features[0].register_forward_hook(keep)
    try:
        out = model(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out[0, 3], store["a"])
    torch.testing.assert_close(exp.raw[0, 0], (g[0] * store["a"][0]).sum(0).detach(), rtol=1e-5, atol=1e-6)


def test_inference_mode_gives_a_clear_error(model: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            camlens.explain(model, x, method="gradcam")
        with pytest.raises(RuntimeError, match="inference_mode"):
            camlens.explain(model, x, method="guided-backprop")
        in_inference = camlens.explain(model, x, method="cam")  # no gradient needed
    # the same map as outside inference mode
    torch.testing.assert_close(in_inference.raw, camlens.explain(model, x, method="cam").raw, rtol=0, atol=0)
