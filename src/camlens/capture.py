"""Finding the target layer and capturing its activation for exactly one forward pass.

A layer is named the way ``model.named_modules()`` names it (``"layer4"``, ``"features.28"``), given
as the module itself, or left to :func:`find_layer`, which picks the last spatial (4-D) output of the
forward pass, the one that feeds global pooling. A module that runs several times in one forward
(EfficientNet-Lite0 applies one ReLU6, ``_swish``, to the stem and to the head) is addressed as
``"name@i"``: its i-th call, 0-based, negative from the end. Naming such a module without ``@i`` is an
error rather than a silent choice of one of its calls.

Layouts are normalised here, so every method sees (B, C, h, w). A layer may return a token sequence
(B, N, C) (vision transformers: N = prefix + h * w, with class / distillation / register tokens in
front) or a channels-last map (B, h, w, C) (Swin stages, LayerNorm / Linear on NHWC tensors). The grid
comes from the model, never from a guess (:func:`token_grid`, :func:`read_layout`): the patch grid
and prefix count it states, and the width of the module that produced a 4-D output. A layout the model
does not state is an error naming ``reshape=``, a user's callable ``(layer output) -> (B, C, h, w)``
that only rearranges elements (indexing, reshape, permute).

The capture makes the graph start at the activation: the forward runs without autograd up to the
target layer; the hook replaces the layer's output by a fresh tensor that requires grad and turns
autograd on for the rest of the forward. So nothing before the layer keeps an autograd graph, no
parameter gradient can be computed, and ``torch.autograd.grad`` needs only the tail of the network.
"""

from __future__ import annotations

import difflib
import math
import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from camlens._inputs import sample_rows
from camlens._state import model_lock

__all__ = [
    "CallRecord",
    "LayerRef",
    "Layout",
    "Reshape",
    "count_calls",
    "find_layer",
    "grid_of",
    "layer_names",
    "layer_table",
    "read_layout",
    "resolve_layer",
    "token_grid",
    "trace_calls",
]

Reshape = Callable[[torch.Tensor], torch.Tensor]

_CALL = re.compile(r"^(?P<name>.*)@(?P<call>-?\d+)$")

# The automatic choice costs a probe forward. It is remembered per model (weakly: the model's
# lifetime is the user's) and per input geometry, and re-checked on use, so ``camlens.explain`` in a
# loop does not pay a second forward per call. The only module-level state besides the registry.
_CHOSEN: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], LayerRef]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class LayerRef:
    """A module of the model and which of its calls in one forward pass (``None``: its only call).

    ``str()`` gives the form ``layer=`` accepts: the name, and ``"name@i"`` for call i of a shared module.

    Examples:
        >>> ref = camlens.find_layer(model, x)
        >>> str(ref), ref.call
        ('layer4', None)
    """

    name: str
    module: nn.Module = field(compare=False, repr=False)
    call: int | None = None

    def __str__(self) -> str:
        return self.name if self.call is None else f"{self.name}@{self.call}"


def layer_names(model: nn.Module) -> list[str]:
    """Names of all submodules, as ``layer=`` accepts them (``model.named_modules()`` without the root).

    Examples:
        >>> names = camlens.layer_names(model)
        >>> names[:3], "layer4.1.conv2" in names
        (['conv1', 'bn1', 'relu'], True)
    """
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

    Examples:
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


# ---------------------------------------------------------------- layouts: a layer's output as a (B, C, h, w) grid


@dataclass(frozen=True)
class Layout:
    """How a layer's output is read as a (B, C, h, w) grid.

    Attributes:
        kind: ``"grid"`` (already (B, C, h, w)), ``"channels-last"`` ((B, h, w, C)), ``"tokens"``
            ((B, prefix + h * w, C), row-major patches) or ``"reshape"`` (the user's callable).
        prefix: tokens before the patches (class, distillation, register tokens), for ``"tokens"``.
        size: the patch grid (h, w), for ``"tokens"``.
        reshape: the user's callable, for ``"reshape"``.
    """

    kind: str = "grid"
    prefix: int = 0
    size: tuple[int, int] = (0, 0)
    reshape: Reshape | None = field(default=None, compare=False, repr=False)

    def to_grid(self, out: torch.Tensor) -> torch.Tensor:
        """The (B, C, h, w) view of ``out`` (of any batch size): no copy for the built-in layouts."""
        if self.kind == "grid":
            return out
        if self.kind == "channels-last":
            return out.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            return out[:, self.prefix :].unflatten(1, self.size).permute(0, 3, 1, 2)
        assert self.reshape is not None  # kind == "reshape"
        grid = self.reshape(out)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 4 or grid.shape[0] != out.shape[0]:
            got = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
            raise ValueError(
                f"reshape= must turn the layer's output {tuple(out.shape)} into (batch, channels, height, width), "
                f"got {got}"
            )
        return grid

    def positions(self, sample: torch.Tensor) -> torch.Tensor:
        """Where each grid element (C * h * w, row-major) sits in one flattened sample of the layer's output.

        Read off by applying :meth:`to_grid` to the element numbers, so it holds for a user's callable
        too, which must then only rearrange elements (a ValueError says so otherwise).
        """
        numbers = torch.arange(sample.numel(), dtype=torch.float64, device=sample.device).view(sample.shape)
        found = self.to_grid(numbers).reshape(-1)
        index = found.round().long()
        if not torch.equal(index.double(), found) or len(index.unique()) != len(index):
            raise ValueError(
                "reshape= must only rearrange the layer's elements (indexing, reshape, permute, transpose): "
                "camlens maps gradients and ablations back through it element by element"
            )
        return index

    def from_grid(self, out: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The layer's own layout holding ``grid`` (n, C, h, w); every other element (prefix tokens) from ``out``.

        ``out`` has n rows or one (then repeated): the tail of the model is replayed on ``grid``.
        """
        if self.kind == "grid":
            return grid
        n = grid.shape[0]
        if out.shape[0] not in (1, n):
            raise ValueError(f"cannot fill {n} grids into a layer output of batch {out.shape[0]}")
        index = self.positions(out[:1])
        new = out.expand(n, *out.shape[1:]).reshape(n, -1).clone()
        new[:, index] = grid.reshape(n, -1).to(new.dtype)
        return new.view(n, *out.shape[1:])

    def grads_to_grid(self, grads: torch.Tensor) -> torch.Tensor:
        """(B, K, *layer output) gradients -> (B, K, C, h, w): the same rearrangement, so dS/dA is exact."""
        if self.kind == "grid":
            return grads
        return self.to_grid(grads.flatten(0, 1)).unflatten(0, grads.shape[:2])


def token_grid(model: nn.Module, size: tuple[int, int] | torch.Size) -> tuple[int, tuple[int, int]] | None:
    """(prefix tokens, patch grid (h, w)) the model states for an input of ``size`` (H, W), else ``None``.

    * torchvision ``VisionTransformer``: one class token (``class_token``), ``patch_size`` p: (H // p, W // p);
    * timm ViT / DeiT / Eva / BEiT (``patch_embed`` + ``num_prefix_tokens``, which counts class,
      distillation and register tokens): ``patch_embed.dynamic_feat_size`` or ``grid_size``.

    The model is read, then its direct children, so a wrapper (normalisation + ViT) works too. Models
    that state neither (Swin, ConvNeXt, CNNs) give ``None``.
    """
    h, w = int(size[0]), int(size[1])
    for m in (model, *model._modules.values()):  # the model or a wrapper's child (normalisation + ViT)
        if m is None:
            continue
        # plain dict lookups: nn.Module.__getattr__ on a missing name costs microseconds, on every module
        attrs = m.__dict__
        patch = attrs.get("patch_size")
        if isinstance(patch, int) and isinstance(m._parameters.get("class_token"), torch.Tensor):
            return 1, (h // patch, w // patch)
        embed, prefix = m._modules.get("patch_embed"), attrs.get("num_prefix_tokens")
        if isinstance(embed, nn.Module) and isinstance(prefix, int):
            feat = getattr(embed, "dynamic_feat_size", None)
            grid = feat((h, w)) if callable(feat) else getattr(embed, "grid_size", None)
            if grid is not None:
                return prefix, (int(grid[0]), int(grid[1]))
    return None


def _width(module: nn.Module) -> tuple[int, bool] | None:
    """(channels, channels-first?) of a module's output from its type, if the type says so."""
    if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        return 0, True
    if isinstance(module, nn.Linear):
        return module.out_features, False
    shape = getattr(module, "normalized_shape", None)  # LayerNorm and friends normalise the last dims
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 1:
        return int(shape[0]), False
    return None


def _channels_last(name: str, module: nn.Module, shape: tuple[int, ...]) -> bool:
    """Is the 4-D output ``shape`` of ``module`` (B, h, w, C)? Read from the module that produced it.

    That is the module itself, or else its last registered submodule of a known width: a convolution
    or batch norm makes channels-first maps; a Linear or a LayerNorm of width C acts on the last
    dimension, so the output is channels-last if its last dimension is C and its second is not (a
    LayerNorm2d or a permute back give (B, C, h, w)). Without such a module: channels-first.
    """
    for m in (module, *reversed(list(module.modules())[1:])):
        found = _width(m)
        if found is None:
            continue
        width, first = found
        if first:
            return False
        last, second = shape[3] == width, shape[1] == width
        if last and second:
            raise ValueError(
                f"layer {name} returns {shape}, and its width {width} (from {type(m).__name__}) is both dimension 1 "
                "and dimension 3: channels-first or channels-last is ambiguous; pass reshape= "
                "(lambda t: t for (B, C, h, w), lambda t: t.permute(0, 3, 1, 2) for (B, h, w, C))"
            )
        return last
    return False


def _token_hint(count: int, size: tuple[int, int]) -> str:
    """A reshape= for each way ``count`` tokens could hold a square grid of a square input, or a template."""
    fits = []
    for prefix in range(9):
        side = math.isqrt(max(count - prefix, 0))
        if size[0] == size[1] and side > 0 and side * side == count - prefix:
            fits.append((f"{prefix} prefix token(s) and a {side}x{side} grid", f"{prefix}:", f"{side}, {side}"))
    lines = [
        f"{what}: reshape=lambda t: t[:, {cut}].unflatten(1, ({hw})).permute(0, 3, 1, 2)"
        for what, cut, hw in (fits[:3] or [("P prefix tokens and an h x w grid", "P:", "h, w")])
    ]
    return "; ".join(lines)


def read_layout(
    model: nn.Module,
    name: str,
    module: nn.Module,
    shape: tuple[int, ...],
    size: tuple[int, int] | torch.Size | None,
    reshape: Reshape | None = None,
) -> Layout:
    """How the output ``shape`` of layer ``name`` (``module``) is read as a grid, for an input of ``size``.

    (B, C, h, w) maps as they are; (B, h, w, C) maps by the width of the module that produced them
    (:func:`_channels_last`); token sequences (B, N, C) by the grid and prefix the model states
    (:func:`token_grid`). ``reshape`` (the user's callable) overrides all of it.

    Raises:
        ValueError: the output cannot be read as a grid (a vector, tokens of a model that states no
            grid or a different token count, attention's (B, heads, N, d) tensors, an ambiguous
            width); the message says what to pass.
    """
    if reshape is not None:
        return Layout("reshape", reshape=reshape)
    stated = None if size is None else token_grid(model, size)
    count = None if stated is None else stated[0] + stated[1][0] * stated[1][1]
    if len(shape) == 3:
        if stated is not None and shape[1] == count:
            return Layout("tokens", stated[0], stated[1])
        if stated is not None:
            raise ValueError(
                f"layer {name} returns {shape}: {shape[1]} tokens, but the model states {stated[0]} prefix "
                f"token(s) and a {stated[1][0]}x{stated[1][1]} patch grid ({count} tokens); pick a layer of the "
                "token sequence or pass reshape= (layer output -> (batch, channels, height, width))"
            )
        hint = "" if size is None else _token_hint(shape[1], (int(size[0]), int(size[1])))
        raise ValueError(
            f"layer {name} returns a token sequence {shape} (batch, tokens, channels), and the model states no "
            "patch grid (torchvision ViT's patch_size/class_token, timm's patch_embed/num_prefix_tokens): "
            "camlens does not guess which tokens are the grid; pass reshape= a callable (layer output) -> "
            f"(batch, channels, height, width), e.g. for {hint}"
        )
    if len(shape) != 4:
        raise ValueError(
            f"layer {name} returns shape {shape}; class activation maps need a layer whose output is a grid: "
            "(batch, channels, height, width), (batch, height, width, channels) or a transformer's tokens "
            "(batch, tokens, channels): pick one from camlens.layer_names(model) (`camlens layers MODEL` marks "
            "the automatic one), leave layer=None, or pass reshape= (output -> (batch, channels, height, width))"
        )
    if count is not None and count in shape[1:]:
        raise ValueError(
            f"layer {name} returns {shape}, a tensor inside attention ({count} tokens on one axis: (batch, heads, "
            "tokens, dim) or attention weights), not a grid; pick a block's norm or output (leave layer=None for "
            "the last block's first norm)"
        )
    return Layout("channels-last") if _channels_last(name, module, shape) else Layout()


def grid_of(
    model: nn.Module, call: CallRecord, size: tuple[int, int] | torch.Size
) -> tuple[Layout, tuple[int, ...]] | None:
    """The layout and (B, C, h, w) grid shape of a traced call's output, or ``None`` if it is not a grid."""
    if call.shape is None or len(call.shape) not in (3, 4):
        return None
    try:
        layout = read_layout(model, str(call.layer), call.module, call.shape, size)
    except ValueError:
        return None
    return layout, tuple(layout.to_grid(torch.empty(call.shape, device="meta")).shape)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


@dataclass(frozen=True)
class LayerRow:
    """One layer a user can pick (a row of ``camlens layers``): its name as ``layer=`` takes it, the
    (C, h, w) grid it gives, its layout kind, its raw output shape, and whether it is the default."""

    name: str
    grid: tuple[int, ...]
    kind: str
    shape: tuple[int, ...]
    default: bool


def layer_table(model: nn.Module, x: torch.Tensor) -> list[LayerRow]:
    """Every call whose output reads as a grid, in the order calls return, the default marked.

    The one listing behind ``camlens layers`` and the app's layer menu: one traced forward (:func:`trace_calls`)
    and the automatic choice (:func:`find_layer`).
    """
    default = str(find_layer(model, x))
    rows = []
    for c in trace_calls(model, x):
        found = grid_of(model, c, x.shape[-2:])
        if found is None or c.shape is None:
            continue
        layout, grid = found
        name = str(c.layer)
        rows.append(LayerRow(name, tuple(grid[1:]), layout.kind, tuple(c.shape[1:]), name == default))
    return rows


def count_calls(model: nn.Module, x: torch.Tensor, module: nn.Module) -> int:
    """How many times ``module`` runs in one forward pass of ``x``."""
    return next((c.calls for c in trace_calls(model, x) if c.module is module), 0)


def find_layer(model: nn.Module, x: torch.Tensor) -> LayerRef:
    """The last module call with a spatial 4-D output: the features that feed global pooling.

    Vision transformers that state a token grid (:func:`token_grid`) get the first norm of their last
    block (timm ``blocks.11.norm1``, torchvision ``encoder.layers.encoder_layer_11.ln_1``), where
    pytorch-grad-cam's docs take it: after it only the class token reaches the head, so later token
    outputs have zero gradients at every patch. Never a tensor inside attention. Channels-last models
    (Swin) get their last (B, h, w, C) output, read as a grid; modules that only permute a map (torchvision's
    ``Permute`` after Swin's final ``norm``) are skipped like pooling.

    Among module calls returning the same tensor (``layer4``, ``layer4.1``, ``layer4.1.relu``) the
    outermost returns last, so the most readable name is chosen. Outputs of pooling modules are
    skipped, also when a container returns them: VGG's ``features`` ends in pool5, so VGG gets
    conv5's ReLU (``features.29`` on VGG-16, 14x14 at 224), the Grad-CAM paper's last conv layer.
    A module that runs several times is addressed by its call (``_swish@1``).

    Raises:
        ValueError: the model has no 4-D (B, C, h, w) intermediate output.

    Examples:
        >>> ref = camlens.find_layer(model, x)  # one probe forward on x, remembered per model
        >>> ref.name  # ResNet: the block before global average pooling
        'layer4'
    """
    with model_lock(model):  # a trace racing another thread's forward would cache a wrong call index
        return _find_layer(model, x)


def _find_layer(model: nn.Module, x: torch.Tensor) -> LayerRef:
    key = tuple(x.shape[1:])
    known = _CHOSEN.get(model, {}).get(key)
    if known is not None and _submodule(model, known.name) is known.module:
        return known
    with sample_rows(torch.zeros(1, dtype=torch.long)):  # the probe runs sample 0 (and its other inputs)
        calls = trace_calls(model, x[:1])
    stated = token_grid(model, x.shape[-2:])
    if stated is not None:
        chosen_ref = _last_block_norm(model, calls, stated[0] + stated[1][0] * stated[1][1])
        _CHOSEN.setdefault(model, {})[key] = chosen_ref
        return chosen_ref
    # pooling modules are skipped, and so are containers passing a pooling output on (VGG's features)
    pooling: list[bool] = []
    for c in calls:
        kind = type(c.module).__name__
        skip = "pool" in kind.lower() or kind == "Permute"
        pooling.append(skip or (c.same_as is not None and pooling[c.same_as]))
    # one row per image: region features (Faster R-CNN's RoI pooling, (proposals, C, 7, 7)) are no image map
    spatial = [
        (c, pool) for c, pool in zip(calls, pooling) if c.shape is not None and len(c.shape) == 4 and c.shape[0] == 1
    ]
    backbone = _backbone(model, calls)
    if backbone is not None:
        spatial = [(c, pool) for c, pool in spatial if c.name.startswith(backbone + ".")]
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


def _backbone(model: nn.Module, calls: list[CallRecord]) -> str | None:
    """torchvision's detectors and segmenters: the part of ``backbone`` that every output depends on.

    Their heads run once per pyramid level or per region, so the last spatial call of the whole model is a
    head's output on the coarsest level; the features the heads share are the backbone's: ``backbone.body``
    (C5 under an FPN: every pyramid level is computed from it), ``backbone.features`` (SSD: its extra
    layers shrink to 1x1), else ``backbone`` (a segmenter's ``layer4``). Only when ``backbone`` returns no
    tensor (a dict or list of levels), the torchvision convention.
    """
    for call in calls:
        if call.name == "backbone":
            if call.shape is not None:
                return None
            for name in ("backbone.body", "backbone.features", "backbone"):
                if _submodule(model, name) is not None:
                    return name
    return None


def _last_block_norm(model: nn.Module, calls: list[CallRecord], count: int) -> LayerRef:
    """The first norm call inside the last transformer block: a member of a Sequential / ModuleList
    returning (B, count, C) tokens with a norm among its children."""

    def tokens(c: CallRecord) -> bool:
        return c.shape is not None and len(c.shape) == 3 and c.shape[1] == count

    def is_norm(m: nn.Module) -> bool:
        return getattr(m, "normalized_shape", None) is not None

    for block in reversed([c for c in calls if tokens(c) and "." in c.name]):
        parent = _submodule(model, block.name.rpartition(".")[0])
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)) or not any(map(is_norm, block.module.children())):
            continue
        inside = [c for c in calls if block.start < c.start and c.end < block.end and tokens(c) and is_norm(c.module)]
        if inside:
            return min(inside, key=lambda c: c.start).layer
    raise ValueError(
        f"the model states a token grid ({count} tokens) but no block (a Sequential / ModuleList member with a norm "
        "returning the tokens) was found; pass layer= (a block's first norm or its output)"
    )


class _Capture:
    """Forward hook state for one forward pass.

    ``activation`` is the (B, C, h, w) grid the methods read; for the gradient methods ``leaf`` is the
    tensor in the layer's own layout that the model's tail consumes and ``activation`` a view of it.
    """

    def __init__(
        self,
        model: nn.Module,
        ref: LayerRef,
        grad: bool,
        replace: Any = None,
        size: Any = None,
        reshape: Reshape | None = None,
    ) -> None:
        self.model = model
        self.ref = ref
        self.grad = grad
        self.replace = replace
        self.size = size
        self.reshape = reshape
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []
        self.activation: torch.Tensor | None = None
        self.leaf: torch.Tensor | None = None
        self.layout = Layout()

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
        self.layout = layout = read_layout(self.model, str(self.ref), module, tuple(out.shape), self.size, self.reshape)
        if self.replace is not None:
            self.activation = layout.to_grid(out)
            return layout.from_grid(out, self.replace(self.activation))
        if self.grad:
            # The graph starts here: later in-place ops act on the clone, never on the leaf. The model
            # gets its own layout back; the methods read the grid, a view of the same leaf.
            torch.set_grad_enabled(True)
            leaf = out.detach().requires_grad_(True)
            self.leaf = leaf
            self.activation = layout.to_grid(leaf)
            if layout.kind == "reshape":
                layout.positions(out[:1].detach())  # gradients map back only through a rearrangement
            return leaf.clone()
        # Later in-place ops must not change what was captured.
        grid = layout.to_grid(out)
        self.activation = grid.clone() if layout.kind == "grid" else grid.contiguous().clone()
        return None


@contextmanager
def capture(
    model: nn.Module,
    ref: LayerRef,
    *,
    grad: bool,
    replace: Any = None,
    size: tuple[int, int] | torch.Size | None = None,
    reshape: Reshape | None = None,
) -> Iterator[_Capture]:
    """Capture ``ref``'s output during the forward passes run inside the block; hooks removed on exit.

    With ``grad=True`` the block must run the forward under ``torch.no_grad()``: autograd is switched on
    at the layer and restored on exit. ``replace(grid)`` may return (n, C, h, w) grids that replace the
    output, put back into the layer's layout (used to replay the tail of the network on ablated
    activations). ``size`` is the input's (H, W), for token grids; ``reshape`` the user's layout callable
    (see :func:`read_layout`). The layout found is ``state.layout``.
    """
    state = _Capture(model, ref, grad, replace, size, reshape)
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
