"""Affine autoregressive flows on a MADE: IAF (fast sampling) and MAF (fast density).

The MADE is the *conditioner*: any object with the static facts ``features``, ``num_params``
and ``order`` and a method ``apply(variables, x[, context]) -> [..., num_params, features]``
whose variables follow the MADE layout (see :class:`MADELike`). The Flax module
:class:`jaxflows.nn.made.MADE` is one; :class:`jaxflows.bijectors.made_masks.MADEConditioner`
(plain arrays, no Flax) is another. This module imports nothing from ``jaxflows.nn``.

One code path, :class:`AffineAutoregressive`, with a flag naming the fast direction. Each
coordinate is transformed as ``y_i = x_i exp(s_i) + m_i`` where ``(m_i, s_i)`` come from a MADE
applied to the *conditioning side*:

* ``fast='forward'`` (IAF, Kingma et al. 2016): the MADE reads the input ``x`` of ``forward``,
  so ``forward`` (noise -> data: sampling) is one parallel pass and ``inverse`` is sequential.
* ``fast='inverse'`` (MAF, Papamakarios et al. 2017): the MADE reads the output ``y``, so
  ``inverse`` (data -> noise: density) is one parallel pass and ``forward`` is sequential.

The sequential direction runs ``D`` passes in ``lax.fori_loop``; pass ``k`` sets the
coordinate at position ``k`` of the MADE order, whose inputs (positions ``< k``) are already
exact. The coordinates not yet set stay 0, so no intermediate value can overflow.

Scale parametrisation (``gate``), both bounded and stable:

* ``'sigmoid'`` (Kingma's IAF gating; the IAF default): ``sigma = sigmoid(g)``,
  ``y = sigma x + (1 - sigma) m``, log-scale ``log sigmoid(g) < 0``, with the gate logit
  ``g = k tanh((s_raw + gate_bias) / k)`` soft-clipped to ``(-k, k)``, ``k = gate_clip``
  (default 6, so ``log sigma > -6``; unclipped, the sequential inverse overflows for large
  inputs because ``1/sigma`` is unbounded). ``gate_bias`` (default 2) starts ``sigma`` near
  0.87, i.e. near identity when the MADE's last layer is zero.
* ``'tanh'`` (the MAF default): log-scale ``c tanh(s_raw / c)`` with ``c = max_log_scale``
  (default 3), so each step scales by a factor in ``[e^-c, e^c]``; ``y = x exp(.) + m``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors._base import Array, VectorBijector, as_float_param, broadcast_batch_shapes
from jaxflows.bijectors.made_masks import check_order


class MADELike(Protocol):
    """What :class:`AffineAutoregressive` needs from its conditioner (a MADE).

    ``features`` (``D``), ``num_params`` (must be 2: shift and raw scale) and ``order``
    (``order[j]`` = position of input ``j``; ``None`` is the identity) are static. ``apply``
    maps ``x: [..., D]`` (and ``context: [..., C]`` when given) to ``[..., num_params, D]``,
    with output ``i`` depending on input ``j`` only when ``order[j] < order[i]``. Its variables
    are ``{'params': {'layer_0': {'kernel': [D, H], ...}, ..., 'context': {'kernel': [C, H]}}}``
    (``context`` only when conditioned), as :class:`jaxflows.nn.made.MADE` creates them. The
    object must be hashable and comparable (it is static pytree metadata of the bijector).
    """

    features: int
    num_params: int
    order: tuple[int, ...] | None

    def apply(self, variables: Any, x: Array, context: Array | None = None) -> Array: ...


_MADE_ATTRS = ("features", "num_params", "order", "apply")


class AffineAutoregressive(VectorBijector):
    """Affine autoregressive bijector on a MADE; ``fast`` chooses the parallel direction.

    Args:
      made: the conditioner, a MADE with ``num_params == 2`` (static): any
        :class:`MADELike`, e.g. :class:`jaxflows.nn.made.MADE` or
        :class:`jaxflows.bijectors.made_masks.MADEConditioner`.
      params: its variables ``{'params': ...}`` (or the inner params dict); every leaf may carry
        the same leading batch dims (one MADE per batch element).
      fast: ``'forward'`` (IAF) or ``'inverse'`` (MAF).
      gate: ``'sigmoid'`` or ``'tanh'`` (see the module docstring).
      context: optional ``[..., C]`` conditioning input of the MADE (its first hidden layer).
      gate_bias, gate_clip, max_log_scale: constants of the two gates.
    """

    def __init__(self, made: MADELike, params: Any, *, fast: str, gate: str = "tanh",
                 context: Array | None = None, gate_bias: float = 2.0,
                 gate_clip: float = 6.0, max_log_scale: float = 3.0):
        owner = type(self).__name__
        missing = [a for a in _MADE_ATTRS if not hasattr(made, a)]
        if missing or not callable(made.apply):
            raise ValueError(
                f"{owner}: `made` must be a MADE-like conditioner with `features`, "
                f"`num_params`, `order` and `apply(variables, x[, context])` (e.g. "
                f"jaxflows.nn.made.MADE), got {made!r} (missing {missing or ['callable apply']}).")
        if made.num_params != 2:
            raise ValueError(f"{owner}: the MADE needs num_params=2, got {made.num_params}.")
        if fast not in ("forward", "inverse"):
            raise ValueError(f"{owner}: `fast` must be 'forward' or 'inverse', got {fast!r}.")
        if gate not in ("sigmoid", "tanh"):
            raise ValueError(f"{owner}: `gate` must be 'sigmoid' or 'tanh', got {gate!r}.")
        check_order(made.order, made.features)
        variables = dict(params) if "params" in params else {"params": params}
        inner = variables["params"]
        if "layer_0" not in inner:
            raise ValueError(f"{owner}: `params` are not MADE params (keys {sorted(inner)}).")
        k0 = inner["layer_0"]["kernel"]
        if k0.ndim < 2 or k0.shape[-2] != made.features:
            raise ValueError(
                f"{owner}: MADE params have first kernel of shape {tuple(k0.shape)}, which does "
                f"not match the MADE's features={made.features} (expected [..., "
                f"{made.features}, H]).")
        has_ctx = "context" in inner
        if (context is not None) != has_ctx:
            raise ValueError(
                f"{owner}: context given={context is not None} but MADE params "
                f"{'have' if has_ctx else 'have no'} a context layer.")
        if context is not None:
            context = as_float_param(owner, "context", context, 1)
            ck = inner["context"]["kernel"]
            if context.shape[-1] != ck.shape[-2]:
                raise ValueError(
                    f"{owner}: context has shape {tuple(context.shape)} but the MADE context "
                    f"kernel has shape {tuple(ck.shape)}: expected [..., {ck.shape[-2]}].")
        super().__init__(made.features)
        self.made = made
        self.params = variables
        self.context = context
        self.fast = fast
        self.gate = gate
        self.gate_bias = float(gate_bias)
        self.gate_clip = float(gate_clip)
        self.max_log_scale = float(max_log_scale)

    # -- shapes ---------------------------------------------------------------------------
    def _made_batch_shape(self) -> tuple[int, ...]:
        return tuple(self.params["params"]["layer_0"]["kernel"].shape[:-2])

    def _param_batch_shapes(self):
        shapes = [("MADE params", self._made_batch_shape())]
        if self.context is not None:
            shapes.append(("context", tuple(self.context.shape[:-1])))
        return shapes

    @property
    def autoregressive_order(self) -> np.ndarray:
        """``order[j]``: position of coordinate ``j``; ``y_i`` depends on ``x_j`` iff
        ``order[j] <= order[i]``."""
        order = self.made.order
        return np.arange(self.dim) if order is None else np.asarray(order)

    # -- conditioner ----------------------------------------------------------------------
    def _made_out(self, c: Array) -> Array:
        pb = self._made_batch_shape()
        if not pb:
            return self.made.apply(self.params, c, self.context)
        # Batched MADE params: broadcast everything to one batch, flatten it and vmap.
        named = [("input", tuple(c.shape[:-1])), ("MADE params", pb)]
        if self.context is not None:
            named.append(("context", tuple(self.context.shape[:-1])))
        full = broadcast_batch_shapes(self.name, named)
        n = int(np.prod(full)) if full else 1
        flat = lambda a, core: jnp.broadcast_to(a, full + core).reshape((n,) + core)
        c_f = flat(c, c.shape[-1:])
        p_f = jax.tree.map(lambda a: flat(a, a.shape[len(pb):]), self.params)
        if self.context is None:
            out = jax.vmap(lambda p, x: self.made.apply(p, x))(p_f, c_f)
        else:
            ctx_f = flat(self.context, self.context.shape[-1:])
            out = jax.vmap(lambda p, x, h: self.made.apply(p, x, h))(p_f, c_f, ctx_f)
        return out.reshape(full + out.shape[1:])

    def _shift_log_scale(self, c: Array) -> tuple[Array, Array]:
        out = self._made_out(c)
        m, s = out[..., 0, :], out[..., 1, :]
        if self.gate == "sigmoid":
            k = self.gate_clip
            g = k * jnp.tanh((s + self.gate_bias) / k)
            return (1.0 - jax.nn.sigmoid(g)) * m, jax.nn.log_sigmoid(g)
        c_max = self.max_log_scale
        return m, c_max * jnp.tanh(s / c_max)

    # -- the two directions ---------------------------------------------------------------
    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(y: [..., D], log_det: [...])``; parallel iff ``fast='forward'``."""
        batch = self._check_input(x)
        if self.fast == "forward":
            shift, ls = self._shift_log_scale(x)
            return x * jnp.exp(ls) + shift, jnp.sum(ls, -1)

        order = jnp.asarray(self.autoregressive_order)

        def body(k, carry):
            y, ls_all = carry
            shift, ls = self._shift_log_scale(y)
            now = order == k          # settle the coordinate at position k; others stay put
            return (jnp.where(now, x * jnp.exp(ls) + shift, y),
                    jnp.where(now, ls, ls_all))

        y0 = jnp.zeros(batch + (self.dim,), x.dtype)
        y, ls = jax.lax.fori_loop(0, self.dim, body, (y0, y0))
        return y, jnp.sum(ls, -1)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(x: [..., D], log_det: [...])``; parallel iff ``fast='inverse'``."""
        batch = self._check_input(y, "y")
        if self.fast == "inverse":
            shift, ls = self._shift_log_scale(y)
            return (y - shift) * jnp.exp(-ls), -jnp.sum(ls, -1)

        order = jnp.asarray(self.autoregressive_order)

        def body(k, carry):
            x, ls_all = carry
            shift, ls = self._shift_log_scale(x)
            now = order == k
            return (jnp.where(now, (y - shift) * jnp.exp(-ls), x),
                    jnp.where(now, ls, ls_all))

        x0 = jnp.zeros(batch + (self.dim,), y.dtype)
        x, ls = jax.lax.fori_loop(0, self.dim, body, (x0, x0))
        return x, -jnp.sum(ls, -1)


class IAF(AffineAutoregressive):
    """Inverse autoregressive flow: parallel ``forward`` (sampling), sequential ``inverse``.

    Same arguments as :class:`AffineAutoregressive` without ``fast``; ``gate`` defaults to
    ``'sigmoid'`` (Kingma's gated update ``y = sigma x + (1 - sigma) m``).
    """

    def __init__(self, made: MADELike, params: Any, *, gate: str = "sigmoid",
                 context: Array | None = None, gate_bias: float = 2.0,
                 gate_clip: float = 6.0, max_log_scale: float = 3.0):
        super().__init__(made, params, fast="forward", gate=gate, context=context,
                         gate_bias=gate_bias, gate_clip=gate_clip,
                         max_log_scale=max_log_scale)


class MAF(AffineAutoregressive):
    """Masked autoregressive flow: parallel ``inverse`` (density), sequential ``forward``.

    Same arguments as :class:`AffineAutoregressive` without ``fast``; ``gate`` defaults to
    ``'tanh'`` (bounded log-scale).
    """

    def __init__(self, made: MADELike, params: Any, *, gate: str = "tanh",
                 context: Array | None = None, gate_bias: float = 2.0,
                 gate_clip: float = 6.0, max_log_scale: float = 3.0):
        super().__init__(made, params, fast="inverse", gate=gate, context=context,
                         gate_bias=gate_bias, gate_clip=gate_clip,
                         max_log_scale=max_log_scale)
