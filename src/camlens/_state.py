"""Snapshot and restore of everything camlens could disturb on a user's model.

A method must hand the model back exactly as it received it, including after an exception. The
pipeline never changes these on purpose; the snapshot is the guarantee that a bug or an exception in
user code (a callable target, a custom module) cannot leave a trace either.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__: list[str] = []


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
    """Run a block on ``model`` and hand it back as it was (flags, grads, training-mode buffers)."""
    state = _ModelState.capture(model)
    try:
        yield state
    finally:
        state.restore()
