"""The CAM paper's conversion (Zhou et al., CVPR 2016, sec. 3): a classifier's conv backbone -> GAP (or GMP) -> linear.

:func:`convert` cuts a deep copy of the model after its last convolutional block, structurally (VGG-style
``features``, ResNet-style children) or with ``torch.fx``, and adds the paper's 3x3 conv, global pooling and
linear layer: a :class:`GapNet`, whose CAM is ``M_c(x, y) = sum_k w_k^c f_k(x, y)`` (their eq. 2).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from camlens.capture import find_layer, resolve_layer

__all__ = ["GapNet", "convert"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class GapNet(nn.Module):
    """features -> extra (3x3 conv + ReLU) -> global average (or max) pooling -> linear.

    The architecture of the CAM paper's "-GAP" networks (sec. 3). ``camlens.explain(net, x, "cam")``
    explains ``extra``'s output (``find_layer`` picks it) with the rows of ``fc``.

    Attributes:
        features: the original model's convolutional backbone (a deep copy), cut after its last
            convolutional block; a ``torch.fx.GraphModule`` for models cut by tracing.
        extra: ``Sequential(Conv2d(in_channels, channels, 3, stride 1, pad 1), ReLU)``, or ``Identity``
            when ``channels`` is ``None``.
        pool: ``AdaptiveAvgPool2d(1)`` (GAP) or ``AdaptiveMaxPool2d(1)`` (GMP).
        fc: ``Linear(channels, num_classes)``.
        config: how the network was built (what :func:`load_checkpoint` needs to rebuild it).
    """

    def __init__(self, features: nn.Module, extra: nn.Module, pool: nn.Module, fc: nn.Linear, config: dict) -> None:
        super().__init__()
        self.features = features
        self.extra = extra
        self.pool = pool
        self.fc = fc
        self.config = dict(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.extra(self.features(x))).flatten(1))

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the new head (``extra`` and ``fc``)."""
        return [*self.extra.parameters(), *self.fc.parameters()]

    def blocks(self) -> list[nn.Module]:
        """The backbone's blocks, first to last, as ``finetune(train_blocks=n)`` counts them.

        A block is a top-level child of ``features`` that has parameters (ResNet's ``layer4``, a
        MobileNet stage); for a flat VGG-style ``Sequential`` of single layers, a block is the run of
        layers between two pooling layers (VGG's conv5_1..conv5_3 is one block).
        """
        children = list(self.features.children())
        flat = sum(1 for m in children if isinstance(m, nn.Conv2d)) > 1
        if flat:
            groups: list[list[nn.Module]] = [[]]
            for child in children:
                if isinstance(child, _POOLS):
                    groups.append([])
                else:
                    groups[-1].append(child)
            stages = [nn.ModuleList(g) for g in groups if any(p.numel() for m in g for p in m.parameters())]
            return list(stages)
        return [m for m in children if any(True for _ in m.parameters())]


def _kind(model: nn.Module) -> str:
    if isinstance(getattr(model, "features", None), nn.Sequential) and hasattr(model, "classifier"):
        return "vgg"
    names = [name for name, _ in model.named_children()]
    if isinstance(getattr(model, "fc", None), nn.Linear) and "avgpool" in names:
        return "resnet"
    return "fx"


def _structural_cut(model: nn.Module, kind: str, drop_last_pool: bool) -> tuple[nn.Module, nn.Module]:
    """(backbone, the module of ``model`` whose output the backbone's output must equal)."""
    if kind == "vgg":
        features = model.features
        assert isinstance(features, nn.Sequential)  # _kind checked it
        layers = list(features.named_children())
        end = len(layers)
        while drop_last_pool and end > 1 and isinstance(layers[end - 1][1], _POOLS):
            end -= 1
        return nn.Sequential(OrderedDict(layers[:end])), layers[end - 1][1]
    children = list(model.named_children())
    end = [name for name, _ in children].index("avgpool")
    return nn.Sequential(OrderedDict(children[:end])), children[end - 1][1]


def _output_of(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The (last) output of ``module`` during ``model(x)``, as the model produced it (no layout reading:
    the probe compares a cut network's raw output with it), under the model's lock like every hook."""
    from camlens._state import model_lock

    seen: list[Any] = []
    # cloned: a later in-place op of the model must not change what was seen
    with model_lock(model):
        handle = module.register_forward_hook(
            lambda mod, args, out: seen.append(out.clone() if isinstance(out, torch.Tensor) else out)
        )
        try:
            with torch.no_grad():
                model(x)
        finally:
            handle.remove()
    out = seen[-1] if seen else None
    return out if isinstance(out, torch.Tensor) else None


def _fx_cut(model: nn.Module, layer: str, probe: torch.Tensor | None = None) -> nn.Module:
    """The part of ``model`` that computes ``layer``'s output, as a ``torch.fx.GraphModule``.

    The named module is made a leaf of the trace (so a ``Sequential`` or a residual block is one node);
    the graph is cut after its call, extended through shape-keeping ops that follow it (see
    :func:`_through_elementwise`), and dead code (branches only the removed tail used) is dropped.
    """
    import torch.fx as fx

    ref = resolve_layer(model, layer)
    qualname = ref.name

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return module_qualified_name == qualname or super().is_leaf_module(m, module_qualified_name)

    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many types for untraceable Python control flow
        raise ValueError(
            f"cannot cut {type(model).__name__} after {ref}: torch.fx cannot trace it ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); pass a model with a `.features` Sequential or ResNet-style "
            "children, or wrap the backbone yourself"
        ) from err
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == qualname]
    if not calls:
        raise ValueError(f"layer {ref} is not called in the traced forward of {type(model).__name__}")
    index = 0 if ref.call is None else ref.call
    if not -len(calls) <= index < len(calls):
        raise ValueError(f"layer {ref} asks for call {index} but the traced forward calls it {len(calls)} times")
    target = calls[index]
    traced = fx.GraphModule(model, graph)
    if probe is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(traced).propagate(probe)
        target = _through_elementwise(target)
    cut = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "output":
            break
        env[node] = cut.node_copy(node, lambda n: env[n])
        if node is target:
            break
    cut.output(env[target])
    features = fx.GraphModule(model, cut, class_name="Features")
    features.graph.eliminate_dead_code()
    features.recompile()
    return features


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _through_elementwise(node: Any) -> Any:
    """Follow a traced node through the ops that keep its shape (a functional ``F.relu``, a residual
    add) so the cut includes them: a module's output is not yet the feature map the head pools when
    the forward still applies an activation to it. Stops at a fork or a pooling module."""
    shape = _shape(node)
    while shape is not None and len(node.users) == 1:
        (user,) = node.users
        if user.op == "output" or _shape(user) != shape:
            break
        if user.op == "call_module" and "pool" in str(user.target).lower():
            break
        node = user
    return node


def _is_int(value: Any, low: int) -> bool:
    """An integer (not a bool) >= ``low``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low


def _is_real(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def convert(
    model: nn.Module,
    num_classes: int | None = None,
    pooling: str = "avg",
    channels: int | None = 1024,
    drop_last_pool: bool = True,
    freeze: bool = True,
    *,
    layer: str | None = None,
    input_size: Sequence[int] = (3, 224, 224),
    source: str | None = None,
    seed: int | None = None,
) -> GapNet:
    """A new :class:`GapNet`: ``model``'s conv backbone + 3x3 conv + global pooling + linear (CAM paper, sec. 3).

    The backbone is a ``copy.deepcopy`` of ``model``'s layers up to its last convolutional block; the user's
    model is not modified and shares nothing with the result. How the cut is made:

    * VGG-style (``.features`` Sequential and ``.classifier``: torchvision VGG, AlexNet, MobileNet,
      EfficientNet, ConvNeXt, SqueezeNet): ``features`` without its trailing pooling layers when
      ``drop_last_pool`` (VGG16's pool5 goes, so a 224x224 input gives the paper's 14x14 maps);
    * ResNet-style (``.avgpool`` child and ``.fc`` Linear: ResNet, ResNeXt, RegNet, Wide ResNet): the
      children before ``avgpool``;
    * anything else, or when ``layer`` is given: a ``torch.fx`` trace cut after ``layer`` (default: the
      layer :func:`camlens.find_layer` picks, the last spatial 4-D output that is not a pooling).

    A structural cut is checked against the original: on a probe input of ``input_size`` the backbone
    must return the output of the corresponding layer of the model, otherwise the fx cut is used
    (Inception's auxiliary head, for instance, sits between its children).

    Args:
        model: a CNN classifier returning (B, classes) scores.
        num_classes: classes of the new linear layer (``None``: as many as the model outputs).
        pooling: ``"avg"`` (GAP, the CAM paper's choice) or ``"max"`` (GMP, its sec. 3.1 comparison).
        channels: units of the added 3x3 conv (1024 in the paper); ``None`` adds no conv, pooling the
            backbone's features directly (as GoogLeNet and ResNet already do).
        drop_last_pool: drop the trailing pooling layers of a VGG-style ``features``.
        freeze: set ``requires_grad=False`` on the backbone's parameters (the new head stays trainable).
        layer: cut after this module (a name ``camlens.layer_names(model)`` lists) with torch.fx.
        input_size: (C, H, W) of the probe input used to read the backbone's channels and output size.
        source: how to rebuild ``model`` (a ``camlens.zoo.load_model`` spec such as
            ``"torchvision:vgg16"``); recorded so checkpoints hold only weights.
        seed: seed for the new layers' initialisation (``None``: the global RNG).

    The new conv is initialised as torchvision initialises VGG's convs (He normal, fan-out; bias 0), the
    linear layer with N(0, 0.01) weights and zero bias. The result is in eval mode.

    Examples:
        >>> net = convert(torchvision.models.resnet18(), num_classes=10, channels=None)
        >>> net(torch.randn(1, 3, 224, 224)).shape  # (1, 10)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling must be 'avg' (GAP) or 'max' (GMP), got {pooling!r}")
    if channels is not None and not _is_int(channels, 1):
        raise ValueError(
            f"channels must be an int >= 1, or None for no extra conv (CLI: --channels 0), got {channels!r}"
        )
    if num_classes is not None and not _is_int(num_classes, 1):
        raise ValueError(
            f"num_classes must be an int >= 1 (the classes of the new linear layer), or None for as many as "
            f"the model outputs, got {num_classes!r}"
        )
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")

    original = copy.deepcopy(model).eval()
    param = next(original.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    probe = torch.zeros(1, *input_size, device=device, dtype=dtype)
    with torch.no_grad():
        out = original(probe)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError("convert needs a classifier returning a (batch, classes) tensor")
    classes = int(out.shape[1]) if num_classes is None else num_classes

    kind = "fx" if layer is not None else _kind(original)
    features: nn.Module | None = None
    if kind != "fx":
        candidate, ref_module = _structural_cut(original, kind, drop_last_pool)
        expected = _output_of(original, ref_module, probe)
        try:
            with torch.no_grad():
                got = candidate(probe)
        except (RuntimeError, TypeError, ValueError):
            got = None
        same = (
            expected is not None
            and got is not None
            and got.dim() == 4
            and got.shape == expected.shape
            # a structural mismatch differs grossly; the tolerance only absorbs nondeterministic kernels
            and torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(expected.abs().max())))
        )
        if same:
            features = candidate
        else:
            kind = "fx"
    cut_at = None
    if features is None:
        cut_at = layer if layer is not None else str(find_layer(original, probe))
        features = _fx_cut(original, cut_at, probe if layer is None else None)
    features.eval()
    with torch.no_grad():
        feats = features(probe)
    if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
        raise ValueError(f"the backbone's output is not a (B, C, h, w) feature map; pick another layer= (got {cut_at})")
    in_channels = int(feats.shape[1])
    if freeze:
        for p in features.parameters():
            p.requires_grad_(False)

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if channels is None:
            extra: nn.Module = nn.Identity()
            width = in_channels
        else:
            conv = nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
            extra = nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(inplace=True)))
            width = channels
        fc = nn.Linear(width, classes)
        nn.init.normal_(fc.weight, 0.0, 0.01)
        nn.init.zeros_(fc.bias)
    pool: nn.Module = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
    config = {
        "cut": kind,
        "layer": layer,
        "cut_at": cut_at,
        "pooling": pooling,
        "channels": channels,
        "in_channels": in_channels,
        "num_classes": classes,
        "drop_last_pool": drop_last_pool,
        "input_size": [int(s) for s in input_size],
        "feature_size": [int(feats.shape[2]), int(feats.shape[3])],
        "source": source,
    }
    net = GapNet(features, extra, pool, fc, config).to(device=device, dtype=dtype)
    return net.eval()
