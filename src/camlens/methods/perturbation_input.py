"""Methods that perturb the input and fit or average the scores: LIME, occlusion, RISE.

* LIME (Ribeiro et al., KDD 2016, eq. 1-2 and sec. 3.3-3.4): superpixels z' in {0, 1}^d switched off to a
  baseline, pi_x(z) = exp(-D(x, z)^2 / sigma^2) with D the cosine distance of z' to the all-ones vector,
  a weighted ridge fit g(z') = w . z' + b; the map paints w_j on segment j.
* Occlusion (Zeiler & Fergus, ECCV 2014, sec. 4.2): a window of the baseline slides over the input; each
  pixel gets the mean, over the windows covering it, of f(x) - f(x with the window occluded).
* RISE (Petsiuk et al., BMVC 2018, eq. 6 and sec. 3.2): S = sum_i f(I * M_i) M_i / (N p) over N random
  masks, each an s x s binary grid (cells on with probability p) upsampled bilinearly and randomly shifted.

Each explains the input, like the gradient methods of :mod:`camlens.methods.guided`: ``pixels`` (B, K, C, H, W)
holds the map broadcast over the colour channels (each method perturbs all channels of a pixel together), and
``raw`` is that map, *signed* (B, K, H, W) at the input's resolution: a LIME weight or an occlusion difference
below 0 is evidence against the target, so it must not become positive as it would in the gradient
methods' view max_c |pixels|. ``maps`` = min-max(ReLU(raw)) as for every method.

All perturbed copies of all samples run through :func:`camlens._perturb.perturbed_scores` (batched forwards
under ``torch.inference_mode()``, channels-last, 8 rows per forward by default: on a CPU the time per image
grows past a few rows (docs/benchmarks.md); a progress bar for 256 rows or more; ``precision="bfloat16"``
runs them under autocast, 2-3x faster on a CPU with AMX (docs/benchmarks.md)) and are scored by
:class:`camlens.targets.RowScorer` (softmax probabilities by default, as LIME and RISE score; ``score="logit"``
for logits). Random draws come from a ``torch.Generator`` seeded with ``seed`` for every sample, so a sample's
map does not depend on the batch it is in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Union

import numpy as np
import torch
from torch import nn

from camlens import _perturb
from camlens._perturb import Baseline, check_baseline, check_precision, fast_layout, perturbed_scores
from camlens.methods.base import Attribution, CAMMethod
from camlens.registry import register
from camlens.targets import RowScorer, Targets, _check_score_kind, resolve_targets

__all__ = ["LIME", "RISE", "Occlusion"]

Segmentation = Union[str, Callable[[np.ndarray], Any], torch.Tensor]

# LIME's image default (lime_image.LimeImageExplainer.explain_instance) and a SLIC setting of similar grain
_SEGMENTATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 50, "compactness": 10.0, "start_label": 0},
}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _pair(name: str, value: Any) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}")
    return _positive_int(name, pair[0]), _positive_int(name, pair[1])


class _InputPerturbation(CAMMethod):
    """The family's plumbing: the unperturbed forward, the scorer, the chunked forward, the signed ``raw``."""

    takes_layer: ClassVar[bool] = False
    explains_pixels: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: None = None,
        *,
        score: str = "probability",
        batch_size: int = 8,
        progress: bool | None = None,
        precision: str = "float32",
    ) -> None:
        super().__init__(model, layer)
        self.score = _check_score_kind(score)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.progress = progress
        self.precision = check_precision(precision)

    def pixels(self, x: torch.Tensor, targets: Targets) -> Attribution:
        with torch.inference_mode():
            output = self.model(x)
            scores, ids = resolve_targets(targets, output, batch=x.shape[0])
        if ids is not None:
            scorer = RowScorer(ids, self.score)
        else:
            assert callable(targets)  # resolve_targets gives no ids only for a callable
            scorer = RowScorer(targets, self.score, k=int(scores.shape[1]))
        maps = self.maps(x, output, scorer)  # (B, K, H, W)
        pixels = maps.to(x.dtype)[:, :, None].expand(-1, -1, x.shape[1], -1, -1).clone()
        # the signed map (equal in every channel) is the view, not max_c |pixels|
        return Attribution(pixels, scores, ids, output, raw=maps.to(x.dtype))

    def maps(self, x: torch.Tensor, output: Any, scorer: RowScorer) -> torch.Tensor:
        """The signed per-pixel maps (B, K, H, W) of the batch ``x`` whose unperturbed output is ``output``."""
        raise NotImplementedError

    def _scores(self, build: Callable[[slice], torch.Tensor], owners: torch.Tensor, scorer: RowScorer) -> torch.Tensor:
        """Scores (N, K) of the N perturbed rows ``build(rows)``, row i a copy of sample ``owners[i]``."""

        def forward(rows: slice) -> Any:
            return self.model(fast_layout(build(rows)))

        return perturbed_scores(
            forward,
            owners,
            scorer,
            self.batch_size,
            desc=self.name,
            progress=self.progress,
            precision=self.precision,
        )


# ------------------------------------------------------------------------------------------------ occlusion


@register("occlusion")
class Occlusion(_InputPerturbation):
    """Occlusion (Zeiler & Fergus, ECCV 2014): the score drop when a window of the input is occluded.

    Windows of ``window`` = (h, w) pixels (all channels) start at 0, stride, 2 stride, ... until the
    input is covered; the last window of a row or column may be cut off at the border. Each is replaced
    by ``baseline`` in one forward; pixel u gets

        map(u) = mean over the windows W containing u of [f(x) - f(x with W occluded)],

    which is exactly captum's ``Occlusion(sliding_window_shapes=(C, h, w), strides=(C, sh, sw))`` (captum
    averages overlapping windows). The paper does not average: its Fig. 7 plots the correct class's
    probability as a function of the grey square's position (one value per window, low where the
    object is), and gives neither the square's size nor its step. Here f is the softmax probability by
    default (``score="logit"``: the logit), and a positive map marks evidence *for* the target.

    Args:
        window: (h, w) or one int; clipped to the input's size (default 64: a square of about a quarter
            of a 224 x 224 input's side).
        stride: (sh, sw) or one int, at most the window (otherwise pixels would be left out); default 32.
        baseline: what occluded pixels become, any kind of :func:`camlens._perturb.baseline`: a number
            (default 0: the data set's mean colour for ImageNet-normalised inputs, the paper's grey square),
            a tensor broadcastable to the inputs, ``"blur"``, ``"mean"`` (each image's mean colour) or a
            callable ``inputs -> tensor``.
        score: ``"probability"`` or ``"logit"``.
        batch_size: occluded copies per forward.
        progress: tqdm bar; ``None`` shows it for 256 copies or more.
        precision: ``"float32"`` (exact) or ``"bfloat16"`` / ``"float16"``: the perturbed forwards under
            autocast, 2-3x faster on CPUs with AMX (docs/benchmarks.md); maps at r >= 0.995.

    Cost: B * ceil((H - h) / sh + 1) * ceil((W - w) / sw + 1) forwards (49 at 224 x 224 with the defaults).

    Examples:
        >>> exp = camlens.explain(model, x, method="occlusion", window=32, stride=16)
        >>> exp.raw.shape  # (B, K, H, W): f(x) - f(occluded), averaged over the windows covering each pixel
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: None = None,
        *,
        window: int | tuple[int, int] = 64,
        stride: int | tuple[int, int] = 32,
        baseline: Baseline = 0.0,
        score: str = "probability",
        batch_size: int = 8,
        progress: bool | None = None,
        precision: str = "float32",
    ) -> None:
        super().__init__(model, layer, score=score, batch_size=batch_size, progress=progress, precision=precision)
        self.window, self.stride = _pair("window", window), _pair("stride", stride)
        check_baseline(baseline)
        self.baseline = baseline

    def maps(self, x: torch.Tensor, output: Any, scorer: RowScorer) -> torch.Tensor:
        b, _, height, width = x.shape
        spans = [_windows(n, min(w, n), s) for n, w, s in zip((height, width), self.window, self.stride)]
        rows_in, cols_in = (torch.as_tensor(s, device=x.device) for s in spans)  # (P, 2) start, stop
        base = _perturb.baseline(x, self.baseline)
        py, px = len(rows_in), len(cols_in)
        owners = torch.arange(b, device=x.device).repeat_interleave(py * px)
        ys, xs = torch.arange(height, device=x.device), torch.arange(width, device=x.device)

        def occluded(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=x.device)
            own, pos = index // (py * px), index % (py * px)
            r, c = rows_in[pos // px], cols_in[pos % px]
            inside = ((ys >= r[:, :1]) & (ys < r[:, 1:]))[:, :, None] & ((xs >= c[:, :1]) & (xs < c[:, 1:]))[:, None]
            return torch.where(inside[:, None], base[own], x[own])

        drops = scorer(output, torch.arange(b, device=x.device))[:, None] - self._scores(occluded, owners, scorer).view(
            b, py * px, -1
        )  # (B, P, K)
        in_row = (ys >= rows_in[:, :1]) & (ys < rows_in[:, 1:])  # (py, H)
        in_col = (xs >= cols_in[:, :1]) & (xs < cols_in[:, 1:])  # (px, W)
        drops = drops.view(b, py, px, -1)
        total = torch.einsum("bijk,ih,jw->bkhw", drops, in_row.to(drops.dtype), in_col.to(drops.dtype))
        count = in_row.sum(0).to(drops.dtype)[:, None] * in_col.sum(0).to(drops.dtype)[None, :]
        return total / count


def _windows(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) of the windows along one axis, captum's way: ceil((size - window) / stride) + 1 starts."""
    if stride > window and window < size:
        raise ValueError(
            f"stride {stride} is larger than the window {window}: pixels between windows would never be occluded"
        )
    count = math.ceil((size - window) / stride) + 1
    return [(i * stride, min(i * stride + window, size)) for i in range(count)]


# ------------------------------------------------------------------------------------------------ RISE


@register("rise")
class RISE(_InputPerturbation):
    """RISE (Petsiuk et al., BMVC 2018): saliency = sum_i f(I * M_i) M_i / (N p) (their eq. 6).

    Masks as in sec. 3.2 and the authors' ``explanations.py``: N binary grids of ``cells`` x ``cells``,
    each cell 1 with probability ``p``; upsampled bilinearly to (s + 1) * (cell_h, cell_w), with
    cell = ceil(H / s) (the code's ceil; the paper writes floor, the same when s divides H), the grid
    mirrored beyond its border as the code's ``skimage.transform.resize(mode="reflect")`` does; cropped to
    H x W at a shift drawn uniformly from [0, cell_h) x [0, cell_w). The same N masks serve every sample;
    their low-resolution grids and shifts are drawn at once from ``seed`` (N * (s^2 + 2) numbers), the
    full-resolution masks are built ``batch_size`` at a time, for the forwards and again for the sum, so
    memory never holds more than one chunk of them. f is the softmax probability (the paper's
    ``nn.Softmax`` after the model) by default.

    Args:
        n_masks: N (paper: 4000 for ResNet-50, 8000 for VGG-16).
        cells: s (paper: 7).
        p: probability of a cell being kept (paper: 0.5).
        seed: seed of the masks.
        score: ``"probability"`` or ``"logit"``.
        batch_size: masked copies per forward.
        progress: tqdm bar; ``None`` shows it for 256 copies or more.
        precision: ``"float32"`` (exact) or ``"bfloat16"`` / ``"float16"``: the perturbed forwards under
            autocast, 2-3x faster on CPUs with AMX (docs/benchmarks.md); maps at r >= 0.995.

    Cost: B * N forwards (4000 per image with the paper's defaults).

    Examples:
        >>> exp = camlens.explain(model, x, method="rise", n_masks=64, seed=1)
        >>> exp.raw.shape  # (B, K, H, W); the paper uses N = 4000 to 8000 masks
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: None = None,
        *,
        n_masks: int = 4000,
        cells: int = 7,
        p: float = 0.5,
        seed: int = 0,
        score: str = "probability",
        batch_size: int = 8,
        progress: bool | None = None,
        precision: str = "float32",
    ) -> None:
        super().__init__(model, layer, score=score, batch_size=batch_size, progress=progress, precision=precision)
        self.n_masks, self.cells = _positive_int("n_masks", n_masks), _positive_int("cells", cells)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"p must be a probability in (0, 1], got {p!r}")
        self.p, self.seed = float(p), int(seed)

    def draw(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The N grids (N, s, s) in {0, 1} (float64) and crop offsets (N, 2) in [0, cell) for an input of ``size``.

        Drawn from a generator seeded with ``seed``: the grids (uniform < p), then the row and column offsets.
        """
        g = torch.Generator().manual_seed(self.seed)
        s, n = self.cells, self.n_masks
        grids = (torch.rand(n, s, s, generator=g, dtype=torch.float64) < self.p).double()
        cell = _cell(size, s)
        shifts = torch.stack([torch.randint(0, c, (n,), generator=g) for c in cell], 1)
        return grids, shifts

    def masks(
        self, size: tuple[int, int], dtype: torch.dtype = torch.float32
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``masks(index)`` -> (n, H, W): the masks ``index`` (a 1-D tensor of indices in [0, N)) for ``size``.

        The grids and offsets are drawn once (:meth:`draw`); each call builds only the masks it is asked for,
        as (rows of the row interpolation) @ grid @ (rows of the column interpolation)^T: the upsampled,
        cropped mask without the (s + 1) cell x (s + 1) cell intermediate.
        """
        grids, shifts = self.draw(size)
        grids = grids.to(dtype)
        cell = _cell(size, self.cells)
        rows, cols = (_linear_resize(self.cells, (self.cells + 1) * c).to(dtype) for c in cell)

        def build(index: torch.Tensor) -> torch.Tensor:
            index = index.cpu()
            along_y = rows[shifts[index, :1] + torch.arange(size[0])]  # (n, H, s): the crop's rows
            along_x = cols[shifts[index, 1:] + torch.arange(size[1])]  # (n, W, s)
            return torch.einsum("nhy,nyx,nwx->nhw", along_y, grids[index], along_x)

        return build

    def maps(self, x: torch.Tensor, output: Any, scorer: RowScorer) -> torch.Tensor:
        b, _, height, width = x.shape
        n = self.n_masks
        masks = self.masks((height, width), x.dtype)

        def masked(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=x.device)
            return x[index // n] * masks(index % n).to(x.device)[:, None]

        owners = torch.arange(b, device=x.device).repeat_interleave(n)
        scores = self._scores(masked, owners, scorer).view(b, n, -1)  # (B, N, K)
        total = scores.new_zeros(b, scores.shape[2], height * width)
        for start in range(0, n, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, n))
            chunk = masks(index).to(device=x.device, dtype=scores.dtype).flatten(1)
            total += torch.einsum("bnk,nq->bkq", scores[:, start : start + len(index)], chunk)
        return (total / (n * self.p)).view(b, -1, height, width)


def _linear_resize(size: int, out: int) -> torch.Tensor:
    """(out, size) weights of scikit-image's ``resize(order=1, mode="reflect", anti_aliasing=False)`` along an axis.

    The authors' RISE masks use it: pixel centres map to c = (o + 0.5) size / out - 0.5, linear between the
    two nearest grid cells, and beyond the border the grid is mirrored (cell -1 is cell 1), where torch's
    bilinear ``interpolate`` would repeat the border cell.
    """
    c = (torch.arange(out, dtype=torch.float64) + 0.5) * size / out - 0.5
    low = c.floor()
    frac = c - low
    weights = torch.zeros(out, size, dtype=torch.float64)
    period = max(2 * (size - 1), 1)
    for index, weight in ((low.long(), 1 - frac), (low.long() + 1, frac)):
        index = index.remainder(period)
        index = torch.where(index >= size, period - index, index)  # mirror: size -> size - 2
        weights.index_put_((torch.arange(out), index), weight, accumulate=True)
    return weights


def _cell(size: tuple[int, int], cells: int) -> tuple[int, int]:
    """RISE's cell (C_H, C_W) = ceil((H, W) / s), as the authors' code computes it."""
    return math.ceil(size[0] / cells), math.ceil(size[1] / cells)


# ------------------------------------------------------------------------------------------------ LIME


@register("lime")
class LIME(_InputPerturbation):
    """LIME for images (Ribeiro et al., KDD 2016) as the ``lime`` package's ``LimeImageExplainer`` does it.

    1. Superpixels of each sample: ``segmentation="quickshift"`` (LIME's default: kernel_size=4,
       max_dist=200, ratio=0.2) or ``"slic"`` (scikit-image; ``segmentation_options`` override the
       defaults), run on the input rescaled to [0, 1] per channel (the model's normalisation is affine per
       channel, so this is the photo up to a contrast stretch); or a callable (H, W, C) float64 array ->
       (H, W) labels; or a (H, W) / (B, H, W) integer tensor of labels (e.g. segments of the photo).
    2. ``n_samples`` binary vectors z' in {0, 1}^d (:meth:`sample_matrix`: fair coins from a generator
       seeded with ``seed``, the first row all ones, the unperturbed input, as LIME does); segment j of
       sample i is kept if z'_ij = 1 and replaced by ``baseline`` otherwise (:func:`camlens._perturb.baseline`
       of the superpixels): ``"mean"`` (each segment's mean colour, LIME's ``hide_color=None``), ``"blur"``
       (RISE's Gaussian blur), ``"zero"``, a number, a tensor or a callable.
    3. Weights pi = sqrt(exp(-D^2 / kernel_width^2)), D = cosine distance of z' to the all-ones vector
       = 1 - sqrt(|z'| / d) (LIME's kernel, width 0.25).
    4. The weighted ridge regression of the K target scores on z' with an intercept, penalty ``alpha``
       (scikit-learn's ``Ridge(alpha=1)``, LIME's default; solved here in float64 in closed form, all K
       targets at once). The map paints segment j with its coefficient w_j.

    LIME's default keeps only the features its own ``feature_selection`` picks for display
    (``num_features``); the coefficients of a fit on all features are what it computes, and what is
    painted here. Requires scikit-image for the built-in segmentations (``pip install camlens[lime]``).

    Args:
        n_samples: perturbed samples per image (LIME: 1000).
        segmentation: ``"quickshift"``, ``"slic"``, a callable or label tensor (see 1.).
        segmentation_options: keyword arguments of the scikit-image function.
        baseline: ``"mean"``, ``"blur"``, ``"zero"``, a number, a tensor or a callable (see 2.).
        kernel_width: LIME's 0.25.
        alpha: ridge penalty (LIME's 1).
        seed: seed of the sample matrix, the same for every sample.
        score: ``"probability"`` (LIME's classifier_fn returns probabilities) or ``"logit"``.
        batch_size: perturbed copies per forward.
        progress: tqdm bar; ``None`` shows it for 256 copies or more.
        precision: ``"float32"`` (exact) or ``"bfloat16"`` / ``"float16"``: the perturbed forwards under
            autocast, 2-3x faster on CPUs with AMX (docs/benchmarks.md); maps at r >= 0.995.

    Examples:
        >>> exp = camlens.explain(model, x, method="lime", n_samples=64, segmentation="slic")
        >>> exp.raw.shape  # (B, K, H, W): each pixel holds its superpixel's coefficient
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: None = None,
        *,
        n_samples: int = 1000,
        segmentation: Segmentation = "quickshift",
        segmentation_options: dict[str, Any] | None = None,
        baseline: Baseline = "mean",
        kernel_width: float = 0.25,
        alpha: float = 1.0,
        seed: int = 0,
        score: str = "probability",
        batch_size: int = 8,
        progress: bool | None = None,
        precision: str = "float32",
    ) -> None:
        super().__init__(model, layer, score=score, batch_size=batch_size, progress=progress, precision=precision)
        self.n_samples = _positive_int("n_samples", n_samples)
        if isinstance(segmentation, str) and segmentation not in _SEGMENTATION_DEFAULTS:
            raise ValueError(
                f"segmentation must be 'quickshift', 'slic', a callable or a tensor of labels, got {segmentation!r}"
            )
        if not isinstance(segmentation, (str, torch.Tensor)) and not callable(segmentation):
            raise TypeError(f"segmentation must be a name, a callable or a tensor, got {type(segmentation).__name__}")
        if isinstance(segmentation, str):
            _require_skimage()
        self.segmentation = segmentation
        self.segmentation_options = dict(segmentation_options or {})
        check_baseline(baseline)
        self.baseline = baseline
        if not kernel_width > 0 or not alpha >= 0:
            raise ValueError(f"kernel_width must be > 0 and alpha >= 0, got {kernel_width!r} and {alpha!r}")
        self.kernel_width, self.alpha, self.seed = float(kernel_width), float(alpha), int(seed)

    def segments(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels 0 .. d_b - 1 of each sample's superpixels."""
        b, _, height, width = x.shape
        if isinstance(self.segmentation, torch.Tensor):
            labels = self.segmentation.to(x.device)
            if labels.dim() == 2:
                labels = labels.expand(b, height, width)
            if labels.shape != (b, height, width) or labels.is_floating_point():
                raise ValueError(
                    f"segmentation labels must be integers of shape ({height}, {width}) or ({b}, {height}, {width}), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            found = [labels[i] for i in range(b)]
        else:
            low = x.detach().double().amin((2, 3), keepdim=True)
            high = x.detach().double().amax((2, 3), keepdim=True)
            images = ((x.detach().double() - low) / (high - low).clamp(min=1e-12)).permute(0, 2, 3, 1).cpu().numpy()
            found = [torch.as_tensor(np.asarray(self._segment(image)), device=x.device) for image in images]
        out = []
        for labels in found:
            if labels.shape != (height, width):
                raise ValueError(
                    f"a segmentation returned labels of shape {tuple(labels.shape)} for a {height}x{width} input"
                )
            out.append(torch.unique(labels, return_inverse=True)[1])  # 0 .. d - 1 in label order, as LIME counts
        return torch.stack(out).long()

    def _segment(self, image: np.ndarray) -> Any:
        if callable(self.segmentation) and not isinstance(self.segmentation, torch.Tensor):
            return self.segmentation(image)
        from skimage import segmentation

        options = {**_SEGMENTATION_DEFAULTS[str(self.segmentation)], **self.segmentation_options}
        if self.segmentation == "quickshift":
            if image.shape[2] != 3:  # quickshift's Lab conversion needs RGB
                options.setdefault("convert2lab", False)
            return segmentation.quickshift(image, **options)
        return segmentation.slic(image, **options)

    def sample_matrix(self, n_segments: int, generator: torch.Generator) -> torch.Tensor:
        """(n_samples, d) in {0, 1}: which segments each perturbed copy keeps; row 0 keeps all (LIME's design).

        Override it to inject a design (the tests give LIME's and captum's the same matrix this way).
        """
        z = torch.randint(0, 2, (self.n_samples, n_segments), generator=generator)
        z[0] = 1
        return z

    def maps(self, x: torch.Tensor, output: Any, scorer: RowScorer) -> torch.Tensor:
        b, n = x.shape[0], self.n_samples
        labels = self.segments(x)  # (B, H, W)
        counts = [int(labels[i].max()) + 1 for i in range(b)]
        d = max(counts)
        hidden = _perturb.baseline(x, self.baseline, segments=labels)  # what switched-off segments become
        designs = x.new_zeros(b, n, d, dtype=torch.bool)
        for i, count in enumerate(counts):
            z = self.sample_matrix(count, torch.Generator().manual_seed(self.seed))
            if tuple(z.shape) != (n, count):
                raise ValueError(f"sample_matrix returned shape {tuple(z.shape)}, expected ({n}, {count})")
            designs[i, :, :count] = z.to(x.device).bool()
        flat_labels = labels.flatten(1)

        def perturbed(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=x.device)
            own = index // n
            keep = designs[own, index % n].gather(1, flat_labels[own]).view(-1, 1, *x.shape[2:])
            return torch.where(keep, x[own], hidden[own])

        owners = torch.arange(b, device=x.device).repeat_interleave(n)
        scores = self._scores(perturbed, owners, scorer).view(b, n, -1).double()  # (B, N, K)
        out = []
        for i, count in enumerate(counts):
            coef = weighted_ridge(
                designs[i, :, :count].double(),
                scores[i],
                _lime_kernel(designs[i, :, :count], self.kernel_width),
                self.alpha,
            )
            out.append(coef.T[:, labels[i]])  # (K, H, W): each pixel its segment's coefficient
        return torch.stack(out)


def _lime_kernel(z: torch.Tensor, width: float) -> torch.Tensor:
    """LIME's image kernel sqrt(exp(-D^2 / width^2)), D the cosine distance of each row of z to all ones."""
    distance = 1 - (z.double().sum(1) / z.shape[1]).sqrt()  # cos(z, 1) = |z| / (sqrt|z| sqrt d); 1 for z = 0
    return torch.exp(-(distance**2) / width**2).sqrt()


def weighted_ridge(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """Coefficients (d, K) of min_{w, b} sum_i pi_i (y_i - b - z_i . w)^2 + alpha |w|^2 (intercept not penalised).

    scikit-learn's ``Ridge(alpha, fit_intercept=True).fit(z, y, sample_weight=weights)``: centre z and y on
    their weighted means, then w = (Zc' P Zc + alpha I)^-1 Zc' P yc.
    """
    p = weights / weights.sum()
    zc = z - p @ z
    yc = y - p @ y
    zw = zc * weights[:, None]
    gram = zc.T @ zw + alpha * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return torch.linalg.solve(gram, zw.T @ yc)


def _require_skimage() -> None:
    try:
        import skimage  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "LIME's 'quickshift' and 'slic' segmentations need scikit-image: pip install 'camlens[lime]' "
            "(or pass segmentation= a callable or a tensor of labels)"
        ) from err
