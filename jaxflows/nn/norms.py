"""RMSNorm with a unit offset (Gemma style), as STARFlow's final norm (apple/ml-starflow,
``transformer_flow.py``): ``x / sqrt(mean(x^2) + eps) * (1 + w)`` with ``w`` initialised to 0,
statistics and the result in float32."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def rms_norm(x: jax.Array, weight: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x: [..., C]``, ``weight: [C]`` -> float32 ``x / rms(x) * (1 + weight)``."""
    x = x.astype(jnp.float32)
    norm = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return norm * (1.0 + weight.astype(jnp.float32))


class RMSNorm(nn.Module):
    """:func:`rms_norm` with its own ``scale [C]`` parameter (zeros: the identity scale)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x: [..., C]`` -> float32 ``[..., C]``."""
        w = self.param("scale", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                       (x.shape[-1],), jnp.float32)
        return rms_norm(x, w, self.eps)
