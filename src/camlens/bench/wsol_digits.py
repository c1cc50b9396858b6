"""The CAM paper's Tables 1 and 2 at a scale a laptop CPU runs in minutes: digits on a cluttered canvas.

Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, compare on ILSVRC
(sec. 3.1): networks with a GAP head against the same networks with their fully-connected head
(Table 1, classification error) and, for weakly-supervised localisation, CAM against "Backprop" (the
gradient saliency of Simonyan et al. 2014) and a GAP head against a global-max-pooling (GMP) head
(Table 2, localisation error: the box from the map thresholded at 20% of its max, largest connected
component, correct at IoU >= 0.5). This module rebuilds that comparison on data with exact boxes:

* :func:`make_dataset`: real handwritten digits (scikit-learn's ``load_digits``, 1797 8x8 scans from
  the UCI "Optical Recognition of Handwritten Digits" set) scaled to 14..30 px and put at a random place
  on a 64x64 canvas, with fragments of other digits as clutter (never inside the digit's box). The
  box [x0, y0, x1, y1) (END-EXCLUSIVE) and the mask are exactly the digit's non-zero pixels. Train and
  test images are made from disjoint sets of scans (different handwriting samples).
* three CNNs with one conv trunk (3 stages of 3x3 conv + batch norm + ReLU, 2x2 max pools between):
  the FC net (trunk -> pool -> FC 128 -> FC 10, VGG-style) and its GAP and GMP versions made by
  :func:`camlens.gap.convert` (trunk -> 3x3 conv 128 -> global average / max pooling -> linear 10, the
  paper's sec. 3 recipe), each trained from scratch on image labels only, seeded, on the CPU.
* :func:`run`: classification top-1/top-5 error, and the localisation errors of CAM (GAP and GMP nets;
  it does not apply to the FC net), Grad-CAM, Grad-CAM++ and saliency with
  :class:`camlens.metrics.localization.LocalizationMeter` (top-1/top-5 localisation error, GT-known,
  MaxBoxAcc, MaxBoxAccV2, PxAP); writes ``results.json``, ``table.md``, ``table.csv`` and pictures.

Example:
    >>> from camlens import wsol_digits
    >>> results = wsol_digits.run("out/wsol", seed=0, threads=1)
    >>> print(open("out/wsol/table.md").read())
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "METHODS",
    "NETS",
    "DigitsWSOL",
    "conv_layer",
    "evaluate",
    "fc_net",
    "make_dataset",
    "make_nets",
    "render_tables",
    "run",
    "train",
]

NETS = ("gap", "gmp", "fc")
METHODS = ("cam", "gradcam", "gradcam++", "saliency")
_NET_NAMES = {"gap": "GAP net (conv-GAP-linear)", "gmp": "GMP net (conv-GMP-linear)", "fc": "FC net (conv-FC-FC)"}
_METHOD_NAMES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "saliency": "Backprop (saliency)"}
# Disjoint pools of scans for the train and test images; fixed, so every seed tests on unseen handwriting.
_POOL_SEED = 20160627
_TEST_SHARE = 1 / 3
# Interpolated ink below this (a fraction of full ink) is set to 0, so the digit's support is crisp.
_INK = 0.1


@dataclass(eq=False)  # tensors have no single truth value
class DigitsWSOL(torch.utils.data.Dataset):
    """A generated set: images, labels, exact boxes and masks. Indexing gives ``(image, label)``.

    Attributes:
        images: (N, 1, H, W) float32 in [0, 1] (ink is 1).
        labels: (N,) int64 digit classes 0..9.
        boxes: (N, 4) int64 END-EXCLUSIVE [x0, y0, x1, y1) boxes of the digit's non-zero pixels.
        masks: (N, H, W) bool, the digit's non-zero pixels (clutter excluded).
        sources: (N,) int64 index of the scan in ``sklearn.datasets.load_digits()``.
        config: the arguments of :func:`make_dataset`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    sources: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "the digits benchmark needs scikit-learn's load_digits (bundled data, nothing is downloaded): "
            "pip install scikit-learn (or pip install 'camlens[wsol]')"
        ) from err
    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def _pool(split: str, total: int) -> np.ndarray:
    order = np.random.default_rng(_POOL_SEED).permutation(total)
    n_test = round(total * _TEST_SHARE)
    if split == "test":
        return np.sort(order[:n_test])
    if split == "train":
        return np.sort(order[n_test:])
    if split == "all":
        return np.arange(total)
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


def _resize(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a small ink patch, faint interpolation halo cut at ``_INK``."""
    t = torch.from_numpy(np.ascontiguousarray(patch))[None, None]
    out = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    out = np.clip(out, 0.0, 1.0)
    out[out < _INK] = 0.0
    return out


def _tight(patch: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(patch.any(1)), np.flatnonzero(patch.any(0))
    return patch[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def make_dataset(
    n: int,
    canvas: int = 48,
    seed: int = 0,
    clutter: int = 3,
    split: str = "train",
    size: tuple[int, int] = (12, 26),
    fragment: tuple[int, int] = (3, 5),
) -> DigitsWSOL:
    """``n`` canvases, each with one handwritten digit at a random place and scale, plus clutter.

    Per image (one seeded ``numpy`` generator for the whole set, so the same arguments give the same set):

    1. a scan from the split's pool (train and test pools are disjoint, fixed thirds of the 1797 scans),
       cropped to its ink, resized (bilinear) so its height is uniform in ``size`` pixels, ink below 10%
       set to 0; placed at a uniform position fully inside the canvas;
    2. ``clutter`` fragments: a random ``fragment[0]..fragment[1]`` x ``fragment[0]..fragment[1]`` cell
       window of another scan of the pool (any class), scaled like a digit, placed where its pixels stay
       at least one pixel outside the digit's box (up to 50 tries; a fragment that fits nowhere is
       dropped). Overlapping fragments combine by maximum.

    The box is the bounding box of the digit's non-zero pixels, END-EXCLUSIVE; inside it, every non-zero
    pixel of the image is the digit's (the mask).

    Args:
        n: number of images.
        canvas: side of the square canvas in pixels (at least the largest digit size + 2).
        seed: generator seed.
        clutter: fragments per image.
        split: ``"train"``, ``"test"`` or ``"all"``: the pool of scans to draw from.
        size: (min, max) digit height in pixels.
        fragment: (min, max) side of a fragment's window, in cells of the 8x8 scan.

    Returns:
        a :class:`DigitsWSOL`.

    Raises:
        ImportError: scikit-learn is not installed.

    Example:
        >>> data = make_dataset(100, seed=0)
        >>> data.images.shape, data.boxes[0]  # (100, 1, 64, 64), tensor([x0, y0, x1, y1])
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 1 <= size[0] <= size[1] or canvas < size[1] + 2:
        raise ValueError(f"size must be (min, max) heights with 1 <= min <= max <= canvas - 2, got {size}")
    if not 1 <= fragment[0] <= fragment[1] <= 8:
        raise ValueError(f"fragment must be (min, max) window sides in 1..8 cells, got {fragment}")
    if clutter < 0:
        raise ValueError(f"clutter must be >= 0, got {clutter}")
    scans, targets = _load_digits()
    pool = _pool(split, len(scans))
    rng = np.random.default_rng([seed, {"train": 0, "test": 1, "all": 2}[split]])
    images = np.zeros((n, canvas, canvas), dtype=np.float32)
    masks = np.zeros((n, canvas, canvas), dtype=bool)
    boxes = np.zeros((n, 4), dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    sources = np.zeros(n, dtype=np.int64)
    for i in range(n):
        src = int(rng.choice(pool))
        digit = _tight(scans[src])
        height = int(rng.integers(size[0], size[1] + 1))
        scale = height / digit.shape[0]
        width = min(canvas - 2, max(1, round(digit.shape[1] * scale)))
        ink = _resize(digit, height, width)
        y, x = int(rng.integers(0, canvas - height + 1)), int(rng.integers(0, canvas - width + 1))
        images[i, y : y + height, x : x + width] = ink
        masks[i] = images[i] > 0
        rows, cols = np.flatnonzero(masks[i].any(1)), np.flatnonzero(masks[i].any(0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        boxes[i], labels[i], sources[i] = box, targets[src], src
        # fragments stay one pixel away from the box, so the box still encloses exactly the digit
        keep_out = np.zeros((canvas, canvas), dtype=bool)
        keep_out[max(0, box[1] - 1) : box[3] + 1, max(0, box[0] - 1) : box[2] + 1] = True
        for _ in range(clutter):
            other = scans[int(rng.choice(pool))]
            fh, fw = (int(v) for v in rng.integers(fragment[0], fragment[1] + 1, size=2))
            r0, c0 = int(rng.integers(0, 8 - fh + 1)), int(rng.integers(0, 8 - fw + 1))
            window = other[r0 : r0 + fh, c0 : c0 + fw]
            if window.max() < 0.5:
                continue
            piece = _resize(_tight(window), *(max(1, round(s * scale)) for s in _tight(window).shape))
            ph, pw = piece.shape
            if ph >= canvas or pw >= canvas:
                continue
            for _try in range(50):
                py, px = int(rng.integers(0, canvas - ph + 1)), int(rng.integers(0, canvas - pw + 1))
                if not (keep_out[py : py + ph, px : px + pw] & (piece > 0)).any():
                    region = images[i, py : py + ph, px : px + pw]
                    np.maximum(region, piece, out=region)
                    break
    return DigitsWSOL(
        images=torch.from_numpy(images[:, None]),
        labels=torch.from_numpy(labels),
        boxes=torch.from_numpy(boxes),
        masks=torch.from_numpy(masks),
        sources=torch.from_numpy(sources),
        config={
            "n": n,
            "canvas": canvas,
            "seed": seed,
            "clutter": clutter,
            "split": split,
            "size": list(size),
            "fragment": list(fragment),
        },
    )


class _FcNet(nn.Module):
    """``classifier(features(x))``: the VGG layout that :func:`camlens.gap.convert` cuts."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


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


def _batches(data: DigitsWSOL, batch_size: int, gen: torch.Generator | None) -> Any:
    n = len(data)
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield data.images[idx], data.labels[idx]


def train(
    model: nn.Module,
    data: DigitsWSOL,
    epochs: int = 6,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    desc: str = "",
) -> list[dict[str, float]]:
    """Train all of ``model`` on image labels only: Adam, cosine learning-rate decay, seeded order.

    Returns one ``{"epoch", "loss", "acc", "seconds"}`` per epoch; the model is left in eval mode.
    """
    from camlens.gap import run_epoch

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(len(data) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)

    history = []
    torch.manual_seed(seed)  # dropout masks
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            loss, acc = run_epoch(
                model,
                _batches(data, batch_size, gen),
                opt,
                scheduler=sched,
                total=math.ceil(len(data) / batch_size),
                progress=progress,
                desc=f"{desc} epoch {epoch}/{epochs}".strip(),
            )
            history.append({"epoch": epoch, "loss": loss, "acc": acc, "seconds": time.perf_counter() - start})
    finally:
        model.eval()
    return history


def _predict(model: nn.Module, data: DigitsWSOL, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x) for x, _ in _batches(data, batch_size, None)])


def conv_layer(model: nn.Module) -> str:
    """The layer the class activation maps of every net explain: the last conv's ReLU (12x12 on 48x48).

    For the GAP and GMP nets that is their ``features`` output. For the FC net it must be named:
    ``camlens.find_layer`` would pick ``features``, whose output is already max-pooled to 3x3 by pool5.
    """
    if isinstance(model, _FcNet):
        names = [name for name, m in model.features.named_children() if not isinstance(m, nn.MaxPool2d)]
        return f"features.{names[-1]}"
    return "features"


def evaluate(
    model: nn.Module,
    data: DigitsWSOL,
    methods: Sequence[str] = METHODS,
    batch_size: int = 100,
    progress: bool = True,
    desc: str = "",
    layer: str | None = None,
) -> dict[str, Any]:
    """Classification and localisation of ``model`` on ``data``, per method, CAM paper protocol.

    For each method the map of the GROUND-TRUTH class (``targets=labels``) at the canvas size goes to a
    :class:`~camlens.metrics.localization.LocalizationMeter` with the true box, the mask and the model's
    top-5 classes. Methods that do not apply to the model (CAM on the FC net) are reported as
    ``{"applicable": False, "reason": ...}``. ``layer`` is the layer the CAM-family methods explain
    (``None``: :func:`conv_layer`); saliency explains the input.

    Returns:
        ``{"classification": {"top1_cls_err", "top5_cls_err"}, "methods": {name: metrics},
        "maps": {name: (N, H, W) float16 maps}, "logits": (N, 10)}``.
    """
    from tqdm.auto import tqdm

    import camlens
    from camlens.metrics.localization import LocalizationMeter

    layer = conv_layer(model) if layer is None else layer
    logits = _predict(model, data, batch_size)
    top5 = logits.topk(5, dim=1).indices
    labels = data.labels
    cls = {
        "top1_cls_err": 100.0 * float((top5[:, 0] != labels).float().mean()),
        "top5_cls_err": 100.0 * float((top5 != labels[:, None]).all(1).float().mean()),
    }
    results: dict[str, Any] = {}
    maps: dict[str, torch.Tensor] = {}
    for method in methods:
        meter = LocalizationMeter()
        chunks = []
        options = {"layer": layer} if camlens.get_method(method).takes_layer else {}
        start = time.perf_counter()
        if method == "cam":
            # CAM applies only when the output is linear(global pooling(features)); camlens checks it
            try:
                camlens.explain(model, data.images[:1], method="cam", targets=labels[:1], **options)
            except ValueError as err:
                results[method] = {"applicable": False, "reason": str(err).split(";")[0]}
                continue
        for lo in tqdm(
            range(0, len(data), batch_size), desc=f"{desc} {method}".strip(), disable=not progress, leave=False
        ):
            hi = min(lo + batch_size, len(data))
            exp = camlens.explain(model, data.images[lo:hi], method=method, targets=labels[lo:hi], **options)
            batch_maps = exp.maps[:, 0]
            chunks.append(batch_maps.to(torch.float16))
            for j in range(hi - lo):
                i = lo + j
                meter.add(batch_maps[j], data.boxes[i][None], int(labels[i]), top5[i], mask=data.masks[i])
        metrics: dict[str, Any] = dict(meter.compute())
        metrics["gt_known_loc_err"] = 100.0 - metrics["gt_known_loc_acc"]
        metrics["seconds"] = time.perf_counter() - start
        metrics["applicable"] = True
        metrics["layer"] = exp.layer
        results[method] = metrics
        maps[method] = torch.cat(chunks)
    return {"classification": cls, "methods": results, "maps": maps, "logits": logits}


def _fmt(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def render_tables(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown of the paper-style Tables 1 and 2 from ``run``'s results, and the CSV rows."""
    ev = results["nets"]
    lines = [
        "Table 1. Classification error (%) on the test set (cf. CAM paper, Table 1).",
        "",
        "| Network | top-1 err | top-5 err | train acc (last epoch) | parameters |",
        "|---|---:|---:|---:|---:|",
    ]
    rows: list[dict[str, Any]] = []
    for net in NETS:
        if net not in ev:
            continue
        c = ev[net]["classification"]
        lines.append(
            f"| {_NET_NAMES[net]} | {_fmt(c['top1_cls_err'])} | {_fmt(c['top5_cls_err'])} | "
            f"{_fmt(100 * ev[net]['history'][-1]['acc'])} | {ev[net]['parameters']:,} |"
        )
    lines += [
        "",
        "Table 2. Localisation (%) on the test set: box from the map of the true class at 20% of its max, "
        "largest component, IoU >= 0.5 (cf. CAM paper, Table 2). Errors: lower is better; MaxBoxAcc (with "
        "the threshold that achieves it), MaxBoxAccV2 (Choe et al. 2020) and PxAP: higher is better.",
        "",
        "| Method | Network | top-1 loc err | top-5 loc err | GT-known loc err | MaxBoxAcc | best threshold "
        "| MaxBoxAccV2 | PxAP |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        for net in NETS:
            if net not in ev or method not in ev[net]["methods"]:
                continue
            m = ev[net]["methods"][method]
            c = ev[net]["classification"]
            row: dict[str, Any] = {"network": net, "method": method, **c}
            if not m.get("applicable", True):
                lines.append(f"| {_METHOD_NAMES[method]} | {_NET_NAMES[net]} |" + " n/a |" * 7)
                rows.append(row)
                continue
            keys = (
                "top1_loc_err",
                "top5_loc_err",
                "gt_known_loc_err",
                "maxboxacc",
                "maxboxacc_best_threshold",
                "maxboxacc_v2",
                "pxap",
            )
            cells = [_fmt(m.get(k), 2 if k.endswith("threshold") else 1) for k in keys]
            lines.append(f"| {_METHOD_NAMES[method]} | {_NET_NAMES[net]} | " + " | ".join(cells) + " |")
            row.update({k: m.get(k) for k in keys})
            rows.append(row)
    return "\n".join(lines) + "\n", rows


def _save_png(image: Any, path: Path) -> None:
    """An adaptive 256-colour PNG: heatmap sheets shrink about 3x, with no visible change."""
    image.quantize(colors=256, method=2).save(path, optimize=True)  # 2: Image.Quantize.FASTOCTREE


def _pictures(
    out: Path, test: DigitsWSOL, train_set: DigitsWSOL, ev: dict[str, Any], examples: int, zoom: int = 5
) -> list[str]:
    from PIL import Image

    from camlens import viz
    from camlens.localize import box_from_map
    from camlens.metrics.localization import box_iou

    def photo(image: torch.Tensor) -> Any:
        gray = (image[0].numpy() * 255 + 0.5).astype(np.uint8)
        big = Image.fromarray(gray).resize((gray.shape[1] * zoom, gray.shape[0] * zoom), Image.Resampling.NEAREST)
        return big.convert("RGB")

    def scaled(box: Any) -> list[int] | None:
        return None if box is None else [int(v) * zoom for v in box]

    written = []
    tiles = []
    for i in range(min(8, len(train_set))):
        tiles.append(
            viz.draw_box(
                photo(train_set.images[i]),
                scaled(train_set.boxes[i].tolist()),
                f"{int(train_set.labels[i])}",
                "#ff3333",
            )
        )
    path = out / "wsol_digits_dataset.png"
    _save_png(viz.grid(tiles, columns=4), path)
    written.append(path.name)
    for net, result in ev.items():
        tiles = []
        methods = [m for m in METHODS if m in result["maps"]]
        for i in range(min(examples, len(test))):
            gt = test.boxes[i].tolist()
            pred = int(result["logits"][i].argmax())
            tiles.append(
                viz.draw_box(photo(test.images[i]), scaled(gt), f"true {int(test.labels[i])}, pred {pred}", "#ff3333")
            )
            for method in methods:
                cam = result["maps"][method][i].float()
                big = F.interpolate(cam[None, None], scale_factor=zoom, mode="bilinear", align_corners=False)[0, 0]
                box = box_from_map(cam, 0.2)
                iou = float(box_iou([box], [gt])[0, 0]) if box is not None else 0.0
                tile = viz.overlay(photo(test.images[i]), big.clamp(0, 1).numpy(), alpha=0.5)
                tile = viz.draw_box(tile, scaled(gt), None, "#ff3333")
                tile = viz.draw_box(
                    tile, scaled(box), f"{_METHOD_NAMES[method].split(' ')[0]} IoU {iou:.2f}", "#00ff66"
                )
                tiles.append(tile)
        path = out / f"wsol_digits_{net}.png"
        _save_png(viz.grid(tiles, columns=1 + len(methods)), path)
        written.append(path.name)
    return written


def run(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 8000,
    n_test: int = 1000,
    epochs: int = 6,
    threads: int | None = None,
    progress: bool = True,
    *,
    clutter: int = 3,
    canvas: int = 48,
    size: tuple[int, int] = (12, 26),
    batch_size: int = 64,
    lr: float = 2e-3,
    methods: Sequence[str] = METHODS,
    examples: int = 6,
    pictures: bool = True,
) -> dict[str, Any]:
    """Generate the data, train the GAP, GMP and FC nets, evaluate every method, write the tables.

    Writes into ``out_dir``: ``results.json`` (configuration, timings, training history, every metric),
    ``table.md`` (the CAM paper's Tables 1 and 2 in structure), ``table.csv`` (one row per method and
    network) and, with ``pictures``, ``wsol_digits_dataset.png`` and ``wsol_digits_{gap,gmp,fc}.png``
    (test images with the true box in red and each method's box in green over its map).

    Args:
        out_dir: output folder (created).
        seed: seeds the data, the initial weights and the training order.
        n_train: training images (from the train pool of scans).
        n_test: test images (from the disjoint test pool).
        epochs: training epochs per network.
        threads: ``torch.set_num_threads`` for the run (restored afterwards); ``None``: leave as is.
        progress: tqdm bars.
        clutter: digit fragments per image.
        canvas: image side in pixels.
        size: (min, max) digit height in pixels.
        batch_size: training batch size.
        lr: peak learning rate (Adam, one-cycle schedule).
        methods: methods to evaluate (default: CAM, Grad-CAM, Grad-CAM++, saliency).
        examples: test images in each picture.
        pictures: write the PNG pictures (needs matplotlib).

    Returns:
        the dictionary written to ``results.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    timing: dict[str, float] = {}
    try:
        t = time.perf_counter()
        train_set = make_dataset(n_train, canvas=canvas, seed=seed, clutter=clutter, split="train", size=size)
        test_set = make_dataset(n_test, canvas=canvas, seed=seed, clutter=clutter, split="test", size=size)
        timing["data_s"] = time.perf_counter() - t
        nets = make_nets(seed, canvas, batch_norm=True)
        ev: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        for name, model in nets.items():
            t = time.perf_counter()
            history = train(
                model, train_set, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress, desc=name
            )
            timing[f"train_{name}_s"] = time.perf_counter() - t
            t = time.perf_counter()
            wanted = [m for m in methods if m != "cam" or name != "fc"]
            result = evaluate(model, test_set, wanted, progress=progress, desc=name)
            if "cam" in methods and name == "fc":
                result["methods"]["cam"] = {
                    "applicable": False,
                    "reason": "the FC net's output is not linear(global_pool(features)): CAM does not apply",
                }
            timing[f"eval_{name}_s"] = time.perf_counter() - t
            result["history"] = history
            result["parameters"] = sum(p.numel() for p in model.parameters())
            ev[name] = result
            summary[name] = {k: v for k, v in result.items() if k not in ("maps", "logits")}
        timing["total_wall_s"] = time.perf_counter() - wall0
        timing["total_cpu_s"] = time.process_time() - cpu0
        results: dict[str, Any] = {
            "benchmark": "wsol_digits",
            "config": {
                "seed": seed,
                "n_train": n_train,
                "n_test": n_test,
                "epochs": epochs,
                "clutter": clutter,
                "canvas": canvas,
                "size": list(size),
                "batch_size": batch_size,
                "lr": lr,
                "methods": list(methods),
                "threads": torch.get_num_threads(),
                "box_threshold": 0.2,
                "iou": 0.5,
            },
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(),
            },
            "timing": timing,
            "nets": summary,
        }
        markdown, rows = render_tables(results)
        if pictures:
            results["pictures"] = _pictures(out, test_set, train_set, ev, examples)
            timing["pictures_s"] = time.perf_counter() - wall0 - timing["total_wall_s"]
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "table.md").write_text(markdown)
        with open(out / "table.csv", "w", newline="") as f:
            fields = list(dict.fromkeys(k for row in rows for k in row))
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    finally:
        torch.set_num_threads(previous)
    return results
