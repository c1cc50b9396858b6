"""LIME, occlusion and RISE: camlens against captum, the lime package and RISE's own code, at equal samples.

    python benchmarks/bench_perturbation.py                 # 3 rounds (about 15 min on one busy core)
    python benchmarks/bench_perturbation.py --rounds 5 --lime-samples 500 --rise-masks 1000

What is measured:

* Model and image: ``camlens.zoo.efficientnet_lite0()`` (eval mode) on ``skimage.data.chelsea()``,
  preprocessed to 224x224; target: the top-1 class; ``torch.set_num_threads(1)``.
* Floor: one forward pass of the image under ``torch.inference_mode()`` (median of 3, next to each case).
* Equal work: every tool runs the same number of perturbed forwards on the same settings:
  occlusion with a 32 x 32 window, stride 16 (169 windows, baseline 0); LIME with the same quickshift
  segments (LIME's default, computed once and given to every tool: the segmentation is timed alone),
  ``--lime-samples`` samples, mean-colour baseline, LIME's kernel and Ridge(alpha=1); RISE with
  ``--rise-masks`` masks of 7 x 7 cells, p = 0.5. camlens runs each at float32 (its default, exact) and
  at ``precision="bfloat16"`` (autocast), whose maps are compared with float32's (correlations, relative
  max difference, IoU of the top 10% pixels). Peers run at their default batch (captum's
  ``perturbations_per_eval=1``, lime's ``batch_size=10``) and at camlens' batch (``--batch``).
* RISE's peer is the authors' code (``explanations.py``: masks by ``skimage.transform.resize`` in a loop,
  ``torch.mul(masks, x)``, forwards of ``gpu_batch`` rows, a matmul), with its mask generation *not* timed
  (they generate once and load ``masks.npy``); captum has no RISE.
* Rounds: every case once per round, in a freshly shuffled order; per case the median seconds, the
  median of the paired ratio to the floor of the same moment, and for each peer row the median over
  rounds of (peer time / camlens time of the same round) with its IQR.

Writes benchmarks/results/perturbation.json and prints the Markdown table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_core import machine
from bench_metrics import RESULTS, _quartiles, _rounds


def _rise_reference(model: Any, x: torch.Tensor, n: int, s: int, p1: float, batch: int) -> Callable[[], torch.Tensor]:
    """The authors' RISE (eclique/RISE, explanations.py), masks generated here and not timed."""
    from skimage.transform import resize

    size = x.shape[-2:]
    rng = np.random.default_rng(0)
    cell = np.ceil(np.array(size) / s)
    up = ((s + 1) * cell).astype(int)
    grid = (rng.random((n, s, s)) < p1).astype("float32")
    masks = np.empty((n, *size))
    for i in range(n):
        dx, dy = rng.integers(0, cell[0]), rng.integers(0, cell[1])
        masks[i] = resize(grid[i], up, order=1, mode="reflect", anti_aliasing=False)[
            dx : dx + size[0], dy : dy + size[1]
        ]
    masks_t = torch.from_numpy(masks.reshape(n, 1, *size)).float()

    def explain() -> torch.Tensor:
        with torch.no_grad():
            stack = torch.mul(masks_t, x.data)
            p = torch.cat([model(stack[i : min(i + batch, n)]).softmax(1) for i in range(0, n, batch)])
            sal = torch.matmul(p.data.transpose(0, 1), masks_t.view(n, -1))
            return sal.view(-1, *size) / n / p1

    return explain


def _agreement(full: Any, half: Any) -> dict[str, float]:
    """How close the bfloat16 map is to the float32 one: correlations, relative max difference, top-10% IoU."""
    from camlens.metrics.similarity import spearman

    a, b = full.raw.flatten().double().numpy(), half.raw.flatten().double().numpy()
    k = max(1, a.size // 10)
    top_a, top_b = set(np.argsort(-a)[:k].tolist()), set(np.argsort(-b)[:k].tolist())
    return {
        "pearson": float(np.corrcoef(a, b)[0, 1]),
        "spearman": float(spearman(full.raw.flatten(), half.raw.flatten())),
        "max_abs_diff_rel": float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)),
        "top10_iou": len(top_a & top_b) / len(top_a | top_b),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per case (default 3)")
    parser.add_argument("--lime-samples", type=int, default=200, help="LIME samples (default 200; LIME's is 1000)")
    parser.add_argument("--rise-masks", type=int, default=400, help="RISE masks (default 400; the paper's is 4000)")
    parser.add_argument("--batch", type=int, default=8, help="rows per forward for camlens and the peers' 2nd row")
    parser.add_argument("--out", default=str(RESULTS / "perturbation.json"), help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import camlens
    from camlens import zoo

    try:
        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr import Lime, Occlusion
        from lime import lime_image
        from skimage import data
    except ImportError as err:
        sys.exit(f"bench_perturbation.py needs the bench extra (captum, lime, scikit-image): {err}")
    from camlens.methods.perturbation_input import _lime_kernel

    model = zoo.efficientnet_lite0()
    x = zoo.preprocess(data.chelsea())
    with torch.inference_mode():
        target = int(model(x).argmax())
    batch = args.batch

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    def probs(t: torch.Tensor) -> torch.Tensor:
        return model(t).softmax(1)

    # LIME: one segmentation (LIME's quickshift on the input rescaled to [0, 1] per channel) for every tool
    lime_method = camlens.LIME(model)
    segments = lime_method.segments(x)  # (1, H, W), labels 0 .. d - 1
    d = int(segments.max()) + 1
    means = torch.stack([x[0][:, segments[0] == j].mean(1) for j in range(d)])  # (d, C)
    hidden = means[segments[0]].permute(2, 0, 1)[None]
    image = x[0].permute(1, 2, 0).numpy().astype(np.float64)
    n_lime = args.lime_samples

    def classifier(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return probs(torch.from_numpy(images).permute(0, 3, 1, 2).float()).numpy()

    def lime_package(batch_size: int) -> Callable[[], Any]:
        explainer = lime_image.LimeImageExplainer(random_state=0)
        return lambda: explainer.explain_instance(
            image,
            classifier,
            labels=(target,),
            top_labels=None,
            num_samples=n_lime,
            batch_size=batch_size,
            segmentation_fn=lambda _: segments[0].numpy(),
            random_seed=0,
        )

    def captum_lime(per_eval: int) -> Callable[[], Any]:
        lime = Lime(
            probs,
            interpretable_model=SkLearnRidge(alpha=1.0),
            similarity_func=lambda _o, _p, z, **_: float(_lime_kernel(z.bool(), 0.25)[0]),
        )
        return lambda: lime.attribute(
            x,
            target=target,
            feature_mask=segments[None],
            baselines=hidden,
            n_samples=n_lime,
            perturbations_per_eval=per_eval,
        )

    def captum_occlusion(per_eval: int) -> Callable[[], Any]:
        occlusion = Occlusion(probs)
        return lambda: occlusion.attribute(
            x, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), baselines=0.0, target=target,
            perturbations_per_eval=per_eval,
        )  # fmt: skip

    n_rise = args.rise_masks
    ours = {  # camlens' three methods at equal samples; each also runs at bfloat16 autocast
        "occlusion": dict(window=32, stride=16),
        "lime": dict(segmentation=segments, n_samples=n_lime),
        "rise": dict(n_masks=n_rise),
    }

    def camlens_call(method: str, precision: str) -> Callable[[], Any]:
        return lambda: camlens.explain(
            model, x, method, targets=target, batch_size=batch, precision=precision, **ours[method]
        )

    occ, occ16 = "camlens occlusion", "camlens occlusion, precision=bfloat16"
    lim, lim16 = "camlens lime (segments given)", "camlens lime, precision=bfloat16"
    ris, ris16 = "camlens rise", "camlens rise, precision=bfloat16"
    # name -> (callable, forwards, the camlens cases (float32, bfloat16) it is compared with, or None)
    cases: dict[str, tuple[Callable[[], Any], int, tuple[str, str] | None]] = {
        occ: (camlens_call("occlusion", "float32"), 169, None),
        occ16: (camlens_call("occlusion", "bfloat16"), 169, None),
        "captum Occlusion, perturbations_per_eval=1": (captum_occlusion(1), 169, (occ, occ16)),
        f"captum Occlusion, perturbations_per_eval={batch}": (captum_occlusion(batch), 169, (occ, occ16)),
        lim: (camlens_call("lime", "float32"), n_lime, None),
        lim16: (camlens_call("lime", "bfloat16"), n_lime, None),
        "captum Lime, perturbations_per_eval=1": (captum_lime(1), n_lime, (lim, lim16)),
        f"captum Lime, perturbations_per_eval={batch}": (captum_lime(batch), n_lime, (lim, lim16)),
        "lime LimeImageExplainer, batch_size=10": (lime_package(10), n_lime, (lim, lim16)),
        f"lime LimeImageExplainer, batch_size={batch}": (lime_package(batch), n_lime, (lim, lim16)),
        "quickshift segmentation alone (LIME's default)": (lambda: lime_method.segments(x), 0, None),
        ris: (camlens_call("rise", "float32"), n_rise, None),
        ris16: (camlens_call("rise", "bfloat16"), n_rise, None),
        f"RISE authors' code, gpu_batch={batch} (masks not timed)": (
            _rise_reference(model, x, n_rise, 7, 0.5, batch),
            n_rise,
            (ris, ris16),
        ),
    }
    # what bfloat16 costs in agreement: the signed maps at float32 and at bfloat16, same seeds and samples
    agreement = {
        method: _agreement(camlens_call(method, "float32")(), camlens_call(method, "bfloat16")()) for method in ours
    }
    for fn, _, _ in cases.values():  # warm-up: imports, allocator, first calls
        fn()
    for _ in range(3):
        forward()

    times, ratios, floors, load_start = _rounds({n: c[0] for n, c in cases.items()}, forward, args.rounds, 3)

    rows = []
    for name, (_, forwards, versus) in cases.items():
        q1, q3 = _quartiles(ratios[name])
        row: dict[str, Any] = {
            "case": name,
            "forwards": forwards,
            "seconds_median": statistics.median(times[name]),
            "ratio_to_forward_median": statistics.median(ratios[name]),
            "ratio_iqr": [q1, q3],
        }
        if versus is not None:
            for key, case in zip(("slower_than_camlens", "slower_than_camlens_bfloat16"), versus):
                paired = [peer / own for peer, own in zip(times[name], times[case])]
                row[f"{key}_median"] = statistics.median(paired)
                row[f"{key}_iqr"] = list(_quartiles(paired))
        rows.append(row)
    results = {
        "command": "python benchmarks/bench_perturbation.py" + "".join(" " + a for a in sys.argv[1:]),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": {
            **machine(),
            "load_start": load_start,
            "load_end": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        },
        "threads": torch.get_num_threads(),
        "model": "efficientnet_lite0, 1x3x224x224 (skimage.data.chelsea)",
        "target": target,
        "segments": d,
        "rounds": args.rounds,
        "batch": batch,
        "forward_seconds_median": statistics.median(floors),
        "cases": rows,
        "bfloat16_agreement": agreement,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")

    print(f"\none forward pass (1 image, 1 thread): {1000 * results['forward_seconds_median']:.1f} ms (median)")
    print(f"LIME segments: {d}; rounds: {args.rounds}\n")
    print(
        "| case | forwards | median s | x forward (IQR) | peer time / camlens time (IQR) "
        "| peer time / camlens bfloat16 time (IQR) |"
    )
    print("|---|---:|---:|---|---|---|")
    for row in rows:
        q1, q3 = row["ratio_iqr"]
        versus = []
        for key in ("slower_than_camlens", "slower_than_camlens_bfloat16"):
            if f"{key}_median" in row:
                p1, p3 = row[f"{key}_iqr"]
                versus.append(f"{row[f'{key}_median']:.2f} ({p1:.2f}-{p3:.2f})")
        versus += [""] * (2 - len(versus))
        print(
            f"| {row['case']} | {row['forwards']} | {row['seconds_median']:.2f} | "
            f"{row['ratio_to_forward_median']:.0f} ({q1:.0f}-{q3:.0f}) | {versus[0]} | {versus[1]} |"
        )
    print("\nbfloat16 against float32 (same samples and seeds), signed maps:\n")
    print("| method | Pearson r | Spearman rho | max abs difference / max abs map | top-10% pixels IoU |")
    print("|---|---:|---:|---:|---:|")
    for method, a in agreement.items():
        print(
            f"| {method} | {a['pearson']:.4f} | {a['spearman']:.4f} | {a['max_abs_diff_rel']:.4f} "
            f"| {a['top10_iou']:.3f} |"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
