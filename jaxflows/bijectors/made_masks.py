"""MADE math with explicit arrays: degrees, masks, order checks and a plain conditioner.

A MADE (Germain et al. 2015) is a masked MLP whose output ``i`` depends only on inputs ``j``
that come before ``i`` in the autoregressive order (and on an optional context, which feeds the
first hidden layer without a mask). The mask construction here is pure numpy; the Flax module
:class:`jaxflows.nn.made.MADE` builds its layers from it.

:class:`MADEConditioner` is the same network as a plain object with explicit parameters (no
Flax): ``init(key, x[, context])`` gives variables in the Flax MADE's layout and
``apply(variables, x[, context])`` computes the same function as the Flax module on them. It is
what the ``iaf``/``maf`` entries of ``EXAMPLES`` condition on, so the bijector package needs
nothing from ``jaxflows.nn``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def made_degrees(features: int, hidden: Sequence[int], order: Sequence[int] | None
                 ) -> list[np.ndarray]:
    """Degrees of the input units (``order + 1``, in ``1..D``) and of each hidden layer.

    Hidden units cycle deterministically through ``0..D-1``. Degree-0 units see no input, only
    the context (when there is one), so that every output, the first in the order included,
    can depend on the context; without a context they act as extra biases.
    Returns ``[deg_in: [D], deg_h1: [H1], ...]``.
    """
    order = np.arange(features) if order is None else np.asarray(order)
    degs = [order + 1]
    for h in hidden:
        degs.append(np.arange(h) % features)
    return degs


def made_masks(features: int, hidden: Sequence[int], order: Sequence[int] | None,
               num_params: int = 1) -> list[np.ndarray]:
    """The binary masks of a MADE, one per layer, as ``[fan_in, fan_out]`` float32 arrays.

    Hidden layer masks connect unit ``k`` to unit ``j`` of the previous layer when
    ``deg_k >= deg_j``; the output mask connects output ``(p, i)`` (column ``p * D + i``) to
    hidden unit ``k`` when ``deg_in_i > deg_k``, so output ``i`` sees only inputs that come
    strictly before ``i`` in the order.
    """
    degs = made_degrees(features, hidden, order)
    masks = [(d_out[None, :] >= d_in[:, None]).astype(np.float32)
             for d_in, d_out in zip(degs[:-1], degs[1:])]
    out = (degs[0][None, :] > degs[-1][:, None]).astype(np.float32)     # [H_last, D]
    masks.append(np.tile(out, (1, num_params)))
    return masks


def check_order(order: Sequence[int] | None, features: int) -> None:
    """Raises ``ValueError`` unless ``order`` is a permutation of ``range(features)``."""
    if order is None:
        return
    arr = np.asarray(order)
    if arr.shape != (features,) or sorted(arr.tolist()) != list(range(features)):
        raise ValueError(
            f"MADE: `order` must be a permutation of range({features}) with shape "
            f"({features},), got shape {arr.shape}: {arr.tolist()}.")


@dataclasses.dataclass(frozen=True)
class MADEConditioner:
    """A MADE with explicit parameters: ``x: [..., D]`` (+ ``context: [..., C]``) ->
    ``[..., num_params, D]``.

    Same attributes, parameter layout and function as :class:`jaxflows.nn.made.MADE`
    (``{'params': {'layer_l': {'kernel', 'bias'}, ..., 'context': {'kernel'}}}``); hashable
    and comparable, so a bijector holding it stays a valid pytree with static metadata.
    """

    features: int
    hidden: tuple[int, ...] = (64, 64)
    num_params: int = 2
    order: tuple[int, ...] | None = None
    activation: Callable[[Array], Array] = jax.nn.elu
    zero_init_last: bool = True

    def masks(self) -> list[np.ndarray]:
        """The layer masks, see :func:`made_masks`."""
        check_order(self.order, self.features)
        return made_masks(self.features, self.hidden, self.order, self.num_params)

    def _check(self, x: Array) -> None:
        if x.ndim < 1 or x.shape[-1] != self.features:
            raise ValueError(
                f"MADE: input has shape {tuple(x.shape)}, expected [..., {self.features}].")
        if not self.hidden:
            raise ValueError("MADE: needs at least one hidden layer.")

    def init(self, key: Array, x: Array, context: Array | None = None) -> dict[str, Any]:
        """Variables for inputs like ``x`` (and ``context``): LeCun-normal kernels, zero
        biases, a zero output kernel when ``zero_init_last``."""
        x = jnp.asarray(x)
        self._check(x)
        sizes = (self.features, *self.hidden, self.num_params * self.features)
        keys = jax.random.split(key, len(sizes))       # one per layer, the last for context
        lecun = jax.nn.initializers.lecun_normal()
        params = {}
        for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = l == len(self.hidden)
            kernel = (jnp.zeros((fan_in, fan_out), jnp.float32) if last and self.zero_init_last
                      else lecun(keys[l], (fan_in, fan_out), jnp.float32))
            params[f"layer_{l}"] = {"kernel": kernel, "bias": jnp.zeros((fan_out,), jnp.float32)}
        if context is not None:
            c = jnp.asarray(context).shape[-1]
            params["context"] = {"kernel": lecun(keys[-1], (c, self.hidden[0]), jnp.float32)}
        return {"params": params}

    def apply(self, variables: dict[str, Any], x: Array, context: Array | None = None) -> Array:
        """``x: [..., D]``, ``context: [..., C]`` or None -> ``[..., num_params, D]``."""
        self._check(x)
        p = variables["params"]
        masks = self.masks()

        def dense(name, h, mask):
            kernel = p[name]["kernel"]
            return h @ (kernel * jnp.asarray(mask, kernel.dtype)) + p[name]["bias"]

        h = dense("layer_0", x, masks[0])
        if context is not None:
            h = h + context @ p["context"]["kernel"]
        h = self.activation(h)
        for l in range(1, len(self.hidden)):
            h = self.activation(dense(f"layer_{l}", h, masks[l]))
        out = dense(f"layer_{len(self.hidden)}", h, masks[-1])
        return out.reshape(out.shape[:-1] + (self.num_params, self.features))
