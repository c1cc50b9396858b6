"""What the benchmarks share: run records (environment, threads, JSON, pictures), a training loop, pointing tallies.

* :func:`environment`, :func:`threads`, :func:`write_json`, :func:`save_png`: a run's record and files.
* :func:`fit`: Adam with a one-cycle learning rate over seeded batches, for models whose loss is not
  ``cross_entropy(model(x), y)`` (a VQA net with two inputs, a captioner's sequence loss); the one-input
  classifiers of ``bench wsol`` train through :func:`camlens.gap.run_epoch` in :mod:`camlens.bench.nets`.
* :func:`hit_rate`: a pointing-game tally (hits / trials in %) over groups of trials.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from camlens._paths import inside
from camlens.bench import tables

__all__: list[str] = []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    """Versions, platform, CPU and torch threads: what a results file needs to be compared with another."""
    import camlens

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "camlens": camlens.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average": list(load) if load else None,
    }


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """``torch.set_num_threads(n)`` for a block (``None``: as it is), restored afterwards; yields the count."""
    if n is not None and n < 1:
        raise ValueError(f"threads must be >= 1 or None, got {n}")
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def write_json(out: Path, name: str, data: Any) -> Path:
    """``data`` as indented JSON in ``out/name`` (checked to stay inside ``out``); NaN is refused."""
    path = inside(out, name)
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return path


def save_png(image: Any, path: Path) -> None:
    """An adaptive 256-colour PNG: heatmap sheets shrink about 3x, with no visible change."""
    image.convert("RGB").quantize(colors=256, method=2).save(path, optimize=True)  # 2: FASTOCTREE


def fit(
    model: nn.Module,
    batches: Callable[[torch.Generator], Iterable[Any]],
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, int, int]],
    steps: int,
    epochs: int,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    desc: str = "",
) -> list[dict[str, float]]:
    """Train ``model``: Adam, one-cycle learning rate (15% warm-up), batches in a seeded order.

    ``batches(generator)`` yields one epoch's ``steps`` batches; ``loss(model, batch)`` returns the batch's
    mean loss, its correct predictions and its number of predictions. Returns one ``{"epoch", "loss", "acc",
    "seconds"}`` per epoch (loss and accuracy over the epoch's predictions); the model is left in eval mode.

    Raises:
        ValueError: a batch's loss is NaN or infinite (checked before its step is taken).
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    history = []
    torch.manual_seed(seed)  # dropout, if a model has it
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            total, correct, seen = 0.0, 0, 0
            bar = tqdm(batches(gen), total=steps, desc=f"{desc} epoch {epoch}/{epochs}".strip(), disable=not progress)
            for step, batch in enumerate(bar, 1):
                value, right, count = loss(model, batch)
                number = float(value.detach())
                if not math.isfinite(number):
                    raise ValueError(f"epoch {epoch}, batch {step}: the loss is {number}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                sched.step()
                total += number * count
                correct += right
                seen += count
                bar.set_postfix_str(f"loss {total / seen:.3f} acc {correct / seen:.3f}")
            history.append(
                {"epoch": epoch, "loss": total / seen, "acc": correct / seen, "seconds": time.perf_counter() - start}
            )
    finally:
        model.eval()
    return history


def hit_rate(hits: Any, groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Hits in % of trials, overall (``"all"``) and per group (e.g. question type): ``{"all": {"pct", "n"}, ...}``.

    ``hits`` are booleans (a pointing-game hit) or probabilities (a random point's chance to hit: its
    expected rate is their mean).
    """
    values = np.asarray(hits, dtype=float).reshape(-1)
    out = {"all": {"pct": 100.0 * float(values.mean()) if values.size else None, "n": int(values.size)}}
    if groups is not None:
        names = np.asarray(groups)
        for group in sorted(set(groups)):
            chosen = values[names == group]
            out[group] = {"pct": 100.0 * float(chosen.mean()), "n": int(chosen.size)}
    return out


def summary(per_seed: dict[str, Any], skip: Sequence[str] = ()) -> Any:
    """Statistics over seeds (:func:`camlens.bench.tables.summarise`) of every number in the per-seed records.

    The records share one nested shape; a :func:`hit_rate` entry ``{"pct", "n"}`` becomes the statistics
    of its ``pct``, any other number its own statistics; keys in ``skip`` (histories, timings) are left out.
    """
    records = list(per_seed.values())

    def merge(nodes: list[Any]) -> Any:
        first = nodes[0]
        if isinstance(first, dict) and "pct" in first:
            return tables.summarise([n.get("pct") if n else None for n in nodes])
        if isinstance(first, dict):
            return {k: merge([n.get(k, {}) for n in nodes]) for k in first if k not in skip}
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            return tables.summarise([float(n) for n in nodes])
        return first

    return merge(records)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds as ints: distinct and at least one, else a ValueError."""
    chosen = [int(s) for s in seeds]
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"seeds must be distinct and at least one, got {chosen}")
    return chosen


def spread_label(seeds: Sequence[int]) -> str:
    """How a table's numbers spread: ``mean (min-max) over seeds 0, 1, 2`` or ``seed 0``."""
    return f"mean (min-max) over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"


def finish(
    out: Path,
    benchmark: str,
    command: list[str],
    config: dict[str, Any],
    used: int,
    wall0: float,
    per_seed: dict[str, Any],
    table: Any,
) -> dict[str, Any]:
    """A bench's results record (command, argv, configuration, environment, wall time, statistics over seeds,
    per-seed numbers), written as ``results.json`` with ``table(results)`` as ``table.md`` inside ``out``."""
    import sys

    results = {
        "benchmark": benchmark,
        "command": command,
        "argv": list(sys.argv),
        "config": config,
        "environment": environment(used),
        "timing": {"total_wall_s": time.perf_counter() - wall0},
        "summary": summary(per_seed, skip=("history", "timing")),
        "seeds": per_seed,
    }
    write_json(out, "results.json", results)
    inside(out, "table.md").write_text(table(results))
    return results
