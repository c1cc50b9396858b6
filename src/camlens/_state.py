"""Snapshot and restore of everything camlens could disturb on a user's model.

A method must hand the model back exactly as it received it, including after an exception. The
pipeline never changes these on purpose; the snapshot is the guarantee that a bug or an exception in
user code (a callable target, a custom module) cannot leave a trace either.

Threads: calls on one model are serialised; on different models they run in parallel. Hooks are
registered on the user's model, so two concurrent calls on it would see each other's forwards (a layer
seeming to run twice, a capture of the other thread's activation). Every camlens entry point that
registers hooks or runs forwards on a user's model holds :func:`model_lock` for that model, and
:func:`preserved` takes it before the snapshot and releases it after the restore. The lock is an
``RLock`` per model, so a callable target or a metric that calls camlens on the same model from inside
a call (same thread) goes through instead of deadlocking. Locks live in a ``WeakKeyDictionary`` keyed
by the model (the model's lifetime stays the user's); only the creation of a model's lock takes a
module-wide lock, so an uncontended call pays about one ``RLock`` acquire.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__: list[str] = []

# Module-level state, as the layer-choice cache in capture.py: one re-entrant lock per live model.
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """``model``'s re-entrant lock, to hold in a ``with`` block: one camlens call on a model at a time.

    Calls on other models are not blocked, nor is a nested call on the same model in the same thread.
    The lock itself is returned (no wrapper): an uncontended ``with`` costs about 0.3 microseconds.
    """
    lock = _LOCKS.get(model)
    if lock is None:
        with _LOCKS_GUARD:  # two threads asking for a new model's lock must get the same one
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
    return lock


@dataclass
class _ModelState:
    training: list[tuple[nn.Module, bool]]
    params: list[tuple[torch.Tensor, bool, torch.Tensor | None]]
    inplace: list[tuple[nn.Module, bool]]
    buffers: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def capture(cls, model: nn.Module) -> _ModelState:
        """Snapshot ``model``. Buffers (batch-norm running statistics) are copied only for modules in
        training mode, the only ones whose forward updates them, so eval-mode calls pay nothing."""
        modules = list(model.modules())
        return cls(
            training=[(m, m.training) for m in modules],
            params=[(p, p.requires_grad, p.grad) for p in model.parameters()],
            inplace=[(m, bool(m.inplace)) for m in modules if isinstance(getattr(m, "inplace", None), bool)],
            buffers=[(b, b.detach().clone()) for m in modules if m.training for b in m.buffers(recurse=False)],
        )

    @property
    def any_training(self) -> bool:
        return any(training for _, training in self.training)

    def restore(self) -> None:
        for module, training in self.training:
            if module.training != training:
                module.training = training
        for param, requires_grad, grad in self.params:
            if param.requires_grad != requires_grad:
                param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad
        for module, inplace in self.inplace:
            if module.inplace != inplace:  # (TorchScript modules refuse writes to their constants)
                module.inplace = inplace  # type: ignore[assignment]
        with torch.no_grad():
            for buffer, saved in self.buffers:
                if not torch.equal(buffer, saved):
                    buffer.copy_(saved)


@contextmanager
def preserved(model: nn.Module) -> Iterator[_ModelState]:
    """Run a block on ``model`` under its :func:`model_lock` and hand it back as it was (flags, grads,
    training-mode buffers)."""
    with model_lock(model):
        state = _ModelState.capture(model)
        try:
            yield state
        finally:
            state.restore()
