"""Householder flow (Tomczak & Welling 2016): a product of reflections, log-det exactly 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxflows.bijectors._base import Array, VectorBijector, as_float_param, vectorize


def _reflect(z: Array, v: Array) -> Array:
    # z - 2 v (v.z) / ||v||^2, no epsilon (as in the official code): v must be non-zero.
    return z - 2.0 * v * (jnp.dot(v, z) / jnp.dot(v, v))


def _apply_reflections(z: Array, vs: Array, reverse: bool) -> Array:
    order = range(vs.shape[0] - 1, -1, -1) if reverse else range(vs.shape[0])
    for t in order:
        z = _reflect(z, vs[t])
    return z


class Householder(VectorBijector):
    """``T`` Householder reflections applied in order: ``z_t = H(v_t) z_{t-1}``.

    ``H(v) z = z - 2 v (v.z) / ||v||^2`` is orthogonal and symmetric, so the log-det is exactly
    0 and the inverse applies the reflections in reverse order. No epsilon guards ``||v||``, as
    in the reference implementation: every ``v_t`` must be non-zero (NaN otherwise).

    Args:
      vectors: ``[..., T, D]`` reflection vectors (``[..., D]`` is read as ``T = 1``).
    """

    def __init__(self, vectors: Array):
        v = as_float_param("Householder", "vectors", vectors, 1)
        if v.ndim == 1:
            v = v[None, :]
        super().__init__(v.shape[-1], is_constant_jacobian=True)
        self.vectors = v

    def _param_batch_shapes(self):
        return [("vectors", tuple(self.vectors.shape[:-2]))]

    @property
    def num_reflections(self) -> int:
        """Number of reflections ``T``."""
        return self.vectors.shape[-2]

    def matrix(self) -> Array:
        """The orthogonal matrix ``U = H(v_T) ... H(v_1)``: ``[..., D, D]``."""
        eye = jnp.eye(self.dim, dtype=self.vectors.dtype)
        cols = jax.vmap(
            lambda vs: jax.vmap(lambda e: _apply_reflections(e, vs, False))(eye),
        )(self.vectors.reshape((-1,) + self.vectors.shape[-2:]))
        return jnp.swapaxes(cols, -1, -2).reshape(self.vectors.shape[:-2] + (self.dim,) * 2)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(U x: [..., D], zeros [...])``."""
        batch = self._check_input(x)
        y = vectorize(lambda z, vs: _apply_reflections(z, vs, False), "(d),(t,d)->(d)")(
            x, self.vectors)
        return y, self._zeros_log_det(y, batch)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(U^T y: [..., D], zeros [...])``."""
        batch = self._check_input(y, "y")
        x = vectorize(lambda z, vs: _apply_reflections(z, vs, True), "(d),(t,d)->(d)")(
            y, self.vectors)
        return x, self._zeros_log_det(x, batch)
