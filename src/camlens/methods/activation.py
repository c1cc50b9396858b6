"""Methods that read the activation and the model's weights only: no backward pass.

* CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, eq. 2):
  for features f_k that go through global average pooling and one linear layer with weights w^c,
  M_c(x, y) = sum_k w_k^c f_k(x, y). The class score is S_c = mean_{x,y} M_c(x, y) + b_c.
* Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the projection of the activation on its first principal
  component, class-agnostic.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from camlens.capture import Reshape
from camlens.methods.base import CAMMethod, Context
from camlens.registry import register

__all__ = ["CAM", "EigenCAM"]


def _head_candidates(
    model: nn.Module, channels: int, classes: int
) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    found: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.in_features == channels and m.out_features == classes:
            found.append((name, m.weight, m.bias))
        elif (
            isinstance(m, nn.Conv2d)
            and m.in_channels == channels
            and m.out_channels == classes
            and m.kernel_size == (1, 1)
            and m.groups == 1
        ):
            found.append((name, m.weight.flatten(1), m.bias))
    return found[::-1]  # the head is usually the last such module


@register("cam")
class CAM(CAMMethod):
    """Class Activation Mapping (Zhou et al., CVPR 2016): M_c = sum_k w_k^c A_k, from one forward pass.

    The weights are the rows of the linear layer that follows global pooling of the explained layer.
    That layer is found automatically and *verified*: the model's output must equal
    ``linear(global_avg_pool(A))`` (or global max pooling, the paper's GMP variant) on the batch,
    otherwise CAM does not apply and a ``ValueError`` suggests ``gradcam``. The bias is left out of the
    map, as in the paper. All K targets come from the same single forward pass; there is no backward.

    For such a head, Grad-CAM, HiResCAM and XGrad-CAM give the same map up to the positive factor 1/(hw)
    (d S_c / d A_k(x,y) = w_k^c / (hw)): the CAM paper's identity, tested in ``tests/test_identity.py``.

    Args:
        model: the network.
        layer: the layer feeding global pooling (``None``: found automatically).
        fc: the linear head, as a module or a (classes, channels) weight tensor, to skip the search.

    Examples:
        >>> cam = camlens.CAM(model)  # ResNet: layer4 -> avgpool -> fc, found and verified
        >>> exp = cam(x, targets="top5")
        >>> exp.maps.shape  # (B, 5, H, W)
        torch.Size([1, 5, 64, 64])
    """

    needs_class_ids: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        fc: nn.Module | torch.Tensor | None = None,
        reshape: Reshape | None = None,
    ) -> None:
        super().__init__(model, layer, reshape=reshape)
        self._fc = fc
        self._head: tuple[str, torch.Tensor, torch.Tensor | None] | None = None
        self.pooling: str | None = None

    def _head_weight(self, ctx: Context) -> torch.Tensor:
        a, out = ctx.activation, ctx.output
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ValueError("CAM needs a model output of shape (batch, classes); use method='gradcam'")
        channels, classes = a.shape[1], out.shape[1]
        if self._fc is not None:
            w = self._fc.weight if isinstance(self._fc, nn.Module) else self._fc
            if not isinstance(w, torch.Tensor):
                raise TypeError("fc must be an nn.Linear, a 1x1 nn.Conv2d or a (classes, channels) weight tensor")
            w = w.detach().reshape(w.shape[0], -1)
            if w.shape != (classes, channels):
                raise ValueError(
                    f"fc weight has shape {tuple(w.shape)}, expected (classes={classes}, channels={channels})"
                )
            return w
        pooled = {"avg": a.mean((2, 3)), "max": a.amax((2, 3))}
        tol = 1e-3 * max(1.0, float(out.abs().max()))
        # the head found on an earlier call is re-verified first; the search runs only if it fails
        if self._head is not None and self._head[1].shape == (classes, channels):
            found = self._verify([self._head], pooled, out, tol)
            if found is not None:
                return found
        found = self._verify(_head_candidates(self.model, channels, classes), pooled, out, tol)
        if found is not None:
            return found
        candidates = _head_candidates(self.model, channels, classes)
        hint = (
            f"no linear layer {channels}->{classes} exists"
            if not candidates
            else f"{', '.join(c[0] for c in candidates)} does not map its global pooling to the output"
        )
        raise ValueError(
            f"CAM needs a model whose output is linear(global_avg_pool(layer)), but for layer {ctx.layer} "
            f"{hint}; use method='gradcam', which works for any CNN and equals CAM on such heads"
        )

    def _verify(
        self,
        candidates: list[tuple[str, torch.Tensor, torch.Tensor | None]],
        pooled: dict[str, torch.Tensor],
        out: torch.Tensor,
        tol: float,
    ) -> torch.Tensor | None:
        for head in candidates:
            w, bias = head[1].detach(), head[2]
            for kind, features in pooled.items():
                pred = features @ w.T + (0 if bias is None else bias.detach())
                if (pred - out).abs().max() <= tol:
                    self._head, self.pooling = head, kind
                    return w
        return None

    def weights(self, ctx: Context) -> torch.Tensor:
        assert ctx.ids is not None  # needs_class_ids
        w = self._head_weight(ctx)
        return w[ctx.ids]  # (B, K, C)


@register("eigencam")
class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): projection of A on its first principal component.

    Per sample, the activation is viewed as hw points in R^C (matrix O, hw x C) and the map is O v_1,
    with v_1 the first right singular vector of O. The sign of a singular vector is arbitrary; it is
    fixed so the map correlates positively with the channel sum of A. The map does not depend on the
    target: the same map is returned for every target.

    Args:
        center: subtract the per-channel mean over positions before the SVD (pytorch-grad-cam does;
            the paper does not, hence the default ``False``).

    Examples:
        >>> exp = camlens.EigenCAM(model)(x, targets="top2")
        >>> torch.equal(exp.raw[:, 0], exp.raw[:, 1])  # one map, whatever the target
        True
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        center: bool = False,
        reshape: Reshape | None = None,
    ) -> None:
        super().__init__(model, layer, reshape=reshape)
        self.center = center

    def raw_maps(self, ctx: Context) -> torch.Tensor:
        a = ctx.activation
        b, _, h, w = a.shape
        # SVD in at least float32: CPU/GPU SVD has no float16/bfloat16 kernel
        points = a.flatten(2).transpose(1, 2).to(torch.promote_types(a.dtype, torch.float32))  # (B, hw, C)
        if self.center:
            points = points - points.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(points, full_matrices=False)
        proj = points @ vh[:, 0, :, None]  # (B, hw, 1)
        sign = torch.sign((proj[..., 0] * a.sum(1).flatten(1)).sum(1))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        proj = proj[..., 0] * sign[:, None]
        return proj.view(b, 1, h, w).to(a.dtype).expand(b, ctx.scores.shape[1], h, w)
