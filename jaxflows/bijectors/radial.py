"""Radial flow (Rezende & Mohamed 2015) with ``beta >= -alpha`` and an analytic inverse."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxflows.bijectors._base import (
    Array,
    VectorBijector,
    as_float_param,
    safe_norm,
    vectorize,
)


def _log_det(r, alpha, beta, d):
    # (D-1) log(1 + beta h) + log(1 + beta h + beta h' r), h = 1/(alpha + r), which simplifies
    # to (D-1) log1p(beta / (alpha + r)) + log1p(alpha beta / (alpha + r)^2).
    ar = alpha + r
    return (d - 1) * jnp.log1p(beta / ar) + jnp.log1p(alpha * beta / (ar * ar))


def _forward(z, z0, alpha, beta):
    diff = z - z0
    r = safe_norm(diff)
    y = z + (beta / (alpha + r)) * diff
    return y, _log_det(r, alpha, beta, z.shape[-1])


def _inverse(y, z0, alpha, beta):
    # ||y - z0|| = r (1 + beta / (alpha + r)) =: s gives r^2 + (alpha + beta - s) r - s alpha = 0;
    # r is its non-negative root. We use the cancellation-free form of the quadratic formula.
    diff = y - z0
    s = safe_norm(diff)
    p = alpha + beta - s
    disc = jnp.sqrt(p * p + 4.0 * s * alpha)
    r_plus = 0.5 * (disc - p)                      # accurate when p <= 0
    denom = jnp.where(p > 0, p + disc, 1.0)
    r_alt = 2.0 * s * alpha / denom                # accurate when p > 0
    r = jnp.where(p > 0, r_alt, r_plus)
    # z - z0 = (y - z0) (alpha + r) / (alpha + r + beta); alpha + r + beta > 0 since beta > -alpha.
    x = z0 + diff * ((alpha + r) / (alpha + r + beta))
    return x, -_log_det(r, alpha, beta, y.shape[-1])


class Radial(VectorBijector):
    """Radial flow ``y = z + beta (z - z0) / (alpha + ||z - z0||)``.

    ``alpha = softplus(alpha_raw) > 0`` and ``beta = -alpha + softplus(beta_raw) > -alpha``,
    which makes the map invertible. Log-det
    ``(D-1) log(1 + beta/(alpha + r)) + log(1 + alpha beta / (alpha + r)^2)``, ``r = ||z - z0||``.

    Inverse (analytic): the radius ``r`` of ``z`` solves the quadratic
    ``r^2 + (alpha + beta - s) r - alpha s = 0`` with ``s = ||y - z0||``; its non-negative root
    gives ``z = z0 + (y - z0)(alpha + r)/(alpha + r + beta)``.

    Args:
      z0: ``[..., D]`` centre.
      alpha_raw: ``[...]``.
      beta_raw: ``[...]``.
    """

    def __init__(self, z0: Array, alpha_raw: Array, beta_raw: Array):
        z0 = as_float_param("Radial", "z0", z0, 1)
        alpha_raw = as_float_param("Radial", "alpha_raw", alpha_raw, 0)
        beta_raw = as_float_param("Radial", "beta_raw", beta_raw, 0)
        super().__init__(z0.shape[-1])
        self.z0 = z0
        self.alpha_raw = alpha_raw
        self.beta_raw = beta_raw

    def _param_batch_shapes(self):
        return [("z0", tuple(self.z0.shape[:-1])), ("alpha_raw", tuple(self.alpha_raw.shape)),
                ("beta_raw", tuple(self.beta_raw.shape))]

    @property
    def alpha(self) -> Array:
        """``softplus(alpha_raw)``: ``[...]``."""
        return jax.nn.softplus(self.alpha_raw)

    @property
    def beta(self) -> Array:
        """``-alpha + softplus(beta_raw)``: ``[...]``."""
        return -self.alpha + jax.nn.softplus(self.beta_raw)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(y: [..., D], log_det: [...])``."""
        self._check_input(x)
        return vectorize(_forward, "(d),(d),(),()->(d),()")(x, self.z0, self.alpha, self.beta)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(x: [..., D], log_det: [...])`` (analytic)."""
        self._check_input(y, "y")
        return vectorize(_inverse, "(d),(d),(),()->(d),()")(y, self.z0, self.alpha, self.beta)
