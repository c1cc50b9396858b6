"""Faithfulness metrics: does a map rank the pixels the way the model actually uses them?

Five metrics from the literature, each computed for any saliency map (any camlens method, or any other
source) on any classifier, with every perturbed image scored in batched, chunked forwards:

* :func:`deletion_curve` / :func:`insertion_curve`: Petsiuk et al., "RISE: Randomized Input Sampling for
  Explanation of Black-box Models", BMVC 2018, sec. 4.1 ("causal metrics").
* :func:`average_drop_increase`: Average Drop and Increase in Confidence, Chattopadhay et al.,
  "Grad-CAM++", WACV 2018, sec. 5.1 ("Objective evaluation for object recognition").
* :func:`road`: Remove And Debias, Rong et al., "A Consistent and Efficient Evaluation Strategy for
  Attribution Methods", ICML 2022 (noisy linear imputation, :func:`noisy_linear_imputation`; reference
  code tleemann/road_evaluation).
* :func:`pointing_game`: Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016,
  sec. 5.1.

Conventions shared by all of them:

* ``saliency``: (B, H, W) or (B, 1, H, W) maps at the input resolution, e.g. ``Explanation.maps[:, 0]``.
  Only the *order* of the values matters for deletion, insertion and ROAD; AD/IC multiplies the image by
  the map, so there it must lie in [0, 1] (``Explanation.maps`` does).
* Ties in the order are broken deterministically: among equal values the pixel that comes first in
  raster order (row by row) ranks higher. A constant map therefore deletes the image row by row.
* ``targets``: (B,) class ids (ints, tensor or array), ``None`` for each image's top-1 class on the
  unperturbed input, or a callable ``output -> (n,)`` applied to the model's raw output of any batch of
  perturbed images (it must act row by row, as camlens' target callables do). For class ids ``score``
  picks the softmax probability (the papers' choice, default) or the raw logit; a callable's value is
  used as it is.
* The model is never changed: forwards run under :func:`torch.inference_mode`, no hooks, no
  ``train()``/``eval()`` switch, and the batch-norm running statistics a training-mode forward moves
  are restored afterwards (:mod:`camlens._state`, whose lock also keeps other threads' camlens calls
  on the same model out of these forwards). A model left in training mode triggers a warning,
  because BatchNorm and dropout then make every score depend on the batch and on chance.
* Images are perturbed in the model's input space (after normalisation), as RISE's code, torchcam and
  pytorch-grad-cam do: "zeros" is then the dataset's mean colour for ImageNet-normalised inputs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

from camlens._perturb import Baseline, baseline, perturbed_scores
from camlens._perturb import blur as blur_substrate  # RISE's blur, under the name this module has always exported
from camlens._state import preserved
from camlens.targets import RowScorer, _check_score_kind, class_ids, resolve_targets

__all__ = [
    "Curve",
    "aggregate_drop_increase",
    "average_drop_increase",
    "blur_substrate",
    "deletion_curve",
    "insertion_curve",
    "noisy_linear_imputation",
    "pointing_accuracy",
    "pointing_game",
    "road",
]

MetricTargets = Union[None, int, Sequence[int], np.ndarray, torch.Tensor, Callable[[Any], torch.Tensor]]
Substrate = Baseline  # what removed pixels become: camlens._perturb.baseline

# numpy >= 2 names it trapezoid (and 2.4 dropped trapz); numpy 1.24-1.26 (pyproject's floor) has only trapz
try:
    _TRAPEZOID = np.trapezoid
except AttributeError:  # numpy < 2
    _TRAPEZOID = np.trapz  # type: ignore[attr-defined]

# ROAD's neighbour weights (Rong et al. 2022; tleemann/road_evaluation, road/imputations.py):
# 1/6 for the four direct neighbours, 1/12 for the four diagonal ones (they sum to 1).
_ROAD_NEIGHBOURS = (
    (-1, -1, 1 / 12),
    (-1, 0, 1 / 6),
    (-1, 1, 1 / 12),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (1, 1, 1 / 12),
)


@dataclass(frozen=True)
class Curve:
    """Scores of perturbed images along a curve, per image.

    Attributes:
        fractions: (S+1,) the fraction of pixels perturbed at each point, in [0, 1] (for ROAD: the
            removal percentages as fractions).
        scores: (B, S+1) the target score of each image at each point.
        auc: (B,) area under ``scores`` against ``fractions`` by the trapezoid rule.
        base: (B,) the score of the unperturbed image when the curve does not contain it (ROAD), else ``None``.
    """

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    base: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        """(B,) the average score over the curve's points (ROAD's summary, pytorch-grad-cam's averager)."""
        return np.asarray(self.scores.mean(axis=1))


# ----------------------------------------------------------------------------------------- shared plumbing


def _check_inputs(inputs: Any) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        got = (
            f"shape {tuple(inputs.shape)} {inputs.dtype}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        )
        raise ValueError(f"inputs must be a float tensor of shape (B, C, H, W), got {got}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs is an empty batch")
    return inputs


def _as_maps(saliency: Any, inputs: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float64 maps on the inputs' device, checked against the inputs."""
    maps = saliency.detach() if isinstance(saliency, torch.Tensor) else torch.as_tensor(np.asarray(saliency))
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    b, _, h, w = inputs.shape
    if maps.dim() != 3 or tuple(maps.shape) != (b, h, w):
        raise ValueError(
            f"saliency must have shape ({b}, {h}, {w}) or ({b}, 1, {h}, {w}) to match the inputs, got "
            f"{tuple(maps.shape)}; pass Explanation.maps[:, k] (maps upsampled to the input size)"
        )
    maps = maps.to(device=inputs.device, dtype=torch.float64)
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("saliency contains NaN or infinite values; a map must be finite to order the pixels")
    return maps


def _ranks(maps: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """(B, H*W) rank of every pixel (0 = first perturbed); ties go to the earlier pixel in raster order."""
    order = torch.argsort(maps.flatten(1), dim=1, descending=descending, stable=True)
    return torch.argsort(order, dim=1)


def _warn_if_training(model: nn.Module, metric: str, stacklevel: int = 4) -> None:
    if any(module.training for module in model.modules()):
        warnings.warn(
            f"{metric}: the model is in training mode, so BatchNorm and dropout make the scores depend on the "
            "batch and on chance; call model.eval() before evaluating (camlens does not switch it for you)",
            stacklevel=stacklevel,
        )


def _check_batch_size(batch_size: int | None, inputs: torch.Tensor) -> int:
    """The images per forward: ``batch_size``, or by default 2 on CPU and 64 on other devices.

    On CPU a bigger batch does not pay: one thread runs EfficientNet-Lite0 at 224x224 in about the same
    time per image at batch 1 and 2, and 1.3x / 1.9x that at 4 / 16 (its activations leave the caches);
    a 51-point deletion curve cost 51 forwards' worth at batch_size 1-2, 75 at 4, 82 at 16 and 159 at 64
    (benchmarks/bench_metrics.py). GPUs want large batches.
    """
    if batch_size is None:
        return 2 if inputs.device.type == "cpu" else 64
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (or None for the default), got {batch_size!r}")
    return batch_size


def _row_scorer(
    model: nn.Module, inputs: torch.Tensor, targets: MetricTargets, score: str, batch_size: int
) -> RowScorer:
    """The one scorer (:class:`camlens.targets.RowScorer`) for one target per image.

    ``None`` (or ``"top1"``) resolves to each image's top class on the unperturbed input, in forwards of
    ``batch_size`` images; class ids are checked by camlens.targets' one validator.
    """
    _check_score_kind(score)
    batch = inputs.shape[0]
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return RowScorer(targets, score, k=1)
    if targets is None or isinstance(targets, str):
        spec = targets

        def top_ids(output: Any, _: torch.Tensor) -> torch.Tensor:
            ids = resolve_targets(spec, output)[1]
            assert ids is not None  # class ids, not a callable
            return ids

        with preserved(model):
            top = perturbed_scores(
                lambda rows: model(inputs[rows]),
                torch.arange(batch),
                top_ids,
                batch_size,
                desc="targets",
                progress=False,
            )
        return RowScorer(class_ids(top, batch, k=1), score)
    return RowScorer(class_ids(targets, batch, device=inputs.device, k=1), score)


def _scores(
    model: nn.Module,
    owners: torch.Tensor,
    build: Callable[[slice], torch.Tensor],
    scorer: RowScorer,
    batch_size: int,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """(N,) float64 scores of the perturbed images ``build(rows)``, through the one chunked forward.

    A curve of S+1 points for B images costs ceil(B * (S+1) / batch_size) forwards, and only one chunk
    of images exists at a time; the model's state is restored afterwards (:func:`camlens._state.preserved`).
    """
    with preserved(model):
        values = perturbed_scores(
            lambda rows: model(build(rows)), owners, scorer, batch_size, desc=desc, progress=progress
        )
    return values[:, 0].detach().double().cpu().numpy()


def _trapezoid(scores: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """(B,) trapezoid area of each row of ``scores`` over ``fractions``."""
    return np.asarray(_TRAPEZOID(scores, fractions, axis=1), dtype=np.float64)


# ------------------------------------------------------------------------------------ deletion / insertion


def _causal_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: Any,
    targets: MetricTargets,
    steps: int,
    substrate: Substrate,
    batch_size: int | None,
    score: str,
    progress: bool,
    insertion: bool,
) -> Curve:
    name = "insertion" if insertion else "deletion"
    inputs = _check_inputs(inputs)
    maps = _as_maps(saliency, inputs)
    batch_size = _check_batch_size(batch_size, inputs)
    pixels = maps.shape[1] * maps.shape[2]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= pixels:
        raise ValueError(f"steps must be an int between 1 and the number of pixels ({pixels}), got {steps!r}")
    _warn_if_training(model, f"{name}_curve")
    scorer = _row_scorer(model, inputs, targets, score, batch_size)
    base = baseline(inputs, substrate, name="substrate")
    ranks = _ranks(maps)
    # Step k perturbs the first floor(k * N / S) pixels of the order: equal steps of whole pixels.
    counts = torch.tensor([k * pixels // steps for k in range(steps + 1)], device=inputs.device)
    points = steps + 1
    batch = inputs.shape[0]
    owners = torch.arange(batch).repeat_interleave(points)
    stations = torch.arange(points).repeat(batch)
    source, target = (base, inputs) if insertion else (inputs, base)
    flat_from, flat_to = source.flatten(2), target.flatten(2)

    def build(part: slice) -> torch.Tensor:
        own = owners[part].to(inputs.device)
        top = ranks[own] < counts[stations[part].to(inputs.device)][:, None]  # (n, N), shared by all channels
        mixed = torch.where(top[:, None, :], flat_to[own], flat_from[own])
        return mixed.view(-1, *inputs.shape[1:])

    scores = _scores(model, owners, build, scorer, batch_size, progress, name).reshape(batch, points)
    fractions = counts.cpu().numpy().astype(np.float64) / pixels
    return Curve(fractions=fractions, scores=scores, auc=_trapezoid(scores, fractions))


def deletion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: Any,
    targets: MetricTargets = None,
    steps: int = 50,
    substrate: Substrate = "zeros",
    batch_size: int | None = None,
    score: str = "probability",
    progress: bool = False,
) -> Curve:
    """Deletion curve and its AUC (Petsiuk et al., RISE, BMVC 2018, sec. 4.1; lower is better).

    The deletion metric follows the probability of the class as more and more of the pixels the map
    calls important are removed: a sharp drop (a low area) means the map found the cause. Pixels are
    taken in decreasing saliency (ties: raster order); at step k = 0..S the first ``floor(k N / S)`` of
    the N pixels are replaced by the substrate in every channel, and the target's score is recorded.
    AUC = trapezoid area under score against the fraction of pixels removed.

    Substrate (:func:`camlens._perturb.baseline`, the one definition IG, LIME and occlusion use too):
    ``"zeros"`` (default, RISE's deletion substrate: ``torch.zeros_like`` of the normalised input, i.e. the
    mean colour for ImageNet-normalised inputs), ``"blur"`` (:func:`blur_substrate`), ``"mean"`` (each
    image's per-channel mean), a number, a tensor broadcastable to the inputs, or a callable
    ``inputs -> tensor``.

    Where peers differ: RISE removes a fixed 224 pixels per step (``steps=224`` at 224x224 reproduces it)
    and integrates over evenly spaced points, which equals this trapezoid when S divides N; torchcam's
    ``DeletionInsertionMetric`` uses ``ceil(N / S)`` pixels per step (a shorter last step), so it equals
    this curve whenever S divides N. RISE breaks ties by numpy's unstable argsort, torchcam by raster order.

    Args:
        model: classifier (not modified; keep it in eval mode).
        inputs: (B, C, H, W) model inputs.
        saliency: (B, H, W) or (B, 1, H, W) maps at the input resolution.
        targets: (B,) class ids, ``None`` (top-1 class of each unperturbed image) or a callable ``output -> (n,)``.
        steps: number of equal steps S; the curve has S+1 points.
        substrate: what removed pixels become (see above).
        batch_size: perturbed images per forward (they may come from different images); ``None``: 2 on CPU,
            where larger batches cost more per image (measured on EfficientNet-Lite0), 64 on other devices.
        score: ``"probability"`` (softmax, RISE's choice) or ``"logit"``, for class ids.
        progress: show a tqdm progress bar.

    Returns:
        :class:`Curve` with fractions (S+1,), scores (B, S+1), auc (B,).

    Examples:
        >>> exp = camlens.explain(model, x, "gradcam")
        >>> curve = deletion_curve(model, x, exp.maps[:, 0], exp.targets[:, 0])
        >>> curve.auc.mean()
    """
    return _causal_curve(model, inputs, saliency, targets, steps, substrate, batch_size, score, progress, False)


def insertion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: Any,
    targets: MetricTargets = None,
    steps: int = 50,
    substrate: Substrate = "blur",
    batch_size: int | None = None,
    score: str = "probability",
    progress: bool = False,
) -> Curve:
    """Insertion curve and its AUC (Petsiuk et al., RISE, BMVC 2018, sec. 4.1; higher is better).

    "The insertion metric ... captures the importance of the pixels in terms of their ability to
    synthesize an image and is measured by the rise in the probability of the class of interest as pixels
    are added according to the generated importance map." Starting from the substrate, at step
    k = 0..S the first ``floor(k N / S)`` pixels in decreasing saliency (ties: raster order) are copied
    from the image in every channel, and the target's score is recorded; AUC = trapezoid area under score
    against the fraction of pixels inserted.

    Substrate: ``"blur"`` (default, RISE's insertion substrate, :func:`blur_substrate`: Gaussian
    kernel 11x11, sigma 5), ``"zeros"``, ``"mean"``, a number, a tensor or a callable, as in :func:`deletion_curve`.
    torchcam's ``DeletionInsertionMetric`` starts insertion from the same baseline as deletion (zeros by
    default); pass ``substrate="zeros"`` to compare with it.

    Args and returns: as :func:`deletion_curve`.

    Examples:
        >>> curve = insertion_curve(model, x, exp.maps[:, 0], exp.targets[:, 0], steps=56)
    """
    return _causal_curve(model, inputs, saliency, targets, steps, substrate, batch_size, score, progress, True)


# ------------------------------------------------------------------------------------ Average Drop / IC


def average_drop_increase(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: Any,
    targets: MetricTargets = None,
    score: str = "probability",
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Average Drop (%) and Increase in Confidence (0/1) (Chattopadhay et al., Grad-CAM++, sec. 5.1).

    The explanation map E = L * I keeps each pixel of the image in proportion to the map (the same
    factor in every channel). With Y the target's score on the image and O on E (softmax probabilities,
    as in the paper):

        Average Drop % = 100 / N * sum_i max(0, Y_i - O_i) / Y_i
        % Increase in Confidence = 100 / N * sum_i 1[Y_i < O_i]

    This returns the per-image terms, ``100 * max(0, Y - O) / Y`` and ``1[Y < O]``;
    :func:`aggregate_drop_increase` averages them. An image whose Y is not positive (possible only with
    ``score="logit"``) gets a NaN drop and a warning.

    Where peers differ: torchcam's ``ClassificationMetric`` is the same quantity as a fraction (divides by
    ``Y + 1e-7``). pytorch-grad-cam's ``DropInConfidence`` returns ``max(0, Y - O)`` *without* dividing by
    Y (not the paper's Average Drop); its ``IncreaseInConfidence`` is this IC. All three multiply the
    normalised input tensor, so a pixel with map 0 becomes 0 of the input space, as here.

    Args:
        model: classifier (not modified).
        inputs: (B, C, H, W) model inputs.
        saliency: (B, H, W) or (B, 1, H, W) maps in [0, 1] at the input resolution (``Explanation.maps``).
        targets: (B,) class ids, ``None`` (top-1 class) or a callable ``output -> (n,)``.
        score: ``"probability"`` (paper) or ``"logit"``.
        batch_size: images per forward (the B originals and B explanation maps go through together);
            ``None``: as in :func:`deletion_curve`.

    Returns:
        ``(drop, increase)``: (B,) drop in percent and (B,) increase as 0.0/1.0.

    Examples:
        >>> drop, inc = average_drop_increase(model, x, exp.maps[:, 0], exp.targets[:, 0])
        >>> aggregate_drop_increase(drop, inc)  # {'average_drop': ..., 'increase_in_confidence': ...}
    """
    inputs = _check_inputs(inputs)
    maps = _as_maps(saliency, inputs)
    batch_size = _check_batch_size(batch_size, inputs)
    low, high = float(maps.min()), float(maps.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"Average Drop multiplies the image by the map, so the map must lie in [0, 1]; got values in "
            f"[{low:.4g}, {high:.4g}]. Pass Explanation.maps or camlens.normalize_maps(...)"
        )
    _warn_if_training(model, "average_drop_increase", 3)
    scorer = _row_scorer(model, inputs, targets, score, batch_size)
    batch = inputs.shape[0]
    explained = maps.to(inputs.dtype)[:, None] * inputs
    stacked = torch.cat([inputs, explained])  # the B originals, then the B explanation maps E = L * I
    both = _scores(
        model, torch.arange(batch).repeat(2), lambda part: stacked[part], scorer, batch_size, False, "average drop"
    )
    original, masked = both[:batch], both[batch:]
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = 100.0 * np.maximum(0.0, original - masked) / original
    bad = original <= 0
    if bad.any():
        drop[bad] = np.nan
        warnings.warn(
            "Average Drop divides by the original score, which is not positive for images "
            f"{np.flatnonzero(bad).tolist()}; their drop is NaN. Use score='probability' (the paper's choice)",
            stacklevel=2,
        )
    increase = (original < masked).astype(np.float64)
    return drop, increase


def aggregate_drop_increase(drop: np.ndarray, increase: np.ndarray) -> dict[str, float]:
    """Average Drop % and % Increase in Confidence over a data set (Grad-CAM++, sec. 5.1).

    Args:
        drop: per-image drops in percent from :func:`average_drop_increase` (NaNs are skipped).
        increase: per-image 0/1 increases.

    Returns:
        ``{"average_drop": mean drop %, "increase_in_confidence": 100 * mean increase}``.
    """
    drop, increase = np.asarray(drop, dtype=np.float64), np.asarray(increase, dtype=np.float64)
    if drop.size == 0 or increase.size == 0:
        raise ValueError("aggregate_drop_increase needs at least one image")
    valid = drop[~np.isnan(drop)]
    return {
        "average_drop": float(valid.mean()) if valid.size else math.nan,
        "increase_in_confidence": 100.0 * float(increase.mean()),
    }


# ------------------------------------------------------------------------------------------------- ROAD


def noisy_linear_imputation(
    image: torch.Tensor, removed: torch.Tensor | np.ndarray, noise: float = 0.0, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Fill the removed pixels of one image by ROAD's noisy linear imputation (Rong et al., ICML 2022).

    Every removed pixel must equal the weighted average of its (up to 8) neighbours inside the image,
    with weight 1/6 for the direct neighbours and 1/12 for the diagonal ones; neighbours that are removed
    too are unknowns, so all removed pixels are solved together as one sparse linear system (per channel,
    same matrix): ``sum_j w_ij (x_i - x_j) = 0``. Then Gaussian noise of standard deviation ``noise`` is
    added to the imputed values (ROAD's default 0.01). Kept pixels are returned unchanged.

    The imputation commutes with any per-channel affine normalisation (the weights sum to 1), so imputing
    a normalised input equals normalising the imputed image; only the noise scales (0.01 on [0, 1]
    pixels, as in ROAD's code, is 0.01 / std in ImageNet-normalised units, about 0.044).

    Args:
        image: (C, H, W).
        removed: (H, W) bool, True where the pixel is removed. Not all pixels (nothing to impute from).
        noise: standard deviation of the added Gaussian noise.
        rng: numpy generator for the noise (default: a fresh one).

    Returns:
        (C, H, W) tensor like ``image``.
    """
    mask = removed.detach().cpu().numpy() if isinstance(removed, torch.Tensor) else np.asarray(removed)
    mask = mask.astype(bool)
    channels, height, width = image.shape
    if mask.shape != (height, width):
        raise ValueError(f"removed must have shape ({height}, {width}), got {mask.shape}")
    unknown = np.flatnonzero(mask)
    if unknown.size == 0:
        return image.clone()
    if unknown.size == mask.size:
        raise ValueError("cannot impute an image whose pixels are all removed; remove a fraction below 1")
    values = image.detach().cpu().double().reshape(channels, -1).numpy()
    var = np.full(mask.size, -1, dtype=np.int64)
    var[unknown] = np.arange(unknown.size)
    rows, cols = np.divmod(unknown, width)
    diagonal = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, channels))
    a_rows, a_cols, a_vals = [], [], []
    for dr, dc, weight in _ROAD_NEIGHBOURS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        eq = np.flatnonzero(inside)
        neighbour = r[inside] * width + c[inside]
        diagonal[eq] += weight
        is_unknown = mask.reshape(-1)[neighbour]
        a_rows.append(eq[is_unknown])
        a_cols.append(var[neighbour[is_unknown]])
        a_vals.append(np.full(int(is_unknown.sum()), -weight))
        np.add.at(rhs, eq[~is_unknown], weight * values[:, neighbour[~is_unknown]].T)
    a_rows.append(np.arange(unknown.size))
    a_cols.append(np.arange(unknown.size))
    a_vals.append(diagonal)
    system = coo_matrix(
        (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(unknown.size,) * 2
    ).tocsc()
    solution = np.asarray(spsolve(system, rhs)).reshape(unknown.size, channels)
    if noise > 0:
        solution = solution + noise * (rng or np.random.default_rng()).standard_normal(solution.shape)
    filled = values.copy()
    filled[:, unknown] = solution.T
    return torch.from_numpy(filled).reshape(channels, height, width).to(image)


def road(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: Any,
    targets: MetricTargets = None,
    percentages: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    order: str = "morf",
    noise: float = 0.01,
    batch_size: int | None = None,
    score: str = "probability",
    seed: int | None = 0,
    progress: bool = False,
) -> Curve:
    """ROAD, Remove And Debias (Rong et al., ICML 2022): scores after removing and imputing pixel fractions.

    For each fraction p, the ``floor(p N)`` most relevant (``order="morf"``) or least relevant
    (``"lerf"``) pixels are removed and filled by :func:`noisy_linear_imputation` (noise std ``noise``),
    and the target is scored on the imputed image. MoRF: a faithful map makes the score fall fast (low
    curve); LeRF: it keeps the score high. Rank ties go to the earlier pixel in raster order.

    Where peers differ: ROAD's code (tleemann/road_evaluation) breaks ties by adding 1e-4 Gaussian noise
    to the map, reports accuracy and mean probability over a data set, and imputes the [0, 1] image before
    normalisation (same imputation, different noise scale; see :func:`noisy_linear_imputation`). In
    ROAD's ``ImputedDataset`` a LeRF fraction p removes the ``N - floor(p N)`` least relevant pixels
    (p is the fraction kept). pytorch-grad-cam's ``ROADMostRelevantFirst(percentile=q)`` and
    ``ROADLeastRelevantFirst(percentile=q)`` both remove the pixels at or beyond the q-th percentile, i.e.
    about ``(100 - q)`` % of them, and report the score *difference* to the unperturbed image (here
    ``curve.scores - curve.base[:, None]``); their averagers over q = 10..90 equal ``curve.mean - curve.base``
    over the same set of fractions. Here p is always the fraction removed.

    Args:
        model: classifier (not modified).
        inputs: (B, C, H, W) model inputs.
        saliency: (B, H, W) or (B, 1, H, W) maps at the input resolution.
        targets: (B,) class ids, ``None`` (top-1 class) or a callable ``output -> (n,)``.
        percentages: fractions of pixels removed, each in [0, 1).
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        noise: standard deviation of the imputation noise, in input units (ROAD: 0.01).
        batch_size: imputed images per forward; ``None``: as in :func:`deletion_curve`.
        score: ``"probability"`` or ``"logit"``, for class ids.
        seed: seed of the noise (one stream per image and fraction, so results do not depend on
            ``batch_size``); ``None`` for fresh randomness.
        progress: show a tqdm progress bar (the sparse solves dominate the cost).

    Returns:
        :class:`Curve` with fractions = percentages (P,), scores (B, P), auc (trapezoid over the
        percentages), ``mean`` (B,) and base (B,) = score of the unperturbed image.

    Examples:
        >>> morf = road(model, x, exp.maps[:, 0], exp.targets[:, 0], order="morf")
        >>> lerf = road(model, x, exp.maps[:, 0], exp.targets[:, 0], order="lerf")
        >>> (lerf.mean - morf.mean) / 2  # pytorch-grad-cam's ROADCombined, on scores
    """
    inputs = _check_inputs(inputs)
    maps = _as_maps(saliency, inputs)
    batch_size = _check_batch_size(batch_size, inputs)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    fractions = np.asarray([float(p) for p in percentages], dtype=np.float64)
    if fractions.ndim != 1 or fractions.size == 0 or ((fractions < 0) | (fractions >= 1)).any():
        raise ValueError(f"percentages must be fractions in [0, 1), e.g. (0.1, ..., 0.9), got {list(percentages)}")
    if not noise >= 0:
        raise ValueError(f"noise must be a standard deviation >= 0, got {noise!r}")
    _warn_if_training(model, "road", 3)
    scorer = _row_scorer(model, inputs, targets, score, batch_size)
    batch, pixels = inputs.shape[0], maps.shape[1] * maps.shape[2]
    ranks = _ranks(maps, descending=order == "morf")
    counts = np.floor(fractions * pixels + 1e-9).astype(np.int64)
    points = fractions.size
    # Job j < B*P: image j // P at fraction j % P; the last B jobs are the unperturbed images (the base).
    owners = torch.cat([torch.arange(batch).repeat_interleave(points), torch.arange(batch)])

    def build(part: slice) -> torch.Tensor:
        images = []
        for job in range(part.start, part.stop):
            image = int(owners[job])
            if job >= batch * points:
                images.append(inputs[image])
                continue
            k = job % points
            removed = (ranks[image] < int(counts[k])).view(maps.shape[1:])
            rng = np.random.default_rng(None if seed is None else [seed, image, k])
            images.append(noisy_linear_imputation(inputs[image], removed, noise, rng))
        return torch.stack(images)

    values = _scores(model, owners, build, scorer, batch_size, progress, f"road {order}")
    scores = values[: batch * points].reshape(batch, points)
    auc = _trapezoid(scores, fractions)
    return Curve(fractions=fractions, scores=scores, auc=auc, base=values[batch * points :])


# ------------------------------------------------------------------------------------------ pointing game


def _maxima(saliency: np.ndarray, ties: str) -> np.ndarray:
    """(n, 2) (row, col) of the map's maximum: the first in raster order, or all of them."""
    if ties == "first":
        return np.array([np.unravel_index(int(np.argmax(saliency)), saliency.shape)])
    return np.argwhere(saliency == saliency.max())


def pointing_game(
    saliency: Any,
    gt_boxes: Sequence[Any] | None = None,
    tolerance: float = 15,
    ties: str = "first",
    *,
    masks: Any = None,
) -> np.ndarray:
    """Pointing game hits (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016, sec. 5.1).

    "We extract the maximum point on the top-down attention map. A hit is counted if the maximum point
    lies on one of the annotated instances of the cued object category, otherwise a miss is counted",
    with a 15-pixel tolerance: here a hit when the maximum pixel is within Euclidean distance
    ``tolerance`` (inclusive) of a pixel of any ground-truth box, i.e. inside a box grown by a disk of that
    radius; ``tolerance=0`` asks for the maximum inside a box.

    Where peers differ: TorchRay's ``PointingGame`` (the reference re-implementation of the benchmark)
    uses the same disk but a strict ``distance < tolerance``, so points exactly 15 px away (e.g. 15
    straight left, or 9 and 12) miss there and hit here, and its tolerance 0 can never hit. Fong's
    original pointing-game script grows VOC boxes by ``tolerance`` on every side (a square, distance in
    the max norm), which also counts the corners of that square.

    Regions instead of boxes (``masks``): the cued object's pixels, e.g. a shape recovered from the image;
    a hit when the maximum pixel is within ``tolerance`` of a pixel of the mask (``tolerance=0``: on it).

    Several maxima (``ties``): ``"first"`` (default) takes the first in raster order, like ``argmax`` in
    the reference code; ``"all"`` counts a hit only if every maximum hits (a constant map then misses
    unless the boxes cover everything); ``"any"`` if one does.

    Args:
        saliency: (B, H, W) or (B, 1, H, W) tensor/array, or a list of B (H_i, W_i) maps (images of
            different sizes), in the coordinates of the boxes.
        gt_boxes: B arrays of shape (n_i, 4), boxes [x0, y0, x1, y1) in map pixels, end-exclusive (the
            camlens convention), n_i >= 1. Pixel (row r, col c) is in a box when x0 <= c + 0.5 < x1 and
            y0 <= r + 0.5 < y1.
        tolerance: pixels, >= 0.
        ties: ``"first"``, ``"all"`` or ``"any"``.
        masks: instead of ``gt_boxes``, B (H, W) boolean masks (a list or a (B, H, W) tensor/array) of the
            maps' size, each with a pixel set.

    Returns:
        (B,) bool, True for a hit. Per-class accuracy and its mean: :func:`pointing_accuracy`.

    Examples:
        >>> hits = pointing_game(exp.maps[:, 0], [np.array([[40, 30, 120, 200]])])
    """
    if ties not in ("first", "all", "any"):
        raise ValueError(f"ties must be 'first', 'all' or 'any', got {ties!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    if isinstance(saliency, torch.Tensor):
        saliency = saliency.detach().cpu().numpy()
    maps = list(saliency) if isinstance(saliency, (list, tuple)) else list(np.asarray(saliency))
    if (gt_boxes is None) == (masks is None):
        raise ValueError("pointing_game needs either gt_boxes or masks (one of them)")
    regions: Any = gt_boxes if masks is None else masks
    kind = "box lists" if masks is None else "masks"
    if len(maps) != len(regions):
        raise ValueError(f"pointing_game got {len(maps)} maps but {len(regions)} {kind}; give one per map")
    hits = np.zeros(len(maps), dtype=bool)
    for i, (raw, region) in enumerate(zip(maps, regions)):
        m = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.ndim != 2 or m.size == 0:
            raise ValueError(f"map {i} must be (H, W), got shape {m.shape}")
        if not np.isfinite(m).all():
            raise ValueError(f"map {i} contains NaN or infinite values")
        if masks is not None:
            hits[i] = _mask_hit(m, region, i, tolerance, ties)
            continue
        raw_boxes = region
        boxes = np.asarray(raw_boxes.detach().cpu() if isinstance(raw_boxes, torch.Tensor) else raw_boxes, dtype=float)
        boxes = boxes.reshape(-1, 4) if boxes.size else boxes.reshape(0, 4)
        if boxes.shape[0] == 0:
            raise ValueError(
                f"sample {i} has no ground-truth box; the pointing game skips image/class pairs without "
                "annotation, so leave it out"
            )
        if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
            raise ValueError(f"sample {i} has an empty box (need x1 > x0 and y1 > y0, end-exclusive): {boxes.tolist()}")
        # Pixel index ranges covered by each box: the pixels whose centres lie inside it.
        c0, c1 = np.ceil(boxes[:, 0] - 0.5), np.ceil(boxes[:, 2] - 0.5) - 1
        r0, r1 = np.ceil(boxes[:, 1] - 0.5), np.ceil(boxes[:, 3] - 0.5) - 1
        inside_hits = []
        for r, c in _maxima(m, ties):
            dx = np.maximum(np.maximum(c0 - c, c - c1), 0)
            dy = np.maximum(np.maximum(r0 - r, r - r1), 0)
            valid = (c1 >= c0) & (r1 >= r0)
            inside_hits.append(bool((valid & (np.hypot(dx, dy) <= tolerance)).any()))
        hits[i] = all(inside_hits) if ties == "all" else any(inside_hits)
    return hits


def _mask_hit(m: np.ndarray, region: Any, i: int, tolerance: float, ties: str) -> bool:
    """One pointing-game trial against a mask: each maximum within ``tolerance`` of a mask pixel."""
    mask = np.asarray(region.detach().cpu() if isinstance(region, torch.Tensor) else region).astype(bool)
    if mask.shape != m.shape:
        raise ValueError(f"mask {i} has shape {mask.shape} but its map {m.shape}; give masks of the maps' size")
    pixels = np.argwhere(mask)
    if not len(pixels):
        raise ValueError(f"mask {i} is empty; the pointing game skips pairs without annotation, so leave it out")
    hit = [bool(np.hypot(*(pixels - point).T).min() <= tolerance) for point in _maxima(m, ties)]
    return all(hit) if ties == "all" else any(hit)


def pointing_accuracy(hits: Any, classes: Any = None) -> float:
    """Pointing-game accuracy (Zhang et al. 2016, sec. 5.1): hits / (hits + misses) per category, then the mean.

    Args:
        hits: (n,) bools from :func:`pointing_game` (one per image/class pair).
        classes: (n,) category of each pair; ``None`` for the plain fraction of hits.

    Returns:
        The mean over categories of each category's accuracy (a fraction in [0, 1]).
    """
    hits = np.asarray(hits, dtype=bool).reshape(-1)
    if hits.size == 0:
        raise ValueError("pointing_accuracy needs at least one hit or miss")
    if classes is None:
        return float(hits.mean())
    classes = np.asarray(classes).reshape(-1)
    if classes.shape != hits.shape:
        raise ValueError(f"classes has {classes.size} entries for {hits.size} hits; give one category per pair")
    return float(np.mean([hits[classes == c].mean() for c in np.unique(classes)]))
