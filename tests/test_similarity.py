"""Similarity of maps (camlens.metrics.similarity): Spearman and SSIM on values worked out by hand, and
against scipy's ``spearmanr`` and scikit-image's ``structural_similarity``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage, stats

from camlens.metrics import sanity
from camlens.metrics.similarity import spearman, ssim

# ---------------------------------------------------------------------------------------------------
# Spearman


def test_spearman_identical_and_reversed() -> None:
    assert float(spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1]))) == -1.0
    a = torch.tensor([0.3, 1.0, 2.5, 7.0, 9.0])
    assert float(spearman(a, a)) == 1.0
    # reversed order: ranks 1..5 vs 5..1, d_i = 4, 2, 0, -2, -4, 1 - 6 * 40 / (5 * 24) = -1
    assert float(spearman(a, a.flip(0))) == -1.0
    # any increasing transform keeps the ranks
    assert float(spearman(a, a.exp())) == 1.0


def test_spearman_ties_average_ranks() -> None:
    # a = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; b = [10, 20, 30, 40] -> ranks [1, 2, 3, 4]
    # centred: [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 0.5, 1.5]; sums of products 4.5, squares 4.5 and 5
    # rho = 4.5 / sqrt(4.5 * 5) = 0.9486832980505138
    rho = spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0, 40.0]))
    assert float(rho) == pytest.approx(4.5 / (4.5 * 5) ** 0.5, abs=1e-15)
    # a 2x2 map: the last two dims form one map
    rho = spearman(torch.tensor([[1.0, 2.0], [2.0, 3.0]]), torch.tensor([[10.0, 20.0], [30.0, 40.0]]))
    assert float(rho) == pytest.approx(0.9486832980505138, abs=1e-15)


def test_spearman_constant_maps() -> None:
    # documented: two constant maps = 1 (identical ranking), one constant map = 0, non-finite = NaN
    zeros, ramp = torch.zeros(3, 3), torch.arange(9.0).view(3, 3)
    assert float(spearman(zeros, torch.full((3, 3), 5.0))) == 1.0
    assert float(spearman(zeros, ramp)) == 0.0
    assert float(spearman(ramp, zeros)) == 0.0
    bad = ramp.clone()
    bad[0, 0] = float("nan")
    assert torch.isnan(spearman(bad, ramp))


def test_spearman_batches_by_hand() -> None:
    # three pairs of vectors (map_dims=1): reversed -> -1, same order -> 1,
    # [1, 2, 3, 4] vs [2, 1, 4, 3]: d = 1, 1, 1, 1, rho = 1 - 6 * 4 / (4 * 15) = 0.6
    a = torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    b = torch.tensor([[4.0, 3, 2, 1], [5, 6, 7, 8], [2, 1, 4, 3]])
    rho = spearman(a, b, map_dims=1)
    assert rho.dtype == torch.float64
    torch.testing.assert_close(rho, torch.tensor([-1.0, 1.0, 0.6], dtype=torch.float64), rtol=0, atol=1e-15)
    # the same pairs as (3, 2, 2) maps (last two dims) and as a (3, 1, 2, 2) batch: the leading shape is kept
    torch.testing.assert_close(spearman(a.view(3, 2, 2), b.view(3, 2, 2)), rho, rtol=0, atol=1e-15)
    torch.testing.assert_close(spearman(a.view(3, 1, 2, 2), b.view(3, 1, 2, 2)), rho.view(3, 1), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="same shape"):
        spearman(a, b[:1])
    with pytest.raises(TypeError, match="tensors"):
        spearman(a.numpy(), b)  # type: ignore[arg-type]


def test_spearman_matches_scipy() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 20, 20, generator=g)
    b = 0.5 * a + torch.rand(4, 20, 20, generator=g)
    a[0, :8] = 0  # many ties, as in ReLU'd maps
    b[1] = torch.round(b[1] * 5) / 5
    b[2] = -a[2]
    got = spearman(a, b)
    for i in range(4):
        expected = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert float(got[i]) == pytest.approx(expected, abs=1e-12)


def test_sanity_reexports_the_measures() -> None:
    assert sanity.spearman is spearman and sanity.ssim is ssim


# ---------------------------------------------------------------------------------------------------
# SSIM


def test_ssim_hand_computed() -> None:
    a = torch.rand(16, 16, generator=torch.Generator().manual_seed(2))
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-12)
    # constant maps: no variance, so SSIM = (2 c_a c_b + C1) / (c_a^2 + c_b^2 + C1), C1 = (0.01 * 1)^2
    c1 = 1e-4
    assert float(ssim(torch.zeros(12, 12), torch.ones(12, 12))) == pytest.approx(c1 / (1 + c1), rel=1e-9)
    half = torch.full((12, 12), 0.5)
    assert float(ssim(half, torch.ones(12, 12))) == pytest.approx((2 * 0.5 + c1) / (0.25 + 1 + c1), rel=1e-9)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="odd"):
        ssim(torch.zeros(12, 12), torch.zeros(12, 12), win_size=10)


def test_ssim_of_a_map_and_its_negative_by_hand() -> None:
    # An 11x11 map has one valid window position: the whole map, weighted by w_ij = g_i g_j with g the
    # 11-tap Gaussian (sigma 1.5) normalised to sum 1. a = 0.5 + 0.5 s, s = +1 left of the middle column,
    # -1 right of it, 0 on it: by symmetry E[s] = 0, so mu_a = mu_b = 0.5 for b = 1 - a (luminance 1);
    # E[s^2] = 1 - g_5 (every column but the middle), so var_a = var_b = v = 0.25 (1 - g_5), cov = -v;
    # SSIM = (2 cov + C2) / (2 v + C2) = (C2 - 2 v) / (C2 + 2 v), C2 = (0.03 * 1)^2.
    g5 = 1 / sum(math.exp(-((k - 5) ** 2) / (2 * 1.5**2)) for k in range(11))
    v, c2 = 0.25 * (1 - g5), 0.03**2
    s = torch.zeros(11, 11)
    s[:, :5], s[:, 6:] = 1.0, -1.0
    a = 0.5 + 0.5 * s
    assert float(ssim(a, 1 - a)) == pytest.approx((c2 - 2 * v) / (c2 + 2 * v), abs=1e-12)


def _structured_maps() -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of (40, 33) maps in [0, 1]: noise, smooth blobs, edges, a checkerboard, upsampled ReLU CAMs."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:40, :33]
    noise = rng.random((40, 33))
    blobs = ndimage.gaussian_filter(rng.standard_normal((40, 33)), 4)
    blobs = (blobs - blobs.min()) / (blobs.max() - blobs.min())
    step = (xx >= 16).astype(np.float64)
    checker = ((yy // 4 + xx // 4) % 2).astype(np.float64)
    cams = [
        F.interpolate(torch.relu(torch.tensor(rng.standard_normal((1, 1, 7, 7)))), (40, 33), mode="bilinear")[0, 0]
        for _ in range(2)
    ]
    cam_a, cam_b = (c.numpy() / c.max().item() for c in cams)
    return [
        (noise, (0.6 * noise + 0.4 * rng.random((40, 33))).clip(0, 1)),
        (noise, ndimage.uniform_filter(noise, 3, mode="nearest")),
        (blobs, blobs**2),
        (step, step[:, ::-1].copy()),
        (checker, 0.8 * checker + 0.1),
        (cam_a, cam_b),
        (cam_a, np.full((40, 33), 0.3)),
    ]


# (sigma, win_size) pairs with win_size = 2 * int(3.5 * sigma + 0.5) + 1, the width skimage filters with
@pytest.mark.parametrize(("sigma", "win_size"), [(1.5, 11), (1.0, 9), (0.5, 5), (2.0, 15)])
def test_ssim_matches_skimage(sigma: float, win_size: int) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    pairs = _structured_maps()
    a = torch.tensor(np.stack([p[0] for p in pairs]))
    b = torch.tensor(np.stack([p[1] for p in pairs]))
    for data_range, k1, k2 in ((1.0, 0.01, 0.03), (255.0, 0.02, 0.05)):
        scale = data_range
        got = ssim(a * scale, b * scale, data_range=data_range, win_size=win_size, sigma=sigma, k1=k1, k2=k2)
        for i, (x, y) in enumerate(pairs):
            expected = metrics.structural_similarity(
                x * scale,
                y * scale,
                gaussian_weights=True,
                sigma=sigma,
                win_size=win_size,
                use_sample_covariance=False,
                data_range=data_range,
                K1=k1,
                K2=k2,
            )
            assert float(got[i]) == pytest.approx(expected, abs=1e-6), (i, data_range)
