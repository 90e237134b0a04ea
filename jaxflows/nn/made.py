"""MADE: a masked autoencoder for distribution estimation (Germain et al. 2015), in Flax Linen.

Output ``i`` depends only on inputs ``j`` that come before ``i`` in the autoregressive order
(and on the optional context, which feeds the first hidden layer without a mask). The mask
math (:func:`made_degrees`, :func:`made_masks`, :func:`check_order`) lives in
:mod:`jaxflows.bijectors.made_masks` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors.made_masks import check_order, made_degrees, made_masks

__all__ = ["MADE", "MaskedDense", "check_order", "made_degrees", "made_masks"]

Array = jax.Array


class MaskedDense(nn.Module):
    """Dense layer whose kernel is multiplied by a fixed mask: ``x @ (W * mask) + b``."""

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array, mask: np.ndarray) -> Array:
        """``x: [..., F_in]``, ``mask: [F_in, F_out]`` -> ``[..., F_out]``."""
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return x @ (kernel * jnp.asarray(mask, kernel.dtype)) + bias


class MADE(nn.Module):
    """Masked autoencoder: ``x: [..., D]`` (+ ``context: [..., C]``) -> ``[..., num_params, D]``.

    Attributes:
      features: ``D``.
      hidden: hidden layer sizes (a tuple).
      num_params: parameters per dimension (2 for an affine flow: shift and scale).
      order: ``order[j]`` = position of input ``j`` in the autoregressive order (a permutation
        of ``range(D)`` as a tuple); ``None`` is the identity. Output ``[..., p, i]`` depends on
        input ``j`` only when ``order[j] < order[i]``.
      activation: hidden nonlinearity (ELU by default, smooth).
      zero_init_last: zero-initialise the output layer (a flow built on it starts at its
        identity-like setting).
    """

    features: int
    hidden: tuple[int, ...] = (64, 64)
    num_params: int = 2
    order: tuple[int, ...] | None = None
    activation: Callable[[Array], Array] = nn.elu
    zero_init_last: bool = True

    def masks(self) -> list[np.ndarray]:
        """The layer masks, see :func:`made_masks`."""
        check_order(self.order, self.features)
        return made_masks(self.features, self.hidden, self.order, self.num_params)

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        """``x: [..., D]``, ``context: [..., C]`` or None -> ``[..., num_params, D]``."""
        if x.ndim < 1 or x.shape[-1] != self.features:
            raise ValueError(
                f"MADE: input has shape {tuple(x.shape)}, expected [..., {self.features}].")
        if not self.hidden:
            raise ValueError("MADE: needs at least one hidden layer.")
        masks = self.masks()
        h = MaskedDense(self.hidden[0], name="layer_0")(x, masks[0])
        if context is not None:
            h = h + nn.Dense(self.hidden[0], use_bias=False, name="context")(context)
        h = self.activation(h)
        for l, size in enumerate(self.hidden[1:], start=1):
            h = self.activation(MaskedDense(size, name=f"layer_{l}")(h, masks[l]))
        last_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.lecun_normal()
        out = MaskedDense(self.num_params * self.features, kernel_init=last_init,
                          name=f"layer_{len(self.hidden)}")(h, masks[-1])
        return out.reshape(out.shape[:-1] + (self.num_params, self.features))
