"""Slow, paper-literal references, written independently of camlens (tier 2 of the tests).

Each function loops over samples, targets, channels and pixels, takes gradients with
``torch.autograd.grad`` on the *whole* model (a plain hook stores the activation; no graph tricks),
and follows one paper's equation:

* CAM: Zhou et al. 2016, eq. 2, M_c = sum_k w_k^c f_k(x, y).
* Grad-CAM: Selvaraju et al. 2017, eq. 1-2, alpha_k = 1/Z sum_ij dy/dA_kij; L = sum_k alpha_k A_k.
* Grad-CAM++: Chattopadhay et al. 2018, eq. 19 with Y = exp(S) (so the exp cancels), and the weights
  w_k = sum_ij alpha_kij ReLU(dS/dA_kij).
* XGrad-CAM: Fu et al. 2020, alpha_k = sum_ij (A_kij / sum_ab A_kab) dS/dA_kij.
* HiResCAM: Draelos & Carin 2020, sum_k dS/dA_k (.) A_k.
* LayerCAM: Jiang et al. 2021, sum_k ReLU(dS/dA_k) (.) A_k.
* Score-CAM: Wang et al. 2020, C_k = f(X (.) s(Up(A_k))) - f(X_b), s = min-max.
* Ablation-CAM: Desai & Ramaswamy 2020, w_k = (y - y_k) / y.
* Eigen-CAM: Muhammad & Yeasin 2020, projection on the first right singular vector (numpy SVD).

All return the signed map before the final ReLU, shape (B, K, h, w), float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.reference.literal import forward_keep


def _forward(model: nn.Module, module: nn.Module, call: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return forward_keep(model, x, module, call)


def gradients(model: nn.Module, module: nn.Module, call: int, x: torch.Tensor, ids: torch.Tensor):
    """A (B, C, h, w) and dS_bk/dA_b for every sample b and target k: (B, K, C, h, w)."""
    out, act = _forward(model, module, call, x)
    b, k = ids.shape
    grads = torch.zeros(b, k, *act.shape[1:], dtype=torch.float64)
    for i in range(b):
        for j in range(k):
            (g,) = torch.autograd.grad(out[i, int(ids[i, j])], act, retain_graph=True)
            grads[i, j] = g[i].double()
    return act.detach().double(), grads


def gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    b, k, c, h, w = g.shape
    out = torch.zeros(b, k, h, w, dtype=torch.float64)
    for i in range(b):
        for t in range(k):
            for ch in range(c):
                alpha = sum(float(g[i, t, ch, y, x]) for y in range(h) for x in range(w)) / (h * w)
                out[i, t] += alpha * a[i, ch]
    return out


def gradcam_pp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    b, k, c, h, w = g.shape
    out = torch.zeros(b, k, h, w, dtype=torch.float64)
    for i in range(b):
        for t in range(k):
            for ch in range(c):
                total = float(a[i, ch].sum())
                weight = 0.0
                for y in range(h):
                    for x in range(w):
                        gv = float(g[i, t, ch, y, x])
                        den = 2 * gv**2 + total * gv**3
                        alpha = gv**2 / den if den != 0 else 0.0
                        weight += alpha * max(gv, 0.0)
                out[i, t] += weight * a[i, ch]
    return out


def xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    b, k, c, h, w = g.shape
    out = torch.zeros(b, k, h, w, dtype=torch.float64)
    for i in range(b):
        for t in range(k):
            for ch in range(c):
                total = float(a[i, ch].sum())
                if total == 0:
                    continue
                alpha = sum(float(a[i, ch, y, x] * g[i, t, ch, y, x]) for y in range(h) for x in range(w)) / total
                out[i, t] += alpha * a[i, ch]
    return out


def hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.stack([(g[i, t] * a[i]).sum(0) for t in range(g.shape[1])]) for i in range(g.shape[0])])


def layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return hirescam(a, g.clamp(min=0))


def cam(a: torch.Tensor, fc_weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    b, k = ids.shape
    out = torch.zeros(b, k, *a.shape[2:], dtype=torch.float64)
    for i in range(b):
        for t in range(k):
            for ch in range(a.shape[1]):
                out[i, t] += float(fc_weight[int(ids[i, t]), ch]) * a[i, ch]
    return out


def _minmax(m: torch.Tensor) -> torch.Tensor:
    low, high = float(m.min()), float(m.max())
    return torch.zeros_like(m) if high == low else (m - low) / (high - low)


def scorecam(
    model: nn.Module, module: nn.Module, call: int, x: torch.Tensor, ids: torch.Tensor, prob: bool, baseline: bool
) -> torch.Tensor:
    with torch.no_grad():
        _, act = _forward(model, module, call, x)
        b, k = ids.shape
        out = torch.zeros(b, k, *act.shape[2:], dtype=torch.float64)
        for i in range(b):

            def score(inp: torch.Tensor, i: int = i) -> torch.Tensor:
                o = model(inp[None]).double()[0]
                return o.softmax(0) if prob else o

            base = score(torch.zeros_like(x[i]))
            for ch in range(act.shape[1]):
                up = F.interpolate(act[i, ch][None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[
                    0, 0
                ]
                s = score(x[i] * _minmax(up))
                for t in range(k):
                    c = int(ids[i, t])
                    weight = float(s[c] - (base[c] if baseline else 0.0))
                    out[i, t] += weight * act[i, ch].double()
    return out


def ablationcam(model: nn.Module, module: nn.Module, call: int, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y, act = _forward(model, module, call, x)
        b, k = ids.shape
        out = torch.zeros(b, k, *act.shape[2:], dtype=torch.float64)
        for ch in range(act.shape[1]):
            calls = [0]

            def zero(m: nn.Module, i: object, o: torch.Tensor, ch: int = ch, calls: list = calls) -> torch.Tensor:
                calls[0] += 1
                if calls[0] - 1 != call:
                    return o
                o = o.clone()
                o[:, ch] = 0
                return o

            handle = module.register_forward_hook(zero)
            try:
                yk = model(x)
            finally:
                handle.remove()
            for i in range(b):
                for t in range(k):
                    c = int(ids[i, t])
                    weight = float((y[i, c] - yk[i, c]) / y[i, c])
                    out[i, t] += weight * act[i, ch].double()
    return out


def eigencam(a: torch.Tensor, k: int) -> torch.Tensor:
    maps = []
    for sample in a.double().numpy():
        c, h, w = sample.shape
        points = sample.reshape(c, h * w).T
        _, _, vt = np.linalg.svd(points, full_matrices=False)
        proj = points @ vt[0]
        if float(proj @ sample.sum(0).reshape(-1)) < 0:
            proj = -proj
        maps.append(np.repeat(proj.reshape(1, h, w), k, 0))
    return torch.from_numpy(np.stack(maps))
