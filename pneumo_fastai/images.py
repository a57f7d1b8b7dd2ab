"""Open any chest X-ray file as an 8-bit grayscale PIL image.

X-rays arrive as 8- or 16-bit grayscale, RGB, RGBA or palette images of any size. Everything
downstream (training, evaluation, prediction) sees the same thing: a mode "L" uint8 image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

RASTER_SUFFIXES: frozenset[str] = frozenset({".jpeg", ".jpg", ".png"})


def _to_uint8_gray(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to "L", stretching high bit depths to the full 0..255 range."""
    if img.mode == "L":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L")


def load_xray(path: Path | str, draft: int | None = None) -> Image.Image:
    """Read `path` as a mode "L" image; `draft` lets JPEG decode at a reduced scale >= draft px."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if draft is not None and img.format == "JPEG":
                    img.draft("L", (draft, draft))
                img = ImageOps.exif_transpose(img)
                img.load()
                return _to_uint8_gray(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            f"{path}: image is too large to open safely ({e}). Downsample it first."
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{path}: cannot be read as an image ({e}). Replace or remove the file."
        ) from e
