"""The one image loader of camlens, and preprocessing that records its geometry.

:func:`load_image` decodes any image file into 8-bit RGB (EXIF orientation on request, palette, RGBA,
16-bit), checking the pixel budget from the header before decoding. :func:`preprocess_with_geometry`
resizes the whole photo to the model's input (no crop), so every pixel of the photo is explained, and
returns the :class:`~camlens.geometry.Geometry` that maps maps and boxes back onto the original exactly.

``camlens.zoo`` re-exports every name here (``camlens.zoo.load_image`` is the same function).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from camlens.geometry import Geometry

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "load_image",
    "preprocess",
    "preprocess_with_geometry",
    "to_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

MAX_PIXELS = 89_478_485
"""Default pixel budget of :func:`load_image` (PIL's own decompression-bomb limit): about 9459 x 9459."""


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = MAX_PIXELS,
    upright: bool = True,
    formats: Sequence[str] | None = None,
) -> Any:
    """An RGB PIL image from a file, whatever its mode; the one image loader of camlens.

    Grayscale, RGBA (composited on white), palette and 16-bit images become 8-bit RGB. The pixel
    budget is checked from the file's header, before anything is decoded, so an image that claims
    60000 x 60000 pixels costs nothing.

    Args:
        path: the image file (untrusted: its header is checked before decoding).
        max_pixels: refuse images with more pixels than this (``None``: no limit; default PIL's
            89.5 megapixels).
        upright: apply the EXIF orientation (photos as a person sees them). Data sets pass ``False``:
            their annotations refer to the stored pixel grid.
        formats: PIL format names to accept (``("PNG", "JPEG")``); ``None`` accepts every format PIL reads.
            Only these decoders are tried, so a file of another format is refused before any decoder of
            it runs (the app takes uploads from a browser this way).

    Raises:
        ValueError: the file is missing, not an image, truncated, or over the pixel budget; the
            message names the path.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1 or None, got {max_pixels}")
    img: Image.Image | None = None
    try:
        with warnings.catch_warnings():
            # our own budget replaces PIL's global one (which we never change): no bomb warning noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path, formats=None if formats is None else list(formats))
            try:
                width, height = opened.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ValueError(
                        f"{path}: {width} x {height} = {width * height:,} pixels is over the budget of "
                        f"{max_pixels:,} (raise it with --max-pixels if you trust the file)"
                    )
                opened.load()  # closes the file of a single-frame image: the decoded pixels stay
                # no second photo-sized copy unless one is needed (a rotation, or a multi-frame file)
                if upright and opened.getexif().get(0x0112, 1) not in (None, 1):
                    img = ImageOps.exif_transpose(opened)
                elif getattr(opened, "n_frames", 1) > 1:
                    img = opened.copy()
                else:
                    img = opened
            finally:
                if img is not opened:
                    opened.close()
    except Image.DecompressionBombError as err:
        # PIL refuses past twice its limit before we can read the size: its message has the count
        import re

        found = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(found.group(1)):,} pixels" if found else "the image"
        if max_pixels is not None and found and int(found.group(1)) > max_pixels:
            limit = f"the budget of {max_pixels:,} (raise it with --max-pixels if you trust the file)"
        else:
            limit = "PIL's decompression-bomb limit"
        raise ValueError(f"{path}: {count} is over {limit}") from err
    except UnidentifiedImageError as err:
        if formats is not None:
            raise ValueError(f"{path}: not an image of an accepted format ({', '.join(formats)})") from err
        raise ValueError(f"{path}: not an image file PIL can read") from err
    except (OSError, SyntaxError, EOFError) as err:
        raise ValueError(f"{path}: unreadable or truncated image ({err})") from err
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(arr.max()))
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")  # (convert would copy an RGB image)


def _rgb_array(image: Any) -> tuple[np.ndarray, float]:
    """PIL image or (H, W[, 3|4]) array -> (H, W, >=3) array (no float copy) and its full-scale value."""
    if hasattr(image, "convert"):
        image = image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {array.shape}")
    scale = 65535.0 if array.dtype == np.uint16 else 255.0 if array.dtype == np.uint8 else 1.0
    return array, scale


def to_tensor(image: Any) -> torch.Tensor:
    """PIL image or (H, W[, 3|4]) uint8 array -> (3, H, W) float in [0, 1]."""
    array, scale = _rgb_array(image)
    tensor = torch.from_numpy(np.ascontiguousarray(array[..., :3]).astype(np.float32))
    return tensor.div_(scale).permute(2, 0, 1)


def preprocess(
    image: Any, size: int = 224, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """An RGB image (PIL image or HxWx3 array) -> (1, 3, size, size) normalised tensor (no crop)."""
    return preprocess_with_geometry(image, size, mean, std)[0]


def preprocess_with_geometry(
    image: Any, size: int = 224, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> tuple[torch.Tensor, Geometry]:
    """Like :func:`preprocess`, also returning the :class:`Geometry` to map results back."""
    # one channel at a time (interpolation is per channel anyway): a 50-megapixel photo needs one
    # 200 MB float plane at a time instead of a 600 MB float image
    pil = hasattr(image, "getchannel")
    if pil:  # PIL hands out one 8-bit channel at a time: no full-size array copy of the photo
        image = image if image.mode == "RGB" else image.convert("RGB")
        original, scale = (int(image.height), int(image.width)), 255.0
    else:
        array, scale = _rgb_array(image)
        original = (int(array.shape[0]), int(array.shape[1]))
    planes = []
    for c in range(3):
        channel = np.asarray(image.getchannel(c)) if pil else np.ascontiguousarray(array[..., c])
        plane = torch.from_numpy(channel.astype(np.float32)).div_(scale)
        planes.append(F.interpolate(plane[None, None], size=(size, size), mode="bilinear", antialias=True)[0, 0])
        del plane
    x = torch.stack(planes)[None]
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x, Geometry(original, (size, size))
