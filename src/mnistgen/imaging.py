"""Image grids as arrays and PNG files (Pillow), shared by data info, GAN grids and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_write


def tile(images: np.ndarray, rows: int, cols: int, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """(N, H, W) values in [0, 1] (or 8-bit levels 0-255) -> one (rows*(H+p)+p, cols*(W+p)+p) array in [0, 1];
    missing cells stay ``pad_value``."""
    images = np.asarray(images)
    images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    if images.ndim == 4:  # (N, 1, H, W)
        images = images[:, 0]
    n, h, w = images.shape
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value, np.float32)
    for index in range(min(n, rows * cols)):
        r, c = divmod(index, cols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top:top + h, left:left + w] = images[index]
    return grid


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as 8-bit levels 0-255 (rounded to the nearest; x = level / 255 within 1/510), the way
    MNIST itself stores pixels: a quarter of float32's size."""
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path: Path, image: np.ndarray, scale: int = 1) -> None:
    """Save a 2-D array in [0, 1] as an 8-bit grayscale PNG (atomically), optionally enlarged."""
    picture = Image.fromarray(to_uint8(image), mode="L")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    atomic_write(Path(path), lambda h: picture.save(h, format="PNG"))
