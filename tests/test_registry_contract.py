"""Tier 3: the contract every registered method keeps (a new method is covered by registering it)."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import camlens
from tests import nets

METHODS = camlens.methods()
PERTURBATION = {"scorecam", "ablationcam"}


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _state(model: nn.Module) -> list[object]:
    flags = [(name, m.training, getattr(m, "inplace", None)) for name, m in model.named_modules()]
    params = [
        (name, p.requires_grad, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()
    ]
    return [flags, params]


def _same_state(a: list[object], b: list[object]) -> bool:
    flags_a, params_a = a
    flags_b, params_b = b
    if flags_a != flags_b:
        return False
    for (n1, r1, g1), (n2, r2, g2) in zip(params_a, params_b):  # type: ignore[misc]
        if n1 != n2 or r1 != r2 or (g1 is None) != (g2 is None) or (g1 is not None and not torch.equal(g1, g2)):
            return False
    return True


def _layer(method: str, layer: str | None) -> str | None:
    """Pixel methods explain the input and take no layer."""
    return layer if camlens.get_method(method).takes_layer else None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("make", "layer", "size"), [(nets.GapNet, None, 8), (nets.SharedActNet, "act@1", 8)])
def test_shapes_values_and_cleanliness(method: str, make: type[nn.Module], layer: str | None, size: int) -> None:
    model = make()
    x = nets.inputs(2, size)
    x_before = x.clone()
    hooks = _hooks(model)
    state = _state(model)
    fired: list[int] = []
    handles = [p.register_hook(lambda g: fired.append(1)) for p in model.parameters()]
    try:
        exp = camlens.explain(model, x, method=method, layer=_layer(method, layer), targets="top3")
    finally:
        for h in handles:
            h.remove()
    pixel = exp.pixels is not None
    h, w = (size, size) if pixel else (size // 2, size // 2)
    assert exp.raw.shape == (2, 3, h, w)
    assert exp.maps.shape == (2, 3, size, size)
    assert torch.isfinite(exp.raw).all() and torch.isfinite(exp.maps).all()
    assert float(exp.maps.min()) >= 0 and float(exp.maps.max()) <= 1
    assert exp.targets is not None and exp.targets.shape == (2, 3)
    assert exp.scores.shape == (2, 3)
    assert not fired, "a parameter gradient was computed"
    assert _hooks(model) == hooks
    assert _same_state(_state(model), state)
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    # every tensor handed out is an ordinary tensor, usable in autograd code
    assert not exp.raw.is_inference() and not exp.maps.is_inference()


class _Boom(nn.Module):
    """GapNet whose head raises on demand, after the features ran."""

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
def test_nothing_left_after_an_exception(method: str) -> None:
    model = _Boom()
    model.eval()
    model.net.features[3].train()  # a mixed model: one module in training mode
    with torch.no_grad():
        for p in model.parameters():
            p.grad = torch.ones_like(p)
    model.net.fc.weight.requires_grad_(False)
    state, hooks = _state(model), _hooks(model)
    x = nets.inputs(2, 8)

    def raising_target(out: torch.Tensor) -> torch.Tensor:
        raise KeyError("target failed")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((KeyError, ValueError)):
            camlens.explain(model, x, method=method, layer=_layer(method, "net.features"), targets=raising_target)
        assert _hooks(model) == hooks and _same_state(_state(model), state)
        model.explode = True
        with pytest.raises(RuntimeError, match="boom"):
            camlens.explain(model, x, method=method, layer=_layer(method, "net.features"))
    assert _hooks(model) == hooks and _same_state(_state(model), state)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", METHODS)
def test_batch_of_two_equals_two_batches_of_one(method: str) -> None:
    model = nets.GapNet()
    x = nets.inputs(2, 8)
    both = camlens.explain(model, x, method=method, targets=[1, 3])
    first = camlens.explain(model, x[:1], method=method, targets=[1])
    second = camlens.explain(model, x[1:], method=method, targets=[3])
    torch.testing.assert_close(both.raw, torch.cat([first.raw, second.raw]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", sorted(PERTURBATION))
def test_chunked_equals_unchunked(method: str) -> None:
    model = nets.GapNet()
    x = nets.inputs(2, 8)
    small = camlens.explain(model, x, method=method, targets="top2", batch_size=1)
    large = camlens.explain(model, x, method=method, targets="top2", batch_size=1000)
    torch.testing.assert_close(small.raw, large.raw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_float64_equals_float32(method: str) -> None:
    model32, model64 = nets.GapNet(), nets.GapNet().double()
    x = nets.inputs(2, 8)
    e32 = camlens.explain(model32, x, method=method, targets=[[0, 1], [2, 3]])
    e64 = camlens.explain(model64, x.double(), method=method, targets=[[0, 1], [2, 3]])
    assert e64.raw.dtype == torch.float64
    torch.testing.assert_close(e32.maps.double(), e64.maps, rtol=1e-4, atol=2e-4)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("method", ["gradcam", "cam", "guided-backprop"])
def test_a_thousand_calls_do_not_grow_memory(method: str) -> None:
    model = nets.GapNet()
    x = nets.inputs(2, 8)
    cam = camlens.get_method(method)(model)
    for _ in range(100):
        assert cam(x, "top2").maps.shape == (2, 2, 8, 8)
    gc.collect()
    objects, rss = len(gc.get_objects()), _rss()
    for _ in range(1000):
        assert cam(x, "top2").maps.shape == (2, 2, 8, 8)
    gc.collect()
    assert len(gc.get_objects()) - objects < 50
    assert _rss() - rss < 8 * 2**20
    assert _hooks(model) == 0


def test_gradient_methods_work_inside_no_grad() -> None:
    model = nets.GapNet()
    with torch.no_grad():
        exp = camlens.explain(model, nets.inputs(2, 8), method="gradcam")
        assert not torch.is_grad_enabled()  # the caller's grad mode is restored
    assert exp.raw.abs().sum() > 0
