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

    The matrices are held as their strictly-lower entries ``[..., K, D(D-1)/2]`` and mixed
    there (the same sums, entry by entry, as mixing the full matrices); ``L`` is filled once
    from the mixed entries. An amortized ccLinIAF (:meth:`from_entries`) thus never scatters
    ``K`` full matrices per example, which XLA:CPU runs as a loop (timings:
    ``benchmarks/README.md``).

    Args:
      matrices: ``[..., K, D, D]``; only the strictly-lower parts are used (or build from
        the entries alone with :meth:`from_entries`).
      logits: ``[..., K]`` unnormalised weights, ``w = softmax(logits)``; or
      weights: ``[..., K]`` weights on the simplex (checked when concrete). Give exactly one.
    """

    def __init__(self, matrices: Array, logits: Array | None = None,
                 weights: Array | None = None):
        m = as_float_param("CCLinearIAF", "matrices", matrices, 3)
        if m.shape[-1] != m.shape[-2]:
            raise ValueError(
                f"CCLinearIAF: `matrices` must be [..., K, D, D], got shape {tuple(m.shape)}.")
        rows, cols = np.tril_indices(m.shape[-1], -1)
        self._init(m[..., rows, cols], m.shape[-1], logits, weights)

    @classmethod
    def from_entries(cls, entries: Array, dim: int, logits: Array | None = None,
                     weights: Array | None = None) -> CCLinearIAF:
        """From the strictly-lower entries ``[..., K, D(D-1)/2]`` (row-major, the order of
        ``np.tril_indices(D, -1)``) and ``logits`` or ``weights`` ``[..., K]``."""
        e = as_float_param("CCLinearIAF", "entries", entries, 2)
        n = dim * (dim - 1) // 2
        if e.shape[-1] != n:
            raise ValueError(f"CCLinearIAF: `entries` must be [..., K, {n}] = [..., K, D(D-1)/2] "
                             f"for D={dim}, got shape {tuple(e.shape)}.")
        self = cls.__new__(cls)
        self._init(e, dim, logits, weights)
        return self

    def _init(self, entries: Array, dim: int, logits: Array | None,
              weights: Array | None) -> None:
        if (logits is None) == (weights is None):
            raise ValueError("CCLinearIAF: give exactly one of `logits` or `weights`.")
        super().__init__(dim, is_constant_jacobian=True)
        k = entries.shape[-2]
        self.entries = entries
        self.logits = None
        self.weights_param = None
        # the reported shape of the matrices, for shape checks and messages
        m_shape = tuple(entries.shape[:-1]) + (dim, dim)
        if logits is not None:
            lg = as_float_param("CCLinearIAF", "logits", logits, 1)
            check_core_shape("CCLinearIAF", "logits", lg, (k,), "matrices", m_shape)
            self.logits = lg
        else:
            w = as_float_param("CCLinearIAF", "weights", weights, 1)
            check_core_shape("CCLinearIAF", "weights", w, (k,), "matrices", m_shape)
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
        return self.entries.shape[-2]

    @property
    def matrices(self) -> Array:
        """The ``K`` strictly-lower matrices ``[..., K, D, D]`` (zero on and above the
        diagonal)."""
        return fill_strictly_lower(self.entries, self.dim)

    def _param_batch_shapes(self):
        w = self.logits if self.logits is not None else self.weights_param
        return [("matrices", tuple(self.entries.shape[:-2])), ("weights", tuple(w.shape[:-1]))]

    @property
    def weights(self) -> Array:
        """Mixing weights on the simplex: ``[..., K]``."""
        if self.logits is not None:
            return jax.nn.softmax(self.logits, axis=-1)
        return self.weights_param

    def mixed_entries(self) -> Array:
        """``sum_k w_k e_k``: the strictly-lower entries of ``L`` ``[..., D(D-1)/2]``."""
        # An unrolled sum over the (static, small) K: XLA:CPU ran the reduction form of the
        # same mix over full matrices (``jnp.sum(..., axis=-3)``) ~100x slower at D = 784.
        w, e = self.weights, self.entries
        mixed = w[..., 0, None] * e[..., 0, :]
        for k in range(1, e.shape[-2]):
            mixed = mixed + w[..., k, None] * e[..., k, :]
        return mixed

    def lower_matrix(self) -> Array:
        """``I + tril(sum_k w_k M_k, -1)``: ``[..., D, D]``."""
        return _unit_lower(fill_strictly_lower(self.mixed_entries(), self.dim))
