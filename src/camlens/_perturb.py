"""One chunked, batched forward over perturbed copies of samples, each copy scored by one scorer.

Every method and metric that perturbs and re-scores goes through :func:`perturbed_scores`: Score-CAM
(inputs masked by each channel), Ablation-CAM (the layer's output with one channel zeroed, replayed
through the tail), deletion / insertion, Average Drop / Increase in Confidence and ROAD. N rows, row i a
perturbed copy of sample ``owners[i]``, are built and run ``batch_size`` at a time, so only one chunk of
copies exists at once; the scorer (:class:`camlens.targets.RowScorer`) knows from ``owners`` which
target each row is scored for.

What a removed pixel becomes is one concept too, :func:`baseline`: IG's path start, LIME's switched-off
superpixels, occlusion's window, and the substrate of deletion / insertion all call it.

Progress and cancel have one place too, this loop: :func:`observe` installs a callback (a context variable,
so it belongs to one thread or task) that :func:`perturbed_scores` calls before the first chunk and after
every chunk with ``(rows done, rows in all, desc)`` (:func:`report_progress`); a callback that raises
:class:`Cancelled` stops the call between two chunks, and the method's ``finally`` hands the model back as
after any exception. ``camlens app`` drives its progress bar and its Cancel button through it; Score-CAM,
Ablation-CAM, LIME, occlusion, RISE and the faithfulness curves report through it because they all run here,
and Integrated Gradients / SmoothGrad because their row loop calls :func:`report_progress` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from camlens._inputs import sample_rows

__all__ = [
    "BASELINES",
    "PRECISIONS",
    "Baseline",
    "Cancelled",
    "baseline",
    "blur",
    "check_baseline",
    "check_precision",
    "fast_layout",
    "observe",
    "perturbed_scores",
    "report_progress",
]

Baseline = Union[str, float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
BASELINES = ("zero", "blur", "mean")  # the named kinds ("zeros" is read as "zero")
# the precisions the perturbed forwards may run in: float32 = the model's own (exact), the others autocast
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_precision(value: Any) -> str:
    """``value`` if it names a precision of :data:`PRECISIONS`, else a ValueError listing them."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {value!r}")
    return value


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """A 4-D image batch in channels-last memory layout (anything else unchanged), for perturbed forwards.

    Convolutions on a CPU run faster on channels-last inputs (oneDNN's native layout; part of Score-CAM's
    gain in docs/benchmarks.md); the weights keep their layout, so the user's model is not touched, and
    the outputs equal the contiguous layout's to float rounding (~1e-6).
    """
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _to_float32(output: Any) -> Any:
    """The model's output with every half-precision floating tensor cast to float32 (nested containers too)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() and output.dtype != torch.float64 else output
    if isinstance(output, (list, tuple)) and not hasattr(output, "_fields"):
        return type(output)(_to_float32(o) for o in output)
    if isinstance(output, dict):
        return {k: _to_float32(v) for k, v in output.items()}
    return output


Observer = Callable[[int, int, str], None]
# Module-level state like the model locks of _state.py: a ContextVar is per thread (and per asyncio task), so an
# observer set by one request of a server never sees another request's chunks.
_OBSERVER: ContextVar[Observer | None] = ContextVar("camlens_perturb_observer", default=None)


class Cancelled(Exception):
    """Raised by an :func:`observe` callback to stop a long call between two chunks.

    Not a ``RuntimeError`` on purpose: camlens catches ``RuntimeError`` in a few fallbacks (an op without a
    vmap rule, a layer replay that does not fit), and a cancel must never be taken for one of those.
    """


@contextmanager
def observe(callback: Observer) -> Iterator[None]:
    """Call ``callback(done, total, desc)`` from every :func:`perturbed_scores` loop run inside the block.

    ``done`` counts rows scored so far (0 before the first chunk), ``total`` the rows of that loop, ``desc``
    its label (``"score-cam masks"``...); one explanation may run several loops. The callback may raise
    :class:`Cancelled` (or anything else) to stop the call; the model is restored by the method's ``finally``.

    Examples:
        >>> with observe(lambda done, total, desc: print(desc, done, total)):
        ...     camlens.explain(model, x, "scorecam")
    """
    token = _OBSERVER.set(callback)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


def report_progress(done: int, total: int, desc: str) -> None:
    """Tell the :func:`observe` callback of this thread, if any, that ``done`` of ``total`` rows are scored.

    Called by :func:`perturbed_scores` and by the one other chunked loop, the forward + backward rows of
    Integrated Gradients and SmoothGrad (``methods/integrated.py``), so their calls report and cancel too.
    """
    observer = _OBSERVER.get()
    if observer is not None:
        observer(done, total, desc)


def perturbed_scores(
    forward: Callable[[slice], Any],
    owners: torch.Tensor,
    scorer: Callable[[Any, torch.Tensor], torch.Tensor],
    batch_size: int,
    *,
    desc: str,
    progress: bool | None = None,
    precision: str = "float32",
) -> torch.Tensor:
    """Scores (N, K) of N perturbed rows, ``batch_size`` rows per forward, under ``torch.inference_mode()``.

    Args:
        forward: ``forward(rows)`` runs the model on rows ``rows.start:rows.stop`` and returns its output;
            for perturbed inputs ``lambda rows: model(build(rows))``, for a replayed layer a forward whose
            hook replaces the layer's output by the chunk's perturbed activations.
        owners: (N,) the sample each row belongs to; ``len(owners)`` is the number of rows.
        scorer: ``scorer(output, owners[rows]) -> (n, K)`` (or (n,)), e.g. a :class:`~camlens.targets.RowScorer`.
        batch_size: rows per forward, >= 1. Chunks straddle samples; results do not depend on it.
        desc: label of the progress bar.
        progress: tqdm bar with ETA; ``None`` shows it only for 256 rows or more.
        precision: ``"float32"`` runs the model as it is (exact); ``"bfloat16"`` / ``"float16"`` run each
            forward under ``torch.autocast`` in that precision, on ``owners``' device (build ``owners``
            where the model runs; 2-3x faster on CPUs with AMX;
            scores then differ from float32's by ~1e-3, docs/benchmarks.md) and
            cast the output back to float32 before scoring.

    Returns:
        The chunks' scores concatenated in row order, in the scorer's dtype and device (an empty (0,)
        tensor for N = 0).

    Examples:
        >>> scorer = RowScorer(ids, "probability")
        >>> perturbed_scores(lambda rows: model(masked[rows]), owners, scorer, 16, desc="masks")
    """
    from tqdm.auto import tqdm  # imported on first use: most camlens calls never perturb

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dtype = PRECISIONS[check_precision(precision)]
    device_type = owners.device.type  # autocast where the model runs: callers build owners on its device
    total = int(owners.shape[0])
    disable = total < 256 if progress is None else not progress
    parts = []
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="row", disable=disable, leave=False) as bar:
        report_progress(0, total, desc)
        for start in range(0, total, batch_size):
            rows = slice(start, min(start + batch_size, total))
            with sample_rows(owners[rows]):  # a model's other inputs follow each row's sample (_inputs)
                if dtype is None:
                    output = forward(rows)
                else:
                    with torch.autocast(device_type, dtype=dtype):
                        output = forward(rows)
                    output = _to_float32(output)
                parts.append(scorer(output, owners[rows]))
            bar.update(rows.stop - rows.start)
            report_progress(rows.stop, total, desc)
    return torch.cat(parts) if parts else torch.empty(0)


# ------------------------------------------------------------------------------------------------ baselines


def blur(inputs: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's blurred image: each channel convolved with a ``klen`` x ``klen`` Gaussian (sigma 5), zero padding.

    Exactly RISE's ``evaluation.py``: ``nn.functional.conv2d(x, gkern(11, 5), padding=11 // 2)`` with the
    kernel on the diagonal of the (C, C) channel block, i.e. a depthwise blur whose zero padding darkens
    (pulls towards 0) a 5-pixel border. Needs scipy (loaded on first use) for RISE's kernel.
    """
    from scipy.ndimage import gaussian_filter

    channels = inputs.shape[1]
    # RISE's gkern(klen, nsig): scipy's gaussian_filter of a centred delta (mode "reflect" folds the tails in)
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    kernel = torch.as_tensor(gaussian_filter(delta, sigma), dtype=inputs.dtype, device=inputs.device)
    with torch.no_grad():
        return F.conv2d(inputs, kernel.expand(channels, 1, klen, klen), padding=klen // 2, groups=channels)


def check_baseline(kind: Any, name: str = "baseline") -> None:
    """Raise the error :func:`baseline` would raise for ``kind``, before any input is seen (for constructors)."""
    if isinstance(kind, str):
        if kind not in (*BASELINES, "zeros"):
            raise ValueError(
                f"{name}={kind!r} is not known; use 'zero', 'blur', 'mean', a number, a tensor or a callable"
            )
    elif isinstance(kind, bool) or (not isinstance(kind, (int, float, torch.Tensor)) and not callable(kind)):
        raise TypeError(
            f"{name} must be 'zero', 'blur', 'mean', a number, a tensor or a callable, got {type(kind).__name__}"
        )


def baseline(
    inputs: torch.Tensor,
    kind: Baseline,
    *,
    segments: torch.Tensor | None = None,
    klen: int = 11,
    sigma: float = 5.0,
    name: str = "baseline",
) -> torch.Tensor:
    """What removed pixels of ``inputs`` (B, C, H, W) become: a (B, C, H, W) tensor, detached, in their dtype.

    ``kind``:

    * ``"zero"`` (or ``"zeros"``): all zeros in the model's input space (the dataset's mean colour for
      ImageNet-normalised inputs; RISE's deletion substrate, IG's usual x');
    * ``"blur"``: :func:`blur` of the inputs with ``klen`` and ``sigma`` (RISE's insertion substrate);
    * ``"mean"``: the mean colour (per channel) of each segment: ``segments`` (B, H, W) integer labels
      (LIME's superpixels, its ``hide_color=None``); without segments the whole image is one segment;
    * a number: that value everywhere;
    * a tensor broadcasting to the inputs, e.g. (C, 1, 1), (C, H, W) or (B, C, H, W);
    * a callable ``inputs -> tensor`` (broadcasting to the inputs), run without gradients.

    ``name`` is the argument's name in error messages (``"substrate"`` for the faithfulness metrics).

    Examples:
        >>> start = baseline(x, "blur")  # IG's path from the blurred image
        >>> hidden = baseline(x, "mean", segments=labels)  # LIME's switched-off superpixels
    """
    check_baseline(kind, name)
    x = inputs.detach()
    if isinstance(kind, str):
        if kind in ("zero", "zeros"):
            return torch.zeros_like(x)
        if kind == "blur":
            return blur(x, klen, sigma)
        if segments is None:
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        return _segment_means(x, segments)
    if isinstance(kind, (int, float)):
        return torch.full_like(x, float(kind))
    if callable(kind) and not isinstance(kind, torch.Tensor):
        with torch.no_grad():
            kind = kind(x)
        if not isinstance(kind, torch.Tensor):
            raise TypeError(f"a {name} callable must return a tensor, got {type(kind).__name__}")
    try:
        return torch.broadcast_to(kind.detach().to(x), x.shape)
    except RuntimeError as err:
        raise ValueError(
            f"a {name} tensor of shape {tuple(kind.shape)} does not broadcast to the inputs {tuple(x.shape)}; "
            "use (C, 1, 1), (C, H, W) or (B, C, H, W)"
        ) from err


def _segment_means(x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Each pixel's segment mean, per channel: segments (B, H, W) labels 0 .. d - 1."""
    d = int(segments.max()) + 1
    flat = segments.flatten(1)[:, None].expand(-1, x.shape[1], -1)  # (B, C, HW)
    sums = x.new_zeros(x.shape[0], x.shape[1], d).scatter_add_(2, flat, x.flatten(2))
    counts = torch.zeros(x.shape[0], 1, d, dtype=x.dtype, device=x.device).scatter_add_(
        2, flat[:, :1], torch.ones_like(x[:, :1].flatten(2))
    )
    return (sums / counts.clamp(min=1)).gather(2, flat).view_as(x)
