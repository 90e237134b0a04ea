"""Volume-preserving linear IAF and its convex combination (Tomczak & Welling 2017).

Both apply a unit lower-triangular matrix ``L``: ``z -> L z``, ``det L = 1``, log-det exactly 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors._base import (
    Array,
    VectorBijector,
    as_float_param,
    check_core_shape,
    fill_strictly_lower,
    is_concrete,
    vectorize,
)


def _matvec(x: Array, m: Array) -> Array:
    return m @ x


def _unit_lower_solve(y: Array, m: Array) -> Array:
    return jax.scipy.linalg.solve_triangular(m, y, lower=True, unit_diagonal=True)


class _UnitLowerTriangular(VectorBijector):
    """Base: ``y = L x`` with ``L`` unit lower-triangular (subclasses define ``lower_matrix``)."""

    def lower_matrix(self) -> Array:
        """The unit lower-triangular matrix ``L: [..., D, D]``."""
        raise NotImplementedError

    @property
    def autoregressive_order(self) -> np.ndarray:
        """``y_i`` depends on ``x_j`` only for ``j <= i``: the identity order."""
        return np.arange(self.dim)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(L x: [..., D], zeros [...])``."""
        batch = self._check_input(x)
        y = vectorize(_matvec, "(d),(d,d)->(d)")(x, self.lower_matrix())
        return y, self._zeros_log_det(y, batch)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(L^{-1} y: [..., D], zeros [...])`` by a triangular solve."""
        batch = self._check_input(y, "y")
        x = vectorize(_unit_lower_solve, "(d),(d,d)->(d)")(y, self.lower_matrix())
        return x, self._zeros_log_det(x, batch)


def _unit_lower(m: Array) -> Array:
    d = m.shape[-1]
    return jnp.tril(m, -1) + jnp.eye(d, dtype=m.dtype)


class LinearIAF(_UnitLowerTriangular):
    """Linear IAF: ``y = L x`` with ``L = I + tril(matrix, -1)`` (unit diagonal, log-det 0).

    Args:
      matrix: ``[..., D, D]``; only its strictly-lower part is used (diagonal and upper part
        are ignored). Use :meth:`from_entries` to pass only the ``D(D-1)/2`` free entries.
    """

    def __init__(self, matrix: Array):
        m = as_float_param("LinearIAF", "matrix", matrix, 2)
        if m.shape[-1] != m.shape[-2]:
            raise ValueError(f"LinearIAF: `matrix` must be square, got shape {tuple(m.shape)}.")
        super().__init__(m.shape[-1], is_constant_jacobian=True)
        self.matrix = m

    @classmethod
    def from_entries(cls, entries: Array, dim: int) -> LinearIAF:
        """Builds ``L`` from its strictly-lower entries ``[..., D(D-1)/2]`` (row-major)."""
        return cls(fill_strictly_lower(entries, dim))

    def _param_batch_shapes(self):
        return [("matrix", tuple(self.matrix.shape[:-2]))]

    def lower_matrix(self) -> Array:
        """``I + tril(matrix, -1)``: ``[..., D, D]``."""
        return _unit_lower(self.matrix)


class CCLinearIAF(_UnitLowerTriangular):
    """Convex-combination linear IAF: ``L = I + tril(sum_k w_k M_k, -1)``, log-det 0.

    Mixing then masking equals the convex combination of the ``K`` unit lower-triangular
    matrices ``I + tril(M_k, -1)`` because the weights sum to one. ``K = 1`` is
    :class:`LinearIAF`.

    Args:
      matrices: ``[..., K, D, D]``; only the strictly-lower parts are used.
      logits: ``[..., K]`` unnormalised weights, ``w = softmax(logits)``; or
      weights: ``[..., K]`` weights on the simplex (checked when concrete). Give exactly one.
    """

    def __init__(self, matrices: Array, logits: Array | None = None,
                 weights: Array | None = None):
        m = as_float_param("CCLinearIAF", "matrices", matrices, 3)
        if m.shape[-1] != m.shape[-2]:
            raise ValueError(
                f"CCLinearIAF: `matrices` must be [..., K, D, D], got shape {tuple(m.shape)}.")
        if (logits is None) == (weights is None):
            raise ValueError("CCLinearIAF: give exactly one of `logits` or `weights`.")
        super().__init__(m.shape[-1], is_constant_jacobian=True)
        k = m.shape[-3]
        self.matrices = m
        self.logits = None
        self.weights_param = None
        if logits is not None:
            lg = as_float_param("CCLinearIAF", "logits", logits, 1)
            check_core_shape("CCLinearIAF", "logits", lg, (k,), "matrices", m.shape)
            self.logits = lg
        else:
            w = as_float_param("CCLinearIAF", "weights", weights, 1)
            check_core_shape("CCLinearIAF", "weights", w, (k,), "matrices", m.shape)
            if is_concrete(w) and w.size:
                w_np = np.asarray(w)
                if np.any(w_np < 0) or not np.all(np.abs(w_np.sum(-1) - 1.0) < 1e-5):
                    raise ValueError(
                        "CCLinearIAF: `weights` must be non-negative and sum to 1 over the last "
                        f"axis (shape {tuple(w.shape)}).")
            self.weights_param = w

    @property
    def num_components(self) -> int:
        """``K``."""
        return self.matrices.shape[-3]

    def _param_batch_shapes(self):
        w = self.logits if self.logits is not None else self.weights_param
        return [("matrices", tuple(self.matrices.shape[:-3])), ("weights", tuple(w.shape[:-1]))]

    @property
    def weights(self) -> Array:
        """Mixing weights on the simplex: ``[..., K]``."""
        if self.logits is not None:
            return jax.nn.softmax(self.logits, axis=-1)
        return self.weights_param

    def lower_matrix(self) -> Array:
        """``I + tril(sum_k w_k M_k, -1)``: ``[..., D, D]``."""
        # An unrolled sum over the (static, small) K: XLA:CPU runs the equivalent
        # ``jnp.sum(w[..., None, None] * M, axis=-3)`` ~100x slower at D = 784.
        w, m = self.weights, self.matrices
        mixed = w[..., 0, None, None] * m[..., 0, :, :]
        for k in range(1, m.shape[-3]):
            mixed = mixed + w[..., k, None, None] * m[..., k, :, :]
        return _unit_lower(mixed)
