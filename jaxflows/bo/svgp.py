"""Sparse variational GP (whitened SVGP, PPGPR objective) for the deep-kernel surrogate.

Follows the surrogate of NF-BO's released code (mlvlab/NFBO ``surrogate_model/model/deepGP/
ppgpr.py``, ``GPModelDKL``; the same model as LOL-BO): gpytorch's ``VariationalStrategy`` (whitened)
with a ``CholeskyVariationalDistribution`` over ``M`` inducing values and learnable inducing
locations, trained on ``-PredictiveLogLikelihood`` (PPGPR, Jankowiak, Pleiss & Gardner 2020).
The inducing points live in the 64-d *feature* space: ``GPModelDKL`` runs the feature extractor
before the variational strategy and initialises the inducing points to the features of the first
1024 training inputs. gpytorch is not used here; the algebra (ours) is:

* ``L_z = chol(K_zz + jitter I)`` (jitter 1e-4, gpytorch's float32 default for variational
  Cholesky; larger when that fails, :func:`jaxflows.bo.linalg.stable_jitter`),
  ``A = L_z^-1 K_zx``; whitened ``q(v) = N(m, S)``, ``S = L L^T`` with ``L`` the
  lower triangle of ``var_chol``; ``u = L_z v``.
* predictive ``f(x)``: mean ``c + A^T m``, covariance ``K_xx - A^T A + A^T S A``.
* objective per minibatch: ``mean_i log N(y_i | mu_i, var_i + sigma^2) - KL(q(v) || N(0, I)) /
  n_kl``, ``n_kl`` the minibatch size (released code) or the number of data (config).

tinygp has no sparse variational GP; its kernels build the matrices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from jaxflows.bo.linalg import stable_jitter
from jaxflows.bo.surrogate import Surrogate, features, hyperparameters, kernel


def init_variational(params: Surrogate, x_init: jax.Array) -> Surrogate:
    """Turns ``params`` into an SVGP whose inducing points are the features of ``x_init: [M, D]``
    (the first ``M`` observations), with ``q(v) = N(0, I)`` (gpytorch's initial state)."""
    m = x_init.shape[0]
    return params.replace(kind="svgp", inducing=features(params, x_init),
                          var_mean=jnp.zeros((m,), jnp.float32),
                          var_chol=jnp.eye(m, dtype=jnp.float32))


def _chol_z(params: Surrogate, jitter: float) -> jax.Array:
    """``chol(K_zz + j I)`` with ``j`` = ``jitter``, or larger when that fails in float32
    (:func:`jaxflows.bo.linalg.stable_jitter`, relative to the output scale)."""
    z = params.inducing
    kzz = kernel(params)(z, z)
    j = stable_jitter(kzz, jitter, hyperparameters(params)[1])
    return jnp.linalg.cholesky(kzz + j * jnp.eye(z.shape[0], dtype=kzz.dtype))


def _interp(params: Surrogate, phi: jax.Array, jitter: float) -> jax.Array:
    """A = L_z^-1 K_zx: [M, B] for features phi: [B, H]."""
    lz = _chol_z(params, jitter)
    return jsl.solve_triangular(lz, kernel(params)(params.inducing, phi), lower=True)


def _s_chol(params: Surrogate) -> jax.Array:
    return jnp.tril(params.var_chol)


def predict_std(params: Surrogate, x: jax.Array, jitter: float,
                full_cov: bool = False) -> tuple[jax.Array, jax.Array]:
    """Latent predictive in standardised units at x: [B, D]: mean [B], variance [B] (or the
    covariance [B, B] when ``full_cov``)."""
    phi = features(params, x)
    a = _interp(params, phi, jitter)
    sa = _s_chol(params).T @ a
    mean = params.constant + a.T @ params.var_mean
    if full_cov:
        return mean, kernel(params)(phi, phi) - a.T @ a + sa.T @ sa
    kdiag = kernel(params)(phi)
    return mean, jnp.maximum(kdiag - (a**2).sum(0) + (sa**2).sum(0), 1e-10)


def kl_divergence(params: Surrogate) -> jax.Array:
    """KL(N(m, L L^T) || N(0, I)) of the whitened variational distribution."""
    ls = _s_chol(params)
    m = params.var_mean
    logdet = 2.0 * jnp.log(jnp.abs(jnp.diag(ls)) + 1e-30).sum()
    return 0.5 * ((ls**2).sum() + m @ m - m.shape[0] - logdet)


def neg_ppgpr(params: Surrogate, x: jax.Array, y_std: jax.Array, kl_num: jax.Array,
              jitter: float) -> jax.Array:
    """Negative PPGPR objective on a minibatch x: [B, D], y_std: [B] -> scalar."""
    mean, var = predict_std(params, x, jitter)
    _, _, noise = hyperparameters(params)
    tot = var + noise
    ll = -0.5 * (np.log(2 * np.pi) + jnp.log(tot) + (y_std - mean) ** 2 / tot)
    return -(ll.mean() - kl_divergence(params) / kl_num)


def pathwise_update(params: Surrogate, prior_z: jax.Array, eps: jax.Array, x_query: jax.Array,
                    jitter: float) -> jax.Array:
    """Pathwise (decoupled) update of prior samples for the SVGP (Wilson et al. 2020):
    ``K_qz K_zz^-1 (u - f_prior(Z)) = A^T (v - L_z^-1 f_prior(Z))`` with ``v = m + L eps``.
    prior_z: [M, S] prior sample values at the inducing points, eps: [M, S] standard normal,
    x_query: [Q, D] -> [Q, S] (add the prior sample at x_query and the constant mean)."""
    lz = _chol_z(params, jitter)
    v = params.var_mean[:, None] + _s_chol(params) @ eps
    w = v - jsl.solve_triangular(lz, prior_z, lower=True)
    phi = features(params, x_query)
    a = jsl.solve_triangular(lz, kernel(params)(params.inducing, phi), lower=True)
    return a.T @ w
