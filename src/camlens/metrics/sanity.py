"""Model-randomisation sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

The *model parameter randomisation test* of that paper: an explanation that is meant to
describe what the model learned must change when the learned parameters are destroyed. The check
re-initialises blocks of a *copy* of the model and compares the maps of the randomised copy with the
maps of the trained model, for the same inputs and the same class ids:

* **cascading** randomisation: block after block from the logits down to the input (the paper's
  Fig. 2 on Inception v3); step i has the top i blocks re-initialised, the last step is a fully
  random network;
* **independent** randomisation: one block at a time, the others keep their trained weights.

Similarity between the original map and the randomised one (the paper's similarity metrics; its
HOG similarity is left out), computed by :mod:`camlens.metrics.similarity` (``spearman`` and ``ssim``
are re-exported here):

* ``spearman``: Spearman rank correlation of the maps camlens shows (``Explanation.maps``: ReLU,
  bilinear upsampling, min-max);
* ``spearman_abs``: Spearman rank correlation of the absolute values of the signed maps ("with
  absolute value"); ``spearman_signed`` of the signed maps themselves ("without absolute value");
* ``ssim``: the structural similarity index (Wang et al., IEEE TIP 2004, eq. 13) of the shown maps.

The maps compared, per method family:

* class activation maps: shown = ``.maps``; signed = ``.raw`` bilinearly upsampled to the input;
  abs = |signed|;
* pixel methods (saliency, guided-backprop, deconvnet, guided-gradcam): shown = ``.maps`` (max over
  colour channels of |attribution|, the Simonyan et al. 2014 reduction camlens displays); signed = the
  sum over colour channels of ``.pixels``; abs = the sum over channels of |``.pixels``|. The two sums
  are the grayscale reductions of Google PAIR's ``saliency`` library (``VisualizeImageDiverging`` and
  ``VisualizeImageGrayscale``), the library of the paper's authors' group.

Randomisation of a block (documented choice, the paper gives TensorFlow's truncated normal initializer):

* ``init="reset"`` (default): each module's own ``reset_parameters()``, PyTorch's default
  initialisation for that layer type (Kaiming-uniform for convolutions and linear layers);
* ``init="normal"``: every weight tensor with 2 or more dims is drawn from a normal distribution
  truncated at two standard deviations (TensorFlow's ``truncated_normal``), std = sqrt(2 / fan_in)
  (He et al. 2015), and 0/1-dim parameters (biases) are set to 0.
* normalisation layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm) inside a randomised block, in
  both modes: affine weight 1, bias 0 (their ``reset_parameters``). BatchNorm running statistics:
  ``bn="reset"`` (default) sets them to mean 0 / variance 1 (``reset_running_stats``, part of
  ``BatchNorm.reset_parameters``, as Quantus' MPRT does), so a randomised BatchNorm is an identity
  and the random network has no normalisation; ``bn="recalibrate"`` re-estimates the running mean
  and variance of every re-initialised BatchNorm from one forward pass of the checked inputs (the
  average over batch and positions), so activations keep the scale of a normalised network. On
  EfficientNet-Lite0 (chelsea + coffee) the fully randomised network's largest |logit| is 0.03 with
  ``"reset"`` and 0.9 with ``"recalibrate"`` (the trained one's: 11.8); the verdicts of
  ``docs/sanity.md`` do not depend on the choice. Parameters of modules without ``reset_parameters``
  are drawn as in ``init="normal"``.

Each module named in a block gets its own random stream, seeded by ``seed`` and its name: it receives
the same random weights in the cascading and the independent check, whatever the other blocks and
however modules are grouped into blocks (so a check on coarser steps ends in the same random network).

The user's model is never changed: everything runs on one ``copy.deepcopy`` of it, and the global
random number generator state is restored after each re-initialisation.

The check returns numbers (:class:`SanityResult`); its figure (:meth:`SanityResult.plot`,
:func:`plot_results`) is drawn by :func:`camlens.viz.plot_sanity`.

Examples:
    >>> from camlens.metrics.sanity import sanity_check
    >>> result = sanity_check(model, x, method="gradcam")
    >>> result.passed(), result.summary()["spearman"]
    >>> result.plot("sanity_gradcam.png")
"""

from __future__ import annotations

import copy
import difflib
import math
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camlens._state import model_lock
from camlens.capture import LayerRef, resolve_layer, trace_calls
from camlens.explanation import Explanation
from camlens.metrics.similarity import spearman, ssim
from camlens.registry import get_method
from camlens.targets import Targets

__all__ = [
    "SanityResult",
    "default_blocks",
    "plot_results",
    "randomized_models",
    "sanity_check",
    "spearman",
    "ssim",
]

Blocks = Sequence[Union[str, Sequence[str]]]

_MODES = ("cascading", "independent")
_INITS = ("reset", "normal")
_BN_MODES = ("recalibrate", "reset")
_METRICS = ("spearman", "spearman_abs", "spearman_signed", "ssim")
_NORM = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


# --------------------------------------------------------------------------------------------------
# blocks and their randomisation


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _own_params(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values())


def _candidates(model: nn.Module) -> list[str]:
    """Parameterised children, descending into plain containers (and into a single wrapped model)."""

    def expand(module: nn.Module, prefix: str) -> list[str]:
        found: list[str] = []
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if not _has_params(child):
                continue
            if isinstance(child, _CONTAINERS) and not _own_params(child):
                found += expand(child, full)
            else:
                found.append(full)
        return found

    names = expand(model, "")
    modules = dict(model.named_modules())
    # a model that only wraps another one (``Wrapper(backbone)``) has one parameterised child: look inside
    while (
        len(names) == 1
        and not _own_params(modules[names[0]])
        and any(_has_params(c) for c in modules[names[0]].children())
    ):
        names = expand(modules[names[0]], names[0])
    if _own_params(model):
        own = ", ".join(n for n, p in model._parameters.items() if p is not None)
        warnings.warn(
            f"{type(model).__name__} owns parameters directly ({own}); they belong to no block and are not "
            "randomised; pass blocks= to choose",
            stacklevel=3,
        )
    return names


@dataclass
class _Trace:
    """When each module call of one forward pass starts and ends (values of one event counter)."""

    starts: dict[str, list[int]] = field(default_factory=dict)
    ends: dict[str, list[int]] = field(default_factory=dict)


def _trace(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module]) -> _Trace:
    """Run one forward pass of ``x`` (:func:`camlens.capture.trace_calls`) and read when each call of
    ``modules`` starts and ends; a module that never runs has no entry."""
    trace = _Trace()
    calls = trace_calls(model, x)
    for key, module in modules.items():
        mine = [c for c in calls if c.module is module]  # by identity: a key may alias another name
        if mine:
            trace.starts[key] = sorted(c.start for c in mine)
            trace.ends[key] = [c.end for c in mine]  # the trace lists calls as they return
    return trace


def default_blocks(model: nn.Module, inputs: torch.Tensor) -> list[tuple[str, ...]]:
    """The blocks a sanity check randomises by default, from the output down to the input.

    A block is a parameterised child module; plain containers (``nn.Sequential``, ``ModuleList``,
    ``ModuleDict``) are opened, so ResNet's ``layer4`` gives its residual blocks and EfficientNet's
    ``_blocks`` its 16 MBConv blocks, the granularity of the paper's Inception "blocks". A
    normalisation layer that runs right after another block joins it (``_conv_head`` + ``_bn1``;
    ``conv1`` + ``bn1``). Blocks are ordered by when the forward pass first runs them, then reversed;
    modules the forward pass never runs are left out.

    Returns:
        one tuple of module names per block, e.g. for EfficientNet-Lite0
        ``[("_fc",), ("_conv_head", "_bn1"), ("_blocks.15",), ..., ("_blocks.0",), ("_conv_stem", "_bn0")]``.
    """
    names = _candidates(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no parameterised submodule to randomise")
    modules = dict(model.named_modules())
    trace = _trace(model, inputs[:1], {n: modules[n] for n in names})
    ran = sorted((trace.starts[n][0], n) for n in names if n in trace.starts)
    groups: list[list[str]] = []
    for _, name in ran:
        if groups and isinstance(modules[name], _NORM):
            groups[-1].append(name)
        else:
            groups.append([name])
    return [tuple(g) for g in reversed(groups)]


def _normalise_blocks(model: nn.Module, blocks: Blocks) -> list[tuple[str, ...]]:
    if isinstance(blocks, str) or not isinstance(blocks, Sequence):
        raise TypeError(
            f"blocks must be a list of module names or of groups of names, got {type(blocks).__name__}; "
            "e.g. blocks=['fc', 'layer4', ('conv1', 'bn1')]"
        )
    modules = dict(model.named_modules())
    groups: list[tuple[str, ...]] = []
    for item in blocks:
        names = tuple(item.split("+")) if isinstance(item, str) else tuple(item)
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f"a block must be a module name or a sequence of names, got {item!r}")
        for name in names:
            if name not in modules or not name:
                close = difflib.get_close_matches(name, [n for n in modules if n], n=4, cutoff=0.5)
                hint = f"closest: {', '.join(close)}" if close else "list them with camlens.layer_names(model)"
                raise ValueError(f"block {name!r} is not a module of the model; {hint}")
            if not _has_params(modules[name]):
                raise ValueError(f"block {name!r} has no parameters to randomise")
        groups.append(names)
    if not groups:
        raise ValueError("blocks is empty: give at least one module name")
    listed = [n for g in groups for n in g]
    twice = sorted({n for n in listed if listed.count(n) > 1})
    if twice:
        raise ValueError(f"block(s) {', '.join(map(repr, twice))} named more than once; give each module once")
    seen: dict[int, str] = {}
    for group in groups:
        for name in group:
            for p in modules[name].parameters():
                if id(p) in seen and seen[id(p)] != name:
                    raise ValueError(
                        f"blocks {seen[id(p)]!r} and {name!r} share parameters (one contains the other, or a "
                        "module is named twice); give each parameter to one block"
                    )
                seen[id(p)] = name
    return groups


def _label(group: Sequence[str]) -> str:
    return "+".join(group)


def _block_seed(seed: int, label: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(label.encode())) % (2**63)


def _draw(param: torch.Tensor) -> None:
    if param.dim() >= 2:
        fan_in = param[0].numel()
        std = math.sqrt(2.0 / max(fan_in, 1))
        nn.init.trunc_normal_(param, 0.0, std, -2 * std, 2 * std)
    else:
        param.zero_()


def _randomize(modules: dict[str, nn.Module], seed: int, init: str) -> list[nn.modules.batchnorm._BatchNorm]:
    """Re-initialise every parameter of ``modules`` (name -> module) in place; returns their BatchNorm layers.

    Each named module draws from its own stream, seeded by ``seed`` and its name, so its new weights do
    not depend on how modules are grouped into blocks or ordered.
    """
    devices = sorted({p.device.index or 0 for m in modules.values() for p in m.parameters() if p.is_cuda})
    batchnorms = []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        for name, top in modules.items():
            torch.manual_seed(_block_seed(seed, name))
            for m in top.modules():
                if isinstance(m, _NORM):
                    m.reset_parameters()  # affine 1 / 0; BatchNorm: running stats 0 / 1 too
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                        batchnorms.append(m)
                elif init == "reset" and callable(reset := getattr(m, "reset_parameters", None)):
                    reset()
                else:
                    for p in m._parameters.values():
                        if p is not None:
                            _draw(p)
    return batchnorms


def _recalibrate(model: nn.Module, batchnorms: Sequence[nn.modules.batchnorm._BatchNorm], x: torch.Tensor) -> None:
    """Running mean / variance of ``batchnorms`` from one forward pass of ``x`` (other modules untouched).

    Each listed BatchNorm runs in training mode with ``momentum=None`` (a cumulative average) from
    freshly reset statistics, so after the pass its running statistics are the statistics of its
    input over the batch and the positions (unbiased variance, as PyTorch stores it); every other
    module keeps its mode and statistics. When that is impossible (a BatchNorm1d on a batch of one),
    the statistics stay reset (mean 0, variance 1) and a warning says so.
    """
    if not batchnorms:
        return
    saved = [(bn, bn.training, bn.momentum) for bn in batchnorms]
    try:
        for bn in batchnorms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            model(x)
    except ValueError as err:
        for bn in batchnorms:
            bn.reset_running_stats()
        warnings.warn(
            f"BatchNorm statistics of the randomised blocks could not be re-estimated ({err}); they are reset to "
            "mean 0 / variance 1 instead; check a larger batch or pass bn='reset' to silence this",
            stacklevel=4,
        )
    finally:
        for bn, training, momentum in saved:
            bn.train(training)
            bn.momentum = momentum


class _Randomizer:
    """Applies and undoes block randomisations on the working copy.

    With ``bn="recalibrate"``, every BatchNorm re-initialised so far is re-estimated after each new
    block: in cascading mode a newly randomised lower block changes the inputs of the blocks above it.
    """

    def __init__(self, model: nn.Module, seed: int, init: str, bn: str) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.seed, self.init, self.bn = seed, init, bn
        self.batchnorms: list[nn.modules.batchnorm._BatchNorm] = []

    def randomize(self, group: tuple[str, ...], x: torch.Tensor, cumulative: bool) -> None:
        found = _randomize({n: self.modules[n] for n in group}, self.seed, self.init)
        self.batchnorms = [*self.batchnorms, *found] if cumulative else found
        if self.bn == "recalibrate":
            _recalibrate(self.model, self.batchnorms, x)

    def save(self, group: tuple[str, ...]) -> list[dict[str, torch.Tensor]]:
        return [{k: v.detach().clone() for k, v in self.modules[n].state_dict().items()} for n in group]

    def restore(self, group: tuple[str, ...], saved: list[dict[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for name, state in zip(group, saved):
                self.modules[name].load_state_dict(state)


def randomized_models(
    model: nn.Module,
    blocks: Blocks,
    mode: str = "cascading",
    seed: int = 0,
    *,
    init: str = "reset",
    bn: str = "reset",
    inputs: torch.Tensor | None = None,
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(block label, randomised copy)`` for each step of the randomisation; ``model`` is not changed.

    One ``copy.deepcopy`` of the model is made and changed in place at every step: in cascading mode
    it accumulates the re-initialised blocks; in independent mode the block is put back as soon as
    the iteration resumes (also after the last step, so ``list(randomized_models(...))`` holds
    trained copies). Use each yielded model inside the loop, or keep a ``copy.deepcopy`` of it.

    Args:
        model: the trained model (left untouched).
        blocks: module names, or groups of names (a tuple, or ``"conv1+bn1"``), in the order to randomise.
        mode: ``"cascading"`` or ``"independent"``.
        seed: base seed; each named module draws from its own stream seeded by ``seed`` and its name.
        init: ``"reset"`` or ``"normal"`` (see the module docstring).
        bn: ``"reset"`` or ``"recalibrate"`` (needs ``inputs``) BatchNorm running statistics.
        inputs: the batch used to recalibrate BatchNorm statistics.
    """
    _check_choice("mode", mode, _MODES)
    _check_choice("init", init, _INITS)
    _check_choice("bn", bn, _BN_MODES)
    if bn == "recalibrate" and inputs is None:
        raise ValueError("bn='recalibrate' re-estimates BatchNorm statistics from inputs: pass inputs= or bn='reset'")
    groups = _normalise_blocks(model, blocks)
    with model_lock(model):  # another thread's call may have hooks on the model: copy between calls
        work = copy.deepcopy(model)
    rand = _Randomizer(work, seed, init, bn)
    x = inputs if inputs is not None else torch.empty(0)
    for group in groups:
        if mode == "cascading":
            rand.randomize(group, x, cumulative=True)
            yield _label(group), work
        else:
            saved = rand.save(group)
            rand.randomize(group, x, cumulative=False)
            try:
                yield _label(group), work
            finally:
                rand.restore(group, saved)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


# --------------------------------------------------------------------------------------------------
# the check


@dataclass
class SanityResult:
    """Similarity of the original maps and the maps of the randomised models, per step and sample.

    Attributes:
        method: registry name of the method.
        mode: ``"cascading"`` or ``"independent"``.
        layers: labels of the randomised blocks, in the order of the steps (module names joined by
            ``+``); in cascading mode step i has blocks 0..i randomised.
        spearman: (L, N) Spearman rank correlation of the shown maps (``.maps``), original vs step.
            N = samples x targets (sample-major); one target per sample gives N = B.
        spearman_abs: (L, N) the same on the absolute values of the signed maps.
        ssim: (L, N) SSIM of the shown maps.
        maps: (L + 1, S, H, W) shown maps of the first S samples (first target): row 0 the original
            model, row i + 1 after step i; ``None`` when not kept.
        spearman_signed: (L, N) the same on the signed maps (the paper's "without absolute value").
        layer: the explained layer (``"input"`` for pixel methods).
        position: per step, ``"downstream"`` when the block runs after the explained layer's output
            (it changes the gradients or weights the method reads, not the activation) or
            ``"upstream"`` (it runs before or contains the layer: it changes the activation itself).
        targets: (B, K) class ids of the original model, used for every randomised model.
        blank: (L, N) whether the randomised model's shown map is constant (all zero after the
            ReLU, e.g. every weight negative): a change, but a degenerate one, worth reading apart.
        pixel_method: whether maps are input-space attributions.
        init, bn, seed: how the blocks were randomised.
        seconds: wall time of the check.
    """

    method: str
    mode: str
    layers: list[str]
    spearman: np.ndarray
    spearman_abs: np.ndarray
    ssim: np.ndarray
    maps: np.ndarray | None = None
    spearman_signed: np.ndarray | None = None
    layer: str = ""
    position: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None
    blank: np.ndarray | None = None
    pixel_method: bool = False
    init: str = "reset"
    bn: str = "reset"
    seed: int = 0
    seconds: float = 0.0

    def _metric(self, metric: str) -> np.ndarray:
        _check_choice("metric", metric, _METRICS)
        values = getattr(self, metric)
        if values is None:
            raise ValueError(f"this result has no {metric}")
        return np.asarray(values, dtype=np.float64)

    def mean(self, metric: str = "spearman") -> np.ndarray:
        """(L,) mean over samples of ``metric`` at each step."""
        return self._metric(metric).mean(1)

    def passed(self, threshold: float = 0.5, metric: str = "spearman", step: int = -1) -> bool:
        """Did the maps change? True when the mean over samples of ``metric`` at ``step`` is below ``threshold``.

        The criterion is the paper's minimal requirement: maps must change when the model's learned
        parameters are destroyed. With cascading randomisation and ``step=-1`` (the default) that is
        the fully re-initialised network. Adebayo et al. give no numeric cut-off; 0.5 (a rank
        correlation below 0.5, i.e. at most a moderate monotone association left) is camlens'
        choice. A map that ignores the weights scores 1 at every step and fails; NaN similarities
        (non-finite maps) fail too. In independent mode
        ``step=-1`` is the model with only the bottom block re-initialised: pick the step to test.

        Note that a method can pass this test and still be insensitive to the top layers (the
        paper's finding for guided backprop): see :meth:`changes_at` and the curves of :meth:`plot`.
        """
        value = float(self.mean(metric)[step])
        return bool(value < threshold)

    def changes_at(self, threshold: float = 0.5, metric: str = "spearman") -> str | None:
        """The first step (block label) whose mean ``metric`` falls below ``threshold``, or ``None``."""
        below = np.nonzero(self.mean(metric) < threshold)[0]
        return self.layers[int(below[0])] if len(below) else None

    def summary(self, threshold: float = 0.5) -> dict[str, Any]:
        """One row for a table of methods: the metrics after the last step (mean over samples) and the verdict."""
        row: dict[str, Any] = {
            "method": self.method,
            "mode": self.mode,
            "layer": self.layer,
            "steps": len(self.layers),
            "samples": int(self.spearman.shape[1]),
            "last_block": self.layers[-1] if self.layers else None,
        }
        for metric in _METRICS:
            if getattr(self, metric) is not None:
                row[metric] = float(self.mean(metric)[-1])
        row["blank"] = None if self.blank is None else float(np.asarray(self.blank)[-1].mean())
        row["changes_at"] = self.changes_at(threshold)
        row["passed"] = self.passed(threshold)
        row["threshold"] = threshold
        row["seconds"] = round(self.seconds, 3)
        return row

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per step and sample (for CSV): method, mode, step, block, position, sample, metrics."""
        rows = []
        for i, block in enumerate(self.layers):
            for n in range(self.spearman.shape[1]):
                row: dict[str, Any] = {
                    "method": self.method,
                    "mode": self.mode,
                    "step": i + 1,
                    "block": block,
                    "position": self.position[i] if i < len(self.position) else "",
                    "sample": n,
                }
                for metric in _METRICS:
                    values = getattr(self, metric)
                    if values is not None:
                        row[metric] = float(values[i, n])
                if self.blank is not None:
                    row["blank"] = bool(self.blank[i, n])
                rows.append(row)
        return rows

    def plot(self, path: str | Path, images: Any = None, threshold: float = 0.5) -> Path:
        """A PNG like the paper's figures: similarity vs randomised block (Fig. 4) and the maps per step (Fig. 2).

        Args:
            path: where to write the PNG.
            images: optional photos (one per sample, PIL or HxWx3 array); the first is drawn before the maps.
            threshold: drawn as a dashed line on the curves.

        The figure is drawn by :func:`camlens.viz.plot_sanity` (needs matplotlib, the ``viz`` extra).
        """
        from camlens.viz.plots import plot_sanity

        return plot_sanity([self], path, images=images, threshold=threshold)

    def __repr__(self) -> str:
        final = f"{float(self.mean()[-1]):.3f}" if self.layers else "-"
        verdict = self.passed() if self.layers else None
        return (
            f"SanityResult(method={self.method!r}, mode={self.mode!r}, steps={len(self.layers)}, "
            f"samples={self.spearman.shape[1]}, final spearman={final}, passed={verdict})"
        )


def _map_views(exp: Explanation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shown, abs, signed) maps, each (B, K, H, W) at the input's size."""
    shown = exp.maps
    if exp.pixels is not None:
        return shown, exp.pixels.abs().sum(2), exp.pixels.sum(2)
    b, k, h, w = exp.raw.shape
    signed = F.interpolate(
        exp.raw.reshape(b * k, 1, h, w), size=exp.input_size, mode="bilinear", align_corners=False
    ).reshape(b, k, *exp.input_size)
    return shown, signed.abs(), signed


def _is_blank(maps: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (...): is the map constant?"""
    flat = maps.flatten(-2)
    return flat.amax(-1) == flat.amin(-1)


def _positions(
    work: nn.Module, groups: Sequence[tuple[str, ...]], layer: str | None, x: torch.Tensor
) -> tuple[list[str], str]:
    """Per block, "downstream" (first runs after the layer's output exists) or "upstream"; and the layer's label."""
    if layer is None or layer == "input":
        return ["downstream"] * len(groups), "input"
    ref = resolve_layer(work, layer)
    modules = dict(work.named_modules())
    watched = {n: modules[n] for g in groups for n in g}
    key = "\0layer"  # the layer under its own key: it may also be a block
    watched[key] = ref.module
    trace = _trace(work, x[:1], watched)
    ends = trace.ends.get(key, [])
    call = ref.call if ref.call is not None else len(ends) - 1
    if not ends or not -len(ends) <= call < len(ends):
        return ["?"] * len(groups), str(ref)
    layer_end = ends[call]
    out = []
    for group in groups:
        starts = [trace.starts[n][0] for n in group if n in trace.starts]
        out.append("downstream" if starts and min(starts) > layer_end else "upstream")
    return out, str(ref)


def _layer_name(model: nn.Module, layer: Any) -> Any:
    """A layer spec that names the same layer in a deep copy of ``model``."""
    if layer is None or isinstance(layer, str):
        return layer
    if isinstance(layer, LayerRef):
        return str(layer)
    return str(resolve_layer(model, layer))


def sanity_check(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str | type = "gradcam",
    layer: str | nn.Module | LayerRef | None = None,
    targets: Targets = None,
    mode: str = "cascading",
    blocks: Blocks | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    init: str = "reset",
    bn: str = "reset",
    keep_maps: int = 4,
    **method_options: Any,
) -> SanityResult:
    """Adebayo et al.'s model parameter randomisation test for one method on a batch.

    The original maps come from an exact copy of the model; then blocks of that copy are re-initialised
    (cascading: from the output down, cumulatively; independent: one at a time), the maps are
    recomputed for the *same class ids* (resolved once on the original model: a randomised model's
    own top-1 class would change the question asked), at the same layer, and compared with the
    originals (:func:`spearman`, :func:`ssim`; see the module docstring for which maps).

    Args:
        model: the trained model; never changed (all work happens on a ``copy.deepcopy``).
        inputs: (B, C, H, W) batch (maps must be at least 11x11 for SSIM).
        method: a registered method name, or a :class:`camlens.CAMMethod` subclass.
        layer: the layer to explain (``None``: the method's default); fixed for all randomised copies.
        targets: as for :func:`camlens.explain`; resolved to class ids once, on the original model
            (a callable target is re-applied to each randomised model's output).
        mode: ``"cascading"`` (default) or ``"independent"``.
        blocks: module names or groups (``("conv1", "bn1")`` or ``"conv1+bn1"``) in the order to
            randomise; default :func:`default_blocks` (from the output down).
        seed: base seed of the re-initialisation.
        progress: show a tqdm progress bar, one tick per randomisation step.
        init: ``"reset"`` (each layer's ``reset_parameters``) or ``"normal"`` (truncated normal).
        bn: ``"reset"`` or ``"recalibrate"`` BatchNorm running statistics of randomised blocks.
        keep_maps: keep the shown maps of this many samples for plotting (0: none).
        **method_options: passed to the method (e.g. ``batch_size=`` for Score-CAM).

    Returns:
        a :class:`SanityResult`.

    Examples:
        >>> result = sanity_check(model, x, "guided-backprop", mode="cascading")
        >>> result.changes_at(), result.passed()
    """
    from tqdm.auto import tqdm

    from camlens.api import check_options
    from camlens.methods.base import CAMMethod

    start = time.perf_counter()
    if isinstance(method, str):
        cls = get_method(method)
    elif isinstance(method, type) and issubclass(method, CAMMethod):
        cls = method
    else:
        raise TypeError(f"method must be a registered name or a CAMMethod subclass, got {method!r}")
    _check_choice("mode", mode, _MODES)
    _check_choice("init", init, _INITS)
    _check_choice("bn", bn, _BN_MODES)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a (B, C, H, W) tensor, got {shape}")
    accepted = check_options(cls, method_options)
    options = dict(method_options)
    if "progress" in accepted and "progress" not in options:
        options["progress"] = False  # one bar, ours

    groups = _normalise_blocks(model, blocks) if blocks is not None else None
    spec = _layer_name(model, layer)
    with model_lock(model):  # another thread's call may have hooks on the model: copy between calls
        work = copy.deepcopy(model)

    def explain(target: Targets, at: Any) -> Explanation:
        return cls(work, at, **options)(inputs, target)

    original = explain(targets, spec)
    fixed_targets: Targets = original.targets if original.targets is not None else targets
    fixed_layer = original.layer if cls.takes_layer and original.layer != "input" else None
    if groups is None:
        groups = default_blocks(work, inputs)
    positions, layer_label = _positions(work, groups, fixed_layer, inputs)
    views0 = [v.double() for v in _map_views(original)]
    b, k = original.raw.shape[:2]
    keep = min(keep_maps, b)
    kept = [original.maps[:keep, 0].float().cpu().numpy()] if keep else []

    if bool(_is_blank(views0[0]).any()):
        warnings.warn(
            f"{cls.name or cls.__name__} gives a constant map for {int(_is_blank(views0[0]).sum())} of {b * k} "
            "original map(s): nothing to compare there (their Spearman is 1 only while the map stays constant)",
            stacklevel=2,
        )
    rand = _Randomizer(work, seed, init, bn)
    results: dict[str, list[torch.Tensor]] = {m: [] for m in _METRICS}
    blanks: list[torch.Tensor] = []
    name = cls.name or cls.__name__
    with tqdm(total=len(groups), desc=f"sanity {name}", unit="block", disable=not progress) as bar:
        for group in groups:
            bar.set_postfix_str(_label(group), refresh=False)
            saved = rand.save(group) if mode == "independent" else None
            rand.randomize(group, inputs, cumulative=mode == "cascading")
            try:
                exp = explain(fixed_targets, fixed_layer)
            finally:
                if saved is not None:
                    rand.restore(group, saved)
            shown, absolute, signed = (v.double() for v in _map_views(exp))
            results["spearman"].append(spearman(shown, views0[0]).reshape(b * k))
            results["spearman_abs"].append(spearman(absolute, views0[1]).reshape(b * k))
            results["spearman_signed"].append(spearman(signed, views0[2]).reshape(b * k))
            results["ssim"].append(ssim(shown, views0[0]).reshape(b * k))
            blanks.append(_is_blank(shown).reshape(b * k))
            if keep:
                kept.append(exp.maps[:keep, 0].float().cpu().numpy())
            bar.update(1)
    arrays = {m: torch.stack(v).cpu().numpy() for m, v in results.items()}
    if any(not np.isfinite(a).all() for a in arrays.values()):
        warnings.warn(
            "some randomised models gave non-finite maps (NaN/inf): their similarities are NaN; try bn='recalibrate'",
            stacklevel=2,
        )
    return SanityResult(
        method=name,
        mode=mode,
        layers=[_label(g) for g in groups],
        spearman=arrays["spearman"],
        spearman_abs=arrays["spearman_abs"],
        ssim=arrays["ssim"],
        maps=np.stack(kept) if keep else None,
        spearman_signed=arrays["spearman_signed"],
        layer=layer_label,
        position=positions,
        targets=None if original.targets is None else original.targets.cpu().numpy(),
        blank=torch.stack(blanks).cpu().numpy(),
        pixel_method=original.pixels is not None,
        init=init,
        bn=bn,
        seed=seed,
        seconds=time.perf_counter() - start,
    )


def plot_results(
    results: Sequence[SanityResult], path: str | Path, images: Any = None, threshold: float = 0.5, sample: int = 0
) -> Path:
    """One PNG for one or several methods, as the paper's Fig. 2 and Fig. 4: :func:`camlens.viz.plot_sanity`.

    Kept here so ``from camlens.metrics.sanity import plot_results`` keeps working; the figure is drawn
    by :mod:`camlens.viz` (needs matplotlib, the ``viz`` extra).
    """
    from camlens.viz.plots import plot_sanity

    return plot_sanity(results, path, images=images, threshold=threshold, sample=sample)
