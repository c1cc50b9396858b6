"""LIME, occlusion and RISE: numbers by hand, the papers' procedures, and the peers (lime, captum).

* occlusion: sums of pixels under each window worked out by hand; equal to captum's ``Occlusion``;
* RISE: the masks equal the authors' procedure (scikit-image's linear resize, then a crop); the estimator
  is sum_i f(I * M_i) M_i / (N p) on a model whose score is a linear function of the pixels, and its
  expectation, enumerated over every grid and shift, is what it converges to; seeds reproduce;
* LIME: the kernel equals scikit-learn's cosine distances through LIME's kernel, the ridge equals
  ``sklearn.linear_model.Ridge``; on the same segments and sample matrix the coefficients equal the
  ``lime`` package's ``LimeImageExplainer`` and captum's ``Lime``.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens.methods.perturbation_input import LIME, RISE, _lime_kernel, weighted_ridge
from tests import nets

pytestmark = pytest.mark.usefixtures("one_thread")


class PixelSum(nn.Module):
    """Output [s, -s], s the sum of the row's pixels (any number of channels): a score linear in the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([s, -s], 1)


class Linear(nn.Module):
    """Output [<w, x> + c, 0]: a score that is a known linear function of the pixels."""

    def __init__(self, w: torch.Tensor, c: float) -> None:
        super().__init__()
        self.w, self.c = w, c
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1) + self.c
        return torch.stack([s, torch.zeros_like(s)], 1)


# ---------------------------------------------------------------------------------------------- occlusion


def test_occlusion_without_overlap_is_the_sum_of_each_window() -> None:
    x = torch.arange(1.0, 17.0, dtype=torch.float64).view(1, 1, 4, 4)
    exp = camlens.explain(PixelSum(), x, "occlusion", targets=0, window=2, stride=2, score="logit")
    # f(x) - f(x with the block zeroed) = the block's sum: 1+2+5+6, 3+4+7+8, 9+10+13+14, 11+12+15+16
    expected = torch.tensor([[14.0, 22.0], [46.0, 54.0]], dtype=torch.float64)
    torch.testing.assert_close(exp.raw[0, 0], expected.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert exp.pixels is not None and exp.pixels.shape == (1, 1, 1, 4, 4)


def test_occlusion_averages_overlapping_windows_and_keeps_the_sign() -> None:
    x = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
    exp = camlens.explain(PixelSum(), x, "occlusion", targets=[[0, 1]], window=2, stride=1, score="logit")
    # the four 2x2 windows sum to 12 (top left), 16, 24, 28; a pixel gets the mean of those covering it
    expected = torch.tensor([[12.0, 14.0, 16.0], [18.0, 20.0, 22.0], [24.0, 26.0, 28.0]], dtype=torch.float64)
    torch.testing.assert_close(exp.raw[0, 0], expected)
    torch.testing.assert_close(exp.raw[0, 1], -expected)  # class 1 is -s: occluding raises it, raw < 0
    assert float(exp.maps[0, 1].max()) == 0.0  # maps are ReLU'd: no evidence for class 1 anywhere


def test_occlusion_window_is_clipped_and_stride_checked() -> None:
    x = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    exp = camlens.explain(PixelSum(), x, "occlusion", targets=0, window=64, stride=32, score="logit")
    torch.testing.assert_close(exp.raw, torch.full((1, 1, 3, 3), 9.0, dtype=torch.float64))  # one window: all
    with pytest.raises(ValueError, match="stride 3 is larger than the window 2"):
        camlens.explain(PixelSum(), torch.ones(1, 1, 5, 5), "occlusion", window=2, stride=3)


@pytest.mark.parametrize(
    ("window", "stride", "baseline"),
    [((3, 3), (2, 2), 0.0), ((4, 2), (3, 1), 0.5), ((5, 5), (5, 5), -1.0)],  # cut-off windows at 8 px
)
def test_occlusion_equals_captum(window: tuple[int, int], stride: tuple[int, int], baseline: float) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = nets.GapNet().double()
    x = nets.inputs(2, 8, dtype=torch.float64)
    targets = [[1, 3], [2, 0]]
    exp = camlens.explain(
        model, x, "occlusion", targets=targets, window=window, stride=stride, baseline=baseline, batch_size=5
    )
    occlusion = captum_attr.Occlusion(lambda t: model(t).softmax(1))
    for k in range(2):
        theirs = occlusion.attribute(
            x,
            sliding_window_shapes=(3, *window),
            strides=(3, *stride),
            baselines=baseline,
            target=[row[k] for row in targets],
            perturbations_per_eval=4,
        )
        # captum sums in float64 and divides by the window counts in float32: one float32 rounding apart
        assert exp.pixels is not None and theirs.dtype == torch.float32
        torch.testing.assert_close(exp.pixels[:, k].float(), theirs, rtol=2.5e-7, atol=1e-12)
        torch.testing.assert_close(exp.raw[:, k].float(), theirs[:, 0], rtol=2.5e-7, atol=1e-12)


# ---------------------------------------------------------------------------------------------- RISE


def test_rise_masks_are_the_authors_procedure() -> None:
    transform = pytest.importorskip("skimage.transform")
    size, s = (13, 10), 3  # cells do not divide the input: the authors' ceil, (s + 1) * cell > size
    rise = RISE(PixelSum(), n_masks=20, cells=s, p=0.4, seed=5)
    grids, shifts = rise.draw(size)
    masks = rise.masks(size, torch.float64)(torch.arange(20))
    cell = (5, 4)  # ceil(13 / 3), ceil(10 / 3)
    assert grids.shape == (20, 3, 3) and set(grids.unique().tolist()) <= {0.0, 1.0}
    assert (shifts >= 0).all() and (shifts[:, 0] < cell[0]).all() and (shifts[:, 1] < cell[1]).all()
    for i in range(20):
        # explanations.py: resize(grid, up_size, order=1, mode='reflect', anti_aliasing=False)[x:x + H, y:y + W]
        up = transform.resize(
            grids[i].numpy(), (4 * cell[0], 4 * cell[1]), order=1, mode="reflect", anti_aliasing=False
        )
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        np.testing.assert_allclose(masks[i].numpy(), up[dy : dy + size[0], dx : dx + size[1]], rtol=0, atol=1e-12)
    # the grids' cells are on with probability p: over many draws the fraction is p
    many = RISE(PixelSum(), n_masks=4000, cells=7, p=0.3, seed=0).draw((224, 224))[0]
    assert abs(float(many.mean()) - 0.3) < 4 * (0.3 * 0.7 / many.numel()) ** 0.5


def test_rise_is_its_estimator_on_a_linear_score() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64)
    w = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)
    model = Linear(w, c=0.7)
    n, p = 50, 0.5
    exp = camlens.explain(model, x, "rise", targets=0, n_masks=n, cells=2, p=p, score="logit", batch_size=7)
    m = RISE(model, n_masks=n, cells=2, p=p).masks((8, 8), torch.float64)(torch.arange(n))  # (N, 8, 8)
    f = (x[0, 0] * m * w[0, 0]).flatten(1).sum(1) + 0.7  # f(I * M_i), by the model's formula
    torch.testing.assert_close(exp.raw[0, 0], (f[:, None, None] * m).sum(0) / (n * p), rtol=1e-12, atol=1e-12)


def test_rise_converges_to_its_expectation() -> None:
    """E[S(u)] = (c E[M_u] + sum_v a_v E[M_u M_v]) / p, a_v = w_v I_v, enumerated over all grids and shifts."""
    transform = pytest.importorskip("skimage.transform")
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64)
    w = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)
    c, p, n = 0.7, 0.5, 20000
    exp = camlens.explain(Linear(w, c), x, "rise", targets=0, n_masks=n, cells=2, p=p, score="logit", batch_size=500)
    # every 2x2 grid (16) and shift (4 x 4: cell = 4) with its probability, the authors' resize
    a = (w * x)[0, 0].numpy()
    expected = np.zeros((8, 8))
    for bits in itertools.product([0.0, 1.0], repeat=4):
        chance = p ** sum(bits) * (1 - p) ** (4 - sum(bits)) / 16
        up = transform.resize(np.array(bits).reshape(2, 2), (12, 12), order=1, mode="reflect", anti_aliasing=False)
        for dy, dx in itertools.product(range(4), repeat=2):
            mask = up[dy : dy + 8, dx : dx + 8]
            expected += chance * (c + (a * mask).sum()) * mask / p
    # its standard error: the per-mask terms' spread / sqrt(N)
    m = RISE(Linear(w, c), n_masks=n, cells=2, p=p).masks((8, 8), torch.float64)(torch.arange(n))
    terms = ((x[0, 0] * w[0, 0] * m).flatten(1).sum(1) + c)[:, None, None] * m / p
    error = (terms.std(0) / n**0.5).numpy()
    got = exp.raw[0, 0].numpy()
    assert np.all(np.abs(got - expected) < 5 * error), float(np.abs(got - expected).max())
    assert np.abs(got - expected).max() > 0  # an estimate, not the expectation itself


def test_rise_seeds() -> None:
    model, x = nets.GapNet(), nets.inputs(1, 8)
    one = camlens.explain(model, x, "rise", n_masks=64, seed=1)
    again = camlens.explain(model, x, "rise", n_masks=64, seed=1)
    other = camlens.explain(model, x, "rise", n_masks=64, seed=2)
    assert torch.equal(one.raw, again.raw)
    assert not torch.allclose(one.raw, other.raw)


# ---------------------------------------------------------------------------------------------- LIME


def test_lime_kernel_is_lime_s_on_sklearn_cosine_distances() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    z = torch.randint(0, 2, (200, 9), generator=torch.Generator().manual_seed(0))
    z[0], z[1] = 1, 0  # the all-ones row (distance 0) and the all-zeros row (distance 1 in scikit-learn)
    d = metrics.pairwise_distances(z.numpy(), np.ones((1, 9)), metric="cosine").ravel()
    theirs = np.sqrt(np.exp(-(d**2) / 0.25**2))  # LimeImageExplainer's kernel, width 0.25
    np.testing.assert_allclose(_lime_kernel(z, 0.25).numpy(), theirs, rtol=1e-12, atol=1e-12)


def test_weighted_ridge_equals_sklearn() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(1)
    z = torch.randint(0, 2, (300, 12), generator=g).double()
    y = torch.randn(300, 3, generator=g, dtype=torch.float64)
    weights = torch.rand(300, generator=g, dtype=torch.float64)
    for alpha in (1.0, 0.01):
        ridge = linear_model.Ridge(alpha=alpha, fit_intercept=True).fit(z.numpy(), y.numpy(), sample_weight=weights)
        ours = weighted_ridge(z, y, weights, alpha)
        np.testing.assert_allclose(ours.T.numpy(), ridge.coef_, rtol=0, atol=1e-10)


def _lime_setup(seed: int = 0, samples: int = 300) -> tuple[nn.Module, torch.Tensor, torch.Tensor, np.ndarray]:
    """A float64 net, one 16x16 input, its SLIC segments (camlens'), and the lime package's sample matrix."""
    model = nets.GapNet().double()
    x = nets.inputs(1, 16, dtype=torch.float64)
    segments = LIME(model, segmentation="slic", segmentation_options={"n_segments": 12}).segments(x)[0]
    d = int(segments.max()) + 1
    # LimeImageExplainer.data_labels: random_state.randint(0, 2, num_samples * n_features), first row ones
    design = np.random.RandomState(seed).randint(0, 2, samples * d).reshape(samples, d)
    design[0, :] = 1
    return model, x, segments, design


class _Injected(LIME):
    """LIME with a given sample matrix (the peers' own draw)."""

    design: np.ndarray

    def sample_matrix(self, n_segments: int, generator: torch.Generator) -> torch.Tensor:
        assert self.design.shape == (self.n_samples, n_segments)
        return torch.as_tensor(self.design)


def _camlens_lime(
    model: nn.Module, x: torch.Tensor, segments: torch.Tensor, design: np.ndarray, targets
) -> torch.Tensor:
    method = _Injected(model, n_samples=len(design), segmentation=segments, batch_size=64)
    method.design = design
    return method(x, targets).raw  # (B, K, H, W): each pixel its segment's coefficient


def test_lime_equals_the_lime_package() -> None:
    lime_image = pytest.importorskip("lime.lime_image")
    model, x, segments, design = _lime_setup()
    ours = _camlens_lime(model, x, segments, design, targets=[[1, 3]])

    def classifier(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images).permute(0, 3, 1, 2)).softmax(1).numpy()

    explainer = lime_image.LimeImageExplainer(random_state=0)  # kernel_width 0.25, Ridge(alpha=1)
    theirs = explainer.explain_instance(
        x[0].permute(1, 2, 0).numpy(),  # hide_color=None: each segment's mean colour
        classifier,
        labels=(1, 3),
        top_labels=None,
        num_samples=len(design),
        segmentation_fn=lambda _: segments.numpy(),
        random_seed=0,
    )
    seg = segments.numpy()
    for k, label in enumerate((1, 3)):
        painted = np.zeros(seg.shape)
        for feature, coef in theirs.local_exp[label]:
            painted[seg == feature] = coef
        assert np.abs(painted).max() > 1e-4  # coefficients that mean something
        np.testing.assert_allclose(ours[0, k].numpy(), painted, rtol=0, atol=1e-14)  # measured: 3e-18


def test_lime_equals_captum() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    linear_model = pytest.importorskip("captum._utils.models.linear_model")
    model, x, segments, design = _lime_setup(seed=2)
    ours = _camlens_lime(model, x, segments, design, targets=[[2]])
    d = design.shape[1]
    # LIME's baseline: each segment's mean colour
    means = torch.stack([x[0][:, segments == j].mean(1) for j in range(d)])  # (d, C)
    baseline = means[segments].permute(2, 0, 1)[None]

    def similarity(_original, _perturbed, interpretable, **_kwargs) -> float:
        return float(_lime_kernel(interpretable.bool(), 0.25)[0])

    def rows(_inputs, **_kwargs):
        yield from (torch.as_tensor(row)[None] for row in design)

    lime = captum_attr.Lime(
        lambda t: model(t).softmax(1),
        interpretable_model=linear_model.SkLearnRidge(alpha=1.0),
        similarity_func=similarity,
        perturb_func=rows,
    )
    theirs = lime.attribute(
        x, target=2, feature_mask=segments[None, None], baselines=baseline, n_samples=len(design)
    )  # captum fits in float32: measured 2.7e-10 apart on coefficients up to 1.2e-4
    assert float(theirs.abs().max()) > 1e-4
    np.testing.assert_allclose(ours[0, 0].numpy(), theirs[0, 0].double().numpy(), rtol=0, atol=1e-8)


def test_lime_segments_baselines_and_seeds() -> None:
    model, x = nets.GapNet(), nets.inputs(2, 16)
    labels = torch.arange(16).div(4, rounding_mode="floor")
    grid = labels[:, None] * 4 + labels[None, :]  # sixteen 4x4 squares
    exp = camlens.explain(model, x, "lime", segmentation=grid, n_samples=200, targets="top2")
    raw = exp.raw
    # each 4x4 square is one value; the map is signed and equal to every channel of pixels
    assert torch.equal(raw, raw[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert (raw < 0).any() and (raw > 0).any()
    assert exp.pixels is not None and torch.equal(exp.pixels[:, :, 1], raw)
    again = camlens.explain(model, x, "lime", segmentation=grid, n_samples=200, targets="top2")
    assert torch.equal(raw, again.raw)
    other = camlens.explain(model, x, "lime", segmentation=grid, n_samples=200, targets="top2", seed=1)
    assert not torch.allclose(raw, other.raw)
    for baseline in ("blur", "zero", 0.5):
        found = camlens.explain(model, x, "lime", segmentation=grid, n_samples=200, baseline=baseline).raw
        assert found.shape == (2, 1, 16, 16) and not torch.allclose(found, raw[:, :1])
    quick = camlens.explain(model, x, "lime", n_samples=50)  # LIME's quickshift on the rescaled input
    assert quick.raw.shape == (2, 1, 16, 16)


def test_lime_asks_for_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(ImportError, match=r"camlens\[lime\]"):
        LIME(nets.GapNet())
    LIME(nets.GapNet(), segmentation=torch.zeros(8, 8, dtype=torch.long))  # own labels: no scikit-image needed
    with pytest.raises(ValueError, match="segmentation must be"):
        LIME(nets.GapNet(), segmentation="felzenszwalb")


# ---------------------------------------------------------------------------------------------- precision


class AutocastProbe(nn.Module):
    """A conv net that records, per forward, whether CPU autocast was on and in which dtype.

    Its weights are scaled so that perturbations move the scores by far more than bfloat16's resolution
    (8 significant bits, ~0.4%): at the default init they move a random net's probabilities by ~1e-3 and
    the bfloat16 LIME map is mostly rounding noise (r = 0.80 measured), the case docs/benchmarks.md warns of.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.mul_(10)
            self.fc.weight.mul_(10)
        self.seen: list[tuple[bool, torch.dtype]] = []
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.fc(self.conv(x).relu().mean((2, 3)))


@pytest.mark.parametrize("method", ["occlusion", "rise", "lime", "scorecam"])
def test_bfloat16_runs_only_the_perturbed_forwards_under_autocast(method: str) -> None:
    options = {
        "occlusion": {"window": 4, "stride": 2},
        "rise": {"n_masks": 16},
        "lime": {"n_samples": 16},
        "scorecam": {},
    }[method]
    if method == "lime":
        options["segmentation"] = torch.arange(4).repeat_interleave(2).repeat(8, 1)  # 4 vertical stripes
    x = torch.rand(2, 3, 8, 8)
    model = AutocastProbe()
    exact = camlens.explain(model, x, method, targets=1, **options)
    assert not any(on for on, _ in model.seen)  # float32, the default, never autocasts
    model.seen.clear()
    fast = camlens.explain(model, x, method, targets=1, precision="bfloat16", **options)
    assert model.seen[0] == (False, model.seen[0][1])  # the unperturbed forward: the model as it is
    perturbed = model.seen[1:]
    assert perturbed and all(on and dtype == torch.bfloat16 for on, dtype in perturbed)
    assert fast.raw.dtype == exact.raw.dtype == torch.float32
    torch.testing.assert_close(fast.scores, exact.scores)  # the reported logits come from the exact forward
    r = np.corrcoef(fast.raw.flatten().numpy(), exact.raw.flatten().numpy())[0, 1]
    assert r > 0.98, r


def test_bfloat16_gives_callable_targets_float32_outputs() -> None:
    seen: list[torch.dtype] = []

    def target(output: torch.Tensor) -> torch.Tensor:
        seen.append(output.dtype)
        return output[:, 0]

    camlens.explain(
        AutocastProbe(), torch.rand(1, 3, 8, 8), "occlusion", targets=target, window=4, stride=2, precision="bfloat16"
    )
    assert len(seen) > 1 and set(seen) == {torch.float32}


def test_precision_is_checked() -> None:
    for method in ("occlusion", "rise", "lime", "scorecam"):
        with pytest.raises(ValueError, match="precision must be one of 'float32', 'bfloat16', 'float16'"):
            camlens.explain(nets.GapNet(), torch.rand(1, 3, 8, 8), method, targets=0, precision="fp8")
