"""What the app's caches save, and how fast a cancel stops a long call, on EfficientNet-Lite0 and the cat photo.

    python benchmarks/bench_app.py              # 5 rounds (about 2 min on a loaded 2-core machine)

What is measured (``torch.set_num_threads(1)``, the engine of ``camlens app`` without HTTP):

* "first": a request for Grad-CAM, top-1, on a photo new to the model (preprocessing, the plain forward
  whose probabilities list the top-5, the Grad-CAM call, pictures); the model is loaded beforehand;
* "threshold": the same request with another box threshold: the Explanation comes from the cache, so this
  is the cost of the pictures alone (overlay, box, signed map, PNG encoding), no forward;
* "method": the same photo with Grad-CAM++ (the input and the plain forward are reused, the method runs);
* "layer": the same photo with Grad-CAM at ``_blocks.15`` (a new method object, a new call);
* "cancel": Score-CAM on the photo, cancelled from another thread 0.5 s after it started; the time from
  the cancel to the call's return (the rest of one chunk of masked copies at most).

Each case runs once per round on a fresh photo id (so nothing is cached across rounds); medians over rounds.
Writes benchmarks/results/app.json (with the load average) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from camlens._perturb import Cancelled, observe
from camlens.app import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "app.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    ws = Workspace({"lite0": "efficientnet_lite0"})
    ws.bundle("lite0")
    ws.model_info("lite0")
    times: dict[str, list[float]] = {k: [] for k in ("first", "threshold", "method", "layer", "cancel")}
    for _ in range(args.rounds):
        photo, _ = ws.add_demo("chelsea")
        ask = {"photo": photo, "model": "lite0", "methods": ["gradcam"], "topk": 1}
        for name, request in (
            ("first", ask),
            ("threshold", {**ask, "threshold": 0.5}),
            ("method", {**ask, "methods": ["gradcam++"]}),
            ("layer", {**ask, "layer": "_blocks.15"}),
        ):
            t0 = time.perf_counter()
            ws.explain(request)
            times[name].append(time.perf_counter() - t0)
        stop = threading.Event()
        cancelled_at: list[float] = []

        def observer(done: int, total: int, desc: str, stop: threading.Event = stop) -> None:
            if stop.is_set():
                raise Cancelled

        def cancel_later(stop: threading.Event = stop, at: list[float] = cancelled_at) -> None:
            time.sleep(0.5)
            at.append(time.perf_counter())
            stop.set()

        timer = threading.Thread(target=cancel_later)
        timer.start()
        try:
            with observe(observer):
                ws.explain({**ask, "methods": ["scorecam"]})
        except Cancelled:
            times["cancel"].append(time.perf_counter() - cancelled_at[0])
        timer.join()
    load = os.getloadavg()
    doc = {
        "model": "efficientnet_lite0",
        "photo": "skimage.data.chelsea()",
        "rounds": args.rounds,
        "threads": 1,
        "load_average": [round(v, 2) for v in load],
        "median_seconds": {k: round(statistics.median(v), 4) for k, v in times.items() if v},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median of {args.rounds} rounds, seconds:")
    for k, v in doc["median_seconds"].items():
        print(f"  {k:10s} {v:8.3f}")


if __name__ == "__main__":
    main()
