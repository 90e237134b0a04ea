"""Generic invariants, run over every bijector registered in ``jaxflows.bijectors.EXAMPLES``.

Compiled helpers take the bijector as a (pytree) argument, so each (kind, shape) compiles once
and hypothesis examples with new parameter values reuse it. They compile with XLA's backend
optimisation level 0, which halves compile time (the cost of this file on CPU); the chex
``with_jit`` variant below uses the default level and is compared with them.
"""

import functools

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxflows.bijectors import EXAMPLES

NAMES = sorted(EXAMPLES)
DIM = 5
# Bijectors whose Jacobian is triangular in a known order (``autoregressive_order``).
AUTOREGRESSIVE = ["cc_linear_iaf", "iaf", "linear_iaf", "maf", "sylvester_triangular"]

HYP = settings(max_examples=5, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def make(name, dim=DIM, seed=0):
    return EXAMPLES[name](jax.random.key(seed), dim)


def inputs(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def _roundtrip(b, x):
    """forward, inverse of the output, forward again."""
    y, ld = b.forward_and_log_det(x)
    xr, ild = b.inverse_and_log_det(y)
    yr, _ = b.forward_and_log_det(xr)
    return y, ld, xr, ild, yr


FAST = {"xla_backend_optimization_level": 0}
jit = functools.partial(jax.jit, compiler_options=FAST)
roundtrip = jit(_roundtrip)   # one compile per (kind, shape), shared by the tests below


@jit
def logdet_check(b, x):
    """For one event x: [D]: (log_det, Jacobian, inverse log_det at forward(x))."""
    y, ld = b.forward_and_log_det(x)
    _, ild = b.inverse_and_log_det(y)
    return ld, jax.jacfwd(b.forward)(x), ild


def split_float(b):
    """(float leaves, rebuild) so that jax.grad can differentiate w.r.t. the parameters."""
    leaves, treedef = jax.tree.flatten(b)
    is_f = [jnp.issubdtype(jnp.result_type(l), jnp.floating) for l in leaves]

    def rebuild(fl):
        it = iter(fl)
        return jax.tree.unflatten(treedef, [next(it) if f else l for l, f in zip(leaves, is_f)])

    return [l for l, f in zip(leaves, is_f) if f], rebuild


def assert_close(a, b, tol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# --- log-det against the Jacobian ------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@HYP
@given(seed=st.integers(0, 2**16), x_seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.1, 1.0, 3.0]))
def test_log_det_matches_slogdet_of_jacobian(name, seed, x_seed, scale):
    b = make(name, DIM, seed)
    x = inputs(x_seed, (DIM,), scale)
    ld, j, ild = logdet_check(b, x)
    sign, want = jnp.linalg.slogdet(j)
    assert float(sign) != 0.0
    chex.assert_shape(ld, ())
    tol = 2e-4 * (1.0 + abs(float(want)))
    assert_close(ld, want, tol)
    assert_close(ild, -ld, tol)   # inverse log-det at y = -forward log-det at x


# --- inverse(forward(x)) == x ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@HYP
@given(seed=st.integers(0, 2**16), x_seed=st.integers(0, 2**16),
       batch=st.sampled_from([(), (2, 3)]), scale=st.sampled_from([0.1, 1.0, 3.0]))
def test_inverse_round_trip_and_log_det(name, seed, x_seed, batch, scale):
    b = make(name, DIM, seed)
    x = inputs(x_seed, batch + (DIM,), scale)
    try:
        y, ld, xr, ild, yr = roundtrip(b, x)
    except NotImplementedError:
        pytest.skip(f"{name} has no inverse")
    chex.assert_shape([y, ld], [batch + (DIM,), batch])
    assert_close(xr, x, 1e-4 * (1.0 + float(jnp.max(jnp.abs(x)))))
    assert_close(ild, -ld, 1e-4 * (1.0 + float(jnp.max(jnp.abs(ld)))))
    assert_close(yr, y, 1e-4 * (1.0 + float(jnp.max(jnp.abs(y)))))


# --- jit == no-jit (chex variants) -----------------------------------------------------------
class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(n, n) for n in NAMES])
    def test_jit_matches_no_jit(self, name):
        # Both variants are compared with the same (jitted) reference, so jit == no-jit.
        b = make(name)
        x = inputs(1, (2, 3, DIM))
        got = self.variant(_roundtrip)(b, x)
        want = roundtrip(b, x)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-5)


# --- finite gradients at extreme inputs --------------------------------------------------------
@jit
def _all_grads(b, x):
    fl, rebuild = split_float(b)

    def loss(direction):
        def fn(fl, x):
            bij = rebuild(fl)
            out, ld = (bij.forward_and_log_det(x) if direction == "f"
                       else bij.inverse_and_log_det(x))
            return jnp.sum(out) + jnp.sum(ld)

        return fn

    outs = (b.forward_and_log_det(x), b.inverse_and_log_det(x))
    return outs, [jax.grad(loss(d), argnums=(0, 1))(fl, x) for d in ("f", "i")]


@pytest.mark.parametrize("name", NAMES)
def test_finite_gradients_at_extreme_inputs(name):
    b = make(name)
    signs = jnp.where(jnp.arange(DIM) % 2 == 0, 1.0, -1.0)
    x = jnp.stack([jnp.zeros(DIM), 1e3 * signs, -1e3 * jnp.ones(DIM), 1e3 * jnp.ones(DIM)])
    outs, grads = _all_grads(b, x)
    for g in jax.tree.leaves(outs):
        assert np.all(np.isfinite(g)), name
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(g)), name


# --- batched parameters broadcast --------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_batched_parameters_broadcast(name):
    parts = [make(name, DIM, s) for s in (0, 1, 2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *parts)
    # params [3, ...] against x [2, 3, D]: the extra leading input dim broadcasts too
    x = inputs(3, (2, 3, DIM))
    y, ld, xr, ild, _ = roundtrip(stacked, x)
    chex.assert_shape([y, ld], [(2, 3, DIM), (2, 3)])
    for k in range(2):
        for i, p in enumerate(parts):
            yi, ldi, _, _, _ = roundtrip(p, x[k, i])
            assert_close(y[k, i], yi, 1e-5)
            assert_close(ld[k, i], ldi, 1e-5)
            assert_close(xr[k, i], x[k, i], 1e-4)
            assert_close(ild[k, i], -ldi, 1e-4)


# --- autoregressive zero pattern -------------------------------------------------------------
@pytest.mark.parametrize("name", AUTOREGRESSIVE)
def test_autoregressive_jacobian_pattern(name):
    b = make(name)
    order = np.asarray(b.autoregressive_order)
    perm = np.argsort(order)          # perm[k] = the coordinate at position k
    for x_seed in (0, 1):
        j = np.asarray(logdet_check(b, inputs(x_seed, (DIM,)))[1])
        jp = j[np.ix_(perm, perm)]
        np.testing.assert_array_equal(np.triu(jp, 1), 0.0)
        assert np.all(np.abs(np.diag(jp)) > 0)
    if name != "linear_iaf":
        assert np.any(np.abs(np.tril(jp, -1)) > 0)   # not trivially diagonal


def test_registry_names():
    assert set(EXAMPLES) == {
        "householder", "linear_iaf", "cc_linear_iaf", "planar", "radial",
        "sylvester_orthogonal", "sylvester_triangular", "iaf", "maf", "affine_coupling",
        "actnorm", "reverse_permutation", "random_permutation", "nlsq"}
    for name in NAMES:
        assert isinstance(make(name), distrax.Bijector)
    with_order = {n for n in NAMES if getattr(make(n), "autoregressive_order", None) is not None}
    assert with_order == set(AUTOREGRESSIVE)


# --- inside distrax.Transformed, under jit, vmap and grad ------------------------------------
def _dist(b):
    base = distrax.MultivariateNormalDiag(jnp.zeros(DIM), jnp.ones(DIM))
    return distrax.Transformed(base, b)


@jit
def _transformed_checks(b, key):
    xs, lp = _dist(b).sample_and_log_prob(seed=key, sample_shape=(4,))
    fl, rebuild = split_float(b)

    def mean_log_prob(fl):
        lp_v = jax.vmap(lambda x: _dist(rebuild(fl)).log_prob(x))(xs)
        return jnp.mean(lp_v), lp_v

    g, lp_v = jax.grad(mean_log_prob, has_aux=True)(fl)
    return xs, lp, lp_v, g


@pytest.mark.parametrize("name", NAMES)
def test_in_distrax_transformed(name):
    """Under jit: sample_and_log_prob agrees with log_prob (under vmap); finite param grads."""
    b = make(name)
    xs, lp, lp_v, g = _transformed_checks(b, jax.random.key(7))
    chex.assert_shape([xs, lp, lp_v], [(4, DIM), (4,), (4,)])
    assert_close(lp_v, lp, 2e-4 * (1 + float(jnp.max(jnp.abs(lp)))))
    for leaf in jax.tree.leaves(g):
        assert np.all(np.isfinite(leaf))
