"""Shared pieces of the vector bijectors: the base class, shape checks and scalar solvers.

Every bijector in this package acts on events of shape ``[D]`` (``event_ndims_in == 1``).
Parameters are arrays with an event part (e.g. ``[D]`` or ``[D, D]``) and optional leading
batch dimensions; the batch dimensions of the parameters and of the input broadcast together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import distrax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def is_concrete(x) -> bool:
    """True when ``x`` holds values we may look at (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def as_float_param(owner: str, name: str, value, core_ndim: int) -> Array:
    """Converts a parameter to a float array with at least ``core_ndim`` dimensions.

    Raises ``ValueError`` naming the parameter and its shape when the rank is too small, or
    when the (concrete) values are not finite.
    """
    arr = jnp.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.float32)
    if arr.ndim < core_ndim:
        raise ValueError(
            f"{owner}: parameter `{name}` has shape {tuple(arr.shape)}, but needs at least "
            f"{core_ndim} dimension(s) (event part) plus optional leading batch dimensions."
        )
    # numpy, not jnp: inside a jit trace even ops on concrete arrays are staged out.
    if is_concrete(arr) and arr.size and not np.all(np.isfinite(np.asarray(arr))):
        raise ValueError(f"{owner}: parameter `{name}` contains NaN or inf values.")
    return arr


def check_core_shape(owner: str, name: str, arr: Array, expected: Sequence[int],
                     ref_name: str, ref_shape: Sequence[int]) -> None:
    """Checks that the trailing dims of ``arr`` equal ``expected`` (derived from ``ref_name``)."""
    expected = tuple(int(e) for e in expected)
    got = tuple(arr.shape[arr.ndim - len(expected):]) if arr.ndim >= len(expected) else None
    if got != expected:
        raise ValueError(
            f"{owner}: parameter `{name}` has shape {tuple(arr.shape)}, which does not match "
            f"`{ref_name}` of shape {tuple(ref_shape)}: expected trailing dimensions {expected}."
        )


def broadcast_batch_shapes(owner: str, named_shapes: Sequence[tuple[str, tuple[int, ...]]]
                           ) -> tuple[int, ...]:
    """Broadcasts batch shapes; on failure raises ``ValueError`` naming every shape."""
    try:
        return tuple(jnp.broadcast_shapes(*(tuple(s) for _, s in named_shapes)))
    except ValueError:
        desc = ", ".join(f"{n} batch shape {tuple(s)}" for n, s in named_shapes)
        raise ValueError(f"{owner}: batch shapes do not broadcast: {desc}.") from None


class VectorBijector(distrax.Bijector):
    """Base class: a bijector on vectors ``x: [..., D]`` with (batched) array parameters.

    Subclasses set ``self._dim`` through ``super().__init__(dim)`` and implement
    :meth:`_param_batch_shapes` (a list of ``(name, batch_shape)``) so that inputs can be
    checked against the parameters. The batch shape is computed from the parameter arrays on
    every call (never stored), so stacking the leaves of several bijectors of the same kind
    (``jax.tree.map(jnp.stack, b1, b2)``) gives a valid batched bijector.
    """

    def __init__(self, dim: int, *, is_constant_jacobian: bool = False,
                 is_constant_log_det: bool | None = None):
        super().__init__(event_ndims_in=1, is_constant_jacobian=is_constant_jacobian,
                         is_constant_log_det=is_constant_log_det)
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        """Event size ``D``."""
        return self._dim

    def _param_batch_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return []

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Broadcast batch shape of the parameters (``()`` for unbatched parameters)."""
        return broadcast_batch_shapes(self.name, self._param_batch_shapes())

    def _check_input(self, x: Array, what: str = "x") -> tuple[int, ...]:
        """Checks ``x: [..., D]``; returns the broadcast batch shape of input and parameters."""
        shape = tuple(jnp.shape(x))
        if len(shape) < 1 or shape[-1] != self._dim:
            raise ValueError(
                f"{self.name}: input `{what}` has shape {shape}, but the bijector acts on "
                f"events of shape ({self._dim},): expected [..., {self._dim}]."
            )
        return broadcast_batch_shapes(
            self.name, [(f"input `{what}` {shape}", shape[:-1]), *self._param_batch_shapes()]
        )

    def _zeros_log_det(self, x: Array, batch: tuple[int, ...]) -> Array:
        return jnp.zeros(batch, dtype=jnp.result_type(x, jnp.float32))


def vectorize(fn: Callable, signature: str) -> Callable:
    """``jnp.vectorize`` with a core ``signature``: core function on one event, batch broadcast."""
    return jnp.vectorize(fn, signature=signature)


def solve_increasing(f: Callable[[Array], Array], lo: Array, hi: Array,
                     num_iters: int = 50) -> Array:
    """Root of an increasing elementwise function ``f`` inside the bracket ``[lo, hi]``.

    Bisection for ``num_iters`` steps (a fixed count, so it runs under ``jit``/``vmap``), then
    one Newton step taken from the bisection result with its gradient stopped. That last step
    does not move the value (``f`` is ~0 there) but gives the implicit-function gradient
    ``d root = -(df/dtheta) / f'(root)`` with respect to anything ``f`` closes over.
    """
    lo = jax.lax.stop_gradient(lo)
    hi = jax.lax.stop_gradient(hi)

    def body(_, bracket):
        a, b = bracket
        mid = 0.5 * (a + b)
        above = jax.lax.stop_gradient(f(mid)) > 0
        return jnp.where(above, a, mid), jnp.where(above, mid, b)

    a, b = jax.lax.fori_loop(0, num_iters, body, (lo, hi))
    return newton_polish(f, 0.5 * (a + b))


def newton_polish(f: Callable[[Array], Array], root: Array) -> Array:
    """One differentiable Newton step from ``stop_gradient(root)``; see :func:`solve_increasing`."""
    r0 = jax.lax.stop_gradient(root)
    val, slope = jax.jvp(f, (r0,), (jnp.ones_like(r0),))
    return r0 - val / slope


def safe_norm(x: Array, axis: int = -1) -> Array:
    """Euclidean norm with a finite (zero) gradient at ``x = 0``."""
    sq = jnp.sum(jnp.square(x), axis=axis)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def fill_strictly_lower(entries: Array, dim: int) -> Array:
    """Maps ``entries: [..., D(D-1)/2]`` to ``[..., D, D]`` with them below the diagonal.

    Row-major order: entry ``k`` goes to the ``k``-th position of ``np.tril_indices(D, -1)``.
    The diagonal and upper triangle are zero.
    """
    n = dim * (dim - 1) // 2
    entries = jnp.asarray(entries)
    if entries.ndim < 1 or entries.shape[-1] != n:
        raise ValueError(
            f"fill_strictly_lower: entries have shape {tuple(entries.shape)}, expected "
            f"[..., {n}] = [..., D(D-1)/2] for D={dim}."
        )
    rows, cols = np.tril_indices(dim, -1)
    out = jnp.zeros(entries.shape[:-1] + (dim, dim), entries.dtype)
    return out.at[..., rows, cols].set(entries)
