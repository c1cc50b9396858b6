"""camlens' built-in model architectures; :func:`camlens.zoo.load_model` loads them with their weights by name.

``BUILTIN_ARCHITECTURES`` maps each built-in name to a callable that builds its architecture without
weights (an ``nn.Module`` in train mode, as ``nn.Module`` constructors return); ``BUILTIN`` is the tuple
of those names, ``BUILTIN_SIZES`` each one's input size.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

from camlens.models.efficientnet_lite import (
    VARIANTS,
    EfficientNetLite,
    EfficientNetLite0,
    efficientnet_lite,
    efficientnet_lite0,
)

__all__ = [
    "BUILTIN",
    "BUILTIN_ARCHITECTURES",
    "BUILTIN_SIZES",
    "EfficientNetLite",
    "EfficientNetLite0",
    "efficientnet_lite",
    "efficientnet_lite0",
]

BUILTIN_ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "efficientnet_lite0": EfficientNetLite0,
    **{name: partial(EfficientNetLite, name) for name in VARIANTS if name != "efficientnet_lite0"},
}
BUILTIN = tuple(BUILTIN_ARCHITECTURES)
BUILTIN_SIZES: dict[str, int] = {name: VARIANTS[name].size for name in BUILTIN}
