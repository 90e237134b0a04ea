"""Pixel transforms used inside jitted steps: binarization and (de)quantisation.

All functions are pure ``jax.numpy`` and shape-polymorphic: ``image_uint8`` is any uint8 array
(e.g. ``[B, H, W, C]``) and the result has the same shape.

Dequantisation convention: a uint8 value ``x`` owns the interval ``[x, x + 1) / 256`` of the unit
interval, mapped affinely to ``[-1, 1)``: ``y = ((x + u) / 256) * 2 - 1`` with ``u`` in ``[0, 1)``.
:func:`to_uint8` is the inverse, ``floor((y + 1) / 2 * 256)`` clipped to 0..255, and recovers
``x`` exactly from any ``y`` this module produces. A density on ``y`` converts to bits per
dimension of the discrete data as ``(nll_y + D * log(128)) / (D * log 2)`` (the Jacobian of the
map from ``[0, 256)`` to ``[-1, 1)`` is ``1/128`` per dimension).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "dequantize_deterministic",
    "dynamic_binarize",
    "to_uint8",
    "to_unit",
    "uniform_dequantize",
]


def to_unit(image_uint8: jax.Array) -> jax.Array:
    """``image / 255`` as float32 in [0, 1] (same shape)."""
    return jnp.asarray(image_uint8).astype(jnp.float32) / 255.0


def dynamic_binarize(rng: jax.Array, image_uint8: jax.Array) -> jax.Array:
    """A fresh Bernoulli draw per pixel with ``p = image / 255``: float32 in {0, 1}, same shape.

    Deterministic given ``rng``; 0 stays 0 and 255 stays 1, so images already in {0, 255}
    (e.g. from ``FixedBinarizedSource``) pass through unchanged.
    """
    p = to_unit(image_uint8)
    u = jax.random.uniform(rng, p.shape, dtype=jnp.float32)
    return (u < p).astype(jnp.float32)


#: Largest noise used: ``u`` is clipped to ``[0, 1 - 2**-16]`` (a clip that affects a float32
#: uniform with probability ~1.5e-5) so that in float32 ``x + u`` never rounds up to ``x + 1``
#: and ``y`` stays far enough below its bin's upper edge for ``to_uint8`` to recover ``x``.
MAX_NOISE = 1.0 - 2.0**-16


def _dequantize(image_uint8: jax.Array, u: jax.Array) -> jax.Array:
    """``((x + u) / 256) * 2 - 1`` in float32 for noise ``u`` in [0, 1) (same shape as x)."""
    x = jnp.asarray(image_uint8).astype(jnp.float32)
    u = jnp.clip(jnp.asarray(u, jnp.float32), 0.0, MAX_NOISE)
    return (x + u) / 128.0 - 1.0


def uniform_dequantize(rng: jax.Array, image_uint8: jax.Array) -> jax.Array:
    """Uniform dequantisation ``((x + u) / 256) * 2 - 1``, ``u ~ U[0, 1)``: float32 in [-1, 1).

    Same shape as the input. ``floor((y + 1) / 2 * 256) == x`` for every output.
    """
    u = jax.random.uniform(rng, jnp.shape(image_uint8), dtype=jnp.float32)
    return _dequantize(image_uint8, u)


def dequantize_deterministic(image_uint8: jax.Array) -> jax.Array:
    """Bin centres ``((x + 0.5) / 256) * 2 - 1``: float32 in (-1, 1), same shape (eval, plots)."""
    return _dequantize(image_uint8, jnp.float32(0.5))


def to_uint8(x: jax.Array) -> jax.Array:
    """Inverse of the dequantisation: ``clip(floor((x + 1) / 2 * 256), 0, 255)`` as uint8.

    ``x`` is float in [-1, 1] (values outside are clipped); same shape. Use it to turn model
    samples into sample-grid pixels.
    """
    v = jnp.floor((jnp.asarray(x, jnp.float32) + 1.0) * 128.0)
    return jnp.clip(v, 0.0, 255.0).astype(jnp.uint8)
