"""Exact activations with cheaper forms: GELU (erf form) and softplus.

``jax.nn.gelu(x, approximate=False)`` differentiates through ``erf``: reverse mode then keeps
``x`` and evaluates ``erf`` again plus an ``exp`` in the backward pass. :func:`gelu_erf` has a
``custom_jvp`` whose tangent is ``gelu'(x) * t`` with ``gelu'(x) = Phi(x) + x phi(x)`` computed
next to the forward value, so reverse mode stores that one factor and the backward pass is a
single multiply (forward mode, ``jax.jacfwd``, works as well). Written by hand because neither
jax nor flax ships a GELU with this derivative; measured on a 2-core CPU in
``benchmarks/README.md`` (TarFlow section).

:func:`softplus` is ``max(x, 0) + log1p(exp(-|x|))``, the expression ``jax.nn.softplus``
(``logaddexp(x, 0)``) evaluates, without ``logaddexp``'s NaN and infinity selects. On a 2-core
CPU, timed alone, it halves the time of the softplus in the VAE's Bernoulli log-likelihood (784
values per importance sample); in the whole importance-sampled NLL the gain is within the noise
(``benchmarks/README.md``, VAE section). Its derivative is ``sigmoid(x)`` from the same
``exp(-|x|)``.
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


@jax.custom_jvp
def softplus(x: jax.Array) -> jax.Array:
    """``log(1 + exp(x))`` elementwise, any shape and float dtype, computed stably as
    ``max(x, 0) + log1p(exp(-|x|))``: the values of ``jax.nn.softplus`` (NaN in, NaN out)."""
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    inv = 1.0 / (1.0 + e)
    sigmoid = jnp.where(x >= 0, inv, e * inv)
    return jnp.maximum(x, 0) + jnp.log1p(e), sigmoid * t
