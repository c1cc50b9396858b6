"""Adebayo et al.'s model parameter randomisation test for every camlens method on EfficientNet-Lite0.

    python benchmarks/run_sanity_lite0.py          # full run: docs/sanity.md (generated part) and docs/img/sanity_*
    python benchmarks/run_sanity_lite0.py --quick  # 3 methods, 3 blocks: prints only
    python benchmarks/run_sanity_lite0.py --methods rise,lime --no-doc  # some methods: JSON only
    python benchmarks/run_sanity_lite0.py --merge-doc benchmarks/results/sanity_lite0.json  # their rows into the doc
    python benchmarks/run_sanity_lite0.py --methods rise,lime --figure sanity_x.png  # seed 0: a subset's figure

What it does (docs/sanity.md repeats it next to the numbers):

* model: ``camlens.zoo.efficientnet_lite0()`` (ImageNet weights); photos: ``skimage.data.chelsea()``
  and ``skimage.data.coffee()``, preprocessed by ``camlens.zoo.preprocess`` (224x224, no crop);
* every registered method, its default layer, top-1 class ids of the trained model;
* cascading randomisation over the default blocks (19: ``_fc``, head conv+bn, 16 MBConv blocks,
  stem conv+bn), ``init="reset"``, ``bn="reset"``, seed 0; Score-CAM (one forward pass per channel,
  1280 channels, about 30 s per map on a busy core), RISE and LIME (hundreds of forward passes per map)
  on chelsea only and in 6 coarser steps (classifier, head, MBConv blocks 15-11, 10-4, 3-0, stem);
* the sampling methods with fewer samples than their defaults (``OPTIONS``: Integrated Gradients 12
  steps, SmoothGrad and guided SmoothGrad 12 samples, RISE 300 masks, LIME 200 samples); every map of
  one check uses the same seeded noise / masks / samples, so only the weights differ;
* robustness tables (all methods but those in ``SEED0_ONLY``: Score-CAM, the sampling methods,
  occlusion, and ``lrp``, which is ``lrp-epsilon-plus-flat`` by default): seeds 1 and 2,
  ``bn="recalibrate"``; and independent randomisation of single blocks for Grad-CAM, saliency and
  guided backprop;
* ``torch.set_num_threads(1)``; every number also goes to benchmarks/results/sanity_lite0.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import camlens
from camlens import zoo
from camlens.metrics.sanity import SanityResult, default_blocks, plot_results, randomized_models, sanity_check

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "sanity.md"
IMG = ROOT / "docs" / "img"
BEGIN, END = "<!-- run_sanity_lite0.py: generated, begin -->", "<!-- run_sanity_lite0.py: generated, end -->"
THRESHOLD = 0.5
SLOW = {"scorecam", "rise", "lime"}  # hundreds of forward passes per map: chelsea only, 6 coarser steps
# fewer samples than the defaults (50 steps / 50 samples / 4000 masks / 1000 samples): the check recomputes
# the map at every step
OPTIONS: dict[str, dict[str, Any]] = {
    "integrated-gradients": {"steps": 12},
    "smoothgrad": {"samples": 12},
    "smoothgrad-guided": {"samples": 12},
    "rise": {"n_masks": 300},
    "lime": {"n_samples": 200},
}
# seed 0 only (not in the seed and BatchNorm tables): the slow and the sampling methods
# (lrp: by default the same rules as lrp-epsilon-plus-flat)
SEED0_ONLY = SLOW | {"integrated-gradients", "smoothgrad", "smoothgrad-guided", "occlusion", "lrp"}
RESULTS = ROOT / "benchmarks" / "results" / "sanity_lite0.json"


def coarse(blocks: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Score-CAM's steps: the classifier, the head, then the MBConv blocks in three groups, the stem.

    In cascading mode each group leaves the same blocks randomised as the per-block step of its last
    block, so the values are drawn at those columns.
    """
    names = {n: g for g in blocks for n in g}
    mb = [f"_blocks.{i}" for i in range(15, -1, -1)]
    groups = [names["_fc"], names["_conv_head"], tuple(mb[0:5]), tuple(mb[5:12]), tuple(mb[12:16]), names["_conv_stem"]]
    return [tuple(g) for g in groups]


def photos() -> list[Any]:
    from skimage import data

    return [data.chelsea(), data.coffee()]


def load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def run(methods: list[str], x: torch.Tensor, quick: bool, **kwargs: Any) -> dict[str, SanityResult]:
    model = zoo.efficientnet_lite0()
    blocks = default_blocks(model, x)
    if quick:
        blocks = blocks[:3]
    results = {}
    for method in methods:
        batch, steps = (x[:1], blocks if quick else coarse(blocks)) if method in SLOW else (x, blocks)
        t = time.perf_counter()
        results[method] = sanity_check(model, batch, method, blocks=steps, **kwargs, **OPTIONS.get(method, {}))
        r = results[method]
        print(
            f"{method:16s} {time.perf_counter() - t:6.1f}s  spearman {r.mean()[-1]:+.2f}  "
            f"first {r.mean()[0]:+.2f}  changes at {r.changes_at(THRESHOLD)}  passed {r.passed(THRESHOLD)}",
            flush=True,
        )
    return results


def short(label: str) -> str:
    """``_blocks.15+_blocks.14+...+_blocks.11`` -> ``b15-b11``; ``_conv_head+_bn1`` -> ``head``."""
    names = [n.replace("_blocks.", "b") for n in label.split("+")]
    if names[0] == "_conv_head":
        return "head"
    if names[0] == "_conv_stem":
        return "stem"
    return names[0].lstrip("_") if len(names) == 1 else f"{names[0]}-{names[-1]}"


def main_table(results: dict[str, SanityResult]) -> list[str]:
    lines = [
        f"| method | layer | photos | Spearman after `fc` | first step with Spearman < {THRESHOLD} "
        "| final Spearman | final Spearman abs | final Spearman signed | final SSIM | blank final maps | passed "
        "| time (s) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for method, r in results.items():
        s = r.summary(THRESHOLD)
        changes = f"`{short(s['changes_at'])}`" if s["changes_at"] else "never"
        lines.append(
            f"| {method} | `{r.layer}` | {r.spearman.shape[1]} | {fmt(float(r.mean()[0]))} | {changes} "
            f"| {fmt(s['spearman'])} | {fmt(s['spearman_abs'])} | {fmt(s['spearman_signed'])} | {fmt(s['ssim'])} "
            f"| {s['blank']:.0%} | {'**pass**' if s['passed'] else '**FAIL**'} | {r.seconds:.0f} |"
        )
    return lines


def blank_mark(r: SanityResult, step: int) -> str:
    """ "†" when every map of the step is blank (constant: all zero after the ReLU), "*" when some are."""
    if r.blank is None or not r.blank[step].any():
        return ""
    return "†" if r.blank[step].all() else "*"


def curve_table(results: dict[str, SanityResult], metric: str = "spearman") -> list[str]:
    """Mean ``metric`` after every step: the numbers behind the figure's curves (empty: step not run)."""
    layers = max(results.values(), key=lambda r: len(r.layers)).layers
    index = {n: i for i, label in enumerate(layers) for n in label.split("+")}
    lines = ["| method | " + " | ".join(short(n) for n in layers) + " |", "|---|" + "---:|" * len(layers)]
    for method, r in results.items():
        cells = [""] * len(layers)
        for i, (label, value) in enumerate(zip(r.layers, r.mean(metric))):
            cells[max(index[n] for n in label.split("+"))] = f"{value:.2f}{blank_mark(r, i)}"
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def changed(r: SanityResult) -> str:
    at = r.changes_at(THRESHOLD)
    return f"`{short(at)}`" if at else "never"


def compare_table(base: dict[str, SanityResult], other: dict[str, SanityResult]) -> list[str]:
    lines = [
        "| method | final Spearman, bn=reset | final Spearman, bn=recalibrate | first block < 0.5, reset "
        "| first block < 0.5, recalibrate | same verdict |",
        "|---|---:|---:|---|---|---|",
    ]
    for method, r in other.items():
        b = base[method]
        lines.append(
            f"| {method} | {b.mean()[-1]:.2f} | {r.mean()[-1]:.2f} | {changed(b)} | {changed(r)} "
            f"| {'yes' if b.passed(THRESHOLD) == r.passed(THRESHOLD) else '**no**'} |"
        )
    return lines


def seed_table(by_seed: dict[int, dict[str, SanityResult]]) -> list[str]:
    seeds = sorted(by_seed)
    lines = [
        "| method | " + " | ".join(f"final Spearman, seed {s}" for s in seeds) + " | verdicts |",
        "|---|" + "---:|" * len(seeds) + "---|",
    ]
    for method in by_seed[seeds[-1]]:
        runs = [by_seed[s][method] for s in seeds]
        verdicts = ", ".join("pass" if r.passed(THRESHOLD) else "FAIL" for r in runs)
        lines.append(f"| {method} | " + " | ".join(f"{r.mean()[-1]:.2f}" for r in runs) + f" | {verdicts} |")
    return lines


def independent_table(results: dict[str, SanityResult]) -> list[str]:
    layers = next(iter(results.values())).layers
    lines = ["| method | " + " | ".join(short(n) for n in layers) + " |", "|---|" + "---:|" * len(layers)]
    for method, r in results.items():
        cells = [f"{v:.2f}{blank_mark(r, i)}" for i, v in enumerate(r.mean())]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def shrink(path: Path) -> Path:
    """Rewrite a PNG with a 256-colour palette (about 2.5x smaller; plots and heatmaps survive it)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    rgb.quantize(256).save(path, optimize=True)
    return path


def logit_scales(x: torch.Tensor) -> dict[str, float]:
    model = zoo.efficientnet_lite0()
    blocks = default_blocks(model, x)
    with torch.no_grad():
        scales = {"trained": float(model(x).abs().max())}
    for bn in ("reset", "recalibrate"):
        *_, (_, random_model) = randomized_models(model, blocks, "cascading", bn=bn, inputs=x)
        with torch.no_grad():
            scales[bn] = float(random_model(x).abs().max())
    return scales


def _curves(r: SanityResult) -> dict[str, Any]:
    """Per step (``layers``): the mean of each metric over the samples, and the fraction of blank maps."""
    out: dict[str, Any] = {"layers": list(r.layers)}
    for metric in ("spearman", "spearman_abs", "spearman_signed", "ssim"):
        if getattr(r, metric) is not None:
            out[f"curve_{metric}"] = [float(v) for v in r.mean(metric)]
    if r.blank is not None:
        out["curve_blank_fraction"] = [float(b.mean()) for b in r.blank]
    return out


def write_json(
    path: Path,
    start: float,
    load0: str,
    top1: list[int],
    classes: list[str],
    base: dict[str, SanityResult],
    by_seed: dict[int, dict[str, SanityResult]],
    recal: dict[str, SanityResult],
    indep: dict[str, SanityResult],
    scales: dict[str, float],
) -> None:
    """Every number of the generated tables (and the per-step curves) as JSON."""
    import json

    from bench_core import machine

    def entry(r: SanityResult) -> dict[str, Any]:
        return {**r.summary(THRESHOLD), "options": OPTIONS.get(r.method, {}), **_curves(r)}

    results = {
        "command": "python benchmarks/run_sanity_lite0.py" + "".join(" " + a for a in sys.argv[1:]),
        "date": f"{dt.datetime.now():%Y-%m-%d %H:%M}",
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "machine": {**machine(), "threads": torch.get_num_threads(), "load_start": load0, "load_end": load()},
        "model": "efficientnet_lite0 (ImageNet weights)",
        "photos": {"chelsea": classes[top1[0]], "coffee": classes[top1[1]]},
        "threshold": THRESHOLD,
        "init": "reset",
        "cascading_seed0_bn_reset": {m: entry(r) for m, r in base.items()},
        "final_spearman_by_seed": {
            str(s): {m: float(r.mean()[-1]) for m, r in res.items()} for s, res in by_seed.items()
        },
        "bn_recalibrate": {m: entry(r) for m, r in recal.items()},
        "independent": {m: entry(r) for m, r in indep.items()},
        "largest_abs_logit": scales,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


_ORDER = ["_fc", "_conv_head", *(f"_blocks.{i}" for i in range(15, -1, -1)), "_conv_stem"]
_INDEX = {**{n: i for i, n in enumerate(_ORDER)}, "_bn1": 1, "_bn0": len(_ORDER) - 1}


def _mark(fraction: float | None) -> str:
    return "" if not fraction else ("†" if fraction >= 1 else "*")


def _curve_row(name: str, e: dict[str, Any], metric: str) -> str:
    cells = [""] * len(_ORDER)
    blank = e.get("curve_blank_fraction") or [None] * len(e["layers"])
    for label, value, b in zip(e["layers"], e[f"curve_{metric}"], blank):
        cells[max(_INDEX[n] for n in label.split("+"))] = f"{value:.2f}{_mark(b)}"
    return f"| {name} | " + " | ".join(cells) + " |"


def merge_doc(path: Path, tag: str) -> None:
    """Append the rows of a ``--methods ... --no-doc`` run (its JSON) to the generated tables of docs/sanity.md.

    Each appended row's method is followed by ``tag`` (e.g. ``(run 2)``), so the doc says which run a row
    comes from; the header of the block keeps the full run's command and date, and gets one line for this run.
    """
    import json

    doc = json.loads(path.read_text())
    base, recal, seeds = doc["cascading_seed0_bn_reset"], doc["bn_recalibrate"], doc["final_spearman_by_seed"]
    text = DOCS.read_text()
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    lines = block.split("\n")

    def main_row(m: str, e: dict[str, Any]) -> str:
        changes = f"`{short(e['changes_at'])}`" if e["changes_at"] else "never"
        return (
            f"| {m} {tag} | `{e['layer']}` | {e['samples']} | {fmt(e['curve_spearman'][0])} | {changes} "
            f"| {fmt(e['spearman'])} | {fmt(e.get('spearman_abs'))} | {fmt(e.get('spearman_signed'))} "
            f"| {fmt(e.get('ssim'))} | {e['blank']:.0%} | {'**pass**' if e['passed'] else '**FAIL**'} "
            f"| {e['seconds']:.0f} |"
        )

    def verdict(v: float) -> str:
        return "pass" if v < THRESHOLD else "FAIL"

    def at(e: dict[str, Any]) -> str:
        return f"`{short(e['changes_at'])}`" if e["changes_at"] else "never"

    new_rows: list[list[str]] = []
    curve_tables = 0
    tables: list[tuple[int, list[str]]] = []  # (index of the header line, rows to append)
    for i, line in enumerate(lines):
        if line.startswith("| method | layer | photos |"):
            tables.append((i, [main_row(m, e) for m, e in base.items()]))
        elif line.startswith("| method | fc | head |"):
            curve_tables += 1
            if curve_tables <= 2:
                metric = "spearman" if curve_tables == 1 else "spearman_abs"
                tables.append((i, [_curve_row(f"{m} {tag}", e, metric) for m, e in base.items()]))
        elif line.startswith("| method | final Spearman, seed"):
            rows = []
            for m in recal:
                values = [seeds[k][m] for k in sorted(seeds)]
                rows.append(
                    f"| {m} {tag} | "
                    + " | ".join(f"{v:.2f}" for v in values)
                    + f" | {', '.join(verdict(v) for v in values)} |"
                )
            tables.append((i, rows))
        elif line.startswith("| method | final Spearman, bn=reset"):
            rows = []
            for m, r in recal.items():
                b = base[m]
                same = "yes" if b["passed"] == r["passed"] else "**no**"
                rows.append(f"| {m} {tag} | {b['spearman']:.2f} | {r['spearman']:.2f} | {at(b)} | {at(r)} | {same} |")
            tables.append((i, rows))
    for i, rows in reversed(tables):
        end = i + 2
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines[end:end] = rows
        new_rows.append(rows)
    machine_ = doc["machine"]
    note = (
        f"Rows marked {tag}: `{doc['command']}` ({doc['minutes']:.1f} min with one thread), {doc['date']}, "
        f"{machine_['cpu']}, nproc {machine_['nproc']}, load average {machine_['load_start']} at start, "
        f"{machine_['load_end']} at end; merged into these tables by "
        f"`python benchmarks/run_sanity_lite0.py --merge-doc benchmarks/results/{path.name}`. "
        "All other rows: the full run above."
    )
    first_table = tables[0][0]
    lines[first_table:first_table] = [note, ""]
    DOCS.write_text(head + BEGIN + "\n".join(lines) + END + tail)
    print(f"merged {sum(len(r) for r in new_rows)} rows into {DOCS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 methods, 3 blocks, no files written")
    parser.add_argument("--methods", help="comma-separated subset of the registered methods (default: all)")
    parser.add_argument("--no-doc", action="store_true", help="write the JSON only, not docs/sanity.md or the figures")
    parser.add_argument("--json", default=str(RESULTS), help=f"JSON file to write (default {RESULTS})")
    parser.add_argument("--merge-doc", metavar="JSON", help="append a --no-doc run's rows to docs/sanity.md")
    parser.add_argument("--tag", default="(run 2)", help="what --merge-doc writes after each appended method")
    parser.add_argument(
        "--figure",
        metavar="NAME",
        help="run seed 0 only and draw its cascading figure to docs/img/NAME (no JSON, no doc): a subset's picture",
    )
    args = parser.parse_args()
    if args.merge_doc:
        merge_doc(Path(args.merge_doc), args.tag)
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    start, load0 = time.perf_counter(), load()
    images = photos()
    x = torch.cat([zoo.preprocess(image) for image in images])
    classes = zoo.imagenet_classes()
    with torch.no_grad():
        top1 = zoo.efficientnet_lite0()(x).argmax(1).tolist()
    print("top-1:", [classes[i] for i in top1])
    methods = ["gradcam", "saliency", "guided-backprop"] if args.quick else camlens.methods()
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    progress = sys.stderr.isatty()
    base = run(methods, x, args.quick, progress=progress)
    if args.figure:
        IMG.mkdir(parents=True, exist_ok=True)
        shrink(plot_results(list(base.values()), IMG / Path(args.figure).name, images=images))
        print(f"wrote {IMG / Path(args.figure).name} in {(time.perf_counter() - start) / 60:.1f} min")
        return
    if args.quick:
        print(f"{time.perf_counter() - start:.0f} s")
        return
    by_seed = {0: base}
    for seed in (1, 2):
        print(f"seed {seed}", flush=True)
        by_seed[seed] = run([m for m in methods if m not in SEED0_ONLY], x, False, seed=seed, progress=progress)
    print("bn=recalibrate", flush=True)
    recal = run([m for m in methods if m not in SEED0_ONLY], x, False, bn="recalibrate", progress=progress)
    print("independent", flush=True)
    indep_methods = [m for m in ("gradcam", "saliency", "guided-backprop") if m in methods]
    indep = run(indep_methods, x, False, mode="independent", progress=progress)
    scales = logit_scales(x)
    write_json(Path(args.json), start, load0, top1, classes, base, by_seed, recal, indep, scales)
    if args.no_doc:
        print(f"wrote {args.json} in {(time.perf_counter() - start) / 60:.1f} min")
        for line in main_table(base):
            print(line)
        return
    IMG.mkdir(parents=True, exist_ok=True)
    figure = shrink(plot_results(list(base.values()), IMG / "sanity_lite0_cascading.png", images=images))
    single = shrink(base["gradcam"].plot(IMG / "sanity_lite0_gradcam.png", images=images))
    minutes = (time.perf_counter() - start) / 60

    lines = [
        BEGIN,
        "",
        f"Rerun: `python benchmarks/run_sanity_lite0.py` ({minutes:.1f} min with one thread). "
        f"Date: {dt.datetime.now():%Y-%m-%d %H:%M}.",
        "",
        f"Machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, `torch.set_num_threads(1)`; load average {load0} at start, {load()} at end "
        "(other processes shared the cores: times are indicative).",
        "",
        f"Model: EfficientNet-Lite0 (ImageNet weights). Photos: chelsea (top-1: {classes[top1[0]]}) and coffee "
        f"(top-1: {classes[top1[1]]}), 224x224. Cascading randomisation over the {len(base['gradcam'].layers)} "
        "default blocks, from the logits down; `init='reset'`, `bn='reset'`, seed 0. Similarities are means "
        f"over the photos; *passed* = mean Spearman of the shown maps < {THRESHOLD} for the fully randomised "
        "network. Score-CAM, RISE and LIME: chelsea only, 6 coarser steps. Fewer samples than the defaults, "
        "the same seeded draws for every map of a check: "
        + ", ".join(f"{m} {', '.join(f'{k}={v}' for k, v in o.items())}" for m, o in OPTIONS.items())
        + f". JSON: `benchmarks/results/{Path(args.json).name}`.",
        "",
        *main_table(base),
        "",
        "Mean Spearman rank correlation of the shown maps after each cascading step (fc = `_fc`, head = "
        "`_conv_head+_bn1`, b15 = `_blocks.15`, stem = `_conv_stem+_bn0`; Score-CAM: its 6 coarser steps; "
        "† every randomised map of the step is blank, * some are; a blank map counts as Spearman 0):",
        "",
        *curve_table(base),
        "",
        'The same for the absolute values of the signed maps (the paper\'s "with absolute value"):',
        "",
        *curve_table(base, "spearman_abs"),
        "",
        f"![cascading randomisation, all methods](img/{figure.name})",
        "",
        f"Grad-CAM alone, with the interquartile band over the two photos: ![Grad-CAM](img/{single.name})",
        "",
        "Other random draws (seeds 1 and 2; Score-CAM, occlusion and the sampling methods not rerun), "
        "mean Spearman of the shown maps of the fully "
        "randomised network:",
        "",
        *seed_table(by_seed),
        "",
        "BatchNorm statistics of randomised blocks reset (mean 0 / variance 1, the default) or re-estimated "
        "from the photos (`bn='recalibrate'`; the same methods as the seed table):",
        "",
        *compare_table(base, recal),
        "",
        f"Largest |logit| on the two photos: trained {scales['trained']:.1f}; fully randomised with bn='reset' "
        f"{scales['reset']:.2g}, with bn='recalibrate' {scales['recalibrate']:.2g}.",
        "",
        "Independent randomisation (only the named block re-initialised, all others trained), mean Spearman of "
        "the shown maps († / *: all / some maps blank):",
        "",
        *independent_table(indep),
        "",
        END,
    ]
    text = DOCS.read_text() if DOCS.exists() else f"# Sanity checks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOCS}: the markers {BEGIN} / {END} are missing; put them where the results go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(head + "\n".join(lines) + tail)
    print(f"wrote {DOCS}, {figure}, {single} in {minutes:.1f} min")
    for line in main_table(base):
        print(line)


if __name__ == "__main__":
    main()
