"""Linear-algebra helpers: full-float32 matmuls, a PSD-safe matrix root for sampling.

:func:`highest_precision` traces a function under ``jax.default_matmul_precision("highest")``:
GP algebra (kernel matrices from inner products, ``K^-1`` products, posterior covariances) loses
too much in the reduced-precision float32 matmul passes (TF32 / bf16) that GPUs and TPUs use by
default. Every jitted function of ``jaxflows.bo`` is wrapped in it.

Posterior covariances over many nearby candidates are nearly singular, and float32 round-off
makes them slightly indefinite. :func:`psd_safe_root` does what gpytorch's
``psd_safe_cholesky`` does (retry the Cholesky with growing jitter), with the jitter relative to
the mean diagonal (``1e-6, 1e-5, ...`` times it), and if every try fails falls back to an
eigendecomposition with negative eigenvalues clipped to zero. :func:`stable_jitter` is the
same retry for factorisations that are differentiated (the GP fits): it only picks the jitter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def highest_precision(fn):
    """``fn`` run (and so traced) with float32 matmuls at full precision."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapped


def psd_safe_root(a: jax.Array, jitter: float = 1e-6, max_tries: int = 4) -> jax.Array:
    """a: [M, M] symmetric PSD -> R: [M, M] with R R^T ~= a (lower-triangular unless the
    eigendecomposition fallback was needed)."""
    a = 0.5 * (a + a.T)
    eye = jnp.eye(a.shape[0], dtype=a.dtype)
    scale = jnp.maximum(jnp.abs(jnp.diag(a)).mean(), 1e-30)

    def ok(l):
        return jnp.all(jnp.isfinite(l))

    def body(carry):
        _, k = carry
        return jnp.linalg.cholesky(a + jitter * 10.0**k * scale * eye), k + 1

    l0 = jnp.linalg.cholesky(a)
    l, _ = jax.lax.while_loop(lambda c: (~ok(c[0])) & (c[1] < max_tries), body, (l0, 0))

    def eig_root(_):
        w, v = jnp.linalg.eigh(a)
        return v * jnp.sqrt(jnp.maximum(w, 0.0))[None, :]

    return jax.lax.cond(ok(l), lambda _: l, eig_root, None)


#: retries of a Cholesky with a larger jitter (1e-5 ... 1e-2 of the scale, for jitter 1e-6)
MAX_JITTER_TRIES = 4


def stable_jitter(a: jax.Array, jitter: float, scale: jax.Array,
                  max_tries: int = MAX_JITTER_TRIES) -> jax.Array:
    """The jitter ``j`` to factorise ``a + j I`` with (``a: [M, M]`` symmetric; a float32 scalar,
    not differentiated): ``jitter`` when that Cholesky is finite, else the first finite one of
    ``jitter * 10^k * scale`` for ``k = 1..max_tries`` (the last when none is). ``scale`` is
    the size of ``a``'s diagonal (e.g. a kernel's output scale)."""
    a = jax.lax.stop_gradient(a)
    eye = jnp.eye(a.shape[0], dtype=a.dtype)
    scale = jax.lax.stop_gradient(scale)

    def finite(j):
        return jnp.all(jnp.isfinite(jnp.linalg.cholesky(a + j * eye)))

    def body(carry):
        _, k, _ = carry
        j = jitter * 10.0 ** k.astype(jnp.float32) * scale
        return j, k + 1, finite(j)

    j0 = jnp.asarray(jitter, jnp.float32)
    j, _, _ = jax.lax.while_loop(lambda c: ~c[2] & (c[1] <= max_tries), body,
                                 (j0, jnp.ones((), jnp.int32), finite(j0)))
    return jax.lax.stop_gradient(j)
