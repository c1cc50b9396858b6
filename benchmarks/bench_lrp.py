"""LRP: camlens against one plain forward and against zennit, time and agreement, on VGG-16 and ResNet-50.

    python benchmarks/bench_lrp.py           # full run: docs/benchmarks.md (LRP section), results/lrp.json
    python benchmarks/bench_lrp.py --quick   # smoke run: prints only

Time: every case is a zero-argument callable, called once to warm up; then in each round every case runs
once in a freshly shuffled order. Per case: the median time per image and the median over rounds of the
*paired* ratio case / floor (same round), with its interquartile range; camlens / zennit likewise paired.
The floor is one forward pass under ``torch.inference_mode()``, same model and batch. camlens cases are
``camlens.explain(model, x, method, targets=ids)`` (the relevance in ``Explanation.pixels``; the
normalised maps are not read); zennit cases register the composite with its canonizer
(``ResNetCanonizer`` / ``VGGCanonizer``) for the call, as its documentation does, and take the gradient
with the one-hot x logit as output relevance. Random weights (torchvision's initialisation; the batch
norms get random statistics and affine parameters, else folding them would be a no-op).

Agreement: max |camlens - zennit| / max |zennit| per composite at batch 1 on a 224x224 image. zennit's
merged batch norm keeps mean 0, variance 1 and so still divides by sqrt(1 + eps); with the default
eps=1e-5 its canonized ResNet computes a slightly different function from the model. Both are shown:
``eps=0`` (both compute the model's function) and the model as it is (``eps=1e-5``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import camlens

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_lrp import _randomise_batch_norms, _zennit_relevance  # noqa: E402  (the tests' zennit setup)

DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- bench_lrp.py: generated, begin -->", "<!-- bench_lrp.py: generated, end -->"
COMPOSITES = ["lrp-epsilon-plus", "lrp-epsilon-plus-flat", "lrp-epsilon-gamma-box", "lrp-epsilon-alpha2-beta1"]
# timed: the default and the most expensive composite (batch 8: the default only, to keep the run short)
TIMED = ["lrp-epsilon-plus-flat", "lrp-epsilon-gamma-box"]


def model_for(arch: str, bn_eps: float | None = None) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_batch_norms(getattr(torchvision.models, arch)(), eps=bn_eps)


def zennit_relevance(method: str, model: nn.Module, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    relevance, found = _zennit_relevance(model, x, method)
    assert torch.equal(found, ids)  # zennit's canonized model picks the same classes
    return relevance


def camlens_relevance(method: str, model: nn.Module, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    pixels = camlens.explain(model, x, method=method, targets=ids[:, None]).pixels
    assert pixels is not None
    return pixels[:, 0]


def agreement(arch: str) -> dict[str, dict[str, float]]:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    found: dict[str, dict[str, float]] = {}
    settings = {"eps=0": 0.0, "eps=1e-5": None} if arch.startswith("resnet") else {"no BN": None}
    for label, eps in settings.items():
        model = model_for(arch, eps)
        with torch.no_grad():
            ids = model(x).argmax(1)
        for method in COMPOSITES:
            ours, theirs = camlens_relevance(method, model, x, ids), zennit_relevance(method, model, x, ids)
            diff = float((ours - theirs).abs().max() / theirs.abs().max())
            found.setdefault(method, {})[label] = diff
            print(f"  agreement {arch} {method} {label}: {diff:.1e}", flush=True)
    return found


def timing(arch: str, batch: int, rounds: int) -> list[dict[str, Any]]:
    model = model_for(arch)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ids = model(x).argmax(1)

    def floor() -> None:
        with torch.inference_mode():
            model(x)

    cases: dict[str, Callable[[], Any]] = {"floor": floor}
    for method in TIMED if batch == 1 else TIMED[:1]:
        cases[f"camlens {method}"] = lambda m=method: camlens_relevance(m, model, x, ids)
        cases[f"zennit {method}"] = lambda m=method: zennit_relevance(m, model, x, ids)
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        order = list(cases)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, ts in times.items():
        ratio = [t / f for t, f in zip(ts, times["floor"])]
        row = {"case": name, "ms_per_image": 1000 * statistics.median(ts) / batch, **_median_iqr(ratio, "x_floor")}
        if name.startswith("camlens"):
            peer = times[name.replace("camlens", "zennit")]
            row.update(_median_iqr([t / p for t, p in zip(ts, peer)], "x_zennit"))
        rows.append(row)
        print(f"  {arch} b{batch} {name}: {row}", flush=True)
    return rows


def _median_iqr(values: list[float], key: str) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {key: statistics.median(values), f"{key}_q1": q[0], f"{key}_q3": q[2]}


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        BEGIN,
        "",
        "## LRP: camlens against one forward and zennit",
        "",
        f"Rerun: `{meta['command']}` (from the repository root, in the dev environment; {meta['minutes']:.0f} min). "
        f"Date: {meta['date']}.",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}, zennit {meta['zennit']}, `torch.set_num_threads(2)`; "
        f"load average {meta['load_start']} at start, {meta['load_end']} at end (other jobs shared the cores).",
        "",
        "Random weights, one 224x224 image per sample; cases interleaved in shuffled order each round; "
        "`x floor` and `x zennit` are medians of ratios paired within a round, with their interquartile range.",
        "",
        "### Agreement with zennit (max |camlens - zennit| / max |zennit|, batch 1)",
        "",
        "| composite | VGG-16 | ResNet-50, BN eps=0 | ResNet-50, BN eps=1e-5 |",
        "|---|---:|---:|---:|",
    ]
    for method in COMPOSITES:
        vgg, res = results["agreement"]["vgg16"][method], results["agreement"]["resnet50"][method]
        lines.append(f"| `{method}` | {vgg['no BN']:.1e} | {res['eps=0']:.1e} | {res['eps=1e-5']:.1e} |")
    lines += [
        "",
        "zennit's merged batch norm still divides by sqrt(1 + eps), so with eps=1e-5 its canonized ResNet is "
        "not the model; with eps=0 both compute the model's function.",
    ]
    for key, rows in results["timing"].items():
        lines += [
            "",
            f"### Time: {key}",
            "",
            "| case | ms / image | x floor | IQR | x zennit | IQR |",
            "|---|---:|---:|---|---:|---|",
        ]
        for r in rows:
            vs = f"{r['x_zennit']:.2f} | {r['x_zennit_q1']:.2f}-{r['x_zennit_q3']:.2f}" if "x_zennit" in r else " | "
            lines.append(
                f"| {r['case']} | {r['ms_per_image']:.0f} | {r['x_floor']:.1f} | "
                f"{r['x_floor_q1']:.1f}-{r['x_floor_q3']:.1f} | {vs} |"
            )
    lines += ["", END]
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, batch 1 only, no files written")
    args = parser.parse_args()
    torch.set_num_threads(2)
    random.seed(0)
    start, load_start = time.time(), _load()
    results: dict[str, Any] = {"agreement": {}, "timing": {}}
    for arch in ("vgg16", "resnet50"):
        results["agreement"][arch] = agreement(arch)
        for batch, rounds in ((1, 2), (8, 1)) if args.quick else ((1, 5), (8, 2)):
            if args.quick and batch == 8:
                continue
            results["timing"][f"{arch}, batch {batch} ({rounds} rounds)"] = timing(arch, batch, rounds)
    results["meta"] = {
        "command": "python benchmarks/bench_lrp.py" + (" --quick" if args.quick else ""),
        "argv": shlex.join(sys.argv),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "minutes": (time.time() - start) / 60,
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "torch": torch.__version__,
        "zennit": metadata.version("zennit"),
        "load_start": load_start,
        "load_end": _load(),
    }
    text = markdown(results)
    print(text)
    if args.quick:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lrp.json").write_text(json.dumps(results, indent=1))
    doc = DOCS.read_text()
    if BEGIN in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOCS.write_text(doc)


if __name__ == "__main__":
    main()
