"""Pictures people can read: heatmap overlays, boxes and labels, grids, and figures of results.

* :mod:`camlens.viz.overlays`: colormaps, overlays, boxes with labels, grids, the papers' gradient images;
* :mod:`camlens.viz.plots`: figures of results (the sanity check's curves and maps, faithfulness curves,
  localisation examples).

Colormaps and figures come from matplotlib (the ``viz`` extra), imported only when a picture is drawn.

Examples:
    >>> from camlens import viz
    >>> viz.draw_box(viz.overlay(photo, cam), box, "tabby cat").save("cat.png")
"""

from camlens.viz.overlays import colorize, draw_box, grid, overlay, pixel_image, signed_map
from camlens.viz.plots import example_picture, plot_curves, plot_sanity

__all__ = [
    "colorize",
    "draw_box",
    "example_picture",
    "grid",
    "overlay",
    "pixel_image",
    "plot_curves",
    "plot_sanity",
    "signed_map",
]
