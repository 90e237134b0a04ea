"""The deep-kernel GP surrogate's pieces: config, parameter pytree, feature extractor, kernel.

The model is the one NF-BO (Lee et al., ICLR 2025) inherits from LOL-BO: ``GPModelDKL`` in
mlvlab/NFBO ``surrogate_model/model/deepGP/ppgpr.py``:

* a feature extractor MLP ``D -> 64 -> 64``, each linear layer followed by Swish
  (``x * sigmoid(x)``), no normalisation (``deepGP/base.py``, ``DenseNetwork`` with swish);
* on the 64-d features a scaled RBF kernel ``k(a, b) = s * exp(-|a - b|^2 / (2 l^2))``
  (gpytorch ``ScaleKernel(RBFKernel())``, one lengthscale);
* a constant mean and a Gaussian likelihood with noise variance ``sigma^2``.

Positive hyperparameters are stored raw and mapped by softplus (the raw value 0 gives
``softplus(0) = 0.693``, gpytorch's starting point); the noise is ``noise_floor +
softplus(raw)``, like gpytorch's ``GreaterThan(1e-4)`` noise constraint. The MLP uses Flax's
default initialisers (not torch's).

Targets are standardised inside the surrogate: ``y_std = (y - mean(y)) / std(y)`` over the
observed points (``std`` replaced by 1 when below 1e-6, e.g. for constant targets); the GP lives in
standardised units and :func:`jaxflows.bo.gp.posterior` maps back (mean ``* std + mean``,
covariance ``* std^2``). The released code fits raw scores; standardising only changes the
scale the default hyperparameters start from.

The kernel is a ``tinygp`` kernel (:class:`ScaledRBF`, tinygp's ``ExpSquared`` times a scale,
with a matmul-based matrix path); :class:`Masked` zeroes it on padded rows so a fixed-size
padded array gives the same algebra as the unpadded one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxflows.bo._deps import tinygp
from jaxflows.errors import ConfigError

KL_SCALES = ("batch", "data")


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
    """Settings of the surrogate; hashable, so it can be a static jit argument.

    * ``hidden``: feature-extractor widths (NF-BO: 64, 64).
    * ``exact_max_points``: up to this many observations the exact GP is used, above it the
      sparse variational GP with ``num_inducing`` inducing points (NF-BO: 1024).
    * ``exact_pad_multiple`` / ``svgp_pad_multiple``: data are padded up to a multiple of these
      row counts (compile once per bucket).
    * ``exact_learning_rate``, ``exact_num_steps``: full-batch Adam on the exact MLL (ours).
    * ``svgp_learning_rate``, ``svgp_num_epochs``, ``batch_size``: minibatch Adam on PPGPR
      (NF-BO: 1e-3, 100 epochs for the initial fit, batch <= 128); ``grad_clip``: 1.0.
    * ``jitter`` / ``svgp_jitter``: Cholesky jitter, exact GP / ``K_zz``; ``noise_floor``:
      lower bound of the noise variance (standardised units).
    * ``svgp_kl_scale``: ``"batch"`` divides the KL term by the minibatch size, as the released
      code does (its ``PredictiveLogLikelihood`` gets ``num_data=len(y)`` of the batch);
      ``"data"`` divides by the number of observations (Jankowiak et al. 2020).
    """

    hidden: tuple[int, ...] = (64, 64)
    exact_max_points: int = 2048
    num_inducing: int = 1024
    exact_pad_multiple: int = 256
    svgp_pad_multiple: int = 4096
    exact_learning_rate: float = 1e-2
    svgp_learning_rate: float = 1e-3
    exact_num_steps: int = 200
    svgp_num_epochs: int = 100
    batch_size: int = 128
    grad_clip: float = 1.0
    jitter: float = 1e-6
    svgp_jitter: float = 1e-4
    noise_floor: float = 1e-4
    svgp_kl_scale: str = "batch"

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for name in ("exact_max_points", "num_inducing", "exact_pad_multiple",
                     "svgp_pad_multiple", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"surrogate.{name} must be >= 1, got {getattr(self, name)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"surrogate.hidden must be positive sizes, got {self.hidden}")
        if self.svgp_kl_scale not in KL_SCALES:
            raise ConfigError(f"surrogate.svgp_kl_scale={self.svgp_kl_scale!r}; valid: "
                              f"{', '.join(KL_SCALES)}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> SurrogateConfig:
        """Builds a config from a dict / ConfigDict; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise ConfigError(f"unknown surrogate config keys {unknown}; valid: {sorted(known)}")
        return cls(**dict(m))


@flax.struct.dataclass
class Surrogate:
    """Fitted surrogate parameters (a pytree; ``kind`` is static).

    mlp: Flax params of :class:`FeatureExtractor`. raw_lengthscale, raw_outputscale, raw_noise,
    constant: scalars. y_mean, y_std: the standardisation of the targets. For ``kind='svgp'``:
    inducing ``[M, H]`` (in feature space, as in ``GPModelDKL``), var_mean ``[M]`` and var_chol
    ``[M, M]`` (lower triangle used) of the whitened q(v) = N(var_mean, L L^T); else None.
    loss: the objective at the last optimisation step (exact: negative marginal log-likelihood
    per point; SVGP: negative PPGPR objective of the last minibatch). Static: ``kind``, the MLP
    sizes, the noise floor and the Cholesky jitters (exact, SVGP) used by fit and posterior.
    """

    mlp: Any
    raw_lengthscale: jax.Array
    raw_outputscale: jax.Array
    raw_noise: jax.Array
    constant: jax.Array
    y_mean: jax.Array
    y_std: jax.Array
    loss: jax.Array
    inducing: jax.Array | None = None
    var_mean: jax.Array | None = None
    var_chol: jax.Array | None = None
    kind: str = flax.struct.field(pytree_node=False, default="exact")
    hidden: tuple[int, ...] = flax.struct.field(pytree_node=False, default=(64, 64))
    noise_floor: float = flax.struct.field(pytree_node=False, default=1e-4)
    jitter: float = flax.struct.field(pytree_node=False, default=1e-6)
    svgp_jitter: float = flax.struct.field(pytree_node=False, default=1e-4)


class FeatureExtractor(nn.Module):
    """MLP ``x: [N, D] -> [N, hidden[-1]]``, Swish after every layer (``DenseNetwork``)."""

    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for h in self.hidden:
            x = nn.swish(nn.Dense(h)(x))
        return x


def init_surrogate(config: SurrogateConfig, rng: jax.Array, dim: int) -> Surrogate:
    """A fresh exact-GP parameter set for inputs of dimension ``dim`` (float32)."""
    mlp = FeatureExtractor(config.hidden).init(rng, jnp.zeros((1, dim), jnp.float32))
    z = jnp.zeros((), jnp.float32)
    return Surrogate(mlp=mlp, raw_lengthscale=z, raw_outputscale=z, raw_noise=z, constant=z,
                     y_mean=z, y_std=jnp.ones((), jnp.float32), loss=z,
                     hidden=config.hidden, noise_floor=float(config.noise_floor),
                     jitter=float(config.jitter), svgp_jitter=float(config.svgp_jitter))


def features(params: Surrogate, x: jax.Array) -> jax.Array:
    """x: [N, D] -> [N, H] features of the deep kernel."""
    return FeatureExtractor(params.hidden).apply(params.mlp, x)


def hyperparameters(params: Surrogate) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(lengthscale, outputscale, noise variance), all positive scalars."""
    return (jax.nn.softplus(params.raw_lengthscale), jax.nn.softplus(params.raw_outputscale),
            params.noise_floor + jax.nn.softplus(params.raw_noise))


class ScaledRBF(tinygp.kernels.Kernel):
    """``s * exp(-|a - b|^2 / (2 l^2))`` on ``[H]`` points (tinygp's ``ExpSquared``, scaled).

    Matrices are computed as gpytorch does, from ``|a|^2 + |b|^2 - 2 a.b`` (one matmul, clamped
    at 0) instead of tinygp's pairwise ``vmap``, which builds (and differentiates) an
    ``[N, M, H]`` difference tensor.
    """

    lengthscale: jax.Array
    outputscale: jax.Array

    def evaluate(self, X1, X2):
        return self.outputscale * jnp.exp(-0.5 * jnp.sum((X1 - X2) ** 2) / self.lengthscale**2)

    def __call__(self, X1, X2=None):
        if X2 is None:
            return jnp.broadcast_to(self.outputscale, X1.shape[:1])
        d2 = ((X1**2).sum(-1)[:, None] + (X2**2).sum(-1)[None, :]
              - 2.0 * jnp.matmul(X1, X2.T, precision=jax.lax.Precision.HIGHEST))
        return self.outputscale * jnp.exp(-0.5 * jnp.maximum(d2, 0.0) / self.lengthscale**2)


def kernel(params: Surrogate) -> ScaledRBF:
    """The scaled RBF kernel on features (a tinygp kernel on ``[H]`` points)."""
    lengthscale, outputscale, _ = hyperparameters(params)
    return ScaledRBF(lengthscale, outputscale)


class Masked(tinygp.kernels.Kernel):
    """``k((a, m_a), (b, m_b)) = m_a * m_b * k(a, b)``: padded rows (mask 0) are uncorrelated
    with everything and have zero prior variance; inputs are pytrees ``(x [N, H], mask [N])``."""

    base: tinygp.kernels.Kernel

    def evaluate(self, X1, X2):
        (a, ma), (b, mb) = X1, X2
        return ma * mb * self.base.evaluate(a, b)

    def __call__(self, X1, X2=None):
        if X2 is None:
            a, m = X1
            return m * m * self.base(a)
        (a, ma), (b, mb) = X1, X2
        return ma[:, None] * mb[None, :] * self.base(a, b)


def standardise(y: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masked standardisation: y, mask [N] -> (y_std [N] (0 on padding), mean, std)."""
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (y * mask).sum() / n
    var = (((y - mean) * mask) ** 2).sum() / n
    std = jnp.where(var > 1e-12, jnp.sqrt(jnp.maximum(var, 1e-12)), 1.0)
    return (y - mean) / std * mask, mean, std
