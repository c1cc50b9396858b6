"""Gradient-weighted class activation maps. G = dS^c/dA, the gradient of the target score.

* Grad-CAM (Selvaraju et al., ICCV 2017, eq. 1-2): alpha_k = mean_ij G_kij; map = ReLU(sum_k alpha_k A_k).
  Counterfactual explanations (sec. 5): the gradients are negated.
* Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19 with the exponential score, eq. 20):
  a_kij = G^2 / (2 G^2 + sum_ab A_kab G^3), w_k = sum_ij a_kij ReLU(G_kij).
* XGrad-CAM (Fu et al., BMVC 2020, eq. 9): alpha_k = sum_ij (A_kij / sum_ab A_kab) G_kij.
* HiResCAM (Draelos & Carin, 2020): map = sum_k G_k * A_k (element-wise, no spatial averaging).
* LayerCAM (Jiang et al., IEEE TIP 2021, eq. 5-6): map = sum_k ReLU(G_k) * A_k.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from camlens.capture import Reshape
from camlens.methods.base import CAMMethod, Context
from camlens.registry import register

__all__ = ["GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "XGradCAM"]


def _safe_divide(num: torch.Tensor, den: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where |den| is within a few ulps of ``scale`` (the size of its terms)."""
    tiny = torch.finfo(den.dtype).eps * 4
    ok = den.abs() > tiny * scale
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


class _Gradient(CAMMethod):
    needs_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        counterfactual: bool = False,
        reshape: Reshape | None = None,
    ) -> None:
        super().__init__(model, layer, reshape=reshape)
        self.counterfactual = counterfactual

    def grads(self, ctx: Context) -> torch.Tensor:
        assert ctx.gradients is not None  # needs_gradients
        return -ctx.gradients if self.counterfactual else ctx.gradients


@register("gradcam")
class GradCAM(_Gradient):
    """Grad-CAM (Selvaraju et al., ICCV 2017): alpha_k = mean_ij dS/dA_kij, map = ReLU(sum_k alpha_k A_k).

    Works for any CNN, any layer, any differentiable target. ``counterfactual=True`` negates the
    gradients (the paper's counterfactual explanations: regions whose removal raises the score).
    ``Explanation.raw`` keeps the signed map, so ReLU(-raw) of a plain call is the counterfactual map.

    Examples:
        >>> exp = camlens.GradCAM(model, layer="layer4")(x, targets=[[3, 5]])  # two classes per image
        >>> exp.maps.shape  # (B, 2, H, W)
        torch.Size([1, 2, 64, 64])
    """

    def weights(self, ctx: Context) -> torch.Tensor:
        return self.grads(ctx).mean((-2, -1))


@register("gradcam++")
class GradCAMPlusPlus(_Gradient):
    """Grad-CAM++ exactly as eq. 19 of Chattopadhay et al. (WACV 2018), with Y^c = exp(S^c).

    With Y = exp(S) the higher derivatives are powers of G = dS/dA times exp(S), which cancels in
    a_kij = G^2 / (2 G^2 + sum_ab A_kab G^3); w_k = sum_ij a_kij ReLU(G_kij) (eq. 20 without the
    positive factor exp(S), left out of ``raw`` since it overflows for large logits).

    Where the denominator vanishes (G = 0), a_kij = 0. The test for zero is relative to the size of
    the denominator's own terms, not a fixed epsilon: a fixed eps = 1e-6 swamps G^2 ~ 1e-7 on real
    ImageNet models and turns the method into something else (pytorch-grad-cam's behaviour).

    Half-precision activations are promoted to float32 for the weights: G^3 underflows in float16
    for |G| < 4e-3, common on real models.

    Examples:
        >>> exp = camlens.GradCAMPlusPlus(model)(x, targets="top3")
        >>> exp.maps.shape
        torch.Size([1, 3, 64, 64])
    """

    def weights(self, ctx: Context) -> torch.Tensor:
        g = self.grads(ctx)
        work = torch.promote_types(g.dtype, torch.float32)
        g = g.to(work)
        total = ctx.activation.to(work).sum((-2, -1))[:, None, :, None, None]
        g2 = g * g
        g3 = g2 * g
        third = total * g3
        alpha = _safe_divide(g2, 2 * g2 + third, 2 * g2 + third.abs())
        return (alpha * g.clamp(min=0)).sum((-2, -1)).to(ctx.activation.dtype)


@register("xgradcam")
class XGradCAM(_Gradient):
    """XGrad-CAM (Fu et al., BMVC 2020): alpha_k = sum_ij (A_kij / sum_ab A_kab) dS/dA_kij.

    A channel whose activation sums to zero gets weight 0.

    Examples:
        >>> exp = camlens.XGradCAM(model)(x, targets=3)
        >>> exp.maps.shape
        torch.Size([1, 1, 64, 64])
    """

    def weights(self, ctx: Context) -> torch.Tensor:
        a = ctx.activation[:, None]
        total = a.sum((-2, -1))
        num = (a * self.grads(ctx)).sum((-2, -1))
        return _safe_divide(num, total, a.abs().sum((-2, -1)))


@register("hirescam")
class HiResCAM(_Gradient):
    """HiResCAM (Draelos & Carin, 2020): map = sum_k dS/dA_k * A_k, element-wise.

    Unlike Grad-CAM, no spatial averaging of the gradient, so the map is faithful to the
    computation when the head is GAP + linear (where it equals CAM / (hw)).

    Examples:
        >>> hires = camlens.HiResCAM(model)(x, targets=3).raw
        >>> torch.allclose(hires * 4, camlens.CAM(model)(x, targets=3).raw, atol=1e-5)  # layer4 is 2 x 2
        True
    """

    def weights(self, ctx: Context) -> torch.Tensor:
        return self.grads(ctx)


@register("layercam")
class LayerCAM(_Gradient):
    """LayerCAM (Jiang et al., IEEE TIP 2021): map = ReLU(sum_k ReLU(dS/dA_k) * A_k), element-wise.

    Meant for shallower layers too, where Grad-CAM's averaged weights blur.

    Examples:
        >>> exp = camlens.LayerCAM(model, layer="layer2")(x, targets=3)
        >>> exp.raw.shape  # layer2 of a ResNet: 1/8 of the input
        torch.Size([1, 1, 8, 8])
    """

    def weights(self, ctx: Context) -> torch.Tensor:
        return self.grads(ctx).clamp(min=0)
