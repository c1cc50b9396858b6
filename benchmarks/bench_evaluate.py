"""End-to-end ``camlens evaluate`` against the forward-only pipeline, per image, with each stage's share.

    python benchmarks/bench_evaluate.py                 # 64 photos, 3 rounds, workers 0 and 1 (about 4 min)
    python benchmarks/bench_evaluate.py --images 16 --rounds 1 --workers 1 --device cuda   # GPU smoke run

What is measured (docs/benchmarks.md repeats it next to the numbers):

* Data: ``--images`` JPEG photos (quality 90) made from scikit-image's colour photos, each cropped at random
  (50-100 % of each side) and resized so its long side is 224-700 px (seeded): the issue's set. A CSV gives
  each a label and a box (the centre half), so every localisation number is computed; the numbers themselves
  are not the point.
* Forward only (the floor): the same ``DataLoader`` over ``camlens.data.ImageDataset`` (decode, resize without
  crop, normalise), batch 16, and one inference forward per batch: wall time from the first batch asked for
  to the last forward, per image.
* Evaluate: ``camlens.evaluate(model, csv, "gradcam", metrics="localization", batch_size=16, workers=W)``, the
  CLI's pass without pictures: wall time of the call, per image (start-up included: layer probe, weights hash,
  DataLoader workers), and its own seconds per stage (``Evaluation.seconds``: waiting for data, the separate
  forward if any, the method, the localisation metrics incl. the MaxBoxAcc sweep, writing records).
* Each round runs every case once in a fresh order; per case the median time and the median over rounds of
  the paired ratio evaluate / floor (same W). ``torch.set_num_threads(1)``; the load average is printed.
* The sweep alone: ``metrics.localization._sweep`` on a 500 x 375 upsampled 7 x 7 map (100 thresholds)
  against the labelling per threshold it replaced (the test oracle ``tests/test_localization.labelled_sweep``).

Writes benchmarks/results/evaluate.json (or evaluate-DEVICE.json) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_core import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (scikit-image photo, ImageNet class used as its label)
PHOTOS = (
    ("chelsea", 285),
    ("coffee", 967),
    ("rocket", 657),
    ("stereo_motorcycle", 665),
    ("astronaut", 834),
    ("hubble_deep_field", 0),
    ("immunohistochemistry", 0),
    ("cat", 285),
    ("retina", 0),
)


def make_photos(folder: Path, n: int = 64, seed: int = 0) -> Path:
    """``n`` JPEG photos 224-700 px, cropped and resized at random (seeded), and ``photos.csv`` with a box each."""
    from PIL import Image
    from skimage import data as photos

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["path,class,x0,y0,x1,y1"]
    for i in range(n):
        name, label = PHOTOS[i % len(PHOTOS)]
        pixels = getattr(photos, name)()
        image = Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).convert("RGB")
        width, height = image.size
        cw, ch = int(width * rng.uniform(0.5, 1.0)), int(height * rng.uniform(0.5, 1.0))
        x0, y0 = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
        image = image.crop((x0, y0, x0 + cw, y0 + ch))
        scale = rng.uniform(224, 700) / max(image.size)
        image = image.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BILINEAR)
        image.save(folder / f"p{i:03d}.jpg", quality=90)
        w, h = image.size
        lines.append(f"p{i:03d}.jpg,{label},{w // 4},{h // 4},{3 * w // 4},{3 * h // 4}")
    (folder / "photos.csv").write_text("\n".join(lines) + "\n")
    return folder / "photos.csv"


def forward_only(bundle: Any, csv: Path, workers: int, device: str) -> float:
    """Seconds per image of decode + resize + one inference forward, through the loader evaluate uses."""
    from camlens import data as datasets

    images = datasets.ImageDataset(datasets.open_dataset(csv), bundle.size, bundle.mean, bundle.std)
    loader = torch.utils.data.DataLoader(
        images, batch_size=16, num_workers=workers, collate_fn=datasets.collate, pin_memory=device != "cpu"
    )
    start = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            bundle.model(x.to(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(images)


def evaluate_pass(bundle: Any, csv: Path, workers: int, device: str, out: Path | None) -> tuple[float, Any]:
    from camlens.evaluate import evaluate

    start = time.perf_counter()
    result = evaluate(
        bundle,
        csv,
        "gradcam",
        metrics="localization",
        batch_size=16,
        workers=workers,
        device=device,
        progress=False,
        out=out,
        examples=0,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / result.images, result


def sweep_alone() -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "tests"))
    from camlens.geometry import original_maps
    from camlens.metrics.localization import _minmax, _sweep
    from test_localization import labelled_sweep

    raw = torch.rand(7, 7, generator=torch.Generator().manual_seed(0))
    m = _minmax(original_maps(raw, (375, 500)).numpy())
    grid = np.arange(100) / 100
    times: dict[str, list[float]] = {"run graph (camlens)": [], "labelling per threshold (before)": []}
    for _ in range(5):
        for name, fn in (("run graph (camlens)", _sweep), ("labelling per threshold (before)", labelled_sweep)):
            start = time.perf_counter()
            fn(m, grid)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="0,1", help="comma-separated DataLoader worker counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume-files", action="store_true", help="evaluate with out= (per-batch records)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from camlens import zoo

    bundle = zoo.load_model("efficientnet_lite0")
    bundle.model.to(args.device)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        csv = make_photos(Path(tmp) / "photos", args.images)
        cases = [(kind, w) for w in workers for kind in ("forward", "evaluate")]
        times: dict[str, list[float]] = {f"{k} w{w}": [] for k, w in cases}
        ratios: dict[int, list[float]] = {w: [] for w in workers}
        stages: dict[int, list[dict[str, float]]] = {w: [] for w in workers}
        forward_only(bundle, csv, 0, args.device)  # warm-up: page cache, allocator
        for r in range(args.rounds):
            random.shuffle(cases)
            got: dict[str, float] = {}
            for kind, w in cases:
                if kind == "forward":
                    got[f"forward w{w}"] = forward_only(bundle, csv, w, args.device)
                else:
                    out = Path(tmp) / f"out-{r}-{w}" if args.resume_files else None
                    got[f"evaluate w{w}"], result = evaluate_pass(bundle, csv, w, args.device, out)
                    stages[w].append(result.seconds)
            for key, value in got.items():
                times[key].append(value)
            for w in workers:
                ratios[w].append(got[f"evaluate w{w}"] / got[f"forward w{w}"])
            print(f"round {r + 1}: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in sorted(got.items())), flush=True)
    sweep = sweep_alone()
    load = os.getloadavg()
    doc: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average": load,
        "threads": args.threads,
        "device": args.device,
        "images": args.images,
        "rounds": args.rounds,
        "ms_per_image": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "ratio_evaluate_to_forward": {f"w{w}": statistics.median(v) for w, v in ratios.items()},
        "ratio_per_round": {f"w{w}": v for w, v in ratios.items()},
        "stage_share": {},
        "sweep_ms": {k: 1000 * v for k, v in sweep.items()},
    }
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch threads {args.threads}; {args.device}")
    print("| workers | forward only ms/img | evaluate ms/img | ratio (median of paired) | ratio per round |")
    print("|---:|---:|---:|---:|---|")
    for w in workers:
        f, e = doc["ms_per_image"][f"forward w{w}"], doc["ms_per_image"][f"evaluate w{w}"]
        rounds = ", ".join(f"{r:.2f}" for r in ratios[w])
        print(f"| {w} | {f:.1f} | {e:.1f} | {doc['ratio_evaluate_to_forward'][f'w{w}']:.2f} | {rounds} |")
    print("\nshare of evaluate's own wall time per stage (median over rounds):")
    for w in workers:
        keys = [k for k in stages[w][0] if k != "wall"]
        share = {k: statistics.median(s[k] / s["wall"] for s in stages[w]) for k in keys}
        share["other (records, bookkeeping)"] = max(0.0, 1 - sum(share.values()))
        doc["stage_share"][f"w{w}"] = share
        print(f"  workers {w}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in share.items()))
    print(
        "\nsweep alone, 500 x 375 map, 100 thresholds: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in doc["sweep_ms"].items())
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "evaluate.json" if args.device == "cpu" else f"evaluate-{args.device.replace(':', '')}.json"
    (RESULTS / name).write_text(json.dumps(doc, indent=1))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
