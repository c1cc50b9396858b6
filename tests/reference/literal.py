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
