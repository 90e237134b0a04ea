"""Activation normalisation (Kingma & Dhariwal 2018): per-dimension scale and shift."""

from __future__ import annotations

import jax.numpy as jnp

from jaxflows.bijectors._base import Array, VectorBijector, as_float_param, check_core_shape


class ActNorm(VectorBijector):
    """``y = x exp(log_scale) + loc`` per dimension; log-det ``sum(log_scale)``.

    Args:
      loc: ``[..., D]``; log_scale: ``[..., D]``. Use :func:`actnorm_init` for the
        data-dependent initialisation.
    """

    def __init__(self, loc: Array, log_scale: Array):
        loc = as_float_param("ActNorm", "loc", loc, 1)
        log_scale = as_float_param("ActNorm", "log_scale", log_scale, 1)
        check_core_shape("ActNorm", "log_scale", log_scale, loc.shape[-1:], "loc", loc.shape)
        super().__init__(loc.shape[-1], is_constant_jacobian=True)
        self.loc = loc
        self.log_scale = log_scale

    def _param_batch_shapes(self):
        return [("loc", tuple(self.loc.shape[:-1])),
                ("log_scale", tuple(self.log_scale.shape[:-1]))]

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(y: [..., D], log_det: [...])``."""
        batch = self._check_input(x)
        y = x * jnp.exp(self.log_scale) + self.loc
        return y, jnp.broadcast_to(jnp.sum(self.log_scale, -1), batch)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(x: [..., D], log_det: [...])``."""
        batch = self._check_input(y, "y")
        x = (y - self.loc) * jnp.exp(-self.log_scale)
        return x, jnp.broadcast_to(-jnp.sum(self.log_scale, -1), batch)


def actnorm_init(x: Array, side: str = "inverse", eps: float = 1e-6) -> tuple[Array, Array]:
    """Data-dependent ActNorm init from a batch ``x: [N, D]`` -> ``(loc [D], log_scale [D])``.

    ``side='inverse'`` (default; ``x`` are data-side samples, as in density estimation where
    data go through ``inverse``): ``ActNorm(loc, log_scale).inverse(x)`` has zero mean and
    unit variance per dimension. ``side='forward'``: ``x`` are inputs of ``forward`` and
    ``forward(x)`` is standardised instead. ``eps`` guards constant dimensions.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"actnorm_init: x must be [N, D], got shape {tuple(x.shape)}.")
    mean = jnp.mean(x, 0)
    log_std = 0.5 * jnp.log(jnp.var(x, 0) + eps)
    if side == "inverse":
        return mean, log_std
    if side == "forward":
        return -mean * jnp.exp(-log_std), -log_std
    raise ValueError(f"actnorm_init: side must be 'inverse' or 'forward', got {side!r}.")
