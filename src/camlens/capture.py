"""Finding the target layer and capturing its activation for exactly one forward pass.

A layer is named the way ``model.named_modules()`` names it (``"layer4"``, ``"features.28"``), given
as the module itself, or left to :func:`find_layer`, which picks the last spatial (4-D) output of the
forward pass, the one that feeds global pooling. A module that runs several times in one forward
(EfficientNet-Lite0 applies one ReLU6, ``_swish``, to the stem and to the head) is addressed as
``"name@i"``: its i-th call, 0-based, negative from the end. Naming such a module without ``@i`` is an
error rather than a silent choice of one of its calls.

The capture makes the graph start at the activation: the forward runs without autograd up to the
target layer; the hook replaces the layer's output by a fresh tensor that requires grad and turns
autograd on for the rest of the forward. So nothing before the layer keeps an autograd graph, no
parameter gradient can be computed, and ``torch.autograd.grad`` needs only the tail of the network.
"""

from __future__ import annotations

import difflib
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from camlens._state import model_lock

__all__ = ["CallRecord", "LayerRef", "count_calls", "find_layer", "layer_names", "resolve_layer", "trace_calls"]

_CALL = re.compile(r"^(?P<name>.*)@(?P<call>-?\d+)$")

# The automatic choice costs a probe forward. It is remembered per model (weakly: the model's
# lifetime is the user's) and per input geometry, and re-checked on use, so ``camlens.explain`` in a
# loop does not pay a second forward per call. The only module-level state besides the registry.
_CHOSEN: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], LayerRef]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class LayerRef:
    """A module of the model and which of its calls in one forward pass (``None``: its only call)."""

    name: str
    module: nn.Module = field(compare=False, repr=False)
    call: int | None = None

    def __str__(self) -> str:
        return self.name if self.call is None else f"{self.name}@{self.call}"


def layer_names(model: nn.Module) -> list[str]:
    """Names of all submodules, as ``layer=`` accepts them."""
    return [name for name, _ in model.named_modules() if name]


def _not_found(model: nn.Module, name: str) -> ValueError:
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not close:
        # suffix matches help with long dotted names ("conv2" -> "layer4.1.conv2")
        close = [n for n in names if n.endswith("." + name.split(".")[-1])][-5:]
    hint = f"closest: {', '.join(close)}" if close else f"the model has {len(names)} modules"
    return ValueError(f"layer {name!r} not found; {hint}; list them with camlens.layer_names(model)")


def resolve_layer(model: nn.Module, layer: str | nn.Module | LayerRef) -> LayerRef:
    """Turn a layer name (``"layer4"``, ``"_swish@-1"``), a module or a :class:`LayerRef` into a LayerRef.

    Raises:
        ValueError: the name is not a submodule (with the closest names), or the module is not in the model.
        TypeError: ``layer`` is of another type.
    """
    if isinstance(layer, LayerRef):
        return layer
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return LayerRef(name or "<model>", module)
        raise ValueError(
            f"layer {type(layer).__name__} is not a submodule of the model; pass a module of this model or its name"
        )
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a name, a module or None, got {type(layer).__name__}")
    call: int | None = None
    name = layer
    match = _CALL.match(layer)
    if match:
        name, call = match.group("name"), int(match.group("call"))
    modules = dict(model.named_modules())
    module = modules.get(name) if name else None
    if module is None and name:
        # named_modules() lists a module once; a second attribute name (an alias) still reaches it
        module = _submodule(model, name)
    if module is None:
        raise _not_found(model, name)
    return LayerRef(name, module, call)


@dataclass(frozen=True)
class CallRecord:
    """One call of a submodule during a traced forward pass (see :func:`trace_calls`).

    Attributes:
        name: the module's name, as ``model.named_modules()`` gives it.
        module: the module itself.
        call: which of the module's calls this is, 0-based, counted as calls return.
        calls: how many times the module ran in the forward pass.
        shape: the output's shape, ``None`` when the output is not a tensor.
        start: tick at which the call began and ``end`` the tick at which it returned; one counter
            counts both, so ``a.end < b.start`` means call ``a`` was over before ``b`` began.
        same_as: index in the trace of the latest earlier call that returned this very tensor (a
            container passing on its last child's output, an in-place op), else ``None``.
    """

    name: str
    module: nn.Module = field(compare=False, repr=False)
    call: int
    calls: int
    shape: tuple[int, ...] | None
    start: int
    end: int
    same_as: int | None = None

    @property
    def layer(self) -> LayerRef:
        """The :class:`LayerRef` of this call, as ``layer=`` accepts it (``"name@i"`` for a module run twice)."""
        return LayerRef(self.name, self.module, self.call if self.calls > 1 else None)


def trace_calls(model: nn.Module, inputs: torch.Tensor) -> list[CallRecord]:
    """Every submodule call of one forward pass of ``inputs``, in the order the calls return.

    The forward runs under ``torch.inference_mode()`` and the model's lock; the hooks are removed even
    when the forward raises. The model itself is not listed; a module registered under two names is
    listed under its ``named_modules()`` name. Sort by ``start`` for the order in which calls begin.

    Example:
        >>> [str(c.layer) for c in trace_calls(model, x) if c.shape and len(c.shape) == 4][-1]
        'layer4'
    """
    seen: list[tuple[str, nn.Module, int, tuple[int, ...] | None, int, int, int | None]] = []
    counts: dict[nn.Module, int] = {}
    open_calls: dict[nn.Module, list[int]] = {}
    returned: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}  # id(output) -> (output, index)
    tick = 0
    handles = []

    def pre(module: nn.Module, args: Any) -> None:
        nonlocal tick
        tick += 1
        open_calls.setdefault(module, []).append(tick)

    def make_post(name: str) -> Any:
        def post(module: nn.Module, args: Any, out: Any) -> None:
            nonlocal tick
            tick += 1
            index = counts.get(module, 0)
            counts[module] = index + 1
            same_as = None
            shape = None
            if isinstance(out, torch.Tensor):
                shape = tuple(out.shape)
                earlier = returned.get(id(out))
                # a weak reference: keeping every output alive would hold the whole forward's memory
                if earlier is not None and earlier[0]() is out:
                    same_as = earlier[1]
                returned[id(out)] = (weakref.ref(out), len(seen))
            seen.append((name, module, index, shape, open_calls[module].pop(), tick, same_as))

        return post

    with model_lock(model):  # another thread's forward would add its calls to the trace
        try:
            for name, module in model.named_modules():
                if name:
                    handles.append(module.register_forward_pre_hook(pre))
                    handles.append(module.register_forward_hook(make_post(name)))
            with torch.inference_mode():
                model(inputs)
        finally:
            for handle in handles:
                handle.remove()
    return [
        CallRecord(name, module, call, counts[module], shape, start, end, same_as)
        for name, module, call, shape, start, end, same_as in seen
    ]


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def count_calls(model: nn.Module, x: torch.Tensor, module: nn.Module) -> int:
    """How many times ``module`` runs in one forward pass of ``x``."""
    return next((c.calls for c in trace_calls(model, x) if c.module is module), 0)


def find_layer(model: nn.Module, x: torch.Tensor) -> LayerRef:
    """The last module call with a spatial 4-D output: the features that feed global pooling.

    Among module calls returning the same tensor (``layer4``, ``layer4.1``, ``layer4.1.relu``) the
    outermost returns last, so the most readable name is chosen. Outputs of pooling modules are
    skipped, also when a container returns them: VGG's ``features`` ends in pool5, so VGG gets
    conv5's ReLU (``features.29`` on VGG-16, 14x14 at 224), the Grad-CAM paper's last conv layer.
    A module that runs several times is addressed by its call (``_swish@1``).

    Raises:
        ValueError: the model has no 4-D (B, C, h, w) intermediate output.
    """
    with model_lock(model):  # a trace racing another thread's forward would cache a wrong call index
        return _find_layer(model, x)


def _find_layer(model: nn.Module, x: torch.Tensor) -> LayerRef:
    key = tuple(x.shape[1:])
    known = _CHOSEN.get(model, {}).get(key)
    if known is not None and _submodule(model, known.name) is known.module:
        return known
    calls = trace_calls(model, x[:1])
    # pooling modules are skipped, and so are containers passing a pooling output on (VGG's features)
    pooling: list[bool] = []
    for c in calls:
        pooling.append("pool" in type(c.module).__name__.lower() or (c.same_as is not None and pooling[c.same_as]))
    spatial = [(c, pool) for c, pool in zip(calls, pooling) if c.shape is not None and len(c.shape) == 4]
    # VGG's AdaptiveAvgPool2d((7, 7)) is spatial but only resamples
    chosen = [c for c, pool in spatial if not pool and c.shape is not None and c.shape[2] * c.shape[3] > 1]
    if not chosen:
        chosen = [c for c, pool in spatial if not pool] or [c for c, _ in spatial]
    if not chosen:
        raise ValueError(
            "no module of the model returns a 4-D (batch, channels, height, width) tensor; "
            "camlens explains convolutional feature maps: pass layer= a module that does"
        )
    chosen_ref = chosen[-1].layer
    _CHOSEN.setdefault(model, {})[key] = chosen_ref
    return chosen_ref


class _Capture:
    """Forward hook state for one forward pass."""

    def __init__(self, ref: LayerRef, grad: bool, replace: Any = None) -> None:
        self.ref = ref
        self.grad = grad
        self.replace = replace
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []
        self.activation: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: Any, out: Any) -> Any:
        index = self.calls
        self.calls += 1
        if isinstance(out, torch.Tensor):
            self.shapes.append(tuple(out.shape))
        wanted = 0 if self.ref.call is None else self.ref.call
        if index != wanted:
            return None
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer {self.ref} returns {type(out).__name__}, not a tensor; pick a module returning one")
        if out.dim() != 4:
            raise ValueError(
                f"layer {self.ref} returns shape {tuple(out.shape)}; class activation maps need a convolutional "
                "layer with a (batch, channels, height, width) output: pick one from camlens.layer_names(model) "
                "or leave layer=None for the last spatial layer"
            )
        if self.replace is not None:
            self.activation = out
            return self.replace(out)
        if self.grad:
            # The graph starts here: later in-place ops act on the clone, never on the leaf.
            torch.set_grad_enabled(True)
            leaf = out.detach().requires_grad_(True)
            self.activation = leaf
            return leaf.clone()
        # Later in-place ops must not change what was captured.
        self.activation = out.clone()
        return None


@contextmanager
def capture(model: nn.Module, ref: LayerRef, *, grad: bool, replace: Any = None) -> Iterator[_Capture]:
    """Capture ``ref``'s output during the forward passes run inside the block; hooks removed on exit.

    With ``grad=True`` the block must run the forward under ``torch.no_grad()``: autograd is switched on
    at the layer and restored on exit. ``replace(out)`` may return a tensor that replaces the output
    (used to replay the tail of the network on ablated activations).
    """
    state = _Capture(ref, grad, replace)
    with model_lock(model):  # (already held by the method's call: re-entrant, nearly free)
        grad_mode = torch.is_grad_enabled()
        handle = ref.module.register_forward_hook(state.hook)
        try:
            yield state
        finally:
            handle.remove()
            torch.set_grad_enabled(grad_mode)


def check_calls(state: _Capture) -> None:
    """Raise when the layer did not run, ran more often than its reference allows, or lacks the call."""
    ref = state.ref
    if state.calls == 0:
        raise ValueError(f"layer {ref} did not run in the forward pass; pick a module the forward uses")
    if ref.call is None and state.calls > 1:
        shapes = ", ".join("x".join(map(str, s[1:])) for s in state.shapes)
        raise ValueError(
            f"layer {ref.name!r} runs {state.calls} times in one forward pass (outputs {shapes}); "
            f"say which call with '{ref.name}@0' .. '{ref.name}@{state.calls - 1}' ('{ref.name}@-1' for the last)"
        )
    if ref.call is not None and not 0 <= ref.call < state.calls:
        raise ValueError(f"layer {ref} asks for call {ref.call} but {ref.name!r} runs {state.calls} times")
