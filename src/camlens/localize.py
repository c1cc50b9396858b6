"""Boxes from maps by the CAM paper's protocol: kept as a name; the code lives in :mod:`camlens.geometry`.

``camlens.localize.box_from_map`` and friends are the same objects as ``camlens.geometry``'s, the one
path from a map to a box (one place, so the box ``explain`` prints is the box ``evaluate`` scores).
"""

from camlens.geometry import box_from_map, boxes_from_map, components, iou, resize_map

__all__ = ["box_from_map", "boxes_from_map", "components", "iou", "resize_map"]
