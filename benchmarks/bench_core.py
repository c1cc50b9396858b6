"""Speed and memory of camlens against the floor (one plain forward) and the peers, in one run.

    python benchmarks/bench_core.py          # full run (about 13 min, 2 idle cores): docs/benchmarks.md, JSON
    python benchmarks/bench_core.py --quick  # smoke run (about 3 min): prints, benchmarks/results/core-quick.json

What is measured (docs/benchmarks.md repeats it next to the numbers):

* Floor: one forward pass under ``torch.inference_mode()``, same model, same batch, same process.
* Time: every case is a zero-argument callable, called twice to warm up; then in each round every case
  runs once, in a freshly shuffled order. Per case: the median time and the median over rounds of the
  *paired* ratio case / floor (both from the same round, so drift and other processes hit both alike);
  camlens against a peer: the median of the paired ratio camlens / peer (camlens / fastest peer of
  that round for "fastest"). ``torch.set_num_threads(2)`` everywhere.
* Memory: each case in a fresh process (this script with a hidden flag): build model and input, run the
  case once, reset the peak RSS (``/proc/self/clear_refs``), read VmRSS, run it again, read VmHWM:
  peak above baseline. glibc is told to serve allocations >= 64 KiB by mmap and to trim its heap
  (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so freed tensors leave the RSS and the
  baseline does not hide them.
* Score-CAM and Ablation-CAM: camlens configured to each peer's output definition, batch 1,
  interleaved rounds, and the max abs difference of the normalised low-resolution maps.

Layers. camlens explains EfficientNet-Lite0 at its automatic choice ``_swish@1``, the second call of the
ReLU6 module the network shares between stem and head (1280x7x7). pytorch-grad-cam pointed at
``_swish`` keeps the *first* call's activation (the stem, 32x112x112) without a warning, so it gets
``HeadTap(model).tap``, an identity module behind the head's ReLU6 (same computation, same 7x7 map).
torchcam and captum keep the *last* call, which is the head's: they get ``model._swish`` itself. The
script checks all of this at start (table "Layers").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens import zoo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.nets import HeadTap  # noqa: E402  (the peers' view of EfficientNet-Lite0's head)

warnings.filterwarnings("ignore")

THREADS = 2
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- bench_core.py: generated, begin -->", "<!-- bench_core.py: generated, end -->"

Fn = Callable[[], Any]


# ---------------------------------------------------------------- models, inputs, the layer each tool gets


@dataclass
class Bench:
    """One model at one batch size, and the layer each tool is pointed at."""

    model_name: str
    model: nn.Module
    x: torch.Tensor
    ids: list[int]  # top-1 class of each sample: the target of every case
    fc: str  # the linear head's name (torchcam CAM)
    pgc_model: nn.Module  # pytorch-grad-cam
    pgc_layer: nn.Module
    tc_layer: str  # torchcam (on ``model``)
    cap_layer: nn.Module  # captum (on ``model``)


def load(model_name: str, batch: int) -> Bench:
    from skimage import data

    x = zoo.preprocess(data.chelsea()).repeat(batch, 1, 1, 1)
    if model_name == "efficientnet_lite0":
        model = zoo.efficientnet_lite0()
        tapped = HeadTap(model).eval()
        peers: tuple[nn.Module, nn.Module, str, nn.Module, str] = (tapped, tapped.tap, "_swish", model._swish, "_fc")
    elif model_name == "resnet50":
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None).eval()
        peers = (model, model.layer4, "layer4", model.layer4, "fc")
    else:
        raise SystemExit(f"unknown model {model_name!r}: use efficientnet_lite0, resnet50")
    with torch.inference_mode():
        ids = model(x).argmax(1).tolist()
    pgc_model, pgc_layer, tc_layer, cap_layer, fc = peers
    return Bench(model_name, model, x, ids, fc, pgc_model, pgc_layer, tc_layer, cap_layer)


# ---------------------------------------------------------------- cases: name -> builder(bench) -> (fn, cleanup)

Builder = Callable[[Bench], tuple[Fn, Callable[[], None] | None]]


def _floor(b: Bench) -> tuple[Fn, None]:
    def run() -> Any:
        with torch.inference_mode():
            return b.model(b.x)

    return run, None


def _camlens(cls: type, targets: str = "top1", **options: Any) -> Builder:
    def build(b: Bench) -> tuple[Fn, None]:
        method = cls(b.model, **options)  # layer=None: camlens' automatic choice
        t: Any = b.ids if targets == "top1" else targets
        return (lambda: method(b.x, t).maps), None

    return build


def _recording(cls: type) -> type:
    """A pytorch-grad-cam class that keeps its last low-resolution map (for the equal-output checks)."""

    class Recording(cls):  # type: ignore[misc, valid-type]
        low: np.ndarray | None = None

        def get_cam_image(self, *args: Any, **kwargs: Any) -> np.ndarray:
            cam = super().get_cam_image(*args, **kwargs)
            type(self).low = cam
            return cam

    return Recording


def _pgc(name: str, layer: str = "peer") -> Builder:
    """pytorch-grad-cam as its README uses it: a ``with`` block per call (its hooks live in the block)."""

    def build(b: Bench) -> tuple[Fn, None]:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = _recording(getattr(pgc, name))
        targets = [ClassifierOutputTarget(c) for c in b.ids]
        model, module = (b.pgc_model, b.pgc_layer) if layer == "peer" else (b.model, b.model.get_submodule(layer))
        devnull = open(os.devnull, "w")  # noqa: SIM115  (its tqdm bars, Score-CAM and Ablation-CAM)

        def run() -> Any:
            with contextlib.redirect_stderr(devnull), cls(model=model, target_layers=[module]) as cam:
                return cam(input_tensor=b.x, targets=targets)

        run.recorder = cls  # type: ignore[attr-defined]
        return run, devnull.close

    return build


def _torchcam(name: str) -> Builder:
    """torchcam: the extractor is created once; its hooks are enabled only during its own call, and
    removed at the end. It returns low-resolution maps; they are upsampled to the input (bilinear) as a
    user has to, to match the other tools' output (captum aside)."""

    def build(b: Bench) -> tuple[Fn, Callable[[], None]]:
        from torchcam import methods

        cls = getattr(methods, name)
        kwargs: dict[str, Any] = {"fc_layer": b.fc} if name == "CAM" else {}
        ext = cls(b.model, target_layer=b.tc_layer, input_shape=tuple(b.x.shape[1:]), enable_hooks=False, **kwargs)
        size = tuple(b.x.shape[-2:])
        no_grad = name in ("CAM", "ScoreCAM")

        def run() -> Any:
            ext.enable_hooks()
            try:
                if no_grad:
                    with torch.inference_mode():
                        b.model(b.x)
                    (maps,) = ext(class_idx=b.ids)
                else:
                    scores = b.model(b.x)
                    (maps,) = ext(class_idx=b.ids, scores=scores)
            finally:
                ext.disable_hooks()
                # Drop what the hooks hold. Without it torchcam keeps the last call's layer output, and
                # with it the autograd graph of the whole forward, alive until the next call.
                ext.reset_hooks()
            run.low = maps  # type: ignore[attr-defined]
            return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)

        return run, ext.remove_hooks

    return build


def _captum(b: Bench) -> tuple[Fn, None]:
    """captum's LayerGradCam, created once, output as it returns it: (B, 1, h, w), not upsampled."""
    from captum.attr import LayerGradCam

    lgc = LayerGradCam(b.model, b.cap_layer)
    return (lambda: lgc.attribute(b.x, target=b.ids, relu_attributions=True)), None


def _guided_camlens(b: Bench) -> tuple[Fn, None]:
    method = camlens.GuidedBackprop(b.model)
    return (lambda: method(b.x, b.ids).pixels), None


def _guided_captum(b: Bench) -> tuple[Fn, None]:
    from captum.attr import GuidedBackprop

    gbp = GuidedBackprop(b.model)
    return (lambda: gbp.attribute(b.x, target=b.ids)), None


CASES: dict[str, Builder] = {
    "floor": _floor,
    "camlens cam": _camlens(camlens.CAM),
    "camlens gradcam": _camlens(camlens.GradCAM),
    "camlens gradcam++": _camlens(camlens.GradCAMPlusPlus),
    "camlens xgradcam": _camlens(camlens.XGradCAM),
    "camlens hirescam": _camlens(camlens.HiResCAM),
    "camlens layercam": _camlens(camlens.LayerCAM),
    "camlens gradcam top5": _camlens(camlens.GradCAM, "top5"),
    "pytorch-grad-cam gradcam": _pgc("GradCAM"),
    "torchcam gradcam": _torchcam("GradCAM"),
    "captum gradcam": _captum,
    "pytorch-grad-cam gradcam++": _pgc("GradCAMPlusPlus"),
    "torchcam gradcam++": _torchcam("GradCAMpp"),
    "torchcam cam": _torchcam("CAM"),
}
GUIDED: dict[str, Builder] = {"camlens guided-backprop": _guided_camlens, "captum guided-backprop": _guided_captum}
FAMILY = ["camlens gradcam", "camlens gradcam++", "camlens xgradcam", "camlens hirescam", "camlens layercam"]
COMPARISONS = [
    ("camlens gradcam", ["pytorch-grad-cam gradcam", "torchcam gradcam", "captum gradcam"]),
    ("camlens gradcam++", ["pytorch-grad-cam gradcam++", "torchcam gradcam++"]),
    ("camlens cam", ["torchcam cam"]),
    ("camlens guided-backprop", ["captum guided-backprop"]),
]
MEMORY_CASES = [
    "floor",
    "camlens cam",
    "camlens gradcam",
    "camlens gradcam top5",
    "pytorch-grad-cam gradcam",
    "torchcam gradcam",
    "captum gradcam",
]


def build_cases(b: Bench, names: list[str], table: dict[str, Builder]) -> tuple[dict[str, Fn], list[Callable]]:
    fns: dict[str, Fn] = {}
    cleanups: list[Callable[[], None]] = []
    for name in names:
        try:
            fn, cleanup = table[name](b)
        except ImportError as err:  # a peer that is not installed: its rows are left out
            print(f"  skipped {name}: {err}", file=sys.stderr)
            continue
        fns[name] = fn
        if cleanup is not None:
            cleanups.append(cleanup)
    return fns, cleanups


# ---------------------------------------------------------------- timing


def run_rounds(
    fns: dict[str, Fn], repeats: int, *, warmup: set[str] | None, min_seconds: float, deadline: float, seed: int
) -> dict[str, list[float]]:
    """Interleaved rounds: each round runs every case once, in a shuffled order.

    ``warmup``: cases to call twice first (None: all). At least ``repeats`` rounds, more (up to 5x) when
    a round is short, until ``min_seconds`` of rounds; no round that would end past ``deadline`` once 3
    rounds are done (1 round for the slow perturbation methods).
    """
    for name, fn in fns.items():
        if warmup is None or name in warmup:
            fn()
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(seed)
    floor_rounds = 3 if warmup is None else 1
    rounds = 0
    start = time.perf_counter()
    while True:
        round_start = time.monotonic()
        rng.shuffle(order)
        gc.collect()
        gc.disable()  # as timeit does: no collection inside a timed call; one per round, untimed
        try:
            for name in order:
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
        finally:
            gc.enable()
        rounds += 1
        elapsed = time.perf_counter() - start
        # stop when the next round (as long as this one) would end past the deadline
        if rounds >= floor_rounds and 2 * time.monotonic() - round_start > deadline:
            break
        if rounds >= repeats and (elapsed >= min_seconds or rounds >= 5 * repeats):
            break
    return times


def paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def quartiles(values: list[float]) -> tuple[float, float]:
    q = np.percentile(values, [25, 75])
    return float(q[0]), float(q[1])


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    floor = times["floor"]
    cases = {}
    for name, ts in times.items():
        ratios = [t / f for t, f in zip(ts, floor)]
        p25, p75 = quartiles(ratios)
        cases[name] = {
            "ms": 1000 * statistics.median(ts),
            "x_floor": statistics.median(ratios),
            "x_floor_p25": p25,
            "x_floor_p75": p75,
        }
    versus: dict[str, float] = {}
    for ours, peers in COMPARISONS:
        present = [p for p in peers if p in times]
        if ours not in times or not present:
            continue
        for peer in present:
            versus[f"{ours} / {peer}"] = paired(times[ours], times[peer])
        if len(present) > 1:
            fastest = [min(times[p][i] for p in present) for i in range(len(floor))]
            versus[f"{ours} / fastest peer"] = paired(times[ours], fastest)
    return {"rounds": len(floor), "cases": cases, "versus": versus}


# ---------------------------------------------------------------- which layer each peer explains (checked)


def layer_check(model_name: str) -> list[dict[str, Any]]:
    """Each tool's Grad-CAM at the layer it is given, against camlens' (normalised low-res maps)."""
    b = load(model_name, 1)
    ref = camlens.GradCAM(b.model)(b.x, b.ids)
    ref_low = camlens.normalize_maps(ref.raw[:, 0].clamp(min=0))
    rows: list[dict[str, Any]] = [{"tool": "camlens", "layer": ref.layer, "map": "x".join(map(str, ref_low.shape[1:]))}]

    def row(tool: str, layer: str, low: torch.Tensor) -> None:
        low = camlens.normalize_maps(low.float().clamp(min=0))
        same = low.shape == ref_low.shape
        diff = float((low - ref_low).abs().max()) if same else None
        rows.append({"tool": tool, "layer": layer, "map": "x".join(map(str, low.shape[1:])), "max_abs_diff": diff})

    if model_name == "efficientnet_lite0":
        with contextlib.suppress(ImportError):
            fn, _ = _pgc("GradCAM", layer="_swish")(b)
            fn()
            row("pytorch-grad-cam", "_swish", torch.from_numpy(fn.recorder.low))  # type: ignore[attr-defined]
    pgc_name = "HeadTap(model).tap" if model_name == "efficientnet_lite0" else "layer4"
    with contextlib.suppress(ImportError):
        fn, _ = _pgc("GradCAM")(b)
        fn()
        row("pytorch-grad-cam", pgc_name, torch.from_numpy(fn.recorder.low))  # type: ignore[attr-defined]
    with contextlib.suppress(ImportError):
        fn, cleanup = _torchcam("GradCAM")(b)
        fn()
        cleanup()
        row("torchcam", b.tc_layer, fn.low)  # type: ignore[attr-defined]
    with contextlib.suppress(ImportError):
        fn, _ = _captum(b)
        row("captum", b.tc_layer, fn()[:, 0].detach())
    return rows


# ---------------------------------------------------------------- memory (a fresh process per case)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(spec: str) -> None:
    """Run in a fresh process: peak RSS above baseline of one case's second call, in MiB.

    Also ``retained`` (RSS after the warm-up call minus RSS before it: what stays allocated between
    calls, one-time initialisation included) and ``first_call`` (the warm-up call's own peak above the
    RSS before it).
    """
    model_name, batch, case = spec.split("|")
    b = load(model_name, int(batch))
    fns, _ = build_cases(b, [case], CASES)
    fn = fns[case]
    clear_refs = Path("/proc/self/clear_refs")
    gc.collect()
    clear_refs.write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    fn()  # warm-up
    first = _status("VmHWM")
    gc.collect()
    clear_refs.write_text("5")
    base = _status("VmRSS")
    fn()
    peak = _status("VmHWM")
    mib = 2**20
    print(
        json.dumps(
            {
                "peak_mb": (peak - base) / mib,
                "retained_mb": (base - before) / mib,
                "first_call_mb": (first - before) / mib,
            }
        )
    )


def memory_table(model_name: str, batch: int) -> dict[str, dict[str, float]]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    result = {}
    for name in MEMORY_CASES:
        cmd = [sys.executable, __file__, "--memory-case", f"{model_name}|{batch}|{name}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(f"  memory case {name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {name}: {result[name]['peak_mb']:.0f} MB", file=sys.stderr)
    return result


# ---------------------------------------------------------------- Score-CAM and Ablation-CAM


def _low(raw: torch.Tensor) -> torch.Tensor:
    return camlens.normalize_maps(raw.float().clamp(min=0))


def _low_res(fn: Fn) -> Fn:
    """A peer's case that returns its low-resolution map (pytorch-grad-cam's recorded one, torchcam's)."""

    def run() -> Any:
        fn()
        recorder = getattr(fn, "recorder", None)
        return recorder.low if recorder is not None else fn.low  # type: ignore[attr-defined]

    return run


def perturbation(model_name: str, repeats: int, deadline: float, resnet_ablation_only: bool = False) -> dict[str, Any]:
    b = load(model_name, 1)
    fns: dict[str, Fn] = {"floor": _floor(b)[0]}
    cleanups: list[Callable[[], None]] = []
    out: dict[str, Any] = {}

    def keep(name: str, fn: Fn) -> Fn:
        def run() -> Any:
            out[name] = fn()
            return out[name]

        return run

    if not resnet_ablation_only:
        # pytorch-grad-cam's definition: raw logits of the masked inputs, softmax over channels (so no
        # baseline), masks upsampled with align_corners=True (its nn.UpsamplingBilinear2d)
        like_pgc = camlens.ScoreCAM(
            b.model, score="logit", channel_softmax=True, baseline=False, align_corners=True, progress=False
        )
        # torchcam's: logits, softmax over channels, align_corners=False; it min-max normalises each map
        # *before* upsampling, camlens after (no option): the one difference left
        like_tc = camlens.ScoreCAM(b.model, score="logit", channel_softmax=True, baseline=False, progress=False)
        fns["camlens scorecam (pgc definition)"] = keep("sc_pgc", lambda: like_pgc(b.x, b.ids).raw[:, 0])
        fns["camlens scorecam (closest to torchcam)"] = keep("sc_tc", lambda: like_tc(b.x, b.ids).raw[:, 0])
        try:
            fn, cleanup = _pgc("ScoreCAM")(b)
            fns["pytorch-grad-cam scorecam"] = keep("pgc_sc", _low_res(fn))
            cleanups.append(cleanup)
        except ImportError:
            pass
        try:
            fn, cleanup = _torchcam("ScoreCAM")(b)
            fns["torchcam scorecam"] = keep("tc_sc", _low_res(fn))
            cleanups.append(cleanup)
        except ImportError:
            pass
    abl = camlens.AblationCAM(b.model, progress=False)
    fns["camlens ablationcam"] = keep("abl", lambda: abl(b.x, b.ids).raw[:, 0])
    try:
        fn, cleanup = _pgc("AblationCAM")(b)
        fns["pytorch-grad-cam ablationcam"] = keep("pgc_abl", _low_res(fn))
        cleanups.append(cleanup)
    except ImportError:
        pass
    times = run_rounds(fns, repeats, warmup={"floor", "camlens ablationcam"}, min_seconds=0, deadline=deadline, seed=1)
    for cleanup in cleanups:
        cleanup()
    rows: dict[str, dict[str, Any]] = {}
    for name, ts in times.items():
        rows[name] = {"s": statistics.median(ts), "x_floor": paired(ts, times["floor"])}
    # forwards per call: camlens skips channels whose map is constant (their masked input is the baseline)
    act: dict[str, torch.Tensor] = {}
    handle = b.pgc_layer.register_forward_hook(lambda m, i, o: act.__setitem__("a", o.detach()))
    with torch.inference_mode():
        b.pgc_model(b.x)
    handle.remove()
    flat = act["a"].flatten(2)
    channels = int(flat.shape[1])
    varying = int(((flat.amax(-1) - flat.amin(-1)) > 0).sum())
    nonzero = int(flat.ne(0).any(-1).sum())
    fronts = math.ceil(nonzero / abl.batch_size)
    forwards = {
        "camlens scorecam (pgc definition)": f"{varying} masked + 1 baseline",
        "camlens scorecam (closest to torchcam)": f"{varying} masked + 1 baseline",
        "pytorch-grad-cam scorecam": f"{channels} masked",
        "torchcam scorecam": f"{channels} masked + 1 baseline",
        "camlens ablationcam": f"{nonzero} of the tail only, {fronts} front + 1 check",
        "pytorch-grad-cam ablationcam": f"{channels} ablated + 1",
    }
    for name, text in forwards.items():
        if name in rows:
            rows[name]["forwards"] = text

    def compare(ours: str, peer: str, key_ours: str, key_peer: str) -> None:
        if ours not in rows or peer not in rows:
            return
        mine, theirs = _low(out[key_ours]), _low(torch.as_tensor(np.asarray(out[key_peer])))
        rows[ours].setdefault("speedup", {})[peer] = paired(times[peer], times[ours])
        rows[ours].setdefault("max_abs_diff", {})[peer] = float((mine - theirs).abs().max())

    compare("camlens scorecam (pgc definition)", "pytorch-grad-cam scorecam", "sc_pgc", "pgc_sc")
    compare("camlens scorecam (closest to torchcam)", "torchcam scorecam", "sc_tc", "tc_sc")
    compare("camlens scorecam (pgc definition)", "torchcam scorecam", "sc_pgc", "tc_sc")
    compare("camlens ablationcam", "pytorch-grad-cam ablationcam", "abl", "pgc_abl")
    return {"rounds": len(times["floor"]), "rows": rows}


# ---------------------------------------------------------------- verdicts against the project's targets


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    speed, out = results["speed"], []

    def add(target: str, value: float | None, ok: bool | None, where: str) -> None:
        out.append({"target": target, "measured": value, "met": ok, "where": where})

    def worst(case: str, key: str = "x_floor", best: bool = False) -> tuple[float | None, str]:
        found = [(t["cases"][case][key], k) for k, t in speed.items() if case in t["cases"]]
        if not found:
            return None, ""
        return min(found) if best else max(found)

    v, w = worst("camlens cam")
    add("CAM <= 1.1x floor", v, None if v is None else v <= 1.1, w)
    fam = [(worst(c)[0], f"{c[8:]}, {worst(c)[1]}") for c in FAMILY if worst(c)[0] is not None]
    if fam:
        v, w = max(fam)
        add("Grad-CAM family <= 1.15x floor", v, v <= 1.15, w)
    v, w = worst("camlens gradcam top5")
    add("Grad-CAM top-5 <= 1.3x floor", v, None if v is None else v <= 1.3, w)
    fastest = [
        (ratio, f"{name}, {key}")
        for key, t in speed.items()
        for name, ratio in t["versus"].items()
        if name.endswith("/ fastest peer") or name == "camlens cam / torchcam cam"
    ]
    if fastest:
        v, w = max(fastest)
        add("never slower than the fastest peer (camlens / fastest, paired)", v, v <= 1.0, w)
    versus_pgc = [
        (1 / t["versus"][name], key)
        for key, t in speed.items()
        for name in t["versus"]
        if name == "camlens gradcam / pytorch-grad-cam gradcam"
    ]
    if versus_pgc:
        v, w = min(versus_pgc)
        add(">= 3x faster than pytorch-grad-cam Grad-CAM", v, v >= 3, w)
    pert = results.get("perturbation", {}).get("rows", {})
    for ours, peer in [
        ("camlens scorecam (pgc definition)", "pytorch-grad-cam scorecam"),
        ("camlens scorecam (closest to torchcam)", "torchcam scorecam"),
    ]:
        sp = pert.get(ours, {}).get("speedup", {}).get(peer)
        if sp is not None:
            add(f"Score-CAM >= 2x faster than {peer.split()[0]}", sp, sp >= 2, "EfficientNet-Lite0, batch 1")
    for key, rows in results.get("memory", {}).items():
        floor = rows.get("floor", {}).get("peak_mb")
        for case in ("camlens cam", "camlens gradcam"):
            if floor and case in rows:
                r = rows[case]["peak_mb"] / floor
                add(f"memory: {case[8:]} <= 1.3x the inference forward's", r, r <= 1.3, key)
    return out


# ---------------------------------------------------------------- report


def _f(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        BEGIN,
        "",
        f"Rerun: `{r['command']}` (from the repository root, in the dev environment; "
        f"{r['elapsed_s'] / 60:.1f} min). Date: {r['date']}.",
        "",
        f"Machine: {m['cpu']}, nproc {m['nproc']}, {m['platform']}; Python {m['python']}; torch {m['torch']} "
        f"with `torch.set_num_threads({r['threads']})`; load average {m['load_start']} at start, "
        f"{m['load_end']} at end (other processes may share the cores). Peers: "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        + ".",
        "",
        "How: every case is a zero-argument callable, warmed up by 2 calls, then timed (`time.perf_counter`)",
        "once per round, all cases of a table in a freshly shuffled order each round. `x floor` is the",
        "median over rounds of (case time / floor time *of the same round*), `IQR` its interquartile range;",
        "the floor is one forward pass under `torch.inference_mode()` of the same model and batch. camlens",
        "cases include reading `.maps` (ReLU, bilinear upsampling to 224x224, min-max); pytorch-grad-cam",
        "returns upsampled, normalised maps itself (its `with` block per call, as its README does); torchcam",
        "returns 7x7 maps, upsampled here with `F.interpolate` (extractor created once, hooks enabled only",
        "for its own call and their tensors dropped after it with `reset_hooks()`, else torchcam keeps the",
        "last call's autograd graph alive; hooks removed at the end); captum's",
        "`LayerGradCam(relu_attributions=True)` is kept as captum returns it: (B, 1, 7, 7), unnormalised, not",
        "upsampled, so its rows do less work than the others. Every tool explains the same top-1 class ids,",
        "computed once.",
        "",
        "## Layers each tool explains",
        "",
        "Grad-CAM of each tool at the layer it is given, batch 1, against camlens' (normalised 7x7 maps).",
        "",
    ]
    for model_name, rows in r["layers"].items():
        lines += [
            f"**{model_name}**",
            "",
            "| tool | layer given | map | max abs diff vs camlens |",
            "|---|---|---|---:|",
        ]
        for row in rows:
            diff = row.get("max_abs_diff")
            text = "" if row["tool"] == "camlens" else ("different layer" if diff is None else f"{diff:.1e}")
            lines.append(f"| {row['tool']} | `{row['layer']}` | {row['map']} | {text} |")
        lines.append("")
    for key, table in r["speed"].items():
        lines += [
            f"## Time: {key} ({table['rounds']} rounds)",
            "",
            "| case | median ms | x floor | IQR of x floor |",
            "|---|---:|---:|---|",
        ]
        for name, row in table["cases"].items():
            lines.append(
                f"| {name} | {row['ms']:.1f} | {row['x_floor']:.2f} "
                f"| {row['x_floor_p25']:.2f}-{row['x_floor_p75']:.2f} |"
            )
        lines.append("")
    keys = list(r["speed"])
    names: list[str] = []
    for table in r["speed"].values():
        names += [n for n in table["versus"] if n not in names]
    if names:
        lines += [
            "## camlens against the peers",
            "",
            "Median over rounds of the paired ratio camlens / peer (below 1: camlens is faster; 0.25 = 4x faster).",
            "",
            "| ratio | " + " | ".join(keys) + " |",
            "|---|" + "---:|" * len(keys),
        ]
        for name in names:
            cells = [_f(r["speed"][k]["versus"].get(name), ".2f") for k in keys]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for key, rows in r.get("memory", {}).items():
        floor = rows.get("floor", {}).get("peak_mb")
        lines += [
            f"## Peak memory above baseline: {key}",
            "",
            "Each case in a fresh process: warm-up call, peak RSS reset, second call; `peak` = its VmHWM minus",
            "the VmRSS before it. `retained` = RSS after the warm-up call minus RSS before it (what stays",
            "allocated between calls, one-time initialisation included; part of the baseline, so not in `peak`);",
            "`first call` = the warm-up call's peak above the RSS before it. glibc runs with",
            "`MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`, so freed tensors leave the RSS.",
            "",
            "| case | peak MB | x floor | retained MB | first call MB |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in rows.items():
            ratio = f"{row['peak_mb'] / floor:.2f}" if floor else ""
            lines.append(
                f"| {name} | {row['peak_mb']:.0f} | {ratio} | {row['retained_mb']:.0f} | {row['first_call_mb']:.0f} |"
            )
        lines.append("")
    for title, key in [("EfficientNet-Lite0", "perturbation"), ("ResNet-50", "perturbation_resnet50")]:
        if key not in r:
            continue
        p = r[key]
        lines += [
            f"## Score-CAM and Ablation-CAM: {title}, batch 1 ({p['rounds']} rounds)",
            "",
            "No warm-up (one call is hundreds of forward passes); speed-up = median paired ratio peer / camlens;",
            "output difference = max abs difference of the ReLU'd, min-max normalised 7x7 maps.",
            "",
            "| case | forward passes after the first | median s | x floor | speed-up | max abs diff |",
            "|---|---|---:|---:|---|---|",
        ]
        for name, row in p["rows"].items():
            sp = ", ".join(f"{v:.1f}x vs {k.split()[0]}" for k, v in row.get("speedup", {}).items())
            df = ", ".join(f"{v:.1e} vs {k.split()[0]}" for k, v in row.get("max_abs_diff", {}).items())
            lines.append(
                f"| {name} | {row.get('forwards', '')} | {row['s']:.2f} | {row['x_floor']:.0f} | {sp} | {df} |"
            )
        lines.append("")
    lines += ["## Targets", "", "| target | measured (worst case) | where | met |", "|---|---:|---|---|"]
    for v in r["targets"]:
        met = "" if v["met"] is None else ("yes" if v["met"] else "**no**")
        lines.append(f"| {v['target']} | {_f(v['measured'], '.2f')} | {v['where']} | {met} |")
    lines += ["", END]
    return "\n".join(lines)


def write_docs(text: str, path: Path) -> None:
    """Replace the generated block of ``path``; text outside it (the hand-written reading) is kept."""
    if path.exists() and BEGIN in (old := path.read_text()) and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        path.write_text(head + text + tail)
        return
    path.write_text(
        "# Speed and memory\n\n"
        + text
        + "\n\n## What the numbers show\n\n(Written by hand after a run; kept when the script reruns.)\n"
    )


def versions() -> dict[str, str]:
    found = {}
    for dist, name in [("grad-cam", "pytorch-grad-cam"), ("torchcam", "torchcam"), ("captum", "captum")]:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(dist)
    found["camlens"] = camlens.__version__
    return found


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def machine() -> dict[str, Any]:
    """What the numbers were measured on (shared by the benchmark scripts)."""
    return {
        "cpu": cpu_name(),
        "nproc": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batches 1,4, 3 rounds, EfficientNet memory")
    parser.add_argument("--models", default="efficientnet_lite0,resnet50", help="comma-separated")
    parser.add_argument("--batches", help="comma-separated; memory uses the largest (default 1,16; quick 1,4)")
    parser.add_argument("--repeats", type=int, help="rounds per speed table, at least (default 10; quick 3)")
    parser.add_argument("--min-seconds", type=float, help="more rounds (up to 5x) for short tables (default 20)")
    parser.add_argument("--perturbation-repeats", type=int, help="Score-CAM / Ablation-CAM rounds (default 3)")
    parser.add_argument("--guided", action="store_true", help="also time guided backprop (camlens, captum)")
    parser.add_argument("--ablation-resnet50", action="store_true", help="Ablation-CAM on ResNet-50 (~4 min more)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-perturbation", action="store_true")
    parser.add_argument("--budget", type=float, default=14.0, help="minutes: rounds stop early past it")
    parser.add_argument("--out", help="Markdown file to update (default: docs/benchmarks.md; none with --quick)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.memory_case:
        memory_child(args.memory_case)
        return
    defaults = {"batches": "1,16", "repeats": 10, "min_seconds": 20.0, "perturbation_repeats": 3}
    if args.quick:
        defaults = {"batches": "1,4", "repeats": 3, "min_seconds": 0.0, "perturbation_repeats": 1}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    t_start, m_start = time.perf_counter(), time.monotonic()
    budget = 60 * args.budget
    models = args.models.split(",")
    batches = [int(v) for v in args.batches.split(",")]
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_core.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": {**machine(), "load_start": _load()},
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "layers": {},
        "speed": {},
    }
    for model_name in models:
        print(f"layers: {model_name}", file=sys.stderr)
        results["layers"][model_name] = layer_check(model_name)
    configs = [(m, b) for m in models for b in batches]
    speed_end = m_start + 0.5 * budget
    for i, (model_name, batch) in enumerate(configs):
        b = load(model_name, batch)
        fns, cleanups = build_cases(b, list(CASES) + (list(GUIDED) if args.guided else []), {**CASES, **GUIDED})
        key = f"{model_name}, batch {batch}"
        print(f"timing {key}: {len(fns)} cases, >= {args.repeats} rounds", file=sys.stderr)
        # each table gets its share of what is left of the speed budget
        share = time.monotonic() + (speed_end - time.monotonic()) / (len(configs) - i)
        times = run_rounds(fns, args.repeats, warmup=None, min_seconds=args.min_seconds, deadline=share, seed=i)
        for cleanup in cleanups:
            cleanup()
        results["speed"][key] = summarize(times)
        del fns, cleanups, b
        gc.collect()
    if not args.no_memory:
        results["memory"] = {}
        batch = max(batches)
        for model_name in models[:1] if args.quick else models:
            print(f"memory: {model_name}, batch {batch}", file=sys.stderr)
            results["memory"][f"{model_name}, batch {batch}"] = memory_table(model_name, batch)
    if not args.no_perturbation and "efficientnet_lite0" in models:
        # one round is about 1.5 min on 2 idle cores; later rounds only while they fit in the budget
        deadline = m_start + budget - 30
        if deadline - time.monotonic() < 120 and not args.quick:
            print("Score-CAM / Ablation-CAM skipped: out of --budget", file=sys.stderr)
        else:
            print("Score-CAM / Ablation-CAM: efficientnet_lite0", file=sys.stderr)
            results["perturbation"] = perturbation("efficientnet_lite0", args.perturbation_repeats, deadline)
    if args.ablation_resnet50:
        print("Ablation-CAM: resnet50", file=sys.stderr)
        results["perturbation_resnet50"] = perturbation("resnet50", 1, 0.0, resnet_ablation_only=True)
    results["targets"] = verdicts(results)
    results["machine"]["load_end"] = _load()
    results["elapsed_s"] = time.perf_counter() - t_start
    text = markdown(results)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("core-quick.json" if args.quick else "core.json")).write_text(json.dumps(results, indent=1) + "\n")
    out = Path(args.out) if args.out else (None if args.quick else DOCS)
    if out is not None:
        write_docs(text, out)
        print(f"wrote {out}", file=sys.stderr)
    print(f"total {math.ceil(results['elapsed_s'])} s", file=sys.stderr)


if __name__ == "__main__":
    main()
