"""GAP checkpoints: :func:`save_checkpoint`, :func:`load_checkpoint` and the trust rules of untrusted files.

A checkpoint whose ``source`` is ``torchvision:NAME`` or a built-in model holds only tensors and plain values
and loads without running code from the file; any other checkpoint needs ``trust=True``. The backbone is
rebuilt from its source here for torchvision and the built-in models; ``camlens.zoo`` passes its own model
loader as ``build_source`` so every model spec it reads works, and this module never imports ``camlens.zoo``.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.gap.convert import GapNet, convert
from camlens.models import BUILTIN, BUILTIN_ARCHITECTURES

__all__ = ["checkpoint_needs_trust", "is_checkpoint", "load_checkpoint", "save_checkpoint"]

_FORMAT = "camlens.gap/1"
_FAMILY = "camlens.gap/"


def save_checkpoint(
    model: GapNet, path: str | Path, *, classes: Sequence[str] = (), history: dict[str, Any] | None = None
) -> None:
    """Write ``model`` so :func:`load_checkpoint` rebuilds it.

    With ``model.config["source"]`` naming a torchvision architecture (``"torchvision:vgg16"``) or a
    camlens built-in model, the file holds only tensors and plain values: loading it runs no code from
    the file, and the backbone is rebuilt from the source. Without a source the backbone's module is
    pickled into the file as well; unpickling it runs code from the file, so :func:`load_checkpoint`
    refuses it unless told ``trust=True`` (CLI ``--trust-model-file``). Any other source (a factory or
    a model file) also needs ``trust=True``: the file names code to import or load.
    """
    state = {
        "format": _FORMAT,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "history": {k: v for k, v in (history or {}).items() if k != "checkpoint"},
    }
    if not model.config.get("source"):
        buffer = io.BytesIO()
        torch.save(copy.deepcopy(model).cpu(), buffer)
        state["module"] = buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def is_checkpoint(obj: object) -> bool:
    """Whether ``obj`` (a ``torch.load``-ed object) is a camlens GAP checkpoint: a dict with its ``format``.

    Examples:
        >>> state = torch.load("vgg16_gap.pt", weights_only=True)  # weights_only: runs no code
        >>> camlens.gap.is_checkpoint(state)  # True
    """
    return isinstance(obj, dict) and isinstance(obj.get("format"), str) and obj["format"].startswith(_FAMILY)


def _safe_source(source: object) -> bool:
    """A source :func:`load_checkpoint` can rebuild without running code the file names."""
    return isinstance(source, str) and (source.startswith("torchvision:") or source in BUILTIN)


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The checkpoint dict of ``path``, read with ``weights_only=True`` (no code runs)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch/pickle raise many types for a foreign file
        raise ValueError(f"{path}: not a camlens GAP checkpoint ({type(err).__name__})") from err
    if not is_checkpoint(state):
        raise ValueError(f"{path}: not a camlens GAP checkpoint (no format {_FORMAT!r}); write one with finetune")
    if state["format"] != _FORMAT:
        raise ValueError(f"{path}: a {state['format']!r} checkpoint; this camlens reads {_FORMAT!r}: upgrade camlens")
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("state_dict"), dict):
        raise ValueError(f"{path}: a damaged camlens GAP checkpoint (no config or state_dict)")
    return state


def _trust_problem(path: Path, state: Mapping[str, Any]) -> str | None:
    """Why loading ``state`` would run code from the file, or None when it would not."""
    source = state["config"].get("source")
    hint = "Load it only if you trust its source: --trust-model-file (CLI) or trust=True"
    if not source:
        return f"{path}: this GAP checkpoint embeds a pickled module; unpickling runs code from the file. {hint}"
    if not _safe_source(source):
        return (
            f"{path}: this GAP checkpoint rebuilds its backbone from {source!r}, code the file names "
            f"(only torchvision:NAME and {', '.join(BUILTIN)} are safe). {hint}"
        )
    return None


def checkpoint_needs_trust(checkpoint: str | Path | Mapping[str, Any]) -> bool:
    """Whether :func:`load_checkpoint` needs ``trust=True`` for this checkpoint (a file, or its loaded dict).

    True for a checkpoint that embeds a pickled module (one saved without a ``source``) or rebuilds its
    backbone from a factory or a model file; False for one rebuilt from ``torchvision:NAME`` or a
    built-in model. Reading the file for this runs no code from it (``weights_only=True``).

    Raises:
        ValueError: the file is missing or not a camlens GAP checkpoint.
    """
    if isinstance(checkpoint, Mapping):
        if not is_checkpoint(dict(checkpoint)) or not isinstance(checkpoint.get("config"), dict):
            raise ValueError("not a camlens GAP checkpoint (a dict with format 'camlens.gap/1' and a config)")
        return _trust_problem(Path("checkpoint"), checkpoint) is not None
    return _trust_problem(Path(checkpoint), _read(Path(checkpoint), "cpu")) is not None


def _build_source(source: str, trust: bool) -> nn.Module:
    """The original model a checkpoint's ``source`` names, with any weights (the checkpoint's replace them).

    ``torchvision:NAME`` and the built-in models are built here. Any other source (a factory, a model file)
    is a ``camlens.zoo.load_model`` spec, and zoo is the one place that imports factories and reads model
    files: load such a checkpoint with ``camlens.zoo.load_model(path, trust=True)``, which passes its own
    loader as ``build_source``.
    """
    if source.startswith("torchvision:"):
        import torchvision

        arch = source.split(":", 1)[1]
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown torchvision model {arch!r} in the checkpoint's source {source!r}")
        return torchvision.models.get_model(arch, weights=None)
    if source in BUILTIN_ARCHITECTURES:
        return BUILTIN_ARCHITECTURES[source]()
    raise ValueError(
        f"the checkpoint's backbone comes from {source!r}, which only camlens.zoo can build; load it with "
        "camlens.zoo.load_model(path, trust=True) (CLI: --model FILE --trust-model-file)"
    )


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    trust: bool = False,
    build_source: Callable[[str, bool], nn.Module] | None = None,
) -> GapNet:
    """The :class:`GapNet` saved by :func:`finetune` / :func:`save_checkpoint`, in eval mode.

    The file is read with ``torch.load(weights_only=True)``. A checkpoint with a ``torchvision:NAME``
    (or built-in) source is then rebuilt from that architecture and needs nothing more. One that embeds
    a pickled module (saved without a source) is unpickled only with ``trust=True``: unpickling runs
    code from the file. :func:`checkpoint_needs_trust` tells which kind a file is before loading it.

    The class names (for an ImageFolder) are in ``net.config["classes"]``; after :func:`finetune` on an
    image folder, ``net.config`` also holds its ``image_size``, ``mean`` and ``std``.

    Args:
        path: the checkpoint file.
        map_location: device for the weights.
        trust: allow unpickling the module a checkpoint embeds (or rebuilding it from a factory or
            model file the checkpoint names); only for files from a source you trust.
        build_source: ``build_source(source, trust) -> nn.Module`` builds the original model a checkpoint's
            ``source`` names (its weights are replaced). By default torchvision and built-in sources (and,
            trusted, ``package.module:factory``) are built here; ``camlens.zoo.load_model`` passes its own
            loader, which reads every model spec. Called only after the trust check.

    Raises:
        ValueError: the file is missing, not a camlens GAP checkpoint, damaged, or needs ``trust=True``
            (refused before anything in it is unpickled).

    Examples:
        >>> net = load_checkpoint("vgg16_gap.pt")  # saved with source="torchvision:vgg16"
        >>> net = load_checkpoint("mynet_gap.pt", trust=True)  # embeds a module: a file you made yourself
    """
    path = Path(path)
    state = _read(path, map_location)
    problem = _trust_problem(path, state)
    if problem is not None and not trust:
        raise ValueError(problem)
    config = dict(state["config"])
    try:
        if config.get("source"):
            original = (build_source or _build_source)(config["source"], trust)
            net = convert(
                original,
                num_classes=config["num_classes"],
                pooling=config["pooling"],
                channels=config["channels"],
                drop_last_pool=config["drop_last_pool"],
                freeze=False,
                layer=config["layer"],
                input_size=config["input_size"],
                source=config["source"],
            )
        else:
            if not isinstance(state.get("module"), bytes):
                raise ValueError(f"{path}: a damaged camlens GAP checkpoint (no source and no module)")
            net = torch.load(io.BytesIO(state["module"]), map_location=map_location, weights_only=False)
            if not isinstance(net, GapNet):
                raise ValueError(f"{path}: the saved module is a {type(net).__name__}, not a GapNet")
        net.load_state_dict(state["state_dict"])
    except KeyError as err:
        raise ValueError(f"{path}: a damaged camlens GAP checkpoint (its config has no {err})") from err
    except RuntimeError as err:
        detail = " ".join(str(err).strip().splitlines()[:2])[:300]
        raise ValueError(f"{path}: the checkpoint's weights do not fit its network: {detail}") from err
    net.config = {**config, "classes": list(state.get("classes", []))}
    return net.to(map_location).eval()
