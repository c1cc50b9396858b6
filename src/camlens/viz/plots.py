"""Figures of results: the sanity check's curves and maps, faithfulness curves, example pictures.

Metrics return numbers; the pictures of them are drawn here. Figures are built on a
``matplotlib.figure.Figure`` of their own (no pyplot: no global figure list and no change of the user's
backend) and written as PNG by the Agg renderer; matplotlib (the ``viz`` extra) is imported inside each
function, so ``import camlens.viz`` does not need it.

Examples:
    >>> from camlens.viz import plot_sanity
    >>> plot_sanity([sanity_check(model, x, "gradcam")], "sanity.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlens.viz.overlays import draw_box, overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from camlens.metrics.sanity import SanityResult

__all__ = ["example_picture", "plot_curves", "plot_sanity"]

# resolution of every PNG figure: a figure of w x h inches is (w x 110) x (h x 110) pixels
DPI = 110

_CURVE_TITLES = {
    "deletion": "Deletion (lower AUC is better)",
    "insertion": "Insertion (higher AUC is better)",
    "road_morf": "ROAD, most relevant first (lower is better)",
    "road_lerf": "ROAD, least relevant first (higher is better)",
}


def _figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches, detached from pyplot."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'camlens[viz]'") from err
    return Figure(figsize=(width, height))


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def _tile(m: np.ndarray, pixel: bool) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if pixel:
        # as the paper's grayscale figures: clip at the 99th percentile, then scale to [0, 1]
        top = np.percentile(m, 99)
        m = np.clip(m / top, 0, 1) if top > 0 else np.zeros_like(m)
    return m


def _photo(image: Any) -> np.ndarray:
    """A photo (PIL, H x W (x 3) array, or (C, H, W) tensor) as a float array in [0, 1] for ``imshow``."""
    import torch

    if isinstance(image, torch.Tensor):
        t = image.detach().cpu().float()
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        out = t.numpy().astype(np.float64)
        return (out - out.min()) / max(float(out.max() - out.min()), 1e-12)
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    return arr.astype(np.float64) / (255.0 if arr.dtype == np.uint8 else 1.0)


def _columns(layers: Sequence[str], result: SanityResult) -> list[int]:
    """For each step of ``result``, the index in ``layers`` of the step that leaves the same blocks randomised.

    A step that randomises several of the reference blocks at once (``"_blocks.15+_blocks.14"``) is
    drawn at the last of them: in cascading mode both leave the same blocks re-initialised.
    """
    index = {name: i for i, label in enumerate(layers) for name in label.split("+")}
    out = []
    for label in result.layers:
        names = label.split("+")
        missing = [n for n in names if n not in index]
        if missing:
            raise ValueError(
                f"{result.method}: block {missing[0]!r} is not among the blocks of the other results; "
                "plot results with different blocks separately"
            )
        out.append(max(index[n] for n in names))
    return out


def plot_sanity(
    results: Sequence[SanityResult], path: str | Path, images: Any = None, threshold: float = 0.5, sample: int = 0
) -> Path:
    """One PNG for one or several sanity checks, laid out as Adebayo et al.'s Fig. 2 and Fig. 4.

    Top: one panel per similarity measure (Spearman of the shown maps, Spearman of |maps|, SSIM), mean
    over samples against the randomised block, one curve per method (shaded: interquartile range over
    samples for a single method). Below: one row of maps per method, the original model's map first,
    then the map after each step (for ``sample``); pixel-method maps are clipped at their 99th
    percentile, as the paper displays them (gray), class activation maps use ``jet`` on [0, 1].

    The figure is 13 inches wide (wider when there are many steps) at 110 dpi; from the top: a 0.5 in
    title, 2.4 in curves, 1 in of tick labels, 0.95 in of map labels and one row of map tiles per
    method (up to 1 in each), 0.1 in margin; the maps start 1 in from the left.

    Args:
        results: :class:`camlens.metrics.sanity.SanityResult` objects; each one's blocks must be blocks,
            or unions of blocks, of the one with the most steps (a method checked on coarser steps is
            drawn at the matching columns).
        path: the PNG to write.
        images: optional photos, one per sample (PIL, HxWx3 array or (3, H, W) tensor); ``images[sample]``
            is drawn at the start of each row.
        threshold: drawn as a dashed line.
        sample: which sample's maps to draw.

    Returns:
        the path written.
    """
    results = list(results)
    if not results:
        raise ValueError("plot_sanity needs at least one SanityResult")
    from matplotlib import colormaps

    reference = max(results, key=lambda r: len(r.layers))
    layers = reference.layers
    columns = {id(r): _columns(layers, r) for r in results}
    photos = None
    if images is not None:
        photos = list(images) if isinstance(images, (list, tuple)) else [images]
    steps = len(layers)
    with_maps = [r for r in results if r.maps is not None and r.maps.shape[1] > sample]
    several = len(results) > 1
    cols = steps + 1 + (1 if photos else 0)
    # layout in inches, from the top: title, curves, their tick labels, map labels, one row per method
    tile, left_in, right_in = 0.8, 1.0, 1.6 if several else 0.2
    title_in, curves_in, ticks_in, labels_in, bottom_in = 0.5, 2.4, 1.0, 0.95 if with_maps else 0.0, 0.1
    fig_w = max(13.0, left_in + right_in + cols * tile)
    tile = min(tile * 1.25, (fig_w - left_in - right_in) / cols)
    fig_h = title_in + curves_in + ticks_in + labels_in + tile * len(with_maps) + bottom_in
    fig = _figure(fig_w, fig_h)

    def y(inches: float) -> float:
        return 1 - inches / fig_h

    left, right = left_in / fig_w, 1 - right_in / fig_w
    gs_curves = fig.add_gridspec(1, 3, left=left, right=right, top=y(title_in), bottom=y(title_in + curves_in))
    gs_curves.update(wspace=0.15)
    x = np.arange(steps)
    names = [("spearman", "Spearman (shown maps)"), ("spearman_abs", "Spearman (|signed maps|)"), ("ssim", "SSIM")]
    palette = colormaps["tab20"]

    def colors(i: int) -> Any:  # the 10 dark shades first, then the 10 light ones
        return palette((2 * i) % 20 + (2 * i // 20) % 2)

    positions = results[0].position
    split = not several and "downstream" in positions and "upstream" in positions
    for j, (metric, title) in enumerate(names):
        ax = fig.add_subplot(gs_curves[0, j])
        if split:
            ax.axvspan(-0.5, positions.index("upstream") - 0.5, color="0.9", lw=0)
        for i, r in enumerate(results):
            values = np.asarray(getattr(r, metric), dtype=np.float64)
            at = columns[id(r)]
            ax.plot(at, values.mean(1), marker="o", ms=2.5, lw=1.3, color=colors(i), label=r.method)
            if not several and values.shape[1] > 1:
                q1, q3 = np.percentile(values, [25, 75], axis=1)
                ax.fill_between(at, q1, q3, color=colors(i), alpha=0.25, lw=0)
        if metric != "ssim":
            ax.axhline(threshold, ls="--", lw=0.8, color="grey")
        ax.axhline(0, lw=0.5, color="black")
        ax.set_ylim(-1.05 if metric != "ssim" else -0.05, 1.05)
        ax.set_xlim(-0.5, steps - 0.5)
        ax.set_xticks(x)
        ax.set_xticklabels(layers, rotation=90, fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        if j == 0:
            ax.set_ylabel("similarity to the original map", fontsize=8)
        if j == 2 and several:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        if j == 0 and split:
            ax.text(-0.3, -0.97, "grey: blocks after the explained layer", fontsize=6)
    if with_maps:
        gs_maps = fig.add_gridspec(
            len(with_maps),
            cols,
            left=left,
            right=left + cols * tile / fig_w,
            top=y(title_in + curves_in + ticks_in + labels_in),
            bottom=y(fig_h - bottom_in),
            wspace=0.05,
            hspace=0.05,
        )
        labels = ["original", *layers]
        for i, r in enumerate(with_maps):
            assert r.maps is not None
            c0 = 0
            if photos:
                ax = fig.add_subplot(gs_maps[i, 0])
                ax.imshow(_photo(photos[min(sample, len(photos) - 1)]))
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_ylabel(r.method, fontsize=7, rotation=0, ha="right", va="center")
                c0 = 1
            for s, col in enumerate([-1, *columns[id(r)]][: r.maps.shape[0]]):
                ax = fig.add_subplot(gs_maps[i, c0 + 1 + col])
                cmap = "gray" if r.pixel_method else "jet"
                ax.imshow(_tile(r.maps[s, sample], r.pixel_method), cmap=cmap, vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if s == 0 and not photos:
                    ax.set_ylabel(r.method, fontsize=7, rotation=0, ha="right", va="center")
        for col, label in enumerate(labels):
            ax = fig.add_subplot(gs_maps[0, (1 if photos else 0) + col], frameon=False)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=6, rotation=90, va="bottom")
    what = f"{results[0].method} at {results[0].layer}; " if not several else ""
    fig.suptitle(
        f"Model parameter randomisation test (Adebayo et al. 2018): {what}{results[0].mode} randomisation, "
        f"from the logits down; {f'mean over {results[0].spearman.shape[1]} sample(s)' if not several else 'means'}",
        fontsize=10,
        y=y(0.12),
        va="top",
    )
    return _save(fig, path)


def plot_curves(curves: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Mean faithfulness curves of several methods: one panel per kind, one line per method.

    Args:
        curves: ``{method: {kind: {"fractions": [...], "scores": [...]}}}``, kinds among ``deletion``,
            ``insertion``, ``road_morf``, ``road_lerf`` (others are titled by their key), as
            :class:`camlens.evaluate.Evaluation` keeps them. Lines take matplotlib's default colour
            cycle (``C0``, ``C1``, ...) in the order of ``curves``.
        path: the PNG to write; 4.2 x 3.4 inches per panel at 110 dpi (462 x 374 pixels each).

    Returns:
        the path written.
    """
    kinds = sorted({k for c in curves.values() for k in c})
    if not kinds:
        raise ValueError("plot_curves: no curve to draw; give {method: {kind: {'fractions', 'scores'}}}")
    fig = _figure(4.2 * len(kinds), 3.4)
    axes = fig.subplots(1, len(kinds), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for name, c in curves.items():
            if kind in c:
                ax.plot(c[kind]["fractions"], c[kind]["scores"], label=name)
        ax.set_title(_CURVE_TITLES.get(kind, kind), fontsize=9)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("score of the predicted class")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def example_picture(
    photo: Any, cam: np.ndarray, gt_boxes: Any, box: Sequence[int] | None, label: str, width: int = 256
) -> Any:
    """A localisation example: the map's heatmap over the photo, ground-truth boxes in red, the predicted
    box in green with ``label`` on a dark band, resized to ``width`` pixels (aspect ratio kept).

    Args:
        photo: RGB PIL image, the pixel grid of the boxes.
        cam: (H, W) map in [0, 1] at the photo's size.
        gt_boxes: (n, 4) ground-truth boxes [x0, y0, x1, y1), rounded to whole pixels for drawing.
        box: the predicted [x0, y0, x1, y1) box, or None.
        label: the caption.
        width: width of the picture returned.

    Returns:
        an RGB PIL image of ``width`` x round(width x H / W) pixels.
    """
    import torch

    from camlens.geometry import resize

    # resize first, draw after: lines and the caption keep their size on small images (48 px digits)
    scale = width / photo.width
    size = (width, max(1, round(photo.height * scale)))
    if size != photo.size:
        photo = photo.resize(size)
        cam = resize(torch.as_tensor(np.asarray(cam, dtype=np.float32)), (size[1], size[0])).numpy()
    picture = overlay(photo, cam)
    for gt in np.asarray(gt_boxes).reshape(-1, 4):
        picture = draw_box(picture, [int(np.rint(v * scale)) for v in gt], None, color="#ff3333", copy=False)
    shown = None if box is None else [int(np.rint(v * scale)) for v in box]
    return draw_box(picture, shown, label, color="#00ff66", copy=False)
