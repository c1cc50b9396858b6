"""Cost of explaining one detection of Faster R-CNN, against one forward of the detector.

    python benchmarks/bench_tasks.py                 # 3 rounds (about 5 min on one busy core)
    python benchmarks/bench_tasks.py --rounds 5 --size 512

What is measured:

* Model: torchvision's ``fasterrcnn_resnet50_fpn`` with random weights (no download here; the cost does not
  depend on the weights' values), batch norms calibrated on noise (``tests.nets.detector``) so detections
  have scores in (0, 1), score threshold 0, 100 detections per image (torchvision's default); its transform
  resizes to ``--size`` (torchvision's default 800). ``--classes`` 5 (4 + background) by default: with
  random weights and threshold 0 every one of the 1000 proposals x (classes - 1) candidate boxes reaches the
  NMS, which a trained model's 0.05 threshold prunes. (One earlier run with COCO's 91 classes, 800 px, load
  9: floor 7.09 s, one detection 1.57x, five 3.84x; docs/benchmarks.md.) Image: ``skimage.data.chelsea()`` resized to
  ``--size`` x ``--size``, in [0, 1]. ``torch.set_num_threads(1)``.
* Floor: one forward of the detector under ``torch.inference_mode()`` (what ``camlens.tasks.detect`` runs).
* Cases: Grad-CAM of one detection (``BoxScore`` of the top detection) at ``backbone.body.layer4`` (the
  automatic layer); Grad-CAM of the 5 top detections in one call (one forward, one batched backward, 5
  maps); Eigen-CAM (gradient-free) at ``backbone.fpn.layer_blocks.2``.
* Rounds: every case once per round, in a freshly shuffled order, each against a floor measured just
  before it (``bench_metrics._rounds``); per case the median seconds and the median paired ratio.

Writes benchmarks/results/tasks.json and prints the Markdown table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from bench_core import machine
from bench_metrics import RESULTS, _rounds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.nets import detector  # noqa: E402  (the tests' random-weight detector with calibrated batch norms)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per case (default 3)")
    parser.add_argument("--size", type=int, default=800, help="image and detector input size (default 800)")
    parser.add_argument("--classes", type=int, default=5, help="detector classes, background included (default 5)")
    parser.add_argument("--out", default=str(RESULTS / "tasks.json"), help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import camlens
    from camlens.tasks import BoxScore, ClassDetections, detect

    try:
        from skimage import data
    except ImportError:
        sys.exit("bench_tasks.py needs scikit-image for its test photo: pip install scikit-image")
    from PIL import Image

    model = detector("fasterrcnn_resnet50_fpn", size=args.size, classes=args.classes)
    model.roi_heads.detections_per_img = 100
    photo = Image.fromarray(data.chelsea()).resize((args.size, args.size))
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    det = detect(model, x)[0]
    one = BoxScore(det["boxes"][:1], det["labels"][:1])
    five = BoxScore(det["boxes"][:5], det["labels"][:5])

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    cases = {
        "Grad-CAM, 1 detection": lambda: camlens.explain(model, x, targets=one),
        "Grad-CAM, 5 detections (one call)": lambda: camlens.explain(model, x, targets=five),
        "Eigen-CAM at backbone.fpn.layer_blocks.2": lambda: camlens.explain(
            model, x, method="eigencam", layer="backbone.fpn.layer_blocks.2", targets=ClassDetections(1)
        ),
    }
    times, ratios, floors, load_start = _rounds(cases, forward, args.rounds, 1)
    load_end = " ".join(f"{v:.1f}" for v in os.getloadavg())
    doc = {
        "command": "python benchmarks/bench_tasks.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": 1,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "model": "fasterrcnn_resnet50_fpn (random weights, calibrated batch norms)",
        "classes": args.classes,
        "size": args.size,
        "detections": len(det["boxes"]),
        "rounds": args.rounds,
        "floor_seconds_median": statistics.median(floors),
        "cases": {
            name: {"seconds_median": statistics.median(times[name]), "ratio_median": statistics.median(ratios[name])}
            for name in cases
        },
    }
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"| case ({args.size} x {args.size}, {args.rounds} rounds) | median s | x one forward (paired median) |")
    print("| --- | --- | --- |")
    print(f"| one forward (floor) | {doc['floor_seconds_median']:.2f} | 1 |")
    for name, row in doc["cases"].items():
        print(f"| {name} | {row['seconds_median']:.2f} | {row['ratio_median']:.2f} |")
    print(f"load average {load_start} (start), {load_end} (end)")


if __name__ == "__main__":
    main()
