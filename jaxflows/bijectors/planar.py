"""Planar flow (Rezende & Mohamed 2015) with the invertibility reparametrisation of u."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxflows.bijectors._base import (
    Array,
    VectorBijector,
    as_float_param,
    check_core_shape,
    solve_increasing,
    vectorize,
)


def constrain_u(u: Array, w: Array) -> Array:
    """``u_hat = u + (m(w.u) - w.u) w / ||w||^2`` with ``m(a) = -1 + softplus(a)``.

    Then ``w . u_hat = m(w . u) > -1`` for any raw ``u``, which makes the planar map invertible.
    Shapes: ``u, w: [..., D]`` -> ``[..., D]``. ``w`` must be non-zero.
    """
    wu = jnp.sum(w * u, axis=-1, keepdims=True)
    m = -1.0 + jax.nn.softplus(wu)
    return u + (m - wu) * w / jnp.sum(w * w, axis=-1, keepdims=True)


def _forward(z, u_hat, w, b):
    a = jnp.dot(w, z) + b
    t = jnp.tanh(a)
    wu = jnp.dot(w, u_hat)
    return z + u_hat * t, jnp.log1p((1.0 - t * t) * wu)


def _inverse(y, u_hat, w, b):
    # w.y = alpha + (w.u_hat) tanh(alpha + b) with alpha = w.z: increasing in alpha because
    # w.u_hat > -1, and |alpha - w.y| <= |w.u_hat|, which brackets the root.
    wu = jnp.dot(w, u_hat)
    wy = jnp.dot(w, y)
    f = lambda alpha: alpha + wu * jnp.tanh(alpha + b) - wy
    alpha = solve_increasing(f, wy - jnp.abs(wu) - 1e-3, wy + jnp.abs(wu) + 1e-3)
    t = jnp.tanh(alpha + b)
    return y - u_hat * t, -jnp.log1p((1.0 - t * t) * wu)


class Planar(VectorBijector):
    """Planar flow ``y = z + u_hat tanh(w.z + b)``, log-det ``log(1 + (1 - tanh^2) w.u_hat)``.

    ``u_hat`` is computed from the raw ``u`` by :func:`constrain_u`, so ``w.u_hat >= -1`` and
    the map is invertible for every raw ``u``.

    Inverse: the component along ``w`` solves the scalar equation
    ``w.y = alpha + (w.u_hat) tanh(alpha + b)`` for ``alpha = w.z``. Its left side is strictly
    increasing, and the root lies within ``|w.u_hat|`` of ``w.y``; we bisect that bracket for 50
    steps in a ``lax.fori_loop`` (to float resolution) and finish with one Newton step whose
    gradient is the implicit-function gradient. Then ``z = y - u_hat tanh(alpha + b)``.

    Args:
      u: ``[..., D]`` raw (unconstrained) ``u``.
      w: ``[..., D]`` non-zero.
      b: ``[...]`` bias.
    """

    def __init__(self, u: Array, w: Array, b: Array):
        u = as_float_param("Planar", "u", u, 1)
        w = as_float_param("Planar", "w", w, 1)
        b = as_float_param("Planar", "b", b, 0)
        check_core_shape("Planar", "w", w, u.shape[-1:], "u", u.shape)
        super().__init__(u.shape[-1])
        self.u = u
        self.w = w
        self.b = b

    def _param_batch_shapes(self):
        return [("u", tuple(self.u.shape[:-1])), ("w", tuple(self.w.shape[:-1])),
                ("b", tuple(self.b.shape))]

    @property
    def u_hat(self) -> Array:
        """The constrained ``u_hat: [..., D]`` (``w . u_hat >= -1``)."""
        return constrain_u(self.u, self.w)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(y: [..., D], log_det: [...])``."""
        self._check_input(x)
        return vectorize(_forward, "(d),(d),(d),()->(d),()")(x, self.u_hat, self.w, self.b)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(x: [..., D], log_det: [...])`` (scalar root-find, see class)."""
        self._check_input(y, "y")
        return vectorize(_inverse, "(d),(d),(d),()->(d),()")(y, self.u_hat, self.w, self.b)
