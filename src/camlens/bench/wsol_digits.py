"""The CAM paper's Tables 1 and 2 at a scale a laptop CPU runs in minutes: digits on a cluttered canvas.

Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, compare on ILSVRC
(sec. 3.1): networks with a GAP head against the same networks with their fully-connected head
(Table 1, classification error) and, for weakly-supervised localisation, CAM on the GAP networks against
"Backprop" (the gradient saliency of Simonyan et al. 2014) on the original networks, and a GAP head
against a global-max-pooling (GMP) head (Table 2, localisation error: the box from the map thresholded at
20% of its max, largest connected component, correct at IoU >= 0.5). This application rebuilds that
comparison on data with exact boxes, on camlens' public API:

* :func:`make_dataset`: real handwritten digits (scikit-learn's ``load_digits``, 1797 8x8 scans from
  the UCI "Optical Recognition of Handwritten Digits" set) scaled and put at a random place on a canvas,
  with fragments of other digits as clutter (never inside the digit's box). 8-bit pixels; the box
  [x0, y0, x1, y1) (END-EXCLUSIVE) and the mask are exactly the digit's non-zero pixels. Train and test
  images are made from disjoint sets of scans (different handwriting samples).
* :func:`write_dataset`: the test set as PNG files, a ``path,class,x0,y0,x1,y1`` CSV and mask PNGs, read
  back with :func:`camlens.datasets.open_dataset`.
* :mod:`camlens.bench.nets`: the FC net, its GAP and GMP versions (:func:`camlens.gap.convert`), training.
* :func:`run`: for each seed, data, the three nets trained from scratch, and one
  :func:`camlens.evaluate.evaluate` per net (every method, ``metrics="localization"``): the protocol every
  user of ``camlens evaluate`` gets. Tables with the mean and range over seeds (:mod:`camlens.bench.tables`).

Examples:
    >>> from camlens.bench import wsol_digits
    >>> results = wsol_digits.run("out/wsol", seeds=(0, 1, 2), threads=1)
    >>> print(open("out/wsol/table.md").read())
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from camlens.bench import nets as _nets
from camlens.bench import tables
from camlens.bench._common import environment, save_png

__all__ = ["METHODS", "NETS", "DigitsWSOL", "make_dataset", "run", "write_dataset"]

NETS = tables.NETS
METHODS = tables.METHODS
# Disjoint pools of scans for the train and test images; fixed, so every seed tests on unseen handwriting.
_POOL_SEED = 20160627
_TEST_SHARE = 1 / 3
# Interpolated ink below this (a fraction of full ink) is set to 0, so the digit's support is crisp.
_INK = 0.1


@dataclass(eq=False)  # tensors have no single truth value
class DigitsWSOL(torch.utils.data.Dataset):
    """A generated set: images, labels, exact boxes and masks. Indexing gives ``(image, label)``.

    Attributes:
        images: (N, 1, H, W) float32 in [0, 1] (ink is 1), 8-bit values (``k / 255``), so a PNG holds them exactly.
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

    Examples:
        >>> data = make_dataset(100, seed=0)
        >>> data.images.shape, data.boxes[0]  # (100, 1, 48, 48), tensor([x0, y0, x1, y1])
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
    # 8-bit values, divided as camlens.zoo's preprocessing divides a PNG's: training sees the evaluated pixels
    pixels = np.rint(images * 255.0).astype(np.uint8)
    return DigitsWSOL(
        images=torch.from_numpy(pixels[:, None].astype(np.float32)).div_(255.0),
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


def write_dataset(data: DigitsWSOL, folder: str | Path) -> Any:
    """Write ``data`` as a localisation set camlens reads, and read it back with ``open_dataset``.

    Files in ``folder``: ``images/NNNNN.png`` (8-bit gray, exactly ``data.images``), ``masks/NNNNN.png``
    (255 on the digit's pixels, for PxAP) and ``boxes.csv`` with rows ``path,class,x0,y0,x1,y1``
    (END-EXCLUSIVE boxes, camlens' convention, so ``camlens evaluate boxes.csv`` reads the same set).
    The CSV format has no mask column, so each sample's mask is attached to what
    :func:`camlens.datasets.open_dataset` returns.

    Returns:
        a :class:`camlens.datasets.LocalizationSet` whose samples have boxes and masks.
    """
    from PIL import Image

    from camlens.datasets import open_dataset

    folder = Path(folder)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    pixels = np.rint(data.images[:, 0].numpy() * 255.0).astype(np.uint8)
    masks = data.masks.numpy().astype(np.uint8) * 255
    lines = ["path,class,x0,y0,x1,y1"]
    for i in range(len(data)):
        name = f"{i:05d}.png"
        Image.fromarray(pixels[i]).save(folder / "images" / name)
        Image.fromarray(masks[i]).save(folder / "masks" / name)
        lines.append(f"images/{name},{int(data.labels[i])}," + ",".join(str(int(v)) for v in data.boxes[i]))
    (folder / "boxes.csv").write_text("\n".join(lines) + "\n")
    opened = open_dataset(folder / "boxes.csv", classes=list(data.classes))
    samples = [dataclasses.replace(s, mask=folder / "masks" / Path(s.image_id).name) for s in opened.samples]
    return dataclasses.replace(opened, samples=samples)


def _command(config: dict[str, Any], out: Path) -> list[str]:
    """The ``camlens bench wsol`` command that repeats a run with this configuration."""
    return [
        "camlens",
        "bench",
        "wsol",
        "--out",
        str(out),
        "--seeds",
        ",".join(map(str, config["seeds"])),
        "--train",
        str(config["n_train"]),
        "--test",
        str(config["n_test"]),
        "--epochs",
        str(config["epochs"]),
        "--size",
        ",".join(map(str, config["size"])),
        "--threads",
        str(config["threads"]),
    ]


def _applicable(bundle: Any, layer: str, image: torch.Tensor, methods: Sequence[str]) -> dict[str, str]:
    """Methods that do not apply to the net -> why: CAM needs ``linear(global_pool(A))``, which camlens checks."""
    import camlens

    reasons = {}
    for method in methods:
        options = {"layer": layer} if camlens.get_method(method).takes_layer else {}
        try:
            camlens.explain(bundle.model, image.expand(1, 3, -1, -1), method=method, targets=[0], **options)
        except ValueError as err:
            reasons[method] = str(err).split(";")[0]
    return reasons


def _dataset_picture(data: DigitsWSOL, path: Path, zoom: int = 5) -> None:
    from PIL import Image

    from camlens import viz

    tiles = []
    for i in range(min(8, len(data))):
        gray = np.rint(data.images[i, 0].numpy() * 255.0).astype(np.uint8)
        big = Image.fromarray(gray).resize((gray.shape[1] * zoom,) * 2, Image.Resampling.NEAREST).convert("RGB")
        box = [int(v) * zoom for v in data.boxes[i].tolist()]
        tiles.append(viz.draw_box(big, box, str(int(data.labels[i])), "#ff3333"))
    save_png(viz.grid(tiles, columns=4), path)


def _one_seed(
    out: Path, seed: int, config: dict[str, Any], methods: Sequence[str], examples: int, bar: Any, progress: bool
) -> dict[str, Any]:
    """Data, the three nets trained, one ``camlens.evaluate.evaluate`` per net: the record of one seed."""
    from camlens import evaluate as _evaluate

    timing: dict[str, float] = {}
    t = time.perf_counter()
    common = {"canvas": config["canvas"], "seed": seed, "clutter": config["clutter"], "size": tuple(config["size"])}
    train_set = make_dataset(config["n_train"], split="train", **common)
    test_set = make_dataset(config["n_test"], split="test", **common)
    test = write_dataset(test_set, out / "data")
    timing["data_s"] = time.perf_counter() - t
    record: dict[str, Any] = {"nets": {}, "timing": timing, "train_set": train_set}
    for name, model in _nets.make_nets(seed, config["canvas"], batch_norm=True).items():
        bar.set_postfix_str(f"seed {seed}, {name} net: training")
        t = time.perf_counter()
        history = _nets.train(
            model,
            train_set,
            epochs=config["epochs"],
            lr=config["lr"],
            batch_size=config["batch_size"],
            seed=seed,
            progress=progress,
            desc=f"seed {seed} {name}",
        )
        timing[f"train_{name}_s"] = time.perf_counter() - t
        bar.set_postfix_str(f"seed {seed}, {name} net: evaluating")
        t = time.perf_counter()
        bundle = _nets.model_bundle(model, f"{name} net (seed {seed})", config["canvas"])
        layer = "net." + _nets.conv_layer(model)
        refused = _applicable(bundle, layer, test_set.images[0], methods)
        evaluation = _evaluate.evaluate(
            bundle,
            test,
            [m for m in methods if m not in refused],
            metrics="localization",
            layer=layer,
            batch_size=100,
            out=out / name,
            examples=examples,
            progress=progress,
            resume=False,  # a net trained in this run: nothing to resume, the folder is rewritten
        )
        timing[f"eval_{name}_s"] = time.perf_counter() - t
        rows = {m: dict(evaluation.rows[m]) for m in evaluation.methods}
        first = next(iter(rows.values()))
        for row in rows.values():
            row["gt_known_loc_err"] = 100.0 - row["gt_known_loc_acc"]
        record["nets"][name] = {
            "classification": {
                "top1_cls_err": first["top1_cls_err"],
                "topk_cls_err": first["topk_cls_err"],
                "train_acc": 100.0 * history[-1]["acc"],
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "layer": layer,
            "history": history,
            "images": evaluation.images,
            "methods": {m: rows[m] if m in rows else {"applicable": False, "reason": refused[m]} for m in methods},
            "files": {k: str(Path(v).resolve().relative_to(out.parent.resolve())) for k, v in evaluation.files.items()},
        }
        bar.update(1)
    return record


def run(
    out_dir: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    n_train: int = 8000,
    n_test: int = 1000,
    epochs: int = 6,
    threads: int | None = 1,
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
    """For each seed: generate the data, train the GAP, GMP and FC nets, evaluate every method with evaluate.

    The defaults are the run of ``docs/wsol_digits.md``'s main table (``camlens bench wsol`` with no arguments).
    Writes into ``out_dir``: ``results.json`` (the command, environment, configuration, timings, every number
    of every seed and their statistics over seeds), ``table.md`` (the CAM paper's Tables 1 and 2 in structure,
    mean and range over seeds), ``table.csv`` (one row per cell), ``seed{S}/`` (the test set as PNG + CSV +
    masks and one ``camlens evaluate`` folder per net), and with ``pictures`` ``wsol_digits_dataset.png`` and
    ``wsol_digits_{gap,gmp,fc}.png`` (evaluate's example pictures of the first seed).

    Args:
        out_dir: output folder (created).
        seeds: one run per seed; a seed sets the data, the initial weights and the training order.
        n_train: training images (from the train pool of scans).
        n_test: test images (from the disjoint test pool).
        epochs: training epochs per network.
        threads: ``torch.set_num_threads`` for the run (restored afterwards); ``None``: leave as is.
        progress: progress bars (an overall one with the ETA, one per training epoch and evaluation).
        clutter: digit fragments per image.
        canvas: image side in pixels.
        size: (min, max) digit height in pixels.
        batch_size: training batch size.
        lr: peak learning rate (Adam, one-cycle schedule).
        methods: methods to evaluate (default: CAM, Grad-CAM, Grad-CAM++, saliency).
        examples: test images in each example picture (the first seed's).
        pictures: write the example pictures (needs matplotlib).

    Returns:
        the dictionary written to ``results.json``.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    config: dict[str, Any] = {
        "seeds": seeds,
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
    }
    wall0, cpu0 = time.perf_counter(), time.process_time()
    per_seed: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    try:
        bar = tqdm(total=len(seeds) * len(NETS), desc="camlens bench wsol", unit="net", disable=not progress)
        with bar:
            for seed in seeds:
                t = time.perf_counter()
                shown = examples if pictures and seed == seeds[0] else 0
                record = _one_seed(out / f"seed{seed}", seed, config, methods, shown, bar, progress)
                record["timing"]["total_wall_s"] = time.perf_counter() - t
                train_set = record.pop("train_set")
                if shown:
                    _dataset_picture(train_set, out / "wsol_digits_dataset.png")
                    for net, entry in record["nets"].items():
                        if "examples" in entry["files"]:
                            with Image.open(out / entry["files"]["examples"]) as sheet:
                                save_png(sheet, out / f"wsol_digits_{net}.png")
                per_seed[str(seed)] = record
        timing["total_wall_s"] = time.perf_counter() - wall0
        timing["total_cpu_s"] = time.process_time() - cpu0
        timing["per_seed"] = {s: r.pop("timing") for s, r in per_seed.items()}
        results: dict[str, Any] = {
            "benchmark": "wsol_digits",
            "command": _command(config, out),
            "argv": list(sys.argv),
            "config": config,
            "environment": environment(config["threads"]),
            "timing": timing,
            "summary": tables.summary(per_seed),
            "seeds": per_seed,
        }
        markdown, rows = tables.render_tables(results)
        (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
        (out / "table.md").write_text(markdown)
        fields = list(rows[0]) if rows else []
        lines = [",".join(fields)] + [",".join("" if r[f] is None else str(r[f]) for f in fields) for r in rows]
        (out / "table.csv").write_text("\n".join(lines) + "\n")
    finally:
        torch.set_num_threads(previous)
    return results
