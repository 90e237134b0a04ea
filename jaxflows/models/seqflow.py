"""SeqFlow: an autoregressive normalizing flow over token embeddings with an exact left inverse.

NF-BO (Lee et al., ICLR 2025, "Latent Bayesian Optimization via Autoregressive Normalizing
Flows"; official code ``mlvlab/NFBO``, ``generative_model/model/seqflow/``) maps a token
sequence ``x = [x_1..x_L]`` to a continuous ``v`` and a Gaussian latent ``z`` of the same
shape ``[L, F]``:

* **token map** ``h``: an embedding table ``E: [V, F]`` (``F = 40``, ``N(0, 1)`` initial values),
  L2-normalised at every use: ``v_i = E[x_i] / |E[x_i]|``. Its left inverse is
  ``x_i = argmax_j cos(v_i, E_j)`` (:func:`nearest_tokens`; Prop. 2 of the paper);
* **density** ``p(v)``: ``K`` autoregressive flow layers (the AF prior of Ziegler & Rush 2019),
  all left to right. Layer ``k`` maps its input ``u`` (``v`` for ``k = 0``) to ``u'``: a
  2-layer LSTM (:class:`~jaxflows.nn.lstm.StackedLSTM`, PyTorch layout) reads
  ``[u_t, pos_{t+1}]`` and its output after ``u_{<t}`` is the context ``c_t`` of token ``t``
  (``c_0`` is the top layer's initial ``h``; the initial ``(h, c)`` of both LSTM layers come
  from ``pos_0`` through a 1-hidden-layer ReLU MLP, interleaved ``(h, c)`` in the last axis as
  the official code views them); ``u'_t`` = a within-token flow of ``S`` split couplings
  (:class:`CouplingStack`) of ``u_t`` given ``c_t``. ``pos_t`` is the one-hot of ``t`` and of
  ``L - 1 - t`` (``2 * max_len`` features, zero for ``t = L``);
* each coupling transforms one half of the 40 features with the NLSq function
  (:class:`jaxflows.bijectors.nlsq.NLSq`) whose 5 parameters per feature come from an MLP
  (2 hidden layers of 100, ReLU, ``U(-0.07, 0.07)`` weights, zero biases) of the other half
  and ``c_t``; which half is transformed alternates (and starts from the other half in odd
  layers), as the official ``SCFLayer`` orders do. The official raw-output scaling is kept:
  ``log b = 0.4 o_1``, ``c = tanh(0.3 o_2) (8 sqrt(3)/9 - 0.05) b / d``, ``log d = 0.4 o_3``
  (our bijector's ``slack`` = ``1 - 0.05 / (8 sqrt(3)/9)``);
* **encoding** ``z = g(v)`` (data -> noise) uses the explicit NLSq formula and is one parallel
  pass (one LSTM scan per layer); **decoding** ``v = g^{-1}(z)`` is one ``lax.scan`` over
  tokens that inverts the ``K`` layers at each step (the NLSq cubic inverse of the library,
  stable in float32 -- the official code's hand-written ``arcsinh`` overflows for large inputs,
  a bug recorded in the notes, not reproduced).

``log p(v) = sum_t [log N(z_t; 0, I) + sum_k log|det du'_t/du_t|]``; this module returns the
per-token terms ``[B, L]``.

Shapes: tokens ``int [B, L]``; ``v, z: [B, L, F]``. Parameters of the paper configuration
(``F = 40``, ``H = 500``, 2 LSTM layers, ``K = 5``, ``S = 10``, MLP 2x100, ``max_len = 288``,
``V = 185``): 31,274,900, equal to the official construction's count.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors.nlsq import _BOUND, NLSq
from jaxflows.nn.lstm import StackedLSTM, uniform_init

START_ID = 0
STOP_ID = 1
#: NLSq slack that gives the official ``c = tanh(.) * (8 sqrt(3)/9 - 0.05) * b / d``
OFFICIAL_SLACK = (_BOUND - 0.05) / _BOUND
#: number of NLSq parameters per feature
NLSQ_PARAMS = 5

PyTree = Any


def _dense(features: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
    """The official ``FeedForwardNet`` layer: ``U(-0.07, 0.07)`` kernel, zero bias."""
    return nn.Dense(features, name=name,
                    kernel_init=nn.with_logical_partitioning(uniform_init(0.07), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           (axes[1],)))


def positional_codes(length: int, max_len: int) -> np.ndarray:
    """``pos: float32 [length + 1, 2 * max_len]``: row ``t < length`` is ``[onehot(t),
    onehot(length - 1 - t)]`` (the official ``make_pos_cond`` with every sequence of full
    length); row ``length`` is zero (the input that follows the last token)."""
    if length > max_len:
        raise ValueError(f"sequences of {length} tokens exceed the model's max_len {max_len}")
    pos = np.zeros((length + 1, 2 * max_len), np.float32)
    t = np.arange(length)
    pos[t, t] = 1.0
    pos[t, max_len + length - 1 - t] = 1.0
    return pos


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(|x|, eps)`` over the last axis (``torch.nn.functional.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_to_table(v: jax.Array, table: jax.Array) -> jax.Array:
    """``cos(v, table_j)``: ``v: [..., F]``, ``table: [V, F]`` -> ``[..., V]`` (NaN -> 1, as the
    official decoder)."""
    sim = jnp.einsum("...f,vf->...v", normalize(v, 1e-8), normalize(table, 1e-8))
    return jnp.where(jnp.isnan(sim), 1.0, sim)


def nearest_tokens(v: jax.Array, table: jax.Array) -> jax.Array:
    """The left inverse of the token map: ``argmax_j cos(v, table_j)``, ``[...]`` int32."""
    return jnp.argmax(cosine_to_table(v, table), axis=-1).astype(jnp.int32)


def force_stop(tokens: jax.Array) -> jax.Array:
    """Every token after the first ``<stop>`` set to ``<stop>``: ``[B, L]`` -> ``[B, L]``."""
    seen = jnp.cumsum((tokens == STOP_ID).astype(jnp.int32), axis=-1) > 0
    return jnp.where(seen, STOP_ID, tokens).astype(jnp.int32)


class CouplingStack(nn.Module):
    """``num_couplings`` NLSq split couplings of one token's ``F`` features given a context.

    ``forward(u [..., F], ctx [..., C]) -> (u' [..., F], log_det [...])`` is the data -> noise
    direction (explicit NLSq); :meth:`inverse` undoes it (cubic root). ``reverse_first``: start
    from the reversed feature order (the official odd flow layers).
    """

    features: int
    num_couplings: int = 10
    hidden: int = 100
    num_hidden: int = 2
    reverse_first: bool = False

    def setup(self):
        f, keep = self.features, self.features // 2
        nets = []
        for j in range(self.num_couplings):
            layers = [_dense(self.hidden, ("latent" if i == 0 else "mlp", "hidden"),
                             f"coupling_{j}_dense_{i}") for i in range(self.num_hidden)]
            layers.append(_dense((f - keep) * NLSQ_PARAMS, ("mlp", "latent"),
                                 f"coupling_{j}_out"))
            nets.append(layers)
        self.nets = nets

    def _halves(self, j: int) -> tuple[slice, slice]:
        """``(conditioning, transformed)`` feature slices of coupling ``j``: in the order
        ``1..F`` the first ``F // 2`` features condition, in the reversed order the last."""
        f, keep = self.features, self.features // 2
        if (j % 2 == 1) == self.reverse_first:
            return slice(0, keep), slice(keep, f)
        return slice(f - keep, f), slice(0, f - keep)

    @staticmethod
    def _join(cond: jax.Array, new: jax.Array, ci: slice) -> jax.Array:
        return (jnp.concatenate([cond, new], -1) if ci.start == 0
                else jnp.concatenate([new, cond], -1))

    def _bijector(self, j: int, cond: jax.Array, ctx: jax.Array) -> NLSq:
        h = jnp.concatenate([cond, ctx], axis=-1)
        for layer in self.nets[j][:-1]:
            h = nn.relu(layer(h))
        o = self.nets[j][-1](h)
        o = o.reshape(*o.shape[:-1], -1, NLSQ_PARAMS)
        return NLSq(o[..., 0], 0.4 * o[..., 1], 0.3 * o[..., 2], 0.4 * o[..., 3], o[..., 4],
                    slack=OFFICIAL_SLACK)

    def __call__(self, u: jax.Array, ctx: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Data -> noise: ``u: [..., F]``, ``ctx: [..., C]`` -> ``(u', log_det [...])``."""
        log_det = jnp.zeros(u.shape[:-1], jnp.float32)
        for j in range(self.num_couplings):
            ci, ti = self._halves(j)
            y, ld = self._bijector(j, u[..., ci], ctx).forward_and_log_det(u[..., ti])
            u = self._join(u[..., ci], y, ci)
            log_det = log_det + ld
        return u, log_det

    def inverse(self, u: jax.Array, ctx: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Noise -> data: ``u': [..., F]`` -> ``(u, log_det of the forward at u [...])``."""
        log_det = jnp.zeros(u.shape[:-1], jnp.float32)
        for j in reversed(range(self.num_couplings)):
            ci, ti = self._halves(j)
            x, ld = self._bijector(j, u[..., ci], ctx).inverse_and_log_det(u[..., ti])
            u = self._join(u[..., ci], x, ci)
            log_det = log_det - ld
        return u, log_det


class AFLayer(nn.Module):
    """One autoregressive flow layer (module docstring): LSTM context + :class:`CouplingStack`.

    ``__call__(u [B, L, F], pos [L + 1, P]) -> (u' [B, L, F], log_det [B, L])`` (parallel,
    data -> noise). :meth:`init_state` and :meth:`context_step` / :meth:`invert_token` are the
    pieces of the sequential inverse.
    """

    features: int
    hidden: int = 500
    lstm_layers: int = 2
    pos_dim: int = 576
    dropout: float = 0.2
    num_couplings: int = 10
    coupling_hidden: int = 100
    reverse_first: bool = False

    def setup(self):
        self.init_mlp = [_dense(self.hidden, ("latent", "hidden"), "init_dense_0"),
                         _dense(2 * self.hidden * self.lstm_layers, ("mlp", "hidden"),
                                "init_out")]
        self.lstm = StackedLSTM(self.hidden, self.features + self.pos_dim, self.lstm_layers,
                                self.dropout)
        self.couplings = CouplingStack(self.features, self.num_couplings, self.coupling_hidden,
                                       2, self.reverse_first)
        self.out_drop = nn.Dropout(self.dropout)

    def init_state(self, pos0: jax.Array, batch: int):
        """``((h, c) each [layers, B, H], ctx_0 [B, H])`` from ``pos0: [P]``."""
        s = self.init_mlp[1](nn.relu(self.init_mlp[0](pos0)))
        s = s.reshape(self.lstm_layers, self.hidden, 2)   # official view(B, layers, H, 2)
        h = jnp.broadcast_to(s[None, ..., 0], (batch, self.lstm_layers, self.hidden))
        c = jnp.broadcast_to(s[None, ..., 1], (batch, self.lstm_layers, self.hidden))
        h, c = jnp.swapaxes(h, 0, 1), jnp.swapaxes(c, 0, 1)
        return (h, c), h[-1]

    def __call__(self, u: jax.Array, pos: jax.Array, *, deterministic: bool = True
                 ) -> tuple[jax.Array, jax.Array]:
        b, length, _ = u.shape
        state, ctx0 = self.init_state(pos[0], b)
        inp = jnp.concatenate(
            [u, jnp.broadcast_to(pos[None, 1:length + 1], (b, length, pos.shape[-1]))], -1)
        out, _ = self.lstm(inp, state, deterministic=deterministic)
        ctx = jnp.concatenate([ctx0[:, None], out[:, :-1]], axis=1)
        ctx = self.out_drop(ctx, deterministic=deterministic)
        return self.couplings(u, ctx)

    def invert_token(self, u_next: jax.Array, ctx: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One token back through the couplings: ``[B, F]`` -> ``(u [B, F], log_det [B])``."""
        return self.couplings.inverse(u_next, ctx)

    def context_step(self, u_t: jax.Array, pos_next: jax.Array, state):
        """Feeds ``[u_t, pos_{t+1}]`` to the LSTM: -> ``(ctx_{t+1} [B, H], state)``."""
        inp = jnp.concatenate([u_t, jnp.broadcast_to(pos_next, (u_t.shape[0],
                                                                pos_next.shape[-1]))], -1)
        return self.lstm.step(inp, state)


class SeqFlow(nn.Module):
    """Token embedding + ``num_flow_layers`` :class:`AFLayer` (module docstring).

    ``__call__(v [B, L, F]) -> (z [B, L, F], log_det [B, L])``; :meth:`table` is the normalised
    embedding table ``[V, F]``; :meth:`decode_init` / :meth:`decode_step` give the sequential
    inverse (driven by :func:`decode_latents`).
    """

    vocab_size: int
    max_len: int
    features: int = 40
    hidden: int = 500
    lstm_layers: int = 2
    num_flow_layers: int = 5
    num_couplings: int = 10
    coupling_hidden: int = 100
    dropout: float = 0.2

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                      ("vocab", "latent")),
            (self.vocab_size, self.features))
        self.layers = [
            AFLayer(self.features, self.hidden, self.lstm_layers, 2 * self.max_len,
                    self.dropout, self.num_couplings, self.coupling_hidden,
                    reverse_first=(k % 2 == 1), name=f"flow_{k}")
            for k in range(self.num_flow_layers)]

    def table(self) -> jax.Array:
        """The raw embedding table ``[V, F]`` (normalise before use)."""
        return self.embedding

    def embed(self, tokens: jax.Array) -> jax.Array:
        """``v = normalize(E[tokens])``: ``int [B, L]`` -> ``[B, L, F]``."""
        return normalize(jnp.take(self.embedding, tokens, axis=0))

    def __call__(self, v: jax.Array, *, deterministic: bool = True
                 ) -> tuple[jax.Array, jax.Array]:
        """Encoding (data -> noise), one parallel pass: ``v: [B, L, F]`` ->
        ``(z [B, L, F], sum of the layers' log-dets per token [B, L])``."""
        pos = jnp.asarray(positional_codes(v.shape[1], self.max_len))
        log_det = jnp.zeros(v.shape[:2], jnp.float32)
        u = v
        for layer in self.layers:
            u, ld = layer(u, pos, deterministic=deterministic)
            log_det = log_det + ld
        return u, log_det

    def decode_init(self, batch: int, length: int):
        """The decoder's carry before token 0: per layer ``((h, c), ctx)``."""
        pos = jnp.asarray(positional_codes(length, self.max_len))
        return [layer.init_state(pos[0], batch) for layer in self.layers]

    def decode_step(self, z_t: jax.Array, t: jax.Array, length: int, carry):
        """Token ``t`` (traced scalar) back through all layers: ``z_t: [B, F]`` ->
        ``(v_t [B, F], log_det_t [B], carry)``."""
        pos = jnp.asarray(positional_codes(length, self.max_len))
        pos_next = jax.lax.dynamic_index_in_dim(pos, t + 1, axis=0, keepdims=False)
        u = z_t
        inputs = [None] * len(self.layers)
        log_det = jnp.zeros(z_t.shape[:1], jnp.float32)
        for k in reversed(range(len(self.layers))):
            u, ld = self.layers[k].invert_token(u, carry[k][1])
            inputs[k] = u
            log_det = log_det + ld
        new = []
        for k, layer in enumerate(self.layers):
            ctx, state = layer.context_step(inputs[k], pos_next, carry[k][0])
            new.append((state, ctx))
        return u, log_det, new


def decode_latents(model: SeqFlow, params: PyTree, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The sequential inverse ``v = g^{-1}(z)``: ``z: [B, L, F]`` -> ``(v [B, L, F], log_det
    per token [B, L])`` (the forward log-det at ``v``), one ``lax.scan`` over tokens."""
    b, length, _ = z.shape
    variables = {"params": params}
    carry = model.apply(variables, b, length, method=SeqFlow.decode_init)

    def body(carry, inp):
        z_t, t = inp
        v_t, ld, carry = model.apply(variables, z_t, t, length, carry,
                                     method=SeqFlow.decode_step)
        return carry, (v_t, ld)

    _, (v, ld) = jax.lax.scan(body, carry, (jnp.swapaxes(z, 0, 1),
                                            jnp.arange(length, dtype=jnp.int32)))
    return jnp.swapaxes(v, 0, 1), jnp.swapaxes(ld, 0, 1)


def gaussian_log_prob(z: jax.Array) -> jax.Array:
    """``log N(z; 0, I)`` summed over the last axis."""
    return -0.5 * jnp.sum(z * z + math.log(2 * math.pi), axis=-1)
