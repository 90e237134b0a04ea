"""Amortized flows: Flax modules mapping a context ``h: [B, H]`` to a ready bijector.

"Condition, then compose": ``flow = Module(...)``; ``bij = flow.apply(params, h)`` is a
``distrax.Bijector`` acting on ``z: [B, M]`` with per-example parameters (leading batch dim
``B``), so ``bij.forward_and_log_det(z0)`` gives ``(zT: [B, M], log_det: [B])``. Compose the
returned bijectors with ``distrax.Chain``; no context is threaded through the chain.
"""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.bijectors import (
    IAF as IAFBijector,
)
from jaxflows.bijectors import (
    CCLinearIAF as CCLinearIAFBijector,
)
from jaxflows.bijectors import (
    Householder,
    Planar,
    SylvesterOrthogonal,
    SylvesterTriangular,
)
from jaxflows.nn.made import MADE

Array = jax.Array


def chain(steps: list[distrax.Bijector]) -> distrax.Bijector:
    """Composes steps so that ``steps[0]`` is applied first (distrax.Chain runs last-first)."""
    return steps[0] if len(steps) == 1 else distrax.Chain(list(reversed(steps)))


def _check_context(owner: str, h: Array) -> None:
    if h.ndim != 2:
        raise ValueError(f"{owner}: context must be [B, H], got shape {tuple(h.shape)}.")


class HouseholderFlow(nn.Module):
    """Householder flow (Tomczak & Welling 2016): ``T`` reflections with amortized vectors.

    ``v_1 = Dense(M)(h)``, ``v_t = Dense(M)(v_{t-1})`` (linear, own weights per step), as in
    the official code. Returns a :class:`jaxflows.bijectors.Householder` with vectors
    ``[B, T, M]`` (log-det 0, norms preserved).
    """

    latent_dim: int
    num_flows: int

    @nn.compact
    def __call__(self, h: Array) -> distrax.Bijector:
        """``h: [B, H]`` -> bijector on ``[B, M]``."""
        _check_context("HouseholderFlow", h)
        if self.num_flows < 1:
            raise ValueError(f"HouseholderFlow: num_flows must be >= 1, got {self.num_flows}.")
        v = nn.Dense(self.latent_dim, name="v_0")(h)
        vs = [v]
        for t in range(1, self.num_flows):
            v = nn.Dense(self.latent_dim, name=f"v_{t}")(v)
            vs.append(v)
        return Householder(jnp.stack(vs, axis=-2))


class CCLinearIAF(nn.Module):
    """Convex-combination linear IAF (Tomczak & Welling 2017), one step.

    Weights ``softmax(Dense(K)(h))``; ``K`` strictly-lower matrices from
    ``Dense(K * M(M-1)/2)(h)`` (only the free entries). The matrix head is zero-initialised,
    so the flow starts at the identity. Returns a :class:`jaxflows.bijectors.CCLinearIAF`
    with entries ``[B, K, M(M-1)/2]`` and logits ``[B, K]`` (log-det 0).
    """

    latent_dim: int
    num_components: int

    @nn.compact
    def __call__(self, h: Array) -> distrax.Bijector:
        """``h: [B, H]`` -> bijector on ``[B, M]``."""
        _check_context("CCLinearIAF", h)
        m, k = self.latent_dim, self.num_components
        n = m * (m - 1) // 2
        logits = nn.Dense(k, name="weights")(h)
        entries = nn.Dense(k * n, kernel_init=nn.initializers.zeros, name="matrices")(h)
        return CCLinearIAFBijector.from_entries(entries.reshape(h.shape[:-1] + (k, n)), m,
                                                logits=logits)


class LinearIAF(nn.Module):
    """Linear IAF: :class:`CCLinearIAF` with ``K = 1`` (the softmax weight is identically 1)."""

    latent_dim: int

    @nn.compact
    def __call__(self, h: Array) -> distrax.Bijector:
        """``h: [B, H]`` -> bijector on ``[B, M]``."""
        return CCLinearIAF(self.latent_dim, 1, name="cc")(h)


class PlanarFlow(nn.Module):
    """``T`` amortized planar steps (heads as in van den Berg et al.'s code).

    ``u = Dense(T*M)(h)``, ``w = Dense(T*M)(h)``, ``b = Dense(T)(h)``; ``u`` is constrained
    inside :class:`jaxflows.bijectors.Planar`. Returns their chain (step 0 first).
    """

    latent_dim: int
    num_flows: int

    @nn.compact
    def __call__(self, h: Array) -> distrax.Bijector:
        """``h: [B, H]`` -> bijector on ``[B, M]``."""
        _check_context("PlanarFlow", h)
        t, m = self.num_flows, self.latent_dim
        u = nn.Dense(t * m, name="u")(h).reshape(h.shape[:-1] + (t, m))
        w = nn.Dense(t * m, name="w")(h).reshape(h.shape[:-1] + (t, m))
        b = nn.Dense(t, name="b")(h)
        return chain([Planar(u[..., i, :], w[..., i, :], b[..., i]) for i in range(t)])


class SylvesterFlow(nn.Module):
    """``T`` amortized Sylvester steps (van den Berg et al. 2018).

    ``kind='orthogonal'``: ``Q`` is a product of ``num_householder`` reflections with amortized
    vectors; ``kind='triangular'``: ``Q`` alternates between identity and the reversal.
    ``R``, ``R~`` share one head ``Dense(T*M*M)``: its strictly-upper part gives ``R``'s
    off-diagonal and its strictly-lower part, transposed, ``R~``'s; the diagonals are
    ``tanh`` of two ``Dense(T*M)`` heads; ``b = Dense(T*M)``. Returns their chain.
    """

    latent_dim: int
    num_flows: int
    kind: str = "orthogonal"
    num_householder: int = 4

    @nn.compact
    def __call__(self, h: Array) -> distrax.Bijector:
        """``h: [B, H]`` -> bijector on ``[B, M]``."""
        _check_context("SylvesterFlow", h)
        if self.kind not in ("orthogonal", "triangular"):
            raise ValueError(
                f"SylvesterFlow: kind must be 'orthogonal' or 'triangular', got {self.kind!r}.")
        t, m = self.num_flows, self.latent_dim
        lead = h.shape[:-1]
        full = nn.Dense(t * m * m, name="r")(h).reshape(lead + (t, m, m))
        d1 = nn.Dense(t * m, name="diag1")(h).reshape(lead + (t, m))
        d2 = nn.Dense(t * m, name="diag2")(h).reshape(lead + (t, m))
        b = nn.Dense(t * m, name="b")(h).reshape(lead + (t, m))
        r1 = jnp.triu(full, 1)
        r2 = jnp.swapaxes(jnp.tril(full, -1), -1, -2)
        steps = []
        if self.kind == "orthogonal":
            nh = self.num_householder
            qv = nn.Dense(t * nh * m, name="q")(h).reshape(lead + (t, nh, m))
            for i in range(t):
                steps.append(SylvesterOrthogonal(
                    qv[..., i, :, :], r1[..., i, :, :], r2[..., i, :, :], d1[..., i, :],
                    d2[..., i, :], b[..., i, :]))
        else:
            for i in range(t):
                steps.append(SylvesterTriangular(
                    r1[..., i, :, :], r2[..., i, :, :], d1[..., i, :], d2[..., i, :],
                    b[..., i, :], permute=(i % 2 == 1)))
        return chain(steps)


class IAF(nn.Module):
    """``T`` IAF steps (Kingma et al. 2016) whose MADEs also read the context ``h``.

    Each step is a :class:`jaxflows.bijectors.IAF` (sigmoid gating) on a MADE with two hidden
    layers of ``hidden`` units; ``h`` enters the first hidden layer through an unmasked
    ``Dense``. The order alternates identity / reversed between steps. The MADE output layer
    is zero-initialised, so each step starts at ``y = sigma x`` with ``sigma = sigmoid(2)``-ish
    (near identity, as Kingma's gate bias intends). Returns their chain (step 0 first).
    """

    latent_dim: int
    num_flows: int
    hidden: int = 320

    @nn.compact
    def __call__(self, h: Array) -> distrax.Bijector:
        """``h: [B, H]`` -> bijector on ``[B, M]``."""
        _check_context("IAF", h)
        m = self.latent_dim
        steps = []
        for t in range(self.num_flows):
            order = tuple(range(m)) if t % 2 == 0 else tuple(range(m - 1, -1, -1))
            made = MADE(features=m, hidden=(self.hidden, self.hidden), order=order,
                        name=f"made_{t}")
            if self.is_initializing():
                made(jnp.zeros(h.shape[:-1] + (m,), h.dtype), h)   # creates the params
            # The bijector holds an unbound copy of the module plus its variables, so it can
            # be used after ``apply`` returns; gradients flow through the variables.
            spec = MADE(features=m, hidden=(self.hidden, self.hidden), order=order, parent=None)
            steps.append(IAFBijector(spec, made.variables, context=h))
        return chain(steps)
