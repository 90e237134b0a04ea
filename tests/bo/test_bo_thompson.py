"""Thompson sampling: sample moments match the posterior (exact and pathwise), selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.bo import gp, svgp, thompson
from jaxflows.bo._checks import BOInputError
from jaxflows.bo.linalg import psd_safe_root
from jaxflows.bo.surrogate import SurrogateConfig, features, init_surrogate, kernel


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 2)).astype(np.float32)
    y = (np.cos(x[:, 0]) + x[:, 1]).astype(np.float32)
    p = init_surrogate(SurrogateConfig(), jax.random.key(3), 2)
    p = p.replace(raw_noise=jnp.float32(-4.0), raw_lengthscale=jnp.float32(0.3),
                  y_mean=jnp.float32(0.3), y_std=jnp.float32(1.5))
    xc = (x[:6] + 0.4 * rng.normal(size=(6, 2))).astype(np.float32)
    return p, x, y, xc


def _check_moments(samples, mean, cov, mean_tol, cov_tol):
    s = np.asarray(samples, np.float64)
    n = s.shape[0]
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(s.mean(0) - mean) < 5 * se + mean_tol), (s.mean(0), mean)
    emp = np.cov(s, rowvar=False)
    d = np.sqrt(np.diag(cov))
    cov_se = np.sqrt((np.outer(d, d) ** 2 + cov**2) / n)
    assert np.all(np.abs(emp - cov) < 5 * cov_se + cov_tol), np.abs(emp - cov).max()


@pytest.mark.parametrize("noise", [False, True])
def test_exact_joint_samples_have_posterior_moments(problem, noise):
    p, x, y, xc = problem
    mean, cov = (np.asarray(a, np.float64) for a in gp.posterior(p, x, y, xc))
    if noise:
        cov = cov + float(gp.observation_noise(p)) * np.eye(len(xc))
    s = thompson.sample_posterior(jax.random.key(0), p, x, y, xc, 20000,
                                  observation_noise=noise)
    assert s.shape == (20000, 6)
    _check_moments(s, mean, cov, 0.0, 1e-3)


def test_pathwise_samples_exact_gp(problem):
    p, x, y, xc = problem
    mean, cov = (np.asarray(a, np.float64) for a in gp.posterior(p, x, y, xc))
    s = thompson.sample_posterior(jax.random.key(1), p, x, y, xc, 8000,
                                  exact_max_candidates=0, observation_noise=False, pad_multiple=16)
    scale = float(np.diag(cov).max())
    _check_moments(s, mean, cov, 0.0, 0.08 * scale)
    # the data update matters: the samples' covariance is far closer to the posterior's than
    # the prior's
    f = features(p, jnp.asarray(xc))
    prior = np.asarray(kernel(p)(f, f), np.float64) * float(p.y_std) ** 2
    emp = np.cov(np.asarray(s, np.float64), rowvar=False)
    assert np.abs(emp - cov).max() < 0.2 * np.abs(prior - cov).max()


def test_pathwise_samples_svgp(problem):
    p, x, y, xc = problem
    q = svgp.init_variational(p, jnp.asarray(x[:5]))
    q = q.replace(var_mean=jnp.linspace(-1, 1, 5).astype(jnp.float32),
                  var_chol=0.5 * jnp.eye(5) + 0.1 * jnp.tri(5, k=-1))
    mean, cov = (np.asarray(a, np.float64) for a in gp.posterior(q, None, None, xc))
    s = thompson.sample_posterior(jax.random.key(2), q, None, None, xc, 8000,
                                  exact_max_candidates=0, observation_noise=False)
    scale = float(np.diag(cov).max())
    _check_moments(s, mean, cov, 0.0, 0.08 * scale)
    s_exact = thompson.sample_posterior(jax.random.key(2), q, None, None, xc, 20000,
                                        observation_noise=False)
    _check_moments(s_exact, mean, cov, 0.0, 1e-3)


def test_psd_safe_root_of_singular_matrix():
    v = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    a = jnp.asarray(v @ v.T)                 # rank 2: plain Cholesky fails
    r = psd_safe_root(a)
    assert np.all(np.isfinite(r))
    np.testing.assert_allclose(r @ r.T, a, atol=1e-3 * float(jnp.abs(a).max()))


def test_select_without_replacement_is_greedy_and_distinct():
    s = jnp.array([[0.0, 5.0, 1.0, 2.0],
                   [0.0, 9.0, 1.0, 2.0],     # best (1) taken -> next best 3
                   [7.0, 9.0, 8.0, 2.0]])    # 1 taken -> 2
    np.testing.assert_array_equal(thompson.select_without_replacement(s), [1, 3, 2])


def test_thompson_batch_per_trust_region(problem):
    p, x, y, xc = problem
    cands = np.stack([xc, xc[::-1] + 0.1])
    idx, pts = thompson.thompson_batch(jax.random.key(0), p, x, y, cands, q=4)
    assert idx.shape == (2, 4) and pts.shape == (2, 4, 2)
    for t in range(2):
        assert len(set(np.asarray(idx[t]).tolist())) == 4
        np.testing.assert_array_equal(pts[t], cands[t][np.asarray(idx[t])])
    with pytest.raises(BOInputError, match="q=7"):
        thompson.thompson_batch(jax.random.key(0), p, x, y, cands, q=7)


def test_non_finite_posterior_samples_raise_instead_of_a_fixed_pick():
    p = init_surrogate(SurrogateConfig(), jax.random.key(0), 2)
    p = p.replace(constant=jnp.float32(jnp.nan))  # a broken fit
    x = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    y = np.arange(6, dtype=np.float32)
    cand = np.random.default_rng(1).normal(size=(1, 8, 2)).astype(np.float32)
    with pytest.raises(FloatingPointError, match="not finite"):
        thompson.thompson_batch(jax.random.key(1), p, x, y, cand, 2)
