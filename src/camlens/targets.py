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

Perturbation methods and faithfulness metrics score many perturbed copies of each sample; the one
:class:`RowScorer` turns resolved targets (class ids or the callable) and the model's output for a batch
of copies into the score of each copy, given the sample each copy was made from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch

from camlens._inputs import sample_rows

__all__ = ["RowScorer", "Targets", "class_ids", "resolve_targets"]

Targets = Union[None, int, str, Sequence[int], Sequence[Sequence[int]], torch.Tensor, Callable[[Any], torch.Tensor]]

_TOPK = re.compile(r"top(\d+)$")
_SCORE_KINDS = ("logit", "probability")


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
    return class_ids(targets, batch, classes, output.device)


def class_ids(
    targets: Any,
    batch: int,
    classes: int | None = None,
    device: torch.device | str | None = None,
    *,
    k: int | None = None,
) -> torch.Tensor:
    """Validated (B, K) class ids from an int, ids per sample (list, array, 1-D tensor) or (B, K) ids.

    The one validator of explicit class ids; ``None``, ``"topK"`` and callables need the model's output
    (:func:`resolve_targets`). ``classes=None`` checks only that ids are >= 0 (:class:`RowScorer` checks
    the upper bound against the output it scores); ``k=1`` asks for exactly one id per sample.

    Raises:
        ValueError: ids that do not fit the batch, ``k`` or the number of classes.
        TypeError: targets that are not integers.
    """
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
            if not isinstance(targets, (Sequence, np.ndarray)) or isinstance(targets, (str, bytes, bytearray)):
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
                more = (
                    " or an int for all"
                    if k == 1
                    else (", an int for all, or a list of lists ([[3, 5]]) for several classes per image")
                )
                raise ValueError(
                    f"targets has {ids.numel()} class ids for a batch of {batch}: give one id per image{more}"
                )
            ids = ids[:, None]
        elif ids.dim() == 2:
            if ids.shape[0] != batch or ids.shape[1] < 1:
                raise ValueError(
                    f"targets has shape {tuple(ids.shape)} for a batch of {batch}; expected ({batch}, K) with K >= 1"
                )
        else:
            raise ValueError(f"targets must be 1-D or 2-D, got shape {tuple(ids.shape)}")
    if k is not None and ids.shape[1] != k:
        raise ValueError(f"targets has shape {tuple(ids.shape)}; give {k} class id(s) per image, shape ({batch},)")
    _check_range(ids, classes)
    return ids


def _check_range(ids: torch.Tensor, classes: int | None) -> None:
    bad = (ids < 0) if classes is None else (ids < 0) | (ids >= classes)
    if bool(bad.any()):
        have = "class ids start at 0" if classes is None else f"the model has classes 0..{classes - 1}"
        raise ValueError(f"class id {int(ids[bad][0])} is out of range: {have}")


def _callable_scores(fn: Callable[[Any], Any], output: Any, batch: int, k: int | None = None) -> torch.Tensor:
    """(batch, K) scores of a target callable on ``output``, checked: (batch,) or (batch, K), K = ``k`` if given."""
    scores = fn(output)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"a target callable must return a tensor, got {type(scores).__name__}")
    if scores.dim() == 1:
        ok = scores.shape[0] == batch and k in (None, 1)
    else:
        ok = scores.dim() == 2 and scores.shape[0] == batch and scores.shape[1] == (k or max(1, scores.shape[1]))
    if not ok:
        want = (
            f"({batch},) or ({batch}, K)"
            if k is None
            else f"({batch},) or ({batch}, 1)"
            if k == 1
            else f"({batch}, {k})"
        )
        raise ValueError(
            f"a target callable must return shape {want} for a batch of {batch}, got {tuple(scores.shape)}"
        )
    return scores[:, None] if scores.dim() == 1 else scores


def _check_score_kind(kind: str) -> str:
    if kind not in _SCORE_KINDS:
        raise ValueError(f"score must be 'probability' or 'logit', got {kind!r}")
    return kind


def resolve_targets(
    targets: Targets, output: Any, batch: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn ``targets`` into scores (B, K) and class ids (B, K), or ``None`` ids for a callable.

    Args:
        targets: any form listed in the module docstring.
        output: the model's output for the batch (with autograd history when gradients are needed).
        batch: the number of samples (the image batch's size); ``None``: read from the output (a tensor's
            first dimension, a list of per-image dicts' length, else its first element's).

    Returns:
        ``(scores, ids)``: scores (B, K) are differentiable functions of ``output``.

    Raises:
        ValueError: targets that do not fit the batch or the number of classes.
        TypeError: targets of an unsupported type.
    """
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return _callable_scores(targets, output, _batch_size(output) if batch is None else int(batch)), None
    logits = _class_output(output)
    if isinstance(targets, torch.Tensor) and targets.is_inference() and not torch.is_inference_mode_enabled():
        targets = targets.clone()  # ids made under inference mode cannot take part in a backward; a copy can
    ids = _ids_from_spec(targets, logits)
    return logits.gather(1, ids), ids


def _batch_size(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return int(output.shape[0])
    if isinstance(output, dict):
        return _batch_size(next(iter(output.values())))
    if isinstance(output, (list, tuple)) and output:
        # a detector's list of per-image dicts: one element per sample
        return len(output) if isinstance(output[0], dict) else _batch_size(output[0])
    raise TypeError(f"cannot tell the batch size of a model output of type {type(output).__name__}")


class RowScorer:
    """The target score of every row of a batch of perturbed copies, each row a copy of one sample.

    ``scorer(output, owners)``: ``output`` is the model's output for n perturbed rows and ``owners`` (n,)
    the index of the sample each row was made from. Returns (n, K):

    * class ids (B, K): ``ids[owners]`` gathered from the logits (``kind="logit"``) or from their softmax
      (``kind="probability"``), computed in at least float32 (half-precision models) and never below the
      model's precision, so a float64 model gives float64 scores;
    * a callable: its value on ``output`` as it is; it must score row by row, returning (n,) or (n, K).

    Used by Score-CAM (probabilities), Ablation-CAM (logits) and every faithfulness metric, through
    :func:`camlens._perturb.perturbed_scores`.

    Args:
        targets: (B, K) class ids (from :func:`resolve_targets` or :func:`class_ids`) or a callable.
        kind: ``"logit"`` or ``"probability"``, for class ids.
        k: for a callable, the number of scores per row it must return (``None``: any).

    Examples:
        >>> scorer = RowScorer(torch.tensor([[2], [0]]), "probability")
        >>> scorer(model(copies), owners=torch.tensor([0, 0, 1]))  # (3, 1): class 2, 2, 0
    """

    def __init__(self, targets: torch.Tensor | Callable[[Any], Any], kind: str = "logit", k: int | None = None) -> None:
        self.kind = _check_score_kind(kind)
        self.fn: Callable[[Any], Any] | None = None
        self.ids: torch.Tensor | None = None
        self.k: int | None = None
        if isinstance(targets, torch.Tensor):
            if targets.dim() != 2 or targets.is_floating_point():
                raise ValueError(
                    f"RowScorer needs (B, K) integer class ids, got {targets.dtype} {tuple(targets.shape)}"
                )
            self.ids, self.k = targets, int(targets.shape[1])
        elif callable(targets):
            self.fn, self.k = targets, k
        else:
            raise TypeError(f"RowScorer needs class ids or a callable, got {type(targets).__name__}")
        self._classes: int | None = None  # the number of classes the ids were checked against

    def __call__(self, output: Any, owners: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            with sample_rows(owners):  # a callable holding per-sample data reads each row's sample
                return _callable_scores(self.fn, output, int(owners.shape[0]), self.k)
        assert self.ids is not None
        logits = _class_output(output)
        if logits.shape[1] != self._classes:
            _check_range(self.ids, logits.shape[1])
            self._classes = int(logits.shape[1])
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        if self.kind == "probability":
            logits = logits.softmax(1)
        ids = self.ids[owners.to(self.ids.device)]
        return logits.gather(1, ids.to(logits.device))
