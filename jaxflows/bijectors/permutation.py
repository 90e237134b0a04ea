"""Fixed permutations of the event dimensions (log-det 0)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors._base import Array, VectorBijector, is_concrete


class ReversePermutation(VectorBijector):
    """``y = x[..., ::-1]`` (its own inverse); log-det 0. Args: ``dim``: ``D``."""

    def __init__(self, dim: int):
        if int(dim) < 1:
            raise ValueError(f"ReversePermutation: dim must be >= 1, got {dim}.")
        super().__init__(int(dim), is_constant_jacobian=True)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(x[..., ::-1], zeros [...])``."""
        batch = self._check_input(x)
        return jnp.flip(x, -1), self._zeros_log_det(x, batch)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(y[..., ::-1], zeros [...])``."""
        batch = self._check_input(y, "y")
        return jnp.flip(y, -1), self._zeros_log_det(y, batch)


class Permutation(VectorBijector):
    """``y[..., i] = x[..., perm[i]]`` for a fixed integer ``perm: [..., D]``; log-det 0.

    ``perm`` may carry batch dimensions (one permutation per batch element). Concrete
    permutations are checked to be permutations of ``range(D)``.
    """

    def __init__(self, perm: Array):
        perm = jnp.asarray(perm)
        if perm.ndim < 1 or not jnp.issubdtype(perm.dtype, jnp.integer):
            raise ValueError(
                f"Permutation: `perm` must be an integer array [..., D], got shape "
                f"{tuple(perm.shape)} and dtype {perm.dtype}.")
        d = perm.shape[-1]
        if is_concrete(perm):
            p = np.asarray(perm).reshape(-1, d)
            if not np.all(np.sort(p, -1) == np.arange(d)):
                raise ValueError(f"Permutation: `perm` is not a permutation of range({d}).")
        super().__init__(d, is_constant_jacobian=True)
        self.perm = perm

    def _param_batch_shapes(self):
        return [("perm", tuple(self.perm.shape[:-1]))]

    def _gather(self, v: Array, idx: Array, batch) -> Array:
        v = jnp.broadcast_to(v, batch + (self.dim,))
        idx = jnp.broadcast_to(idx, batch + (self.dim,))
        return jnp.take_along_axis(v, idx, axis=-1)

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        """``x: [..., D]`` -> ``(x[..., perm], zeros [...])``."""
        batch = self._check_input(x)
        if self.perm.ndim == 1:
            return jnp.take(x, self.perm, axis=-1), self._zeros_log_det(x, batch)
        return self._gather(x, self.perm, batch), self._zeros_log_det(x, batch)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        """``y: [..., D]`` -> ``(y[..., argsort(perm)], zeros [...])``."""
        batch = self._check_input(y, "y")
        inv = jnp.argsort(self.perm, axis=-1)
        if self.perm.ndim == 1:
            return jnp.take(y, inv, axis=-1), self._zeros_log_det(y, batch)
        return self._gather(y, inv, batch), self._zeros_log_det(y, batch)


class RandomPermutation(Permutation):
    """A :class:`Permutation` drawn at construction: ``RandomPermutation(key, dim)``."""

    def __init__(self, key: Array, dim: int):
        super().__init__(jax.random.permutation(key, int(dim)).astype(jnp.int32))
