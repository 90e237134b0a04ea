"""The hand-written activations equal jax's: values, derivatives, edge cases."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.nn.activations import gelu_erf, softplus

X = jnp.concatenate([jnp.linspace(-100.0, 100.0, 20001),
                     jnp.array([0.0, -0.0, 1e-8, -1e-8, 88.7, -88.7, 1e30, -1e30])])


def test_softplus_values_equal_jax_including_infinities_and_nan():
    # the same expression; XLA may round the last bit differently at some optimisation levels
    np.testing.assert_allclose(softplus(X), jax.nn.softplus(X), rtol=2.5e-7, atol=0)
    np.testing.assert_allclose(jax.jit(softplus)(X), jax.jit(jax.nn.softplus)(X), rtol=2.5e-7,
                               atol=0)
    edge = jnp.array([jnp.inf, -jnp.inf, jnp.nan])
    np.testing.assert_array_equal(softplus(edge), [jnp.inf, 0.0, jnp.nan])
    np.testing.assert_array_equal(jax.nn.softplus(edge), [jnp.inf, 0.0, jnp.nan])


def test_softplus_derivative_is_the_sigmoid_in_both_modes():
    rev = jax.vmap(jax.grad(softplus))(X)
    fwd = jax.vmap(lambda x: jax.jvp(softplus, (x,), (jnp.ones_like(x),))[1])(X)
    np.testing.assert_allclose(rev, jax.nn.sigmoid(X), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fwd, rev, rtol=0, atol=0)
    assert float(jax.grad(softplus)(0.0)) == 0.5


def test_gelu_erf_equals_jax_gelu_and_its_derivative():
    x = jnp.linspace(-8.0, 8.0, 4001)
    np.testing.assert_allclose(gelu_erf(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu_erf))(x),
                               jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x),
                               atol=1e-5)
