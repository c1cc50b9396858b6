"""Small networks shared by the tests. Deterministic: seeded weights or weights written out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GapNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU (``features``) -> global average pooling -> linear: a CAM network."""

    def __init__(self, channels: int = 8, classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class GmpNet(GapNet):
    """Same features, global *max* pooling (the CAM paper's GMP variant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).amax((2, 3)))


class FcNet(nn.Module):
    """An ordinary classifier: conv features -> flatten -> two FC layers. CAM does not apply."""

    def __init__(self, channels: int = 4, classes: int = 3, size: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(channels * size * size, 16), nn.ReLU(), nn.Linear(16, classes))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class SharedActNet(nn.Module):
    """One ReLU module applied twice (stem and head), like EfficientNet-Lite0's ``_swish``; GAP head."""

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 10, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(10, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.head(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class FunctionalNet(nn.Module):
    """ReLUs applied functionally and in place (``F.relu``, ``torch.relu_``), residual add; GAP head."""

    def __init__(self, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        z = torch.relu_(self.conv2(y) + y)
        return self.fc(z.mean((2, 3)))


def inputs(batch: int = 2, size: int = 8, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded random batch (B, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g, dtype=dtype)


class HeadTap(nn.Module):
    """EfficientNet-Lite0 with an identity module on the head's ReLU6 output (the 7x7 map).

    Peers cannot address the second call of the shared ``_swish``; this gives them the same activation
    behind a module that runs once (same computation, one extra no-op module).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(x)))
        x = m._blocks(x)
        x = self.tap(m._swish(m._bn1(m._conv_head(x))))
        return m._fc(m._dropout(m._avg_pooling(x).flatten(1)))


class TwoInputNet(nn.Module):
    """A model with a second input (a question-like vector): conv -> ReLU (``features``) -> global average
    pooling, concatenated with ReLU(``embed(q)``) -> linear ``fc``. The question changes every logit, so a
    row run with another sample's question gives other scores."""

    def __init__(self, channels: int = 4, words: int = 5, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU())
        self.embed = nn.Linear(words, 3)
        self.fc = nn.Linear(channels + 3, classes)
        self.eval()

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean((2, 3))
        return self.fc(torch.cat([pooled, F.relu(self.embed(q))], 1))


def calibrate_batch_norms(model: nn.Module, images: torch.Tensor, part: nn.Module | None = None) -> nn.Module:
    """Random-weight torchvision models: batch-norm statistics measured on ``images`` (cumulative average).

    With the default statistics (mean 0, variance 1) activations grow through 50 random layers and every
    detection score saturates at 1 (zero gradients); measured statistics keep the scores in (0, 1).
    ``part`` (default ``model.backbone``) is run on ImageNet-normalised ``images``.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None
        m.reset_running_stats()
        m.train()
    with torch.no_grad():
        (part if part is not None else model.backbone)((images - 0.45) / 0.225)  # type: ignore[operator]
    model.eval()
    return model


def detector(name: str, size: int = 128, classes: int = 5, seed: int = 0) -> nn.Module:
    """A torchvision detector with random weights (no download) that detects something on noise images:
    score threshold 0, batch norms calibrated, images resized to ``size`` inside the model (SSDlite: 320)."""
    import torchvision

    torch.manual_seed(seed)
    kwargs: dict = {"weights": None, "weights_backbone": None, "num_classes": classes}
    if not name.startswith("ssd"):
        kwargs.update(min_size=size, max_size=size)
    model = torchvision.models.get_model(name, **kwargs)
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = 0.0
        model.roi_heads.detections_per_img = 20
    else:
        # fewer candidates per level than the defaults (1000, 300): fewer rows in every backward
        model.score_thresh, model.detections_per_img = 0.0, 20
        if hasattr(model, "topk_candidates"):
            model.topk_candidates = 50
    return calibrate_batch_norms(model, inputs(4, size, seed=seed + 1).sigmoid())


def segmenter(name: str, classes: int = 4, seed: int = 0) -> nn.Module:
    """A torchvision segmenter with random weights (no download), batch norms calibrated."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=classes)
    return calibrate_batch_norms(model, inputs(4, 64, seed=seed + 1).sigmoid(), part=model)


def cli_detector() -> nn.Module:
    """A factory for ``--model tests.nets:cli_detector``: Faster R-CNN (MobileNetV3, 320 px) with random weights
    and calibrated batch norms, 3 classes, so there are detections above --min-score to explain."""
    model = detector("fasterrcnn_mobilenet_v3_large_320_fpn", size=320, classes=3)
    model.transform.min_size, model.transform.max_size = (96,), 96
    model.roi_heads.detections_per_img = 4
    return model


def cli_segmenter() -> nn.Module:
    """A factory for ``--model tests.nets:cli_segmenter``: LR-ASPP (MobileNetV3) with random weights, 4 classes."""
    return segmenter("lraspp_mobilenet_v3_large")
