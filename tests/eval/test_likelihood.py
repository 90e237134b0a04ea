"""Importance-sampled NLL on a linear-Gaussian toy model with a known marginal likelihood.

p(z) = N(0, 1), p(x | z) = N(z, sigma^2)  =>  p(x) = N(0, 1 + sigma^2) exactly.
The proposal is q(z | x) = N(a x, s^2); with a = 1 / (1 + sigma^2), s^2 = sigma^2 / (1 + sigma^2)
it is the exact posterior and every weight equals log p(x).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from jaxflows.eval.likelihood import bits_per_dim, importance_sampled_nll

SIGMA = 0.5


def toy_log_weights(params, x, rng, n):
    """[n, B] log weights of the toy model for proposal params = (a, log_s)."""
    a, log_s = params
    s = jnp.exp(log_s)
    z = a * x + s * jax.random.normal(rng, (n, x.shape[0]))
    return norm.logpdf(x, z, SIGMA) + norm.logpdf(z) - norm.logpdf(z, a * x, s)


def exact_nll(x):
    return -norm.logpdf(x, 0.0, math.sqrt(1.0 + SIGMA**2))


X = jnp.array([-2.0, -0.3, 0.0, 0.7, 1.5, 3.0])
POSTERIOR = (
    jnp.float32(1.0 / (1.0 + SIGMA**2)),
    jnp.float32(0.5 * math.log(SIGMA**2 / (1 + SIGMA**2))),
)
# a deliberately poor proposal: wrong mean scale and too wide (wider than the posterior, so the
# weights have finite variance and the estimator's bias shrinks like 1/S)
POOR = (jnp.float32(0.5), jnp.float32(math.log(0.8)))


def test_exact_posterior_gives_exact_nll_for_any_sample_count():
    for s in (1, 64):
        nll = importance_sampled_nll(toy_log_weights, POSTERIOR, X, jax.random.key(0), s, 5)
        np.testing.assert_allclose(nll, exact_nll(X), rtol=1e-5, atol=1e-5)


def test_estimate_converges_to_truth_and_tightens():
    truth = np.asarray(exact_nll(X))
    errs = []
    for s in (1, 10, 1000):
        # average over independent repeats to measure the bias, not one draw's noise
        keys = jax.random.split(jax.random.key(1), 20)
        est = np.mean(
            jax.vmap(lambda k, s=s: importance_sampled_nll(toy_log_weights, POOR, X, k, s, 500))(
                keys
            ),
            axis=0,
        )
        # IS is a stochastic upper bound on the NLL (a lower bound on log p(x)) in expectation
        errs.append(float(np.mean(est - truth)))
        assert errs[-1] > -5e-3, (s, est - truth)
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[-1] < 0.02, errs


def test_chunked_equals_unchunked_on_the_same_weights():
    rng = jax.random.key(3)
    s, chunk = 23, 5  # 4 full chunks and a remainder of 3
    got = importance_sampled_nll(toy_log_weights, POOR, X, rng, s, chunk)
    w = jnp.concatenate(
        [toy_log_weights(POOR, X, jax.random.fold_in(rng, i), chunk) for i in range(s // chunk)]
        + [toy_log_weights(POOR, X, jax.random.fold_in(rng, s // chunk), s % chunk)]
    )
    want = -(jax.nn.logsumexp(w, axis=0) - math.log(s))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_chunk_size_does_not_change_the_estimate_statistically():
    a = importance_sampled_nll(toy_log_weights, POOR, X, jax.random.key(4), 4000, 4000)
    b = importance_sampled_nll(toy_log_weights, POOR, X, jax.random.key(5), 4000, 64)
    np.testing.assert_allclose(a, b, atol=0.05)


def test_bits_per_dim():
    np.testing.assert_allclose(bits_per_dim(784 * math.log(2.0), 784), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        bits_per_dim(jnp.array([0.0, 10.0]), 5), [0.0, 10 / (5 * math.log(2))], rtol=1e-6
    )
