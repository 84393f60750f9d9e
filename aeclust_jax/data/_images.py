"""Decoding and resizing of single gray images (PNG, JPEG, BMP, ...) with Pillow."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from aeclust_jax.data._base import DatasetError


def decode_gray(data: bytes, where: str) -> np.ndarray:
    """Image file bytes -> uint8 (H, W) grayscale; unreadable data raises DatasetError naming ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # Transparent background -> white paper, then gray.
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im.convert("RGBA"))
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{where}: not a readable image ({type(e).__name__}: {e})") from e


def resize_gray(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) -> uint8 (size, size), Lanczos (antialiased when shrinking); no-op if same size."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
