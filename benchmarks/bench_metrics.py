"""Cost of each faithfulness metric per image, relative to one forward pass of EfficientNet-Lite0.

    python benchmarks/bench_metrics.py              # 3 rounds (about 2 min on one idle core)
    python benchmarks/bench_metrics.py --rounds 5   # steadier medians

What is measured:

* Model and image: ``camlens.zoo.efficientnet_lite0()`` (eval mode) on ``skimage.data.chelsea()``,
  preprocessed to 224x224; the map is Grad-CAM's (``Explanation.maps[:, 0]``) for the top-1 class.
* Floor: one forward pass of that one image under ``torch.inference_mode()`` (median of 5 in each round).
* Every case is timed once per round, rounds in a freshly shuffled order; per case the median time and
  the median over rounds of the *paired* ratio case / floor of the same round (so load from other
  processes hits both alike), with its IQR over rounds. ``torch.set_num_threads(1)``.
* "images scored": how many images a metric sends through the model for one image; the ratio is
  below it when a forward of n images costs less than n forwards of one, above it when more (on one
  CPU thread EfficientNet-Lite0 gets slower per image past batch 2, hence the rows at 16 and 64).
* The metrics' defaults: deletion and insertion 50 steps (RISE's protocol at 224x224, 224 steps, is
  timed too), batch_size None (2 on CPU); ROAD at 9 fractions (0.1 ... 0.9) with noise 0.01, whose
  sparse solves are also timed alone; the pointing game with a 15-pixel tolerance. Not counted:
  computing the map (timed separately as "gradcam").

Writes benchmarks/results/metrics.json and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_core import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = np.percentile(values, [25, 75])
    return float(q[0]), float(q[1])


def _rounds(
    cases: dict[str, Callable[[], Any]], forward: Callable[[], Any], rounds: int, floor_repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float], str]:
    """Time every case once per round, in a freshly shuffled order, each against the median of
    ``floor_repeats`` plain forwards measured just before it (paired ratios survive a load that drifts).

    Returns per case its seconds and its ratios to the floor, all floors, and the load average at the start.
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    ratios: dict[str, list[float]] = {name: [] for name in cases}
    floors: list[float] = []
    load_start = " ".join(f"{v:.1f}" for v in os.getloadavg())
    t0 = time.perf_counter()
    for r in range(rounds):
        order = list(cases)
        random.Random(r).shuffle(order)
        for name in order:
            floor = statistics.median(_timed(forward) for _ in range(floor_repeats))
            elapsed = _timed(cases[name])
            floors.append(floor)
            times[name].append(elapsed)
            ratios[name].append(elapsed / floor)
        print(f"round {r + 1}/{rounds} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return times, ratios, floors, load_start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per case (default 3)")
    parser.add_argument("--out", default=str(RESULTS / "metrics.json"), help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import camlens
    from camlens import zoo
    from camlens.metrics import faithfulness as fm

    try:
        from skimage import data
    except ImportError:
        sys.exit("bench_metrics.py needs scikit-image for its test photo: pip install scikit-image")

    model = zoo.efficientnet_lite0()
    x = zoo.preprocess(data.chelsea())
    exp = camlens.explain(model, x, "gradcam")
    maps, ids = exp.maps[:, 0], exp.targets[:, 0]
    box = [np.array([[60, 40, 180, 200]])]  # any box: the pointing game's cost does not depend on a hit

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    morf_removed = []
    ranks = torch.argsort(torch.argsort(maps.flatten(), descending=True, stable=True))
    for p in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        morf_removed.append((ranks < int(p * ranks.numel())).view(224, 224))
    rng = np.random.default_rng(0)

    cases: dict[str, tuple[Callable[[], Any], int]] = {
        "gradcam (the map, for reference)": (lambda: camlens.explain(model, x, "gradcam"), 0),
        "deletion, 50 steps": (lambda: fm.deletion_curve(model, x, maps, ids), 51),
        "deletion, 50 steps, batch_size=16": (lambda: fm.deletion_curve(model, x, maps, ids, batch_size=16), 51),
        "deletion, 50 steps, batch_size=64": (lambda: fm.deletion_curve(model, x, maps, ids, batch_size=64), 51),
        "insertion, 50 steps (blur)": (lambda: fm.insertion_curve(model, x, maps, ids), 51),
        "deletion, 224 steps (RISE)": (lambda: fm.deletion_curve(model, x, maps, ids, steps=224), 225),
        "average drop / increase": (lambda: fm.average_drop_increase(model, x, maps, ids), 2),
        "road morf, 9 fractions": (lambda: fm.road(model, x, maps, ids, order="morf"), 10),
        "road lerf, 9 fractions": (lambda: fm.road(model, x, maps, ids, order="lerf"), 10),
        "road morf: the 9 imputations alone": (
            lambda: [fm.noisy_linear_imputation(x[0], m, 0.01, rng) for m in morf_removed],
            0,
        ),
        "pointing game": (lambda: fm.pointing_game(maps, box), 0),
    }
    for fn, _ in cases.values():  # warm-up (imports, allocator, scipy's first call)
        fn()
    for _ in range(3):
        forward()

    times, ratios, floors, load_start = _rounds({n: c[0] for n, c in cases.items()}, forward, args.rounds, 5)

    rows = []
    for name, (_, scored) in cases.items():
        q1, q3 = _quartiles(ratios[name])
        rows.append(
            {
                "metric": name,
                "images_scored": scored,
                "seconds_median": statistics.median(times[name]),
                "ratio_to_forward_median": statistics.median(ratios[name]),
                "ratio_iqr": [q1, q3],
            }
        )
    results = {
        "command": "python benchmarks/bench_metrics.py" + "".join(" " + a for a in sys.argv[1:]),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": {
            **machine(),
            "load_start": load_start,
            "load_end": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        },
        "threads": torch.get_num_threads(),
        "model": "efficientnet_lite0, 1x3x224x224 (skimage.data.chelsea)",
        "target": int(ids[0]),
        "rounds": args.rounds,
        "forward_seconds_median": statistics.median(floors),
        "metrics": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")

    print(f"\none forward pass (1 image, 1 thread): {1000 * results['forward_seconds_median']:.1f} ms (median)")
    print(f"{'metric':40s} {'scored':>6s} {'seconds':>8s} {'x forward':>10s} {'IQR':>15s}")
    for row in rows:
        q1, q3 = row["ratio_iqr"]
        print(
            f"{row['metric']:40s} {row['images_scored']:6d} {row['seconds_median']:8.3f} "
            f"{row['ratio_to_forward_median']:10.1f} {f'{q1:.1f}-{q3:.1f}':>15s}"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
