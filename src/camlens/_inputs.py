"""Models with several inputs: the image batch camlens explains, and the other inputs passed along unchanged.

A list of (C, H, W) tensors of one size (torchvision detectors' input) is one image batch, stacked; a tuple
or a dict is several inputs.

``camlens.explain(model, (image, question))`` or ``camlens.explain(model, {"pixels": x, "ids": q},
image="pixels")``: one element is the image batch (B, C, H, W), named by ``image=`` (an index of the tuple
or a key of the dict; default the first). Every method keeps calling ``model(x)`` on rows of images
(the batch itself, one sample for a layer probe, perturbed copies in chunks); for the duration of one call
:func:`bound` registers a forward pre-hook on the model that puts ``x`` back into its slot and adds the
other inputs, so no method needs to know about them. Other inputs are never differentiated.

Rows and samples. A forward of n rows needs each row's other inputs. The sample each row belongs to is
one concept, :func:`sample_rows`: the chunked forwards say it (``_perturb.perturbed_scores`` sets its
``owners`` around each chunk's forward and scoring, Integrated Gradients and SmoothGrad around each
chunk of path points, layer probes run sample 0); without it a forward of B rows is the batch itself.
A per-sample other input (a tensor, list or tuple whose length is B) is indexed by those rows; anything
else (a scalar, a tensor of another length) passes as it is. Target callables read the same rows with
:func:`row_owners` when they hold per-sample data (a detection's box, a segmentation mask).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ModelInputs", "bound", "row_owners", "sample_rows", "split_inputs"]

_ROWS: ContextVar[torch.Tensor | None] = ContextVar("camlens_sample_rows", default=None)


@contextmanager
def sample_rows(owners: torch.Tensor) -> Iterator[None]:
    """Within the block, a forward (and its scoring) of ``len(owners)`` rows: row i is a copy of ``owners[i]``."""
    token = _ROWS.set(owners)
    try:
        yield
    finally:
        _ROWS.reset(token)


def row_owners(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The sample each of ``n`` output rows belongs to: the enclosing :func:`sample_rows`, else 0 .. n - 1."""
    owners = _ROWS.get()
    if owners is not None and int(owners.shape[0]) == n:
        return owners.to(device)
    return torch.arange(n, device=device)


@dataclass
class ModelInputs:
    """The inputs of one call: ``args`` or ``kwargs`` as the model takes them, ``slot`` the image's place."""

    image: torch.Tensor
    slot: int | str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.image.shape[0]) if self.image.dim() == 4 else 1

    def call_with(self, x: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The model's (args, kwargs) for image rows ``x``: the other inputs of the samples they belong to."""
        n = int(x.shape[0])
        owners = _ROWS.get()
        if owners is not None and int(owners.shape[0]) == n:
            index: torch.Tensor | None = owners
        elif n == self.batch:
            index = None
        else:
            raise ValueError(
                f"the model ran on {n} image rows for a batch of {self.batch} without saying which sample each "
                "row belongs to, so the other inputs cannot follow; this method does not support several inputs"
            )
        if isinstance(self.slot, str):
            kwargs = {k: _rows_of(v, index, self.batch) for k, v in self.kwargs.items()}
            kwargs[self.slot] = x
            return (), kwargs
        args = [_rows_of(v, index, self.batch) for v in self.args]
        args[self.slot] = x
        return tuple(args), {}


def _rows_of(value: Any, index: torch.Tensor | None, batch: int) -> Any:
    if index is None:
        return value
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[index.to(value.device)]
    if isinstance(value, (list, tuple)) and len(value) == batch:
        return type(value)(value[int(i)] for i in index)
    return value


def split_inputs(inputs: Any, image: int | str | None = None) -> tuple[Any, ModelInputs | None]:
    """The image batch of ``inputs`` and, for a tuple / list / dict, the :class:`ModelInputs` to bind.

    Raises:
        ValueError: ``image`` names no element, or ``image`` is given for a single tensor.
        TypeError: the named element is not a tensor.
    """
    if isinstance(inputs, list) and inputs and all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in inputs):
        # torchvision detectors' input: a list of (C, H, W) images is one image batch, not several inputs
        shapes = sorted({tuple(t.shape) for t in inputs})
        if len(shapes) > 1:
            raise ValueError(
                f"a list of images is one batch, and its images differ in size ({', '.join(map(str, shapes[:3]))}); "
                "resize them to one size first (a detector resizes them inside anyway)"
            )
        if image not in (None, 0):
            raise ValueError(
                f"image={image!r}: a list of (C, H, W) images is one image batch; use a tuple for several inputs"
            )
        return torch.stack(inputs), None
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (tuple, list, Mapping)):
        if image not in (None, 0):
            raise ValueError(f"image={image!r} names an element of several inputs, but inputs is a single tensor")
        return inputs, None
    if isinstance(inputs, Mapping):
        keys = list(inputs)
        if not keys:
            raise ValueError("inputs is an empty dict; give the image batch and the model's other keyword inputs")
        slot: int | str = keys[0] if image is None else image
        if not isinstance(slot, str) or slot not in inputs:
            raise ValueError(f"image={image!r} is not a key of the inputs; keys: {', '.join(map(repr, keys))}")
        found = inputs[slot]
        bound_inputs = ModelInputs(found, slot, kwargs=dict(inputs))
    else:
        if not inputs:
            raise ValueError("inputs is an empty tuple; give the image batch and the model's other inputs")
        slot = 0 if image is None else image
        if isinstance(slot, bool) or not isinstance(slot, int) or not -len(inputs) <= slot < len(inputs):
            raise ValueError(f"image={image!r} is not an index of the {len(inputs)} inputs")
        slot %= len(inputs)
        found = inputs[slot]
        bound_inputs = ModelInputs(found, slot, args=tuple(inputs))
    if not isinstance(found, torch.Tensor):
        raise TypeError(
            f"the image input (inputs[{slot!r}]) must be a tensor of shape (B, C, H, W), got {type(found).__name__}; "
            "name the image batch with image="
        )
    return found, bound_inputs


@contextmanager
def bound(model: nn.Module, inputs: ModelInputs | None) -> Iterator[None]:
    """Within the block, ``model(x)`` runs ``model(*args)`` / ``model(**kwargs)`` with ``x`` in the image's slot.

    A forward pre-hook on the model, removed on exit (also after an exception). Calls with anything but
    one positional tensor are left alone.
    """
    if inputs is None:
        yield
        return
    image = inputs.image if inputs.image.dim() == 4 else inputs.image[None]
    inputs.image = image

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            return None
        return inputs.call_with(args[0])

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
