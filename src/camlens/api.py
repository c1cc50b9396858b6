"""The one-call entry point."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from camlens.capture import LayerRef
from camlens.explanation import Explanation
from camlens.methods.base import CAMMethod
from camlens.registry import get_method
from camlens.targets import Targets

__all__ = ["explain"]


def explain(
    model: nn.Module,
    inputs: torch.Tensor | tuple[Any, ...] | list[Any] | dict[str, Any],
    method: str = "gradcam",
    layer: str | nn.Module | LayerRef | None = None,
    targets: Targets = None,
    *,
    image: int | str | None = None,
    **options: Any,
) -> Explanation:
    """Explain ``targets`` of ``model`` on ``inputs`` with a registered method.

    Several inputs: ``camlens.explain(vqa, (images, questions), targets=lambda out: out[:, 0])``.

    Args:
        model: a CNN (any ``nn.Module`` with a 4-D intermediate output).
        inputs: (B, C, H, W) preprocessed batch, on the model's device; or, for a model with several
            inputs, a tuple (positional) or dict (keyword) of them whose image batch ``image`` names.
        method: a name from :func:`camlens.methods`.
        layer: module name, module, or ``None`` for the last spatial layer.
        targets: ``None`` (top-1), an int, one int per sample, (B, K) ids, ``"topK"`` or a callable
            ``output -> (B,)`` or ``(B, K)`` on whatever the model returns (ready-made: :mod:`camlens.tasks`).
        image: the index (tuple) or key (dict) of the image batch among several inputs; default the first.
            The other inputs pass to the model unchanged and are never differentiated.
        **options: method options (``counterfactual=True``, ``score="logit"``, ``batch_size=...``).

    Examples:
        >>> exp = camlens.explain(model, x, method="gradcam++", targets="top3")
        >>> exp.maps.shape  # (B, 3, H, W)
        torch.Size([1, 3, 64, 64])
    """
    cls = get_method(method)
    check_options(cls, options)
    return cls(model, layer, **options)(inputs, targets, image=image)


def check_options(cls: type[CAMMethod], options: dict[str, Any]) -> list[str]:
    """The option names ``cls`` accepts; a TypeError naming them when ``options`` has another."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model", "layer")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"method {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
    return accepted
