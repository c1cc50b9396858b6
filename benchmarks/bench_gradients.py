"""Integrated Gradients and SmoothGrad: time against the floor and captum at equal steps, agreement, completeness.

    python benchmarks/bench_gradients.py            # EfficientNet-Lite0 (chelsea) and ResNet-50, 5 rounds
    python benchmarks/bench_gradients.py --quick    # 10 steps / samples, 2 rounds: a smoke run

Per model, batch 1 (skimage's chelsea, camlens' preprocessing), ``torch.set_num_threads(2)``. Cases, each
a zero-argument callable warmed up once, then timed once per round in a freshly shuffled order:

* ``forward``: one forward of the image under ``torch.inference_mode()`` (the floor of bench_core.py);
* ``N forwards``: the N = steps rows (path points or noisy copies) as plain inference-mode forwards, in
  chunks of ``--batch-size`` rows: what evaluating the model N times costs without any gradient;
* camlens ``integrated-gradients`` (Gauss-Legendre, zero baseline) and captum ``IntegratedGradients``
  (same rule, baseline, ``internal_batch_size``), camlens ``smoothgrad`` and captum
  ``NoiseTunnel(Saliency(abs=False))`` (same samples and chunk size; captum draws its own noise).

Reported: the median time, the median over rounds of the paired ratios (case / forward, case / N
forwards, camlens / captum, each from the same round), their IQR; camlens vs captum IG max |difference|
relative to max |attribution|; completeness |sum IG - (S(x) - S(0))| / |S(x) - S(0)| of the timed call.
Markdown on stdout; JSON in benchmarks/results/gradients.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import camlens
from camlens import zoo

THREADS = 2


def load(name: str) -> tuple[nn.Module, torch.Tensor]:
    from skimage import data

    x = zoo.preprocess(data.chelsea())
    if name == "efficientnet_lite0":
        return zoo.efficientnet_lite0().eval(), x
    if name == "resnet50":
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.resnet50(weights=None).eval(), x
    raise SystemExit(f"unknown model {name!r}: use efficientnet_lite0, resnet50")


def cases(model: nn.Module, x: torch.Tensor, target: int, steps: int, chunk: int) -> dict[str, Callable[[], Any]]:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    rows = x.repeat(steps, 1, 1, 1)

    def forward() -> Any:
        with torch.inference_mode():
            return model(x)

    def forwards() -> Any:
        with torch.inference_mode():
            return [model(rows[i : i + chunk]) for i in range(0, steps, chunk)]

    ig, nt = IntegratedGradients(model), NoiseTunnel(Saliency(model))
    sigma = 0.15 * float(x.max() - x.min())
    return {
        "forward": forward,
        "N forwards": forwards,
        "camlens IG": lambda: (
            camlens.explain(
                model, x, method="integrated-gradients", targets=target, steps=steps, batch_size=chunk, progress=False
            ).pixels
        ),
        "captum IG": lambda: ig.attribute(x, target=target, n_steps=steps, internal_batch_size=chunk),
        "camlens SmoothGrad": lambda: (
            camlens.explain(
                model, x, method="smoothgrad", targets=target, samples=steps, batch_size=chunk, progress=False
            ).pixels
        ),
        "captum SmoothGrad": lambda: nt.attribute(
            x,
            target=target,
            nt_type="smoothgrad",
            nt_samples=steps,
            nt_samples_batch_size=chunk,
            stdevs=sigma,
            abs=False,
        ),
    }


def run(name: str, steps: int, chunk: int, rounds: int) -> dict[str, Any]:
    model, x = load(name)
    with torch.inference_mode():
        logits = model(x)
    target = int(logits.argmax(1))
    calls = cases(model, x, target, steps, chunk)
    for call in calls.values():  # warm-up
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls)
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for k in order:
            start = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - start)
        print(f"  {name} round {r + 1}/{rounds}", file=sys.stderr)

    def ratio(a: str, b: str) -> dict[str, float]:
        values = [s / t for s, t in zip(times[a], times[b])]
        q = np.percentile(values, [25, 75])
        return {"median": statistics.median(values), "q1": float(q[0]), "q3": float(q[1])}

    ours = calls["camlens IG"]()
    theirs = calls["captum IG"]().detach()
    with torch.inference_mode():
        gap = float(model(x)[0, target] - model(torch.zeros_like(x))[0, target])
    completeness = {}
    for rule in ("gausslegendre", "riemann_right", "riemann_trapezoid"):
        pixels = camlens.explain(
            model, x, method="integrated-gradients", targets=target, steps=steps, rule=rule, batch_size=chunk
        ).pixels
        completeness[rule] = abs(float(pixels.sum()) - gap) / abs(gap)
    return {
        "model": name,
        "target": target,
        "ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "x forward": {k: ratio(k, "forward") for k in calls},
        "x N forwards": {k: ratio(k, "N forwards") for k in calls},
        "camlens / captum": {
            "IG": ratio("camlens IG", "captum IG"),
            "SmoothGrad": ratio("camlens SmoothGrad", "captum SmoothGrad"),
        },
        "ig_vs_captum_rel": float((ours[:, 0] - theirs).abs().max() / theirs.abs().max()),
        "completeness": completeness,
        "gap": gap,
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    steps, chunk = meta["steps"], meta["batch_size"]
    lines = [
        f"Rerun: `{meta['command']}` ({meta['minutes']:.1f} min). Date: {meta['date']}. {meta['machine']}; "
        f"load average {meta['load_start']} at start, {meta['load_end']} at end.",
        "",
        f"Batch 1 (chelsea, 224x224), {steps} steps / samples, {chunk} rows per forward + backward, "
        f"{meta['rounds']} rounds; median and [IQR] of paired ratios.",
        "",
    ]
    for r in results:
        lines += [
            f"### {r['model']} (target: class {r['target']})",
            "",
            "| case | median ms | x forward [IQR] | x N forwards [IQR] |",
            "| --- | ---: | ---: | ---: |",
        ]
        for k, ms in r["ms"].items():
            a, b = r["x forward"][k], r["x N forwards"][k]
            lines.append(
                f"| {k} | {ms:.0f} | {a['median']:.1f} [{a['q1']:.1f}, {a['q3']:.1f}] "
                f"| {b['median']:.2f} [{b['q1']:.2f}, {b['q3']:.2f}] |"
            )
        ig, sg = r["camlens / captum"]["IG"], r["camlens / captum"]["SmoothGrad"]
        c = r["completeness"]
        lines += [
            "",
            f"camlens / captum: IG {ig['median']:.2f} [{ig['q1']:.2f}, {ig['q3']:.2f}], SmoothGrad "
            f"{sg['median']:.2f} [{sg['q1']:.2f}, {sg['q3']:.2f}]. IG camlens vs captum: max |difference| = "
            f"{r['ig_vs_captum_rel']:.1e} of max |attribution|. Completeness at {steps} steps, "
            f"|sum IG - (S(x) - S(0))| / |S(x) - S(0)| (S(x) - S(0) = {r['gap']:.3f}): Gauss-Legendre "
            f"{c['gausslegendre']:.1e}, right Riemann {c['riemann_right']:.1e}, "
            f"trapezoid {c['riemann_trapezoid']:.1e}.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,resnet50", help="comma-separated")
    parser.add_argument("--steps", type=int, default=50, help="IG steps and SmoothGrad samples (default 50)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per forward + backward (default 16)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10 steps, 2 rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gradients.json"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 10, 2
    torch.set_num_threads(THREADS)
    started, load_start = time.perf_counter(), " ".join(f"{v:.1f}" for v in os.getloadavg())
    results = [run(m, args.steps, args.batch_size, args.rounds) for m in args.models.split(",")]
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "minutes": (time.perf_counter() - started) / 60,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"nproc {os.cpu_count()}, {platform.system()} {platform.machine()}; torch {torch.__version__} "
        f"with `torch.set_num_threads({THREADS})`; captum {__import__('captum').__version__}",
        "load_start": load_start,
        "load_end": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
