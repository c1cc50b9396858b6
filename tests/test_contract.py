"""The contract of every registered method, on small networks.

Parametrised over ``camlens.methods()``, so a newly registered method is covered without editing this
file. What every method must keep:

* shapes: ``raw`` (B, K, h, w) at the layer's resolution (input resolution for pixel methods, which
  also give ``pixels`` (B, K, C, H, W)), ``maps`` (B, K, H, W), finite (the values of ``maps``, one
  property for every method, are worked out by hand in tests/test_handcomputed.py);
* nothing left behind, after success and after an exception raised anywhere (a callable target, a
  module of the model, the model's own forward after the layer ran): no module / global / tensor hook,
  no torch-function mode, the caller's grad mode; the model's training flags, ``requires_grad``,
  ``.grad`` (same object, same values) and ``inplace`` flags; the input's values, version counter,
  ``requires_grad`` and ``.grad``; explaining inside ``torch.no_grad()`` works and restores it;
* no parameter gradient is ever computed;
* a batch is explained sample by sample (a batch of 2 == two batches of 1), chunking does not change
  perturbation methods, float64 agrees with float32;
* a thousand calls do not grow memory; the model is not kept alive.

Every expected value here is computed without camlens (shapes from the nets' own geometry, ids from
the model's logits, states from snapshots taken before the call).
"""

from __future__ import annotations

import gc
import inspect
import sys
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.modules.module as module_globals
from torch import nn

import camlens
from tests import nets

METHODS = camlens.methods()
# pixel-space methods: raw at the input's resolution, pixels (B, K, C, H, W)
PIXEL = {"saliency", "guided-backprop", "deconvnet", "guided-gradcam"}
SIZE = 8  # input H = W
LAYER_HW = (4, 4)  # GapNet "features" and SharedActNet "act@1": a stride-2 conv on the 8x8 input


def _is_pixel(method: str) -> bool:
    return method in PIXEL or not camlens.get_method(method).takes_layer


def _layer_arg(method: str, layer: str | None) -> str | None:
    """Methods that explain the input pixels take no layer."""
    return layer if camlens.get_method(method).takes_layer else None


class Flaky(nn.ReLU):
    """A ReLU that raises on its ``fail_at``-th call (counting every call, across forward passes)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("flaky module failed")
        return super().forward(x)


def _gapnet(flaky: Flaky | None = None) -> nn.Module:
    model = nets.GapNet()
    if flaky is not None:
        model.features[1] = flaky
    return model


def _sharedact(flaky: Flaky | None = None) -> nn.Module:
    model = nets.SharedActNet()
    if flaky is not None:
        model.act = flaky  # runs twice per forward pass
    return model


# name -> (factory, layer, expected layer string, submodule to put in training mode, classes)
CONFIGS: dict[str, tuple[Callable[..., nn.Module], str | None, str, str, int]] = {
    "GapNet-auto": (_gapnet, None, "features", "features.3", 5),
    "SharedActNet-auto": (_sharedact, None, "act@1", "head", 4),
    "SharedActNet-act@1": (_sharedact, "act@1", "act@1", "head", 4),
}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- snapshots (independent of camlens._state)

_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
)


def _hooks(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, m in model.named_modules():
        for attr in _MODULE_HOOK_DICTS:
            counts[f"{name}.{attr}"] = len(getattr(m, attr, None) or {})
    for name, p in model.named_parameters():
        counts[f"{name}:tensor_hooks"] = len(p._backward_hooks or {})
        counts[f"{name}:post_accumulate"] = len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    for attr in _GLOBAL_HOOK_DICTS:
        counts[attr] = len(getattr(module_globals, attr, None) or {})
    counts["torch_function_modes"] = torch._C._len_torch_function_stack()
    return counts


class _Snapshot:
    """Everything the contract says must be unchanged, recorded before the call."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.training = [(n, m.training) for n, m in model.named_modules()]
        self.inplace = [(n, m.inplace) for n, m in model.named_modules() if hasattr(m, "inplace")]
        self.requires_grad = [(n, p.requires_grad) for n, p in model.named_parameters()]
        self.grads = [(n, p.grad, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()]
        self.hooks = _hooks(model)
        self.grad_mode = torch.is_grad_enabled()

    def check(self) -> None:
        model = self.model
        assert [(n, m.training) for n, m in model.named_modules()] == self.training
        assert [(n, m.inplace) for n, m in model.named_modules() if hasattr(m, "inplace")] == self.inplace
        assert [(n, p.requires_grad) for n, p in model.named_parameters()] == self.requires_grad
        for (name, grad, values), (_, p) in zip(self.grads, model.named_parameters()):
            if grad is None:
                assert p.grad is None, f"{name}.grad was None and is now set"
            else:
                assert p.grad is grad, f"{name}.grad was replaced by another tensor"
                assert torch.equal(p.grad, values), f"{name}.grad values changed"
        after = _hooks(model)
        changed = {k: (v, after.get(k)) for k, v in self.hooks.items() if after.get(k) != v}
        assert not changed, f"hooks left behind: {changed}"
        assert torch.is_grad_enabled() == self.grad_mode
        assert not torch.is_inference_mode_enabled()


def _disturb(model: nn.Module, train: str) -> None:
    """A model in a mixed state: one submodule in training mode, mixed requires_grad, some .grad set."""
    model.eval()
    model.get_submodule(train).train()
    g = torch.Generator().manual_seed(7)
    for i, (_, p) in enumerate(model.named_parameters()):
        p.requires_grad_(i % 3 != 1)
        if i % 2 == 0:
            p.grad = torch.randn(p.shape, generator=g)


class _ParamGradSpy:
    """Records every gradient computed for a parameter (a tensor hook on each that requires grad)."""

    def __init__(self, model: nn.Module) -> None:
        self.fired: list[str] = []
        self.handles = [
            p.register_hook(lambda g, n=n: self.fired.append(n)) for n, p in model.named_parameters() if p.requires_grad
        ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _input_states() -> list[str]:
    return ["plain", "requires_grad", "requires_grad_with_grad"]


def _make_input(kind: str) -> torch.Tensor:
    x = nets.inputs(2, SIZE)
    if kind != "plain":
        x.requires_grad_(True)
    if kind == "requires_grad_with_grad":
        x.grad = torch.full_like(x, 0.5)
    return x


# ---------------------------------------------------------------- shapes and values


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", METHODS)
def test_shapes_values_and_ids(method: str, config: str) -> None:
    make, layer, expected_layer, _, classes = CONFIGS[config]
    model = make()
    x = nets.inputs(2, SIZE)
    with torch.no_grad():
        logits = model(x)
    exp = camlens.explain(model, x, method=method, layer=_layer_arg(method, layer), targets="top3")
    ids = logits.topk(3, dim=1).indices
    if _is_pixel(method):
        assert exp.pixels is not None and exp.pixels.shape == (2, 3, 3, SIZE, SIZE)
        assert exp.raw.shape == (2, 3, SIZE, SIZE)
    else:
        assert exp.pixels is None
        assert exp.raw.shape == (2, 3, *LAYER_HW)
        assert exp.layer == expected_layer
    assert exp.maps.shape == (2, 3, SIZE, SIZE)
    assert exp.raw.dtype == torch.float32 and exp.maps.dtype == torch.float32
    assert torch.isfinite(exp.raw).all() and torch.isfinite(exp.maps).all()
    assert exp.targets is not None and torch.equal(exp.targets, ids)
    torch.testing.assert_close(exp.scores, logits.gather(1, ids), rtol=1e-5, atol=1e-6)
    assert not exp.raw.requires_grad and not exp.maps.requires_grad and not exp.scores.requires_grad
    torch.testing.assert_close(exp.output, logits, rtol=1e-5, atol=1e-6)
    for name in ("raw", "maps", "scores", "targets", "output", "pixels"):
        value = getattr(exp, name)
        if value is not None:  # ordinary tensors: usable in autograd code and in place
            assert not value.is_inference(), name
    assert classes == logits.shape[1]


# ---------------------------------------------------------------- nothing left behind


@pytest.mark.parametrize("kind", _input_states())
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", METHODS)
def test_state_unchanged_after_success(method: str, config: str, kind: str) -> None:
    make, layer, _, train, _ = CONFIGS[config]
    model = make()
    _disturb(model, train)
    x = _make_input(kind)
    x_values, x_version, x_grad = x.detach().clone(), x._version, x.grad
    x_grad_values = None if x_grad is None else x_grad.clone()
    snapshot = _Snapshot(model)
    spy = _ParamGradSpy(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the training-mode warning is tested on its own
            exp = camlens.explain(model, x, method=method, layer=_layer_arg(method, layer), targets="top2")
    finally:
        spy.remove()
    assert exp.maps.shape == (2, 2, SIZE, SIZE)
    assert not spy.fired, f"parameter gradients were computed: {spy.fired}"
    snapshot.check()
    # the input: same values, never written to, same requires_grad and .grad
    assert torch.equal(x.detach(), x_values)
    assert x._version == x_version, "the input was modified in place (and maybe restored)"
    assert x.requires_grad == (kind != "plain")
    assert x.grad is x_grad
    if x_grad is not None:
        assert torch.equal(x.grad, x_grad_values)


def _raising_target(fail_at: int | None, counter: list[int]) -> Callable[[Any], torch.Tensor]:
    def target(out: torch.Tensor) -> torch.Tensor:
        counter.append(1)
        if fail_at is not None and len(counter) == fail_at:
            raise KeyError("target callable failed")
        return out[:, :2]

    return target


def _failure_points(total: int) -> list[int]:
    """The 2nd call (the 1st if there is only one) and the last call."""
    return sorted({min(2, total), total} if total >= 1 else set())


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", METHODS)
def test_state_unchanged_after_a_raising_target(method: str, config: str) -> None:
    make, layer, _, train, _ = CONFIGS[config]
    cls = camlens.get_method(method)
    x = nets.inputs(2, SIZE)
    # dry run: how often does this method call the target?
    counter: list[int] = []
    if cls.needs_class_ids:
        model = make()
        _disturb(model, train)
        snapshot = _Snapshot(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match="gradcam"):
                camlens.explain(model, x, method=method, layer=_layer_arg(method, layer), targets=lambda o: o[:, 0])
        snapshot.check()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        camlens.explain(
            make(), x, method=method, layer=_layer_arg(method, layer), targets=_raising_target(None, counter)
        )
    points = _failure_points(len(counter))
    assert points
    for fail_at in points:
        model = make()
        _disturb(model, train)
        snapshot = _Snapshot(model)
        spy = _ParamGradSpy(model)
        x_before = x.clone()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(KeyError, match="target callable failed"):
                    camlens.explain(
                        model, x, method=method, layer=_layer_arg(method, layer), targets=_raising_target(fail_at, [])
                    )
        finally:
            spy.remove()
        assert not spy.fired
        snapshot.check()
        assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


@pytest.mark.parametrize("grad_mode", ["grad", "no_grad"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", METHODS)
def test_state_unchanged_after_a_raising_module(method: str, config: str, grad_mode: str) -> None:
    make, layer, _, train, _ = CONFIGS[config]
    x = nets.inputs(2, SIZE)
    dry = Flaky()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        camlens.explain(make(dry), x, method=method, layer=_layer_arg(method, layer), targets="top2")
    points = _failure_points(dry.calls)
    assert points
    for fail_at in points:
        model = make(Flaky(fail_at))
        _disturb(model, train)
        with torch.set_grad_enabled(grad_mode == "grad"):
            snapshot = _Snapshot(model)
            spy = _ParamGradSpy(model)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with pytest.raises(RuntimeError, match="flaky module failed"):
                        camlens.explain(model, x, method=method, layer=_layer_arg(method, layer), targets="top2")
            finally:
                spy.remove()
            assert not spy.fired
            snapshot.check()


class _Boom(nn.Module):
    """GapNet whose own forward raises on demand after its features (the layer, ``net.features``) ran."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nets.GapNet()
        self.explode = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net.features(x)
        if self.explode:
            raise RuntimeError("boom")
        return self.net.fc(self.net.pool(feats).flatten(1))


@pytest.mark.parametrize("method", METHODS)
def test_state_unchanged_after_a_raising_forward(method: str) -> None:
    """A target raising at its first call, then the model's forward raising after the layer's hook fired,
    on a nested layer name; every parameter has a ``.grad``, the head's weight does not require grad."""
    model = _Boom()
    _disturb(model, "net.features.3")
    with torch.no_grad():
        for p in model.parameters():
            p.grad = torch.ones_like(p)
    model.net.fc.weight.requires_grad_(False)
    x = nets.inputs(2, SIZE)
    layer = _layer_arg(method, "net.features")
    snapshot = _Snapshot(model)
    spy = _ParamGradSpy(model)
    with_spy = _Snapshot(model)  # the spy's own tensor hooks counted
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # CAM refuses a callable target (ValueError) before calling it
            with pytest.raises((KeyError, ValueError)):
                camlens.explain(model, x, method=method, layer=layer, targets=_raising_target(1, []))
            with_spy.check()
            model.explode = True
            with pytest.raises(RuntimeError, match="boom"):
                camlens.explain(model, x, method=method, layer=layer)
    finally:
        spy.remove()
    assert not spy.fired
    snapshot.check()
    assert not x.requires_grad and x.grad is None


def test_gradient_methods_work_inside_no_grad() -> None:
    model = nets.GapNet()
    with torch.no_grad():
        exp = camlens.explain(model, nets.inputs(2, SIZE), method="gradcam")
        assert not torch.is_grad_enabled()  # the caller's grad mode is restored
    assert exp.raw.abs().sum() > 0


@pytest.mark.parametrize(
    "method",
    METHODS,
)
def test_training_mode_warns(method: str) -> None:
    model = nets.GapNet()
    model.eval()
    model.features[3].train()
    with pytest.warns(UserWarning, match="training mode"):
        camlens.explain(model, nets.inputs(2, SIZE), method=method)
    assert model.features[3].training and not model.features[0].training


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_training_mode_leaves_batchnorm_statistics_alone(method: str) -> None:
    model = nets.GapNet()
    model.eval()
    bn = model.features[3]
    bn.train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        camlens.explain(model, nets.inputs(2, SIZE), method=method)
    changed = [n for n, b in model.named_buffers() if not torch.equal(b, buffers[n])]
    assert not changed, f"buffers changed: {changed}"


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_not_kept_alive(method: str) -> None:
    model = nets.SharedActNet()
    exp = camlens.explain(model, nets.inputs(2, SIZE), method=method)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None, "camlens keeps a reference to the model after the call"
    assert exp.maps.shape[0] == 2


# ---------------------------------------------------------------- consistency


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", METHODS)
def test_batch_of_two_equals_two_batches_of_one(method: str, config: str) -> None:
    make, layer, _, _, _ = CONFIGS[config]
    model = make()
    x = nets.inputs(2, SIZE)
    layer = _layer_arg(method, layer)
    both = camlens.explain(model, x, method=method, layer=layer, targets=[[1, 3], [2, 0]])
    first = camlens.explain(model, x[:1], method=method, layer=layer, targets=[[1, 3]])
    second = camlens.explain(model, x[1:], method=method, layer=layer, targets=[[2, 0]])
    split = torch.cat([first.raw, second.raw])
    scale = max(1.0, float(split.abs().max()))
    torch.testing.assert_close(both.raw, split, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(both.scores, torch.cat([first.scores, second.scores]), rtol=1e-5, atol=1e-6)


def _chunked_methods() -> list[str]:
    found = [m for m in METHODS if "batch_size" in inspect.signature(camlens.get_method(m).__init__).parameters]
    assert {"scorecam", "ablationcam"} <= set(found)
    return found


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", _chunked_methods())
def test_chunked_equals_unchunked(method: str, config: str) -> None:
    make, layer, _, _, _ = CONFIGS[config]
    layer = _layer_arg(method, layer)
    model = make()
    x = nets.inputs(2, SIZE)
    one = camlens.explain(model, x, method=method, layer=layer, targets="top2", batch_size=1)
    three = camlens.explain(model, x, method=method, layer=layer, targets="top2", batch_size=3)
    big = camlens.explain(model, x, method=method, layer=layer, targets="top2", batch_size=1000)
    scale = max(1.0, float(big.raw.abs().max()))
    torch.testing.assert_close(one.raw, big.raw, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(three.raw, big.raw, rtol=1e-5, atol=1e-5 * scale)
    assert big.raw.abs().max() > 0


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("method", METHODS)
def test_float64_equals_float32(method: str, config: str) -> None:
    make, layer, _, _, _ = CONFIGS[config]
    layer = _layer_arg(method, layer)
    x = nets.inputs(2, SIZE)
    e32 = camlens.explain(make(), x, method=method, layer=layer, targets=[[0, 1], [2, 3]])
    e64 = camlens.explain(make().double(), x.double(), method=method, layer=layer, targets=[[0, 1], [2, 3]])
    assert e32.raw.dtype == torch.float32 and e64.raw.dtype == torch.float64
    assert e64.maps.dtype == torch.float64
    torch.testing.assert_close(e32.maps.double(), e64.maps, rtol=0, atol=1e-4)
    scale = float(e64.raw.abs().max())
    torch.testing.assert_close(e32.raw.double(), e64.raw, rtol=1e-4, atol=1e-4 * max(scale, 1e-6))


# ---------------------------------------------------------------- memory


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc/self/status")
@pytest.mark.parametrize("method", ["gradcam", "cam", "guided-backprop"])
def test_a_thousand_calls_do_not_grow_memory(method: str) -> None:
    """Both ways in: ``camlens.explain`` (a method object per call) and one method object called again."""
    model = nets.GapNet()
    x = nets.inputs(2, SIZE)
    hooks = _hooks(model)
    reused = camlens.get_method(method)(model)

    def call() -> None:
        assert camlens.explain(model, x, method=method, targets="top2").maps.shape == (2, 2, SIZE, SIZE)
        assert reused(x, "top2").maps.shape == (2, 2, SIZE, SIZE)

    for _ in range(150):  # warm-up: allocator pools, lazily created objects
        call()
    gc.collect()
    objects, blocks, rss = len(gc.get_objects()), sys.getallocatedblocks(), _rss_bytes()
    for _ in range(1000):
        call()
    gc.collect()
    grown_objects = len(gc.get_objects()) - objects
    grown_blocks = sys.getallocatedblocks() - blocks  # also counts objects the gc does not track
    grown_rss = _rss_bytes() - rss
    assert grown_objects < 50, f"{grown_objects} more live objects after 1000 calls"
    assert grown_blocks < 500, f"{grown_blocks} more allocated memory blocks after 1000 calls"
    assert grown_rss < 4 * 2**20, f"RSS grew by {grown_rss / 2**20:.1f} MiB over 1000 calls"
    assert _hooks(model) == hooks
