"""Ready-made targets for models that are not classifiers: detectors, segmenters, embedding models.

The Grad-CAM paper explains "any target concept": a target is any differentiable scalar of the model's
output per sample (:mod:`camlens.targets`). These callables build the usual ones; each takes the model's
output as the model returns it and gives scores (B,) or (B, K), so every method of the registry can use
them, also the perturbation methods that score chunks of perturbed copies (each row reads its own
sample's box, mask or reference through :func:`camlens._inputs.row_owners`).

* :class:`BoxScore`: a detection of a torchvision detector (a list of per-image dicts with ``boxes``,
  ``labels``, ``scores``) found again by box and label. pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``
  (model_targets.py, version 1.5.7): the detection whose box has the highest IoU with the reference box
  is matched when that IoU is above ``iou_threshold`` (strictly, as there) and its label equals the
  reference label; its score is IoU + detection score, 0 when unmatched. pytorch-grad-cam sums over the
  reference boxes (one scalar per image); camlens keeps one column per box (K maps from one backward),
  ``reduce="sum"`` gives their sum.
* :class:`ClassDetections`: every detection of a class: the sum of their scores (above ``min_score``).
* :class:`RegionScore`: a segmenter's class logits summed over a mask or a box (pytorch-grad-cam's
  ``SemanticSegmentationTarget``: sum of ``output[category] * mask``); reads torchvision's ``{"out": ...}``.
* :class:`Similarity`: cosine similarity of each image's embedding to a reference embedding (or to a
  reference image's, :meth:`Similarity.to_image`), as pytorch-grad-cam's embedding tutorial
  (``SimilarityToConceptTarget``: ``CosineSimilarity(dim=0)(output, features)`` per image).

Examples:
    >>> dets = camlens.tasks.detect(detector, x)  # one dict per image
    >>> target = BoxScore(dets[0]["boxes"][:3][None], dets[0]["labels"][:3][None])
    >>> camlens.explain(detector, x, layer="backbone.fpn.layer_blocks.2", targets=target).raw.shape
    (1, 3, h, w)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camlens._inputs import row_owners
from camlens._state import preserved

__all__ = [
    "BoxScore",
    "ClassDetections",
    "RegionScore",
    "Similarity",
    "box_mask",
    "detect",
    "detections",
    "segmentation_logits",
]


def detections(output: Any) -> list[Mapping[str, torch.Tensor]]:
    """A detector's output checked: a list of per-image dicts with ``boxes`` (M, 4), ``labels`` and ``scores`` (M,)."""
    ok = isinstance(output, (list, tuple)) and all(
        isinstance(d, Mapping) and {"boxes", "labels", "scores"} <= set(d) for d in output
    )
    if not ok:
        got = type(output).__name__
        raise ValueError(
            f"a detection target needs a detector's output: a list of dicts with 'boxes', 'labels' and 'scores' "
            f"per image (torchvision detection models in eval mode), got {got}"
        )
    return list(output)


def detect(model: nn.Module, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """A detector's detections for ``inputs`` (B, 3, H, W), detached, under the model's lock; the model unchanged."""
    with preserved(model), torch.no_grad():
        found = detections(model(inputs))
    return [{k: v.detach() for k, v in d.items()} for d in found]


def _per_sample(value: Any, trailing: int, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` as (S, K, *trailing shape): one sample's or every sample's K entries (S = 1 or B)."""
    t = torch.as_tensor(value, dtype=dtype)
    while t.dim() < trailing + 2:
        t = t[None]
    if t.dim() != trailing + 2:
        raise ValueError(f"{name} must have at most {trailing + 2} dimensions, got shape {tuple(t.shape)}")
    return t


def _sample(table: torch.Tensor, owner: int) -> torch.Tensor:
    """Row ``owner`` of a per-sample table, or its only row when it holds one for all samples."""
    if table.shape[0] == 1:
        return table[0]
    if owner >= table.shape[0]:
        raise ValueError(f"the target holds {table.shape[0]} samples' data but the batch has sample {owner}")
    return table[owner]


class BoxScore:
    """Score of the detections matching reference boxes and labels: (B, K), or (B,) with ``reduce="sum"``.

    Args:
        boxes: reference boxes ``[x0, y0, x1, y1]`` in the model input's pixels: (4,), (K, 4) for every
            image, or (B, K, 4) per image.
        labels: their labels: an int, (K,) or (B, K).
        iou_threshold: a detection matches when its IoU with the box is above this (0.5, pytorch-grad-cam's).
        reduce: ``"none"`` (one score per box) or ``"sum"`` (pytorch-grad-cam's single score per image).

    Score per box: with j = argmax_i IoU(box, det_i), IoU_j + score_j if IoU_j > threshold and
    label_j == label, else 0 (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``). Both terms depend on the
    layer: the score through the classification head, the IoU through the box regression.

    Examples:
        >>> dets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([3]),
        ...          "scores": torch.tensor([0.9])}]
        >>> camlens.BoxScore([0, 0, 10, 10], 3)(dets)  # IoU 1 + score 0.9; a detector's output as it returns it
        tensor([[1.9000]])
    """

    def __init__(self, boxes: Any, labels: Any, iou_threshold: float = 0.5, reduce: str = "none") -> None:
        self.boxes = _per_sample(boxes, 1, "boxes", torch.float64)
        self.labels = _per_sample(labels, 0, "labels", torch.long)
        if self.boxes.shape[-1] != 4:
            raise ValueError(f"boxes must end in 4 coordinates (x0, y0, x1, y1), got shape {tuple(self.boxes.shape)}")
        if self.labels.shape[1] != self.boxes.shape[1]:
            raise ValueError(f"{self.boxes.shape[1]} boxes but {self.labels.shape[1]} labels per image")
        if not 0 <= iou_threshold < 1:
            raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
        if reduce not in ("none", "sum"):
            raise ValueError(f"reduce must be 'none' or 'sum', got {reduce!r}")
        self.iou_threshold, self.reduce = float(iou_threshold), reduce

    def __call__(self, output: Any) -> torch.Tensor:
        from torchvision.ops import box_iou

        dets = detections(output)
        owners = row_owners(len(dets))
        rows = []
        for det, owner in zip(dets, owners.tolist()):
            boxes, scores = det["boxes"], det["scores"]
            ref = _sample(self.boxes, owner).to(boxes)
            labels = _sample(self.labels, owner).to(det["labels"].device)
            # zeros that keep the graph: a row without any match still has a (zero) gradient
            row = scores.sum() * 0 + torch.zeros(len(ref), dtype=scores.dtype, device=scores.device)
            if len(boxes):
                # degenerate (zero-area) boxes give 0 / 0: no overlap, and no NaN in the gradient
                ious = torch.nan_to_num(box_iou(ref, boxes), nan=0.0)  # (K, M)
                best = ious.argmax(1)
                iou = ious.gather(1, best[:, None])[:, 0]
                hit = (iou > self.iou_threshold) & (det["labels"][best] == labels)
                row = torch.where(hit, iou + scores[best], row)
            rows.append(row)
        out = torch.stack(rows)
        return out.sum(1) if self.reduce == "sum" else out


class ClassDetections:
    """Every detection of a class: the sum of their scores at or above ``min_score``, (B,) (or (B, K) for K labels).

    Examples:
        >>> dets = [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([3, 3]),
        ...          "scores": torch.tensor([0.9, 0.5])}]
        >>> camlens.ClassDetections(3, min_score=0.6)(dets)
        tensor([0.9000])
    """

    def __init__(self, label: int | Sequence[int], min_score: float = 0.0) -> None:
        self.labels = torch.as_tensor([label] if isinstance(label, int) else list(label), dtype=torch.long)
        self.single = isinstance(label, int)
        self.min_score = float(min_score)

    def __call__(self, output: Any) -> torch.Tensor:
        rows = []
        for det in detections(output):
            scores = det["scores"]
            keep = scores >= self.min_score
            same = det["labels"][None, :] == self.labels.to(scores.device)[:, None]  # (K, M)
            rows.append((scores[None, :] * (same & keep[None, :])).sum(1))
        out = torch.stack(rows)
        return out[:, 0] if self.single else out


def box_mask(box: Sequence[float], size: tuple[int, int]) -> torch.Tensor:
    """A (H, W) float mask that is 1 inside ``box`` ``[x0, y0, x1, y1)`` (end-exclusive pixels), 0 outside."""
    h, w = size
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"region {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
    mask = torch.zeros(h, w)
    mask[y0:y1, x0:x1] = 1
    return mask


def segmentation_logits(output: Any) -> torch.Tensor:
    """A segmenter's (B, classes, H, W) logits: the output itself or torchvision's ``output["out"]``, checked."""
    if isinstance(output, Mapping) and "out" in output:
        output = output["out"]
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"a region target needs a segmenter's output: (B, classes, H, W) logits or torchvision's "
            f"{{'out': logits}}, got {got}"
        )
    return output


class RegionScore:
    """A class's logits summed over a region: sum_{(i, j) in mask} y^c_{ij}, (B,) (or (B, K) for K classes).

    Args:
        category: the class (an int), or K classes.
        mask: (H, W) for every image or (B, H, W) per image, in the output's pixels; bool or weights.
        box: instead of a mask, ``[x0, y0, x1, y1)`` (end-exclusive) in the output's pixels.

    pytorch-grad-cam's ``SemanticSegmentationTarget`` (its tutorial takes the mask of the pixels predicted
    as the class); the whole output when neither mask nor box is given.

    Examples:
        >>> logits = torch.ones(1, 5, 8, 8)  # a segmenter's (B, classes, H, W) output
        >>> camlens.RegionScore(2, box=[0, 0, 4, 4])(logits)  # 16 pixels of class 2
        tensor([16.])
    """

    def __init__(self, category: int | Sequence[int], mask: Any = None, box: Sequence[float] | None = None) -> None:
        if mask is not None and box is not None:
            raise ValueError("give a mask or a box, not both")
        self.categories = [category] if isinstance(category, int) else list(category)
        self.single = isinstance(category, int)
        self.box = None if box is None else [float(v) for v in box]
        self.mask: torch.Tensor | None = None
        if mask is not None:
            m = torch.as_tensor(mask)
            m = m.float() if m.dtype == torch.bool or not m.is_floating_point() else m
            if m.dim() == 2:
                m = m[None]
            if m.dim() != 3:
                raise ValueError(f"mask must be (H, W) or (B, H, W), got shape {tuple(m.shape)}")
            self.mask = m

    def __call__(self, output: Any) -> torch.Tensor:
        logits = segmentation_logits(output)
        size = (int(logits.shape[-2]), int(logits.shape[-1]))
        if self.mask is None:
            mask = (box_mask(self.box, size) if self.box is not None else torch.ones(size))[None]
        else:
            mask = self.mask
            if tuple(mask.shape[-2:]) != size:
                raise ValueError(
                    f"the mask is {mask.shape[-1]}x{mask.shape[-2]} (WxH) but the segmenter's output is "
                    f"{size[1]}x{size[0]}; give a mask of the output's size"
                )
        owners = row_owners(int(logits.shape[0]))
        rows = owners.clamp(max=0) if mask.shape[0] == 1 else owners
        if mask.shape[0] != 1 and int(owners.max()) >= mask.shape[0]:
            raise ValueError(f"the mask holds {mask.shape[0]} images' regions but the batch has more samples")
        weights = mask[rows].to(logits)  # (n, H, W)
        picked = logits[:, self.categories]  # (n, K, H, W)
        out = (picked * weights[:, None]).sum((-2, -1))
        return out[:, 0] if self.single else out


class Similarity:
    """Cosine similarity of each image's embedding to a reference: cos(f(x), r), (B,).

    Args:
        reference: (D,) for every image or (B, D) per image (flattened from any shape after the batch).
        embedding: a callable picking the embedding from the model's output (e.g. ``lambda o: o["pooled"]``);
            default: the output itself, a (B, ...) tensor.

    As pytorch-grad-cam's ``SimilarityToConceptTarget`` (its embeddings tutorial): retrieval and
    CLIP-style models are explained by what makes an image close to a concept's embedding.

    Examples:
        >>> camlens.Similarity(torch.tensor([1.0, 0.0]))(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        tensor([1., 0.])
        >>> camlens.explain(model, x, targets=camlens.Similarity(model(x)[0].detach())).raw.shape
        torch.Size([1, 1, 2, 2])
    """

    def __init__(self, reference: torch.Tensor, embedding: Any = None) -> None:
        if not isinstance(reference, torch.Tensor):
            raise TypeError(f"reference must be a tensor embedding, got {type(reference).__name__}")
        ref = reference.detach()
        self.reference = ref.flatten()[None] if ref.dim() == 1 else ref.flatten(1)
        self.embedding = embedding

    @classmethod
    def to_image(cls, model: nn.Module, image: torch.Tensor, embedding: Any = None) -> Similarity:
        """The target "similar to ``image``'s embedding" (one image (C, H, W) or a batch, one per sample)."""
        x = image[None] if image.dim() == 3 else image
        with preserved(model), torch.no_grad():
            out = model(x)
        ref = embedding(out) if embedding is not None else out
        if not isinstance(ref, torch.Tensor):
            raise TypeError(f"the model's embedding must be a tensor, got {type(ref).__name__}; pass embedding=")
        return cls(ref.flatten(1), embedding)

    def __call__(self, output: Any) -> torch.Tensor:
        emb = self.embedding(output) if self.embedding is not None else output
        if not isinstance(emb, torch.Tensor) or emb.dim() < 2:
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(f"a similarity target needs a (B, D) embedding, got {got}; pass embedding=")
        flat = emb.flatten(1)
        if flat.shape[1] != self.reference.shape[1]:
            raise ValueError(f"the embedding has {flat.shape[1]} values but the reference {self.reference.shape[1]}")
        owners = row_owners(int(flat.shape[0]), flat.device)
        ref = self.reference.to(flat)
        ref = ref.expand(len(owners), -1) if ref.shape[0] == 1 else ref[owners]
        return F.cosine_similarity(flat, ref, dim=1)
