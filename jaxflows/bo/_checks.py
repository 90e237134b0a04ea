"""Input checks for ``jaxflows.bo``: one-line errors naming the problem."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.errors import UserError


class BOInputError(UserError, ValueError):
    """Inputs of a BO function with the wrong shape or non-finite values."""


def _xp(x):
    """numpy for host (numpy) inputs, jax.numpy otherwise: checks of host arrays run on the host,
    so a loop whose data grow by a few rows per iteration compiles nothing for them (an eager
    ``jnp`` op compiles once per new shape)."""
    return np if isinstance(x, np.ndarray) else jnp


def check_matrix(x, name: str) -> jax.Array:
    """x -> float32 [N, D] with N, D >= 1 and finite values, else :class:`BOInputError`.

    A numpy input stays a numpy array (checked on the host); anything else becomes a jax array.
    """
    xp = _xp(x)
    x = xp.asarray(x, xp.float32)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise BOInputError(f"{name} must have shape [N, D] with N, D >= 1, got {x.shape}")
    if not bool(xp.isfinite(x).all()):
        raise BOInputError(f"{name} has non-finite values")
    return x


def check_xy(x, y) -> tuple[jax.Array, jax.Array]:
    """x: [N, D], y: [N] -> float32 arrays, checked (numpy stays numpy, as in check_matrix)."""
    x = check_matrix(x, "x")
    xp = _xp(x)
    y = xp.asarray(y, xp.float32)
    if y.shape != (x.shape[0],):
        raise BOInputError(f"y must have shape [{x.shape[0]}] to match x {x.shape}, got {y.shape}")
    if not bool(xp.isfinite(y).all()):
        raise BOInputError("y has non-finite values")
    return x, y
