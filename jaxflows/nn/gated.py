"""Gated dense layers (Dauphin et al. style gates) as used by the VP-flow VAEs.

A gated unit computes ``h = (W x + b) * sigmoid(V x + c)`` with a *linear* pre-activation
branch, exactly as the official Householder-flow / ccLinIAF code (Keras
``encoder_arch = [[300, None], ...]``, PyTorch ``Gate``).

Initialisation follows the PyTorch code (``jmtomczak/vae_vpflows``): every weight matrix is drawn
from ``Normal(0, std=sqrt(2 / (fan_in + fan_out)))`` -- an *untruncated* Glorot normal, which is
``variance_scaling(1.0, 'fan_avg', 'normal')``. Biases start at zero (PyTorch's default bias init
is a small uniform; zero is the usual JAX choice and makes no measurable difference).

Kernels carry logical axis names (``nn.with_logical_partitioning``) that the engine maps to mesh
axes through ``config.sharding_rules``: the first layer of an MLP uses ``(in_axis, 'hidden')``
(``in_axis`` is ``'embed'`` for pixels, ``'latent'`` for a latent code), later layers
``('mlp', 'hidden')`` (a logical name may appear only once per array).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

#: Normal(0, sqrt(2 / (fan_in + fan_out))), the PyTorch VP-flow code's weight init.
paper_normal_init = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def logical_dense(
    features: int,
    kernel_axes: tuple[str | None, str | None],
    *,
    dtype: jnp.dtype = jnp.float32,
    name: str | None = None,
    kernel_init: nn.initializers.Initializer = paper_normal_init,
) -> nn.Dense:
    """A ``nn.Dense`` whose kernel ``[in, out]`` and bias ``[out]`` carry logical axis names.

    Params are float32; ``dtype`` is the matmul/computation dtype.
    """
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, kernel_axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (kernel_axes[1],)),
        name=name,
    )


class GatedDense(nn.Module):
    """``h = Dense(x) * sigmoid(Dense_gate(x))``: ``x: [..., F_in] -> [..., features]``.

    Attributes:
      features: output width.
      kernel_axes: logical names of the ``[F_in, features]`` kernels.
      dtype: computation dtype (params stay float32).
    """

    features: int
    kernel_axes: tuple[str | None, str | None] = ("embed", "hidden")
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the gated unit to ``x: [..., F_in]``; returns ``[..., features]``."""
        h = logical_dense(self.features, self.kernel_axes, dtype=self.dtype, name="h")(x)
        g = logical_dense(self.features, self.kernel_axes, dtype=self.dtype, name="gate")(x)
        return h * jax.nn.sigmoid(g)


class GatedMLP(nn.Module):
    """A stack of :class:`GatedDense` layers: ``x: [..., F_in] -> [..., hidden[-1]]``.

    Attributes:
      hidden: widths of the gated layers (the paper: ``(300, 300)``).
      in_axis: logical name of the input features (``'embed'`` for pixels, ``'latent'`` for z).
      dtype: computation dtype.
    """

    hidden: Sequence[int] = (300, 300)
    in_axis: str | None = "embed"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the gated layers in turn to ``x: [..., F_in]``; returns ``[..., hidden[-1]]``."""
        for i, width in enumerate(self.hidden):
            axes = (self.in_axis, "hidden") if i == 0 else ("mlp", "hidden")
            x = GatedDense(width, kernel_axes=axes, dtype=self.dtype, name=f"gated_{i}")(x)
        return x
