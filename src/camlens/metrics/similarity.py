"""Similarity of two maps: Spearman rank correlation and SSIM, batched over leading dims, in float64.

The similarity measures of Adebayo et al.'s sanity checks (:mod:`camlens.metrics.sanity`), usable on any
pair of map batches:

* :func:`spearman`: Spearman's rank correlation (1904), the Pearson correlation of average ranks
  (``scipy.stats.rankdata(method="average")``, as ``scipy.stats.spearmanr``);
* :func:`ssim`: the mean structural similarity index of Wang, Bovik, Sheikh & Simoncelli (IEEE TIP 2004,
  eq. 13) with their 11 x 11 Gaussian window of standard deviation 1.5 (``scipy.signal.windows.gaussian``).

Examples:
    >>> from camlens.metrics.similarity import spearman, ssim
    >>> spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1]))  # tensor(-1., dtype=torch.float64)
    >>> ssim(exp.maps, other.maps)  # (B, K) float64
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.signal import windows
from scipy.stats import rankdata

__all__ = ["spearman", "ssim"]


def _flatten_maps(a: torch.Tensor, b: torch.Tensor, map_dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """(N, D) rows of the two batches, one row per map of ``map_dims`` trailing dims, and the leading shape."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"maps must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"maps to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 0:
        raise ValueError("maps must have at least one dimension")
    dims = min(map_dims, a.dim())
    lead = a.shape[: a.dim() - dims]
    size = math.prod(a.shape[a.dim() - dims :])
    return a.reshape(-1, size), b.reshape(-1, size), lead


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dim, ties sharing their average rank: ``scipy.stats.rankdata``, float64."""
    ranks = rankdata(x.detach().cpu().numpy(), method="average", axis=-1)
    return torch.from_numpy(ranks).to(x.device)


def spearman(a: torch.Tensor, b: torch.Tensor, map_dims: int = 2) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps: the Pearson correlation of their ranks.

    Ties get their average rank (Spearman 1904; ``scipy.stats.spearmanr`` does the same). Computed
    in float64.

    Args:
        a: maps of shape (..., H, W); the last ``map_dims`` dims form one map (use ``map_dims=1`` for
            batches of vectors; a 1-D input is one vector).
        b: maps of the same shape as ``a``.
        map_dims: how many trailing dims make up one map.

    Returns:
        float64 tensor of the leading shape (...), on the inputs' device: one correlation per map.
        Constant maps, whose correlation is undefined (0/0), are handled so the check stays
        meaningful: two constant maps give 1 (identical rankings: nothing changed), one constant map
        against a varying one gives 0 (no association). A map with NaN or inf gives NaN.

    Examples:
        >>> spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1]))  # tensor(-1.)
    """
    x, y, lead = _flatten_maps(a, b, map_dims)
    x, y = x.to(torch.float64), y.to(torch.float64)
    finite = torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
    x = torch.where(finite[:, None], x, torch.zeros_like(x))
    y = torch.where(finite[:, None], y, torch.zeros_like(y))
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx = rx - rx.mean(1, keepdim=True)
    ry = ry - ry.mean(1, keepdim=True)
    sxx, syy, sxy = (rx * rx).sum(1), (ry * ry).sum(1), (rx * ry).sum(1)
    const_x, const_y = sxx == 0, syy == 0
    rho = sxy / torch.sqrt(torch.where(const_x | const_y, torch.ones_like(sxx), sxx * syy))
    rho = torch.where(
        const_x & const_y, torch.ones_like(rho), torch.where(const_x | const_y, torch.zeros_like(rho), rho)
    )
    rho = rho.clamp(-1.0, 1.0)
    rho = torch.where(finite, rho, torch.full_like(rho, float("nan")))
    return rho.reshape(lead)


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(size,) Gaussian of standard deviation ``sigma`` centred on the middle tap, summing to 1."""
    g = torch.from_numpy(windows.gaussian(size, sigma)).to(dtype=like.dtype, device=like.device)
    return g / g.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004) of each pair of maps.

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    (their eq. 13), with local statistics weighted by a ``win_size`` x ``win_size`` circular-symmetric
    Gaussian window of standard deviation ``sigma`` (11 and 1.5: their sec. III-C), normalised to sum 1,
    population (biased) moments, C1 = (k1 L)^2, C2 = (k2 L)^2, k1 = 0.01, k2 = 0.03, L = ``data_range``;
    the index is the mean of the SSIM map over the positions where the window fits in the image
    ("valid" positions). Computed in float64.

    It equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=sigma,
    win_size=win_size, use_sample_covariance=False, data_range=data_range, K1=k1, K2=k2)`` on each 2-D
    map (tested to 1e-6 on random and structured maps) whenever ``win_size == 2 * int(3.5 * sigma + 0.5)
    + 1``, the filter width skimage derives from ``sigma`` (its ``truncate=3.5``; the defaults 11 and 1.5
    satisfy it): skimage filters the whole image with that Gaussian (reflected borders) and then averages
    the positions at least ``(win_size - 1) // 2`` from the border, exactly the valid positions here. With
    another pair, skimage's filter width and its crop differ, and so would the numbers.

    Args:
        a: maps of shape (..., H, W), scaled to [0, ``data_range``] (camlens' ``.maps`` are in [0, 1]);
            H and W must be at least ``win_size``.
        b: maps of the same shape as ``a``, on the same scale.
        data_range: L, as above.
        win_size: side of the Gaussian window, odd (11).
        sigma: its standard deviation (1.5).
        k1: as above (0.01).
        k2: as above (0.03).

    Returns:
        float64 tensor of the leading shape (...). Identical maps give 1. Two constant maps give
        (2 c_a c_b + C1) / (c_a^2 + c_b^2 + C1): the luminance term only.

    Examples:
        >>> ssim(exp.maps, exp.maps)  # ones of shape (B, K)
    """
    x, y, lead = _flatten_maps(a, b, 2)
    if a.dim() < 2:
        raise ValueError(f"SSIM compares 2-D maps (..., H, W), got shape {tuple(a.shape)}")
    h, w = a.shape[-2:]
    if h < win_size or w < win_size:
        raise ValueError(
            f"SSIM needs maps of at least {win_size}x{win_size} (its Gaussian window), got {tuple(a.shape[-2:])}; "
            "upsample the maps or pass a smaller odd win_size"
        )
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    x = x.to(torch.float64).reshape(-1, 1, h, w)
    y = y.to(torch.float64).reshape(-1, 1, h, w)
    g = _gaussian_window(win_size, sigma, x)
    # the 2-D Gaussian window is separable: one row pass and one column pass, for all five moments at once
    moments = torch.cat([x, y, x * x, y * y, x * y], 1)
    blurred = F.conv2d(
        F.conv2d(moments, g.view(1, 1, 1, -1).expand(5, 1, 1, win_size), groups=5),
        g.view(1, 1, -1, 1).expand(5, 1, win_size, 1),
        groups=5,
    )
    mu_x, mu_y, exx, eyy, exy = blurred.unbind(1)
    var_x = exx - mu_x**2
    var_y = eyy - mu_y**2
    cov = exy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean((1, 2)).reshape(lead)
