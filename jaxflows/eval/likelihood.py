"""Likelihood estimators: importance-sampled NLL (memory-bounded) and bits per dimension.

The importance-sampling estimate of a latent-variable model's marginal likelihood is

    log p(x) ~= logsumexp_s w_s - log S,   w_s = log p(x, z_s) - log q(z_s | x),  z_s ~ q(.|x),

a stochastic lower bound (in expectation) on ``log p(x)`` that tightens as ``S`` grows (Burda et
al. 2016). With ``S = 5000`` samples (the VP-flow papers' setting) the weights of a whole eval batch
do not fit in memory at once, so :func:`importance_sampled_nll` draws them ``chunk`` samples at a
time inside a ``lax.scan`` and keeps a running ``logsumexp``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

LogWeightFn = Callable[[Any, jax.Array, jax.Array, int], jax.Array]


@functools.partial(jax.jit, static_argnames=("log_weight_fn", "num_samples", "chunk"))
def importance_sampled_nll(
    log_weight_fn: LogWeightFn,
    params: Any,
    x: jax.Array,
    rng: jax.Array,
    num_samples: int,
    chunk: int,
) -> jax.Array:
    """Importance-sampled negative log-likelihood ``-(logsumexp_s w_s - log S)`` per example.

    Args:
      log_weight_fn: ``(params, x, rng, n) -> [n, B]`` float log importance weights
        ``log p(x, z) - log q(z|x)`` for ``n`` fresh samples drawn with ``rng``. Must be hashable
        (a module-level function or a bound method; it is a static argument of the jit).
      params: the model params, passed through to ``log_weight_fn``.
      x: a batch ``[B, ...]`` passed through to ``log_weight_fn``.
      rng: PRNG key; chunk ``i`` uses ``fold_in(rng, i)``.
      num_samples: total number of importance samples ``S`` per example.
      chunk: samples drawn per step (memory ~ ``chunk * B``); ``S`` need not be a multiple,
        a final smaller chunk takes the remainder (it uses ``fold_in(rng, S // chunk)``).

    Returns:
      ``[B]`` float32 NLL estimates in nats (positive for discrete data).
    """
    if num_samples < 1 or chunk < 1:
        raise ValueError(f"num_samples and chunk must be >= 1, got {num_samples}, {chunk}")
    chunk = min(chunk, num_samples)
    num_full, rest = divmod(num_samples, chunk)

    def chunk_lse(i: jax.Array, n: int) -> jax.Array:
        w = log_weight_fn(params, x, jax.random.fold_in(rng, i), n).astype(jnp.float32)
        return jax.nn.logsumexp(w, axis=0)

    def body(acc: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
        return jnp.logaddexp(acc, chunk_lse(i, chunk)), None

    batch = jax.eval_shape(lambda: chunk_lse(0, chunk)).shape
    acc = jnp.full(batch, -jnp.inf, jnp.float32)
    acc, _ = jax.lax.scan(body, acc, jnp.arange(num_full))
    if rest:
        acc = jnp.logaddexp(acc, chunk_lse(num_full, rest))
    return -(acc - math.log(num_samples))


def bits_per_dim(nll_nats: jax.Array | float, num_dims: int) -> jax.Array:
    """Converts an NLL in nats (per example) to bits per dimension: ``nll / (num_dims * ln 2)``.

    The caller includes any dequantisation offset (e.g. ``num_dims * log 256`` for data scaled
    to [0, 1]) in ``nll_nats`` beforehand.
    """
    return jnp.asarray(nll_nats) / (num_dims * math.log(2.0))
