"""camlens' built-in model architectures; :func:`camlens.zoo.load_model` loads them with their weights by name.

``BUILTIN_ARCHITECTURES`` maps each built-in name to its architecture (an ``nn.Module`` class built without
weights); ``BUILTIN`` is the tuple of those names.
"""

from torch import nn

from camlens.models.efficientnet_lite import EfficientNetLite0, efficientnet_lite0

__all__ = ["BUILTIN", "BUILTIN_ARCHITECTURES", "EfficientNetLite0", "efficientnet_lite0"]

BUILTIN_ARCHITECTURES: dict[str, type[nn.Module]] = {"efficientnet_lite0": EfficientNetLite0}
BUILTIN = tuple(BUILTIN_ARCHITECTURES)
