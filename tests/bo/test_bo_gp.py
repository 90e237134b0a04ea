"""Deep-kernel GP surrogate: exact posterior against numpy, padding, MLL, fits, SVGP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxflows.bo import gp, svgp
from jaxflows.bo._checks import BOInputError
from jaxflows.bo.exact_gp import neg_mll
from jaxflows.bo.surrogate import SurrogateConfig, init_surrogate, standardise
from jaxflows.errors import ConfigError


def _softplus_inv(v):
    return float(np.log(np.expm1(v)))


def _fixed_params(dim=3, lengthscale=1.3, outputscale=0.7, noise=0.1, constant=0.2):
    p = init_surrogate(SurrogateConfig(), jax.random.key(0), dim)
    return p.replace(raw_lengthscale=jnp.float32(_softplus_inv(lengthscale)),
                     raw_outputscale=jnp.float32(_softplus_inv(outputscale)),
                     raw_noise=jnp.float32(_softplus_inv(noise - 1e-4)),
                     constant=jnp.float32(constant), y_mean=jnp.float32(0.5),
                     y_std=jnp.float32(2.0))


def _np_features(p, x):
    h = np.asarray(x, np.float64)
    layers = p.mlp["params"]
    for i in range(len(layers)):
        w = np.asarray(layers[f"Dense_{i}"]["kernel"], np.float64)
        b = np.asarray(layers[f"Dense_{i}"]["bias"], np.float64)
        h = h @ w + b
        h = h / (1 + np.exp(-h))
    return h


def _np_kernel(a, b, lengthscale=1.3, outputscale=0.7):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return outputscale * np.exp(-d2 / (2 * lengthscale**2))


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)).astype(np.float32) * 2
    y = np.sin(x[:, 0]) + 0.3 * x[:, 1]
    xq = rng.normal(size=(4, 3)).astype(np.float32) * 2
    return x, y.astype(np.float32), xq


def test_posterior_matches_numpy_cholesky(tiny):
    x, y, xq = tiny
    p = _fixed_params()
    mean, cov = gp.posterior(p, x, y, xq)
    # direct float64 computation, standardised units (y_mean 0.5, y_std 2), then back
    f, fq = _np_features(p, x), _np_features(p, xq)
    ys = (y - 0.5) / 2.0 - 0.2
    k = _np_kernel(f, f) + (0.1 + 1e-6) * np.eye(7)
    chol = np.linalg.cholesky(k)
    a = np.linalg.solve(chol, _np_kernel(f, fq))
    want_mean = 0.2 + a.T @ np.linalg.solve(chol, ys)
    want_cov = _np_kernel(fq, fq) - a.T @ a
    np.testing.assert_allclose(mean, want_mean * 2.0 + 0.5, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cov, want_cov * 4.0, rtol=1e-4, atol=1e-4)
    mean2, var = gp.posterior(p, x, y, xq, full_cov=False)
    np.testing.assert_allclose(var, np.diag(cov), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mean2, mean, rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_posterior(tiny):
    x, y, xq = tiny
    p = _fixed_params()
    a = gp.posterior(p, x, y, xq, pad_multiple=8)
    b = gp.posterior(p, x, y, xq, pad_multiple=256)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_masked_mll_equals_scipy(tiny):
    x, y, _ = tiny
    p = _fixed_params()
    xp, yp, mask = gp.pad_rows(jnp.asarray(x), jnp.asarray(y), 32)
    ys, mean, std = jax.jit(standardise)(yp, mask)
    np.testing.assert_allclose([mean, std], [y.mean(), y.std()], rtol=1e-5)
    f = _np_features(p, x)
    k = _np_kernel(f, f) + (0.1 + 1e-6) * np.eye(7)
    want = -scipy.stats.multivariate_normal(np.full(7, 0.2), k).logpdf(np.asarray(ys[:7])) / 7
    got = jax.jit(neg_mll, static_argnums=4)(p, xp, ys, mask, 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _toy(n, seed, noise=0.0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, (n, 1)).astype(np.float32)
    y = 3 * np.sin(2 * x[:, 0]) + 1 + noise * rng.normal(size=n)
    return x, y.astype(np.float32)


def test_exact_fit_and_no_recompile_within_bucket():
    cfg = SurrogateConfig(exact_pad_multiple=64)
    x, y = _toy(40, 0)
    p = gp.fit_surrogate(cfg, x, y, jax.random.key(0), num_steps=150)
    assert p.kind == "exact" and np.isfinite(p.loss)
    xq = np.linspace(-2.8, 2.8, 30, dtype=np.float32)[:, None]
    mean, _ = gp.posterior(p, x, y, xq)
    rmse = float(np.sqrt(np.mean((np.asarray(mean) - 3 * np.sin(2 * xq[:, 0]) - 1) ** 2)))
    assert rmse < 0.3, rmse
    size = gp._fit_exact._cache_size()
    p2 = gp.fit_surrogate(cfg, x[:33], y[:33], jax.random.key(1), init_params=p, num_steps=7)
    assert gp._fit_exact._cache_size() == size      # other N, other steps: same executable
    assert p2.kind == "exact"


def test_svgp_fits_1d_toy():
    cfg = SurrogateConfig(exact_max_points=64, num_inducing=32, batch_size=64,
                          svgp_learning_rate=1e-2, svgp_pad_multiple=512)
    x, y = _toy(300, 1, noise=0.05)
    p = gp.fit_surrogate(cfg, x, y, jax.random.key(0), num_steps=300)
    assert p.kind == "svgp" and p.inducing.shape == (32, 64)
    xq = np.linspace(-2.8, 2.8, 40, dtype=np.float32)[:, None]
    mean, var = gp.posterior(p, None, None, xq, full_cov=False)
    rmse = float(np.sqrt(np.mean((np.asarray(mean) - 3 * np.sin(2 * xq[:, 0]) - 1) ** 2)))
    assert rmse < 0.25, rmse
    assert np.all(np.asarray(var) > 0) and float(svgp.kl_divergence(p)) > 0


def test_bad_inputs_raise_one_line_errors():
    cfg = SurrogateConfig()
    with pytest.raises(BOInputError, match="shape"):
        gp.fit_surrogate(cfg, np.zeros((4,)), np.zeros(4), jax.random.key(0))
    with pytest.raises(BOInputError, match="non-finite"):
        gp.fit_surrogate(cfg, np.zeros((2, 2)), np.array([0.0, np.nan]), jax.random.key(0))
    with pytest.raises(ConfigError, match="unknown surrogate config keys"):
        SurrogateConfig.from_mapping({"hiden": (64,)})
    with pytest.raises(ConfigError, match="svgp_kl_scale"):
        SurrogateConfig(svgp_kl_scale="epoch")


def test_warm_start_switches_between_exact_and_svgp():
    cfg = SurrogateConfig(num_inducing=4)
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    p = _fixed_params()
    q = gp._initial(cfg, jnp.asarray(x), jax.random.key(0), p, "svgp")
    assert q.kind == "svgp" and q.var_chol.shape == (4, 4)
    np.testing.assert_allclose(q.inducing, _np_features(p, x[:4]), rtol=1e-5, atol=1e-6)
    assert q.raw_lengthscale == p.raw_lengthscale             # hyperparameters carried over
    back = gp._initial(cfg, jnp.asarray(x), jax.random.key(0), q, "exact")
    assert back.kind == "exact" and back.inducing is None
    with pytest.raises(BOInputError, match="3-d inputs"):
        gp._initial(cfg, jnp.zeros((5, 2)), jax.random.key(0), p, "exact")


def test_stable_jitter_keeps_a_good_jitter_and_rescues_a_failed_cholesky():
    from jaxflows.bo.linalg import stable_jitter

    good = jnp.eye(4) + 0.1
    assert float(stable_jitter(good, 1e-6, 1.0)) == pytest.approx(1e-6)
    # an RBF kernel (output scale 100) of 300 nearly equal points plus the 1e-4 noise floor:
    # past float32 (the case that stalled whole NF-BO runs on valt)
    f = np.random.default_rng(0).normal(size=(300, 8)) * 1e-3
    d2 = ((f[:, None] - f[None]) ** 2).sum(-1)
    bad = jnp.asarray(100.0 * np.exp(-d2 / 2) + 1e-4 * np.eye(300), jnp.float32)
    assert not np.isfinite(np.asarray(jnp.linalg.cholesky(bad + 1e-6 * jnp.eye(300)))).all()
    j = float(stable_jitter(bad, 1e-6, 100.0))
    assert j > 1e-6
    assert np.isfinite(np.asarray(jnp.linalg.cholesky(bad + j * jnp.eye(300)))).all()


def test_mll_of_duplicated_inputs_is_finite_with_finite_gradients():
    from jaxflows.bo.exact_gp import _gp

    rng = np.random.default_rng(0)
    x = (np.array([[0.3, -1.2, 0.5]]) + 1e-3 * rng.normal(size=(300, 3))).astype(np.float32)
    y = rng.normal(size=300).astype(np.float32)
    mask = np.ones(300, np.float32)
    p = _fixed_params(outputscale=100.0, noise=1e-4 + 1e-7)
    ys, _, _ = standardise(jnp.asarray(y), jnp.asarray(mask))
    # the fixed jitter alone fails: this is what the retry is for
    assert not np.isfinite(np.asarray(_gp(p, x, mask, 1e-6).solver.scale_tril)).all()
    loss, grads = jax.value_and_grad(neg_mll)(p, x, ys, mask, 1e-6)
    assert np.isfinite(float(loss))
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads) if jnp.issubdtype(g.dtype,
                                                                               jnp.floating)]
    assert all(np.isfinite(g).all() for g in leaves)


def test_build_gp_checks_tinygps_own_factor(monkeypatch):
    """The jitter probe factorises ``cov + j I``; tinygp factorises ``K + (diag + j)``, which
    rounds differently. When the probe passes at a jitter where tinygp's factor is NaN (seen on
    valt), build_gp grows the jitter until tinygp's factor is finite; a finite one is kept."""
    from jaxflows.bo import exact_gp

    rng = np.random.default_rng(0)
    x = (np.array([[0.3, -1.2, 0.5]]) + 1e-3 * rng.normal(size=(300, 3))).astype(np.float32)
    mask = np.ones(300, np.float32)
    p = _fixed_params(outputscale=100.0, noise=1e-4 + 1e-7)
    assert not np.isfinite(np.asarray(exact_gp._gp(p, x, mask, 1e-6).solver.scale_tril)).all()
    monkeypatch.setattr(exact_gp, "stable_jitter", lambda a, jitter, scale: jnp.float32(jitter))
    gp_, j = exact_gp.build_gp(p, x, mask, 1e-6)
    assert float(j) > 1e-6 and np.isfinite(np.asarray(gp_.solver.scale_tril)).all()
    good = _fixed_params()
    x_good = rng.normal(size=(20, 3)).astype(np.float32)
    _, j_good = exact_gp.build_gp(good, x_good, np.ones(20, np.float32), 1e-6)
    assert float(j_good) == pytest.approx(1e-6)
