"""Input gradients integrated over many inputs: along a path (Integrated Gradients) or over noise (SmoothGrad).

* ``integrated-gradients`` (Sundararajan et al., ICML 2017, eq. 1 and 3):
  IG_i(x) = (x_i - x'_i) * int_0^1 dS(x' + a (x - x'))/dx_i da, the integral by a quadrature rule of
  ``steps`` points a_s with weights w_s: (x - x') * sum_s w_s g(x' + a_s (x - x')). Completeness (their
  Proposition 1): sum_i IG_i = S(x) - S(x'), up to the rule's error.
* ``smoothgrad`` / ``smoothgrad-guided`` (Smilkov et al., 2017, eq. 5): the mean of the saliency (or
  guided backprop) gradient over ``samples`` noisy copies x + N(0, sigma^2), sigma = ``noise`` x
  (max(x) - min(x)) of each image; ``squared=True`` averages the squared gradients (SmoothGrad-Squared,
  Hooker et al. 2019).

Both are one helper, :func:`_weighted_gradients`: rows (step or noise sample s, image b) are built a chunk of
``batch_size`` rows at a time and run through one forward and one backward w.r.t. the rows only (one
backward per target for K > 1 targets), by :func:`camlens.methods.guided.input_gradients`, which also applies
the guided rule; each row's gradient is added, weighted, into its image's sum. Targets are resolved once
on the clean input (``"top3"`` means the clean input's top 3 for every row); a callable target is applied
to each chunk's output and must score rows independently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from camlens import _perturb
from camlens._inputs import sample_rows
from camlens._perturb import Baseline, check_baseline, report_progress
from camlens.methods.base import Attribution, CAMMethod
from camlens.methods.guided import input_gradients
from camlens.registry import register
from camlens.targets import RowScorer, Targets, resolve_targets

__all__ = ["IntegratedGradients", "SmoothGrad", "SmoothGradGuided", "quadrature", "smoothgrad_noise"]

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points a_s in [0, 1] and weights w_s (float64, summing to 1) of an integration rule over [0, 1].

    ``riemann_left`` a_s = s/n, ``riemann_right`` (s+1)/n (the IG paper's eq. 3), ``riemann_middle``
    (s+1/2)/n, all with w_s = 1/n; ``riemann_trapezoid`` a_s = s/(n-1) with w = 1/(n-1), halved at both
    ends; ``gausslegendre`` numpy's Gauss-Legendre nodes and weights mapped to [0, 1] (captum's default).

    captum's trapezoid puts its points at s/(n-1) but weighs them 1/n (halved at the ends), so its weights
    sum to (n-1)/n: its attributions are ours times (n-1)/n, and miss completeness by 1/n of S(x) - S(x').
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    n = steps
    s = torch.arange(n, dtype=torch.float64)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError("the trapezoid rule needs steps >= 2 (both ends of the path)")
        w = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n - 1)
        return s / (n - 1), w
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if rule not in offsets:
        raise ValueError(f"rule={rule!r} is not known; use one of {', '.join(RULES)}")
    return (s + offsets[rule]) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)


def _unit_noise(seed: int, sample: int, shape: tuple[int, ...]) -> torch.Tensor:
    """N(0, 1) noise of SmoothGrad sample ``sample``: float32, CPU, from a generator seeded by (seed, sample).

    Drawn in float32 on the CPU whatever the input, so float64 and GPU calls see the same noise.
    """
    mixed = int(np.random.SeedSequence([seed, sample]).generate_state(1, np.uint64)[0])
    generator = torch.Generator().manual_seed(mixed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def _noise_scale(x: torch.Tensor, noise: float) -> torch.Tensor:
    """(B, 1, 1, 1) standard deviations: ``noise`` x (max - min) of each image over all its channels."""
    flat = x.detach().flatten(1)
    return (noise * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)


def smoothgrad_noise(inputs: torch.Tensor, samples: int, noise: float = 0.15, seed: int = 0) -> torch.Tensor:
    """The noise (B, samples, C, H, W) that :class:`SmoothGrad` adds to ``inputs`` (B, C, H, W).

    Sample s of every image is the same N(0, 1) draw (seeded by ``(seed, s)``) times that image's sigma,
    ``noise`` x (max - min); so an image's noise does not depend on the batch it is in.
    """
    scale = _noise_scale(inputs, noise)
    unit = torch.stack([_unit_noise(seed, s, tuple(inputs.shape[1:])) for s in range(samples)])
    return unit.to(inputs)[None] * scale[:, None]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _weighted_gradients(
    model: nn.Module,
    x: torch.Tensor,
    targets: Targets,
    points: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weights: torch.Tensor,
    *,
    rule: str | None,
    batch_size: int,
    progress: bool | None,
    desc: str,
    square: bool = False,
) -> Attribution:
    """sum_s weights[s] * g(points(s, b)) for every image b: (B, K, C, H, W), with the clean input's scores.

    Row r is (s = r // B, b = r % B); ``points(s, b)`` builds a chunk's rows (n, C, H, W) from their step
    or sample indices and image indices. g is dS/dx of each row's own target (``rule``: None or "guided"),
    squared first if ``square``. Rows run ``batch_size`` at a time; results do not depend on it.
    """
    from tqdm.auto import tqdm  # imported on first use, as _perturb does

    with torch.no_grad():
        output = model(x)
        scores, ids = resolve_targets(targets, output, batch=x.shape[0])
    k = int(scores.shape[1])
    scorer = RowScorer(ids if ids is not None else targets, "logit", k=k)  # type: ignore[arg-type]
    batch = int(x.shape[0])
    total = batch * int(weights.shape[0])
    weights = weights.to(device=x.device, dtype=x.dtype)
    acc = torch.zeros((batch, k, *x.shape[1:]), dtype=x.dtype, device=x.device)
    disable = total < 256 if progress is None else not progress
    with tqdm(total=total, desc=desc, unit="row", disable=disable, leave=False) as bar:
        report_progress(0, total, desc)
        for start in range(0, total, batch_size):
            r = torch.arange(start, min(start + batch_size, total), device=x.device)
            s, b = r // batch, r % batch
            with torch.no_grad():
                rows = points(s, b)

            def row_scores(out: Any, owners: torch.Tensor = b) -> torch.Tensor:
                return scorer(out, owners)

            with sample_rows(b):  # a model's other inputs follow each path point's image
                grads = input_gradients(model, rows, row_scores, rule)[0]
            if square:
                grads = grads * grads
            acc.index_add_(0, b, grads * weights[s].view(-1, 1, 1, 1, 1))
            bar.update(len(r))
            report_progress(start + len(r), total, desc)
    return Attribution(acc, scores.detach(), ids, output)


@register("integrated-gradients")
class IntegratedGradients(CAMMethod):
    """Integrated Gradients (Sundararajan et al. 2017): (x - x') * int_0^1 dS(x' + a (x - x'))/dx da.

    Args:
        model: the classifier.
        steps: quadrature points (50, as captum; the paper: 20 to 300 "within 5%" of completeness).
        rule: ``"gausslegendre"`` (default, as captum), ``"riemann_right"`` (the paper's eq. 3),
            ``"riemann_left"``, ``"riemann_middle"``, ``"riemann_trapezoid"``; see :func:`quadrature`.
        baseline: x', any kind of :func:`camlens._perturb.baseline`: ``"zero"`` (default: all zeros in the
            model's input space, the paper's black image only for unnormalised inputs; the mean colour for
            ImageNet-normalised ones), ``"blur"`` (RISE's 11x11 sigma-5 Gaussian blur of the input),
            ``"mean"`` (each image's mean colour), a number, a tensor broadcasting to the inputs, or a
            callable ``inputs -> tensor``.
        batch_size: path points per forward + backward (rows of all images and steps, chunked).
        progress: tqdm bar; ``None`` shows it for 256 rows (images x steps) or more.

    Examples:
        >>> exp = camlens.explain(model, x, method="integrated-gradients", steps=64, baseline="blur")
        >>> exp.pixels.shape  # (B, K, C, H, W); exp.pixels.sum((2, 3, 4)) ~ S(x) - S(x'), per target
        torch.Size([1, 1, 3, 64, 64])
    """

    needs_gradients: ClassVar[bool] = True
    takes_layer: ClassVar[bool] = False
    explains_pixels: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        steps: int = 50,
        rule: str = "gausslegendre",
        baseline: Baseline = "zero",
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, layer)
        self._alphas, self._weights = quadrature(rule, steps)
        check_baseline(baseline)
        self.steps, self.rule, self.baseline = steps, rule, baseline
        self.batch_size, self.progress = _positive_int(batch_size, "batch_size"), progress

    def pixels(self, x: torch.Tensor, targets: Targets) -> Attribution:
        start = _perturb.baseline(x, self.baseline)
        diff = x.detach() - start
        alphas = self._alphas.to(device=x.device, dtype=x.dtype)

        def points(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return start[b] + alphas[s].view(-1, 1, 1, 1) * diff[b]

        found = _weighted_gradients(
            self.model,
            x,
            targets,
            points,
            self._weights,
            rule=None,
            batch_size=self.batch_size,
            progress=self.progress,
            desc="Integrated Gradients",
        )
        found.pixels = found.pixels * diff[:, None]
        return found


@register("smoothgrad")
class SmoothGrad(CAMMethod):
    """SmoothGrad (Smilkov et al. 2017, eq. 5): the mean of dS/dx over noisy copies x + N(0, sigma^2).

    Args:
        model: the classifier.
        samples: noisy copies per image (50, the paper's value).
        noise: sigma as a fraction of each image's max - min (0.15; the paper finds 10-20% best).
        squared: average the squared gradients (SmoothGrad-Squared, Hooker et al. 2019).
        seed: noise sample s of every image is drawn from a generator seeded by (seed, s); results do
            not depend on the batch an image is in, nor on ``batch_size``.
        batch_size: noisy rows per forward + backward.
        progress: tqdm bar; ``None`` shows it for 256 rows (images x samples) or more.

    ``pixels`` holds the signed mean gradient (the paper's eq. 5; captum's ``NoiseTunnel(Saliency)``
    averages |gradients| unless ``abs=False``); ``raw`` is max over channels of its absolute value.

    Examples:
        >>> exp = camlens.explain(model, x, method="smoothgrad", samples=8, noise=0.15, seed=1)
        >>> exp.pixels.shape  # the mean gradient over 8 noisy copies
        torch.Size([1, 1, 3, 64, 64])
    """

    needs_gradients: ClassVar[bool] = True
    takes_layer: ClassVar[bool] = False
    explains_pixels: ClassVar[bool] = True
    rule: ClassVar[str | None] = None

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        samples: int = 50,
        noise: float = 0.15,
        squared: bool = False,
        seed: int = 0,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, layer)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise ValueError(f"noise must be a fraction >= 0 of the input's range (e.g. 0.15), got {noise!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.samples, self.noise = _positive_int(samples, "samples"), float(noise)
        self.squared, self.seed = bool(squared), seed
        self.batch_size, self.progress = _positive_int(batch_size, "batch_size"), progress

    def pixels(self, x: torch.Tensor, targets: Targets) -> Attribution:
        scale = _noise_scale(x, self.noise)
        cache: dict[int, torch.Tensor] = {}

        def points(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            for i in set(s.tolist()) - set(cache):
                cache[i] = _unit_noise(self.seed, i, tuple(x.shape[1:])).to(x)
            for i in set(cache) - set(s.tolist()):
                del cache[i]  # one chunk's draws alive at a time
            unit = torch.stack([cache[i] for i in s.tolist()])
            return x.detach()[b] + scale[b] * unit

        weights = torch.full((self.samples,), 1.0 / self.samples, dtype=torch.float64)
        return _weighted_gradients(
            self.model,
            x,
            targets,
            points,
            weights,
            rule=self.rule,
            batch_size=self.batch_size,
            progress=self.progress,
            desc="SmoothGrad",
            square=self.squared,
        )


@register("smoothgrad-guided")
class SmoothGradGuided(SmoothGrad):
    """SmoothGrad over guided backprop (Smilkov et al. 2017, sec. 4): the mean guided gradient over noise.

    Examples:
        >>> exp = camlens.SmoothGradGuided(model, samples=8, seed=1)(x, targets=3)
        >>> exp.pixels.shape
        torch.Size([1, 1, 3, 64, 64])
    """

    rule = "guided"
