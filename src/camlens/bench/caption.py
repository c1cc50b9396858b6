"""Grad-CAM for image captioning (the Grad-CAM paper's captioning example), on strings of handwritten digits.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017, section on image captioning: a captioner (neuraltalk2: CNN + LSTM) is explained by Grad-CAM of the log
probability of its caption at the CNN's last conv layer; the paper shows that the maps fall on the objects
the caption names, judged by eye and against DenseCap boxes. Here the captions are digit strings with exact
boxes, so each word's map is scored:

* data (:func:`make_captions`): canvases with 2 or 3 real handwritten digits (scikit-learn's ``load_digits``
  scans, the pools, scaling and 8-bit values of ``bench wsol``'s generator, train and test scans disjoint)
  placed left to right, one per equal slot of the width at a random place inside it; the caption is the
  digits read left to right, each digit's box (END-EXCLUSIVE) recorded.
* model (:class:`Captioner`): a 4-conv CNN (a 64 x 8 x 24 map on 32 x 96 canvases), average-pooled to
  1 x 6 column cells whose flattened vector sets the initial state of a GRU decoder over the words
  (BOS, digits, EOS); trained with teacher forcing (cross-entropy of every next word), seeded, CPU minutes.
* explanation (:func:`explain_words`): Grad-CAM at the CNN's last conv of each word's log-probability
  given the ground-truth prefix (a callable target on the decoder's (B, T, V) output; all word positions
  from one batched backward).
* score: the pointing game (Zhang et al., ECCV 2016, sec. 5.1) per word position, no tolerance: a hit
  when the word's map has its maximum inside that digit's box; also how often it falls in another digit's
  box. Baselines: the image centre, the centre of the word's slot (the layout prior: digits sit in their
  slot), and a uniformly random pixel (its expected hit rate: the box's share of the canvas).

Examples:
    >>> from camlens.bench import caption
    >>> results = caption.run("out/caption", seeds=(0,), epochs=1, n_train=500, n_test=100)
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
from camlens.bench.wsol_digits import _load_digits, _pool, _resize, _tight

__all__ = ["Captioner", "Captions", "explain_words", "make_captions", "run"]

EOS, BOS, PAD = 10, 11, 12  # words 0-9 are the digits
WORDS = (*(str(d) for d in range(10)), "<eos>")
MAX_DIGITS = 3
LAYER = "features"
QUICK = {"n_train": 600, "n_test": 100, "epochs": 2}


@dataclass(eq=False)
class Captions:
    """Canvases, their captions and each digit's box.

    Attributes:
        images: (N, 1, H, W) float32 in [0, 1], 8-bit values (ink is 1).
        digits: (N, 3) int64 the caption's digits left to right, ``PAD`` after the last.
        lengths: (N,) int64 number of digits (2 or 3).
        boxes: (N, 3, 4) int64 END-EXCLUSIVE [x0, y0, x1, y1) of each digit (zeros after the last).
        config: the arguments of :func:`make_captions`.
    """

    images: torch.Tensor
    digits: torch.Tensor
    lengths: torch.Tensor
    boxes: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def words(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: decoder inputs (N, 4) ``BOS d1 d2 [d3]`` and next words (N, 4) ``d1 d2 [d3] EOS``.

        Positions after the end hold ``PAD`` in the inputs and -100 (ignored by the loss) in the next words.
        """
        n = len(self)
        inputs = torch.full((n, MAX_DIGITS + 1), PAD, dtype=torch.int64)
        nexts = torch.full((n, MAX_DIGITS + 1), -100, dtype=torch.int64)
        inputs[:, 0] = BOS
        for i in range(n):
            k = int(self.lengths[i])
            inputs[i, 1 : k + 1] = self.digits[i, :k]
            nexts[i, :k] = self.digits[i, :k]
            nexts[i, k] = EOS
        return inputs, nexts


def make_captions(
    n: int,
    seed: int = 0,
    split: str = "train",
    height: int = 32,
    width: int = 96,
    size: tuple[int, int] = (14, 26),
    counts: Sequence[int] = (2, 3),
) -> Captions:
    """``n`` canvases of ``height`` x ``width`` with 2 or 3 handwritten digits left to right, and their boxes.

    Per canvas (one seeded generator for the set): the number of digits is drawn from ``counts``; the width is
    cut into that many equal slots; each slot gets a scan of the split's pool (``bench wsol``'s disjoint
    thirds of the 1797 scans), cropped to its ink, resized to a uniform height in ``size`` (its width
    capped by the slot), placed at a uniform position inside its slot. The box is its non-zero pixels.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not set(counts) <= {1, 2, 3} or not counts:
        raise ValueError(f"counts must be digits per canvas among 1, 2, 3, got {counts}")
    if not 1 <= size[0] <= size[1] <= height:
        raise ValueError(f"size must be (min, max) digit heights with 1 <= min <= max <= height, got {size}")
    scans, targets = _load_digits()
    pool = _pool(split, len(scans))
    rng = np.random.default_rng([seed, {"train": 0, "test": 1, "all": 2}[split], 7])
    images = np.zeros((n, height, width), dtype=np.float32)
    digits = np.full((n, MAX_DIGITS), PAD, dtype=np.int64)
    boxes = np.zeros((n, MAX_DIGITS, 4), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for i in range(n):
        k = int(rng.choice(counts))
        slot = width // k
        lengths[i] = k
        for j in range(k):
            src = int(rng.choice(pool))
            ink = _tight(scans[src])
            h = int(rng.integers(size[0], size[1] + 1))
            w = min(slot, max(1, round(ink.shape[1] * h / ink.shape[0])))
            patch = _resize(ink, h, w)
            y, x = int(rng.integers(0, height - h + 1)), j * slot + int(rng.integers(0, slot - w + 1))
            images[i, y : y + h, x : x + w] = patch
            rows, cols = np.flatnonzero(patch.any(1)), np.flatnonzero(patch.any(0))
            boxes[i, j] = (x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1)
            digits[i, j] = targets[src]
    pixels = np.rint(images * 255.0).astype(np.uint8)
    return Captions(
        images=torch.from_numpy(pixels[:, None].astype(np.float32)).div_(255.0),
        digits=torch.from_numpy(digits),
        lengths=torch.from_numpy(lengths),
        boxes=torch.from_numpy(boxes),
        config={"n": n, "seed": seed, "split": split, "height": height, "width": width, "size": list(size)},
    )


class Captioner(nn.Module):
    """CNN encoder + GRU decoder: ``forward(images, words)`` -> (B, T, 11) log-probabilities of the next word.

    ``features``: conv 1->16, max pool 2, conv 16->32, max pool 2, conv 32->64, conv 64->64 (3x3, batch norm,
    ReLU each): the map Grad-CAM explains (stride 4). It is average-pooled to ``1 x cells`` column cells,
    flattened and mapped (linear, tanh) to the GRU's initial state; the GRU reads the embedded input words.
    """

    def __init__(self, seed: int = 0, width: int = 64, hidden: int = 128, cells: int = 6) -> None:
        super().__init__()
        torch.manual_seed(seed)
        layers: list[tuple[str, nn.Module]] = []
        for i, (cin, cout) in enumerate([(1, 16), (16, 32), (32, width), (width, width)], 1):
            if i in (2, 3):
                layers.append((f"pool{i - 1}", nn.MaxPool2d(2)))
            layers += [
                (f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1)),
                (f"bn{i}", nn.BatchNorm2d(cout)),
                (f"relu{i}", nn.ReLU()),
            ]
        self.features = nn.Sequential(OrderedDict(layers))
        self.cells = nn.AdaptiveAvgPool2d((1, cells))
        self.init = nn.Sequential(nn.Flatten(), nn.Linear(width * cells, hidden), nn.Tanh())
        self.embed = nn.Embedding(PAD + 1, 32)
        self.gru = nn.GRU(32, hidden, batch_first=True)
        self.out = nn.Linear(hidden, len(WORDS))
        self.eval()

    def forward(self, images: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        state = self.init(self.cells(self.features(images)))[None]
        hidden, _ = self.gru(self.embed(words), state)
        return F.log_softmax(self.out(hidden), dim=-1)

    @torch.no_grad()
    def greedy(self, images: torch.Tensor, steps: int = MAX_DIGITS + 1) -> torch.Tensor:
        """(B, steps) the most likely next word at each step, fed back (greedy decoding)."""
        state = self.init(self.cells(self.features(images)))[None]
        word = torch.full((len(images), 1), BOS, dtype=torch.int64)
        out = []
        for _ in range(steps):
            hidden, state = self.gru(self.embed(word), state)
            word = self.out(hidden).argmax(-1)
            out.append(word)
        return torch.cat(out, dim=1)


def explain_words(model: nn.Module, images: torch.Tensor, inputs: torch.Tensor, nexts: torch.Tensor) -> Any:
    """Grad-CAM at the CNN's last conv (:data:`LAYER`) of each next word's log-probability, given the prefix.

    ``inputs`` (B, T) are the decoder's input words (BOS and the true prefix), ``nexts`` (B, T) the words
    whose log-probabilities are explained; the target is the callable ``out[b, t, nexts[b, t]]`` on the
    (B, T, V) output, so the maps are (B, T, H, W), all T from one batched backward. Positions past a
    caption's end (``nexts`` = -100) explain the EOS word's log-probability and are ignored by callers.
    The model's two inputs go in as one tuple, the images first; the words pass unchanged, not differentiated.
    """
    import camlens

    chosen = nexts.clamp_min(0)

    def word_logprob(out: torch.Tensor) -> torch.Tensor:
        return out.gather(2, chosen[:, :, None])[..., 0]

    return camlens.explain(model, (images, inputs), method="gradcam", layer=LAYER, targets=word_logprob)


def _loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, int, int]:
    images, inputs, nexts = batch
    logp = model(images, inputs)
    known = nexts >= 0
    right = int((logp.argmax(-1)[known] == nexts[known]).sum())
    return F.nll_loss(logp.flatten(0, 1), nexts.flatten(), ignore_index=-100), right, int(known.sum())


def _batches(data: Captions, batch_size: int) -> Any:
    inputs, nexts = data.words()

    def epoch(gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield data.images[idx], inputs[idx], nexts[idx]

    return epoch


def _box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., H, W) bool: the pixels of each END-EXCLUSIVE box."""
    ys, xs = torch.arange(height)[:, None], torch.arange(width)[None, :]
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def point(model: nn.Module, data: Captions, batch_size: int = 200, progress: bool = True) -> dict[str, Any]:
    """Grad-CAM of every digit word given its true prefix; pointing-game trials per word position and baselines.

    Returns (M,) arrays over the M digit words of the set: ``position`` (0, 1, 2), ``hit`` (the map's maximum
    in the word's box), ``other`` (in another digit's box), ``centre`` / ``slot`` (the image centre / the
    slot's centre is in the box), ``random`` (the box's share of the canvas), and ``peaks`` (M, 2) (row, col).
    """
    from tqdm.auto import tqdm

    from camlens.metrics.faithfulness import pointing_game

    height, width = data.images.shape[-2:]
    inputs, nexts = data.words()
    out: dict[str, list[Any]] = {k: [] for k in ("position", "hit", "other", "peaks", "centre", "slot", "random")}
    for start in tqdm(range(0, len(data), batch_size), desc="Grad-CAM of words", disable=not progress, leave=False):
        rows = slice(start, start + batch_size)
        exp = explain_words(model, data.images[rows], inputs[rows], nexts[rows])
        maps, boxes, lengths = exp.maps, data.boxes[rows], data.lengths[rows]
        masks = _box_masks(boxes, height, width)  # (B, 3, H, W)
        for b in range(len(lengths)):
            k = int(lengths[b])
            hits = pointing_game(maps[b, :k], [boxes[b, j : j + 1] for j in range(k)], tolerance=0)
            index = maps[b, :k].flatten(1).argmax(1)
            peaks = torch.stack([index // width, index % width], dim=1)
            in_any = masks[b, :k][:, peaks[:, 0], peaks[:, 1]].T  # (word, digit): the peak of word in digit's box
            slot = width // k
            cx = (torch.arange(k) * slot + slot // 2).long()
            out["position"].append(np.arange(k))
            out["hit"].append(hits)
            out["other"].append((in_any & ~torch.eye(k, dtype=torch.bool)).any(1).numpy())
            out["peaks"].append(peaks.numpy())
            out["centre"].append(masks[b, :k, height // 2, width // 2].numpy())
            out["slot"].append(masks[b, torch.arange(k), height // 2, cx].numpy())
            out["random"].append(masks[b, :k].float().mean(dim=(1, 2)).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _picture(model: Captioner, data: Captions, path: Path, count: int = 4) -> None:
    """Rows of test canvases: the canvas with the greedy caption, then each word's map with its maximum."""
    from PIL import Image

    from camlens import viz

    zoom = 3
    inputs, nexts = data.words()
    exp = explain_words(model, data.images[:count], inputs[:count], nexts[:count])
    decoded = model.greedy(data.images[:count])
    tiles = []
    for i in range(count):
        gray = np.rint(data.images[i, 0].numpy() * 255).astype(np.uint8)
        h, w = gray.shape[0] * zoom, gray.shape[1] * zoom
        photo = Image.fromarray(gray).resize((w, h), Image.Resampling.NEAREST).convert("RGB")
        words = [WORDS[int(t)] for t in decoded[i]]
        caption = " ".join(words[: words.index("<eos>")] if "<eos>" in words else words)
        truth = " ".join(str(int(d)) for d in data.digits[i, : int(data.lengths[i])])
        tiles.append(viz.draw_box(photo, None, f"caption: {caption} (true: {truth})"))
        for j in range(MAX_DIGITS):
            if j >= int(data.lengths[i]):
                tiles.append(Image.new("RGB", (w, h), (255, 255, 255)))
                continue
            cam = F.interpolate(exp.maps[i : i + 1, j : j + 1], size=(h, w), mode="bilinear", align_corners=False)
            tile = viz.overlay(photo, cam[0, 0].numpy(), alpha=0.5)
            r, c = divmod(int(exp.maps[i, j].flatten().argmax()), gray.shape[1])
            x, y = c * zoom + zoom // 2, r * zoom + zoom // 2
            tile = viz.draw_box(tile, [int(v) * zoom for v in data.boxes[i, j].tolist()], None, "#ffffff")
            tiles.append(viz.draw_box(tile, [x - 4, y - 4, x + 5, y + 5], f'word {j + 1}: "{WORDS[int(nexts[i, j])]}"'))
    _common.save_png(viz.grid(tiles, columns=MAX_DIGITS + 1), path)


def _command(config: dict[str, Any], out: Path) -> list[str]:
    return [
        "camlens", "bench", "caption", "--out", str(out), "--seeds", ",".join(map(str, config["seeds"])),
        "--train", str(config["n_train"]), "--test", str(config["n_test"]), "--epochs", str(config["epochs"]),
        "--threads", str(config["threads"]),
    ]  # fmt: skip


def _one_seed(seed: int, config: dict[str, Any], progress: bool) -> tuple[Captioner, Captions, dict[str, Any]]:
    t = time.perf_counter()
    train = make_captions(config["n_train"], seed=seed, split="train")
    test = make_captions(config["n_test"], seed=seed, split="test")
    model = Captioner(seed=seed)
    steps = -(-len(train) // config["batch_size"])
    history = _common.fit(
        model,
        _batches(train, config["batch_size"]),
        _loss,
        steps,
        config["epochs"],
        lr=config["lr"],
        seed=seed,
        progress=progress,
        desc=f"caption seed {seed}",
    )
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    decoded = model.greedy(test.images)
    _, nexts = test.words()
    known = nexts >= 0
    exact = [bool((decoded[i][known[i]] == nexts[i][known[i]]).all()) for i in range(len(test))]
    word_right = (decoded == nexts)[known].numpy()
    names = [("eos" if p == int(k) else f"word {p + 1}") for k in test.lengths for p in range(int(k) + 1)]
    trials = point(model, test, progress=progress)
    groups = [f"word {p + 1}" for p in trials["position"]]
    record: dict[str, Any] = {
        "history": history,
        "caption_exact_match": _common.hit_rate(exact),
        "greedy_word_accuracy": _common.hit_rate(word_right, names),
        "pointing": {k: _common.hit_rate(trials[k], groups) for k in ("hit", "other", "centre", "slot", "random")},
        "timing": {"train_s": train_s, "explain_s": time.perf_counter() - t},
    }
    return model, test, record


def run(
    out_dir: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    n_train: int = 6000,
    n_test: int = 1000,
    epochs: int = 6,
    threads: int | None = 1,
    progress: bool = True,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    pictures: bool = True,
) -> dict[str, Any]:
    """Train a captioner per seed, explain every digit word with Grad-CAM, score with the pointing game.

    Writes ``results.json`` (the command, environment, configuration, per-seed numbers and their mean, range
    and sd over seeds), ``table.md`` and, with ``pictures``, ``caption_examples.png`` into ``out_dir``.

    Args:
        out_dir: output folder (created).
        seeds: one data set and model per seed (canvases, initial weights, batch order).
        n_train: training canvases (from the train pool of scans).
        n_test: test canvases (from the disjoint test pool).
        epochs: training epochs.
        threads: ``torch.set_num_threads`` for the run (restored); ``None``: as it is.
        progress: progress bars.
        batch_size: training batch size.
        lr: peak learning rate (Adam, one-cycle).
        pictures: write the example sheet (needs matplotlib).

    Raises:
        ImportError: scikit-learn is not installed.
    """
    seeds = _common.check_seeds(seeds)
    for name, value in (("n_train", n_train), ("n_test", n_test), ("epochs", epochs)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    out = Path(out_dir)
    wall0 = time.perf_counter()
    with _common.threads(threads) as used:
        _load_digits()  # the one missing-package message before anything is written
        out.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "seeds": seeds,
            "n_train": n_train,
            "n_test": n_test,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "threads": used,
            "method": "gradcam",
            "layer": LAYER,
            "pointing_tolerance_px": 0,
            "canvas": [32, 96],
        }
        per_seed: dict[str, Any] = {}
        for seed in seeds:
            model, test, record = _one_seed(seed, config, progress)
            per_seed[str(seed)] = record
            if pictures and seed == seeds[0]:
                _picture(model, test, inside(out, "caption_examples.png"))
        return _common.finish(out, "caption", _command(config, out), config, used, wall0, per_seed, table)


def table(results: dict[str, Any]) -> str:
    """Markdown: caption accuracy and the pointing game (%) per word position, mean (min-max) over seeds."""
    summ = results["summary"]
    config = results["config"]
    seeds = config["seeds"]
    spread = _common.spread_label(seeds)
    groups = ["all", *(f"word {p + 1}" for p in range(MAX_DIGITS))]
    names = {
        "hit": "Grad-CAM: maximum in the word's digit box",
        "other": "Grad-CAM: maximum in another digit's box",
        "centre": "baseline: image centre",
        "slot": "baseline: centre of the word's slot (layout prior)",
        "random": "baseline: random pixel (expected)",
    }
    acc = summ["greedy_word_accuracy"]
    lines = [
        f"Digit captions, {config['n_test']} test canvases (2-3 digits), %, {spread}. "
        f"Greedy caption exact match {tables.cell(summ['caption_exact_match']['all'])}; "
        "greedy word accuracy: " + ", ".join(f"{g} {tables.cell(acc.get(g))}" for g in [*groups, "eos"]) + ".",
        "",
        "| pointing game | " + " | ".join(groups) + " |",
        "|---|" + "---:|" * len(groups),
    ]
    for key, name in names.items():
        lines.append(f"| {name} | " + " | ".join(tables.cell(summ["pointing"][key].get(g)) for g in groups) + " |")
    return "\n".join(lines) + "\n"
