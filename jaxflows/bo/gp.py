"""Fitting and querying the deep-kernel GP surrogate of NF-BO (public API).

``fit_surrogate`` picks the inference by data size: the exact GP (:mod:`jaxflows.bo.exact_gp`,
exact marginal likelihood) up to ``config.exact_max_points`` observations, the sparse
variational GP (:mod:`jaxflows.bo.svgp`, PPGPR, ``num_inducing`` inducing points initialised
from the first observations) above. Both are trained by Adam with global-norm clipping 1.0 (as
mlvlab/NFBO ``BO/model/train_bo.py`` ``update_surr_model``: Adam lr 1e-3, batch <= 128, clip 1.0
for the SVGP; the exact GP uses full-batch steps and lr 1e-2, our choice); a step whose gradient
is not finite is skipped (``optax.apply_if_finite``).

Compilation: data are padded up to a bucket (next multiple of ``exact_pad_multiple`` = 256 for
the exact GP, of ``svgp_pad_multiple`` = 4096 for the SVGP) with a mask, and the optimisation
loop is one jitted ``fori_loop`` whose trip count is traced, so a growing data set or a
different number of steps recompiles only when the bucket changes. SVGP minibatches of
``batch_size`` rows are drawn uniformly with replacement among the observed rows (the released
code shuffles per epoch; :func:`steps_for_epochs` converts epochs to steps).

Numerics: float32 throughout, every jitted function traced with full-precision float32 matmuls
(:func:`jaxflows.bo.linalg.highest_precision`; no TF32/bf16 passes on GPU/TPU); Cholesky
factorisations with a small jitter (``config.jitter`` = 1e-6 exact, ``config.svgp_jitter`` =
1e-4 SVGP) on top of the noise floor 1e-4 of standardised targets.

Targets are standardised inside (see :mod:`jaxflows.bo.surrogate`); :func:`posterior` returns
the latent ``f`` posterior in the original units of ``y``. Warm starts: ``init_params`` (from an
earlier fit) continues from its weights; switching from exact to SVGP keeps the feature extractor
and hyperparameters and initialises the variational part from the data.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxflows.bo import exact_gp, svgp
from jaxflows.bo._checks import BOInputError, check_matrix, check_xy
from jaxflows.bo.linalg import highest_precision
from jaxflows.bo.surrogate import (
    Surrogate,
    SurrogateConfig,
    hyperparameters,
    init_surrogate,
    standardise,
)


def bucket(n: int, multiple: int) -> int:
    """The padded size for ``n`` rows: the next multiple of ``multiple`` (at least one)."""
    return max(1, math.ceil(n / multiple)) * multiple


def pad_rows(x: jax.Array, y: jax.Array, size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pads x: [N, D], y: [N] with zero rows to ``size``; returns (x [size, D], y [size], mask
    [size] float32, 1 on the N observed rows). A numpy ``x`` is padded on the host (numpy
    results: no compilation for a new N), anything else with ``jnp``."""
    n = x.shape[0]
    if isinstance(x, np.ndarray):
        y = np.asarray(y, np.float32)
        mask = (np.arange(size) < n).astype(np.float32)
        return (np.pad(x, ((0, size - n), (0, 0))), np.pad(y, (0, size - n)), mask)
    mask = (jnp.arange(size) < n).astype(jnp.float32)
    return (jnp.pad(x, ((0, size - n), (0, 0))), jnp.pad(y, (0, size - n)), mask)


def steps_for_epochs(config: SurrogateConfig, n: int, epochs: int) -> int:
    """SVGP optimisation steps that make ``epochs`` passes over ``n`` points in minibatches."""
    return epochs * math.ceil(n / min(config.batch_size, n))


def _optimizer(lr: float, clip: float) -> optax.GradientTransformation:
    return optax.apply_if_finite(
        optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr)), max_consecutive_errors=10**9)


def _frozen(grads: Surrogate) -> Surrogate:
    """Zero gradient for the leaves that are not trained (standardisation, last loss)."""
    z = jnp.zeros((), jnp.float32)
    return grads.replace(y_mean=z, y_std=z, loss=z)


def _run(loss_fn, params, opt, num_steps):
    def step(i, carry):
        p, s, _ = carry
        loss, g = jax.value_and_grad(loss_fn)(p, i)
        updates, s = opt.update(_frozen(g), s, p)
        return optax.apply_updates(p, updates), s, loss

    p, _, loss = jax.lax.fori_loop(0, num_steps, step, (params, opt.init(params),
                                                       jnp.zeros((), jnp.float32)))
    return p.replace(loss=loss)


@functools.partial(jax.jit, static_argnames=("config",))
@highest_precision
def _fit_exact(config, params, x, y, mask, num_steps):
    ys, mean, std = standardise(y, mask)
    params = params.replace(y_mean=mean, y_std=std)
    loss_fn = lambda p, i: exact_gp.neg_mll(p, x, ys, mask, p.jitter)
    return _run(loss_fn, params, _optimizer(config.exact_learning_rate, config.grad_clip),
                num_steps)


@functools.partial(jax.jit, static_argnames=("config",))
@highest_precision
def _fit_svgp(config, params, x, y, mask, rng, num_steps):
    ys, mean, std = standardise(y, mask)
    params = params.replace(y_mean=mean, y_std=std)
    n = mask.sum().astype(jnp.int32)
    kl_num = jnp.float32(config.batch_size) if config.svgp_kl_scale == "batch" else n
    kl_num = kl_num.astype(jnp.float32)

    def loss_fn(p, i):
        idx = jax.random.randint(jax.random.fold_in(rng, i), (config.batch_size,), 0, n)
        return svgp.neg_ppgpr(p, x[idx], ys[idx], kl_num, p.svgp_jitter)

    return _run(loss_fn, params, _optimizer(config.svgp_learning_rate, config.grad_clip),
                num_steps)


def _initial(config, x, rng, init_params, kind) -> Surrogate:
    d = x.shape[1]
    if init_params is None:
        params = init_surrogate(config, rng, d)
    else:
        first = init_params.mlp["params"]["Dense_0"]["kernel"]
        if first.shape[0] != d:
            raise BOInputError(f"init_params were fitted on {first.shape[0]}-d inputs, got x "
                              f"with {d} dims")
        params = init_params
    if kind == "svgp" and params.kind != "svgp":
        m = min(config.num_inducing, x.shape[0])
        params = svgp.init_variational(params, x[:m])
    elif kind == "exact" and params.kind != "exact":
        params = params.replace(kind="exact", inducing=None, var_mean=None, var_chol=None)
    return params


def fit_surrogate(config: SurrogateConfig, x: jax.Array, y: jax.Array, rng: jax.Array,
                  init_params: Surrogate | None = None,
                  num_steps: int | None = None) -> Surrogate:
    """Fits the surrogate to x: [N, D] float32, y: [N] (maximisation targets, any scale).

    ``num_steps`` defaults to ``config.exact_num_steps`` (exact) or ``config.svgp_num_epochs``
    epochs (SVGP). Returns :class:`~jaxflows.bo.surrogate.Surrogate` parameters.
    """
    x, y = check_xy(x, y)
    n = x.shape[0]
    kind = "exact" if n <= config.exact_max_points else "svgp"
    rng_init, rng_fit = jax.random.split(rng)
    params = _initial(config, x, rng_init, init_params, kind)
    if kind == "exact":
        steps = config.exact_num_steps if num_steps is None else int(num_steps)
        xp, yp, mask = pad_rows(x, y, bucket(n, config.exact_pad_multiple))
        return _fit_exact(config, params, xp, yp, mask, steps)
    steps = (steps_for_epochs(config, n, config.svgp_num_epochs) if num_steps is None
             else int(num_steps))
    xp, yp, mask = pad_rows(x, y, bucket(n, config.svgp_pad_multiple))
    return _fit_svgp(config, params, xp, yp, mask, rng_fit, steps)


@functools.partial(jax.jit, static_argnames=("full_cov", "jitter"))
@highest_precision
def _posterior_exact(params, x, y, mask, x_query, jitter, full_cov):
    ys = (y - params.y_mean) / params.y_std * mask
    return exact_gp.posterior_std(params, x, ys, mask, x_query, jitter, full_cov)


@functools.partial(jax.jit, static_argnames=("full_cov", "jitter"))
@highest_precision
def _posterior_svgp(params, x_query, jitter, full_cov):
    return svgp.predict_std(params, x_query, jitter, full_cov)


def posterior_standardised(params: Surrogate, x_train: jax.Array, y_train: jax.Array,
                           x_query: jax.Array, full_cov: bool = True, *,
                           jitter: float | None = None,
                           pad_multiple: int = 256) -> tuple[jax.Array, jax.Array]:
    """Like :func:`posterior` but in the surrogate's standardised units."""
    x_query = check_matrix(x_query, "x_query")
    if params.kind == "svgp":
        return _posterior_svgp(params, x_query, params.svgp_jitter if jitter is None else jitter,
                               full_cov)
    x_train, y_train = check_xy(x_train, y_train)
    if x_query.shape[1] != x_train.shape[1]:
        raise BOInputError(f"x_query has {x_query.shape[1]} dims, x_train {x_train.shape[1]}")
    xp, yp, mask = pad_rows(x_train, y_train, bucket(x_train.shape[0], pad_multiple))
    return _posterior_exact(params, xp, yp, mask, x_query,
                            params.jitter if jitter is None else jitter, full_cov)


def posterior(params: Surrogate, x_train: jax.Array, y_train: jax.Array, x_query: jax.Array,
              full_cov: bool = True, **kw) -> tuple[jax.Array, jax.Array]:
    """Posterior of the latent f at x_query: [M, D] in the units of y: (mean [M], cov [M, M]),
    or (mean [M], var [M]) when ``full_cov`` is False.

    The exact GP conditions on x_train: [N, D], y_train: [N] with the fitted hyperparameters
    (they may include points added after the fit); the SVGP ignores them (its data are in the
    variational parameters). Noise-free: add ``observation_noise(params)`` for y.
    """
    mean, cov = posterior_standardised(params, x_train, y_train, x_query, full_cov, **kw)
    return mean * params.y_std + params.y_mean, cov * params.y_std**2


def observation_noise(params: Surrogate) -> jax.Array:
    """The Gaussian likelihood's noise variance in the units of y."""
    return hyperparameters(params)[2] * params.y_std**2
