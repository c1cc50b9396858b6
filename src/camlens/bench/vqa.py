"""Grad-CAM for visual question answering (the Grad-CAM paper's VQA example), trained here on easy-VQA.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017, section on VQA: a VQA model (CNN image features fused with an LSTM question encoding by a
pointwise product) is explained by Grad-CAM of the answer's score at the CNN's last conv layer, and the maps
are shown as figures. This application measures what the paper shows qualitatively, on data with exact regions:

* data: easy-VQA (the ``easy-vqa`` package; 4000 train and 1000 test 64x64 images, each one coloured shape
  (circle, rectangle or triangle) on a plain light background, 38575 / 9673 questions with 13 answers).
  Every question is about the image's one shape, so the shape's pixels are the region a good map points
  at. They are recovered from the image (:func:`shape_masks`): the background colour is the median of the
  border pixels; a pixel is the shape's when its RGB distance from the background is more than half of the
  image's largest distance (the anti-aliased rim splits at half coverage).
* model (:class:`VQANet`): a 4-conv CNN (stride 4, a 64 x 16 x 16 map from the last conv), a bag-of-words
  question encoder (two linear layers), fusion by the elementwise product of the question vector with the
  image map at every position (the paper's models multiply pooled vectors; multiplying the map keeps the
  product spatial), a 1x1 conv, global average pooling and a linear answer classifier. Trained from
  scratch with cross-entropy on the answers, seeded, a few CPU minutes.
* explanation (:func:`explain_answers`): Grad-CAM of the predicted and the true answer's logit at the
  image CNN's last conv, for each test question (both targets from one batched backward).
* score: the pointing game (Zhang et al., ECCV 2016, sec. 5.1) with the recovered shape as the region
  and no tolerance (:func:`camlens.metrics.faithfulness.pointing_game` with ``masks``): a hit when the
  map's maximum pixel (at the 64x64 input, bilinear upsampling) lies on the shape. Baselines: the centre
  pixel, and a uniformly random pixel (its expected hit rate: the shape's share of the image). Reported
  overall and per question type (shape, colour, yes/no).

Examples:
    >>> from camlens.bench import vqa
    >>> results = vqa.run("out/vqa", seeds=(0,), epochs=1, n_train=500, n_test=200)
    >>> results["summary"]["pointing_pred"]["all"]["mean"]
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camlens._paths import inside
from camlens.bench import _common, tables

__all__ = ["VQANet", "VQASet", "explain_answers", "load", "run", "shape_masks"]

SHAPES = ("circle", "rectangle", "triangle")
KINDS = ("shape", "color", "yes/no")
LAYER = "image"  # the image CNN's last conv block, inside VQANet
# the pointing game's tolerance: 0 (the maximum on the shape) and Zhang et al.'s 15 px at 224 px scaled to 64 px
TOLERANCES = (0.0, 4.0)
# --quick: the plumbing in a few seconds of training (tutorials, tests); the numbers mean little
QUICK = {"n_train": 400, "n_test": 100, "epochs": 2}


def _easy_vqa() -> Any:
    try:
        import easy_vqa
    except ImportError as err:
        raise ImportError(
            "camlens bench vqa needs the easy-vqa package (its images and questions ship inside it, nothing is "
            "downloaded): pip install easy-vqa (or pip install 'camlens[vqa]')"
        ) from err
    return easy_vqa


def tokens(text: str) -> list[str]:
    """The words of a question: lower case, punctuation dropped."""
    return "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()


def kind(answer: str) -> str:
    """The question type from its answer: ``"shape"``, ``"color"`` or ``"yes/no"``."""
    if answer in SHAPES:
        return "shape"
    return "yes/no" if answer in ("yes", "no") else "color"


def shape_masks(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: the pixels of each image's one shape, from (N, 3, H, W) images in [0, 1].

    The background is the median colour of the border pixels; a pixel belongs to the shape when its
    Euclidean RGB distance from it exceeds half of the image's largest distance (the anti-aliased rim is
    split at half coverage). easy-VQA draws exactly one shape on a plain background.
    """
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    background = border.median(dim=2).values[:, :, None, None]
    distance = (images - background).norm(dim=1)
    return distance > 0.5 * distance.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)


@dataclass(eq=False)
class VQASet:
    """Images, their shape masks and the questions about them (one row per question).

    Attributes:
        images: (N, 3, 64, 64) float32 in [0, 1] (8-bit values).
        masks: (N, 64, 64) bool, the shape's pixels (:func:`shape_masks`).
        questions: (Q, V) float32 bag of words (word counts) over ``vocab``.
        image_of: (Q,) int64 row of ``images`` each question is about.
        answers: (Q,) int64 index into ``answer_names``.
        texts: the Q questions as written.
        kinds: the Q question types (:func:`kind`).
        vocab: the words the encoder knows (from the training questions).
        answer_names: easy-VQA's 13 answers.
        image_ids: (N,) easy-VQA's image ids.
    """

    images: torch.Tensor
    masks: torch.Tensor
    questions: torch.Tensor
    image_of: torch.Tensor
    answers: torch.Tensor
    texts: list[str]
    kinds: list[str]
    vocab: tuple[str, ...]
    answer_names: tuple[str, ...]
    image_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def load(split: str, n_images: int | None = None, vocab: Sequence[str] | None = None) -> VQASet:
    """easy-VQA's ``split`` (``"train"`` / ``"test"``): its first ``n_images`` images (by id) and their questions.

    ``vocab``: the encoder's words (pass the training set's to a test set); ``None`` builds it from this split.
    Images are read with :func:`camlens.data.images.load_image` from the package's folder.
    """
    from camlens.data.images import load_image

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    ev = _easy_vqa()
    texts, answers, ids = ev.get_train_questions() if split == "train" else ev.get_test_questions()
    paths = ev.get_train_image_paths() if split == "train" else ev.get_test_image_paths()
    chosen = sorted(paths)[:n_images]
    row = {image_id: i for i, image_id in enumerate(chosen)}
    pixels = np.stack([np.asarray(load_image(paths[i], upright=False)) for i in chosen])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    keep = [q for q, image_id in enumerate(ids) if image_id in row]
    words = tuple(vocab) if vocab is not None else tuple(sorted({w for t in texts for w in tokens(t)}))
    index = {w: i for i, w in enumerate(words)}
    bags = torch.zeros(len(keep), len(words))
    for r, q in enumerate(keep):
        for w in tokens(texts[q]):
            if w in index:
                bags[r, index[w]] += 1
    names = tuple(ev.get_answers())
    return VQASet(
        images=images,
        masks=shape_masks(images),
        questions=bags,
        image_of=torch.tensor([row[ids[q]] for q in keep], dtype=torch.int64),
        answers=torch.tensor([names.index(answers[q]) for q in keep], dtype=torch.int64),
        texts=[texts[q] for q in keep],
        kinds=[kind(answers[q]) for q in keep],
        vocab=words,
        answer_names=names,
        image_ids=list(chosen),
    )


class VQANet(nn.Module):
    """Image CNN x question encoder -> answer logits. ``forward(images, questions)``; see the module docstring.

    ``image``: conv 3->16 stride 2, conv 16->32, max pool 2, conv 32->``width``, conv ``width``->``width``
    (3x3, batch norm, ReLU each): a (B, ``width``, 16, 16) map on 64x64 images, the layer Grad-CAM explains.
    """

    def __init__(self, vocab: int, answers: int, width: int = 64, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        layers: list[tuple[str, nn.Module]] = []
        spec = [(3, 16, 2), (16, 32, 1), (32, width, 1), (width, width, 1)]
        for i, (cin, cout, stride) in enumerate(spec, 1):
            if i == 3:
                layers.append(("pool2", nn.MaxPool2d(2)))
            layers += [
                (f"conv{i}", nn.Conv2d(cin, cout, 3, stride=stride, padding=1)),
                (f"bn{i}", nn.BatchNorm2d(cout)),
                (f"relu{i}", nn.ReLU()),
            ]
        self.image = nn.Sequential(OrderedDict(layers))
        self.question = nn.Sequential(nn.Linear(vocab, width), nn.ReLU(), nn.Linear(width, width))
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU())
        self.classifier = nn.Linear(width, answers)
        self.eval()

    def answer(self, features: torch.Tensor, questions: torch.Tensor) -> torch.Tensor:
        """Answer logits (Q, answers) from image maps (Q, C, h, w) and question bags (Q, V), row by row."""
        fused = self.fuse(features * self.question(questions)[:, :, None, None])
        return self.classifier(fused.mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor, questions: torch.Tensor) -> torch.Tensor:
        return self.answer(self.image(images), questions)


def explain_answers(
    model: nn.Module, images: torch.Tensor, questions: torch.Tensor, targets: Any, method: str = "gradcam"
) -> Any:
    """``camlens.explain`` of ``model(images, questions)`` at the image CNN's last conv (:data:`LAYER`).

    The model's two inputs go in as one tuple, the images first (the batch ``camlens.explain`` explains);
    the question bags pass to the model unchanged and are not differentiated.
    """
    import camlens

    return camlens.explain(model, (images, questions), method=method, layer=LAYER, targets=targets)


def _batches(data: VQASet, images_per_batch: int) -> Any:
    """Batches of whole images with all their questions: the CNN runs once per image, not per question."""
    by_image = [torch.nonzero(data.image_of == i).flatten() for i in range(len(data.images))]

    def epoch(gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(data.images), generator=gen)
        for start in range(0, len(order), images_per_batch):
            chosen = order[start : start + images_per_batch]
            rows = torch.cat([by_image[int(i)] for i in chosen])
            local = torch.empty(len(data.images), dtype=torch.int64)
            local[chosen] = torch.arange(len(chosen))
            yield data.images[chosen], local[data.image_of[rows]], data.questions[rows], data.answers[rows]

    return epoch


def _loss(model: Any, batch: Any) -> tuple[torch.Tensor, int, int]:
    images, owner, questions, answers = batch
    logits = model.answer(model.image(images)[owner], questions)
    return F.cross_entropy(logits, answers), int((logits.argmax(1) == answers).sum()), len(answers)


@torch.no_grad()
def predict(model: VQANet, data: VQASet, batch_size: int = 512) -> torch.Tensor:
    """(Q,) the model's answer to every question of ``data``."""
    features = torch.cat([model.image(data.images[i : i + batch_size]) for i in range(0, len(data.images), batch_size)])
    out = [
        model.answer(features[data.image_of[i : i + batch_size]], data.questions[i : i + batch_size]).argmax(1)
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out)


def point(
    model: VQANet,
    data: VQASet,
    predicted: torch.Tensor,
    tolerances: Sequence[float] = TOLERANCES,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Grad-CAM of the predicted and the true answer to every question; pointing-game trials and baselines.

    Returns ``{"flat": (Q,) bool, "peaks": (Q, 2, 2), "<tol>px": {...}}``: ``flat`` marks predicted-answer maps
    that are zero everywhere (their maximum is then the first pixel); ``peaks`` the (row, col) of each map's
    maximum; per tolerance, (Q,) arrays ``pred`` and ``true`` (hits), ``centre`` (the centre pixel hits) and
    ``random`` (a uniformly random pixel's chance to hit: the share of pixels within the tolerance of the shape).
    """
    from scipy.ndimage import distance_transform_edt
    from tqdm.auto import tqdm

    from camlens.metrics.faithfulness import pointing_game

    h, w = data.images.shape[-2:]
    trials: dict[str, dict[str, list[Any]]] = {_tol(t): {"pred": [], "true": []} for t in tolerances}
    flat, peaks = [], []
    for start in tqdm(range(0, len(data), batch_size), desc="Grad-CAM of answers", disable=not progress, leave=False):
        rows = slice(start, start + batch_size)
        owners = data.image_of[rows]
        targets = torch.stack([predicted[rows], data.answers[rows]], dim=1)
        exp = explain_answers(model, data.images[owners], data.questions[rows], targets)
        maps, masks = exp.maps, data.masks[owners]
        for t in tolerances:
            trials[_tol(t)]["pred"].append(pointing_game(maps[:, 0], masks=masks, tolerance=t))
            trials[_tol(t)]["true"].append(pointing_game(maps[:, 1], masks=masks, tolerance=t))
        flat.append((exp.raw[:, 0].clamp_min(0).flatten(1).amax(1) == 0).numpy())
        index = maps.flatten(2).argmax(2)
        peaks.append(torch.stack([index // w, index % w], dim=2).numpy())
    out: dict[str, Any] = {"flat": np.concatenate(flat), "peaks": np.concatenate(peaks)}
    centre = torch.zeros(1, h, w)
    centre[0, h // 2, w // 2] = 1.0
    distance = [distance_transform_edt(~m.numpy()) for m in data.masks]
    for t in tolerances:
        near = np.stack([d <= t for d in distance])
        out[_tol(t)] = {k: np.concatenate(v) for k, v in trials[_tol(t)].items()}
        per_image = {
            "centre": pointing_game(centre.expand(len(data.masks), h, w), masks=data.masks, tolerance=t),
            "random": near.mean(axis=(1, 2)),
        }
        out[_tol(t)] |= {k: v[data.image_of.numpy()] for k, v in per_image.items()}
    return out


def _tol(tolerance: float) -> str:
    return f"{tolerance:g}px"


def _picture(model: VQANet, data: VQASet, predicted: torch.Tensor, path: Path, count: int = 9) -> None:
    """A sheet of test questions (three of each type): the predicted answer's map, its maximum and the question."""
    from PIL import Image

    from camlens import viz

    rows = [q for k in KINDS for q in [i for i, t in enumerate(data.kinds) if t == k][: count // len(KINDS)]]
    index = torch.tensor(rows)
    owners = data.image_of[index]
    exp = explain_answers(model, data.images[owners], data.questions[index], predicted[index])
    zoom = 4
    tiles = []
    for j, q in enumerate(rows):
        pixels = np.rint(data.images[owners[j]].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        side = pixels.shape[0] * zoom
        photo = Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
        cam = F.interpolate(exp.maps[j : j + 1, :1], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        tile = viz.overlay(photo, cam.numpy(), alpha=0.45)
        r, c = divmod(int(exp.maps[j, 0].flatten().argmax()), pixels.shape[1])
        x, y = c * zoom + zoom // 2, r * zoom + zoom // 2
        answer = data.answer_names[int(predicted[q])]
        tile = viz.draw_box(tile, [x - 5, y - 5, x + 6, y + 6], f"{data.texts[q]} {answer}", "#ffffff")
        tiles.append(tile)
    _common.save_png(viz.grid(tiles, columns=3), path)


def _command(config: dict[str, Any], out: Path) -> list[str]:
    return [
        "camlens", "bench", "vqa", "--out", str(out), "--seeds", ",".join(map(str, config["seeds"])),
        "--train", str(config["n_train"]), "--test", str(config["n_test"]), "--epochs", str(config["epochs"]),
        "--threads", str(config["threads"]),
    ]  # fmt: skip


def _one_seed(seed: int, train: VQASet, test: VQASet, config: dict[str, Any], progress: bool) -> Any:
    t = time.perf_counter()
    model = VQANet(len(train.vocab), len(train.answer_names), width=config["width"], seed=seed)
    steps = -(-len(train.images) // config["images_per_batch"])
    history = _common.fit(
        model,
        _batches(train, config["images_per_batch"]),
        _loss,
        steps,
        config["epochs"],
        lr=config["lr"],
        seed=seed,
        progress=progress,
        desc=f"vqa seed {seed}",
    )
    train_s = time.perf_counter() - t
    t0 = time.perf_counter()
    predicted = predict(model, test)
    correct = (predicted == test.answers).numpy()
    trials = point(model, test, predicted, progress=progress)
    kinds_correct = [k for k, c in zip(test.kinds, correct) if c]
    record: dict[str, Any] = {
        "history": history,
        "test_accuracy": _common.hit_rate(correct, test.kinds),
        "flat_maps_pct": 100.0 * float(trials["flat"].mean()),
        "pointing": {},
    }
    for t in TOLERANCES:
        hits = trials[_tol(t)]
        record["pointing"][_tol(t)] = {
            "pred": _common.hit_rate(hits["pred"], test.kinds),
            "true": _common.hit_rate(hits["true"], test.kinds),
            "pred_when_correct": _common.hit_rate(hits["pred"][correct], kinds_correct),
            "centre": _common.hit_rate(hits["centre"], test.kinds),
            "random": _common.hit_rate(hits["random"], test.kinds),
        }
    record["timing"] = {"train_s": train_s, "explain_s": time.perf_counter() - t0}
    return model, predicted, record


def run(
    out_dir: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    n_train: int | None = None,
    n_test: int | None = None,
    epochs: int = 6,
    threads: int | None = 1,
    progress: bool = True,
    *,
    width: int = 64,
    images_per_batch: int = 32,
    lr: float = 3e-3,
    pictures: bool = True,
) -> dict[str, Any]:
    """Train a VQA net per seed, explain every test answer with Grad-CAM, score with the pointing game.

    Writes ``results.json`` (the command, environment, configuration, per-seed numbers and their mean, range
    and sd over seeds) and, with ``pictures``, ``vqa_examples.png`` (the first seed's model) into ``out_dir``.

    Args:
        out_dir: output folder (created).
        seeds: one trained model per seed (initial weights and batch order).
        n_train: training images (their questions come along; ``None``: all 4000).
        n_test: test images (``None``: all 1000, 9673 questions).
        epochs: training epochs.
        threads: ``torch.set_num_threads`` for the run (restored); ``None``: as it is.
        progress: progress bars.
        width: channels of the image map and the question vector.
        images_per_batch: images per training batch (with all their questions, about 10 each).
        lr: peak learning rate (Adam, one-cycle).
        pictures: write the example sheet (needs matplotlib).

    Raises:
        ImportError: easy-vqa is not installed.
    """
    seeds = _common.check_seeds(seeds)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out = Path(out_dir)
    wall0 = time.perf_counter()
    with _common.threads(threads) as used:
        train = load("train", n_train)
        test = load("test", n_test, vocab=train.vocab)
        out.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "seeds": seeds,
            "n_train": len(train.images),
            "n_test": len(test.images),
            "train_questions": len(train),
            "test_questions": len(test),
            "epochs": epochs,
            "width": width,
            "images_per_batch": images_per_batch,
            "lr": lr,
            "threads": used,
            "method": "gradcam",
            "layer": LAYER,
            "pointing_tolerances_px": list(TOLERANCES),
            "vocab": list(train.vocab),
        }
        per_seed: dict[str, Any] = {}
        for seed in seeds:
            model, predicted, record = _one_seed(seed, train, test, config, progress)
            per_seed[str(seed)] = record
            if pictures and seed == seeds[0]:
                _picture(model, test, predicted, inside(out, "vqa_examples.png"))
        return _common.finish(out, "vqa", _command(config, out), config, used, wall0, per_seed, table)


def table(results: dict[str, Any]) -> str:
    """Markdown: accuracy and pointing game (%) per question type, mean (min-max) over the run's seeds."""
    summ = results["summary"]
    config = results["config"]
    seeds = config["seeds"]
    spread = _common.spread_label(seeds)
    groups = ["all", *KINDS]
    lines = [
        f"easy-VQA test set ({config['test_questions']} questions on {config['n_test']} images), %, {spread}. "
        "Pointing game: the map's maximum on the shape (0 px) or within 4 px of it.",
        "",
        "| | " + " | ".join(groups) + " |",
        "|---|" + "---:|" * len(groups),
        "| answer accuracy | " + " | ".join(tables.cell(summ["test_accuracy"].get(g)) for g in groups) + " |",
    ]
    names = {
        "pred": "Grad-CAM, predicted answer",
        "true": "Grad-CAM, true answer",
        "pred_when_correct": "Grad-CAM, predicted answer, correct answers only",
        "centre": "baseline: centre pixel",
        "random": "baseline: random pixel (expected)",
    }
    for tol, rows in summ["pointing"].items():
        for key, name in names.items():
            cells = " | ".join(tables.cell(rows[key].get(g)) for g in groups)
            lines.append(f"| pointing {tol}: {name} | {cells} |")
    lines += ["", f"Maps that are zero everywhere (predicted answer): {tables.cell(summ['flat_maps_pct'])} %."]
    return "\n".join(lines) + "\n"
