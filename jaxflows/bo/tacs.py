"""TACS: token-level adaptive candidate sampling (NF-BO, Lee et al. ICLR 2025, Eq. 17-18).

Computed as the released code does (mlvlab/NFBO ``BO/optimizer.py``, ``acquisition``, and
``BO/model/utils/turbo.py``, ``generate_batch``): for an anchor with latent ``z: [L, F]`` and
tokens ``x: [L]``,

1. for every token position ``i``, copy ``z`` and replace ``z_i`` by one draw from N(0, I)
   (a single Monte-Carlo sample); decode the ``L`` copies in one call;
2. ``n_i`` = number of positions whose decoded token differs from ``x``; with the smoothed
   likelihood ``p(x_t | v_t) = 0.9 * 1[match] + 0.05`` the PMI estimate is
   ``omega_i = L log 0.95 - sum_t log(0.9 * 1[match_t] + 0.05) = n_i * log(0.95 / 0.05)``;
3. ``w = L * softmax(omega / tau)`` (mean 1), ``tau = 400``;
4. every one of token ``i``'s F latent dims is perturbed with probability ``min(0.1 * w_i, 1)``
   (the code's ``U / w_i <= 0.1``), i.e. the paper's ``pi_i = min(kappa * s_i, 1)`` with
   ``kappa = 0.1 L``.

A decoded copy that is not a valid sequence counts as changed everywhere in the released code
(its tokens stay NaN): a ``decode_tokens`` that returns an out-of-vocabulary value (e.g. -1)
for invalid rows reproduces that. Without TACS the probability is 0.1 for every dim.
The flattening order of the probabilities is ``z.reshape(-1)`` (token-major), as the GP's input.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bo._checks import BOInputError

LOG_RATIO = float(np.log(0.95 / 0.05))


def resample_tokens(rng: jax.Array, z: jax.Array) -> jax.Array:
    """z: [..., L, F] -> [..., L, L, F]: copy i has token i replaced by N(0, I) noise."""
    l = z.shape[-2]
    noise = jax.random.normal(rng, z.shape, z.dtype)
    copies = jnp.broadcast_to(z[..., None, :, :], z.shape[:-2] + (l,) + z.shape[-2:])
    eye = jnp.eye(l, dtype=bool)[:, :, None]
    return jnp.where(eye, noise[..., None, :, :], copies)


def tacs_scores(rng: jax.Array, z: jax.Array, x: jax.Array,
                decode_tokens: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """omega: [..., L] = n_i * log(0.95 / 0.05) for z: [..., L, F], x: [..., L] int.

    ``decode_tokens(z [B, L, F]) -> int [B, L]`` is called once with B = (batch size) * L.
    """
    if z.ndim < 2 or x.shape != z.shape[:-1]:
        raise BOInputError(f"need z [..., L, F] and x [..., L], got {z.shape} and {x.shape}")
    l, f = z.shape[-2:]
    copies = resample_tokens(rng, z)
    dec = decode_tokens(copies.reshape(-1, l, f)).reshape(copies.shape[:-1])
    changed = (dec != x[..., None, :]).sum(-1)
    return changed.astype(jnp.float32) * LOG_RATIO


def tacs_weights(omega: jax.Array, temperature: float = 400.0) -> jax.Array:
    """omega: [..., L] -> w = L * softmax(omega / temperature): [..., L] (mean 1)."""
    return omega.shape[-1] * jax.nn.softmax(omega / temperature, axis=-1)


def perturb_prob(rng: jax.Array, z: jax.Array, x: jax.Array,
                 decode_tokens: Callable[[jax.Array], jax.Array], *,
                 temperature: float = 400.0, base_prob: float = 0.1,
                 enabled: bool = True) -> jax.Array:
    """Per-latent-dim perturbation probabilities [..., L * F] for anchors z: [..., L, F].

    ``enabled=False`` gives the uniform ``base_prob`` (no decode call).
    """
    l, f = z.shape[-2:]
    if not enabled:
        return jnp.full(z.shape[:-2] + (l * f,), base_prob, jnp.float32)
    w = tacs_weights(tacs_scores(rng, z, x, decode_tokens), temperature)
    prob = jnp.minimum(base_prob * w, 1.0)
    return jnp.repeat(prob, f, axis=-1)
