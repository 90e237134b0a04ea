"""A stacked LSTM with PyTorch's parameter layout and numerics (``torch.nn.LSTM``).

Written here rather than taken from ``flax.linen.LSTMCell`` because models ported from PyTorch
(SeqFlow: NF-BO, Lee et al., ICLR 2025, code ``mlvlab/NFBO``) must match the official
parameter counts and load official weights: PyTorch keeps two bias vectors per layer
(``b_ih`` and ``b_hh``) and one fused ``[4H]`` gate axis ordered ``(i, f, g, o)``; Flax's cells
keep one bias per gate and separate kernels.

Per layer ``l`` and time ``t`` (PyTorch's equations)::

    gates = x_t W_ih + b_ih + h_{t-1} W_hh + b_hh        # [B, 4H], order (i, f, g, o)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Kernels are stored ``[in, 4H]`` (PyTorch's ``weight_ih_l{l}`` transposed). Every parameter is
initialised ``U(-1/sqrt(H), 1/sqrt(H))`` as PyTorch does. Dropout (``dropout``) is applied to
the outputs of every layer but the last, in training only, as ``torch.nn.LSTM(dropout=p)``.

A full sequence (:meth:`StackedLSTM.__call__`) computes each layer's input projection for all
time steps in one matmul and scans only the recurrent part; :meth:`StackedLSTM.step` advances
one time step (for sequential decoding inside a caller's ``lax.scan``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

#: ``(h, c)``, each ``[num_layers, B, H]``
LSTMState = tuple[jax.Array, jax.Array]


def uniform_init(scale: float):
    """``U(-scale, scale)`` (PyTorch's LSTM and ``FeedForwardNet`` weight inits)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


def _cell(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``gates: [B, 4H]`` (pre-activations, order i, f, g, o), ``c: [B, H]`` -> ``(h, c)``."""
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


class StackedLSTM(nn.Module):
    """``num_layers`` LSTM layers of ``hidden`` units over inputs of ``input_dim`` features,
    PyTorch layout (module docstring).

    Params per layer ``l``: ``w_ih_{l}: [in, 4H]`` (``in`` = ``input_dim`` for ``l = 0``, else
    ``H``), ``w_hh_{l}: [H, 4H]``, ``b_ih_{l}: [4H]``, ``b_hh_{l}: [4H]``.
    """

    hidden: int
    input_dim: int
    num_layers: int = 1
    dropout: float = 0.0

    def setup(self):
        init = uniform_init(1.0 / float(self.hidden) ** 0.5)
        h4 = 4 * self.hidden
        part = nn.with_logical_partitioning
        self.w_ih = [self.param(f"w_ih_{l}", part(init, (None, "hidden")),
                                (self.input_dim if l == 0 else self.hidden, h4))
                     for l in range(self.num_layers)]
        self.w_hh = [self.param(f"w_hh_{l}", part(init, ("mlp", "hidden")), (self.hidden, h4))
                     for l in range(self.num_layers)]
        self.b_ih = [self.param(f"b_ih_{l}", part(init, ("hidden",)), (h4,))
                     for l in range(self.num_layers)]
        self.b_hh = [self.param(f"b_hh_{l}", part(init, ("hidden",)), (h4,))
                     for l in range(self.num_layers)]
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, x: jax.Array, state: LSTMState, *, deterministic: bool = True
                 ) -> tuple[jax.Array, LSTMState]:
        """``x: [B, T, input_dim]``, ``state``: ``(h, c)`` each ``[num_layers, B, H]`` ->
        ``(outputs of the last layer [B, T, H], final state)``."""
        h_all, c_all = state
        finals_h, finals_c = [], []
        out = x
        for l in range(self.num_layers):
            if l > 0:
                out = self.drop(out, deterministic=deterministic)
            proj = jnp.einsum("bti,ig->tbg", out, self.w_ih[l]) + (self.b_ih[l] + self.b_hh[l])
            w_hh = self.w_hh[l]

            def body(carry, g_t, w_hh=w_hh):
                h, c = _cell(g_t + carry[0] @ w_hh, carry[1])
                return (h, c), h

            (h_l, c_l), out = lax.scan(body, (h_all[l], c_all[l]), proj)
            out = jnp.swapaxes(out, 0, 1)
            finals_h.append(h_l)
            finals_c.append(c_l)
        return out, (jnp.stack(finals_h), jnp.stack(finals_c))

    def step(self, x_t: jax.Array, state: LSTMState, *, deterministic: bool = True
             ) -> tuple[jax.Array, LSTMState]:
        """One time step: ``x_t: [B, input_dim]`` -> ``(h of the last layer [B, H], new
        state)``."""
        h_all, c_all = state
        hs, cs = [], []
        out = x_t
        for l in range(self.num_layers):
            if l > 0:
                out = self.drop(out, deterministic=deterministic)
            gates = out @ self.w_ih[l] + (self.b_ih[l] + self.b_hh[l]) + h_all[l] @ self.w_hh[l]
            h, c = _cell(gates, c_all[l])
            hs.append(h)
            cs.append(c)
            out = h
        return out, (jnp.stack(hs), jnp.stack(cs))
