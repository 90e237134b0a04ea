"""GELU with the exact (erf) form and a cheaper derivative, numerically the same function.

``jax.nn.gelu(x, approximate=False)`` differentiates through ``erf``: reverse mode then keeps
``x`` and evaluates ``erf`` again plus an ``exp`` in the backward pass. :func:`gelu_erf` has a
``custom_jvp`` whose tangent is ``gelu'(x) * t`` with ``gelu'(x) = Phi(x) + x phi(x)`` computed
next to the forward value, so reverse mode stores that one factor and the backward pass is a
single multiply (forward mode, ``jax.jacfwd``, works as well). Written by hand because neither
jax nor flax ships a GELU with this derivative; measured on a 2-core CPU in
``benchmarks/README.md`` (TarFlow section).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _phi_cdf(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


@jax.custom_jvp
def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU ``x * Phi(x)`` (``Phi`` the standard normal CDF via ``erf``), elementwise, any
    shape and float dtype; the same values as ``jax.nn.gelu(x, approximate=False)`` and
    PyTorch's ``nn.GELU()``."""
    return x * _phi_cdf(x)


@gelu_erf.defjvp
def _gelu_erf_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = _phi_cdf(x)
    pdf = jnp.asarray(_INV_SQRT_2PI, x.dtype) * jnp.exp(-0.5 * x * x)
    return x * cdf, (cdf + x * pdf) * t
