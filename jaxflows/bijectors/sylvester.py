"""Sylvester normalizing flows (van den Berg et al. 2018): orthogonal and triangular variants.

``y = z + Q R tanh(R~ Q^T z + b)`` with ``Q`` a ``D x D`` orthogonal matrix, ``R`` and ``R~``
upper-triangular. The log-det is ``sum_i log|1 + r_ii r~_ii tanh'(a_i)|`` with
``a = R~ Q^T z + b``. The diagonals are ``r_ii = tanh(diag1_raw_i)``, ``r~_ii = tanh(diag2_raw_i)``,
so ``r_ii r~_ii`` lies in ``(-1, 1)``, ``1 + r_ii r~_ii tanh' > 0`` and the map is invertible.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors._base import (
    Array,
    VectorBijector,
    as_float_param,
    check_core_shape,
    solve_increasing,
    vectorize,
)
from jaxflows.bijectors.householder import _apply_reflections


def _upper(raw: Array, diag_raw: Array) -> Array:
    return jnp.triu(raw, 1) + jnp.diag(jnp.tanh(diag_raw))


def _core_forward(z, r1, r2, d1, d2, b, q: Callable, qt: Callable):
    big_r, big_rt = _upper(r1, d1), _upper(r2, d2)
    t = jnp.tanh(big_rt @ qt(z) + b)
    y = z + q(big_r @ t)
    dprod = jnp.tanh(d1) * jnp.tanh(d2)
    return y, jnp.sum(jnp.log1p(dprod * (1.0 - t * t)))


def _core_inverse(y, r1, r2, d1, d2, b, q: Callable, qt: Callable):
    # With u = Q^T z: Q^T y = u + R tanh(R~ u + b), an upper-triangular system. Solve it from
    # the last coordinate up; coordinate i solves the increasing scalar equation
    #   u_i + r_ii tanh(r~_ii u_i + c_i) = (Q^T y)_i - e_i,
    # c_i = sum_{k>i} R~_ik u_k + b_i,  e_i = sum_{j>i} R_ij tanh(a_j),
    # whose root lies within |r_ii| of the right side.
    big_r, big_rt = _upper(r1, d1), _upper(r2, d2)
    v = qt(y)
    d = y.shape[-1]

    def body(k, carry):
        u, th = carry
        i = d - 1 - k
        rii, rtii = big_r[i, i], big_rt[i, i]
        c = jnp.dot(big_rt[i], u) + b[i]          # u_i is still 0 here
        target = v[i] - jnp.dot(big_r[i], th)     # th_i is still 0 here
        f = lambda s: s + rii * jnp.tanh(rtii * s + c) - target
        ui = solve_increasing(f, target - jnp.abs(rii) - 1e-3, target + jnp.abs(rii) + 1e-3)
        return u.at[i].set(ui), th.at[i].set(jnp.tanh(rtii * ui + c))

    u, th = jax.lax.fori_loop(0, d, body, (jnp.zeros_like(v), jnp.zeros_like(v)))
    dprod = jnp.tanh(d1) * jnp.tanh(d2)
    return q(u), -jnp.sum(jnp.log1p(dprod * (1.0 - th * th)))


class _Sylvester(VectorBijector):
    """Shared parameters and checks of the two Sylvester variants."""

    def _init_common(self, owner, r1, r2, diag1_raw, diag2_raw, b):
        r1 = as_float_param(owner, "r1", r1, 2)
        d = r1.shape[-1]
        r2 = as_float_param(owner, "r2", r2, 2)
        diag1_raw = as_float_param(owner, "diag1_raw", diag1_raw, 1)
        diag2_raw = as_float_param(owner, "diag2_raw", diag2_raw, 1)
        b = as_float_param(owner, "b", b, 1)
        check_core_shape(owner, "r1", r1, (d, d), "r1", r1.shape)
        check_core_shape(owner, "r2", r2, (d, d), "r1", r1.shape)
        for name, arr in (("diag1_raw", diag1_raw), ("diag2_raw", diag2_raw), ("b", b)):
            check_core_shape(owner, name, arr, (d,), "r1", r1.shape)
        super().__init__(d)
        self.r1, self.r2, self.diag1_raw, self.diag2_raw, self.b = (
            r1, r2, diag1_raw, diag2_raw, b)

    def _common_batch_shapes(self):
        return [("r1", tuple(self.r1.shape[:-2])), ("r2", tuple(self.r2.shape[:-2])),
                ("diag1_raw", tuple(self.diag1_raw.shape[:-1])),
                ("diag2_raw", tuple(self.diag2_raw.shape[:-1])), ("b", tuple(self.b.shape[:-1]))]

    def _common(self):
        return self.r1, self.r2, self.diag1_raw, self.diag2_raw, self.b


class SylvesterOrthogonal(_Sylvester):
    """Householder-Sylvester flow: ``Q = H(v_1) ... H(v_H)``, a product of ``H`` reflections.

    No closed-form inverse exists, but since ``Q`` is square the inverse reduces to the
    triangular system ``Q^T y = u + R tanh(R~ u + b)`` (``u = Q^T z``), solved coordinate by
    coordinate from the last one with a bracketed scalar root-find (bisection in
    ``lax.fori_loop`` plus one implicit-gradient Newton step). It is sequential in ``D``.

    Args:
      q_vectors: ``[..., H, D]`` Householder vectors (non-zero).
      r1, r2: ``[..., D, D]``; strictly-upper parts of ``R`` and ``R~``.
      diag1_raw, diag2_raw: ``[..., D]``; ``diag R = tanh(diag1_raw)``,
        ``diag R~ = tanh(diag2_raw)``.
      b: ``[..., D]``.
    """

    def __init__(self, q_vectors, r1, r2, diag1_raw, diag2_raw, b):
        self._init_common("SylvesterOrthogonal", r1, r2, diag1_raw, diag2_raw, b)
        qv = as_float_param("SylvesterOrthogonal", "q_vectors", q_vectors, 2)
        check_core_shape("SylvesterOrthogonal", "q_vectors", qv, (self.dim,), "r1", r1.shape)
        self.q_vectors = qv

    def _param_batch_shapes(self):
        return [("q_vectors", tuple(self.q_vectors.shape[:-2])), *self._common_batch_shapes()]

    @staticmethod
    def _fns(qv):
        return (lambda u: _apply_reflections(u, qv, True),
                lambda z: _apply_reflections(z, qv, False))

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(y: [..., D], log_det: [...])``."""
        self._check_input(x)
        fn = lambda z, qv, *p: _core_forward(z, *p, *self._fns(qv))
        return vectorize(fn, "(d),(h,d),(d,d),(d,d),(d),(d),(d)->(d),()")(
            x, self.q_vectors, *self._common())

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(x: [..., D], log_det: [...])`` (sequential root-finds)."""
        self._check_input(y, "y")
        fn = lambda z, qv, *p: _core_inverse(z, *p, *self._fns(qv))
        return vectorize(fn, "(d),(h,d),(d,d),(d,d),(d),(d),(d)->(d),()")(
            y, self.q_vectors, *self._common())


class SylvesterTriangular(_Sylvester):
    """Triangular Sylvester flow: ``Q = I`` (``permute=False``) or the reversal permutation.

    Stack steps with alternating ``permute`` (as van den Berg et al. do). The Jacobian is
    triangular: upper (``y_i`` depends on ``x_j, j >= i``) for ``Q = I``, lower for the
    reversal; :attr:`autoregressive_order` states it. Inverse as in
    :class:`SylvesterOrthogonal` (sequential scalar root-finds).

    Args:
      r1, r2: ``[..., D, D]``; diag1_raw, diag2_raw, b: ``[..., D]`` (see the module docstring).
      permute: static bool, ``Q`` = reversal permutation when True.
    """

    def __init__(self, r1, r2, diag1_raw, diag2_raw, b, permute: bool = False):
        self._init_common("SylvesterTriangular", r1, r2, diag1_raw, diag2_raw, b)
        self.permute = bool(permute)

    def _param_batch_shapes(self):
        return self._common_batch_shapes()

    @property
    def autoregressive_order(self) -> np.ndarray:
        """``order[j]``: position of coordinate ``j``; ``y_i`` depends on ``x_j`` iff
        ``order[j] <= order[i]``."""
        d = self.dim
        return np.arange(d) if self.permute else np.arange(d)[::-1].copy()

    def _fns(self):
        if self.permute:
            flip = lambda v: v[::-1]
            return flip, flip
        ident = lambda v: v
        return ident, ident

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(y: [..., D], log_det: [...])``."""
        self._check_input(x)
        fn = lambda z, *p: _core_forward(z, *p, *self._fns())
        return vectorize(fn, "(d),(d,d),(d,d),(d),(d),(d)->(d),()")(x, *self._common())

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(x: [..., D], log_det: [...])`` (sequential root-finds)."""
        self._check_input(y, "y")
        fn = lambda z, *p: _core_inverse(z, *p, *self._fns())
        return vectorize(fn, "(d),(d,d),(d,d),(d),(d),(d)->(d),()")(y, *self._common())
