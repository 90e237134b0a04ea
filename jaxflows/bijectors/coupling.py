"""RealNVP affine coupling (Dinh et al. 2017) with a bounded (tanh) log-scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors._base import (
    Array,
    VectorBijector,
    as_float_param,
    check_core_shape,
    vectorize,
)


def _conditioner(xm, w1, b1, w2, b2, c_max):
    h = jax.nn.silu(xm @ w1 + b1)
    out = h @ w2 + b2
    d = xm.shape[-1]
    return out[:d], c_max * jnp.tanh(out[d:] / c_max)


class AffineCoupling(VectorBijector):
    """Affine coupling ``y = mask * x + (1 - mask) * (x exp(s(x_m)) + t(x_m))``.

    The conditioner is a one-hidden-layer MLP (SiLU) on the masked input ``x_m = mask * x``;
    the coordinates with ``mask = 1`` pass through unchanged. The log-scale is bounded:
    ``s = c tanh(s_raw / c)`` with ``c = max_log_scale``. Log-det ``sum_{mask=0} s``.

    Args:
      mask: ``[D]`` booleans (static; True = passed through and conditioned on).
      w1: ``[..., D, H]``, b1: ``[..., H]``, w2: ``[..., H, 2D]``, b2: ``[..., 2D]``: the MLP;
        output columns ``[:D]`` are the shift, ``[D:]`` the raw log-scale.
      max_log_scale: ``c`` (static float).
    """

    def __init__(self, mask, w1, b1, w2, b2, max_log_scale: float = 2.0):
        mask_np = np.asarray(mask).astype(bool)
        owner = "AffineCoupling"
        if mask_np.ndim != 1:
            raise ValueError(f"{owner}: `mask` must be [D], got shape {mask_np.shape}.")
        d = mask_np.shape[0]
        w1 = as_float_param(owner, "w1", w1, 2)
        b1 = as_float_param(owner, "b1", b1, 1)
        w2 = as_float_param(owner, "w2", w2, 2)
        b2 = as_float_param(owner, "b2", b2, 1)
        h = w1.shape[-1]
        check_core_shape(owner, "w1", w1, (d, h), "mask", mask_np.shape)
        check_core_shape(owner, "b1", b1, (h,), "w1", w1.shape)
        check_core_shape(owner, "w2", w2, (h, 2 * d), "w1", w1.shape)
        check_core_shape(owner, "b2", b2, (2 * d,), "w2", w2.shape)
        super().__init__(d)
        self.mask = tuple(bool(m) for m in mask_np)
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        self.max_log_scale = float(max_log_scale)

    def _param_batch_shapes(self):
        return [("w1", tuple(self.w1.shape[:-2])), ("b1", tuple(self.b1.shape[:-1])),
                ("w2", tuple(self.w2.shape[:-2])), ("b2", tuple(self.b2.shape[:-1]))]

    def _core(self, inverse: bool):
        mask = jnp.asarray(np.asarray(self.mask, np.float32))
        keep = np.asarray(self.mask)
        c_max = self.max_log_scale

        def fn(v, w1, b1, w2, b2):
            shift, ls = _conditioner(v * mask, w1, b1, w2, b2, c_max)
            ls = jnp.where(keep, 0.0, ls)
            shift = jnp.where(keep, 0.0, shift)
            if inverse:
                return (v - shift) * jnp.exp(-ls), -jnp.sum(ls)
            return v * jnp.exp(ls) + shift, jnp.sum(ls)

        return vectorize(fn, "(d),(d,h),(h),(h,e),(e)->(d),()")

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(y: [..., D], log_det: [...])``."""
        self._check_input(x)
        return self._core(False)(x, self.w1, self.b1, self.w2, self.b2)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(x: [..., D], log_det: [...])``."""
        self._check_input(y, "y")
        return self._core(True)(y, self.w1, self.b1, self.w2, self.b2)
