"""The explanation pipeline. A method overrides only how its weights (or raw maps) are computed.

Data flow of one call:

1. one forward pass; the target layer's activation A (B, C, h, w) is captured. Methods that need no
   gradient run it under ``torch.inference_mode()``; gradient methods run it without autograd up to
   the layer and with autograd only after it (see :mod:`camlens.capture`);
2. targets -> scores S (B, K) (:mod:`camlens.targets`);
3. gradient methods: dS/dA for all K targets in one batched backward, w.r.t. A only;
4. ``weights(ctx)`` -> (B, K, C) per-channel or (B, K, C, h, w) per-pixel weights;
   raw = sum_k w_k A_k, signed (B, K, h, w); ``Explanation.maps`` applies ReLU, upsampling and min-max.

Pixel methods (``explains_pixels = True``) go through the same call (input checks, grad mode, the model's
lock and state snapshot, the training warning, the Explanation) and override only :meth:`CAMMethod.pixels`,
which returns the input-space attributions (B, K, C, H, W) as an :class:`Attribution`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from camlens._inputs import bound, sample_rows, split_inputs
from camlens._state import _ModelState, preserved
from camlens.capture import LayerRef, Layout, Reshape, capture, check_calls, count_calls, find_layer, resolve_layer
from camlens.explanation import Explanation
from camlens.targets import Targets, resolve_targets

__all__ = ["Attribution", "CAMMethod", "Context"]


@dataclass
class Context:
    """What a method's ``weights`` may read."""

    model: nn.Module
    layer: LayerRef
    inputs: torch.Tensor
    activation: torch.Tensor  # A (B, C, h, w), detached (a transformer's tokens already read as a grid)
    output: Any  # model output, detached
    scores: torch.Tensor  # (B, K), detached
    ids: torch.Tensor | None  # (B, K) class ids, or None for a callable target
    targets: Targets  # as the user gave them (callables are re-applied to perturbed outputs)
    gradients: torch.Tensor | None  # dS/dA (B, K, C, h, w) when the method needs them
    layout: Layout = field(default_factory=Layout)  # how the layer's output became the grid


@dataclass
class Attribution:
    """What a pixel method's ``pixels`` returns: input-space attributions and the scores they explain."""

    pixels: torch.Tensor  # (B, K, C, H, W), signed
    scores: torch.Tensor  # (B, K), detached
    ids: torch.Tensor | None  # (B, K) class ids, or None for a callable target
    output: Any  # model output
    layer: str = "input"  # the layer that also shaped them (guided Grad-CAM's Grad-CAM layer)
    # (B, K, H, W) the displayable view; None: max_c |pixels|. Methods whose map is one signed value per
    # pixel (LIME, occlusion, RISE) give it signed, so evidence against a class is not read as for it
    raw: torch.Tensor | None = None


def _check_inputs(model: nn.Module, inputs: Any) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"inputs must be a tensor of shape (B, C, H, W), or a tuple / dict of the model's inputs whose image "
            f"batch image= names, got {type(inputs).__name__}; preprocess images into a tensor first"
        )
    if inputs.dim() == 3:
        inputs = inputs[None]
    if inputs.dim() != 4:
        raise ValueError(f"inputs must have shape (B, C, H, W) or (C, H, W), got {tuple(inputs.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs is an empty batch")
    param = next(model.parameters(), None)
    if param is not None and param.device != inputs.device:
        raise ValueError(
            f"inputs are on {inputs.device} but the model is on {param.device}; "
            f"move them with inputs.to({str(param.device)!r})"
        )
    return inputs


def _check_rows(activation: torch.Tensor | None, x: torch.Tensor, ref: LayerRef) -> None:
    """One map per image: a layer with another number of rows (a detector's per-region features) is refused."""
    if activation is not None and activation.shape[0] != x.shape[0]:
        raise ValueError(
            f"layer {ref} returns {activation.shape[0]} rows for a batch of {x.shape[0]} images (features per "
            "region or per crop?); pick a layer with one map per image, e.g. the backbone's"
        )


def _check_grad_mode(needs_gradients: bool, name: str) -> None:
    if needs_gradients and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{name} needs gradients, which torch.inference_mode() forbids; call it outside inference mode "
            "(camlens itself runs the part of the forward before the layer without autograd)"
        )


def _warn_training(state: _ModelState) -> None:
    if state.any_training:
        warnings.warn(
            "the model is in training mode: dropout and batch-norm statistics make maps random and "
            "batch-dependent; call model.eval() first (camlens restores the running statistics it touches)",
            stacklevel=3,
        )


_NONFINITE = "the target scores of sample"


@contextmanager
def _nonfinite_named_by_caller() -> Iterator[None]:
    """Silence :func:`_warn_nonfinite` for callers that warn themselves, naming the image file (CLI, evaluate)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _NONFINITE, RuntimeWarning)
        yield


def _warn_nonfinite(scores: torch.Tensor) -> None:
    """A warning naming the samples whose target scores are NaN or inf (a (B, K) check: free)."""
    bad = (~torch.isfinite(scores.detach())).flatten(1).any(1)
    if bool(bad.any()):
        which = bad.nonzero().flatten().tolist()
        warnings.warn(
            f"{_NONFINITE}(s) {which} are NaN or infinite (NaN/inf in the inputs or the model?); "
            "their maps are not meaningful",
            RuntimeWarning,
            stacklevel=3,
        )


def _batched_gradients(scores: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """dS[:, k]/dA for every k, in one batched backward: (B, K, C, h, w).

    Each sample's scores depend only on its own activation (eval mode), so the gradient of the
    batch sum of S[:, k] is, per sample, the gradient of that sample's score.
    """
    k = scores.shape[1]
    if not scores.requires_grad:
        raise ValueError("the target scores do not depend on the explained layer; pick a layer the output depends on")
    if k == 1:
        (grad,) = torch.autograd.grad(scores.sum(), activation)
        return grad[:, None]
    eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
    grad_outputs = eye[:, None, :].expand(k, scores.shape[0], k)
    try:
        (grad,) = torch.autograd.grad(scores, activation, grad_outputs=grad_outputs, is_grads_batched=True)
    except (RuntimeError, NotImplementedError):
        # an op of the model's tail without a vmap rule: one backward per target instead
        grads = [torch.autograd.grad(scores[:, i].sum(), activation, retain_graph=i < k - 1)[0] for i in range(k)]
        return torch.stack(grads, 1)
    return grad.transpose(0, 1)


class CAMMethod:
    """A class activation map method: call it on ``(inputs, targets)`` to get an :class:`Explanation`.

    Args:
        model: any ``nn.Module`` returning (B, classes) scores, or anything a callable target reads.
        layer: a module name (``"layer4"``, ``"_swish@1"`` for the 2nd call of a shared module), the
            module itself, or ``None`` for the last spatial layer (the one feeding global pooling; a
            vision transformer's last block's first norm).
        reshape: a callable (layer output) -> (B, C, h, w) that only rearranges elements, for layouts
            the model does not state (a ViT without ``patch_size``); ``None``: (B, C, h, w) maps,
            channels-last maps and token sequences are read from the model (see :mod:`camlens.capture`).

    Subclasses set the class attributes and override :meth:`weights` (or :meth:`raw_maps`); pixel
    methods set ``explains_pixels`` and override :meth:`pixels` instead.

    The contract every method keeps (``tests/test_contract.py``): maps of shape (B, K, ...) with finite
    values, no hook left on the model and its train flags, ``requires_grad`` and ``.grad`` unchanged after
    the call, also after an exception; a batch of 2 gives what two batches of 1 give.

    Examples:
        >>> class ChannelMean(camlens.CAMMethod):  # w_k = 1 / C for every target: map = mean_k A_k
        ...     def weights(self, ctx):  # -> (B, K, C); ctx.activation is A (B, C, h, w), ctx.scores S (B, K)
        ...         channels = ctx.activation.shape[1]
        ...         return ctx.activation.new_ones(*ctx.scores.shape, channels) / channels
        >>> ChannelMean(model, layer="layer4")(x, targets=3).raw.shape
        torch.Size([1, 1, 2, 2])
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    needs_class_ids: ClassVar[bool] = False
    takes_layer: ClassVar[bool] = True  # False for pixel methods, which explain the input
    explains_pixels: ClassVar[bool] = False  # True: pixels() gives (B, K, C, H, W) input attributions

    def __init__(
        self, model: nn.Module, layer: str | nn.Module | LayerRef | None = None, *, reshape: Reshape | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule) and self.takes_layer:
            raise ValueError(
                f"{self.name} reads a layer, and TorchScript models allow no hooks on their layers; use "
                "method='saliency' (input gradients), or load the model as an nn.Module "
                "(torch.save(model) / package.module:factory)"
            )
        if layer is not None and not self.takes_layer:
            raise ValueError(f"{self.name} explains the input pixels and takes no layer; got layer={layer!r}")
        if reshape is not None and not callable(reshape):
            raise TypeError(f"reshape must be a callable (layer output) -> (B, C, h, w), got {type(reshape).__name__}")
        self.model = model
        self.reshape = reshape
        self._layer_spec = layer
        self._layer: LayerRef | None = None if layer is None else resolve_layer(model, layer)

    def layer_for(self, inputs: torch.Tensor) -> LayerRef:
        """The layer this method explains, resolved (and cached) on the first call."""
        if self._layer is None:
            self._layer = find_layer(self.model, inputs)
        elif self._layer.call is not None and self._layer.call < 0:
            with sample_rows(torch.zeros(1, dtype=torch.long)):
                calls = count_calls(self.model, inputs[:1], self._layer.module)
            if -self._layer.call > calls:
                raise ValueError(f"layer {self._layer} asks for call {self._layer.call} but it runs {calls} times")
            self._layer = LayerRef(self._layer.name, self._layer.module, calls + self._layer.call)
        return self._layer

    def __call__(self, inputs: Any, targets: Targets = None, *, image: int | str | None = None) -> Explanation:
        """Explain ``targets`` for each sample of ``inputs``. See :mod:`camlens.targets`.

        ``inputs`` is the image batch (B, C, H, W), or a tuple (positional) / dict (keyword) of the model's
        inputs whose image batch ``image`` names (an index or key; default the first): the other inputs
        pass to the model unchanged, row by row with the images (:mod:`camlens._inputs`), never
        differentiated. The batch size is the image batch's.
        """
        image_batch, others = split_inputs(inputs, image)
        x = _check_inputs(self.model, image_batch)
        _check_grad_mode(self.needs_gradients, self.name)
        if self.needs_class_ids and callable(targets) and not isinstance(targets, torch.Tensor):
            raise ValueError(f"{self.name} needs class ids as targets; for a callable target use method='gradcam'")
        # one call on a model at a time: hooks on a shared model see every thread's forwards
        with preserved(self.model) as state, bound(self.model, others):
            _warn_training(state)
            if self.explains_pixels:
                found = self.pixels(x, targets)
                pixels = found.pixels.detach()
                raw = pixels.abs().amax(2) if found.raw is None else found.raw.detach().clone()
                scores, ids, output, layer = found.scores, found.ids, found.output, found.layer
            else:
                ref = self.layer_for(x)
                ctx = self._forward(x, ref, targets)
                pixels, raw = None, self.raw_maps(ctx).detach().clone()
                scores, ids, output, layer = ctx.scores, ctx.ids, ctx.output, str(ref)
        _warn_nonfinite(scores)
        return Explanation(
            raw=raw,
            targets=None if ids is None else ids.clone(),
            scores=scores.detach().clone(),
            output=_detach(output),
            method=self.name,
            layer=layer,
            input_size=(int(x.shape[-2]), int(x.shape[-1])),
            pixels=pixels,
        )

    def _forward(self, x: torch.Tensor, ref: LayerRef, targets: Targets) -> Context:
        size = x.shape[-2:]
        if not self.needs_gradients:
            with torch.inference_mode(), capture(self.model, ref, grad=False, size=size, reshape=self.reshape) as cap:
                output = self.model(x)
                check_calls(cap)
                _check_rows(cap.activation, x, ref)
                scores, ids = resolve_targets(targets, output, batch=x.shape[0])
            assert cap.activation is not None  # check_calls guarantees the layer ran
            return Context(self.model, ref, x, cap.activation, output, scores, ids, targets, None, cap.layout)
        with capture(self.model, ref, grad=True, size=size, reshape=self.reshape) as cap:
            torch.set_grad_enabled(False)  # the hook turns autograd on at the layer
            output = self.model(x)
            check_calls(cap)
            _check_rows(cap.activation, x, ref)
            torch.set_grad_enabled(True)
            scores, ids = resolve_targets(targets, output, batch=x.shape[0])
            assert cap.activation is not None and cap.leaf is not None
            # w.r.t. the leaf in the layer's own layout, then the grid's rearrangement: exact dS/dA
            grads = cap.layout.grads_to_grid(_batched_gradients(scores, cap.leaf))
        return Context(
            self.model,
            ref,
            x,
            cap.activation.detach(),
            _detach(output),
            scores.detach(),
            ids,
            targets,
            grads,
            cap.layout,
        )

    def weights(self, ctx: Context) -> torch.Tensor:
        """Per-channel (B, K, C) or per-pixel (B, K, C, h, w) weights of the activation."""
        raise NotImplementedError

    def pixels(self, x: torch.Tensor, targets: Targets) -> Attribution:
        """Input-space attributions (B, K, C, H, W) of a pixel method, for the checked batch ``x``."""
        raise NotImplementedError

    def raw_maps(self, ctx: Context) -> torch.Tensor:
        """Signed maps (B, K, h, w) = sum_k w_k * A_k (before the final ReLU)."""
        w = self.weights(ctx)
        a = ctx.activation
        if w.dim() == 3:
            return torch.einsum("bkc,bchw->bkhw", w, a)
        return (w * a[:, None]).sum(2)

    def __repr__(self) -> str:
        layer = self._layer if self._layer is not None else "auto"
        return f"{type(self).__name__}(layer={str(layer)!r})"


def _detach(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach().clone()
    if isinstance(output, dict):
        return {k: _detach(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_detach(v) for v in output)
    return output
