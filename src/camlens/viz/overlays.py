"""Pictures people can read: heatmap overlays with the box and label drawn, grids of top-k maps.

Colormaps come from matplotlib (the ``viz`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["colorize", "draw_box", "grid", "overlay", "pixel_image", "signed_map"]


def _lut(cmap: str) -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colormap, index i for values in [i/256, (i+1)/256)."""
    try:
        from matplotlib import colormaps
    except ImportError as err:
        raise ImportError("pictures need matplotlib: pip install 'camlens[viz]'") from err
    colours = colormaps[cmap].resampled(256)(np.arange(256))[:, :3]
    return (colours * 255 + 0.5).astype(np.uint8)


def _levels(cam: np.ndarray) -> np.ndarray:
    """(H, W) map in [0, 1] -> uint8 colour indices floor(256 x value) (NaN -> 0), in row blocks."""
    cam = np.asarray(cam)
    levels = np.empty(cam.shape, np.uint8)
    rows = max(1, (1 << 22) // max(1, cam.shape[-1]))  # ~16 MB of float32 at a time
    for start in range(0, cam.shape[0], rows):
        block = np.multiply(cam[start : start + rows], 256.0, dtype=np.float32)
        np.nan_to_num(block, copy=False, nan=0.0)
        np.clip(block, 0.0, 255.0, out=block)
        levels[start : start + rows] = block
    return levels


def colorize(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) uint8 colours.

    A 256-entry lookup table indexed by uint8 levels, exactly what matplotlib's 256-colour maps do.
    """
    return _lut(cmap)[_levels(cam)]


def overlay(image: Any, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Any:
    """The photo with the map's heatmap blended over it (a PIL image of the photo's size).

    The heatmap is a palette image (uint8 levels + the colormap as palette), so a 50-megapixel photo
    costs one extra byte per pixel before the blend, not a float64 RGBA array.
    """
    from PIL import Image

    photo = image if image.mode == "RGB" else image.convert("RGB")
    if cam.shape != (photo.height, photo.width):
        raise ValueError(f"map {cam.shape} and photo {(photo.height, photo.width)} differ in size")
    heat = Image.fromarray(_levels(cam), mode="L")
    heat.putpalette(_lut(cmap).tobytes())
    return Image.blend(photo, heat.convert("RGB"), alpha)


def draw_box(
    image: Any, box: Sequence[int] | None, label: str | None = None, color: str = "#00ff66", *, copy: bool = True
) -> Any:
    """Draw a [x0, y0, x1, y1) box and a label (on a dark band, readable on any photo).

    ``copy=False`` draws on ``image`` itself (no second photo-sized image for a fresh overlay).
    """
    from PIL import ImageDraw, ImageFont

    out = image.copy() if copy else image
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 150))
    if box is not None:
        x0, y0, x1, y1 = box
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=width)
    if label:
        size = max(12, round(min(out.size) / 22))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = max(2, size // 5)
        draw.rectangle([0, 0, right - left + 2 * pad, bottom - top + 2 * pad], fill=(0, 0, 0))
        draw.text((pad - left, pad - top), label, fill=(255, 255, 255), font=font)
    return out


def grid(images: Sequence[Any], columns: int | None = None, gap: int = 4) -> Any:
    """Tile PIL images of one size into a grid (e.g. the CAM paper's top-5 figure)."""
    from PIL import Image

    if not images:
        raise ValueError("grid needs at least one image")
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), (255, 255, 255))
    for i, img in enumerate(images):
        sheet.paste(img.resize((w, h)), ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return sheet


def pixel_image(pixels: np.ndarray) -> Any:
    """(3, H, W) signed attributions -> the papers' normalised gradient image (0 is mid-grey)."""
    from PIL import Image

    x = np.asarray(pixels, dtype=np.float64)
    x = x - x.mean()
    x = x / (x.std() + 1e-12) * 0.1 + 0.5
    return Image.fromarray((np.clip(x, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))


def signed_map(raw: np.ndarray, cell: int = 32, cmap: str = "RdBu_r") -> Any:
    """(h, w) signed raw map -> a PIL picture at its own resolution, each value a square of up to ``cell`` pixels.

    A diverging colormap centred on 0 and scaled by max |raw| (red positive, blue negative, white 0), so
    the sign and the relative magnitude that ReLU and min-max hide stay visible; nearest-neighbour cells
    show the layer's true resolution instead of an interpolated picture.
    """
    from PIL import Image

    values = np.asarray(raw, dtype=np.float64)
    finite = values[np.isfinite(values)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    levels = 0.5 + values / (2 * scale) if scale > 0 else np.full(values.shape, 0.5)
    picture = Image.fromarray(colorize(np.clip(levels, 0.0, 255 / 256), cmap))
    h, w = values.shape
    factor = max(1, min(cell, 512 // max(h, w)))  # at most 512 pixels a side unless the map is larger
    return picture.resize((w * factor, h * factor), Image.Resampling.NEAREST)
