"""Layer-wise relevance propagation (Bach et al., PLOS ONE 2015; rules as in Montavon et al., "Layer-Wise
Relevance Propagation: An Overview", 2019).

The target score S^c enters at the model's output as R = output * dS^c/d(output) (one-hot x logit for a
class id, as zennit's ``attr_output = one_hot * output``) and is passed back layer by layer. For a linear
layer z_j = sum_i x_i w_ij + b_j (a convolution or ``nn.Linear``, batch norm folded in), with
stab(t) = t + e * sign(t) (sign(0) = +1):

* epsilon: R_i = x_i sum_j w_ij R_j / stab(z_j)                                  (eps=0: LRP-0)
* alpha-beta: R_i = sum_j (alpha (x w)^+_ij / z^+_j - beta (x w)^-_ij / z^-_j) R_j, with biases
  b^+ / b^- in z^+ / z^-; z-plus is alpha=1, beta=0
* gamma: R_i = sum_j x_i (w_ij + gamma w^+_ij) R_j / stab(sum_i' x_i' (w_i'j + gamma w^+_i'j) + b_j + gamma b^+_j)
  for z_j > 0 (w^- for z_j < 0; negative inputs with the other sign, the "generalised" gamma of zennit)
* flat: R_i = sum_j R_j / stab(#inputs of j); w-square: R_i = sum_j w_ij^2 R_j / stab(sum_i' w_i'j^2)
* z-box (first layer, inputs in [l, h]):
  R_i = sum_j (x_i w_ij - l_i w^+_ij - h_i w^-_ij) R_j / stab(sum_i' x_i' w_i'j - l_i' w^+_i'j - h_i' w^-_i'j)

Other operators: ReLU, ReLU6, hardtanh, LeakyReLU and batch norm pass relevance through unchanged;
average pooling, ``mean``/``sum`` reductions and residual sums a + b split R in proportion to their
inputs, R_a = a R / stab(a + b) (zennit's ``Norm`` rule, which its ResNet canonizer puts on the sum);
max pooling, dropout, padding, reshapes and concatenation keep their gradient (max pooling: winner
takes all). Batch norm after a convolution or linear layer is folded into it (w' = w * g/sqrt(v + e),
b' = (b - m) * g/sqrt(v + e) + beta) for the rule: by the rule itself in the backward pass, from the
statistics the forward pass used; the model's parameters are never written.

The rules are applied by intercepting operators during one call (a ``TorchFunctionMode``, like
:mod:`camlens.methods.guided`): each ``conv``/``linear``/``batch_norm``/activation/sum/pooling call returns
its usual output through a custom autograd function whose backward is the rule. It reaches modules
used several times, functional calls (``F.relu``, ``y + x``, ``out += identity``) and convolutions that
pad in their forward (TensorFlow "same" padding: padded zeros are not inputs, so flat, w-square and
z-box leave them out). Nothing is registered on the model; nothing outlives the call. Operators that
have no rule here (SiLU, GELU, sigmoid, tanh, layer/group norm, attention, products of two
input-dependent tensors, ...) raise a ValueError naming the module.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from camlens.data.images import IMAGENET_MEAN, IMAGENET_STD
from camlens.methods.base import Attribution, CAMMethod
from camlens.registry import register
from camlens.targets import Targets, resolve_targets

__all__ = [
    "LRP",
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "LRPEpsilonAlpha2Beta1",
    "LRPEpsilonGammaBox",
    "LRPEpsilonPlus",
    "LRPEpsilonPlusFlat",
    "WSquare",
    "ZBox",
    "ZPlus",
    "lrp_relevance",
]


# ---------------------------------------------------------------- rules


def _stab(t: torch.Tensor, eps: float) -> torch.Tensor:
    """t + eps * sign(t), with sign(0) = +1 (zennit's ``stabilize``)."""
    return t + eps * ((t == 0).to(t) + t.sign())


@dataclass(frozen=True)
class Epsilon:
    """R_i = x_i sum_j w_ij R_j / stab(z_j). ``epsilon=0`` is LRP-0 (Bach et al. 2015, eq. 58)."""

    epsilon: float = 1e-6

    def relevance(self, layer: _LinearNode, r: torch.Tensor) -> torch.Tensor:
        s = r / _stab(layer.z, self.epsilon)
        return layer.x * layer.transpose(s, layer.weight)


@dataclass(frozen=True)
class AlphaBeta:
    """alpha * positive - beta * negative contributions, alpha - beta = 1 (Bach et al. 2015, eq. 60)."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or not math.isclose(self.alpha - self.beta, 1.0):
            raise ValueError(f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, got {self.alpha}, {self.beta}")

    def relevance(self, layer: _LinearNode, r: torch.Tensor) -> torch.Tensor:
        w, b = layer.weight, layer.bias
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp = None if b is None else b.clamp(min=0)
        bn = None if b is None else b.clamp(max=0)
        xp, xn = layer.parts()
        out = torch.zeros_like(layer.x)
        for coeff, (w_pos, b_pos, w_neg) in ((self.alpha, (wp, bp, wn)), (-self.beta, (wn, bn, wp))):
            if coeff == 0:
                continue
            # positive part: x+ w+ (+ x- w-); negative part: x+ w- (+ x- w+)
            z = layer.forward(xp, w_pos, b_pos)
            if xn is not None:
                z = z + layer.forward(xn, w_neg, None)
            s = coeff * r / _stab(z, self.stabilizer)
            out = out + xp * layer.transpose(s, w_pos)
            if xn is not None:
                out = out + xn * layer.transpose(s, w_neg)
        return out


@dataclass(frozen=True)
class ZPlus(AlphaBeta):
    """z+ rule: alpha=1, beta=0 (Montavon et al. 2017; the LRP-alpha1beta0 of Bach et al. 2015)."""

    alpha: float = 1.0
    beta: float = 0.0


@dataclass(frozen=True)
class Gamma:
    """Gamma rule (Montavon et al. 2019, eq. 4), generalised to negative inputs and outputs as zennit does."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def relevance(self, layer: _LinearNode, r: torch.Tensor) -> torch.Tensor:
        w, b, g = layer.weight, layer.bias, self.gamma
        wa, wb = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        ba = None if b is None else b + g * b.clamp(min=0)
        bb = None if b is None else b + g * b.clamp(max=0)
        xp, xn = layer.parts()
        out = torch.zeros_like(layer.x)
        # outputs z > 0 favour positive contributions, outputs z < 0 negative ones
        for mask, (w_xp, b_xp, w_xn) in ((layer.z > 0, (wa, ba, wb)), (layer.z < 0, (wb, bb, wa))):
            z = layer.forward(xp, w_xp, b_xp)
            if xn is not None:
                z = z + layer.forward(xn, w_xn, None)
            s = mask.to(r) * r / _stab(z, self.stabilizer)
            out = out + xp * layer.transpose(s, w_xp)
            if xn is not None:
                out = out + xn * layer.transpose(s, w_xn)
        return out


@dataclass(frozen=True)
class Flat:
    """R_i = sum_j R_j / stab(number of inputs of j) (Lapuschkin et al. 2019): all weights and inputs 1."""

    stabilizer: float = 1e-6

    def relevance(self, layer: _LinearNode, r: torch.Tensor) -> torch.Tensor:
        return _uniform_input_rule(layer, r, torch.ones_like(layer.weight), self.stabilizer)


@dataclass(frozen=True)
class WSquare:
    """R_i = sum_j w_ij^2 R_j / stab(sum_i' w_i'j^2) (Montavon et al. 2017). No bias in the denominator, as in
    the paper (zennit's ``WSquare`` adds b^2 unless ``zero_params='bias'``)."""

    stabilizer: float = 1e-6

    def relevance(self, layer: _LinearNode, r: torch.Tensor) -> torch.Tensor:
        return _uniform_input_rule(layer, r, layer.weight**2, self.stabilizer)


def _uniform_input_rule(layer: _LinearNode, r: torch.Tensor, weight: torch.Tensor, stabilizer: float) -> torch.Tensor:
    ones = layer.input_mask()  # 1 on real inputs, 0 on padding the forward added
    s = r / _stab(layer.forward(ones, weight, None), stabilizer)
    return ones * layer.transpose(s, weight)


Bound = Union[float, Sequence[float], torch.Tensor]


@dataclass(frozen=True)
class ZBox:
    """z^B rule for inputs bounded by [low, high] (Montavon et al. 2017); for the first layer.

    ``low``/``high``: a number, one number per channel, or a tensor broadcastable to the input. ``None``
    (default): ImageNet-normalised images, (0 - mean) / std and (1 - mean) / std per channel.
    """

    low: Bound | None = None
    high: Bound | None = None
    stabilizer: float = 1e-6

    def bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        low = -mean / std if self.low is None else self.low
        high = (1 - mean) / std if self.high is None else self.high
        return _expand_bound(low, x, "low"), _expand_bound(high, x, "high")

    def relevance(self, layer: _LinearNode, r: torch.Tensor) -> torch.Tensor:
        w, b = layer.weight, layer.bias
        low, high = self.bounds(layer.unpadded_like())
        low, high = layer.pad(low), layer.pad(high)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp = None if b is None else b.clamp(min=0)
        bn = None if b is None else b.clamp(max=0)
        z = layer.forward(layer.x, w, b) - layer.forward(low, wp, bp) - layer.forward(high, wn, bn)
        s = r / _stab(z, self.stabilizer)
        return layer.x * layer.transpose(s, w) - low * layer.transpose(s, wp) - high * layer.transpose(s, wn)


def _expand_bound(value: Bound, x: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 1 and x.dim() >= 2:
        if t.shape[0] != x.shape[1]:
            raise ValueError(
                f"z-box {name} has {t.shape[0]} values per channel but the first layer's input has {x.shape[1]} "
                f"channels; pass {name}= as a number or one value per channel"
            )
        t = t.view(1, -1, *([1] * (x.dim() - 2)))
    try:
        return t.expand_as(x)
    except RuntimeError as err:
        raise ValueError(
            f"z-box {name} of shape {tuple(t.shape)} does not broadcast to the first layer's input {tuple(x.shape)}"
        ) from err


Rule = Union[Epsilon, AlphaBeta, Gamma, Flat, WSquare, ZBox]


@dataclass(frozen=True)
class _Composite:
    """Which rule each kind of layer gets: ``conv`` (convolutions), ``linear`` (``nn.Linear``), ``first`` (the
    first convolution or linear layer the forward runs; ``None``: its kind's rule)."""

    conv: Rule
    linear: Rule
    first: Rule | None = None


def _composite(name: str, epsilon: float, stabilizer: float, gamma: float, low: Any, high: Any) -> _Composite:
    eps = Epsilon(epsilon)
    if name == "epsilon-plus":
        return _Composite(ZPlus(stabilizer=stabilizer), eps)
    if name == "epsilon-plus-flat":
        return _Composite(ZPlus(stabilizer=stabilizer), eps, Flat(stabilizer))
    if name == "epsilon-gamma-box":
        return _Composite(Gamma(gamma, stabilizer), eps, ZBox(low, high, stabilizer))
    if name == "epsilon-alpha2-beta1":
        return _Composite(AlphaBeta(2.0, 1.0, stabilizer), eps)
    raise ValueError(f"unknown LRP composite {name!r}; choose one of {', '.join(COMPOSITES)}")


COMPOSITES = ("epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1")


# ---------------------------------------------------------------- nodes: one per intercepted operator call


class _Node:
    """An intercepted call: ``compute`` gives its output, ``relevance`` maps the output's relevance to inputs'."""

    saved: list[tuple[str, torch.Tensor, int]]

    def keep(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Keep ``t`` for the backward pass, with its version (an in-place write we did not see is an error)."""
        d = t.detach()
        setattr(self, name, d)
        self.saved.append((name, d, d._version))
        return d

    def check(self) -> None:
        for name, t, version in self.saved:
            current = getattr(self, name)
            if current is t and t._version != version:
                raise RuntimeError(
                    f"LRP: a tensor {type(self).__name__} needs was modified in place by an operation camlens "
                    "does not intercept; make that operation out of place"
                )

    def compute(self, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def relevance(self, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        raise NotImplementedError


class _Refuse(torch.autograd.Function):
    """Identity in the forward; in the backward, the untreated operation's ValueError if relevance arrives."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, message: str) -> torch.Tensor:
        ctx.message = message
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        if bool(grad.ne(0).any()):
            raise ValueError(ctx.message)
        return grad, None


class _Apply(torch.autograd.Function):
    """Forward: the node's operator. Backward: the node's relevance rule."""

    @staticmethod
    def forward(ctx: Any, node: _Node, *inputs: torch.Tensor) -> Any:
        ctx.node = node
        return node.compute(*inputs)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> Any:
        node: _Node = ctx.node
        node.check()
        return (None, *node.relevance(r))


class _LinearNode(_Node):
    """conv{1,2,3}d or linear: x, weight, bias (batch norm folded in by :meth:`fold`), z, the rule."""

    x: torch.Tensor  # the input, detached
    z: torch.Tensor  # the output (after the folded batch norm), detached

    def __init__(self, kind: str, args: Any, kwargs: dict[str, Any], rule: Rule, padding: Any) -> None:
        self.saved = []
        self.kind, self.rule = kind, rule
        names = ("input", "weight", "bias") + (("stride", "padding", "dilation", "groups") if kind != "linear" else ())
        params = dict(zip(names, args))
        params.update(kwargs)
        self.keep("x", params["input"])
        self.weight: torch.Tensor = params["weight"].detach()
        bias = params.get("bias")
        self.bias: torch.Tensor | None = None if bias is None else bias.detach()
        if kind != "linear":
            n = int(kind[-2])
            self.stride = _ntuple(params.get("stride", 1), n)
            self.dilation = _ntuple(params.get("dilation", 1), n)
            self.groups = int(params.get("groups", 1))
            self.padding = _conv_padding(params.get("padding", 0), n, self.weight, self.dilation)
        self.pad_widths = padding  # F.pad widths applied to the input just before (TF "same" convolutions)
        self.folded = False

    def compute(self, *inputs: torch.Tensor) -> torch.Tensor:
        z = self.forward(inputs[0], self.weight, self.bias)
        self.keep("z", z)
        return z

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        conv = (F.conv1d, F.conv2d, F.conv3d)[int(self.kind[-2]) - 1]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """sum_j w_ij s_j: the input gradient of the layer with ``weight`` for output gradient ``s``."""
        if self.kind == "linear":
            return s @ weight
        n = len(self.stride)
        grad, _, _ = torch.ops.aten.convolution_backward(
            s, self.x, weight, None, self.stride, self.padding, self.dilation, False, [0] * n, self.groups,
            [True, False, False],
        )  # fmt: skip
        return grad

    def fold(self, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> None:
        """Batch norm y = scale * z + shift after this layer: w' = scale w, b' = scale b + shift, z' = y."""
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        self.weight = self.weight * scale.view(shape)
        self.bias = shift if self.bias is None else self.bias * scale + shift
        self.z = out.detach()
        self.saved = [(n, t, t._version) for n, t, _ in self.saved if n != "z"] + [("z", self.z, self.z._version)]
        self.folded = True

    def parts(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x+ and x- (None when x has no negative entry, as after a ReLU: those terms vanish)."""
        x = self.x
        if bool((x < 0).any()):
            return x.clamp(min=0), x.clamp(max=0)
        return x, None

    def unpadded_like(self) -> torch.Tensor:
        if self.pad_widths is None:
            return self.x
        shape = list(self.x.shape)
        for i, (a, b) in enumerate(zip(self.pad_widths[::2], self.pad_widths[1::2])):
            shape[-1 - i] -= a + b
        return self.x.new_empty(shape)

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.pad_widths is None else F.pad(t, self.pad_widths)

    def input_mask(self) -> torch.Tensor:
        return self.pad(torch.ones_like(self.unpadded_like()))

    def relevance(self, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (self.rule.relevance(self, r),)


def _ntuple(v: Any, n: int) -> list[int]:
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v)] * n


def _conv_padding(padding: Any, n: int, weight: torch.Tensor, dilation: list[int]) -> list[int]:
    if not isinstance(padding, str):
        return _ntuple(padding, n)
    if padding == "valid":
        return [0] * n
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    if any(t % 2 for t in total):
        raise ValueError(
            "LRP: a convolution with padding='same' and an even kernel pads asymmetrically, which camlens' LRP "
            "does not treat; pad with F.pad before the convolution instead"
        )
    return [t // 2 for t in total]


class _PassNode(_Node):
    """An element-wise activation or batch norm: relevance passes through unchanged (zennit's ``Pass``)."""

    def __init__(self, fn: Any) -> None:
        self.saved = []
        self.fn = fn

    def compute(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(inputs[0])

    def relevance(self, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (r,)


class _ProportionalNode(_Node):
    """A linear operator with weights 1/n or 1 (pooling, mean, sum) or a sum of tensors: R_i = c_i R / stab(z).

    ``fn(*inputs)`` is the operator; ``coeffs`` scale each input's contribution (``alpha`` of ``torch.add``).
    """

    z: torch.Tensor

    def __init__(self, fn: Any, stabilizer: float, coeffs: tuple[float, ...] = (1.0,)) -> None:
        self.saved = []
        self.fn, self.stabilizer, self.coeffs = fn, stabilizer, coeffs

    def compute(self, *inputs: torch.Tensor) -> torch.Tensor:
        for i, t in enumerate(inputs):
            self.keep(f"in{i}", t)
        z = self.fn(*inputs)
        self.keep("z", z)
        return z

    def relevance(self, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        s = r / _stab(self.z, self.stabilizer)
        inputs = [getattr(self, f"in{i}") for i in range(len(self.coeffs))]
        if len(inputs) > 1:  # a sum: each addend's share, summed back over broadcast dimensions
            return tuple((c * t * s).sum_to_size(t.shape) for c, t in zip(self.coeffs, inputs))
        with torch.enable_grad():
            x = inputs[0].detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(x), x, s)
        return (inputs[0] * g,)


# ---------------------------------------------------------------- the interception


_RELU_FAMILY: dict[Any, tuple[Any, int | None, bool]] = {
    # func: (out-of-place version, index of the inplace argument, always in place)
    F.relu: (F.relu, 1, False),
    torch.relu: (torch.relu, None, False),
    torch.Tensor.relu: (torch.relu, None, False),
    torch.relu_: (torch.relu, None, True),
    torch.Tensor.relu_: (torch.relu, None, True),
    F.relu_: (torch.relu, None, True),
    F.relu6: (F.relu6, 1, False),
    F.hardtanh: (F.hardtanh, 3, False),
    F.leaky_relu: (F.leaky_relu, 2, False),
}
_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_IADDS = {torch.Tensor.add_, torch.Tensor.__iadd__}
_POOLS = {
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    torch.mean,
    torch.Tensor.mean,
    torch.sum,
    torch.Tensor.sum,
}
_PRODUCTS = {
    torch.mul,
    torch.Tensor.mul,
    torch.Tensor.__mul__,
    torch.Tensor.__rmul__,
    torch.Tensor.mul_,
    torch.Tensor.__imul__,
    torch.div,
    torch.Tensor.div,
    torch.Tensor.__truediv__,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.bmm,
    torch.einsum,
}
# functions without an LRP rule here -> the module types that call them (to name the module)
_UNTREATED: dict[Any, tuple[str, tuple[type[nn.Module], ...]]] = {
    F.silu: ("SiLU", (nn.SiLU,)),
    F.gelu: ("GELU", (nn.GELU,)),
    F.mish: ("Mish", (nn.Mish,)),
    F.hardswish: ("Hardswish", (nn.Hardswish,)),
    F.hardsigmoid: ("Hardsigmoid", (nn.Hardsigmoid,)),
    F.elu: ("ELU", (nn.ELU,)),
    F.celu: ("CELU", (nn.CELU,)),
    F.selu: ("SELU", (nn.SELU,)),
    F.softplus: ("Softplus", (nn.Softplus,)),
    F.prelu: ("PReLU", (nn.PReLU,)),
    torch.sigmoid: ("sigmoid", (nn.Sigmoid,)),
    torch.Tensor.sigmoid: ("sigmoid", (nn.Sigmoid,)),
    torch.tanh: ("tanh", (nn.Tanh,)),
    torch.Tensor.tanh: ("tanh", (nn.Tanh,)),
    F.layer_norm: ("layer norm", (nn.LayerNorm,)),
    F.group_norm: ("group norm", (nn.GroupNorm,)),
    F.instance_norm: ("instance norm", (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)),
    F.local_response_norm: ("local response norm", (nn.LocalResponseNorm,)),
    F.conv_transpose1d: ("transposed convolution", (nn.ConvTranspose1d,)),
    F.conv_transpose2d: ("transposed convolution", (nn.ConvTranspose2d,)),
    F.conv_transpose3d: ("transposed convolution", (nn.ConvTranspose3d,)),
    F.multi_head_attention_forward: ("attention", (nn.MultiheadAttention,)),
    F.scaled_dot_product_attention: ("attention", ()),
    F.softmax: ("softmax", (nn.Softmax,)),
    torch.softmax: ("softmax", (nn.Softmax,)),
    torch.Tensor.softmax: ("softmax", (nn.Softmax,)),
}
_SUPPORTED = (
    "Conv1d/2d/3d, Linear, BatchNorm (folded into the layer before it), ReLU, ReLU6, Hardtanh, LeakyReLU, "
    "max and average pooling, mean/sum, residual sums, dropout, padding, reshapes, concatenation"
)


class _Interceptor(TorchFunctionMode):
    """Route every treated operator call through its LRP node while active."""

    def __init__(self, model: nn.Module, method: str, composite: _Composite, stabilizer: float, x: torch.Tensor):
        super().__init__()
        self.model, self.method, self.composite, self.stabilizer, self.input = model, method, composite, stabilizer, x
        self.first_done = False
        self.last: tuple[_LinearNode, weakref.ref[torch.Tensor]] | None = None  # the last layer and its output
        self.padded: dict[int, tuple[weakref.ref[torch.Tensor], list[int]]] = {}
        # tensors kept by nodes, by id (weakly): an intercepted in-place write gives the nodes a copy first
        self.watch: dict[int, tuple[weakref.ref[torch.Tensor], list[_Node]]] = {}

    def _in_graph(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.requires_grad and (t.grad_fn is not None or t is self.input)

    def _watch(self, node: _Node, t: torch.Tensor) -> None:
        entry = self.watch.get(id(t))
        if entry is None or entry[0]() is not t:
            self.watch[id(t)] = (weakref.ref(t), [node])
        else:
            entry[1].append(node)

    def _protect(self, t: torch.Tensor, always: bool = False) -> torch.Tensor | None:
        """Before an in-place write to ``t``: nodes that kept ``t`` keep a copy instead (returned; ``always``:
        a copy even if no node kept ``t``)."""
        entry = self.watch.pop(id(t), None)
        if entry is None or entry[0]() is not t:
            return t.clone() if always else None
        copy = t.clone()
        d = copy.detach()
        for node in entry[1]:
            for i, (name, kept, _) in enumerate(node.saved):
                if kept.data_ptr() == t.data_ptr() and kept.shape == t.shape:
                    setattr(node, name, d)
                    node.saved[i] = (name, d, d._version)
        return copy

    def _apply(self, node: _Node, *inputs: torch.Tensor, watch: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        out = _Apply.apply(node, *inputs)
        for t in (*watch, out):
            self._watch(node, t)
        return out

    def _untreated(self, func: Any) -> ValueError:
        what, types = _UNTREATED.get(func, (getattr(func, "__name__", str(func)), ()))
        names = [f"'{n}' ({type(m).__name__})" for n, m in self.model.named_modules() if types and isinstance(m, types)]
        where = f"module {', '.join(names[:3])}" if names else f"a functional {what} call"
        return ValueError(
            f"{self.method}: {where} has no LRP rule in camlens ({what}); LRP treats {_SUPPORTED}. "
            "Use method='saliency' or a CAM method for this model"
        )

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (F.conv1d, F.conv2d, F.conv3d, F.linear):
            return self._linear(func, args, kwargs)
        if func is F.batch_norm:
            return self._batch_norm(args, kwargs)
        relu = _RELU_FAMILY.get(func)
        if relu is not None:
            return self._pass(func, relu, args, kwargs)
        if func in _ADDS or func in _IADDS:
            return self._add(func, args, kwargs)
        if func in _POOLS and args and self._in_graph(args[0]):
            node = _ProportionalNode(lambda t: func(t, *args[1:], **kwargs), self.stabilizer)
            return self._apply(node, args[0])
        if func is F.pad:
            out = func(*args, **kwargs)
            mode, value = kwargs.get("mode", args[2] if len(args) > 2 else "constant"), kwargs.get("value", 0)
            if mode == "constant" and not value and self._in_graph(args[0]):
                self.padded[id(out)] = (weakref.ref(out), list(kwargs.get("pad", args[1] if len(args) > 1 else ())))
            return out
        if func in _UNTREATED or (func in _PRODUCTS and sum(self._in_graph(a) for a in args) >= 2):
            out = func(*args, **kwargs)
            # refused only if relevance reaches it: a head the target does not read (a detector's box
            # branch with tanh / sigmoid) is fine, the path of the explained score is not
            if isinstance(out, torch.Tensor) and any(self._in_graph(a) for a in args):
                return _Refuse.apply(out, str(self._untreated(func)))
            return out
        return func(*args, **kwargs)

    def _linear(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        x = args[0] if args else kwargs["input"]
        if not self._in_graph(x):
            return func(*args, **kwargs)
        kind = {F.conv1d: "conv1d", F.conv2d: "conv2d", F.conv3d: "conv3d"}.get(func, "linear")
        rule = self.composite.linear if kind == "linear" else self.composite.conv
        if not self.first_done:
            self.first_done = True
            rule = self.composite.first or rule
        found = self.padded.get(id(x))
        padding = found[1] if found is not None and found[0]() is x else None
        node = _LinearNode(kind, args, kwargs, rule, padding)
        out = self._apply(node, x, watch=(x,))
        self.last = (node, weakref.ref(out))
        return out

    def _batch_norm(self, args: Any, kwargs: dict[str, Any]) -> Any:
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        p = {"weight": None, "bias": None, "training": False, "eps": 1e-5, **dict(zip(names, args)), **kwargs}
        x = p["input"]
        if not self._in_graph(x):
            return F.batch_norm(*args, **kwargs)
        with torch.no_grad():  # the affine map the forward applies: scale * x + shift, per channel
            if p["training"] or p["running_mean"] is None:
                dims = [0, *range(2, x.dim())]
                mean, var = x.mean(dims), x.var(dims, unbiased=False)
            else:
                mean, var = p["running_mean"], p["running_var"]
            scale = torch.rsqrt(var + p["eps"])
            if p["weight"] is not None:
                scale = scale * p["weight"]
            shift = -mean * scale
            if p["bias"] is not None:
                shift = shift + p["bias"]
        node = _PassNode(lambda t: F.batch_norm(t, *args[1:], **kwargs))
        out = self._apply(node, x)
        if self.last is not None and self.last[1]() is x and not self.last[0].folded:
            self.last[0].fold(scale.detach(), shift.detach(), out)
            self._watch(self.last[0], out)
        return out

    def _pass(self, func: Any, relu: tuple[Any, int | None, bool], args: Any, kwargs: dict[str, Any]) -> Any:
        fn, inplace_at, always = relu
        x = args[0] if args else kwargs["input"]
        if not self._in_graph(x):
            return func(*args, **kwargs)
        inplace = always or bool(
            kwargs.get("inplace", args[inplace_at] if inplace_at is not None and len(args) > inplace_at else False)
        )
        rest, kw = list(args[1:]), {k: v for k, v in kwargs.items() if k not in ("inplace", "input")}
        if inplace_at is not None and len(rest) >= inplace_at:
            rest = rest[: inplace_at - 1]
        y = self._apply(_PassNode(lambda t: fn(t, *rest, **kw)), x)
        if not inplace:
            return y
        self._protect(x)
        # an in-place call must change its argument: callers may ignore the return value
        return x.copy_(y)

    def _add(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        a: Any = args[0]
        b: Any = args[1] if len(args) > 1 else kwargs.get("other")
        alpha = kwargs.get("alpha", 1)
        if not (self._in_graph(a) and self._in_graph(b)) or "out" in kwargs:
            return func(*args, **kwargs)
        if func in _IADDS:
            before = self._protect(a, always=True)
            assert before is not None
            z = self._apply(_ProportionalNode(lambda s, t: s + alpha * t, self.stabilizer, (1.0, alpha)), before, b)
            return a.copy_(z)
        return self._apply(_ProportionalNode(lambda s, t: s + alpha * t, self.stabilizer, (1.0, alpha)), a, b)


# ---------------------------------------------------------------- the method


def lrp_relevance(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Targets,
    composite: _Composite,
    stabilizer: float = 1e-6,
    method: str = "lrp",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Any]:
    """Relevance at the input (B, K, C, H, W) for all K targets; returns ``(relevance, scores, ids, output)``.

    The relevance entering at the output is output * dS/d(output) (for a class id: the one-hot logit);
    a non-tensor output (a dict a callable target reads) gets S itself at the score.
    """
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with _Interceptor(model, method, composite, stabilizer, x):
            output = model(x)
        scores, ids = resolve_targets(targets, output, batch=x.shape[0])
        if not scores.requires_grad:
            raise ValueError("the target scores do not depend on the input")
        k = scores.shape[1]
        found = []
        for i in range(k):
            last = i == k - 1
            if isinstance(output, torch.Tensor) and output.requires_grad:
                (g,) = torch.autograd.grad(scores[:, i].sum(), output, retain_graph=True)
                seed = (output.detach() * g,)
                (r,) = torch.autograd.grad(output, x, seed, retain_graph=not last)
            else:
                (r,) = torch.autograd.grad(scores[:, i], x, scores[:, i].detach(), retain_graph=not last)
            found.append(r)
    return torch.stack(found, 1), scores.detach(), ids, output


class _LRPMethod(CAMMethod):
    """Layer-wise relevance propagation with a named composite; see :mod:`camlens.methods.lrp`.

    Args:
        model: the network; batch norm is folded into the layer before it for the call, by the rule.
        epsilon: the epsilon rule's stabiliser (dense layers), zennit's default 1e-6.
        stabilizer: added to the denominators of the other rules, 1e-6 as in zennit.
        gamma: the gamma rule's gamma (``lrp-epsilon-gamma-box``).
        low, high: the z-box rule's input bounds (``lrp-epsilon-gamma-box``): numbers, one per channel or
            tensors; default: ImageNet-normalised pixels in [0, 1].
    """

    composite_name: ClassVar[str] = "epsilon-plus-flat"
    needs_gradients: ClassVar[bool] = True
    takes_layer: ClassVar[bool] = False
    explains_pixels: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        gamma: float = 0.25,
        low: Bound | None = None,
        high: Bound | None = None,
    ) -> None:
        super().__init__(model, layer)
        self.stabilizer = stabilizer
        self.composite = _composite(self.composite_name, epsilon, stabilizer, gamma, low, high)

    def pixels(self, x: torch.Tensor, targets: Targets) -> Attribution:
        pixels, scores, ids, output = lrp_relevance(self.model, x, targets, self.composite, self.stabilizer, self.name)
        # the LRP heatmap is the relevance summed over colour channels, signed (Bach et al. 2015, Fig. 1;
        # zennit's heatmaps): negative relevance speaks against the class and must not read as for it
        return Attribution(pixels, scores, ids, output, raw=pixels.sum(2))


@register("lrp-epsilon-plus")
class LRPEpsilonPlus(_LRPMethod):
    """LRP, zennit's ``EpsilonPlus``: z+ at convolutions, epsilon at dense layers.

    Rules from Montavon et al., "Layer-wise relevance propagation: an overview" (2019): z+ passes relevance
    in proportion to the positive contributions x_j w_jk^+; epsilon divides by z_k + eps sign(z_k).

    Examples:
        >>> exp = camlens.LRPEpsilonPlus(model)(x, targets=3)
        >>> exp.raw.shape  # (B, K, H, W): relevance summed over colour channels, signed
        torch.Size([1, 1, 64, 64])
    """

    composite_name = "epsilon-plus"


@register("lrp-epsilon-plus-flat")
class LRPEpsilonPlusFlat(_LRPMethod):
    """LRP, zennit's ``EpsilonPlusFlat``: flat at the first layer, z+ at convolutions, epsilon at dense layers.

    Rules from Montavon et al. (2019); the flat first layer spreads relevance uniformly over each
    receptive field (Lapuschkin et al. 2019), the shape Kohlbrenner et al. (2020) recommend.

    Examples:
        >>> exp = camlens.LRPEpsilonPlusFlat(model)(x, targets=3)
        >>> exp.pixels.shape
        torch.Size([1, 1, 3, 64, 64])
    """

    composite_name = "epsilon-plus-flat"


@register("lrp-epsilon-gamma-box")
class LRPEpsilonGammaBox(_LRPMethod):
    """LRP, zennit's ``EpsilonGammaBox``: z-box at the first layer, gamma at convolutions, epsilon at dense layers.

    Rules from Montavon et al. (2019): gamma adds gamma w^+ to the weights (gamma = 0.25); z-box (Montavon
    et al. 2017, deep Taylor decomposition) bounds the input by the box of valid pixel values.

    Examples:
        >>> exp = camlens.LRPEpsilonGammaBox(model)(x, targets=3)
        >>> exp.pixels.shape
        torch.Size([1, 1, 3, 64, 64])
    """

    composite_name = "epsilon-gamma-box"


@register("lrp-epsilon-alpha2-beta1")
class LRPEpsilonAlpha2Beta1(_LRPMethod):
    """LRP, zennit's ``EpsilonAlpha2Beta1``: alpha=2, beta=1 at convolutions, epsilon at dense layers.

    The alpha-beta rule (Bach et al. 2015): R_j = sum_k (alpha z_jk^+ / z_k^+ - beta z_jk^- / z_k^-) R_k.

    Examples:
        >>> exp = camlens.LRPEpsilonAlpha2Beta1(model)(x, targets=3)
        >>> exp.pixels.shape
        torch.Size([1, 1, 3, 64, 64])
    """

    composite_name = "epsilon-alpha2-beta1"


@register("lrp")
class LRP(_LRPMethod):
    """LRP with any composite or rules; by default ``epsilon-plus-flat`` (the shape Kohlbrenner et al. 2020 recommend).

    ``composite`` names a composite (``epsilon-plus``, ``epsilon-plus-flat``, ``epsilon-gamma-box``,
    ``epsilon-alpha2-beta1``); ``conv``, ``linear``, ``first`` replace its rule for convolutions, dense
    layers and the first layer with a rule object (:class:`Epsilon`, :class:`ZPlus`, :class:`AlphaBeta`,
    :class:`Gamma`, :class:`Flat`, :class:`WSquare`, :class:`ZBox`).

    Examples:
        >>> from camlens.methods.lrp import Epsilon
        >>> exp = camlens.LRP(model, linear=Epsilon(0.25))(x, targets=3)
        >>> exp.pixels.sum(2).shape  # (B, K, H, W) relevance heatmap; sums to about the logit
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        composite: str = "epsilon-plus-flat",
        conv: Rule | None = None,
        linear: Rule | None = None,
        first: Rule | None = None,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        gamma: float = 0.25,
        low: Bound | None = None,
        high: Bound | None = None,
    ) -> None:
        CAMMethod.__init__(self, model, layer)
        self.stabilizer = stabilizer
        base = _composite(composite, epsilon, stabilizer, gamma, low, high)
        for name, rule in (("conv", conv), ("linear", linear), ("first", first)):
            if rule is not None and not hasattr(rule, "relevance"):
                raise TypeError(f"{name} must be an LRP rule such as Epsilon(1e-6), got {type(rule).__name__}")
        self.composite = _Composite(conv or base.conv, linear or base.linear, first or base.first)
