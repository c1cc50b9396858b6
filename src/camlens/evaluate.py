"""Evaluate explanation methods on a data set: the CAM paper's localisation table and faithfulness metrics.

One pass over the data set serves every method and every metric:

* one inference forward per batch gives the predictions (classification top-1 / top-K error);
* each method explains, in one call per batch, the ground-truth class (localisation, pointing game)
  and the top-1 predicted class (deletion, insertion, AD/IC, ROAD: faithfulness to the model's own
  decision), as two targets of one call (camlens computes both gradients in one batched backward);
* localisation maps are the method's low-resolution map, ReLU'd and bilinearly resized straight to the
  original image size, as in Choe et al. (CVPR 2020), so boxes are in original-image pixels;
* images are resized to the model's input size WITHOUT cropping (Choe et al.'s protocol: a crop
  would cut ground-truth boxes).

The result is an :class:`Evaluation`: one row per method, one column per number, written as CSV,
Markdown and JSON with example pictures (map, ground-truth boxes in red, predicted box in green, as
``camlens bench wsol`` draws them).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camlens._json import strict
from camlens._paths import NameBook, inside, safe_name
from camlens.data.loader import Skipped
from camlens.methods.base import _nonfinite_named_by_caller
from camlens.zoo import MAX_PIXELS

__all__ = ["DEMO_PHOTOS", "METRICS", "Evaluation", "demo_dataset", "evaluate"]

# The built-in photos: scikit-image's, boxed by hand (end-exclusive original pixels) and labelled with the
# closest ImageNet class (ImageNet has no "motorcycle" or "rocket": moped, missile). Rows (stem,
# skimage.data name, ImageNet class id, box): read by demo_dataset and by the app's built-in photo menu.
DEMO_PHOTOS: tuple[tuple[str, str, int, tuple[int, int, int, int]], ...] = (
    ("chelsea", "chelsea", 285, (0, 0, 400, 300)),  # Egyptian cat: the whole head
    ("coffee", "coffee", 967, (172, 18, 410, 305)),  # espresso: the cup
    ("rocket", "rocket", 657, (305, 126, 338, 408)),  # missile: the rocket on its pad
    ("motorcycle", "stereo_motorcycle", 665, (93, 90, 685, 455)),  # moped: the motorcycle
)

METRICS = ("localization", "pointing", "deletion", "insertion", "ad", "ic", "road", "sanity")
# metrics that explain the ground-truth class / the predicted class
_GT_METRICS = {"localization", "pointing"}
_PRED_METRICS = {"deletion", "insertion", "ad", "ic", "road"}

# column -> (header, lower is better?) in display order; absent columns are left out
COLUMNS: dict[str, tuple[str, bool | None]] = {
    "top1_cls_err": ("top-1 cls err %", True),
    "topk_cls_err": ("top-K cls err %", True),
    "top1_loc_err": ("top-1 loc err %", True),
    "topk_loc_err": ("top-K loc err %", True),
    "gt_known_loc_acc": ("GT-known loc %", False),
    "maxboxacc": ("MaxBoxAcc %", False),
    "maxboxacc_best_threshold": ("MaxBoxAcc best tau", None),
    "maxboxacc_v2": ("MaxBoxAccV2 %", False),
    "pxap": ("PxAP %", False),
    "pointing_acc": ("pointing %", False),
    "deletion_auc": ("deletion AUC", True),
    "insertion_auc": ("insertion AUC", False),
    "average_drop": ("AD %", True),
    "increase_in_confidence": ("IC %", False),
    "road_morf": ("ROAD MoRF", True),
    "road_lerf": ("ROAD LeRF", False),
    "road_combined": ("ROAD (LeRF-MoRF)/2", False),
    "sanity_spearman": ("sanity Spearman", True),
    "sanity_ssim": ("sanity SSIM", True),
    "sanity": ("sanity check", None),
    "seconds_per_image": ("s / image", True),
}


# columns whose box is the CAM paper's (threshold x max) / Choe et al.'s min-max sweep
_AT_MAX = frozenset({"top1_loc_err", "topk_loc_err", "gt_known_loc_acc"})
_MIN_MAX = frozenset({"maxboxacc", "maxboxacc_best_threshold", "maxboxacc_v2", "pxap"})


@dataclass
class Evaluation:
    """The table of an evaluation: ``rows[method][column]``; see :data:`COLUMNS` for the names.

    ``images`` counts the images evaluated; ``skipped`` lists the ones that could not be used
    (``{"path": ..., "reason": ...}``), which are in no number of the table. ``per_image[method]``
    holds one record per image with a box: its path (``key``), label, top-1 prediction, the CAM-paper
    ``box`` in stored-image pixels (the box ``camlens explain`` draws) and its best ``iou``.
    ``rows[m]["seconds_per_image"]`` is wall time per image of the pass: the shared stages (waiting for
    data, the predictions' forward) plus method m's own (its call, its metrics). ``seconds`` sums the stages
    over the batches (``data``, ``forward``, ``explain``, ``localization``, ``faithfulness``, ``write``,
    ``wall``); with several processes, over all of them.
    """

    methods: list[str]
    rows: dict[str, dict[str, Any]]
    images: int
    model: str = ""
    dataset: str = ""
    files: dict[str, str] = field(default_factory=dict)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    topk: int = 5
    skipped: list[dict[str, str]] = field(default_factory=list)
    per_image: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    threshold: float = 0.2
    seconds: dict[str, float] = field(default_factory=dict)

    def header(self, column: str) -> str:
        """Display name of a column (``topk_loc_err`` -> ``top-5 loc err % [0.2 max]``).

        Box columns name their normalisation: ``[0.2 max]`` is the CAM paper's box (pixels above 0.2 x
        the map's max, :mod:`camlens.geometry`), ``[min-max]`` Choe et al.'s threshold sweep over the
        min-max normalised map.
        """
        name = COLUMNS[column][0].replace("top-K", f"top-{self.topk}")
        if column in _AT_MAX:
            return f"{name} [{self.threshold:g} max]"
        if column in _MIN_MAX:
            return f"{name} [min-max]"
        return name

    @property
    def columns(self) -> list[str]:
        present = {c for row in self.rows.values() for c, v in row.items() if v is not None}
        return [c for c in COLUMNS if c in present]

    def markdown(self) -> str:
        """The table as Markdown: methods x numbers; arrows say which direction is better."""
        cols = self.columns
        head = ["method"] + [self.header(c) + {True: " ↓", False: " ↑", None: ""}[COLUMNS[c][1]] for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(cols) + "|"]
        for m in self.methods:
            cells = [_fmt(self.rows[m].get(c), percent="%" in COLUMNS[c][0]) for c in cols]
            lines.append("| " + " | ".join([m, *cells]) + " |")
        return "\n".join(lines)

    def csv(self) -> str:
        cols = self.columns
        lines = [",".join(["method", *cols])]
        for m in self.methods:
            lines.append(",".join([m] + ["" if self.rows[m].get(c) is None else str(self.rows[m][c]) for c in cols]))
        return "\n".join(lines) + "\n"

    def write(self, out: str | Path) -> dict[str, str]:
        """Write ``table.csv``, ``table.md`` and ``results.json`` into ``out``; returns their paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "table.csv", "markdown": out / "table.md", "json": out / "results.json"}
        paths["csv"].write_text(self.csv())
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        title = f"# camlens evaluate: {self.model} on {self.dataset} ({self.images} images{skipped})\n\n"
        paths["markdown"].write_text(title + self.markdown() + "\n")
        self.files.update({k: str(v) for k, v in paths.items()})
        doc = {
            "model": self.model,
            "dataset": self.dataset,
            "images": self.images,
            "methods": self.methods,
            "topk": self.topk,
            "box_threshold": {"value": self.threshold, "of": "the max of the ReLU'd map at the image's size"},
            "rows": self.rows,
            "files": self.files,
            "skipped": self.skipped,
            "per_image": self.per_image,
            "seconds": self.seconds,
        }
        # strict JSON (no NaN / Infinity tokens, which strict readers reject): a non-finite number is null
        paths["json"].write_text(json.dumps(strict(doc), indent=1, allow_nan=False))
        return {k: str(v) for k, v in paths.items()}


def _fmt(v: Any, percent: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "pass" if v else "**fail**"
    if isinstance(v, float):
        return f"{v:.1f}" if percent else f"{v:.3f}"
    return str(v)


def _parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    aliases = {"loc": "localization", "localisation": "localization", "pointing-game": "pointing"}
    names = [aliases.get(n, n) for n in names]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
    if not names:
        raise ValueError(f"no metric given; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def demo_dataset(folder: str | Path) -> Path:
    """Write the built-in localisation set (4 scikit-image photos, hand-drawn boxes) as PNGs + ``demo.csv``.

    Returns the CSV's path, readable by :func:`camlens.datasets.read_csv`. A smoke test of the
    pipeline on real photos, not a benchmark: four images say nothing statistically.
    """
    try:
        from skimage import data as photos
    except ImportError as err:
        raise ValueError("the demo data set uses scikit-image's photos: pip install scikit-image") from err
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,class,x0,y0,x1,y1"]
    for stem, name, label, box in DEMO_PHOTOS:
        pixels = getattr(photos, name)()
        Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).save(folder / f"{stem}.png")
        lines.append(f"{stem}.png,{label}," + ",".join(map(str, box)))
    path = folder / "demo.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate(
    model: Any,
    data: Any,
    methods: str | Sequence[str] = ("gradcam",),
    *,
    metrics: str | Sequence[str] = ("localization",),
    layer: str | None = None,
    topk: int = 5,
    threshold: float = 0.2,
    batch_size: int = 16,
    workers: int | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    examples: int = 6,
    device: str | torch.device | None = None,
    steps: int = 20,
    sanity_images: int = 2,
    method_options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    max_pixels: int | None = MAX_PIXELS,
    resume: bool = True,
) -> Evaluation:
    """Evaluate ``methods`` on ``data`` with ``metrics``; see the module docstring for the protocol.

    An image that cannot be used (unreadable, truncated, over ``max_pixels``, a decompression bomb, or not
    matching its annotation) is skipped with one line on stderr (``camlens evaluate: skipped image PATH:
    REASON``), listed in :attr:`Evaluation.skipped` and left out of every number; the run goes on. A map or
    score that is NaN or infinite for an image gives one warning naming the image; such map values count as 0
    for localisation, and averages that include a non-finite score are written as null.

    Args:
        model: a :class:`camlens.zoo.ModelBundle` (its input size, normalisation and class names are
            used) or an ``nn.Module`` taking 224x224 ImageNet-normalised images.
        data: a :class:`camlens.datasets.LocalizationSet` or a path :func:`camlens.datasets.open_dataset` reads.
        methods: registered method names (a list or ``"cam,gradcam"``).
        metrics: among :data:`METRICS`. ``localization``: the CAM paper's classification and
            localisation errors, GT-known localisation, MaxBoxAcc(V2), PxAP when masks exist;
            ``pointing``: pointing game; ``deletion``/``insertion``/``ad``/``ic``/``road``: faithfulness
            of the map of the predicted class; ``sanity``: model-randomisation check on the first
            ``sanity_images`` images.
        topk: K of the top-K errors (the CAM paper: 5), >= 1.
        threshold: the CAM paper's box threshold, a fraction of the map's maximum in (0, 1].
        batch_size: images per batch, >= 1.
        workers: DataLoader worker processes (0: read images in this process; ``None``: one when there is more
            than one batch, so decoding overlaps the model).
        limit: evaluate only the first ``limit`` images (>= 1; ``None``: all).
        out: folder for the table, example pictures and curve plots (nothing written if ``None``), and for
            ``progress/``: one record per batch, written as it finishes. The same call again continues a killed
            run (it says how many images it skips) and gives the table of an uninterrupted run; a run with
            another model, method set, data set or setting there is refused (ValueError).
        device: where the model, the maps and the metrics' forwards run (``"cuda"``, ``"cuda:1"``, ``"mps"``);
            the threshold sweeps run on the CPU (numpy / scipy).
        examples: example pictures per method (0: none).
        steps: steps of the deletion / insertion curves, >= 1.
        sanity_images: images of the sanity check, >= 1.
        method_options: per method name, options for its constructor (``{"scorecam": {"batch_size": 32}}``).
        max_pixels: refuse (skip) images with more pixels than this, checked from the file's header before
            decoding (``None``: no limit).
        resume: with ``out``, keep per-batch records in ``out/progress`` and continue from them (default).
            ``False``: no records, the files of ``out`` are simply rewritten (for a caller that evaluates a
            freshly trained model into the same folder each time, as ``camlens bench wsol`` does).

    Under ``torch.distributed`` (e.g. ``torchrun``; the process group initialised by the caller, as the CLI
    does) the batches are shared round-robin over the ranks, each image exactly once; every rank returns the
    merged table, and rank 0 alone draws the pictures, runs the sanity check and writes the files.

    Raises:
        ValueError: an argument out of range, unknown method or metric, a data set without labels for
            localisation metrics, no image that could be read, or ``out`` holding another run.
    """
    import camlens
    from camlens import data as datasets
    from camlens import zoo

    _check_arguments(limit, batch_size, workers, steps, examples, topk, threshold, sanity_images, max_pixels)
    wanted = _parse_metrics(metrics)
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    if not names:
        raise ValueError(f"no method given; choose from {', '.join(camlens.methods())}")
    classes = [camlens.get_method(n) for n in names]  # unknown names fail here, before any work
    bundle = model if isinstance(model, zoo.ModelBundle) else zoo.ModelBundle(model, type(model).__name__)
    net = bundle.model
    if device is not None:
        net = net.to(device)
    param = next(net.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    if not isinstance(data, datasets.LocalizationSet):
        data = datasets.open_dataset(data)
    samples = list(data.samples)[:limit]
    if not samples:
        raise ValueError("the data set is empty")
    options = method_options or {}
    explainers = {}
    for name, cls in zip(names, classes):
        kwargs = options.get(cls.name, options.get(name, {}))
        explainers[cls.name] = cls(net, layer if cls.takes_layer else None, **kwargs)
    names = list(explainers)

    need_gt = bool(_GT_METRICS & set(wanted))
    need_pred = bool(_PRED_METRICS & set(wanted))
    rank, world = _distributed()
    outdir = None if out is None else Path(out)
    subset = datasets.LocalizationSet(samples, data.classes, data.root, data.format)
    images = datasets.ImageDataset(
        subset, size=bundle.size, mean=bundle.mean, std=bundle.std, max_pixels=max_pixels, skip_bad=True
    )
    settings = {
        "metrics": wanted,
        "topk": topk,
        "threshold": threshold,
        "batch_size": batch_size,
        "steps": steps,
        "layer": layer,
        "max_pixels": max_pixels,
    }
    progress_files = None
    if outdir is not None and resume:
        progress_files = _Progress(outdir, _fingerprint(bundle, net, names, options, samples, settings), rank)
    # batch j holds images [j * batch_size, (j + 1) * batch_size) in every run, whatever the number of processes,
    # so a batch's numbers never depend on how the work was shared; rank r takes batches r, r + world, ...
    n_batches = -(-len(samples) // batch_size)
    mine = list(range(rank, n_batches, world))
    records = progress_files.done(mine, batch_size, names) if progress_files is not None else {}
    todo = [j for j in mine if j not in records]
    loaded = bool(records) or world > 1  # with several ranks, another rank's records may have been read

    from tqdm.auto import tqdm

    def batch_size_of(j: int) -> int:
        return min(batch_size, len(samples) - j * batch_size)

    if records:
        tqdm.write(
            f"camlens evaluate: resuming in {outdir}: {sum(map(batch_size_of, records))} images done before, "
            f"skipping them ({sum(map(batch_size_of, todo))} to go)",
            file=sys.stderr,
        )
    loader = torch.utils.data.DataLoader(
        images,
        batch_sampler=[list(range(j * batch_size, j * batch_size + batch_size_of(j))) for j in todo],
        num_workers=_workers(workers, len(todo)),
        collate_fn=datasets.collate,
        pin_memory=dev.type == "cuda",
    )
    runner = _Batches(net, dev, explainers, samples, images, wanted, topk, threshold, steps, need_gt, need_pred)
    bar = tqdm(
        total=sum(map(batch_size_of, mine)),
        initial=sum(map(batch_size_of, records)),
        desc="camlens evaluate" if world == 1 else f"camlens evaluate [rank {rank}/{world}]",
        unit="img",
        file=sys.stderr,
        disable=not progress or rank != 0,
        smoothing=0.1,
    )
    try:
        waited = time.perf_counter()
        for j, loaded in zip(todo, loader):
            record = runner.batch(j, loaded, time.perf_counter() - waited)
            if progress_files is not None:
                start = time.perf_counter()
                progress_files.write(j, record)
                record["seconds"]["write"] = time.perf_counter() - start
            records[j] = record
            bar.update(batch_size_of(j))
            waited = time.perf_counter()
    finally:
        bar.close()
    ordered = _gather(records, world)
    try:
        result = _reduce(ordered, names, wanted, threshold, topk, bundle.name, str(getattr(data, "root", "")))
    except (KeyError, TypeError, IndexError) as err:  # only a record read back from disk can be malformed inside
        if not loaded:
            raise
        raise ValueError(
            f"{outdir}/progress holds a damaged batch record ({type(err).__name__}: {err}); "
            "delete that folder to start again"
        ) from None
    if rank != 0:  # rank 0 draws the pictures, runs the sanity check and writes the table
        return result
    first = [i for r in ordered for i in r["index"]]
    preds = [p for r in ordered for p in r["pred"]]
    if "sanity" in wanted:
        x, kept = _inputs(images, first[:sanity_images])
        predicted = dict(zip(first, preds))
        pred = torch.tensor([predicted[i] for i in kept], device=dev)
        if kept:
            _sanity(names, explainers, net, layer, (x.to(dev), pred), result.rows, outdir, progress, options)
    if outdir is not None:
        pictures = _pictures(runner, first[:examples], preds[:examples]) if need_gt and examples else {}
        result.files.update(_write_pictures(outdir, pictures, result.curves, data.root, max_pixels))
        result.write(outdir)
    return result


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed process group, or (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(records: dict[int, dict[str, Any]], world: int) -> list[dict[str, Any]]:
    """Every process's batch records, in batch order (each batch was done by exactly one process)."""
    if world > 1:
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, records)
        records = {j: r for part in parts for j, r in part.items()}
    return [records[j] for j in sorted(records)]


def _workers(workers: int | None, batches: int) -> int:
    """DataLoader worker processes: ``workers``, or by default one when there is more than one batch to read.

    One worker decodes the next batch while the model runs on this one (measured in benchmarks/bench_evaluate.py
    and docs/benchmarks.md); more workers compete with the model for the cores of the machine.
    """
    if workers is not None:
        return workers
    return 1 if batches > 1 and (os.cpu_count() or 1) > 1 else 0


def _fingerprint(
    bundle: Any, net: torch.nn.Module, names: list[str], options: dict[str, Any], samples: list[Any], settings: Any
) -> dict[str, str]:
    """What a resumed run must share with the run it continues: the model (name and a hash of its weights),
    the methods with their options, the data set (paths, labels, boxes, masks) and the settings of the numbers.
    Not the device nor the number of processes: those change only how the work is done."""
    weights = hashlib.sha256()
    for key, tensor in net.state_dict().items():
        weights.update(key.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    files = hashlib.sha256()
    for s in samples:
        masks = [str(m) for m in s.masks] if s.masks else []
        files.update(repr((str(s.path), int(s.label), np.asarray(s.boxes).tolist(), masks, str(s.ignore))).encode())
    return {
        "model": f"{bundle.name} (weights sha256 {weights.hexdigest()[:16]})",
        "methods": json.dumps({n: repr(options.get(n, {})) for n in names}),
        "data set": f"{len(samples)} images (sha256 {files.hexdigest()[:16]})",
        "settings": json.dumps(settings, default=str),
    }


class _Progress:
    """The per-batch results of a run under ``out/progress``, so a killed run continues where it stopped.

    ``run.json`` holds the run's fingerprint (:func:`_fingerprint`); a run whose fingerprint differs is refused
    (ValueError naming what changed). ``batch-NNNNNN.json`` holds one batch's record, written to a temporary
    file and renamed (atomic on POSIX), so a kill leaves whole records or none. With several processes rank 0
    checks the fingerprint and tells the others.
    """

    def __init__(self, out: Path, fingerprint: dict[str, str], rank: int) -> None:
        self.folder = inside(out, "progress")
        problem = self._check(fingerprint) if rank == 0 else None
        if _distributed()[1] > 1:
            message = [problem]
            torch.distributed.broadcast_object_list(message, src=0)
            problem = message[0]
        if problem:
            raise ValueError(problem)

    def _check(self, fingerprint: dict[str, str]) -> str | None:
        path = self.folder / "run.json"
        for leftover in self.folder.glob(".batch-*.tmp"):  # a write cut short by a kill: never a record
            leftover.unlink()
        if path.exists():
            try:
                earlier = json.loads(path.read_text())
            except (ValueError, OSError):
                earlier = {}
            changed = [k for k in fingerprint if earlier.get(k) != fingerprint[k]]
            if changed:
                return (
                    f"{self.folder.parent} holds an evaluation with another {' and '.join(changed)} "
                    f"({'; '.join(f'{k}: {earlier.get(k)} there, {fingerprint[k]} now' for k in changed[:1])}); "
                    "give another --out folder, or delete that folder to start again"
                )
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._replace(path, json.dumps(fingerprint, indent=1))
        return None

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        """Write ``path`` whole or not at all: a temporary file renamed over it (atomic on POSIX)."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)

    def done(self, batches: list[int], batch_size: int, names: list[str]) -> dict[int, dict[str, Any]]:
        """The records of ``batches`` already written. A file that is not a record of this run (edited, or
        from a camlens without records) is named on stderr and its batch done again."""
        from tqdm.auto import tqdm

        found = {}
        for j in batches:
            path = self.folder / f"batch-{j:06d}.json"
            if not path.exists():
                continue
            try:
                record = json.loads(path.read_text())
            except (ValueError, OSError):
                record = None
            if _is_record(record, j, batch_size, names):
                found[j] = record
            else:
                tqdm.write(
                    f"camlens evaluate: {path} is not a record of this run; doing that batch again", file=sys.stderr
                )
        return found

    def write(self, j: int, record: dict[str, Any]) -> None:
        self._replace(inside(self.folder, f"batch-{j:06d}.json"), json.dumps(record))


def _is_record(record: Any, j: int, batch_size: int, names: list[str]) -> bool:
    """Whether ``record`` has the shape of batch ``j``'s record (its numbers are this run's by the fingerprint)."""
    if not isinstance(record, dict) or record.get("batch") != j:
        return False
    index, pred, methods = record.get("index"), record.get("pred"), record.get("methods")
    if not (isinstance(index, list) and isinstance(pred, list) and isinstance(methods, dict)):
        return False
    if not all(isinstance(i, int) and j * batch_size <= i < (j + 1) * batch_size for i in index):
        return False
    if not isinstance(record.get("skipped"), list) or not isinstance(record.get("seconds"), dict):
        return False
    if not isinstance(record.get("wall"), (int, float)):
        return False
    if index and (len(pred) != len(index) or not isinstance(record.get("k"), int)):
        return False
    return set(methods) <= set(names) and all(isinstance(m, dict) for m in methods.values())


def _encode(a: Any) -> dict[str, Any]:
    """An array as JSON (dtype, shape, values: float reprs round-trip exactly), for :func:`_decode`."""
    a = np.asarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.ravel().tolist()}


def _decode(d: dict[str, Any]) -> np.ndarray:
    return np.asarray(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


class _Batches:
    """One batch of the pass: predictions, each method's maps and metrics -> a JSON-ready record of everything
    the table needs (meter states, pointing hits, faithfulness scores, top-1 predictions, seconds per stage)."""

    def __init__(self, net, dev, explainers, samples, images, wanted, topk, threshold, steps, need_gt, need_pred):
        from camlens.data import load_masks

        self.net, self.dev, self.explainers, self.samples, self.images = net, dev, explainers, samples, images
        self.wanted, self.topk, self.threshold, self.steps = wanted, topk, threshold, steps
        self.need_gt, self.need_pred = need_gt, need_pred
        self.load_masks = load_masks
        self.warned: set[str] = set()  # images already warned about (one warning per image)
        # Without faithfulness metrics every method explains the label only, so when the first method is a layer
        # method its forward (Explanation.output: the model's output on the batch) gives the predictions: one
        # forward per batch fewer. Pixel methods may run the model in another mode (LRP rules), so not theirs.
        first = next(iter(explainers.values()))
        self.reuse = need_gt and not need_pred and not first.explains_pixels

    def _skip(self, record: dict[str, Any], path: str, reason: str) -> None:
        from tqdm.auto import tqdm

        record["skipped"].append({"path": path, "reason": reason})
        tqdm.write(f"camlens evaluate: skipped image {path}: {reason}", file=sys.stderr)

    def _predictions(self, logits: torch.Tensor, paths: list[str]) -> torch.Tensor:
        _warn_nonfinite(logits, paths, self.warned, "the model's scores for this image are NaN or infinite")
        return logits.topk(min(self.topk, logits.shape[1]), dim=1).indices.clone()

    def batch(self, j: int, loaded: Any, waited: float) -> dict[str, Any]:
        from PIL import Image

        began = time.perf_counter()
        x, index = loaded
        seconds = {"data": waited, "forward": 0.0}
        record: dict[str, Any] = {"batch": j, "index": [], "pred": [], "skipped": [], "seconds": seconds}
        record["methods"] = {}
        for marker in loaded.skipped:
            self._skip(record, marker.path, marker.reason)
        # per image, once for all methods: the sample, its stored (W, H), its masks (PxAP)
        keep, batch, masks = [], [], []
        for position, i in enumerate(index.tolist()):
            sample = self.samples[i]
            try:
                size = loaded.sizes[position] or self.images.original_size(i)
                mask = self.load_masks(sample) if self.need_gt and sample.masks else (None, None)
            except (ValueError, OSError, Image.DecompressionBombError) as err:  # DatasetError is a ValueError
                self._skip(record, str(sample.path), getattr(err, "problem", str(err)))
                continue
            keep.append(position)
            batch.append((sample, size))
            masks.append(mask)
        if not batch:
            record["wall"] = waited + time.perf_counter() - began
            return record
        x = (x[keep] if len(keep) < len(index) else x).to(self.dev, non_blocking=True)
        record["index"] = [int(index[p]) for p in keep]
        paths = [str(s.path) for s, _ in batch]
        labels = torch.tensor([s.label for s, _ in batch], device=self.dev)
        if self.need_gt and bool((labels < 0).any()):
            raise ValueError("localisation metrics need a class label for every image; this data set has none")
        seconds["data"] += time.perf_counter() - began
        top = None
        if not self.reuse:
            start = time.perf_counter()
            with torch.inference_mode():
                logits = self.net(x)
            top = self._predictions(logits, paths)
            seconds["forward"] = time.perf_counter() - start
        columns = [labels] if self.need_gt else []
        if self.need_pred:
            assert top is not None
            columns.append(top[:, 0])
        for name, explainer in self.explainers.items() if columns else ():
            stages = record["methods"].setdefault(name, {})
            start = time.perf_counter()
            with _nonfinite_named_by_caller():  # warned below once per image, by file name
                exp = explainer(x, torch.stack(columns, 1))
            stages["explain"] = time.perf_counter() - start
            if top is None:
                top = self._predictions(exp.output, paths)
            _warn_nonfinite(exp.raw, paths, self.warned, f"the {name} map has NaN or infinite values (counted as 0)")
            if self.need_gt:
                start = time.perf_counter()
                stages.update(self._localize(exp, batch, masks, labels, top))
                stages["localization"] = time.perf_counter() - start
            if self.need_pred:
                start = time.perf_counter()
                stages["faith"] = self._faithfulness(name, exp, x, top[:, 0], paths)
                stages["faithfulness"] = time.perf_counter() - start
        if top is None:  # only the sanity check: predictions alone
            with torch.inference_mode():
                top = self._predictions(self.net(x), paths)
        record["pred"] = top[:, 0].tolist()
        record["k"] = int(top.shape[1])
        record["wall"] = waited + time.perf_counter() - began
        return record

    def _localize(self, exp, batch, masks, labels, top) -> dict[str, Any]:
        from camlens.metrics.faithfulness import pointing_game

        meter = _meters(top.shape[1], self.threshold)
        hits = []
        for b, ((sample, (width, height)), (mask, ignore)) in enumerate(zip(batch, masks)):
            cam = _to_original(exp.raw[b, 0], (height, width))
            if "localization" in self.wanted and len(sample.boxes):
                meter.add(
                    cam, sample.boxes, int(labels[b]), top[b].tolist(), mask=mask, ignore=ignore, key=str(sample.path)
                )
            elif "localization" in self.wanted and mask is not None:  # mask-only (OpenImages): PxAP only
                meter.add_mask(cam, mask, ignore=ignore)
            if "pointing" in self.wanted and len(sample.boxes):
                hits.append(bool(pointing_game(cam[None], [sample.boxes])[0]))
        return {"loc": meter.state_dict(), "pointing": hits}

    def _faithfulness(self, name, exp, x, pred, paths) -> dict[str, Any]:
        store: dict[str, list[np.ndarray]] = {}
        maps = exp.maps[:, -1].nan_to_num(0.0, 0.0, 0.0)
        _faithfulness_batch(name, self.net, x, maps, pred, store, self.wanted, self.steps)
        # this batch's per-image scores (the curves' fractions are shared, stored once)
        scores = [
            torch.as_tensor(np.asarray(v[-1], dtype=np.float64)).reshape(len(paths), -1)
            for key, v in store.items()
            if not key.endswith("_fractions")
        ]
        _warn_nonfinite(
            torch.cat(scores, 1),
            paths,
            self.warned,
            f"a {name} faithfulness score is NaN or infinite (averages that include it are null)",
        )
        return {key: [_encode(v) for v in values] for key, values in store.items()}


def _reduce(
    records: list[dict[str, Any]],
    names: list[str],
    wanted: list[str],
    threshold: float,
    topk: int,
    model: str,
    dataset: str,
) -> Evaluation:
    """The table from the batch records, in batch order: the numbers of one uninterrupted single-process pass
    (meters merged in order, faithfulness scores concatenated in order before any mean)."""
    from camlens.metrics.localization import LocalizationMeter

    evaluated = sum(len(r["index"]) for r in records)
    skipped = [s for r in records for s in r["skipped"]]
    if not evaluated:
        first = skipped[0] if skipped else {"path": "", "reason": "no image"}
        raise ValueError(
            f"no image could be read: first: {first['path']}: {first['reason']} ({len(skipped)} images skipped)"
        )
    k = next(r["k"] for r in records if r["index"])
    stages = dict.fromkeys(("data", "forward", "explain", "localization", "faithfulness", "write"), 0.0)
    shared = 0.0
    for r in records:
        for key in ("data", "forward", "write"):
            stages[key] += r["seconds"].get(key, 0.0)
        spent = sum(
            m.get(key, 0.0) for m in r["methods"].values() for key in ("explain", "localization", "faithfulness")
        )
        shared += r["wall"] + r["seconds"].get("write", 0.0) - spent
        for m in r["methods"].values():
            for key in ("explain", "localization", "faithfulness"):
                stages[key] += m.get(key, 0.0)
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    per_image: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        done = [r["methods"][name] for r in records if name in r["methods"]]
        row: dict[str, Any] = {}
        meter = _meters(k, threshold)
        for m in done:
            if "loc" in m:
                meter.merge(LocalizationMeter(topk=k, box_threshold=threshold).load_state_dict(m["loc"]))
        per_image[name] = list(meter.per_image)
        if "localization" in wanted and (len(meter) or meter.n_masks):
            loc = meter.compute()
            if f"top{k}_cls_err" in loc:
                loc["topk_cls_err"], loc["topk_loc_err"] = loc[f"top{k}_cls_err"], loc[f"top{k}_loc_err"]
            row.update({key: v for key, v in loc.items() if key in COLUMNS})
        if "pointing" in wanted:
            hits = [h for m in done for h in m.get("pointing", [])]
            row["pointing_acc"] = 100.0 * float(np.mean(hits)) if hits else None
        store: dict[str, list[np.ndarray]] = {}
        for m in done:
            for key, values in m.get("faith", {}).items():
                arrays = [_decode(v) for v in values]
                if key.endswith("_fractions"):
                    store.setdefault(key, arrays)
                else:
                    store.setdefault(key, []).extend(arrays)
        row.update(_faithfulness_summary(store, curves.setdefault(name, {})))
        # wall time of the pass per image: the shared stages (reading, predictions) and this method's own
        own = sum(m.get(key, 0.0) for m in done for key in ("explain", "localization", "faithfulness"))
        row["seconds_per_image"] = (shared + own) / evaluated
        rows[name] = row
    result = Evaluation(
        names,
        rows,
        evaluated,
        model,
        dataset,
        curves=curves,
        topk=k,
        skipped=skipped,
        per_image=per_image,
        threshold=threshold,
    )
    result.seconds = {**stages, "wall": sum(r["wall"] + r["seconds"].get("write", 0.0) for r in records)}
    return result


def _inputs(images: Any, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
    """The model inputs of images ``indices`` read again (deterministic), and which of them still read."""
    items = [item for item in (images[i] for i in indices) if not isinstance(item, Skipped)]
    return torch.stack([x for x, _ in items]) if items else torch.zeros(0), [int(i) for _, i in items]


def _pictures(runner: _Batches, indices: list[int], preds: list[int]) -> dict[str, list[Any]]:
    """Example pictures of the first evaluated images: each method's label map, recomputed for these images
    alone (their records hold numbers, not maps), its CAM-paper box, and whether the top-1 class was right."""
    from camlens.geometry import boxes_from_map

    pictures: dict[str, list[Any]] = {n: [] for n in runner.explainers}
    x, kept = _inputs(runner.images, indices)
    if not kept:
        return pictures
    predicted = dict(zip(indices, preds))
    labels = torch.tensor([runner.samples[i].label for i in kept], device=runner.dev)
    for name, explainer in runner.explainers.items():
        with _nonfinite_named_by_caller():
            exp = explainer(x.to(runner.dev), labels[:, None])
        for b, i in enumerate(kept):
            width, height = runner.images.original_size(i)
            cam = _to_original(exp.raw[b, 0], (height, width))
            box = boxes_from_map(cam, threshold=runner.threshold, mode="largest")
            pictures[name].append((runner.samples[i], cam, box, predicted[i] == runner.samples[i].label))
    return pictures


def _check_arguments(
    limit: int | None,
    batch_size: int,
    workers: int | None,
    steps: int,
    examples: int,
    topk: int,
    threshold: float,
    sanity_images: int,
    max_pixels: int | None,
) -> None:
    """ValueError naming the argument, what was received and the fix, for any value out of range."""
    checks: list[tuple[str, Any, bool, str, str]] = [
        (
            "limit",
            limit,
            limit is None or limit >= 1,
            "None or >= 1",
            "pass how many images to evaluate, or None for all",
        ),
        ("batch_size", batch_size, batch_size >= 1, ">= 1", "pass the number of images per batch, e.g. 16"),
        (
            "workers",
            workers,
            workers is None or workers >= 0,
            ">= 0",
            "pass 0 to read images in this process, a number of workers, or None for the default",
        ),
        ("steps", steps, steps >= 1, ">= 1", "pass the number of deletion / insertion steps, e.g. 20"),
        ("examples", examples, examples >= 0, ">= 0", "pass the number of example pictures per method, 0 for none"),
        ("topk", topk, topk >= 1, ">= 1", "pass K of the top-K errors, e.g. 5"),
        (
            "threshold",
            threshold,
            math.isfinite(threshold) and 0 < threshold <= 1,
            "a finite number in (0, 1]",
            "pass a fraction of the map's maximum, e.g. 0.2",
        ),
        ("sanity_images", sanity_images, sanity_images >= 1, ">= 1", "pass how many images to check, e.g. 2"),
        (
            "max_pixels",
            max_pixels,
            max_pixels is None or max_pixels >= 1,
            "None or >= 1",
            "pass a pixel budget, or None for no limit",
        ),
    ]
    for name, value, ok, rule, fix in checks:
        if not ok:
            raise ValueError(f"{name} must be {rule}, got {value!r}; {fix}")


def _warn_nonfinite(values: torch.Tensor, paths: list[str], warned: set[str], what: str) -> None:
    """One warning per image (``values`` has one row per image) with a NaN or infinite value, naming the file."""
    bad = ~torch.isfinite(values.detach()).reshape(len(paths), -1).all(1)
    for path, is_bad in zip(paths, bad.tolist()):
        if is_bad and path not in warned:
            warned.add(path)
            warnings.warn(f"{path}: {what}", RuntimeWarning, stacklevel=3)


def _meters(topk: int, threshold: float) -> Any:
    from camlens.metrics.localization import LocalizationMeter

    return LocalizationMeter(topk=topk, box_threshold=threshold)


def _to_original(raw: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The map the box is computed on, at the stored image's (H0, W0): :func:`camlens.geometry.original_maps`.

    NaN and infinite values (warned about by :func:`evaluate`) count as 0, so they cannot spread over the map.
    """
    from camlens.geometry import original_maps

    return original_maps(raw, size).cpu().numpy()


def _faithfulness_batch(name, net, x, maps, pred, store, wanted, steps) -> None:
    from camlens.metrics import faithfulness as fm

    maps = maps.float()
    if "deletion" in wanted:
        curve = fm.deletion_curve(net, x, maps, pred, steps=steps)
        store.setdefault("deletion", []).append(curve.scores)
        store.setdefault("deletion_fractions", [curve.fractions])
        store.setdefault("deletion_auc", []).append(curve.auc)
    if "insertion" in wanted:
        curve = fm.insertion_curve(net, x, maps, pred, steps=steps)
        store.setdefault("insertion", []).append(curve.scores)
        store.setdefault("insertion_fractions", [curve.fractions])
        store.setdefault("insertion_auc", []).append(curve.auc)
    if "ad" in wanted or "ic" in wanted:
        drop, increase = fm.average_drop_increase(net, x, maps, pred)
        store.setdefault("average_drop", []).append(np.asarray(drop, dtype=float))
        store.setdefault("increase_in_confidence", []).append(np.asarray(increase, dtype=float))
    if "road" in wanted:
        for order in ("morf", "lerf"):
            curve = fm.road(net, x, maps, pred, order=order)
            store.setdefault(f"road_{order}", []).append(curve.scores)
            store.setdefault(f"road_{order}_fractions", [curve.fractions])


def _faithfulness_summary(store: dict[str, list[np.ndarray]], curves: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key in ("deletion_auc", "insertion_auc"):
        if key in store:
            row[key] = float(np.concatenate(store[key]).mean())
    if "average_drop" in store:
        row["average_drop"] = float(np.concatenate(store["average_drop"]).mean())
        row["increase_in_confidence"] = 100.0 * float(np.concatenate(store["increase_in_confidence"]).mean())
    for curve in ("deletion", "insertion", "road_morf", "road_lerf"):
        if curve in store:
            mean = np.concatenate(store[curve]).mean(0)
            fractions = np.asarray(store[f"{curve}_fractions"][0], dtype=float)
            curves[curve] = {"fractions": fractions.tolist(), "scores": mean.tolist()}
            if curve.startswith("road"):
                row[curve] = float(mean.mean())  # mean score over the removal percentages
    if "road_morf" in row and "road_lerf" in row:
        # pytorch-grad-cam's ROADCombined: (LeRF - MoRF) / 2, averaged over the percentages
        row["road_combined"] = (row["road_lerf"] - row["road_morf"]) / 2
    return row


def _sanity(names, explainers, net, layer, first_batch, rows, outdir, progress, options) -> None:
    from camlens.metrics.sanity import sanity_check

    x, pred = first_batch
    for name in names:
        explainer = explainers[name]
        kwargs = options.get(name, {})
        res = sanity_check(
            net,
            x,
            method=name,
            layer=layer if explainer.takes_layer else None,
            targets=pred,
            mode="cascading",
            progress=progress,
            **kwargs,
        )
        rows[name]["sanity_spearman"] = float(np.asarray(res.spearman)[-1].mean())
        rows[name]["sanity_ssim"] = float(np.asarray(res.ssim)[-1].mean())
        rows[name]["sanity"] = bool(res.passed())
        if outdir is not None:
            res.plot(outdir / f"sanity_{name}.png")


def _write_pictures(
    out: Path,
    pictures: dict[str, list[Any]],
    curves: dict[str, dict[str, Any]],
    root: Path,
    max_pixels: int | None = MAX_PIXELS,
) -> dict[str, str]:
    """Example pictures (map, ground-truth boxes red, predicted box green) and the mean curves.

    Per method: ``examples/METHOD.png`` (the grid) and one picture per image in ``examples/METHOD/``, named
    after the image's path relative to ``root`` by :class:`camlens._paths.NameBook` (image ids are untrusted:
    ``../../x`` or ``...png`` become safe, unique names) and confined to ``out`` by :func:`camlens._paths.inside`.
    """
    from camlens import viz, zoo

    files: dict[str, str] = {}
    rows = []
    for name, items in pictures.items():
        if not items:
            continue
        method = safe_name(name, "method")
        folder = inside(out, "examples", method)
        folder.mkdir(parents=True, exist_ok=True)
        book = NameBook()
        row = []
        for sample, cam, box, correct in items:
            stored = zoo.load_image(sample.path, max_pixels=max_pixels, upright=False)  # the boxes' pixel grid
            label = f"{name} {'top-1 ok' if correct else 'top-1 wrong'}"
            predicted = [int(v) for v in box[0]] if len(box) else None
            picture = viz.example_picture(stored, cam, sample.boxes, predicted, label)
            picture.save(inside(out, "examples", method, book.name(sample.path, root) + ".png"))
            row.append(picture)
        path = inside(out, "examples", f"{method}.png")
        viz.grid(row).save(path)
        files[f"examples_{name}"] = str(path)
        files[f"examples_{name}_images"] = str(folder)
        rows.append(row)
    if rows:
        path = inside(out, "examples.png")
        viz.grid([p for row in rows for p in row], columns=len(rows[0])).save(path)
        files["examples"] = str(path)
    if any(curves.values()):
        files["curves"] = str(viz.plot_curves(curves, out / "curves.png"))
    return files
