"""Properties of single bijector families (the generic invariants live in test_invariants.py)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxflows.bijectors import (
    IAF,
    MAF,
    ActNorm,
    CCLinearIAF,
    Householder,
    LinearIAF,
    MADEConditioner,
    NLSq,
    Permutation,
    Planar,
    Radial,
    SylvesterTriangular,
    actnorm_init,
    constrain_u,
    fill_strictly_lower,
)

D = 5


def normal(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


# --- volume-preserving flows -------------------------------------------------------------
def test_householder_is_orthogonal_with_exactly_zero_log_det():
    b = Householder(normal(0, (4, D)))
    x = normal(1, (7, D))
    y, ld = b.forward_and_log_det(x)
    np.testing.assert_array_equal(ld, np.zeros(7))
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1),
                               rtol=1e-5)
    u = b.matrix()
    np.testing.assert_allclose(u @ u.T, np.eye(D), atol=1e-5)
    np.testing.assert_allclose(y, x @ u.T, atol=1e-5)


def test_cc_linear_iaf_unit_diagonal_det_one_and_zero_log_det():
    b = CCLinearIAF(normal(0, (3, D, D)), logits=normal(1, (3,)))
    lower = np.asarray(b.lower_matrix())
    np.testing.assert_array_equal(np.diag(lower), 1.0)
    np.testing.assert_array_equal(np.triu(lower, 1), 0.0)
    assert np.prod(np.diag(lower)) == 1.0
    np.testing.assert_allclose(np.linalg.det(lower), 1.0, rtol=1e-5)
    _, ld = b.forward_and_log_det(normal(2, (4, D)))
    np.testing.assert_array_equal(ld, np.zeros(4))
    _, ild = b.inverse_and_log_det(normal(2, (4, D)))
    np.testing.assert_array_equal(ild, np.zeros(4))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), k=st.sampled_from([1, 4]), scale=st.sampled_from([0.1, 10.0]))
def test_cc_linear_iaf_weights_are_on_the_simplex(seed, k, scale):
    b = CCLinearIAF(normal(seed, (2, k, 3, 3)), logits=normal(seed + 1, (2, k), scale))
    w = np.asarray(b.weights)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


def test_cc_linear_iaf_with_one_component_equals_linear_iaf():
    m = normal(0, (2, D, D))
    x = normal(1, (2, D))
    lin = LinearIAF(m)
    for cc in (CCLinearIAF(m[:, None], logits=normal(2, (2, 1), 5.0)),
               CCLinearIAF(m[:, None], weights=jnp.ones((2, 1)))):
        np.testing.assert_allclose(cc.forward(x), lin.forward(x), rtol=1e-6)
        np.testing.assert_allclose(cc.inverse(x), lin.inverse(x), rtol=1e-6)
    # mixing then masking == the convex combination of the unit lower-triangular matrices
    mats = normal(3, (3, D, D))
    w = jax.nn.softmax(normal(4, (3,)))
    cc = CCLinearIAF(mats, weights=w)
    want = sum(w[k] * LinearIAF(mats[k]).lower_matrix() for k in range(3))
    np.testing.assert_allclose(cc.lower_matrix(), want, atol=1e-6)


@pytest.mark.parametrize("dim", [5, 40])
def test_cc_linear_iaf_from_entries_is_the_dense_transform(dim):
    k, batch = 3, 4
    mats = normal(0, (batch, k, dim, dim), 0.3)
    logits = normal(1, (batch, k))
    x = normal(2, (batch, dim))
    rows, cols = np.tril_indices(dim, -1)
    b = CCLinearIAF.from_entries(mats[..., rows, cols], dim, logits=logits)
    # the matrix: bitwise the mix of the full matrices, masked (the old construction)
    w = jax.nn.softmax(logits, -1)
    mixed = w[:, 0, None, None] * mats[:, 0]
    for j in range(1, k):
        mixed = mixed + w[:, j, None, None] * mats[:, j]
    dense = jnp.tril(mixed, -1) + jnp.eye(dim)
    np.testing.assert_array_equal(b.lower_matrix(), dense)
    np.testing.assert_array_equal(CCLinearIAF(mats, logits=logits).lower_matrix(), dense)
    np.testing.assert_array_equal(b.matrices, jnp.tril(mats, -1))
    y, ld = b.forward_and_log_det(x)
    np.testing.assert_allclose(y, jnp.einsum("bij,bj->bi", dense, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ld, np.zeros(batch))
    np.testing.assert_allclose(b.inverse(y), x, rtol=1e-4, atol=1e-4)
    # one example's Jacobian is its matrix
    jac = jax.jacfwd(lambda v: CCLinearIAF.from_entries(
        mats[0][..., rows, cols], dim,
        logits=logits[0]).forward(v))(x[0])
    np.testing.assert_allclose(jac, dense[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"D\(D-1\)/2"):
        CCLinearIAF.from_entries(jnp.zeros((k, 7)), dim, logits=jnp.zeros(k))


def test_linear_iaf_from_entries():
    entries = jnp.arange(1.0, 1.0 + D * (D - 1) // 2)
    b = LinearIAF.from_entries(entries, D)
    lower = np.asarray(b.lower_matrix())
    rows, cols = np.tril_indices(D, -1)
    np.testing.assert_array_equal(lower[rows, cols], entries)
    chex.assert_shape(fill_strictly_lower(jnp.zeros((2, 3, 6)), 4), (2, 3, 4, 4))


# --- planar / radial constraints ------------------------------------------------------------
@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), scale_u=st.floats(1e-3, 100.0),
       scale_w=st.floats(1e-2, 30.0))
def test_planar_constraint_holds_for_arbitrary_raw_u(seed, scale_u, scale_w):
    u = normal(seed, (8, D), scale_u)
    w = normal(seed + 1, (8, D), scale_w)
    wu_hat = jnp.sum(w * constrain_u(u, w), -1)
    slack = 1e-5 * (1.0 + scale_u * scale_w)
    assert np.all(np.asarray(wu_hat) >= -1.0 - slack)
    np.testing.assert_allclose(wu_hat, -1.0 + jax.nn.softplus(jnp.sum(w * u, -1)),
                               rtol=1e-4, atol=slack)
    b = Planar(u, w, normal(seed + 2, (8,)))
    _, ld = b.forward_and_log_det(normal(seed + 3, (8, D)))
    assert np.all(np.isfinite(ld))


def test_radial_beta_is_at_least_minus_alpha():
    b = Radial(normal(0, (D,)), jnp.array([-5.0, 0.0, 5.0]),
               jnp.array([-20.0, 0.0, 20.0]))
    assert np.all(np.asarray(b.beta) >= -np.asarray(b.alpha))
    x = normal(1, (3, D))
    np.testing.assert_allclose(b.inverse(b.forward(x)), x, atol=1e-4)


# --- NLSq --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nlsq_float32_round_trip_over_a_wide_range(seed):
    n = 64
    a, lb, c, ld, g = (normal(seed * 10 + i, (n,)) for i in range(5))
    # c_raw large -> |c| at 95% of the monotonicity bound: the hardest, most non-linear case
    b = NLSq(a, 0.5 * lb, 4.0 * c, 0.5 * ld, 2.0 * g)
    x = jnp.concatenate([
        jnp.linspace(-3.0, 3.0, 200),
        jnp.sign(jnp.linspace(-1, 1, 200)) * jnp.logspace(-4, 4, 200),
    ])[:, None] * jnp.ones((1, n))
    x = x.astype(jnp.float32)
    y, ld_f = jax.jit(b.forward_and_log_det)(x)
    xr, ld_i = jax.jit(b.inverse_and_log_det)(y)
    assert y.dtype == jnp.float32 and xr.dtype == jnp.float32
    err = np.abs(np.asarray(xr) - np.asarray(x)) / (1.0 + np.abs(np.asarray(x)))
    assert err.max() < 2e-5, err.max()
    np.testing.assert_allclose(ld_i, -ld_f, atol=1e-3, rtol=1e-5)


def test_nlsq_is_monotone_at_the_bound():
    _, b, c, d, g = NLSq(jnp.zeros(3), jnp.zeros(3), jnp.full(3, 30.0), jnp.zeros(3),
                         jnp.zeros(3), slack=0.999).coefficients()
    np.testing.assert_allclose(c, 0.999 * 8 * math.sqrt(3) / 9 * b / d, rtol=1e-5)
    t = jnp.linspace(-5, 5, 10001)[:, None]
    deriv = b - 2 * c * d * t / (1 + t**2) ** 2
    assert float(deriv.min()) > 0.0
    assert float(deriv.min()) < 0.01     # the bound is tight: f' nearly touches 0


# --- Sylvester, ActNorm, permutations ---------------------------------------------------------
def test_sylvester_triangular_identity_q_is_upper_triangular():
    r1, r2 = normal(0, (D, D), 0.3), normal(1, (D, D), 0.3)
    b = SylvesterTriangular(r1, r2, normal(2, (D,)), normal(3, (D,)), normal(4, (D,)))
    x = normal(5, (D,))
    j = np.asarray(jax.jacfwd(b.forward)(x))
    np.testing.assert_array_equal(np.tril(j, -1), 0.0)
    np.testing.assert_array_equal(b.autoregressive_order, np.arange(D)[::-1])
    np.testing.assert_allclose(b.inverse(b.forward(x)), x, atol=1e-5)


@pytest.mark.parametrize("side", ["inverse", "forward"])
def test_actnorm_init_standardises(side):
    x = 3.0 + 2.5 * normal(0, (500, D)) * jnp.arange(1.0, D + 1)
    b = ActNorm(*actnorm_init(x, side=side))
    out = b.inverse(x) if side == "inverse" else b.forward(x)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(0), 1.0, atol=1e-4)


def test_permutation_round_trip_and_validation():
    perm = jnp.array([2, 0, 1, 4, 3])
    b = Permutation(perm)
    x = normal(0, (D,))
    np.testing.assert_array_equal(b.forward(x), x[perm])
    np.testing.assert_array_equal(b.inverse(b.forward(x)), x)
    with pytest.raises(ValueError, match="not a permutation"):
        Permutation(jnp.array([0, 0, 1]))


# --- error messages ---------------------------------------------------------------------------
def test_wrong_event_shape_names_both_shapes():
    b = Planar(normal(0, (D,)), normal(1, (D,)), 0.5)
    with pytest.raises(ValueError, match=r"shape \(2, 4\).*events of shape \(5,\)"):
        b.forward(jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"shape \(\)"):
        b.inverse(jnp.zeros(()))


def test_mismatched_parameter_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"`w` has shape \(4,\).*`u` of shape \(5,\)"):
        Planar(jnp.ones(D), jnp.ones(4), 0.0)
    with pytest.raises(ValueError, match=r"`log_scale` has shape \(3, 4\).*`loc` of shape \(5,\)"):
        ActNorm(jnp.zeros(D), jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"`logits` has shape \(2,\).*`matrices` of shape"):
        CCLinearIAF(jnp.zeros((3, D, D)), logits=jnp.zeros(2))


def test_batch_shape_mismatch_names_both_shapes():
    b = Planar(normal(0, (3, D)), normal(1, (3, D)), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        b.forward(jnp.zeros((4, D)))


def test_invalid_parameter_values():
    with pytest.raises(ValueError, match="NaN"):
        Householder(jnp.array([[1.0, jnp.nan]]))
    with pytest.raises(ValueError, match="sum to 1"):
        CCLinearIAF(jnp.zeros((2, 3, 3)), weights=jnp.array([0.7, 0.7]))
    with pytest.raises(ValueError, match="exactly one"):
        CCLinearIAF(jnp.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="slack"):
        NLSq(*([jnp.zeros(3)] * 5), slack=1.5)


# --- autoregressive flows take any MADE-like conditioner -----------------------------------
def test_autoregressive_conditioner_is_duck_typed():
    made = MADEConditioner(features=D, hidden=(8,), order=(1, 0, 2, 4, 3))
    params = made.init(jax.random.key(0), jnp.zeros(D))
    params = jax.tree.map(lambda p: p + normal(1, p.shape, 0.3), params)
    x = normal(2, (4, D))
    for b in (IAF(made, params), MAF(made, params)):
        y, ld = b.forward_and_log_det(x)
        xr, ild = b.inverse_and_log_det(y)
        np.testing.assert_allclose(xr, x, atol=1e-5)
        np.testing.assert_allclose(ild, -ld, atol=1e-5)
        np.testing.assert_array_equal(b.autoregressive_order, made.order)
    with pytest.raises(ValueError, match="MADE-like conditioner.*missing"):
        IAF(object(), params)
    with pytest.raises(ValueError, match="num_params=2"):
        MAF(MADEConditioner(features=D, hidden=(8,), num_params=3), params)
    with pytest.raises(ValueError, match="permutation"):
        MAF(MADEConditioner(features=D, hidden=(8,), order=(0, 0, 1, 2, 3)), params)
