"""Decoding and resizing of single images (PNG, JPEG, BMP, ...) with Pillow."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from aeclust_jax.data._base import DatasetError


def _decode(data: bytes, where: str, mode: str) -> np.ndarray:
    """Image file bytes -> uint8 array in Pillow ``mode`` ('L' or 'RGB'), transparency
    composited on white paper; unreadable data raises DatasetError naming ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im.convert("RGBA"))
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{where}: not a readable image ({type(e).__name__}: {e})") from e


def decode_gray(data: bytes, where: str) -> np.ndarray:
    """Image file bytes -> uint8 (H, W) grayscale."""
    return _decode(data, where, "L")


def decode_image(data: bytes, where: str, channels: int) -> np.ndarray:
    """Image file bytes -> uint8 (H, W, channels), channels 1 (gray) or 3 (RGB)."""
    if channels == 1:
        return _decode(data, where, "L")[:, :, None]
    return _decode(data, where, "RGB")


def resize_gray(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) -> uint8 (size, size), Lanczos (antialiased when shrinking); no-op if same size."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, C), C in {1, 3} -> uint8 (size, size, C), Lanczos; no-op if same size."""
    if image.shape[2] == 1:
        return resize_gray(image[:, :, 0], size)[:, :, None]
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
