"""Methods that weigh channels by extra forward passes, all through one batched, chunked helper.

* Score-CAM (Wang et al., CVPR Workshops 2020, eq. 3-5): H_k = minmax(Up(A_k)), the "channel-wise
  increase of confidence" C_k = f_c(X * H_k) - f_c(X_b), map = ReLU(sum_k C_k A_k).
* Ablation-CAM (Desai & Ramaswamy, WACV 2020, eq. 3): w_k = (y_c - y_c^k) / y_c, with y_c^k the score
  when channel k of the layer is set to zero.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camlens._inputs import sample_rows
from camlens._perturb import check_precision, fast_layout, perturbed_scores
from camlens.capture import Reshape, capture
from camlens.explanation import normalize_maps
from camlens.methods.base import CAMMethod, Context
from camlens.registry import register
from camlens.targets import RowScorer

__all__ = ["AblationCAM", "ScoreCAM"]


@register("scorecam")
class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al., CVPRW 2020): weights from forward passes of the input masked by each channel.

    H_k = min-max normalised, bilinearly upsampled A_k; s_k = f_c(X * H_k); the weight is
    C_k = s_k - f_c(X_b) (the paper's increase of confidence over the baseline X_b, the all-zero input
    that a zero mask also produces), optionally passed through a softmax over channels.

    Defaults follow the paper: ``score="prob"`` (f_c is the softmax probability of class c), baseline
    subtraction on, ``channel_softmax=False``. pytorch-grad-cam uses ``score="logit",
    channel_softmax=True, align_corners=True`` (its mask upsampling); with a channel softmax the
    baseline is irrelevant (a constant shift). ``precision="bfloat16"`` runs the masked forwards under
    autocast (:func:`camlens._perturb.perturbed_scores`): faster on CPUs with AMX and on GPUs, at ~1e-3
    from the float32 scores.

    Cost: one forward per channel and image, minus channels whose map is constant (their mask is
    zero, so their masked input *is* the baseline, computed once); in batches of ``batch_size`` (16:
    larger batches run slower per image on a CPU, cache-bound), under ``torch.inference_mode()``, in
    channels-last layout (``channels_last=False`` keeps the input's). A callable target is applied to
    batches of masked copies of one sample and must therefore score each row independently.

    Examples:
        >>> exp = camlens.ScoreCAM(model, layer="layer4")(x, targets=3)
        >>> exp.maps.shape
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        score: str = "prob",
        channel_softmax: bool = False,
        baseline: bool = True,
        align_corners: bool = False,
        batch_size: int = 16,
        channels_last: bool = True,
        progress: bool | None = None,
        precision: str = "float32",
        reshape: Reshape | None = None,
    ) -> None:
        super().__init__(model, layer, reshape=reshape)
        if score not in ("logit", "prob"):
            raise ValueError(f"score must be 'logit' or 'prob', got {score!r}")
        self.score, self.channel_softmax, self.baseline = score, channel_softmax, baseline
        self.align_corners = align_corners
        self.batch_size, self.channels_last, self.progress = batch_size, channels_last, progress
        self.precision = check_precision(precision)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return fast_layout(x) if self.channels_last else x

    def weights(self, ctx: Context) -> torch.Tensor:
        x, a = ctx.inputs, ctx.activation
        b, c = a.shape[:2]
        flat = a.flatten(2)
        varying = (flat.amax(-1) - flat.amin(-1)) > 0  # (B, C); constant maps give zero masks
        pairs = varying.nonzero()  # (n, 2): sample, channel
        size = x.shape[-2:]
        scorer = _scorer(ctx, "probability" if self.score == "prob" else "logit")

        def masked_input(rows: slice) -> Any:
            sel = pairs[rows]
            low = a[sel[:, 0], sel[:, 1]][:, None]
            masks = F.interpolate(low, size=size, mode="bilinear", align_corners=self.align_corners)
            return self.model(self._layout(x[sel[:, 0]] * normalize_maps(masks)))

        masked = perturbed_scores(
            masked_input,
            pairs[:, 0],
            scorer,
            self.batch_size,
            desc="Score-CAM",
            progress=self.progress,
            precision=self.precision,
        )
        # the baseline, the all-zero input, of every sample in one forward
        base = perturbed_scores(
            lambda rows: self.model(self._layout(torch.zeros_like(x[rows]))),
            torch.arange(b, device=x.device),
            scorer,
            b,
            desc="Score-CAM baseline",
            progress=False,
            precision=self.precision,
        )  # (B, K)
        k = base.shape[1]
        scores = base[:, :, None].expand(b, k, c).clone()
        if len(pairs):
            scores[pairs[:, 0], :, pairs[:, 1]] = masked.to(scores.dtype)
        if self.baseline:
            scores = scores - base[:, :, None]
        if self.channel_softmax:
            scores = scores.softmax(-1)
        return scores.to(a.dtype)


@register("ablationcam")
class AblationCAM(CAMMethod):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): w_k = (y_c - y_c^k) / y_c.

    y_c^k is the target score with channel k of the layer set to zero. Only the tail of the network
    (after the layer) is replayed on the ablated activations, from one forward of the front per chunk,
    when that is exact: the first chunk also replays the unablated activation and must reproduce the
    model's output, otherwise the whole input is replicated (the slow, always-valid path). Channels
    that are already all zero are not ablated (y_c^k = y_c, w_k = 0). Note the paper's division by
    y_c: a negative target score flips the sign of every weight.

    Examples:
        >>> exp = camlens.AblationCAM(model, layer="layer4")(x, targets=3)
        >>> exp.raw.shape  # (B, K, h, w) at the layer's resolution
        torch.Size([1, 1, 2, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        batch_size: int = 256,
        progress: bool | None = None,
        reshape: Reshape | None = None,
    ) -> None:
        super().__init__(model, layer, reshape=reshape)
        self.batch_size, self.progress = batch_size, progress

    def weights(self, ctx: Context) -> torch.Tensor:
        x, a = ctx.inputs, ctx.activation
        b, c = a.shape[:2]
        active = a.flatten(2).ne(0).any(-1)  # (B, C)
        pairs = active.nonzero()
        scorer = _scorer(ctx, "logit")
        replay = self._replay_is_exact(ctx)

        def ablated(sel: torch.Tensor) -> torch.Tensor:
            out = a[sel[:, 0]].clone()
            out[torch.arange(len(sel)), sel[:, 1]] = 0
            return out

        def ablated_forward(rows: slice) -> Any:
            sel = pairs[rows]
            if replay:
                # one front pass per sample in the chunk; the tail runs on all its ablations at once
                outs = []
                for sample in sel[:, 0].unique_consecutive():
                    own = sel[sel[:, 0] == sample]
                    with self._replay(ctx, lambda _, r=own: ablated(r)), sample_rows(sample[None]):
                        outs.append(self.model(x[int(sample) : int(sample) + 1]))
                return torch.cat(outs)
            with self._replay(ctx, lambda grid: _zero_channels(grid, sel[:, 1])):
                return self.model(x[sel[:, 0]])

        ablated_scores = perturbed_scores(
            ablated_forward, pairs[:, 0], scorer, self.batch_size, desc="Ablation-CAM", progress=self.progress
        )
        y = ctx.scores.to(a.dtype)  # (B, K)
        k = y.shape[1]
        yk = y[:, :, None].expand(b, k, c).clone()
        if len(pairs):
            yk[pairs[:, 0], :, pairs[:, 1]] = ablated_scores.to(yk.dtype)
        zero = y == 0
        if bool(zero.any()):
            warnings.warn(
                "Ablation-CAM divides by the target score, which is exactly 0 for "
                f"{int(zero.sum())} target(s); their weights are set to 0",
                stacklevel=3,
            )
        den = torch.where(zero, torch.ones_like(y), y)[:, :, None]
        return torch.where(zero[:, :, None], torch.zeros_like(yk), (y[:, :, None] - yk) / den)

    def _replay(self, ctx: Context, replace: Any) -> Any:
        """A capture whose hook replaces the layer's grid by ``replace(grid)``, in the layer's own layout."""
        return capture(
            self.model, ctx.layer, grad=False, replace=replace, size=ctx.inputs.shape[-2:], reshape=self.reshape
        )

    def _replay_is_exact(self, ctx: Context) -> bool:
        """Does replaying the tail on a (2, C, h, w) copy of sample 0's activation reproduce the output?"""
        if not isinstance(ctx.output, torch.Tensor):
            return False
        a0 = ctx.activation[:1]
        twice = a0.expand(2, *a0.shape[1:]).clone()
        try:
            with torch.inference_mode(), self._replay(ctx, lambda _: twice), sample_rows(torch.zeros(1).long()):
                out = self.model(ctx.inputs[:1])
        except RuntimeError:
            return False
        if not isinstance(out, torch.Tensor) or out.shape[0] != 2:
            return False
        ref = ctx.output[:1]
        tol = 1e-4 * max(1.0, float(ref.abs().max()))
        return bool((out - ref).abs().max() <= tol)


def _scorer(ctx: Context, kind: str) -> RowScorer:
    """The one scorer of perturbed copies, for the call's targets (class ids or the callable, K per sample)."""
    if ctx.ids is not None:
        return RowScorer(ctx.ids, kind)
    assert callable(ctx.targets)  # resolve_targets gives no ids only for a callable
    return RowScorer(ctx.targets, kind, k=int(ctx.scores.shape[1]))


def _zero_channels(out: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    out = out.clone()
    out[torch.arange(len(channels)), channels] = 0
    return out
