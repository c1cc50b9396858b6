"""Speed and memory of camlens against the floor (one plain forward) and the peers, in one run.

    python benchmarks/bench_core.py                 # full run (~10 min on 2 cores), writes docs/benchmarks.md
    python benchmarks/bench_core.py --quick         # smoke run

Floor: one forward pass under torch.inference_mode(), same model, same batch, same process. Cases are
interleaved (every round runs every case once, in a shuffled order) and each case's cost is reported
as the median over rounds of its time divided by the floor's time *in the same round*, so drift
(thermal, other processes) hits all alike. Peers: pytorch-grad-cam, torchcam, captum (bench extra).

EfficientNet-Lite0 applies one ReLU6 module (``_swish``) to the stem and the head. camlens picks the
head's call ("_swish@1", 7x7). The peers cannot address a call, and pointed at ``_swish`` they take the
stem's 112x112 map; they are given the same 7x7 activation through ``HeadTap``, an identity module
behind the head's ReLU6 (same computation, one extra no-op module).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens import zoo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.nets import HeadTap  # noqa: E402  (the peers' view of EfficientNet-Lite0's head)

warnings.filterwarnings("ignore")


def build(model_name: str, batch: int) -> tuple[nn.Module, nn.Module, nn.Module, str, torch.Tensor]:
    """(model for camlens, model for peers, peer layer module, peer layer name, input)."""
    from skimage import data

    x = zoo.preprocess(data.chelsea()).repeat(batch, 1, 1, 1)
    if model_name == "efficientnet_lite0":
        model = zoo.efficientnet_lite0()
        tapped = HeadTap(model).eval()
        return model, tapped, tapped.tap, "tap", x
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    return model, model, model.layer4, "layer4", x


def cases(model_name: str, batch: int, guided: bool) -> tuple[dict[str, Callable[[], Any]], list[int]]:
    model, peer_model, peer_layer, peer_name, x = build(model_name, batch)
    with torch.inference_mode():
        top1 = model(x).argmax(1).tolist()
    out: dict[str, Callable[[], Any]] = {}

    def floor() -> Any:
        with torch.inference_mode():
            return model(x)

    out["floor"] = floor
    ours = {
        "cam": camlens.CAM(model),
        "gradcam": camlens.GradCAM(model),
        "gradcam++": camlens.GradCAMPlusPlus(model),
        "xgradcam": camlens.XGradCAM(model),
        "hirescam": camlens.HiResCAM(model),
        "layercam": camlens.LayerCAM(model),
    }
    for name, method in ours.items():
        out[f"camlens {name}"] = lambda m=method: m(x, top1).maps
    top5 = camlens.GradCAM(model)
    out["camlens gradcam top5"] = lambda: top5(x, "top5").maps

    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(c) for c in top1]

        def pgc_case(cls: type) -> Callable[[], Any]:
            def run() -> Any:
                with cls(model=peer_model, target_layers=[peer_layer]) as cam:
                    return cam(input_tensor=x, targets=targets)

            return run

        out["pytorch-grad-cam gradcam"] = pgc_case(pgc.GradCAM)
        out["pytorch-grad-cam gradcam++"] = pgc_case(pgc.GradCAMPlusPlus)
    except ImportError:
        pass
    try:
        from torchcam import methods as tcm

        def tc_case(cls: type, **kwargs: Any) -> Callable[[], Any]:
            def run() -> Any:
                extractor = cls(peer_model, target_layer=peer_name, input_shape=tuple(x.shape[1:]), **kwargs)
                try:
                    if cls is tcm.CAM:
                        with torch.no_grad():
                            scores = peer_model(x)
                    else:
                        scores = peer_model(x)
                    (maps,) = extractor(class_idx=top1, scores=scores)
                    return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                finally:
                    extractor.remove_hooks()

            return run

        out["torchcam gradcam"] = tc_case(tcm.GradCAM)
        out["torchcam gradcam++"] = tc_case(tcm.GradCAMpp)
        fc = "model._fc" if model_name == "efficientnet_lite0" else "fc"
        out["torchcam cam"] = tc_case(tcm.CAM, fc_layer=fc)
    except ImportError:
        pass
    try:
        from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam

        lgc = LayerGradCam(peer_model, peer_layer)

        def captum_gradcam() -> Any:
            attr = lgc.attribute(x, target=top1, relu_attributions=True)
            return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")

        out["captum gradcam"] = captum_gradcam
        if guided:
            gbp = GuidedBackprop(peer_model)
            out["captum guided-backprop"] = lambda: gbp.attribute(x, target=top1)
    except ImportError:
        pass
    if guided:
        gb = camlens.GuidedBackprop(model)
        out["camlens guided-backprop"] = lambda: gb(x, top1).pixels
        ggc = camlens.GuidedGradCAM(model)
        out["camlens guided-gradcam"] = lambda: ggc(x, top1).pixels
        if batch == 1:
            try:
                from pytorch_grad_cam import GuidedBackpropReLUModel

                gbr = GuidedBackpropReLUModel(peer_model, device="cpu")
                out["pytorch-grad-cam guided-backprop"] = lambda: gbr(x, target_category=top1[0])
            except ImportError:
                pass
    return out, top1


def time_cases(fns: dict[str, Callable[[], Any]], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            gc.collect()
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    floor = times["floor"]
    rows = {}
    for name, ts in times.items():
        ratios = [t / f for t, f in zip(ts, floor)]
        rows[name] = {"ms": 1000 * statistics.median(ts), "x_floor": statistics.median(ratios)}
    for ours, peers in [
        ("camlens gradcam", ["pytorch-grad-cam gradcam", "torchcam gradcam", "captum gradcam"]),
        ("camlens gradcam++", ["pytorch-grad-cam gradcam++", "torchcam gradcam++"]),
        ("camlens cam", ["torchcam cam"]),
        ("camlens guided-backprop", ["captum guided-backprop", "pytorch-grad-cam guided-backprop"]),
    ]:
        present = [p for p in peers if p in times]
        if ours not in times or not present:
            continue
        fastest = [min(times[p][i] for p in present) for i in range(len(floor))]
        rows[ours]["vs_fastest_peer"] = statistics.median([o / f for o, f in zip(times[ours], fastest)])
        if "pytorch-grad-cam gradcam" in present and ours == "camlens gradcam":
            pg = times["pytorch-grad-cam gradcam"]
            rows[ours]["speedup_vs_pgc"] = statistics.median([p / o for o, p in zip(times[ours], pg)])
    return rows


# ---------------------------------------------------------------- memory (fresh process per case)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def memory_case(model_name: str, batch: int, case: str) -> float:
    fns, _ = cases(model_name, batch, guided=False)
    fn = fns[case]
    fn()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
    base = _status("VmRSS")
    fn()
    return (_status("VmHWM") - base) / 2**20


def memory_table(model_name: str, batch: int, names: list[str]) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    result = {}
    for name in names:
        cmd = [sys.executable, __file__, "--memory-case", f"{model_name}|{batch}|{name}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        result[name] = float(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- perturbation methods


def perturbation_table(repeats: int) -> dict[str, Any]:
    import numpy as np

    model, peer_model, peer_layer, peer_name, x = build("efficientnet_lite0", 1)
    with torch.inference_mode():
        top1 = int(model(x).argmax())
    rows: dict[str, Any] = {}
    # pytorch-grad-cam's Score-CAM definition: raw logits of masked inputs, softmax over channels,
    # masks upsampled with align_corners=True.
    like_pgc = camlens.ScoreCAM(
        model, score="logit", channel_softmax=True, baseline=False, align_corners=True, progress=False
    )
    fns: dict[str, Callable[[], Any]] = {"floor": lambda: _floor(model, x)}
    fns["camlens scorecam (pgc definition)"] = lambda: like_pgc(x, top1)
    fns["camlens scorecam (paper default)"] = lambda: camlens.ScoreCAM(model, progress=False)(x, top1)
    abl = camlens.AblationCAM(model, progress=False)
    fns["camlens ablationcam"] = lambda: abl(x, top1)
    outputs: dict[str, Any] = {}
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc_run(cls: type) -> Any:
            with cls(model=peer_model, target_layers=[peer_layer]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(top1)])

        fns["pytorch-grad-cam scorecam"] = lambda: outputs.__setitem__("pgc", pgc_run(pgc.ScoreCAM))
        fns["pytorch-grad-cam ablationcam"] = lambda: outputs.__setitem__("pgc_abl", pgc_run(pgc.AblationCAM))
    except ImportError:
        pass
    try:
        from torchcam.methods import ScoreCAM as TorchcamScoreCAM

        def tc_run() -> Any:
            ext = TorchcamScoreCAM(peer_model, target_layer=peer_name, input_shape=tuple(x.shape[1:]), batch_size=32)
            try:
                with torch.no_grad():
                    scores = peer_model(x)
                (maps,) = ext(class_idx=top1, scores=scores)
                outputs["tc"] = maps
            finally:
                ext.remove_hooks()

        fns["torchcam scorecam"] = tc_run
    except ImportError:
        pass
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(1)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        rows[name] = {"s": statistics.median(ts), "x_floor": statistics.median(ts) / statistics.median(times["floor"])}
    ours = "camlens scorecam (pgc definition)"
    for peer in ("pytorch-grad-cam scorecam", "torchcam scorecam"):
        if peer in times:
            rows[ours][f"speedup_vs_{peer.split()[0]}"] = statistics.median(
                [p / o for o, p in zip(times[ours], times[peer])]
            )
    if "pytorch-grad-cam ablationcam" in times:
        rows["camlens ablationcam"]["speedup_vs_pytorch-grad-cam"] = statistics.median(
            [p / o for o, p in zip(times["camlens ablationcam"], times["pytorch-grad-cam ablationcam"])]
        )
    # equal output: the same normalisation as the peer, max abs difference
    from pytorch_grad_cam.utils.image import scale_cam_image

    raw = like_pgc(x, top1).raw[:, 0].numpy()
    mine = scale_cam_image(np.maximum(scale_cam_image(np.maximum(raw, 0), (224, 224)), 0))
    if "pgc" in outputs:
        rows[ours]["max_abs_diff_vs_pgc"] = float(np.abs(mine - outputs["pgc"]).max())
    if "tc" in outputs:
        low = camlens.normalize_maps(like_pgc(x, top1).raw[:, 0].clamp(min=0))
        rows[ours]["max_abs_diff_vs_torchcam"] = float((low - outputs["tc"]).abs().max())
    if "pgc_abl" in outputs:
        raw = abl(x, top1).raw[:, 0].numpy()
        mine = scale_cam_image(np.maximum(scale_cam_image(np.maximum(raw, 0), (224, 224)), 0))
        rows["camlens ablationcam"]["max_abs_diff_vs_pgc"] = float(np.abs(mine - outputs["pgc_abl"]).max())
    return rows


def _floor(model: nn.Module, x: torch.Tensor) -> Any:
    with torch.inference_mode():
        return model(x)


# ---------------------------------------------------------------- report


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [
        "# Speed and memory",
        "",
        f"Command: `{command}` — {results['date']}, {results['machine']}, torch {results['torch']}, "
        f"{results['threads']} threads, {results['repeats']} interleaved rounds per table.",
        "",
        "`x floor` is the median over rounds of (case time / floor time in the same round); the floor",
        "is one forward pass under `torch.inference_mode()`. camlens and torchcam cases include",
        "upsampling to the input (camlens: `.maps`), pytorch-grad-cam's includes its cv2 resize, captum's",
        "Grad-CAM includes `LayerAttribution.interpolate`. `vs fastest peer` is the paired ratio",
        "camlens / fastest peer in the same round (< 1: camlens faster).",
        "",
    ]
    for key, rows in results["speed"].items():
        lines += [
            f"## {key}",
            "",
            "| case | ms | x floor | vs fastest peer | speed-up vs pytorch-grad-cam |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in rows.items():
            vs = f"{row['vs_fastest_peer']:.2f}" if "vs_fastest_peer" in row else ""
            sp = f"{row['speedup_vs_pgc']:.1f}x" if "speedup_vs_pgc" in row else ""
            lines.append(f"| {name} | {row['ms']:.1f} | {row['x_floor']:.2f} | {vs} | {sp} |")
        lines.append("")
    for key, rows in results.get("memory", {}).items():
        floor = rows.get("floor")
        lines += [f"## Peak memory above baseline, {key}", "", "| case | MB | x floor |", "|---|---:|---:|"]
        for name, mb in rows.items():
            ratio = f"{mb / floor:.2f}" if floor else ""
            lines.append(f"| {name} | {mb:.0f} | {ratio} |")
        lines.append("")
    if "perturbation" in results:
        lines += [
            "## Score-CAM and Ablation-CAM, EfficientNet-Lite0, batch 1",
            "",
            "| case | s | x floor | speed-up | output difference |",
            "|---|---:|---:|---|---|",
        ]
        for name, row in results["perturbation"].items():
            sp = ", ".join(f"{v:.1f}x vs {k[11:]}" for k, v in row.items() if k.startswith("speedup_vs_"))
            diff = ", ".join(f"{v:.1e} vs {k[16:]}" for k, v in row.items() if k.startswith("max_abs_diff_vs_"))
            lines.append(f"| {name} | {row['s']:.2f} | {row['x_floor']:.0f} | {sp} | {diff} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, batch 1 and 4, no ResNet memory")
    parser.add_argument("--models", default="efficientnet_lite0,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-perturbation", action="store_true")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.memory_case:
        model_name, batch, case = args.memory_case.split("|")
        print(memory_case(model_name, int(batch), case))
        return
    if args.quick:
        args.repeats, args.batches = 3, "1,4"
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "speed": {},
        "memory": {},
    }
    for model_name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            fns, _ = cases(model_name, batch, guided=True)
            key = f"{model_name}, batch {batch}"
            print(f"timing {key}: {len(fns)} cases x {args.repeats} rounds", file=sys.stderr)
            results["speed"][key] = summarize(time_cases(fns, args.repeats))
            del fns
            gc.collect()
    if not args.no_memory:
        names = [
            "floor",
            "camlens cam",
            "camlens gradcam",
            "camlens gradcam top5",
            "pytorch-grad-cam gradcam",
            "torchcam gradcam",
            "captum gradcam",
        ]
        batch = 4 if args.quick else 16
        for model_name in args.models.split(",")[: 1 if args.quick else None]:
            print(f"memory {model_name}, batch {batch}", file=sys.stderr)
            results["memory"][f"{model_name}, batch {batch}"] = memory_table(model_name, batch, names)
    if not args.no_perturbation:
        print("Score-CAM / Ablation-CAM", file=sys.stderr)
        results["perturbation"] = perturbation_table(1 if args.quick else 2)
    command = "python benchmarks/bench_core.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    text = markdown(results, command)
    print(text)
    if not args.quick:
        Path(args.out).write_text(text + "\n")
        (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
        (ROOT / "benchmarks" / "results" / "core.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
