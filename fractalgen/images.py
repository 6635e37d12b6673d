"""Image grids for sample PNGs: numpy and Pillow only (sampling imports no Lightning)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["image_grid"]


def image_grid(images: np.ndarray, nrow: int, *, padding: int = 1, scale: int = 1) -> np.ndarray:
    """Tile uint8 images ``(N, C, H, W)`` into one ``(H', W', 3)`` uint8 grid.

    Grayscale images are repeated into RGB; ``scale`` enlarges each pixel (nearest
    neighbour, via Pillow) so that tiny images are visible.
    """
    from PIL import Image

    if images.ndim != 4:
        raise ValueError(f"expected images shaped (N, C, H, W), got {images.shape}")
    n, c, h, w = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=1)
    elif c != 3:
        images = np.repeat(images[:, :1], 3, axis=1)
    ncol = max(1, min(nrow, n))
    rows = max(1, math.ceil(n / ncol))
    sh, sw = h * scale, w * scale
    canvas = Image.new("RGB", (ncol * (sw + padding) + padding, rows * (sh + padding) + padding))
    for i in range(n):
        tile = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)), mode="RGB")
        if scale != 1:
            tile = tile.resize((sw, sh), Image.Resampling.NEAREST)
        r, col = divmod(i, ncol)
        canvas.paste(tile, (padding + col * (sw + padding), padding + r * (sh + padding)))
    return np.asarray(canvas, dtype=np.uint8)
