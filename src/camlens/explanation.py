"""The result object every method returns and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Explanation", "normalize_maps"]


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map (over its last two dims) to [0, 1]: (m - min m) / (max m - min m).

    A map whose range is within a few float ulps of its magnitude (a constant map, or the rounding noise
    that bilinear upsampling leaves on one) becomes all zeros, never NaN and never amplified noise.

    Examples:
        >>> camlens.normalize_maps(torch.tensor([[1.0, 3.0], [5.0, 2.0]]))
        tensor([[0.0000, 0.5000],
                [1.0000, 0.2500]])
    """
    flat = maps.flatten(-2)
    low = flat.amin(-1, keepdim=True)
    high = flat.amax(-1, keepdim=True)
    span = high - low
    scale = torch.maximum(high.abs(), low.abs())
    tiny = torch.finfo(maps.dtype).eps * 16
    ok = span > tiny * scale
    out = torch.where(ok, (flat - low) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.view_as(maps)


@dataclass
class Explanation:
    """Class activation maps for a batch: B samples, K targets each.

    Attributes:
        raw: (B, K, h, w) signed, unnormalised maps at the layer's resolution, before the final ReLU
            (so negative and counterfactual evidence is kept and magnitudes compare across classes).
        targets: (B, K) class ids, or ``None`` when the targets were a callable.
        scores: (B, K) the target scores of the unperturbed forward pass: for class-id targets the
            model's raw outputs at those ids (logits, before any softmax), for a callable target its value.
            Probabilities are :attr:`probabilities`; the CLI, JSON and report name them ``logit`` and
            ``probability``, never an unnamed "score".
        output: the model's output for the batch, detached.
        method: registry name of the method.
        layer: the layer explained, as ``layer=`` accepts it.
        input_size: (H, W) of the model input.
        pixels: (B, K, C, H, W) signed input-space attributions of the pixel methods (saliency, guided
            backprop, deconvnet, guided Grad-CAM, ...), ``None`` for class activation maps. Their ``raw`` is
            the displayable view: max_c |pixels| for gradient-like methods, the signed per-pixel map for
            methods with one value per pixel (LIME, occlusion, RISE).

    ``maps`` is computed on first access: ReLU(raw), bilinearly upsampled to ``input_size``, min-max
    normalised per map (:func:`normalize_maps`); boxes follow the CAM paper (Zhou et al. 2016, sec. 4.1):
    the largest connected region above ``threshold`` x max, end-exclusive ``[x0, y0, x1, y1)``.

    Examples:
        >>> exp = camlens.explain(model, x, method="gradcam", targets="top3")
        >>> exp.raw.shape, exp.maps.shape, exp.targets.shape
        (torch.Size([1, 3, 2, 2]), torch.Size([1, 3, 64, 64]), torch.Size([1, 3]))
    """

    raw: torch.Tensor
    targets: torch.Tensor | None
    scores: torch.Tensor
    output: Any
    method: str
    layer: str
    input_size: tuple[int, int]
    pixels: torch.Tensor | None = None
    _maps: torch.Tensor | None = field(default=None, repr=False)

    @property
    def maps(self) -> torch.Tensor:
        """(B, K, H, W) in [0, 1]: ReLU(raw), bilinear upsampling to the input, per-map min-max."""
        if self._maps is None:
            from camlens.geometry import resize

            up = resize(self.raw.clamp(min=0), self.input_size)
            self._maps = normalize_maps(up)
        return self._maps

    @property
    def probabilities(self) -> torch.Tensor | None:
        """(B, K) softmax probabilities of the target classes (``None`` for callable targets or non-tensor outputs)."""
        if self.targets is None or not isinstance(self.output, torch.Tensor) or self.output.dim() != 2:
            return None
        return self.output.float().softmax(1).gather(1, self.targets.to(self.output.device))

    @property
    def batch_size(self) -> int:
        return int(self.raw.shape[0])

    @property
    def num_targets(self) -> int:
        return int(self.raw.shape[1])

    def boxes(
        self, threshold: float = 0.2, size: tuple[int, int] | None = None
    ) -> list[list[tuple[int, int, int, int] | None]]:
        """Per sample and target, the CAM paper's box [x0, y0, x1, y1) (see :mod:`camlens.geometry`).

        Args:
            threshold: a fraction of the map's max (the CAM paper: 0.2).
            size: (H, W) of the pixels the box is in: the photo's for boxes on the photo (what
                ``camlens explain`` prints and ``camlens evaluate`` scores); default the model input's.
        """
        from camlens.geometry import box, original_maps

        size = self.input_size if size is None else size
        out: list[list[tuple[int, int, int, int] | None]] = []
        for b in range(self.batch_size):
            row: list[tuple[int, int, int, int] | None] = []
            for k in range(self.num_targets):
                found = box(original_maps(self.raw[b, k], size), threshold)
                row.append(None if found is None else (found[0], found[1], found[2], found[3]))
            out.append(row)
        return out

    def overlay(self, images: Any, alpha: float = 0.5, cmap: str = "jet") -> list[list[Any]]:
        """Heatmaps over the photos: one PIL image per sample and target, at each photo's size.

        The map drawn is the one boxes are computed on (:func:`camlens.geometry.original_maps`).

        Args:
            images: one PIL image (or HxWx3 uint8 array) per sample, e.g. the photos before preprocessing.
        """
        from PIL import Image

        from camlens import viz
        from camlens.geometry import original_maps

        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(images) != self.batch_size:
            raise ValueError(f"overlay needs one image per sample: got {len(images)} for a batch of {self.batch_size}")
        result = []
        for b, image in enumerate(images):
            photo = image if hasattr(image, "convert") else Image.fromarray(image)
            size = (photo.height, photo.width)
            result.append(
                [
                    viz.overlay(photo, original_maps(self.raw[b, k], size).cpu().numpy(), alpha, cmap)
                    for k in range(self.num_targets)
                ]
            )
        return result

    def _repr_png_(self) -> bytes:
        """Notebooks show an Explanation as a picture: its maps, one row per sample, one column per target."""
        import io

        from PIL import Image

        from camlens import viz

        tiles = [
            Image.fromarray(viz.colorize(self.maps[b, k].float().numpy()))
            for b in range(self.batch_size)
            for k in range(self.num_targets)
        ]
        buffer = io.BytesIO()
        viz.grid(tiles, columns=self.num_targets).save(buffer, format="PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        b, _, h, w = self.raw.shape
        ids = "callable" if self.targets is None else self.targets.tolist()
        return (
            f"Explanation(method={self.method!r}, layer={self.layer!r}, batch={b}, targets={ids}, "
            f"raw={h}x{w}, input={self.input_size[0]}x{self.input_size[1]})"
        )
