"""Sample grids: tile ``[N, H, W, C]`` images in [0, 1] into one PNG (Pillow)."""

from __future__ import annotations

import math
import os

import numpy as np


def make_grid(images: np.ndarray, ncol: int = 8, pad: int = 2, pad_value: float = 1.0
              ) -> np.ndarray:
    """Tiles ``images: [N, H, W, C]`` (C = 1 or 3, values in [0, 1]) into one uint8 array
    ``[rows*(H+pad)+pad, ncol*(W+pad)+pad, C]``; empty cells and borders are ``pad_value``."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
    if ncol <= 0:
        raise ValueError(f"ncol must be positive, got {ncol}")
    n, h, w, c = images.shape
    ncol = min(ncol, max(n, 1))
    rows = max(1, math.ceil(n / ncol))
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = images[i]
    grid = np.nan_to_num(grid, nan=0.0)
    return np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)


def save_grid(images: np.ndarray, path: str | os.PathLike, ncol: int = 8, pad: int = 2) -> None:
    """Writes ``images: [N, H, W, C]`` in [0, 1] as a PNG grid with ``ncol`` columns."""
    from PIL import Image

    grid = make_grid(images, ncol=ncol, pad=pad)
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
