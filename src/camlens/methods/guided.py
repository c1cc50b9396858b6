"""Pixel-space explanations: input gradients and modified backward rules through activations.

* ``saliency`` (Simonyan et al., ICLR Workshop 2014): dS^c/dx; the displayed map is the maximum over
  colour channels of |dS^c/dx| (their eq. 5 reduction), the "Backprop" baseline of the CAM paper.
* ``guided-backprop`` (Springenberg et al., ICLR Workshop 2015): at every ReLU, the backward pass keeps
  only gradient that is positive where the forward input was positive: R_in = 1[x > 0] * ReLU(R_out).
* ``deconvnet`` (Zeiler & Fergus, ECCV 2014): keeps only positive gradient, whatever the forward input:
  R_in = ReLU(R_out).
* ``guided-gradcam`` (Selvaraju et al., ICCV 2017, sec. 3.1): guided backprop (B, K, 3, H, W) times
  Grad-CAM's ReLU'd map upsampled bilinearly to the input, point-wise, built from the two methods.

The rule is applied by intercepting the operators during the call (a ``TorchFunctionMode``), so it
reaches every ReLU the forward runs: ``nn.ReLU`` modules, one module used several times, in-place
ReLUs and functional ones (``F.relu``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu``). Other members of
the family are handled with the same rule applied to their gate: ReLU6 / hardtanh (gate: min < x < max;
EfficientNet-Lite and MobileNet use ReLU6 only, so hooking ``nn.ReLU`` alone silently gives the plain
gradient there) and LeakyReLU (local slope kept, negative gradient dropped). Activations the rule
cannot treat (SiLU, GELU, Mish, Hardswish, ELU, SELU) pass through unchanged with a warning naming them.
No module is swapped and no flag is changed; nothing outlives the call.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from camlens.geometry import resize
from camlens.methods.base import Attribution, CAMMethod
from camlens.methods.gradient import GradCAM
from camlens.registry import register
from camlens.targets import Targets, resolve_targets

__all__ = ["Deconvnet", "GuidedBackprop", "GuidedGradCAM", "Saliency"]

_UNTREATED = {F.silu: "SiLU", F.gelu: "GELU", F.mish: "Mish", F.hardswish: "Hardswish", F.elu: "ELU", F.selu: "SELU"}


class _Rule(torch.autograd.Function):
    """y = f(x) forward; backward: f'(x) * ReLU(g) (guided) or ReLU(g) (deconvnet).

    ``derivative(g, x)`` is the activation's own fused backward kernel (``threshold_backward`` for
    ReLU, ``hardtanh_backward`` for ReLU6, ``leaky_relu_backward``), so the rule costs one extra clamp.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Any, derivative: Any, deconv: bool) -> Any:
        ctx.save_for_backward(x)
        ctx.derivative, ctx.deconv = derivative, deconv
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (x,) = ctx.saved_tensors
        positive = grad.clamp(min=0)
        if ctx.deconv:
            return positive, None, None, None
        return ctx.derivative(positive, x), None, None, None


def _arg(args: Any, kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return kwargs.get(name, args[index] if len(args) > index else default)


def _relu(args: Any, kwargs: dict[str, Any], inplace: bool) -> tuple[Any, Any, bool]:
    return (
        torch.relu,
        lambda g, x: torch.ops.aten.threshold_backward(g, x, 0),
        inplace or _arg(args, kwargs, 1, "inplace", False),
    )


def _hardtanh(args: Any, kwargs: dict[str, Any], low: float | None = None, high: float | None = None) -> Any:
    lo = _arg(args, kwargs, 1, "min_val", -1.0) if low is None else low
    hi = _arg(args, kwargs, 2, "max_val", 1.0) if high is None else high
    inplace = _arg(args, kwargs, 1 if low is not None else 3, "inplace", False)
    return (
        lambda t: t.clamp(lo, hi),
        lambda g, x: torch.ops.aten.hardtanh_backward(g, x, lo, hi),
        inplace,
    )


def _leaky(args: Any, kwargs: dict[str, Any]) -> Any:
    slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
    return (
        lambda t: F.leaky_relu(t, slope),
        lambda g, x: torch.ops.aten.leaky_relu_backward(g, x, slope, False),
        _arg(args, kwargs, 2, "inplace", False),
    )


_HANDLERS: dict[Any, Any] = {
    F.relu: lambda a, k: _relu(a, k, False),
    torch.relu: lambda a, k: _relu(a, k, False),
    torch.Tensor.relu: lambda a, k: _relu(a, k, False),
    torch.relu_: lambda a, k: _relu(a, k, True),
    torch.Tensor.relu_: lambda a, k: _relu(a, k, True),
    F.relu_: lambda a, k: _relu(a, k, True),
    F.relu6: lambda a, k: _hardtanh(a, k, 0.0, 6.0),
    F.hardtanh: _hardtanh,
    F.leaky_relu: _leaky,
}


class _Intercept(TorchFunctionMode):
    """Replace every ReLU-family call by the guided (or deconvnet) rule while active."""

    def __init__(self, deconv: bool) -> None:
        super().__init__()
        self.deconv = deconv
        self.untreated: set[str] = set()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is None:
            if func in _UNTREATED:
                self.untreated.add(_UNTREATED[func])
            return func(*args, **kwargs)
        fn, derivative, inplace = handler(args, kwargs)
        x = args[0]
        self.count += 1
        y = _Rule.apply(x.clone() if inplace else x, fn, derivative, self.deconv)
        # an in-place call must change its argument: callers may ignore the return value
        return x.copy_(y) if inplace else y


def input_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: Targets, rule: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Any]:
    """dS/dx (B, K, C, H, W) for all K targets, with an optional backward ``rule`` ("guided", "deconvnet").

    Returns ``(gradients, scores, ids, output)``. Gradients are taken w.r.t. a detached copy of the
    input only: no parameter gradient is computed, the caller's input is untouched.
    """
    x = inputs.detach().clone().requires_grad_(True)
    mode = None if rule is None else _Intercept(deconv=rule == "deconvnet")
    with torch.enable_grad():
        if mode is None:
            output = model(x)
        else:
            with mode:
                output = model(x)
        scores, ids = resolve_targets(targets, output, batch=x.shape[0])
        if not scores.requires_grad:
            raise ValueError("the target scores do not depend on the input")
        k = scores.shape[1]
        grads = [torch.autograd.grad(scores[:, i].sum(), x, retain_graph=i < k - 1)[0] for i in range(k)]
    if mode is not None:
        if mode.untreated:
            warnings.warn(
                f"{rule} rule: the model uses {', '.join(sorted(mode.untreated))}, which the rule cannot treat; "
                "their backward pass is the plain gradient",
                stacklevel=3,
            )
        if mode.count == 0:
            warnings.warn(
                f"{rule} rule: the model ran no ReLU-family activation; this is the plain gradient", stacklevel=3
            )
    return torch.stack(grads, 1), scores.detach(), ids, output


class _InputGradient(CAMMethod):
    """dS/dx through the model, with the class's backward ``rule`` at its activations (None: plain)."""

    rule: ClassVar[str | None] = None
    needs_gradients: ClassVar[bool] = True
    takes_layer: ClassVar[bool] = False
    explains_pixels: ClassVar[bool] = True

    def __init__(self, model: nn.Module, layer: Any = None, *, counterfactual: bool = False) -> None:
        super().__init__(model, layer)
        self.counterfactual = counterfactual

    def pixels(self, x: torch.Tensor, targets: Targets) -> Attribution:
        if not self.counterfactual:
            return Attribution(*input_gradients(self.model, x, targets, self.rule))
        found: dict[str, Any] = {}

        def negated(output: Any) -> torch.Tensor:
            scores, found["ids"] = resolve_targets(targets, output, batch=x.shape[0])
            return -scores

        grads, scores, _, output = input_gradients(self.model, x, negated, self.rule)
        return Attribution(grads, -scores, found["ids"], output)


@register("saliency")
class Saliency(_InputGradient):
    """Input-gradient saliency (Simonyan et al. 2014): dS^c/dx; map = max over channels of |dS^c/dx|.

    Examples:
        >>> exp = camlens.Saliency(model)(x, targets=3)
        >>> torch.equal(exp.raw, exp.pixels.abs().amax(2))
        True
    """


@register("guided-backprop")
class GuidedBackprop(_InputGradient):
    """Guided Backpropagation (Springenberg et al. 2015): R_in = 1[x > 0] * ReLU(R_out) at every ReLU.

    Examples:
        >>> exp = camlens.GuidedBackprop(model)(x, targets=3)
        >>> exp.pixels.shape  # (B, K, C, H, W)
        torch.Size([1, 1, 3, 64, 64])
    """

    rule = "guided"


@register("deconvnet")
class Deconvnet(_InputGradient):
    """Deconvnet (Zeiler & Fergus 2014): R_in = ReLU(R_out) at every ReLU, whatever the forward input.

    Examples:
        >>> exp = camlens.Deconvnet(model)(x, targets=3)
        >>> exp.pixels.shape  # (B, K, C, H, W); exp.raw = max over C of |pixels|
        torch.Size([1, 1, 3, 64, 64])
    """

    rule = "deconvnet"


@register("guided-gradcam")
class GuidedGradCAM(CAMMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop x bilinearly upsampled ReLU(Grad-CAM).

    Built from the public methods: ``GuidedBackprop(model)(x, t).pixels * up(ReLU(GradCAM(model,
    layer)(x, t).raw))``. ``counterfactual=True`` uses both with the negated target score.

    Examples:
        >>> exp = camlens.GuidedGradCAM(model, layer="layer4")(x, targets=3)
        >>> exp.pixels.shape  # (B, K, C, H, W)
        torch.Size([1, 1, 3, 64, 64])
    """

    needs_gradients: ClassVar[bool] = True
    explains_pixels: ClassVar[bool] = True

    def __init__(
        self, model: nn.Module, layer: Any = None, *, counterfactual: bool = False, reshape: Any = None
    ) -> None:
        super().__init__(model)
        self.gradcam = GradCAM(model, layer, counterfactual=counterfactual, reshape=reshape)
        self.guided = GuidedBackprop(model, counterfactual=counterfactual)

    def pixels(self, x: torch.Tensor, targets: Targets) -> Attribution:
        # both halves run under this call's hold of the model's lock: no other thread's call between them
        guided = self.guided(x, targets)
        cam = self.gradcam(x, guided.targets if guided.targets is not None else targets)
        up = resize(cam.raw.clamp(min=0), guided.input_size)  # the paper's bilinear upsampling of ReLU(Grad-CAM)
        assert guided.pixels is not None  # a pixel method
        return Attribution(guided.pixels * up[:, :, None], guided.scores, guided.targets, guided.output, cam.layer)
