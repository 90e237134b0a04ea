"""Non-linear squared flow (NLSq; Ziegler & Rush 2019), elementwise, with an analytic inverse.

``f(x) = a + b x + c / (1 + (d x + g)^2)`` per coordinate.

Monotonicity (derivation). With ``t = d x + g``,
``f'(x) = b - 2 c d t / (1 + t^2)^2``. The function ``t / (1 + t^2)^2`` is extremal at
``t^2 = 1/3`` where it equals ``+-3 sqrt(3) / 16``, so ``|2 c d t / (1 + t^2)^2| <=
(3 sqrt(3) / 8) |c d|`` and ``f' > 0`` for all ``x`` iff ``b > 0`` and
``|c| < (8 sqrt(3) / 9) * b / |d|`` (the bound of Ziegler & Rush). We parametrise
``b = exp(log_b)``, ``d = exp(log_d)``, ``c = slack * (8 sqrt(3) / 9) * (b / d) * tanh(c_raw)``
with ``slack = 0.95``, which gives ``f' >= (1 - slack) b > 0``.

Inverse. Given ``y``, let ``beta = b / d`` and ``q = y - a + beta g``. Then ``t`` solves
``beta t + c / (1 + t^2) = q``, i.e. the cubic ``t^3 + A t^2 + t + C = 0`` with
``A = -q / beta``, ``C = (c - q) / beta``, which has exactly one real root (``f`` is strictly
increasing). We take it by Cardano's formula in its cancellation-free form
(``u = cbrt(-r/2 - sign(r) sqrt(Delta))``, ``s = u - p / (3 u)``) and set ``x = (t - g) / d``.

Float32. Cardano's formula is ill-conditioned in float32 when ``|q| / beta`` is large (the
two complex roots cluster near the real axis, ``Delta`` cancels). So the root is clipped to
the bracket ``t in [(q - max(c, 0)) / beta, (q - min(c, 0)) / beta]`` (from
``0 <= 1/(1 + t^2) <= 1``) and polished with 4 Newton steps (clipped to the bracket), the
last one differentiable (implicit-function gradient). The round trip is accurate in float32
for ``|x|`` up to ``1e4`` (see the tests); float64 is not needed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxflows.bijectors._base import Array, VectorBijector, as_float_param, check_core_shape

_BOUND = 8.0 * math.sqrt(3.0) / 9.0


class NLSq(VectorBijector):
    """Elementwise ``y = a + b x + c / (1 + (d x + g)^2)`` (monotone; see the module docstring).

    Args (each ``[..., D]``, unconstrained):
      a: offset. log_b: ``b = exp(log_b)``. c_raw: ``c = slack (8 sqrt 3 / 9)(b/d) tanh(c_raw)``.
      log_d: ``d = exp(log_d)``. g: inner offset.
      slack: static float in ``(0, 1)`` (default 0.95).
    """

    def __init__(self, a, log_b, c_raw, log_d, g, slack: float = 0.95):
        owner = "NLSq"
        a = as_float_param(owner, "a", a, 1)
        arrs = {"log_b": log_b, "c_raw": c_raw, "log_d": log_d, "g": g}
        out = {}
        for name, val in arrs.items():
            arr = as_float_param(owner, name, val, 1)
            check_core_shape(owner, name, arr, a.shape[-1:], "a", a.shape)
            out[name] = arr
        if not 0.0 < float(slack) < 1.0:
            raise ValueError(f"NLSq: slack must be in (0, 1), got {slack}.")
        super().__init__(a.shape[-1])
        self.a = a
        self.log_b, self.c_raw, self.log_d, self.g = (
            out["log_b"], out["c_raw"], out["log_d"], out["g"])
        self.slack = float(slack)

    def _param_batch_shapes(self):
        return [(n, tuple(getattr(self, n).shape[:-1]))
                for n in ("a", "log_b", "c_raw", "log_d", "g")]

    def coefficients(self) -> tuple[Array, Array, Array, Array, Array]:
        """The constrained ``(a, b, c, d, g)``, each ``[..., D]``."""
        b = jnp.exp(self.log_b)
        d = jnp.exp(self.log_d)
        c = self.slack * _BOUND * (b / d) * jnp.tanh(self.c_raw)
        return self.a, b, c, d, self.g

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(y: [..., D], log_det: [...])``."""
        self._check_input(x)
        a, b, c, d, g = self.coefficients()
        t = d * x + g
        s = 1.0 / (1.0 + t * t)
        y = a + b * x + c * s
        deriv = b - 2.0 * c * d * t * s * s
        return y, jnp.sum(jnp.log(deriv), -1)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(x: [..., D], log_det: [...])`` via the cubic's real root."""
        self._check_input(y, "y")
        a, b, c, d, g = self.coefficients()
        beta = b / d
        q = y - a + beta * g
        lo = (q - jnp.maximum(c, 0.0)) / beta
        hi = (q - jnp.minimum(c, 0.0)) / beta

        def resid(t):
            return beta * t + c / (1.0 + t * t) - q

        def slope(t):
            s = 1.0 / (1.0 + t * t)
            return beta - 2.0 * c * t * s * s

        t = jax.lax.stop_gradient(_cardano(q, beta, c))
        lo_s, hi_s = jax.lax.stop_gradient(lo), jax.lax.stop_gradient(hi)
        t = jnp.where(jnp.isfinite(t), t, 0.5 * (lo_s + hi_s))
        t = jnp.clip(t, lo_s, hi_s)
        sg = jax.tree.map(jax.lax.stop_gradient, (beta, c, q))
        for _ in range(3):
            bt, ct, qt = sg
            s_ = 1.0 / (1.0 + t * t)
            t = jnp.clip(t - (bt * t + ct * s_ - qt) / (bt - 2.0 * ct * t * s_ * s_), lo_s, hi_s)
        t = t - resid(t) / slope(t)     # differentiable Newton step from the converged root
        x = (t - g) / d
        return x, -jnp.sum(jnp.log(d * slope(t)), -1)


def _cardano(q: Array, beta: Array, c: Array) -> Array:
    """Real root of ``t^3 + A t^2 + t + C``, ``A = -q/beta``, ``C = (c - q)/beta``."""
    big_a = -q / beta
    big_c = (c - q) / beta
    shift = big_a / 3.0
    p = 1.0 - big_a * shift                                        # B - A^2/3, B = 1
    r = 2.0 * shift * shift * shift - shift + big_c                # 2A^3/27 - AB/3 + C
    delta = jnp.maximum(0.25 * r * r + p * p * p / 27.0, 0.0)
    sign = jnp.where(r >= 0, 1.0, -1.0)
    u = jnp.cbrt(-0.5 * r - sign * jnp.sqrt(delta))
    safe_u = jnp.where(u == 0, 1.0, u)
    s = jnp.where(u == 0, 0.0, u - p / (3.0 * safe_u))
    return s - shift
