"""Paper-literal reference implementations of every camlens method (tier 2 of the tests).

Written independently of camlens: nothing here imports it. Everything is deliberately slow and plain:
one forward pass per sample (and per target for gradients), ``torch.autograd.grad`` on the *full*
model with a forward hook that only stores the layer's output, Python loops over channels and
pixels, a hand-written bilinear interpolation, numpy's SVD. Every function returns the signed map
before the final ReLU, (B, K, h, w), for the class ids ``ids`` (B, K), in the model's dtype.

Equations followed:

* CAM -- Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, eq. 2:
  M_c(x, y) = sum_k w_k^c f_k(x, y), with w^c the row of the linear layer after global pooling
  (the bias is not part of the map).
* Grad-CAM -- Selvaraju et al., ICCV 2017, eq. 1: alpha_k^c = 1/Z sum_i sum_j dy^c/dA_ij^k, and
  eq. 2 without the ReLU: L^c = sum_k alpha_k^c A^k. Counterfactual explanations (sec. 5): the
  gradient of -y^c.
* Grad-CAM++ -- Chattopadhay et al., WACV 2018, eq. 19 with Y^c = exp(S^c) (their eq. 20): the
  exponential cancels and alpha_ij^kc = g^2 / (2 g^2 + sum_ab A_ab^k g^3), g = dS^c/dA_ij^k (0 where
  the denominator is 0, i.e. where g = 0), eq. 10: w_k^c = sum_ij alpha_ij^kc ReLU(g_ij), and the map
  sum_k w_k^c A^k (the positive factor exp(S^c) of eq. 20 is left out).
* XGrad-CAM -- Fu et al., BMVC 2020, eq. 9: alpha_k^c = sum_ij (A_ij^k / sum_ab A_ab^k) dS^c/dA_ij^k
  (0 for a channel whose activation sums to 0).
* HiResCAM -- Draelos & Carin, 2020, eq. 5: sum_k dS^c/dA^k (.) A^k, element-wise.
* LayerCAM -- Jiang et al., IEEE TIP 2021, eq. 5-6: sum_k ReLU(dS^c/dA^k) (.) A^k.
* Score-CAM -- Wang et al., CVPR Workshops 2020, eq. 3-5 (def. 2): H^k = s(Up(A^k)) with s the
  min-max normalisation (a constant map gives an all-zero mask), C(A^k) = f(X (.) H^k) - f(X_b) with
  X_b the all-zero baseline, f the softmax probability (or the logit), L^c = sum_k C(A^k) A^k;
  optionally a softmax over the channels of C (as pytorch-grad-cam does).
* Ablation-CAM -- Desai & Ramaswamy, WACV 2020, eq. 3: w_k^c = (y^c - y_k^c) / y^c, y_k^c the score
  with channel k of the layer set to 0; map sum_k w_k^c A^k.
* Eigen-CAM -- Muhammad & Yeasin, IJCNN 2020, eq. 4-5: O = A viewed as hw points in R^C,
  O = U S V^T, map = O v_1 (first right singular vector, numpy SVD), sign chosen so the map
  correlates positively with the channel sum of A; same map for every target.
* Saliency -- Simonyan et al., ICLR Workshop 2014, sec. 3.1: w = dS^c/dI; the map is
  max_c |w_(i,j,c)| (their displayed reduction).
* Guided backpropagation -- Springenberg et al., ICLR Workshop 2015, fig. 1: at every ReLU,
  R_l = 1[f_l > 0] 1[R_(l+1) > 0] R_(l+1).
* Deconvnet -- Zeiler & Fergus, ECCV 2014 (as written in Springenberg's fig. 1): R_l = 1[R_(l+1) > 0] R_(l+1).
* Guided Grad-CAM -- Selvaraju et al. 2017, sec. 3.1: guided backpropagation (.) bilinearly
  upsampled ReLU(Grad-CAM map).
* Integrated Gradients -- Sundararajan et al., ICML 2017, eq. 1 by a quadrature rule (eq. 3 is the right
  Riemann sum): (x - x') sum_s w_s dS(x' + a_s (x - x'))/dx, one fresh graph per point.
* SmoothGrad -- Smilkov et al. 2017, eq. 5: the mean gradient over given noisy copies (guided or squared).
* Occlusion -- Zeiler & Fergus, ECCV 2014, sec. 4.2, averaged over the windows covering a pixel (captum).
* RISE -- Petsiuk et al., BMVC 2018, eq. 6: sum_i f(I (.) M_i) M_i / (N p), masks from given grids and shifts
  as the authors' code builds them (scikit-image's resize).
* LIME -- Ribeiro et al., KDD 2016, eq. 1-2 and lime_image: given segments and binary samples, the kernel
  weights and the weighted ridge by numpy from the normal equations.
* LRP -- Bach et al., PLOS ONE 2015; Montavon et al. 2019: epsilon, alpha-beta / z-plus, gamma, flat,
  w-square and z-box rules on dense matrices of the tier-2 networks (see the section below).

Random draws (SmoothGrad's noise, RISE's grids, LIME's samples) are arguments: the tests take them from
the method's public functions, so that the reference stays free of camlens.

The ReLU rules are applied by walking the autograd graph of each forward pass and hooking the
backward node of every ReLU (``ReluBackward0``): the hook sees R_(l+1) (``grad_outputs``) and the
ordinary gradient 1[f_l > 0] R_(l+1) (``grad_inputs``) and returns the rule's value instead. This
covers ReLU modules, shared modules and functional / in-place ReLUs alike, with no patching.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

# --------------------------------------------------------------------------- plumbing


def forward_keep(
    model: nn.Module, x: torch.Tensor, module: nn.Module, call: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model(x)``; return (output, the ``call``-th output of ``module``), both in the graph."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        output = model(x)
    finally:
        handle.remove()
    return output, seen[call]


def forward_replace(model: nn.Module, x: torch.Tensor, module: nn.Module, call: int, channel: int) -> torch.Tensor:
    """``model(x)`` with channel ``channel`` of the ``call``-th output of ``module`` set to zero."""
    count = [0]

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor | None:
        index = count[0]
        count[0] += 1
        if index != call:
            return None
        out = out.clone()
        out[:, channel] = 0
        return out

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def top_ids(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """The k best class ids per sample, best first, by sorting Python floats."""
    with torch.no_grad():
        out = model(x)
    rows = []
    for b in range(out.shape[0]):
        values = out[b].tolist()
        rows.append(sorted(range(len(values)), key=lambda c: -values[c])[:k])
    return torch.tensor(rows)


def scores(model: nn.Module, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """S (B, K) = the logits of the class ids, one sample at a time."""
    out = torch.zeros(ids.shape, dtype=x.dtype)
    for b in range(x.shape[0]):
        with torch.no_grad():
            logits = model(x[b : b + 1])[0]
        for k in range(ids.shape[1]):
            out[b, k] = logits[int(ids[b, k])]
    return out


def per_target(
    model: nn.Module, x: torch.Tensor, module: nn.Module, call: int, ids: torch.Tensor, sign: float = 1.0
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """For each sample b and target k: (b, k, A (C, h, w), G = d(sign * S_bk)/dA (C, h, w)).

    A fresh forward pass of the single sample on the whole model for every (b, k).
    """
    for b in range(x.shape[0]):
        for k in range(ids.shape[1]):
            output, act = forward_keep(model, x[b : b + 1], module, call)
            score = sign * output[0, int(ids[b, k])]
            (grad,) = torch.autograd.grad(score, act)
            yield b, k, act[0].detach(), grad[0].detach()


def _empty(x: torch.Tensor, ids: torch.Tensor, act_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(x.shape[0], ids.shape[1], act_shape[-2], act_shape[-1], dtype=x.dtype)


def weighted_sum(weights: list[float], a: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * A_k, channel by channel."""
    out = torch.zeros(a.shape[1:], dtype=a.dtype)
    for ch in range(a.shape[0]):
        out += weights[ch] * a[ch]
    return out


def bilinear(m: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear interpolation of one (h, w) map to ``size``, pixel by pixel (PyTorch's convention)."""
    h, w = m.shape
    big_h, big_w = size

    def source(i: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        if align_corners:
            s = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(math.floor(s), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    out = torch.zeros(big_h, big_w, dtype=m.dtype)
    for i in range(big_h):
        y0, y1, ly = source(i, h, big_h)
        for j in range(big_w):
            x0, x1, lx = source(j, w, big_w)
            out[i, j] = (
                (1 - ly) * (1 - lx) * m[y0, x0]
                + (1 - ly) * lx * m[y0, x1]
                + ly * (1 - lx) * m[y1, x0]
                + ly * lx * m[y1, x1]
            )
    return out


# --------------------------------------------------------------------------- activation-only methods


def cam(model: nn.Module, x: torch.Tensor, module: nn.Module, call: int, fc_weight: torch.Tensor, ids: torch.Tensor):
    """Zhou et al. 2016, eq. 2: M_c = sum_k w_k^c A_k."""
    out = None
    for b in range(x.shape[0]):
        with torch.no_grad():
            _, act = forward_keep(model, x[b : b + 1], module, call)
        a = act[0]
        if out is None:
            out = _empty(x, ids, a.shape)
        for k in range(ids.shape[1]):
            c = int(ids[b, k])
            out[b, k] = weighted_sum([float(fc_weight[c, ch].detach()) for ch in range(a.shape[0])], a)
    return out


def eigencam(model: nn.Module, x: torch.Tensor, module: nn.Module, call: int, ids: torch.Tensor, center: bool = False):
    """Muhammad & Yeasin 2020: O v_1 with numpy's SVD; the same map for every target."""
    out = None
    for b in range(x.shape[0]):
        with torch.no_grad():
            _, act = forward_keep(model, x[b : b + 1], module, call)
        a = act[0].double().numpy()
        c, h, w = a.shape
        if out is None:
            out = _empty(x, ids, a.shape)
        points = a.reshape(c, h * w).T  # (hw, C): one point per position
        if center:
            points = points - points.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(points, full_matrices=False)
        proj = points @ vt[0]
        if float(np.dot(proj, a.sum(axis=0).reshape(-1))) < 0:
            proj = -proj
        for k in range(ids.shape[1]):
            out[b, k] = torch.from_numpy(proj.reshape(h, w)).to(x.dtype)
    return out


# --------------------------------------------------------------------------- gradient methods


def _per_target_maps(model, x, module, call, ids, sign, formula):
    """out[b, k] = formula(A, G) for every sample b and target k (A, G from :func:`per_target`)."""
    out = None
    for b, k, a, g in per_target(model, x, module, call, ids, sign):
        if out is None:
            out = _empty(x, ids, a.shape)
        out[b, k] = formula(a, g)
    return out


def gradcam(model, x, module, call, ids, sign=1.0):
    """Selvaraju et al. 2017, eq. 1-2 (no ReLU): alpha_k = mean_ij G_kij, sum_k alpha_k A_k."""

    def formula(a, g):
        alphas = []
        for ch in range(a.shape[0]):
            total = 0.0
            for i in range(a.shape[1]):
                for j in range(a.shape[2]):
                    total += float(g[ch, i, j])
            alphas.append(total / (a.shape[1] * a.shape[2]))
        return weighted_sum(alphas, a)

    return _per_target_maps(model, x, module, call, ids, sign, formula)


def gradcampp(model, x, module, call, ids, sign=1.0, eps=0.0):
    """Chattopadhay et al. 2018, eq. 19 with the exponential score; ``eps`` > 0 only to show what a
    stabilising constant in the denominator does (pytorch-grad-cam uses 1e-7, others 1e-6)."""

    def formula(a, g):
        weights = []
        for ch in range(a.shape[0]):
            sum_a = float(a[ch].sum())
            w = 0.0
            for i in range(a.shape[1]):
                for j in range(a.shape[2]):
                    gij = float(g[ch, i, j])
                    den = 2 * gij**2 + sum_a * gij**3 + eps
                    alpha = gij**2 / den if den != 0 else 0.0
                    w += alpha * max(gij, 0.0)
            weights.append(w)
        return weighted_sum(weights, a)

    return _per_target_maps(model, x, module, call, ids, sign, formula)


def xgradcam(model, x, module, call, ids, sign=1.0):
    """Fu et al. 2020, eq. 9: alpha_k = sum_ij A_kij G_kij / sum_ab A_kab."""

    def formula(a, g):
        weights = []
        for ch in range(a.shape[0]):
            sum_a = float(a[ch].sum())
            num = 0.0
            for i in range(a.shape[1]):
                for j in range(a.shape[2]):
                    num += float(a[ch, i, j]) * float(g[ch, i, j])
            weights.append(num / sum_a if sum_a != 0 else 0.0)
        return weighted_sum(weights, a)

    return _per_target_maps(model, x, module, call, ids, sign, formula)


def hirescam(model, x, module, call, ids, sign=1.0):
    """Draelos & Carin 2020: sum_k G_k (.) A_k."""
    return _per_target_maps(model, x, module, call, ids, sign, lambda a, g: weighted_maps(g, a))


def layercam(model, x, module, call, ids, sign=1.0):
    """Jiang et al. 2021: sum_k ReLU(G_k) (.) A_k."""
    return _per_target_maps(
        model, x, module, call, ids, sign, lambda a, g: weighted_maps(torch.where(g > 0, g, torch.zeros_like(g)), a)
    )


def weighted_maps(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum_k G_k (.) A_k, channel by channel (element-wise weights)."""
    m = torch.zeros(a.shape[1:], dtype=a.dtype)
    for ch in range(a.shape[0]):
        m += g[ch] * a[ch]
    return m


# --------------------------------------------------------------------------- perturbation methods


def scorecam(model, x, module, call, ids, score="prob", baseline=True, channel_softmax=False, align_corners=False):
    """Wang et al. 2020: C_k = f(X (.) minmax(Up(A_k))) - f(X_b), one forward pass per channel."""

    def f(logits: torch.Tensor, c: int) -> float:
        if score == "logit":
            return float(logits[c])
        e = [math.exp(float(v) - float(logits.max())) for v in logits]
        return e[c] / sum(e)

    out = None
    size = (x.shape[-2], x.shape[-1])
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        with torch.no_grad():
            _, act = forward_keep(model, xb, module, call)
            base_logits = model(torch.zeros_like(xb))[0]
        a = act[0]
        if out is None:
            out = _empty(x, ids, a.shape)
        per_channel: list[torch.Tensor] = []  # logits of the masked input, one per channel
        for ch in range(a.shape[0]):
            up = bilinear(a[ch], size, align_corners)
            low, high = float(up.min()), float(up.max())
            mask = (up - low) / (high - low) if high > low else torch.zeros_like(up)
            with torch.no_grad():
                per_channel.append(model(xb * mask)[0])
        for k in range(ids.shape[1]):
            c = int(ids[b, k])
            weights = [f(logits, c) - (f(base_logits, c) if baseline else 0.0) for logits in per_channel]
            if channel_softmax:
                top = max(weights)
                e = [math.exp(w - top) for w in weights]
                weights = [v / sum(e) for v in e]
            out[b, k] = weighted_sum(weights, a)
    return out


def ablationcam(model, x, module, call, ids):
    """Desai & Ramaswamy 2020, eq. 3: w_k = (y - y_k) / y, one forward pass per channel."""
    out = None
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        with torch.no_grad():
            logits, act = forward_keep(model, xb, module, call)
        a = act[0]
        if out is None:
            out = _empty(x, ids, a.shape)
        ablated = [forward_replace(model, xb, module, call, ch)[0] for ch in range(a.shape[0])]
        for k in range(ids.shape[1]):
            c = int(ids[b, k])
            y = float(logits[0, c])
            weights = [(y - float(yk[c])) / y if y != 0 else 0.0 for yk in ablated]
            out[b, k] = weighted_sum(weights, a)
    return out


# --------------------------------------------------------------------------- pixel-space methods


def _hook_relus(root: torch.Tensor, rule: str | None) -> None:
    """Hook every ReLU backward node reachable from ``root``'s graph with the given rule."""
    if rule is None:
        return
    seen: set[int] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name().startswith("ReluBackward"):
            if rule == "guided":
                # grad_inputs[0] = 1[f > 0] R; keep its positive part: 1[f > 0] 1[R > 0] R
                node.register_hook(lambda gin, gout: (gin[0].clamp(min=0),))
            else:  # deconvnet: ReLU of the incoming signal, whatever the forward input
                node.register_hook(lambda gin, gout: (gout[0].clamp(min=0),))
        stack.extend(n for n, _ in node.next_functions)


def input_gradients(model, x, ids, rule=None, sign=1.0):
    """d(sign * S_bk)/dI (B, K, C, H, W): one forward per sample and target, the ReLU rule hooked."""
    out = torch.zeros(x.shape[0], ids.shape[1], *x.shape[1:], dtype=x.dtype)
    for b in range(x.shape[0]):
        for k in range(ids.shape[1]):
            xb = x[b : b + 1].detach().clone().requires_grad_(True)
            score = sign * model(xb)[0, int(ids[b, k])]
            _hook_relus(score, rule)
            (grad,) = torch.autograd.grad(score, xb)
            out[b, k] = grad[0]
    return out


def max_abs_over_channels(pixels: torch.Tensor) -> torch.Tensor:
    """(B, K, C, H, W) -> (B, K, H, W): max_c |pixels|, channel by channel."""
    out = pixels[:, :, 0].abs()
    for ch in range(1, pixels.shape[2]):
        out = torch.maximum(out, pixels[:, :, ch].abs())
    return out


def guided_gradcam(model, x, module, call, ids, sign=1.0):
    """Selvaraju et al. 2017, sec. 3.1: guided backprop (.) Up(ReLU(Grad-CAM))."""
    guided = input_gradients(model, x, ids, "guided", sign)
    coarse = gradcam(model, x, module, call, ids, sign)
    size = (x.shape[-2], x.shape[-1])
    out = torch.zeros_like(guided)
    for b in range(x.shape[0]):
        for k in range(ids.shape[1]):
            up = bilinear(coarse[b, k].clamp(min=0), size)
            out[b, k] = guided[b, k] * up[None]
    return out


# --------------------------------------------------------------------------- path and noise integrals


def _score(logits: torch.Tensor, c: int, kind: str) -> float:
    """f_c: the logit, or the softmax probability written out (max subtracted before exp)."""
    if kind == "logit":
        return float(logits[c])
    top = max(float(v) for v in logits)
    e = [math.exp(float(v) - top) for v in logits]
    return e[c] / sum(e)


def quadrature(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """Points a_s in [0, 1] and weights w_s of an integration rule with ``steps`` points, written out.

    riemann_left s/n, riemann_right (s+1)/n (Sundararajan et al. 2017, eq. 3), riemann_middle (s+1/2)/n, all
    weighted 1/n; riemann_trapezoid s/(n-1), weighted 1/(n-1) and half that at both ends; gausslegendre:
    numpy's Gauss-Legendre nodes t and weights v on [-1, 1], moved to [0, 1] as (t+1)/2 and v/2.
    """
    n = steps
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return [(float(t) + 1) / 2 for t in nodes], [float(v) / 2 for v in weights]
    if rule == "riemann_trapezoid":
        return [s / (n - 1) for s in range(n)], [(0.5 if s in (0, n - 1) else 1.0) / (n - 1) for s in range(n)]
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return [(s + offset) / n for s in range(n)], [1.0 / n] * n


def blur(x: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's blurred image (its evaluation.py): every channel correlated with gkern(klen, sigma), zero padding.

    gkern is scipy's gaussian_filter of a centred delta (as RISE writes it); the correlation is a loop over
    pixels and kernel taps, taps outside the image reading 0.
    """
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    kernel = gaussian_filter(delta, sigma).tolist()
    image = x.detach().double().tolist()
    half = klen // 2
    out = torch.zeros(x.shape, dtype=torch.float64)
    batch, channels, height, width = x.shape
    for b in range(batch):
        for ch in range(channels):
            plane = image[b][ch]
            for i in range(height):
                for j in range(width):
                    total = 0.0
                    for di in range(klen):
                        for dj in range(klen):
                            u, v = i + di - half, j + dj - half
                            if 0 <= u < height and 0 <= v < width:
                                total += kernel[di][dj] * plane[u][v]
                    out[b, ch, i, j] = total
    return out.to(x.dtype)


def integrated_gradients(model, x, ids, baseline, rule="gausslegendre", steps=50):
    """Sundararajan et al. 2017, eq. 1 by quadrature: (x - x') sum_s w_s dS(x' + a_s (x - x'))/dx.

    ``baseline`` x' (B, C, H, W); one fresh forward and ``torch.autograd.grad`` per sample, target and point.
    Returns the pixels (B, K, C, H, W).
    """
    points, weights = quadrature(rule, steps)
    out = torch.zeros(x.shape[0], ids.shape[1], *x.shape[1:], dtype=x.dtype)
    for b in range(x.shape[0]):
        xb, start = x[b].detach(), baseline[b].detach()
        for k in range(ids.shape[1]):
            total = torch.zeros_like(xb)
            for a, w in zip(points, weights):
                point = (start + a * (xb - start)).clone().requires_grad_(True)
                score = model(point[None])[0, int(ids[b, k])]
                (grad,) = torch.autograd.grad(score, point)
                total += w * grad
            out[b, k] = (xb - start) * total
    return out


def smoothgrad(model, x, ids, noise, rule=None, squared=False):
    """Smilkov et al. 2017, eq. 5: (1/n) sum_s g(x + noise_s), g the gradient (``rule``: "guided" for guided
    backprop), squared first for SmoothGrad-Squared (Hooker et al. 2019). ``noise`` (B, n, C, H, W) are the
    draws. One fresh forward per sample, target and draw. Returns the pixels (B, K, C, H, W)."""
    samples = noise.shape[1]
    out = torch.zeros(x.shape[0], ids.shape[1], *x.shape[1:], dtype=x.dtype)
    for b in range(x.shape[0]):
        for k in range(ids.shape[1]):
            total = torch.zeros_like(x[b])
            for s in range(samples):
                point = (x[b].detach() + noise[b, s]).clone().requires_grad_(True)
                score = model(point[None])[0, int(ids[b, k])]
                _hook_relus(score, rule)
                (grad,) = torch.autograd.grad(score, point)
                total += grad * grad if squared else grad
            out[b, k] = total / samples
    return out


# --------------------------------------------------------------------------- input perturbation


def occlusion(model, x, ids, window, stride, baseline, score="probability"):
    """Zeiler & Fergus 2014, sec. 4.2, averaged as captum's ``Occlusion``: window positions 0, stride, ...,
    ceil((size - window) / stride) + 1 of them per axis, the last cut at the border; each window of all
    channels set to ``baseline`` (a number or a tensor broadcasting to one image); pixel (i, j) gets the mean
    over the windows containing it of f(x) - f(x occluded). Returns the signed maps (B, K, H, W)."""
    height, width = x.shape[-2:]
    (wh, ww), (sh, sw) = window, stride
    wh, ww = min(wh, height), min(ww, width)
    rows = [(i * sh, min(i * sh + wh, height)) for i in range(math.ceil((height - wh) / sh) + 1)]
    cols = [(j * sw, min(j * sw + ww, width)) for j in range(math.ceil((width - ww) / sw) + 1)]
    out = torch.zeros(x.shape[0], ids.shape[1], height, width, dtype=x.dtype)
    for b in range(x.shape[0]):
        xb = x[b].detach()
        fill = torch.broadcast_to(torch.as_tensor(baseline, dtype=x.dtype), xb.shape)
        with torch.no_grad():
            clean = model(xb[None])[0]
            windows = []
            for r0, r1 in rows:
                for c0, c1 in cols:
                    occluded = xb.clone()
                    occluded[:, r0:r1, c0:c1] = fill[:, r0:r1, c0:c1]
                    windows.append(((r0, r1, c0, c1), model(occluded[None])[0]))
        for k in range(ids.shape[1]):
            c = int(ids[b, k])
            for i in range(height):
                for j in range(width):
                    drops = [
                        _score(clean, c, score) - _score(logits, c, score)
                        for (r0, r1, c0, c1), logits in windows
                        if r0 <= i < r1 and c0 <= j < c1
                    ]
                    out[b, k, i, j] = sum(drops) / len(drops)
    return out


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """Petsiuk et al. 2018, sec. 3.2, as the authors' explanations.py builds them: each s x s binary grid
    upsampled with ``skimage.transform.resize(order=1, mode="reflect", anti_aliasing=False)`` to
    (s + 1) * ceil(H / s) x (s + 1) * ceil(W / s), then cropped to H x W at its shift (dy, dx)."""
    from skimage.transform import resize

    s = grids.shape[-1]
    cell = (math.ceil(size[0] / s), math.ceil(size[1] / s))
    up = ((s + 1) * cell[0], (s + 1) * cell[1])
    masks = []
    for grid, (dy, dx) in zip(grids, shifts.tolist()):
        big = resize(grid.double().numpy(), up, order=1, mode="reflect", anti_aliasing=False)
        masks.append(torch.from_numpy(big[dy : dy + size[0], dx : dx + size[1]].copy()))
    return masks


def rise(model, x, ids, masks, p, score="probability"):
    """Petsiuk et al. 2018, eq. 6: S = sum_i f(I (.) M_i) M_i / (N p), a loop over the N masks (H, W).
    Returns the maps (B, K, H, W)."""
    out = torch.zeros(x.shape[0], ids.shape[1], *x.shape[-2:], dtype=x.dtype)
    for b in range(x.shape[0]):
        with torch.no_grad():
            masked = [model((x[b] * m.to(x.dtype)[None])[None])[0] for m in masks]
        for k in range(ids.shape[1]):
            c = int(ids[b, k])
            total = torch.zeros(x.shape[-2:], dtype=torch.float64)
            for logits, m in zip(masked, masks):
                total += _score(logits, c, score) * m
            out[b, k] = total / (len(masks) * p)
    return out


def lime(model, x, ids, labels, z, baseline="mean", kernel_width=0.25, alpha=1.0, score="probability"):
    """Ribeiro et al. 2016 (eq. 1-2, sec. 3.3-3.4) as lime_image does it, given the segments and the samples.

    ``labels`` (H, W): the superpixels of every image, numbered by their sorted label values; ``z`` (N, d)
    in {0, 1}: row i keeps segment j where z_ij = 1, the other pixels become the baseline ("mean": each
    segment's mean colour per channel, lime's hide_color=None; "zero"; a number). Weights
    pi_i = sqrt(exp(-D_i^2 / width^2)), D_i = 1 - cos(z_i, 1) (1 for z_i = 0, as scikit-learn's cosine
    distance); ridge with an unpenalised intercept solved by numpy from the normal equations
    (X' P X + alpha diag(0, 1, ..., 1)) beta = X' P y, X = [1 | z]. Pixel (u, v) gets beta of its segment.
    Returns the maps (B, K, H, W)."""
    segments = sorted(set(labels.flatten().tolist()))
    index = [[segments.index(int(v)) for v in row] for row in labels.tolist()]
    height, width = labels.shape
    d = z.shape[1]
    rows = z.tolist()
    out = torch.zeros(x.shape[0], ids.shape[1], height, width, dtype=x.dtype)
    for b in range(x.shape[0]):
        xb = x[b].detach()
        hidden = torch.zeros_like(xb)
        for ch in range(xb.shape[0]):
            for j in range(d):
                pixels = [float(xb[ch, u, v]) for u in range(height) for v in range(width) if index[u][v] == j]
                for u in range(height):
                    for v in range(width):
                        if index[u][v] == j:
                            if baseline == "mean":
                                hidden[ch, u, v] = sum(pixels) / len(pixels)
                            else:
                                hidden[ch, u, v] = 0.0 if baseline == "zero" else float(baseline)
        logits = []
        for row in rows:
            image = xb.clone()
            for u in range(height):
                for v in range(width):
                    if row[index[u][v]] == 0:
                        image[:, u, v] = hidden[:, u, v]
            with torch.no_grad():
                logits.append(model(image[None])[0])
        pi = []
        for row in rows:
            on = sum(row)
            cosine = on / (math.sqrt(sum(r * r for r in row)) * math.sqrt(d)) if on else 0.0
            pi.append(math.sqrt(math.exp(-((1 - cosine) ** 2) / kernel_width**2)))
        design = np.array([[1.0, *map(float, row)] for row in rows])  # X = [1 | z]
        weights = np.diag(pi)
        penalty = alpha * np.diag([0.0] + [1.0] * d)
        for k in range(ids.shape[1]):
            c = int(ids[b, k])
            y = np.array([_score(lg, c, score) for lg in logits])
            beta = np.linalg.solve(design.T @ weights @ design + penalty, design.T @ weights @ y)
            for u in range(height):
                for v in range(width):
                    out[b, k, u, v] = float(beta[1 + index[u][v]])
    return out


# --------------------------------------------------------------------------- layer-wise relevance propagation
#
# Every convolution and linear layer is written as a dense matrix W (inputs x outputs), built by a loop over
# output positions and kernel taps (taps in the zero padding are no inputs), with the connectivity M_ij = 1
# where input i feeds output j. c_ij = x_i W_ij are the contributions, z_j = sum_i c_ij + b_j, and
# stab(t) = t + e sign(t), sign(0) = +1. The rules (Bach et al. 2015; Montavon et al. 2019), one einsum each:
#
# * epsilon      R_i = sum_j c_ij R_j / stab(z_j)
# * alpha-beta   R_i = sum_j (alpha c+_ij / stab(sum_i c+_ij + b+_j) - beta c-_ij / stab(sum_i c-_ij + b-_j)) R_j
#                (z-plus: alpha = 1, beta = 0)
# * gamma        R_i = sum_j c'_ij R_j / stab(sum_i c'_ij + b'_j), c' = c + gamma c+ and b' = b + gamma b+
#                where z_j > 0, c + gamma c- and b + gamma b- where z_j < 0, nothing where z_j = 0
# * flat         R_i = sum_j M_ij R_j / stab(sum_i M_ij)
# * w-square     R_i = sum_j M_ij W_ij^2 R_j / stab(sum_i M_ij W_ij^2)
# * z-box        R_i = sum_j c_ij R_j / stab(sum_i c_ij), c_ij = x_i W_ij - l_i W+_ij - h_i W-_ij
#
# ReLUs pass relevance unchanged; global average pooling R_(c,u,v) = (a_(c,u,v) / hw) R_c / stab(mean_c);
# a residual sum a + b gives R_a = a R / stab(a + b), R_b = b R / stab(a + b); batch norm after a
# convolution is folded into it, W' = W g / sqrt(v + e), b' = (b - m) g / sqrt(v + e) + beta. The output
# relevance of target c is the one-hot vector times the logit.

IMAGENET_LOW = [-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
IMAGENET_HIGH = [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]


def lrp_composite(name, epsilon=1e-6, stabilizer=1e-6, gamma=0.25, low=None, high=None):
    """zennit's composites as {first, conv, linear} -> rule tuples (first None: the conv rule).

    epsilon-plus: z-plus at convolutions, epsilon at linear layers; epsilon-plus-flat: and flat at the first
    layer; epsilon-gamma-box: gamma at convolutions, z-box at the first layer (bounds: ImageNet-normalised
    [0, 1] pixels unless given); epsilon-alpha2-beta1: alpha = 2, beta = 1 at convolutions."""
    low = IMAGENET_LOW if low is None else low
    high = IMAGENET_HIGH if high is None else high
    conv = {
        "epsilon-plus": ("alpha-beta", 1.0, 0.0, stabilizer),
        "epsilon-plus-flat": ("alpha-beta", 1.0, 0.0, stabilizer),
        "epsilon-gamma-box": ("gamma", gamma, stabilizer),
        "epsilon-alpha2-beta1": ("alpha-beta", 2.0, 1.0, stabilizer),
    }[name]
    first = {"epsilon-plus-flat": ("flat", stabilizer), "epsilon-gamma-box": ("z-box", low, high, stabilizer)}.get(name)
    return {"first": first or conv, "conv": conv, "linear": ("epsilon", epsilon)}


def _stab_np(t: np.ndarray, e: float) -> np.ndarray:
    return t + e * np.where(t >= 0, 1.0, -1.0)


def dense_conv(conv: nn.Conv2d, size: tuple[int, int]):
    """(W (C*H*W, O*h*w), M, b (O*h*w,), (h, w)) of a 2-d convolution on an H x W input, tap by tap."""
    w = conv.weight.detach().double().numpy()
    out_ch, in_ch, kh, kw = w.shape
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    height, width = size
    h, wd = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    big = np.zeros((in_ch * height * width, out_ch * h * wd))
    mask = np.zeros_like(big)
    for o in range(out_ch):
        for p in range(h):
            for q in range(wd):
                j = (o * h + p) * wd + q
                for c in range(in_ch):
                    for di in range(kh):
                        for dj in range(kw):
                            u, v = p * sh - ph + di, q * sw - pw + dj
                            if 0 <= u < height and 0 <= v < width:
                                i = (c * height + u) * width + v
                                big[i, j] = w[o, c, di, dj]
                                mask[i, j] = 1.0
    bias = np.repeat(conv.bias.detach().double().numpy(), h * wd)
    return big, mask, bias, (h, wd)


def dense_linear(fc: nn.Linear):
    w = fc.weight.detach().double().numpy().T
    return w, np.ones_like(w), fc.bias.detach().double().numpy()


def fold_batch_norm(big: np.ndarray, bias: np.ndarray, bn: nn.BatchNorm2d, positions: int):
    """W' = W g / sqrt(v + e), b' = (b - m) g / sqrt(v + e) + beta, per output channel (repeated over positions)."""
    scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    shift = bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * scale
    scale, shift = np.repeat(scale, positions), np.repeat(shift, positions)
    return big * scale[None], bias * scale + shift


def lrp_rule(rule, x, big, mask, bias, r, channels=None):
    """R at the inputs of the layer (x, W, M, b) for relevance ``r`` at its outputs, by ``rule``."""
    name, *args = rule
    c = x[:, None] * big  # c_ij = x_i w_ij
    cp, cn = np.maximum(c, 0), np.minimum(c, 0)
    bp, bn = np.maximum(bias, 0), np.minimum(bias, 0)
    if name == "epsilon":
        (e,) = args
        return np.einsum("ij,j->i", c, r / _stab_np(c.sum(0) + bias, e))
    if name == "alpha-beta":
        alpha, beta, e = args
        pos = alpha * np.einsum("ij,j->i", cp, r / _stab_np(cp.sum(0) + bp, e))
        neg = beta * np.einsum("ij,j->i", cn, r / _stab_np(cn.sum(0) + bn, e))
        return pos - neg
    if name == "gamma":
        g, e = args
        z = c.sum(0) + bias
        up, b_up = c + g * cp, bias + g * bp
        down, b_down = c + g * cn, bias + g * bn
        out = np.einsum("ij,j->i", up, np.where(z > 0, r, 0.0) / _stab_np(up.sum(0) + b_up, e))
        return out + np.einsum("ij,j->i", down, np.where(z < 0, r, 0.0) / _stab_np(down.sum(0) + b_down, e))
    if name in ("flat", "w-square"):
        (e,) = args
        share = mask if name == "flat" else mask * big**2
        return np.einsum("ij,j->i", share, r / _stab_np(share.sum(0), e))
    if name == "z-box":
        low, high, e = args
        per_input = len(x) // channels
        lo = np.repeat(np.broadcast_to(np.asarray(low, dtype=np.float64), (channels,)), per_input)
        hi = np.repeat(np.broadcast_to(np.asarray(high, dtype=np.float64), (channels,)), per_input)
        box = c - lo[:, None] * np.maximum(big, 0) - hi[:, None] * np.minimum(big, 0)
        return np.einsum("ij,j->i", box, r / _stab_np(box.sum(0), e))
    raise ValueError(name)


def _relu(t: np.ndarray) -> np.ndarray:
    return np.maximum(t, 0)


def _gap_rule(a: np.ndarray, channels: int, r: np.ndarray, e: float) -> np.ndarray:
    """Global average pooling of a (C * hw,): R_(c,u,v) = (a_(c,u,v) / hw) R_c / stab(mean_c)."""
    planes = a.reshape(channels, -1)
    mean = planes.mean(1)
    return (planes / planes.shape[1] * (r / _stab_np(mean, e))[:, None]).reshape(-1)


def _lrp_one(model: nn.Module, x: np.ndarray, size: tuple[int, int], c: int, rules, e: float) -> np.ndarray:
    """R at the input (C*H*W,) of one image for target c: the tier-2 networks, layer by layer."""
    kind = type(model).__name__
    first, conv, linear = rules["first"], rules["conv"], rules["linear"]
    if kind in ("GapNet", "SharedActNet"):
        if kind == "GapNet":
            conv1, conv2, fc = model.features[0], model.features[2], model.fc
        else:
            conv1, conv2, fc = model.stem, model.head, model.fc
        w1, m1, b1, size1 = dense_conv(conv1, size)
        w2, m2, b2, size2 = dense_conv(conv2, size1)
        if kind == "GapNet":
            w2, b2 = fold_batch_norm(w2, b2, model.features[3], size2[0] * size2[1])
        w3, m3, b3 = dense_linear(fc)
        a1 = _relu(x @ w1 + b1)
        a2 = _relu(a1 @ w2 + b2)
        pooled = a2.reshape(conv2.out_channels, -1).mean(1)
        logits = pooled @ w3 + b3
        r = np.zeros_like(logits)
        r[c] = logits[c]
        r = lrp_rule(linear, pooled, w3, m3, b3, r)
        r = _gap_rule(a2, conv2.out_channels, r, e)
        r = lrp_rule(conv, a1, w2, m2, b2, r)
        return lrp_rule(first, x, w1, m1, b1, r, conv1.in_channels)
    if kind == "FcNet":
        conv1, fc1, fc2 = model.features[0], model.classifier[0], model.classifier[2]
        w1, m1, b1, _ = dense_conv(conv1, size)
        w2, m2, b2 = dense_linear(fc1)
        w3, m3, b3 = dense_linear(fc2)
        a1 = _relu(x @ w1 + b1)  # flattened channel by channel, as torch's flatten(1)
        a2 = _relu(a1 @ w2 + b2)
        logits = a2 @ w3 + b3
        r = np.zeros_like(logits)
        r[c] = logits[c]
        r = lrp_rule(linear, a2, w3, m3, b3, r)
        r = lrp_rule(linear, a1, w2, m2, b2, r)
        return lrp_rule(first, x, w1, m1, b1, r, conv1.in_channels)
    if kind == "FunctionalNet":
        w1, m1, b1, size1 = dense_conv(model.conv1, size)
        w2, m2, b2, _ = dense_conv(model.conv2, size1)
        w3, m3, b3 = dense_linear(model.fc)
        y = _relu(x @ w1 + b1)
        branch = y @ w2 + b2
        total = _relu(branch + y)
        pooled = total.reshape(model.conv2.out_channels, -1).mean(1)
        logits = pooled @ w3 + b3
        r = np.zeros_like(logits)
        r[c] = logits[c]
        r = lrp_rule(linear, pooled, w3, m3, b3, r)
        r = _gap_rule(total, model.conv2.out_channels, r, e)
        share = r / _stab_np(branch + y, e)  # the residual sum: each addend's part
        r_y = y * share + lrp_rule(conv, y, w2, m2, b2, branch * share)
        return lrp_rule(first, x, w1, m1, b1, r_y, model.conv1.in_channels)
    raise ValueError(f"no literal LRP for {kind}")


def lrp(model, x, ids, rules, stabilizer=1e-6):
    """Layer-wise relevance propagation with ``rules`` ({first, conv, linear} -> rule, see
    :func:`lrp_composite`) on the tier-2 networks; ``stabilizer`` for pooling and sums. Pixels (B, K, C, H, W)."""
    out = torch.zeros(x.shape[0], ids.shape[1], *x.shape[1:], dtype=x.dtype)
    size = (x.shape[-2], x.shape[-1])
    for b in range(x.shape[0]):
        image = x[b].detach().double().numpy().reshape(-1)
        for k in range(ids.shape[1]):
            r = _lrp_one(model, image, size, int(ids[b, k]), rules, stabilizer)
            out[b, k] = torch.from_numpy(r.reshape(x.shape[1:])).to(x.dtype)
    return out
