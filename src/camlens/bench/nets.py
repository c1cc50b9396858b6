"""The digits benchmark's three networks and their training: an FC net and its GAP and GMP versions.

Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, sec. 3: a classifier's
fully-connected head is replaced by a conv layer, global average pooling (GAP) and one linear layer, so the
class activation map ``M_c = sum_k w_k^c f_k`` exists. Here the FC net is built VGG-style
(``features`` -> ``classifier``) and :func:`camlens.gap.convert` makes the GAP and GMP nets from it, so the
three share every conv layer and differ only in the head.

Examples:
    >>> nets = make_nets(seed=0)
    >>> history = train(nets["gap"], make_dataset(600, seed=0), epochs=1)
    >>> bundle = model_bundle(nets["gap"], "gap", canvas=48)  # what camlens.evaluate.evaluate takes
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from camlens.zoo import ModelBundle

__all__ = ["conv_layer", "fc_net", "make_nets", "model_bundle", "train"]


class _FcNet(nn.Module):
    """``classifier(features(x))``: the VGG layout that :func:`camlens.gap.convert` cuts."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _FirstChannel(nn.Module):
    """``net(x[:, :1])``: image files are read as RGB (three equal channels of a gray PNG); the nets read one."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, :1])


def fc_net(
    seed: int = 0,
    canvas: int = 48,
    widths: Sequence[int] = (16, 32, 64),
    channels: int = 128,
    grid: int = 3,
    hidden: int = 256,
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> nn.Module:
    """The FC net: conv trunk -> max pool to a ``grid`` x ``grid`` map -> flatten -> FC ``hidden`` -> FC 10.

    ``features``: one 3x3 conv + batch norm + ReLU per width with 2x2 max pools between (stride 4: a
    12x12 map on a 48x48 canvas, the role of VGG16's 14x14 conv5_3 map), then the CAM paper's added
    layer, a 3x3 conv with ``channels`` units + ReLU (with batch norm if ``batch_norm``), then a max
    pool to ``grid`` x ``grid`` (the role of VGG's pool5). ``classifier``: flatten, FC, ReLU, dropout,
    FC. :func:`camlens.gap.convert` with ``channels=None`` drops the last pool and the classifier, so the
    GAP and GMP nets share every conv layer with this net and differ only in the head.
    """
    side = canvas // 2 ** (len(widths) - 1)
    if canvas % 2 ** (len(widths) - 1) or side % grid:
        raise ValueError(f"canvas {canvas} must give a feature map side ({side}) divisible by grid={grid}")
    torch.manual_seed(seed)
    layers: list[tuple[str, nn.Module]] = []
    in_ch = 1
    for i, width in enumerate(widths):
        if i:
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
        layers += [
            (f"conv{i + 1}", nn.Conv2d(in_ch, width, 3, padding=1)),
            (f"bn{i + 1}", nn.BatchNorm2d(width)),
            (f"relu{i + 1}", nn.ReLU(inplace=True)),
        ]
        in_ch = width
    k = len(widths) + 1
    layers.append((f"conv{k}", nn.Conv2d(in_ch, channels, 3, padding=1)))
    if batch_norm:
        layers.append((f"bn{k}", nn.BatchNorm2d(channels)))
    layers += [(f"relu{k}", nn.ReLU(inplace=True)), ("pool5", nn.MaxPool2d(side // grid))]
    classifier = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(channels * grid * grid, hidden),
            relu=nn.ReLU(inplace=True),
            dropout=nn.Dropout(dropout),
            fc2=nn.Linear(hidden, 10),
        )
    )
    return _FcNet(nn.Sequential(OrderedDict(layers)), classifier).eval()


def make_nets(seed: int = 0, canvas: int = 48, **options: Any) -> dict[str, nn.Module]:
    """The three nets, untrained, from one initialisation: ``{"gap": ..., "gmp": ..., "fc": ...}``.

    GAP and GMP are ``camlens.gap.convert(fc, pooling=..., channels=None)``: a copy of the FC net's conv
    layers (without pool5) + global average / max pooling + a new linear layer, the CAM paper's
    conversion (sec. 3). ``options`` go to :func:`fc_net`.
    """
    from camlens.gap import convert

    fc = fc_net(seed, canvas, **options)
    nets: dict[str, nn.Module] = {}
    for name, pooling in (("gap", "avg"), ("gmp", "max")):
        nets[name] = convert(
            fc, num_classes=10, pooling=pooling, channels=None, freeze=False, input_size=(1, canvas, canvas), seed=seed
        )
    nets["fc"] = fc
    return nets


def conv_layer(model: nn.Module) -> str:
    """The layer the class activation maps explain: the last conv's ReLU (12x12 on 48x48), in ``model``.

    For the GAP and GMP nets that is their ``features`` output. For the FC net it must be named:
    ``camlens.find_layer`` would pick ``features``, whose output is already max-pooled to 3x3 by pool5.
    Inside a :func:`model_bundle` the name gets the prefix ``net.``.
    """
    if isinstance(model, _FcNet):
        names = [name for name, m in model.features.named_children() if not isinstance(m, nn.MaxPool2d)]
        return f"features.{names[-1]}"
    return "features"


def model_bundle(model: nn.Module, name: str, canvas: int = 48) -> ModelBundle:
    """``model`` as :func:`camlens.evaluate.evaluate` takes it: RGB ``canvas`` x ``canvas`` input in [0, 1].

    The images the benchmark writes are 8-bit gray PNGs of exactly the training pixels; evaluate reads them
    as RGB, resizes ``canvas`` -> ``canvas`` (the identity) and normalises with mean 0 and std 1, so the
    wrapped net sees the training data's values. The layer to explain is ``"net." + conv_layer(model)``.
    """
    return ModelBundle(
        _FirstChannel(model).eval(),
        name,
        size=canvas,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        classes=[str(d) for d in range(10)],
    )


def _batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(labels), generator=gen)
    for start in range(0, len(labels), batch_size):
        idx = order[start : start + batch_size]
        yield images[idx], labels[idx]


def train(
    model: nn.Module,
    data: Any,
    epochs: int = 6,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    desc: str = "",
) -> list[dict[str, float]]:
    """Train all of ``model`` on image labels only: Adam, one-cycle learning rate, seeded order.

    ``data`` has ``images`` (N, 1, H, W) and ``labels`` (N,) (a :class:`~camlens.bench.wsol_digits.DigitsWSOL`).
    Returns one ``{"epoch", "loss", "acc", "seconds"}`` per epoch; the model is left in eval mode.
    """
    from camlens.gap import run_epoch

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    per_epoch = math.ceil(len(data.labels) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.15)
    history = []
    torch.manual_seed(seed)  # dropout masks
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            loss, acc = run_epoch(
                model,
                _batches(data.images, data.labels, batch_size, gen),
                opt,
                scheduler=sched,
                total=per_epoch,
                progress=progress,
                desc=f"{desc} epoch {epoch}/{epochs}".strip(),
            )
            history.append({"epoch": epoch, "loss": loss, "acc": acc, "seconds": time.perf_counter() - start})
    finally:
        model.eval()
    return history
