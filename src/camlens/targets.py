"""Targets: which scalar of the model's output an explanation explains.

Every form a user can write is turned, in one place, into scores ``S`` of shape (B, K): K targets per
sample, each a differentiable scalar of that sample's output.

* ``None``: the top-1 predicted class of each sample.
* ``int``: that class for every sample.
* a flat list / 1-D tensor of B ints: one class per sample.
* a list of lists / 2-D tensor (B, K): K classes per sample.
* ``"topK"`` (e.g. ``"top5"``): the K highest-scoring classes of each sample, best first.
* a callable ``output -> (B,)`` or ``(B, K)``: any differentiable objective (a regression output, the
  summed logit of a segmentation region, a caption score). Class ids are then unknown (``None``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch

__all__ = ["Targets", "resolve_targets"]

Targets = Union[None, int, str, Sequence[int], Sequence[Sequence[int]], torch.Tensor, Callable[[Any], torch.Tensor]]

_TOPK = re.compile(r"top(\d+)$")


def _class_output(output: Any) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"class-id targets need a model output of shape (batch, classes), got {shape}; "
            "pass targets=callable(output) -> (batch,) scores for other outputs"
        )
    return output


def _ids_from_spec(targets: Targets, output: torch.Tensor) -> torch.Tensor:
    batch, classes = output.shape
    device = output.device
    if targets is None:
        return output.argmax(dim=1, keepdim=True)
    if isinstance(targets, str):
        match = _TOPK.match(targets.strip().lower())
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"targets={targets!r} is not understood; use 'topK' with K >= 1, e.g. 'top5'")
        k = int(match.group(1))
        if k > classes:
            raise ValueError(f"targets={targets!r} asks for {k} classes but the model has only {classes}")
        return output.topk(k, dim=1).indices
    if isinstance(targets, (bool, np.bool_)):
        raise TypeError("targets must be a class id, not a bool")
    if isinstance(targets, np.integer) or (isinstance(targets, torch.Tensor) and targets.dim() == 0):
        if isinstance(targets, torch.Tensor) and (targets.is_floating_point() or targets.dtype == torch.bool):
            raise TypeError(f"class-id targets must be integers, got dtype {targets.dtype}")
        targets = int(targets)
    if isinstance(targets, (float, np.floating)):
        raise TypeError(f"class-id targets must be integers, got the float {targets!r}")
    if isinstance(targets, int):
        ids = torch.full((batch, 1), targets, dtype=torch.long, device=device)
    else:
        if isinstance(targets, torch.Tensor):
            ids = targets.to(device=device)
        else:
            if not isinstance(targets, (Sequence, np.ndarray)) or isinstance(targets, (bytes, bytearray)):
                raise TypeError(
                    f"targets of type {type(targets).__name__} are not supported: give None, an int, a list of "
                    "class ids (one per sample or (batch, K)), a tensor, 'topK' or a callable(output) -> scores"
                )
            try:
                ids = torch.as_tensor(targets, device=device)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(
                    f"targets={targets!r} is not a list of class ids, nor a (batch, K) list of lists of equal length"
                ) from err
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"class-id targets must be integers, got dtype {ids.dtype}")
        ids = ids.long()
        if ids.dim() == 1:
            if ids.numel() != batch:
                raise ValueError(
                    f"targets has {ids.numel()} class ids for a batch of {batch}: give one id per sample, "
                    f"an int for all, or a list of lists ([[3, 5]]) for several classes per sample"
                )
            ids = ids[:, None]
        elif ids.dim() == 2:
            if ids.shape[0] != batch or ids.shape[1] < 1:
                raise ValueError(
                    f"targets has shape {tuple(ids.shape)} for a batch of {batch}; expected ({batch}, K) with K >= 1"
                )
        else:
            raise ValueError(f"targets must be 1-D or 2-D, got shape {tuple(ids.shape)}")
    bad = (ids < 0) | (ids >= classes)
    if bool(bad.any()):
        raise ValueError(f"class id {int(ids[bad][0])} is out of range: the model has classes 0..{classes - 1}")
    return ids


def resolve_targets(targets: Targets, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn ``targets`` into scores (B, K) and class ids (B, K), or ``None`` ids for a callable.

    Args:
        targets: any form listed in the module docstring.
        output: the model's output for the batch (with autograd history when gradients are needed).

    Returns:
        ``(scores, ids)``: scores (B, K) are differentiable functions of ``output``.

    Raises:
        ValueError: targets that do not fit the batch or the number of classes.
        TypeError: targets of an unsupported type.
    """
    if callable(targets) and not isinstance(targets, torch.Tensor):
        scores = targets(output)
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"a target callable must return a tensor, got {type(scores).__name__}")
        batch = _batch_size(output)
        if scores.dim() not in (1, 2) or scores.shape[0] != batch or (scores.dim() == 2 and scores.shape[1] < 1):
            raise ValueError(
                f"a target callable must return shape ({batch},) or ({batch}, K) for a batch of {batch}, "
                f"got {tuple(scores.shape)}"
            )
        return (scores[:, None] if scores.dim() == 1 else scores), None
    logits = _class_output(output)
    ids = _ids_from_spec(targets, logits)
    return logits.gather(1, ids), ids


def _batch_size(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return int(output.shape[0])
    if isinstance(output, dict):
        return _batch_size(next(iter(output.values())))
    if isinstance(output, (list, tuple)) and output:
        return _batch_size(output[0])
    raise TypeError(f"cannot tell the batch size of a model output of type {type(output).__name__}")
