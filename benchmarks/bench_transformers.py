"""Grad-CAM on vision transformers: camlens against one plain forward and against pytorch-grad-cam.

    python benchmarks/bench_transformers.py          # full run: docs/benchmarks.md (section "Transformers")
    python benchmarks/bench_transformers.py --quick  # fewer rounds; also writes the docs section

Models: torchvision ``vit_b_16`` and ``swin_t`` with random weights (``weights=None``; the ViT head, which
torchvision initialises to zero, gets N(0, 0.02) weights so gradients are not all zero), a 224x224 input,
batch 1. Layers: camlens' automatic choice (``encoder.layers.encoder_layer_11.ln_1``, Swin's final
``norm``); pytorch-grad-cam gets the same module and the ``reshape_transform`` of its own examples
(ViT: drop the class token, 196 -> 14x14, channels first; Swin: ``permute(0, 3, 1, 2)``).

Timing and memory follow ``bench_core.py`` (its helpers are imported): interleaved rounds in a shuffled
order, the median of the per-round ratio to the floor (one forward under ``torch.inference_mode()``) and
its IQR; camlens / pytorch-grad-cam as the median of paired ratios; peak RSS above baseline of a case's
second call, each case in a fresh process. Every case returns upsampled, normalised (B, K, 224, 224)
maps (camlens reads ``.maps``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import camlens

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_core import _status, machine, paired, quartiles, run_rounds, versions  # noqa: E402

warnings.filterwarnings("ignore")

THREADS = 2
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- bench_transformers.py: generated, begin -->", "<!-- bench_transformers.py: generated, end -->"

Fn = Callable[[], Any]


def load(name: str) -> tuple[nn.Module, torch.Tensor, nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """Model, input, the layer pytorch-grad-cam gets and its reshape_transform."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    if name == "vit_b_16":
        model = torchvision.models.vit_b_16(weights=None).eval()
        nn.init.normal_(model.heads.head.weight, std=0.02)

        def reshape(t: torch.Tensor) -> torch.Tensor:
            return t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).transpose(2, 3).transpose(1, 2)

        return model, x, model.encoder.layers[-1].ln_1, reshape
    if name == "swin_t":
        model = torchvision.models.swin_t(weights=None).eval()
        return model, x, model.norm, lambda t: t.permute(0, 3, 1, 2)
    raise SystemExit(f"unknown model {name!r}: use vit_b_16, swin_t")


def cases(name: str) -> tuple[dict[str, Fn], str]:
    model, x, layer, reshape = load(name)
    with torch.no_grad():  # (inference-mode ids cannot index a tensor autograd saves: targets.py does not copy them)
        top5 = model(x).topk(5).indices  # (1, 5): the same classes for every tool
    gradcam = camlens.GradCAM(model)

    def floor() -> Any:
        with torch.inference_mode():
            return model(x)

    def pgc(k: int) -> Fn:
        import pytorch_grad_cam as pgc_module
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def run() -> Any:
            # pytorch-grad-cam explains one target per sample: top-5 is five calls (as its users write it)
            maps = []
            with pgc_module.GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
                for c in top5[0, :k].tolist():
                    maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(c)]))
            return maps

        return run

    fns: dict[str, Fn] = {
        "floor": floor,
        "camlens gradcam": lambda: gradcam(x, top5[:, :1]).maps,
        "camlens gradcam top5": lambda: gradcam(x, top5).maps,
    }
    with contextlib.suppress(ImportError):
        fns["pytorch-grad-cam gradcam"] = pgc(1)
        fns["pytorch-grad-cam gradcam top5"] = pgc(5)
    layer_name = gradcam(x, top5[:, :1]).layer
    return fns, layer_name


def memory_child(spec: str) -> None:
    """In a fresh process: peak RSS above baseline of a case's second call, in MiB (as bench_core.py)."""
    name, case = spec.split("|")
    fn = cases(name)[0][case]
    clear_refs = Path("/proc/self/clear_refs")
    fn()
    clear_refs.write_text("5")
    base = _status("VmRSS")
    fn()
    print(json.dumps({"peak_mb": (_status("VmHWM") - base) / 2**20}))


def memory(name: str, names: list[str]) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    found = {}
    for case in names:
        cmd = [sys.executable, __file__, "--memory-case", f"{name}|{case}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode == 0:
            found[case] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
            print(f"  memory {name} {case}: {found[case]:.0f} MB", file=sys.stderr)
        else:
            print(f"  memory case {case} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return found


def measure(name: str, repeats: int, min_seconds: float, deadline: float, with_memory: bool) -> dict[str, Any]:
    fns, layer = cases(name)
    times = run_rounds(fns, repeats, warmup=None, min_seconds=min_seconds, deadline=deadline, seed=0)
    floor = times["floor"]
    rows = {}
    for case, ts in times.items():
        ratios = [t / f for t, f in zip(ts, floor)]
        rows[case] = {"ms": 1000 * statistics.median(ts), "x_floor": statistics.median(ratios)}
        rows[case]["iqr"] = quartiles(ratios)
    versus = {
        f"camlens {k} / pytorch-grad-cam {k}": paired(times[f"camlens {k}"], times[f"pytorch-grad-cam {k}"])
        for k in ("gradcam", "gradcam top5")
        if f"pytorch-grad-cam {k}" in times
    }
    peaks = memory(name, list(fns)) if with_memory else {}
    return {"layer": layer, "rounds": len(floor), "rows": rows, "versus": versus, "memory_mb": peaks}


def markdown(r: dict[str, Any]) -> str:
    out = [
        BEGIN,
        "",
        "## Transformers: Grad-CAM on vit_b_16 and swin_t",
        "",
        f"Rerun: `{r['command']}` (from the repository root; {r['minutes']:.1f} min). Date: {r['date']}.",
        "",
        f"Machine: {r['machine']['cpu']}, nproc {r['machine']['nproc']}; torch {r['machine']['torch']} with "
        f"`torch.set_num_threads({THREADS})`; load average {r['load'][0]} at start, {r['load'][1]} at end "
        f"(other processes share the cores). Peers: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        "",
        "Random weights, one 224x224 image, batch 1, the same top-5 classes for every tool. camlens explains "
        "its automatic layer; pytorch-grad-cam the same module with the `reshape_transform` of its examples, "
        "one call per target (it takes one target per sample). `x floor`: median over rounds of case time / "
        "the same round's plain forward under `torch.inference_mode()`, with its IQR; `vs peer`: median of "
        "paired ratios camlens / pytorch-grad-cam; memory: peak RSS above baseline of the case's second call, "
        "in a fresh process.",
        "",
    ]
    for name, m in r["models"].items():
        out += [
            f"**{name}** (layer `{m['layer']}`, {m['rounds']} rounds)",
            "",
            "| case | median ms | x floor | IQR of x floor | peak MB |",
            "|---|---:|---:|---|---:|",
        ]
        for case, row in m["rows"].items():
            peak = m["memory_mb"].get(case)
            out.append(
                f"| {case} | {row['ms']:.0f} | {row['x_floor']:.2f} | {row['iqr'][0]:.2f}-{row['iqr'][1]:.2f} | "
                + ("" if peak is None else f"{peak:.0f}")
                + " |"
            )
        out.append("")
        for pair, ratio in m["versus"].items():
            out.append(f"* {pair}: {ratio:.2f}")
        out.append("")
    out.append(END)
    return "\n".join(out)


def write_docs(text: str, path: Path) -> None:
    """Replace this script's block in ``path``, or append it; the rest of the file is kept."""
    old = path.read_text() if path.exists() else "# Speed and memory\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        path.write_text(head + text + rest.split(END, 1)[1])
    else:
        path.write_text(old.rstrip("\n") + "\n\n" + text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, no minimum time")
    parser.add_argument("--models", default="vit_b_16,swin_t", help="comma-separated")
    parser.add_argument("--repeats", type=int, help="rounds at least (default 10; quick 3)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--budget", type=float, default=12.0, help="minutes: rounds stop early past it")
    parser.add_argument("--out", help="Markdown file to update (default: docs/benchmarks.md)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.memory_case:
        memory_child(args.memory_case)
        return
    repeats = args.repeats or (3 if args.quick else 10)
    start, load_start = time.monotonic(), " ".join(f"{v:.1f}" for v in os.getloadavg())
    names = args.models.split(",")
    deadline = time.monotonic() + 60 * args.budget
    models = {}
    for i, name in enumerate(names):
        print(f"{name} ...", file=sys.stderr)
        share = start + (deadline - start) * (i + 1) / len(names)
        models[name] = measure(name, repeats, 0 if args.quick else 20, share, not args.no_memory)
    result = {
        "command": "python benchmarks/bench_transformers.py" + (" --quick" if args.quick else ""),
        "argv": sys.argv,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "minutes": (time.monotonic() - start) / 60,
        "load": [load_start, " ".join(f"{v:.1f}" for v in os.getloadavg())],
        "machine": machine(),
        "versions": versions(),
        "models": models,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("transformers-quick.json" if args.quick else "transformers.json")).write_text(
        json.dumps(result, indent=1)
    )
    text = markdown(result)
    print(text)
    write_docs(text, Path(args.out) if args.out else DOCS)


if __name__ == "__main__":
    main()
