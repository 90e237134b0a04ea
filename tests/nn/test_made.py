"""MADE: the autoregressive mask property for arbitrary orders, context, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bijectors import MADEConditioner
from jaxflows.nn.made import MADE, made_masks

D = 6


def _random_params(made, x, context=None, seed=0):
    @jax.jit
    def init(key):
        params = made.init(key, x, context)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        return jax.tree.unflatten(tree, [p + jax.random.normal(k, p.shape)
                                         for p, k in zip(leaves, keys)])

    return init(jax.random.key(seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_output_depends_only_on_earlier_inputs(seed):
    order = tuple(int(i) for i in np.random.default_rng(seed).permutation(D))
    made = MADE(features=D, hidden=(12, 12), num_params=2, order=order)
    x = jax.random.normal(jax.random.key(seed), (D,))
    params = _random_params(made, x, seed=seed)
    jac = np.asarray(jax.jit(jax.jacfwd(lambda x: made.apply(params, x)))(x))   # [P, D, D]
    assert jac.shape == (2, D, D)
    order = np.asarray(order)
    allowed = order[None, :] < order[:, None]                          # [out i, in j]
    for p in range(2):
        np.testing.assert_array_equal(jac[p][~allowed], 0.0)
    # non-trivial: the last output in the order sees some earlier input
    last = int(np.argmax(order))
    assert np.any(jac[:, last][:, allowed[last]] != 0)


def test_context_reaches_every_output_and_zero_init():
    made = MADE(features=D, hidden=(8,), order=None)
    x, h = jnp.ones((3, D)), jnp.ones((3, 4))
    params0 = jax.jit(made.init)(jax.random.key(0), x, h)
    np.testing.assert_array_equal(made.apply(params0, x, h), 0.0)   # zero-initialised output
    params = _random_params(made, x, h)
    out = made.apply(params, x, h)
    assert out.shape == (3, 2, D)
    g = jax.jit(jax.jacfwd(lambda h: made.apply(params, x[0], h)))(h[0])   # [2, D, 4]
    assert np.all(np.abs(np.asarray(g)).sum(-1) > 0)


def test_masks_and_validation():
    masks = made_masks(4, (5, 5), (3, 2, 1, 0), num_params=2)
    assert [m.shape for m in masks] == [(4, 5), (5, 5), (5, 8)]
    with pytest.raises(ValueError, match="permutation"):
        MADE(features=3, order=(0, 0, 1)).init(jax.random.key(0), jnp.ones(3))
    with pytest.raises(ValueError, match=r"shape \(4,\).*\[\.\.\., 3\]"):
        MADE(features=3).init(jax.random.key(0), jnp.ones(4))


@pytest.mark.parametrize("with_context", [False, True])
def test_plain_conditioner_is_the_same_function_as_the_flax_made(with_context):
    """bijectors.MADEConditioner (no Flax) and nn.MADE: same layout, bitwise same outputs."""
    order = (4, 2, 0, 5, 1, 3)
    made = MADE(features=D, hidden=(12, 7), order=order)
    plain = MADEConditioner(features=D, hidden=(12, 7), order=order)
    x = jax.random.normal(jax.random.key(1), (3, D))
    h = jax.random.normal(jax.random.key(2), (3, 4)) if with_context else None
    params = _random_params(made, x, h)
    mine = plain.init(jax.random.key(0), x, h)
    assert jax.tree.structure(mine) == jax.tree.structure(params)
    assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, params)
    np.testing.assert_array_equal(made.apply(mine, x, h), 0.0)    # zero-initialised output too
    np.testing.assert_array_equal(plain.apply(params, x, h), made.apply(params, x, h))
    for a, b in zip(plain.masks(), made.masks()):
        np.testing.assert_array_equal(a, b)


def test_mask_math_is_shared_with_bijectors():
    from jaxflows.bijectors import made_masks as mm
    from jaxflows.nn import made as nn_made

    assert nn_made.made_masks is mm.made_masks and nn_made.check_order is mm.check_order
    assert nn_made.made_degrees is mm.made_degrees
