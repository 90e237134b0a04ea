"""Thompson sampling over a finite candidate set, per trust region.

NF-BO (paper §4.4; mlvlab/NFBO ``BO/model/utils/turbo.py``, ``generate_batch``) uses botorch's
``MaxPosteriorSampling(replacement=False)`` on each anchor's candidate set: draw ``q`` joint
posterior samples over the candidates and keep the maximisers, without repeating a candidate.
Here sample ``j`` takes its best candidate not taken by samples ``0..j-1`` (greedy; botorch's
de-duplication order differs in detail but also yields ``q`` distinct maximisers).

Samples are of ``y``, not only the latent ``f``, by default (``observation_noise=True``): the
released ``GPModelDKL.posterior`` returns ``likelihood(model(X))``, i.e. adds the noise
variance to the diagonal of the joint covariance. ``observation_noise=False`` samples f.

Joint samples:

* ``M <= exact_max_candidates`` (3000): the exact ``[M, M]`` posterior covariance (float32),
  factorised by :func:`jaxflows.bo.linalg.psd_safe_root` (Cholesky with growing relative
  jitter, eigen fallback) -- on the accelerator, no float64 needed.
* above: pathwise conditioning (Wilson et al., ICML 2020, "Efficiently sampling functions from
  Gaussian process posteriors"): a prior function sample from ``num_features`` random Fourier
  features of the RBF kernel on the deep features (one random basis shared by the q samples,
  independent weights), plus the exact data update ``K_qx (K + sigma^2 I)^-1 (y - f_prior(X) -
  eps)`` (exact GP) or ``K_qz K_zz^-1 (u - f_prior(Z))`` (SVGP). Cost ``O(M (R + N))`` instead
  of ``O(M^3)``; the only approximation is the Fourier prior (covariance error ~ 1/sqrt(R)).
  (botorch itself samples large sets through gpytorch's low-rank root decompositions, also
  approximate.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxflows.bo import exact_gp, svgp
from jaxflows.bo._checks import BOInputError, check_matrix
from jaxflows.bo.gp import bucket, pad_rows, posterior_standardised
from jaxflows.bo.linalg import highest_precision, psd_safe_root
from jaxflows.bo.surrogate import Surrogate, features, hyperparameters


@functools.partial(jax.jit, static_argnames=("num_samples",))
@highest_precision
def sample_mvn(rng: jax.Array, mean: jax.Array, cov: jax.Array, num_samples: int) -> jax.Array:
    """Joint samples of N(mean [M], cov [M, M]): [num_samples, M] (psd-safe root)."""
    root = psd_safe_root(cov)
    eps = jax.random.normal(rng, (num_samples, mean.shape[0]), mean.dtype)
    return mean[None, :] + eps @ root.T


@jax.jit
@highest_precision
def select_without_replacement(samples: jax.Array) -> jax.Array:
    """samples: [S, M] -> indices [S] (int32, distinct; needs S <= M): sample j picks its
    argmax among candidates not picked by samples before it."""

    def step(taken, s):
        i = jnp.argmax(jnp.where(taken, -jnp.inf, s))
        return taken.at[i].set(True), i.astype(jnp.int32)

    _, idx = jax.lax.scan(step, jnp.zeros(samples.shape[1], bool), samples)
    return idx


def _rff(rng, params: Surrogate, num_features: int, num_samples: int):
    """A prior function sampler: feats [., H] -> [., S] using random Fourier features."""
    k_w, k_b, k_a = jax.random.split(rng, 3)
    lengthscale, outputscale, _ = hyperparameters(params)
    h = params.hidden[-1]
    omega = jax.random.normal(k_w, (h, num_features)) / lengthscale
    b = jax.random.uniform(k_b, (num_features,), maxval=2 * jnp.pi)
    w = jax.random.normal(k_a, (num_features, num_samples))
    scale = jnp.sqrt(2.0 * outputscale / num_features)
    return lambda f: (scale * jnp.cos(f @ omega + b)) @ w


@functools.partial(jax.jit, static_argnames=("num_samples", "num_features", "jitter"))
@highest_precision
def _pathwise_exact(rng, params, x, y, mask, x_cand, num_samples, num_features, jitter):
    k_rff, k_eps = jax.random.split(rng)
    prior = _rff(k_rff, params, num_features, num_samples)
    noise = hyperparameters(params)[2]
    ys = (y - params.y_mean) / params.y_std
    eps = jnp.sqrt(noise) * jax.random.normal(k_eps, (x.shape[0], num_samples))
    resid = ys[:, None] - params.constant - prior(features(params, x)) - eps
    upd = exact_gp.solve_update(params, x, mask, resid, x_cand, jitter)
    return params.constant + prior(features(params, x_cand)) + upd


@functools.partial(jax.jit, static_argnames=("num_samples", "num_features", "jitter"))
@highest_precision
def _pathwise_svgp(rng, params, x_cand, num_samples, num_features, jitter):
    k_rff, k_eps = jax.random.split(rng)
    prior = _rff(k_rff, params, num_features, num_samples)
    eps = jax.random.normal(k_eps, (params.inducing.shape[0], num_samples))
    upd = svgp.pathwise_update(params, prior(params.inducing), eps, x_cand, jitter)
    return params.constant + prior(features(params, x_cand)) + upd


def sample_posterior(rng: jax.Array, params: Surrogate, x_train, y_train, x_cand,
                     num_samples: int, *, exact_max_candidates: int = 3000,
                     num_features: int = 4096, observation_noise: bool = True,
                     jitter: float | None = None, pad_multiple: int = 256) -> jax.Array:
    """Joint posterior samples at x_cand: [M, D] in the units of y: [num_samples, M].

    x_train: [N, D], y_train: [N] are the exact GP's data (ignored by an SVGP), padded to a
    multiple of ``pad_multiple`` rows.
    """
    x_cand = check_matrix(x_cand, "x_cand")
    k_f, k_noise = jax.random.split(rng)
    noise = hyperparameters(params)[2]
    if x_cand.shape[0] <= exact_max_candidates:
        mean, cov = posterior_standardised(params, x_train, y_train, x_cand, True, jitter=jitter,
                                           pad_multiple=pad_multiple)
        f = sample_mvn(k_f, mean, cov, num_samples)
    else:
        if params.kind == "svgp":
            f = _pathwise_svgp(k_f, params, x_cand, num_samples, num_features,
                               params.svgp_jitter if jitter is None else jitter).T
        else:
            x = check_matrix(x_train, "x_train")
            xp, yp, mask = pad_rows(x, jnp.asarray(y_train, jnp.float32),
                                    bucket(x.shape[0], pad_multiple))
            f = _pathwise_exact(k_f, params, xp, yp, mask, x_cand, num_samples, num_features,
                                params.jitter if jitter is None else jitter).T
    if observation_noise:
        f = f + jnp.sqrt(noise) * jax.random.normal(k_noise, f.shape)
    return f * params.y_std + params.y_mean


def thompson_batch(rng: jax.Array, params: Surrogate, x_train, y_train, candidates,
                   q: int, **kw) -> tuple[jax.Array, jax.Array]:
    """Per trust region, ``q`` distinct Thompson picks.

    candidates: [T, M, D] (one candidate set per anchor) -> (indices [T, q] int32 into each
    set, points [T, q, D]). Each set gets its own ``q`` joint samples (keywords as in
    :func:`sample_posterior`).
    """
    candidates = jnp.asarray(candidates, jnp.float32)
    if candidates.ndim != 3:
        raise BOInputError(f"candidates must have shape [T, M, D], got {candidates.shape}")
    if not 1 <= q <= candidates.shape[1]:
        raise BOInputError(f"q={q} must be in [1, {candidates.shape[1]}] (candidates per region)")
    idx = []
    for t in range(candidates.shape[0]):
        s = sample_posterior(jax.random.fold_in(rng, t), params, x_train, y_train,
                             candidates[t], q, **kw)
        if not bool(jnp.all(jnp.isfinite(s))):  # argmax would return a fixed, meaningless pick
            raise FloatingPointError(
                f"Thompson samples of trust region {t} are not finite (GP training loss "
                f"{float(params.loss):.4g}): the surrogate's posterior failed")
        idx.append(select_without_replacement(s))
    idx = jnp.stack(idx)
    points = jnp.take_along_axis(candidates, idx[:, :, None], axis=1)
    return idx, points


__all__ = ["sample_mvn", "select_without_replacement", "sample_posterior", "thompson_batch"]
