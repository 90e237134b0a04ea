"""Trust-region anchors: observed points drawn without replacement, favouring high scores.

As the released NF-BO code does it (mlvlab/NFBO ``BO/optimizer.py``, ``acquisition``): ``k``
sequential draws; before each draw the scores of the points *not yet drawn* are min-max
normalised to [0, 1] (left as they are when they are all equal) and one point is drawn from
``softmax(normalised / temperature)``. The normalisation is recomputed over the remaining points
at every draw, so this is not the same as ``k`` draws without replacement from one fixed softmax.
The README runs use ``temperature = 0.01`` (the paper's App. I writes tau' = 0.1). A temperature
of 0 takes the top-k scores (the code's ``temperature == 0`` branch; LOL-BO's single anchor is the
argmax).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxflows.bo._checks import BOInputError


@functools.partial(jax.jit, static_argnames=("k",))
def sample_anchors(rng: jax.Array, y: jax.Array, k: int, temperature: float = 0.01,
                   valid: jax.Array | None = None) -> jax.Array:
    """y: [N] finite scores -> k distinct indices [k] (int32), in draw order; needs k <= N.

    ``valid``: optional bool [N]; only rows where it is True are drawn (a padded score array
    of a fixed size compiles once however many rows are filled). The caller makes sure at
    least ``k`` rows are valid.
    """
    y = jnp.asarray(y, jnp.float32)
    if not 1 <= k <= y.shape[0]:
        raise BOInputError(f"k={k} anchors must be in [1, {y.shape[0]}] (number of points)")
    valid = jnp.ones(y.shape, bool) if valid is None else jnp.asarray(valid, bool)
    y = jnp.where(valid, y, 0.0)

    def draw(remaining, key):
        lo = jnp.min(jnp.where(remaining, y, jnp.inf))
        hi = jnp.max(jnp.where(remaining, y, -jnp.inf))
        normed = jnp.where(hi > lo, (y - lo) / jnp.where(hi > lo, hi - lo, 1.0), y)
        logits = jnp.where(remaining, normed / jnp.maximum(temperature, 1e-30), -jnp.inf)
        i = jax.random.categorical(key, logits)
        return remaining.at[i].set(False), i.astype(jnp.int32)

    _, idx = jax.lax.scan(draw, valid, jax.random.split(rng, k))
    top = jax.lax.top_k(jnp.where(valid, y, -jnp.inf), k)[1].astype(jnp.int32)
    return jnp.where(temperature > 0, idx, top)
