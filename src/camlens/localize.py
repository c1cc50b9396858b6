"""Boxes from maps by the CAM paper's protocol (Zhou et al. 2016, sec. 3.1).

"We segment the regions of which the value is above 20% of the max value of the CAM. Then we take the
bounding box that covers the largest connected component in the segmentation map."
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

__all__ = ["box_from_map", "components", "iou"]


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean (H, W) mask, each as an (N, 2) array of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        found.append(np.array(pixels))
    return found


def box_from_map(cam: torch.Tensor | np.ndarray, threshold: float = 0.2) -> tuple[int, int, int, int] | None:
    """Bounding box [x0, y0, x1, y1) of the largest connected region above ``threshold`` x max.

    Coordinates are in the map's pixels, end-exclusive. ``None`` for a map whose maximum is not
    positive (nothing to localise).
    """
    m = cam.detach().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    if m.ndim != 2:
        raise ValueError(f"expected a (H, W) map, got shape {m.shape}")
    peak = float(m.max())
    if not peak > 0:
        return None
    parts = components(m >= threshold * peak)
    largest = max(parts, key=len)
    (r0, c0), (r1, c1) = largest.min(0), largest.max(0)
    return int(c0), int(r0), int(c1) + 1, int(r1) + 1


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
