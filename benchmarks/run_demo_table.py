"""docs/metrics.md's table "every method on the built-in demo set": every registered method, every metric.

    python benchmarks/run_demo_table.py                      # RISE at 1000 masks (see below)
    python benchmarks/run_demo_table.py --rise-masks 4000    # RISE's default (paper: 4000 for ResNet-50)

The same evaluation as

    camlens evaluate --demo --method <all registered methods> \\
        --metrics localization,pointing,deletion,insertion,ad,ic,road

(EfficientNet-Lite0, the 4 scikit-image photos with hand-drawn boxes, evaluate's defaults: top-5, box
threshold 0.2 of the max, 20 deletion / insertion steps, batch 16), except that torch runs on ``--threads``
threads (default 1: on a shared, oversubscribed CPU two threads spin-wait for each other), and
that the CLI has no per-method options: RISE runs with ``--rise-masks`` masks (default here 1000, the
method's default 4000) and LIME with ``--lime-samples`` samples (default 1000, LIME's own). Every other
method runs with its defaults.

Writes benchmarks/results/demo_table.json (the evaluation's rows and per-image records, plus the
command, date, machine, load and thread count) and the table in markdown to benchmarks/results/demo_table.md.

    python benchmarks/run_demo_table.py --box-compare cam,gradcam,...   # the box threshold fix, per image
    python benchmarks/run_demo_table.py --methods A --out part1.json   # on a shared machine: two halves
    python benchmarks/run_demo_table.py --merge part1.json part2.json  # side by side, then one table

``--box-compare`` explains each demo photo's ground-truth class with each named method (defaults) and cuts
the CAM-paper box from the same map (ReLU, bilinear to the photo's size) two ways: at 0.2 of the MAX
(camlens now, the CAM authors' script) and at 0.2 of the min-max RANGE (camlens before the fix, i.e.
min + 0.2 (max - min)); it writes per image the map's minimum as a fraction of its maximum, both boxes,
their best IoU with the ground truth, and the three localisation columns under both conventions to
benchmarks/results/demo_box_threshold.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench_core import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRICS = "localization,pointing,deletion,insertion,ad,ic,road"


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def box_compare(methods: list[str], out: Path) -> None:
    """The CAM-paper box at 0.2 x max (now) and at min + 0.2 x (max - min) (before the fix), per photo."""
    import numpy as np

    import camlens
    from camlens import geometry, zoo
    from camlens.data import open_dataset
    from camlens.evaluate import demo_dataset

    model = zoo.efficientnet_lite0()
    records: dict[str, list[dict[str, object]]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="camlens-box-compare-") as scratch:
        data = open_dataset(str(demo_dataset(Path(scratch) / "demo-data")))
        for sample in data.samples:
            image = zoo.load_image(sample.path)
            width, height = image.size
            x = zoo.preprocess(image)
            with torch.no_grad():
                top5 = model(x)[0].topk(5).indices.tolist()
            gt = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4)
            for method in methods:
                exp = camlens.explain(model, x, method, targets=[int(sample.label)])
                cam = geometry.original_maps(exp.raw[0, 0], (height, width)).numpy()
                low, high = float(cam.min()), float(cam.max())
                old = (cam - low) / (high - low) if high > low else np.zeros_like(cam)
                row: dict[str, object] = {
                    "image": Path(sample.path).name,
                    "label": int(sample.label),
                    "top1_ok": top5[0] == int(sample.label),
                    "top5_ok": int(sample.label) in top5,
                    "min_over_max": low / high if high > 0 else None,
                }
                for key, m in (("max", cam), ("range", old)):
                    found = geometry.box_from_map(m, 0.2)
                    iou = 0.0 if found is None else float(geometry.box_iou(np.array([found], float), gt).max())
                    row[f"box_{key}"] = None if found is None else [int(v) for v in found]
                    row[f"iou_{key}"] = round(iou, 4)
                records[method].append(row)
            print(Path(sample.path).name, "done", flush=True)
    summary = {}
    for method, rows in records.items():
        n = len(rows)
        cols = {}
        for key in ("max", "range"):
            ok = [r[f"iou_{key}"] >= 0.5 for r in rows]  # type: ignore[operator]
            cols[key] = {
                "top1_loc_err": 100 * (1 - sum(o and r["top1_ok"] for o, r in zip(ok, rows)) / n),
                "top5_loc_err": 100 * (1 - sum(o and r["top5_ok"] for o, r in zip(ok, rows)) / n),
                "gt_known_loc": 100 * sum(ok) / n,
            }
        summary[method] = cols
    doc = {
        "command": "python benchmarks/run_demo_table.py" + "".join(" " + a for a in sys.argv[1:]),
        "date": f"{dt.datetime.now():%Y-%m-%d %H:%M}",
        "threshold": 0.2,
        "summary": summary,
        "per_image": records,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for method, cols in summary.items():
        print(f"{method:18s} max: {cols['max']}  range: {cols['range']}")
        for r in records[method]:
            print(
                f"   {r['image']:14s} min/max {r['min_over_max']}  IoU max {r['iou_max']}  IoU range {r['iou_range']}"
            )
    print(f"wrote {out}")


def merge(parts: list[Path], out: Path) -> None:
    """One table from runs of disjoint method subsets (run side by side on a shared machine)."""
    from camlens.evaluate import Evaluation

    docs = [json.loads(part.read_text()) for part in parts]
    first = docs[0]
    merged = {
        "command": " && ".join(d["command"] for d in docs)
        + " && python benchmarks/run_demo_table.py --merge "
        + " ".join(str(p.relative_to(ROOT)) for p in parts),
        "runs": [{k: d[k] for k in ("command", "date", "seconds", "machine", "method_options")} for d in docs],
        "metrics": first["metrics"],
        "method_options": {m: o for d in docs for m, o in d["method_options"].items()},
    }
    for key in ("model", "dataset", "images", "topk", "box_threshold", "skipped"):
        merged[key] = first.get(key)
    merged["methods"] = [m for d in docs for m in d["methods"]]
    merged["rows"] = {m: r for d in docs for m, r in d["rows"].items()}
    merged["per_image"] = {m: r for d in docs for m, r in d.get("per_image", {}).items()}
    out.write_text(json.dumps(merged, indent=1) + "\n")
    table = Evaluation(
        merged["methods"],
        merged["rows"],
        merged["images"],
        merged["model"],
        merged["dataset"],
        topk=merged["topk"],
        threshold=merged["box_threshold"]["value"],
    ).markdown()
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rise-masks", type=int, default=1000, help="RISE's n_masks (method default 4000)")
    parser.add_argument("--lime-samples", type=int, default=1000, help="LIME's n_samples (default 1000)")
    parser.add_argument("--methods", help="comma-separated (default: every registered method)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the cores are shared)")
    parser.add_argument("--out", default=str(RESULTS / "demo_table.json"), help="JSON file to write")
    parser.add_argument("--box-compare", metavar="METHODS", help="only the box threshold comparison (see above)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="merge runs of disjoint methods into --out")
    args = parser.parse_args()
    if args.merge:
        merge([Path(p).resolve() for p in args.merge], Path(args.out))
        return
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.box_compare:
        box_compare(args.box_compare.split(","), RESULTS / "demo_box_threshold.json")
        return

    import camlens
    from camlens import zoo
    from camlens.evaluate import demo_dataset, evaluate

    methods = args.methods.split(",") if args.methods else camlens.methods()
    options = {"rise": {"n_masks": args.rise_masks}, "lime": {"n_samples": args.lime_samples}}
    load0, t0 = load(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="camlens-demo-table-") as scratch:
        data = demo_dataset(Path(scratch) / "demo-data")
        result = evaluate(
            zoo.load_model("efficientnet_lite0"),
            str(data),
            methods,
            metrics=METRICS,
            out=Path(scratch) / "out",
            examples=0,
            method_options=options,
            progress=True,
        )
        doc = json.loads((Path(scratch) / "out" / "results.json").read_text())
    seconds = time.perf_counter() - t0
    doc.pop("files", None)
    out = Path(args.out)
    run = {
        "command": "python benchmarks/run_demo_table.py" + "".join(" " + a for a in sys.argv[1:]),
        "date": f"{dt.datetime.now():%Y-%m-%d %H:%M}",
        "seconds": round(seconds, 1),
        "machine": {**machine(), "threads": torch.get_num_threads(), "load_start": load0, "load_end": load()},
        "metrics": METRICS,
        "method_options": {m: o for m, o in options.items() if m in methods},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**run, **doc}, indent=1) + "\n")
    table = result.markdown()
    out.with_suffix(".md").write_text(table + "\n")
    print(json.dumps(run, indent=1))
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')} ({seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
