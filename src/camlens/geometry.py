"""The one path from a low-resolution map to original-image pixels and a box.

Every consumer (``camlens explain``, :meth:`camlens.Explanation.boxes` / ``overlay``, ``camlens
evaluate``, ``camlens bench wsol``, the report) goes through :func:`original_maps` and
:func:`box`, so the box ``explain`` prints is the box ``evaluate`` scores.

The path, following the CAM authors' ILSVRC script (``ILSVRC_generate_heatmap.m``: the class map is
resized to the original image and divided by its maximum; negative values do not survive the 8-bit
heatmap it writes) and the CAM paper, sec. 3.1 ("we segment the regions of which the value is above
20% of the max value of the CAM"):

1. ReLU of the method's raw map at the layer's resolution (NaN and inf count as 0);
2. bilinear resize (``align_corners=False``), straight from the layer's grid to the photo's
   (H0, W0): the preprocessing is a plain resize of the whole photo (:class:`Geometry`), so the
   layer's grid spans the photo exactly;
3. division by the map's maximum: values in [0, 1], where ``threshold`` means a fraction of the max
   (an all-zero map stays zero);
4. the box: the largest 8-connected region above ``threshold`` (default 0.2), its bounding box
   ``[x0, y0, x1, y1)`` in original pixels (:func:`camlens.localize.box_from_map`).

Where we depart: the authors resize with MATLAB's ``imresize`` (bicubic, which overshoots and can
go negative near edges); we resize bilinearly, which stays within the map's range. Choe et al.'s
MaxBoxAcc / MaxBoxAccV2 / PxAP sweeps min-max normalise the same map before their thresholds
(:mod:`camlens.metrics.localization`), as their paper does; :attr:`camlens.Explanation.maps` is a
min-max view at the model input's resolution, for display and the input-perturbation metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Geometry", "box", "original_maps", "resize"]


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) maps -> (..., H, W): THE map resizer of camlens (bilinear, half-pixel centres).

    ``align_corners=False`` is the convention of PIL, ``cv2.INTER_LINEAR`` and the CAM authors'
    ``imresize``; bilinear never overshoots the input's range. The dtype is kept (float64 stays
    float64); integer maps become float32.
    """
    if maps.dim() < 2:
        raise ValueError(f"maps: expected (..., h, w), got shape {tuple(maps.shape)}")
    lead, (h, w) = tuple(maps.shape[:-2]), tuple(maps.shape[-2:])
    x = maps if maps.is_floating_point() else maps.float()
    x = x.reshape(-1, 1, h, w)
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *x.shape[-2:])


def original_maps(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) raw maps -> (..., H, W) float32 maps in [0, 1] at ``size``: ReLU, bilinear, / max.

    Maps are resized one at a time, so K maps of a 50-megapixel photo never need K photo-sized
    temporaries at once. See the module docstring for the protocol and its source.
    """
    if raw.dim() < 2:
        raise ValueError(f"raw: expected (..., h, w) maps, got shape {tuple(raw.shape)}")
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be a positive (H, W), got {size!r}")
    lead = tuple(raw.shape[:-2])
    flat = raw.detach().reshape(-1, *raw.shape[-2:])
    out = torch.empty((flat.shape[0], height, width), dtype=torch.float32, device=raw.device)
    for i, m in enumerate(flat):
        positive = m.float().nan_to_num(0.0, 0.0, 0.0).clamp_(min=0)
        up = resize(positive, (height, width))
        peak = float(up.max())
        out[i] = up.div_(peak) if peak > 0 else up.zero_()
    return out.reshape(*lead, height, width)


def box(cam: torch.Tensor | np.ndarray, threshold: float = 0.2) -> list[int] | None:
    """The CAM paper's box of a map from :func:`original_maps`: ``[x0, y0, x1, y1)`` or ``None``.

    The largest 8-connected region where ``cam > threshold * max(cam)``; ``None`` when nothing is
    positive.
    """
    from camlens.localize import box_from_map

    found = box_from_map(cam, threshold)
    return None if found is None else list(found)


@dataclass(frozen=True)
class Geometry:
    """How a photo of ``original`` (H0, W0) became a model input of ``size`` (H, W): a plain resize.

    A crop or a letterbox would add fields here and change :meth:`to_original`; every consumer would
    follow, since none maps pixels by itself.
    """

    original: tuple[int, int]
    size: tuple[int, int]

    def to_original(self, raw: torch.Tensor) -> torch.Tensor:
        """(..., h, w) raw maps (any resolution: the layer's, or the input's for pixel methods) ->
        (..., H0, W0) maps in [0, 1] on the photo (:func:`original_maps`)."""
        return original_maps(raw, self.original)

    def boxes(self, raw: torch.Tensor, threshold: float = 0.2) -> list[list[int] | None]:
        """One CAM-paper box per raw map (flattened over the leading dims), in original pixels."""
        flat = raw.reshape(-1, *raw.shape[-2:])
        return [box(self.to_original(m), threshold) for m in flat]

    def map_to_original(self, maps: torch.Tensor) -> torch.Tensor:
        """(..., H, W) maps at the input's resolution -> (..., H0, W0), bilinear, clamped to [0, 1].

        For maps already at the input's resolution (``Explanation.maps``); raw maps should go through
        :meth:`to_original`, the path boxes are computed on.
        """
        return resize(maps.float(), self.original).clamp_(0, 1)

    def box_to_original(self, box: tuple[int, int, int, int]) -> list[int]:
        """[x0, y0, x1, y1) in input pixels -> the smallest box covering the same region in original pixels."""
        sy, sx = self.original[0] / self.size[0], self.original[1] / self.size[1]
        x0, y0, x1, y1 = box
        return [
            int(np.floor(x0 * sx)),
            int(np.floor(y0 * sy)),
            min(self.original[1], int(np.ceil(x1 * sx))),
            min(self.original[0], int(np.ceil(y1 * sy))),
        ]
