"""Exact GP inference for the deep-kernel surrogate on padded, masked data (via tinygp).

The released NF-BO code only has the sparse variational GP (mlvlab/NFBO
``surrogate_model/model/deepGP/ppgpr.py``); the exact GP is ours, used while the data are small
(``SurrogateConfig.exact_max_points``), where exact inference is cheap and better.

Padding: the data arrays have a fixed bucket size ``N_pad >= N`` and a mask ``[N_pad]`` (1 for
observed rows). The kernel is :class:`~jaxflows.bo.surrogate.Masked`, the diagonal is
``sigma^2 + jitter`` on observed rows and ``1 + jitter`` on padded ones, and padded targets are
0 (the mean function is also masked), so the covariance is block-diagonal ``[[K + sigma^2 I, 0],
[0, I]]`` and padded rows change neither the posterior nor (after subtracting their constant
``-0.5 log(2 pi (1 + jitter))`` each) the marginal likelihood. The Cholesky factorisation is
tinygp's ``DirectSolver`` in float32 with ``jitter`` (default 1e-6) on the diagonal, on top of
the noise floor 1e-4 of standardised targets. That is not always enough: with many (nearly)
duplicate inputs and a large output scale the float32 Cholesky fails (NaN), and a fit whose
every step is then skipped stays stuck for the rest of a BO run. So :func:`stable_jitter` retries
as gpytorch's ``psd_safe_cholesky`` does (:func:`jaxflows.bo.linalg.stable_jitter`): the first
of ``jitter``, then ``jitter * 10^k * s`` (``k = 1..4``, ``s`` = output scale + noise, i.e.
relative to the kernel's diagonal) at which the factorisation is finite; the choice is not
differentiated. That probe factorises ``cov + j I`` while tinygp factorises ``K + (diag + j)``,
which rounds differently; at the edge (a matrix whose float32 Cholesky is barely finite) the
probe can pass and tinygp's own factor still be NaN, which made every Thompson sample of a
valt run non-finite. :func:`build_gp` therefore also checks tinygp's factor and multiplies the
jitter by 10 until that is finite (at most ``MAX_JITTER_TRIES`` times); where the first factor
is finite, nothing changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bo._deps import tinygp
from jaxflows.bo.linalg import MAX_JITTER_TRIES, stable_jitter
from jaxflows.bo.surrogate import Masked, Surrogate, features, hyperparameters, kernel


def _gp(params: Surrogate, x: jax.Array, mask: jax.Array, jitter) -> tinygp.GaussianProcess:
    _, _, noise = hyperparameters(params)
    mask = mask.astype(jnp.float32)
    diag = noise * mask + (1.0 - mask) + jitter
    return tinygp.GaussianProcess(Masked(kernel(params)), (features(params, x), mask), diag=diag,
                                  mean=lambda X: params.constant * X[1])


def build_gp(params: Surrogate, x: jax.Array, mask: jax.Array,
             jitter: float) -> tuple[tinygp.GaussianProcess, jax.Array]:
    """Prior GP on padded training inputs x: [N, D], mask: [N] (standardised units), factorised
    with :func:`jaxflows.bo.linalg.stable_jitter` (relative to output scale + noise); returns
    (GP, the jitter used)."""
    _, outputscale, noise = hyperparameters(params)
    m = mask.astype(jnp.float32)
    x_m = (features(params, x), m)
    cov = Masked(kernel(params))(x_m, x_m) + jnp.diag(noise * m + (1.0 - m))
    j = stable_jitter(cov, jitter, outputscale + noise)
    j = _finite_factor_jitter(jax.lax.stop_gradient(params), x, mask, j)
    return _gp(params, x, mask, j), j


def _finite_factor_jitter(params: Surrogate, x: jax.Array, mask: jax.Array,
                          j: jax.Array) -> jax.Array:
    """``j``, or ``j * 10^k`` for the first ``k = 1..MAX_JITTER_TRIES`` at which tinygp's own
    Cholesky factor of the GP is finite (the last when none is); not differentiated."""

    def finite(jj):
        return jnp.all(jnp.isfinite(_gp(params, x, mask, jj).solver.scale_tril))

    def body(carry):
        jj, k, _ = carry
        jj = jj * 10.0
        return jj, k + 1, finite(jj)

    j = jax.lax.stop_gradient(jnp.asarray(j, jnp.float32))
    j, _, _ = jax.lax.while_loop(lambda c: ~c[2] & (c[1] <= MAX_JITTER_TRIES), body,
                                 (j, jnp.ones((), jnp.int32), finite(j)))
    return jax.lax.stop_gradient(j)


def neg_mll(params: Surrogate, x: jax.Array, y_std: jax.Array, mask: jax.Array,
            jitter: float) -> jax.Array:
    """Negative exact marginal log-likelihood per observed point (gpytorch's
    ``ExactMarginalLogLikelihood`` scaling). x: [N, D], y_std: [N] standardised (0 on padding),
    mask: [N] -> scalar."""
    gp, jitter = build_gp(params, x, mask, jitter)
    n_pad = (1.0 - mask).sum()
    pad_term = n_pad * 0.5 * (np.log(2 * np.pi) + jnp.log1p(jitter))
    n = jnp.maximum(mask.sum(), 1.0)
    return -(gp.log_probability(y_std * mask) + pad_term) / n


def posterior_std(params: Surrogate, x: jax.Array, y_std: jax.Array, mask: jax.Array,
                  x_query: jax.Array, jitter: float,
                  full_cov: bool = True) -> tuple[jax.Array, jax.Array]:
    """Latent posterior in standardised units at ``x_query: [M, D]``: mean ``[M]`` and
    covariance ``[M, M]`` (or variance ``[M]`` when ``full_cov`` is False)."""
    gp, _ = build_gp(params, x, mask, jitter)
    q = (features(params, x_query), jnp.ones(x_query.shape[0], jnp.float32))
    # diag=0: the latent f (tinygp would otherwise add sqrt(float eps) to the test diagonal)
    cond = gp.condition(y_std * mask, q, diag=jnp.zeros((), jnp.float32)).gp
    return cond.loc, (cond.covariance if full_cov else cond.variance)


def solve_update(params: Surrogate, x: jax.Array, mask: jax.Array, resid: jax.Array,
                 x_query: jax.Array, jitter: float) -> jax.Array:
    """``K_qx (K_xx + sigma^2 I)^-1 resid`` for residuals ``resid: [N, S]`` (pathwise update);
    returns ``[M, S]``. Padded rows of ``resid`` are ignored."""
    gp, _ = build_gp(params, x, mask, jitter)
    alpha = gp.solver.solve_triangular(resid * mask[:, None])
    alpha = gp.solver.solve_triangular(alpha, transpose=True)
    q = (features(params, x_query), jnp.ones(x_query.shape[0], jnp.float32))
    return gp.kernel(q, gp.X) @ alpha
