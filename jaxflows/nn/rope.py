"""Rotary position embeddings (RoPE) in the layout of STARFlow's ``misc/pe.py``.

STARFlow (Gu et al. 2025, "STARFlow: Scaling Latent Normalizing Flows for High-resolution Image
Synthesis"; code apple/ml-starflow) rotates queries and keys by angles that depend on a token's
2-D grid position (rows, columns) and, when the model is conditioned on a prefix, a third
"prefix" axis:

* ``head_dim / 2`` rotary pairs. Without a prefix axis they split evenly between rows and
  columns (``head_dim / 4`` each). With it, 8 pairs go to the prefix axis and the rest split
  evenly between rows and columns.
* Row/column frequencies ``1 / theta^(2i / d)`` for ``i < d / 2`` with ``d`` the number of
  pairs of the two grid axes together; prefix-axis frequencies ``1 / theta^(j / 8)``, ``j < 8``.
* Each frequency covers two adjacent channels (an interleaved pair ``(x_{2k}, x_{2k+1})``),
  rotated as ``(x_{2k}, x_{2k+1}) -> (x_{2k} cos - x_{2k+1} sin, x_{2k+1} cos + x_{2k} sin)``.
* Grid tokens sit at ``(row, col, 0)``, prefix tokens at ``(0, 0, k / T * L)`` (``T`` prefix
  tokens, ``L`` the reference length, ``sqrt(rows * cols)`` by default), prefix first. Grid
  positions are scaled by ``L / sqrt(rows * cols)`` (1 unless a model is run at another
  resolution than it was trained at).

Tables are built with NumPy at trace time (they depend only on static sizes) and indexed by a
token's *sequence* index: a flow block that permutes its tokens still reads row ``j`` of the
table for its ``j``-th token, as the official code does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.errors import ConfigError

#: rotary pairs reserved for the prefix axis (official ``dim_split = [dim - 8, 8]``)
PREFIX_AXIS_PAIRS = 8


def rope_frequencies(
    head_dim: int, prefix_axis: bool, theta: float = 10000.0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-axis frequencies: ``(f_grid [P], f_prefix [8] or None)``; rows and columns each use
    ``f_grid``, so ``2 P (+ 8)`` pairs fill ``head_dim / 2``."""
    if head_dim % 2:
        raise ConfigError(f"RoPE needs an even head_dim, got {head_dim}")
    pairs = head_dim // 2
    grid_pairs = pairs - PREFIX_AXIS_PAIRS if prefix_axis else pairs
    if grid_pairs <= 0 or grid_pairs % 2:
        what = f"head_dim/2 - {PREFIX_AXIS_PAIRS}" if prefix_axis else "head_dim/2"
        raise ConfigError(
            f"RoPE with head_dim {head_dim}{' and a prefix axis' if prefix_axis else ''} leaves "
            f"{grid_pairs} rotary pairs for rows and columns ({what}); it must be even and > 0")
    f_grid = 1.0 / theta ** (np.arange(0, grid_pairs, 2)[: grid_pairs // 2] / grid_pairs)
    f_prefix = None
    if prefix_axis:
        f_prefix = 1.0 / theta ** (np.arange(PREFIX_AXIS_PAIRS) / PREFIX_AXIS_PAIRS)
    return f_grid, f_prefix


def grid_positions(
    rows: int, cols: int, prefix_len: int = 0, prefix_axis: bool = False,
    ref_len: float = 0.0,
) -> np.ndarray:
    """Positions ``[prefix_len + rows*cols, 2 or 3]`` (prefix first, then the grid in raster
    order): ``(row, col)``, or ``(row, col, 0)`` and ``(0, 0, k / prefix_len * ref_len)`` with a
    prefix axis. ``ref_len`` 0 means ``sqrt(rows * cols)``."""
    if prefix_len and not prefix_axis:
        raise ConfigError("a RoPE prefix needs the prefix axis (prefix_axis=True)")
    mean_len = math.sqrt(rows * cols)
    ref = ref_len or mean_len
    pr = np.arange(rows) / mean_len * ref
    pc = np.arange(cols) / mean_len * ref
    pr, pc = (a.reshape(-1) for a in np.meshgrid(pr, pc, indexing="ij"))
    if not prefix_axis:
        return np.stack([pr, pc], axis=-1)
    pt = np.arange(prefix_len) / max(prefix_len, 1) * ref
    zeros_t = np.zeros_like(pt)
    pos = [np.concatenate([zeros_t, pr]), np.concatenate([zeros_t, pc]),
           np.concatenate([pt, np.zeros_like(pr)])]
    return np.stack(pos, axis=-1)


def rope_angles(
    positions: np.ndarray, f_grid: np.ndarray, f_prefix: np.ndarray | None = None
) -> np.ndarray:
    """Angles ``[L, head_dim]`` (float64) for ``positions: [L, 2 or 3]``: per axis
    ``pos * freqs``, axes concatenated, each pair's angle repeated for its two channels."""
    parts = [positions[:, 0:1] * f_grid, positions[:, 1:2] * f_grid]
    if positions.shape[1] == 3:
        if f_prefix is None:
            raise ValueError("3-axis positions need prefix-axis frequencies")
        parts.append(positions[:, 2:3] * f_prefix)
    return np.repeat(np.concatenate(parts, axis=-1), 2, axis=-1)


def rope_table(
    head_dim: int, rows: int, cols: int, prefix_len: int = 0, prefix_axis: bool = False,
    ref_len: float = 0.0, theta: float = 10000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)``, each float32 ``[prefix_len + rows*cols, head_dim]``, for a sequence of
    ``prefix_len`` prefix tokens followed by a ``rows x cols`` grid (see the module docstring)."""
    f_grid, f_prefix = rope_frequencies(head_dim, prefix_axis, theta)
    pos = grid_positions(rows, cols, prefix_len, prefix_axis, ref_len)
    ang = rope_angles(pos, f_grid, f_prefix)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rotate_pairs(x: jax.Array) -> jax.Array:
    """``(x_{2k}, x_{2k+1}) -> (-x_{2k+1}, x_{2k})`` along the last axis (official
    ``rotate_half``)."""
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    return jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x: [B, L, H, Dh]`` by per-position ``cos, sin: [L, Dh]``; float32 arithmetic,
    returns ``x.dtype``."""
    xf = x.astype(jnp.float32)
    c = jnp.asarray(cos, jnp.float32)[:, None, :]
    s = jnp.asarray(sin, jnp.float32)[:, None, :]
    return (xf * c + rotate_pairs(xf) * s).astype(x.dtype)
