"""Amortized flows: ``module.apply(params, h)`` -> bijector on ``z: [B, M]``."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.nn import amortized as am

B, H, M = 3, 7, 4
FAST = {"xla_backend_optimization_level": 0}   # halves XLA compile time, the cost here

MODULES = {
    "householder": lambda: am.HouseholderFlow(M, 3),
    "cc_linear_iaf": lambda: am.CCLinearIAF(M, 3),
    "linear_iaf": lambda: am.LinearIAF(M),
    "planar": lambda: am.PlanarFlow(M, 2),
    "sylvester_orthogonal": lambda: am.SylvesterFlow(M, 1, kind="orthogonal", num_householder=2),
    "sylvester_triangular": lambda: am.SylvesterFlow(M, 2, kind="triangular"),
    "iaf": lambda: am.IAF(M, 2, hidden=16),
}


def _perturb(params, seed=5, scale=0.1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])


def _checks(mod, h, z):
    """One compile: init (moved off the identity init), forward, per-example Jacobians, grads."""
    params = _perturb(mod.init(jax.random.key(2), h))
    bij = mod.apply(params, h)
    zt, ld = bij.forward_and_log_det(z)

    def row(zi, i):   # example i of the batched flow as a function of z_i alone
        return bij.forward(z.at[i].set(zi))[i]

    jac = jax.vmap(jax.jacfwd(row), in_axes=(0, 0))(z, jnp.arange(z.shape[0]))

    def loss(p):
        zt, ld = mod.apply(p, h).forward_and_log_det(z)
        return jnp.sum(zt) + jnp.sum(ld)

    return bij, zt, ld, jac, jax.grad(loss)(params)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_shapes_log_det_and_grads(name):
    mod = MODULES[name]()
    h = jax.random.normal(jax.random.key(0), (B, H))
    z = jax.random.normal(jax.random.key(1), (B, M))
    bij, zt, ld, jac, g = jax.jit(_checks, static_argnums=0, compiler_options=FAST)(mod, h, z)
    assert isinstance(bij, distrax.Bijector)
    assert zt.shape == (B, M) and ld.shape == (B,)
    _, want = jnp.linalg.slogdet(jac)
    np.testing.assert_allclose(ld, want, atol=2e-4, rtol=1e-4)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))


def test_householder_flow_preserves_norms():
    mod = am.HouseholderFlow(M, 4)
    h = jax.random.normal(jax.random.key(0), (B, H))
    z = jax.random.normal(jax.random.key(1), (B, M))
    bij = mod.apply(jax.jit(mod.init)(jax.random.key(2), h), h)
    zt, ld = bij.forward_and_log_det(z)
    np.testing.assert_allclose(jnp.linalg.norm(zt, axis=-1), jnp.linalg.norm(z, axis=-1),
                               rtol=1e-5)
    np.testing.assert_array_equal(ld, 0.0)
    assert not np.allclose(zt, z)


def test_cc_linear_iaf_starts_at_identity_and_mixes_on_the_simplex():
    mod = am.CCLinearIAF(M, 5)
    h = jax.random.normal(jax.random.key(0), (B, H))
    z = jax.random.normal(jax.random.key(1), (B, M))
    params = jax.jit(mod.init)(jax.random.key(2), h)
    n = M * (M - 1) // 2
    assert params["params"]["matrices"]["kernel"].shape == (H, 5 * n)   # strictly-lower only
    bij = mod.apply(params, h)
    np.testing.assert_array_equal(bij.forward(z), z)
    np.testing.assert_allclose(bij.weights.sum(-1), 1.0, rtol=1e-6)
    assert bij.weights.shape == (B, 5)


def test_flows_compose_with_chain():
    h = jax.random.normal(jax.random.key(0), (B, H))
    z = jax.random.normal(jax.random.key(1), (B, M))
    mods = [am.PlanarFlow(M, 1), am.HouseholderFlow(M, 2)]

    @jax.jit
    def run(h, z):
        bijs = [m.apply(_perturb(m.init(jax.random.key(i), h)), h) for i, m in enumerate(mods)]
        chained = distrax.Chain(bijs[::-1]).forward_and_log_det(z)   # bijs[0] first
        z1, ld1 = bijs[0].forward_and_log_det(z)
        z2, ld2 = bijs[1].forward_and_log_det(z1)
        return chained, (z2, ld1 + ld2)

    (zt, ld), (z2, ld12) = run(h, z)
    np.testing.assert_allclose(zt, z2, atol=1e-6)
    np.testing.assert_allclose(ld, ld12, atol=1e-6)


def test_bad_context_shape():
    with pytest.raises(ValueError, match=r"\[B, H\]"):
        am.HouseholderFlow(M, 1).init(jax.random.key(0), jnp.ones(H))
