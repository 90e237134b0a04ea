"""TarFlow: Transformer autoregressive flows (Zhai et al., "Normalizing Flows are Capable
Generative Models", ICML 2025), following apple/ml-tarflow.

Model (``P-C-T-K``: patch size, width, flow blocks, layers per block):

* the image ``[B, H, W, C]`` in [-1, 1] is cut into ``N`` patch tokens of ``D = p*p*C`` numbers
  (:mod:`jaxflows.nn.patches`);
* ``T`` :class:`MetaBlock` s map data to noise. Block ``t`` works in its own token order
  (identity for even ``t``, reversed for odd ``t``): ``h = proj_in(x) + pos_embed
  [+ class_embed[y]]``, ``K`` causal Transformer layers (:mod:`jaxflows.nn.transformer`), a
  zero-initialised ``proj_out`` giving ``(a, b)`` per token, shifted right by one token (token 0
  gets ``(0, 0)``, the identity), and ``z = (x - b) * exp(-a)``. The per-block log-det is
  ``-mean(a)`` over tokens and channels, i.e. **per dimension**;
* prior ``N(0, I)``; loss ``0.5 * mean(z^2) - mean_B(sum_t logdet_t)`` (= NLL/D up to
  ``0.5 log 2 pi``).

Class conditioning: each block has its own ``class_embed [num_classes, C]`` (init randn*0.01);
label ``-1`` means "no label" and uses the **mean** class embedding (ml-tarflow's null class);
training drops labels with probability ``drop_label``.

Variance-preserving option (``nvp=False``): ``proj_out`` gives only ``b`` (``a = 0``, log-det 0)
and sampling scales the noise by a per-(token, dim) prior std. ml-tarflow learns that variance by
an EMA buffer (``var <- lerp(var, E[z^2], 0.1)``) and keeps training the flow against ``N(0, I)``.
We keep no non-param state: the prior log-variance is a **parameter** ``prior_logvar [N, D]`` fit
by maximum likelihood to ``stop_gradient(z)`` (an extra loss term that touches no other weight;
its minimiser is ``E[z^2]``, the EMA's fixed point). The flow's own loss is unchanged.

Logit preprocessing (``logit_alpha > 0``, uniform dequantisation only; not in ml-tarflow): the
flow models ``logit(alpha + (1 - 2 alpha) (x + 1) / 2)`` of the dequantised pixels, RealNVP's and
MAF's transform for bounded data, with its log-det counted in the likelihood (bits/dim stays the
official formula on pixels); the sampler maps back through the sigmoid. On MNIST it spares the flow
learning ~e^6 contractions of the always-black background before anything else.

The flow arithmetic (proj_in, proj_out, affine maps, log-dets) is float32; Transformer matmuls
run in ``config.dtype``.

:class:`MetaBlock` is the autoregressive block core shared with STARFlow
(:mod:`jaxflows.models.starflow`): its options (``shift``, ``scale``, ``soft_clip``,
``final_norm``, ``positions``, a conditioning prefix) default to TarFlow's block, so TarFlow's
parameter tree and numbers are unchanged; the KV-cache inverse loop
(:func:`jaxflows.models.tarflow_sampling.invert_block`) serves both.

This module holds the flow itself (modules and pure helpers). Sampling lives in
:mod:`jaxflows.models.tarflow_sampling`, ``config.model`` (defaults, validation, building the
model) in :mod:`jaxflows.models.tarflow_config`, and the training task in
:mod:`jaxflows.models.tarflow_task`.
"""

from __future__ import annotations

import math
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxflows.errors import ConfigError
from jaxflows.models import tarflow_sampling as ts
from jaxflows.nn.norms import rms_norm
from jaxflows.nn.patches import check_patch_size, patchify
from jaxflows.nn.rope import rope_table
from jaxflows.nn.transformer import Transformer, token_matmul, torch_uniform_init

Dtype = Any


def _lp(init, names):
    return nn.with_logical_partitioning(init, names)


#: ``MetaBlock.shift``: ``'output'`` (TarFlow) or ``'sos'`` (STARFlow)
SHIFTS = ("output", "sos")
#: ``MetaBlock.scale``: ``'exp'`` (TarFlow) or ``'softplus'`` (STARFlow)
SCALES = ("exp", "softplus")
#: ``MetaBlock.positions``: ``'learned'`` (TarFlow ``pos_embed``) or ``'rope'`` (STARFlow)
POSITIONS = ("learned", "rope")
#: ``log(e - 1)``: ``softplus(0 + INV_SOFTPLUS_1) = 1`` (STARFlow's scale offset)
INV_SOFTPLUS_1 = math.log(math.e - 1.0)


def scale_sigma(a: jax.Array, scale: str) -> jax.Array:
    """The scale ``sigma`` of a head's first half ``a`` (float32, any shape): ``exp(a)``
    (``'exp'``) or ``softplus(a + log(e - 1))`` (``'softplus'``, 1 at ``a = 0``)."""
    a = a.astype(jnp.float32)
    if scale == "softplus":
        return jax.nn.softplus(a + INV_SOFTPLUS_1)
    return jnp.exp(a)


def scale_log_sigma(a: jax.Array, scale: str) -> jax.Array:
    """``log sigma`` of :func:`scale_sigma` (``a`` itself for ``'exp'``)."""
    if scale == "softplus":
        return jnp.log(scale_sigma(a, scale))
    return a.astype(jnp.float32)


class MetaBlock(nn.Module):
    """One autoregressive flow block on tokens ``[B, N, D]``: TarFlow's (the defaults, see the
    module docstring) or STARFlow's (:mod:`jaxflows.models.starflow`).

    Data -> noise in the block's own token order (reversed if ``flip``): the input sequence is
    ``x`` itself (``shift='output'``) or ``[sos, x_0 .. x_{N-2}]`` (``shift='sos'``), embedded
    by ``proj_in`` (plus ``pos_embed`` or, with RoPE, nothing) and an optional class embedding;
    an optional conditioning prefix ``[B, T, E]`` goes through ``proj_txt`` and is prepended
    under the same causal mask; the Transformer's outputs at the image tokens go through an
    optional final RMSNorm and ``proj_out`` to ``(a, b)`` (optionally soft-clipped,
    ``c tanh(out / c)``), shifted right by one token for ``shift='output'`` (token 0 then gets
    ``(0, 0)``, the identity). With ``sigma = exp(a)`` or ``softplus(a + log(e-1))``:
    ``z = (x - b) / sigma``, log-det ``-log sigma`` per element.

    Attributes:
      in_dim: token size ``D``.
      width: Transformer width ``C``.
      num_tokens: ``N``.
      num_layers: Transformer layers ``K``.
      head_dim, mlp_ratio: Transformer layout.
      num_classes: 0 for unconditional; else TarFlow's per-block ``class_embed``.
      nvp: affine (True) or volume-preserving shift-only (False).
      flip: reverse the token order inside this block.
      dtype: Transformer matmul dtype.
      remat: rematerialisation of the Transformer layers in the backward pass: a name from
        :data:`jaxflows.nn.transformer.REMAT_POLICIES` (``'none'``, ``'full'``, a
        ``jax.checkpoint_policies`` name) or a bool (``True`` = ``'full'``).
      attention_impl: see :class:`jaxflows.nn.transformer.TransformerLayer`.
      max_log_scale: > 0 soft-clamps the log-scale, ``a = c tanh(a / c)`` (0 = off, official).
      shift: one of :data:`SHIFTS`: ``'output'`` (TarFlow) or ``'sos'`` (a learned input token
        ``sos_embed [1, 1, D]``; every token is transformed).
      scale: one of :data:`SCALES`.
      soft_clip: > 0 applies ``c tanh(out / c)`` to all ``proj_out`` outputs (STARFlow: 4).
      final_norm: RMSNorm ``(1 + w)`` (``final_norm_scale``, zeros) before ``proj_out``.
      positions: one of :data:`POSITIONS`.
      grid: ``(rows, cols)`` of the tokens for RoPE (``None`` = ``(1, N)``).
      rope_prefix_axis: RoPE with the third (prefix) axis: set on every block of a conditional
        STARFlow, prefix or not (:mod:`jaxflows.nn.rope`).
      rope_ref_len: RoPE reference length (0 = ``sqrt(rows * cols)``).
      prefix_len, prefix_dim: ``T, E`` of the conditioning prefix (0 = none); params
        ``proj_txt_kernel [E, C]``, ``proj_txt_bias [C]``.
      unroll_layers: unroll the Transformer's layer loop (the default; see
        :class:`jaxflows.nn.transformer.Transformer`).
    """

    in_dim: int
    width: int
    num_tokens: int
    num_layers: int
    head_dim: int = 64
    mlp_ratio: int = 4
    num_classes: int = 0
    nvp: bool = True
    flip: bool = False
    dtype: Dtype = jnp.float32
    remat: bool | str = False
    attention_impl: str = "einsum"
    max_log_scale: float = 0.0
    shift: str = "output"
    scale: str = "exp"
    soft_clip: float = 0.0
    final_norm: bool = False
    positions: str = "learned"
    grid: tuple[int, int] | None = None
    rope_prefix_axis: bool = False
    rope_ref_len: float = 0.0
    prefix_len: int = 0
    prefix_dim: int = 0
    unroll_layers: bool = True

    def _check(self):
        for name, value, allowed in (("shift", self.shift, SHIFTS), ("scale", self.scale, SCALES),
                                     ("positions", self.positions, POSITIONS)):
            if value not in allowed:
                raise ConfigError(f"MetaBlock {name}={value!r}; use one of {', '.join(allowed)}")
        if self.soft_clip < 0:
            raise ConfigError(f"MetaBlock soft_clip={self.soft_clip} must be >= 0 (0 = off)")
        if bool(self.prefix_len) != bool(self.prefix_dim) or min(self.prefix_len,
                                                                 self.prefix_dim) < 0:
            raise ConfigError(f"MetaBlock prefix_len={self.prefix_len} and prefix_dim="
                              f"{self.prefix_dim} must both be positive or both 0")
        if self.prefix_len and self.positions == "rope" and not self.rope_prefix_axis:
            raise ConfigError("a RoPE MetaBlock with a prefix needs rope_prefix_axis=True")
        if not self.nvp and self.scale != "exp":
            raise ConfigError("the volume-preserving mode (nvp=False) has no scale to choose")
        rows, cols = self.token_grid
        if rows * cols != self.num_tokens:
            raise ConfigError(f"MetaBlock grid {rows}x{cols} does not hold {self.num_tokens} "
                              "tokens")

    @property
    def token_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the tokens (RoPE positions)."""
        return tuple(self.grid) if self.grid is not None else (1, self.num_tokens)

    def setup(self):
        """Declares proj_in, pos_embed or RoPE, sos_embed, class_embed, proj_txt, the
        Transformer, final_norm and proj_out (each only where its option asks for it)."""
        self._check()
        d, c, n = self.in_dim, self.width, self.num_tokens
        out = 2 * d if self.nvp else d
        self.proj_in_kernel = self.param(
            "proj_in_kernel", _lp(torch_uniform_init(d), ("latent", "embed")), (d, c))
        self.proj_in_bias = self.param(
            "proj_in_bias", _lp(torch_uniform_init(d), ("embed",)), (c,))
        if self.positions == "learned":
            self.pos_embed = self.param(
                "pos_embed", _lp(nn.initializers.normal(0.01), ("seq", "embed")), (n, c))
        if self.num_classes:
            self.class_embed = self.param(
                "class_embed", _lp(nn.initializers.normal(0.01), (None, "embed")),
                (self.num_classes, c))
        self.transformer = Transformer(
            c, self.num_layers, self.head_dim, self.mlp_ratio, self.dtype, remat=self.remat,
            attention_impl=self.attention_impl, unroll_layers=self.unroll_layers)
        self.proj_out_kernel = self.param(
            "proj_out_kernel", _lp(nn.initializers.zeros, ("embed", "latent")), (c, out))
        self.proj_out_bias = self.param(
            "proj_out_bias", _lp(torch_uniform_init(c), ("latent",)), (out,))
        if self.shift == "sos":
            self.sos_embed = self.param(
                "sos_embed", _lp(nn.initializers.normal(1.0), (None, None, "latent")), (1, 1, d))
        if self.prefix_dim:
            e = self.prefix_dim
            self.proj_txt_kernel = self.param(
                "proj_txt_kernel", _lp(torch_uniform_init(e), (None, "embed")), (e, c))
            self.proj_txt_bias = self.param(
                "proj_txt_bias", _lp(torch_uniform_init(e), ("embed",)), (c,))
        if self.final_norm:
            self.final_norm_scale = self.param(
                "final_norm_scale", _lp(nn.initializers.zeros, ("embed",)), (c,))

    # --- pieces

    def _cond(self, y: jax.Array | None) -> jax.Array | float:
        """Class embedding ``[B, 1, C]`` (label -1 or ``y=None`` -> mean embedding), or 0."""
        if not self.num_classes:
            return 0.0
        mean = jnp.mean(self.class_embed, axis=0)
        if y is None:
            return mean[None, None]
        y = jnp.asarray(y, jnp.int32)
        emb = jnp.where((y >= 0)[:, None], self.class_embed[jnp.clip(y, 0)], mean)
        return emb[:, None, :]

    def _rope(self) -> tuple[jax.Array, jax.Array] | None:
        """RoPE ``(cos, sin)`` ``[prefix_len + N, Dh]`` indexed by sequence index, or None."""
        if self.positions != "rope":
            return None
        rows, cols = self.token_grid
        cos, sin = rope_table(self.head_dim, rows, cols, self.prefix_len, self.rope_prefix_axis,
                              self.rope_ref_len)
        return jnp.asarray(cos), jnp.asarray(sin)

    def _embed(self, inp: jax.Array, start: jax.Array | int, y: jax.Array | None) -> jax.Array:
        """Input rows ``[B, L, D]`` at sequence indices ``start ..`` -> ``[B, L, C]`` float32."""
        h = token_matmul(inp.astype(jnp.float32), self.proj_in_kernel) + self.proj_in_bias
        if self.positions == "learned":
            pos = ts.permute_tokens(self.pos_embed[None], self.flip)
            h = h + lax.dynamic_slice_in_dim(pos, jnp.asarray(start, jnp.int32), inp.shape[1],
                                             axis=1)
        return h + self._cond(y)

    def _embed_prefix(self, prefix: jax.Array) -> jax.Array:
        """``prefix: [B, T, E]`` -> ``proj_txt(prefix)`` ``[B, T, C]`` float32."""
        if prefix.ndim != 3 or prefix.shape[1:] != (self.prefix_len, self.prefix_dim):
            raise ValueError(f"prefix of shape {prefix.shape}; this block takes [B, "
                             f"{self.prefix_len}, {self.prefix_dim}]")
        return token_matmul(prefix.astype(jnp.float32), self.proj_txt_kernel) + self.proj_txt_bias

    def _check_prefix(self, prefix: jax.Array | None):
        if self.prefix_len and prefix is None:
            raise ValueError("this block is conditioned on a prefix [B, T, E]; pass one")
        if not self.prefix_len and prefix is not None:
            raise ValueError("this block takes no prefix")

    def sos_tokens(self, batch: int) -> jax.Array:
        """The SOS input row ``[batch, 1, D]`` float32 (``shift='sos'`` only)."""
        return jnp.broadcast_to(self.sos_embed, (batch, 1, self.in_dim)).astype(jnp.float32)

    def _inputs(self, xp: jax.Array) -> jax.Array:
        """Input sequence of the full pass: ``xp`` or ``[sos, xp_0 .. xp_{N-2}]``."""
        if self.shift == "sos":
            return jnp.concatenate([self.sos_tokens(xp.shape[0]), xp[:, :-1]], axis=1)
        return xp

    def _head(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Transformer outputs ``[B, L, C]`` -> raw ``(a, b)`` each ``[B, L, D]`` float32."""
        h = h.astype(jnp.float32)
        if self.final_norm:
            h = rms_norm(h, self.final_norm_scale)
        out = token_matmul(h, self.proj_out_kernel) + self.proj_out_bias
        if self.soft_clip > 0:
            out = self.soft_clip * jnp.tanh(out / self.soft_clip)
        if self.nvp:
            a = out[..., : self.in_dim]
            if self.max_log_scale > 0:  # bounded expansion per block: no exp overflow cascade
                a = self.max_log_scale * jnp.tanh(a / self.max_log_scale)
            return a, out[..., self.in_dim :]
        return jnp.zeros_like(out), out

    # --- full (parallel) pass

    def affine_params(
        self, xp: jax.Array, y: jax.Array | None = None, attn_temp: float | jax.Array = 1.0,
        prefix: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Full causal pass. ``xp: [B, N, D]`` in this block's order (``prefix: [B, T, E]`` or
        None) -> raw ``(a, b)`` each ``[B, N, D]`` float32, aligned so row ``i`` holds token
        ``i``'s parameters and depends on tokens ``< i`` only (TarFlow's row 0 is ``(0, 0)``)."""
        self._check_prefix(prefix)
        h = self._embed(self._inputs(xp), 0, y)
        if self.prefix_len:
            h = jnp.concatenate([self._embed_prefix(prefix), h], axis=1)
        h, _ = self.transformer(h, attn_temp, rope=self._rope())
        a, b = self._head(h[:, self.prefix_len:])
        if self.shift == "sos":
            return a, b
        pad = jnp.zeros_like(a[:, :1])
        return (jnp.concatenate([pad, a[:, :-1]], axis=1),
                jnp.concatenate([pad, b[:, :-1]], axis=1))

    def _forward(self, x, y, prefix):
        """``(z [B, N, D]`` natural order, ``logdet [B, N, D]`` in this block's order)."""
        xp = ts.permute_tokens(x.astype(jnp.float32), self.flip)
        a, b = self.affine_params(xp, y, prefix=prefix)
        if self.scale == "exp":
            z = (xp - b) * jnp.exp(-a)
        else:
            z = (xp - b) / scale_sigma(a, self.scale)
        return ts.permute_tokens(z, self.flip), -scale_log_sigma(a, self.scale)

    def forward_elementwise(
        self, x: jax.Array, y: jax.Array | None = None, prefix: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Data -> noise. ``x: [B, N, D]`` (natural order) -> ``(z [B, N, D], logdet
        [B, N, D])``, both in natural token order, the log-det ``-log sigma`` per element."""
        z, logdet = self._forward(x, y, prefix)
        return z, ts.permute_tokens(logdet, self.flip)

    def __call__(
        self, x: jax.Array, y: jax.Array | None = None, prefix: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Data -> noise direction. ``x: [B, N, D]`` (natural order) -> ``(z [B, N, D],
        logdet [B])`` with the log-det per dimension (``-mean(log sigma)``)."""
        z, logdet = self._forward(x, y, prefix)
        return z, jnp.mean(logdet, axis=(1, 2))

    # --- cached (sequential) pass

    @property
    def cache_len(self) -> int:
        """KV-cache positions this block needs: ``prefix_len + N``."""
        return self.prefix_len + self.num_tokens

    def prefill(
        self, prefix: jax.Array, cache: tuple[jax.Array, jax.Array],
        attn_temp: float | jax.Array = 1.0,
    ) -> tuple[jax.Array, jax.Array]:
        """Writes the prefix ``[B, T, E]`` into cache positions ``0 .. T-1``; returns the cache
        (``K`` pairs ``(k, v)``, each ``[B, H, T + N, Dh]``)."""
        h = self._embed_prefix(prefix)
        rope = self._rope()
        if rope is not None:
            rope = (rope[0][: self.prefix_len], rope[1][: self.prefix_len])
        _, cache = self.transformer(h, attn_temp, cache, 0, rope)
        return cache

    def step(
        self,
        x_chunk: jax.Array,
        start: jax.Array | int,
        cache: tuple[jax.Array, jax.Array],
        y: jax.Array | None = None,
        attn_temp: float | jax.Array = 1.0,
    ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array]]:
        """Cached pass over the input rows at sequence indices ``start .. start+L-1`` (this
        block's order; the prefix, if any, sits before index 0 in the cache).

        ``x_chunk: [B, L, D]`` (for ``shift='sos'`` input row 0 is :meth:`sos_tokens`);
        ``cache``: ``K`` pairs ``(k, v)``, each ``[B, H, T + N, Dh]``. Returns raw ``(a, b)`` each
        ``[B, L, D]`` -- the parameters of the tokens at ``start+1 .. start+L``
        (``shift='output'``) or ``start .. start+L-1`` (``shift='sos'``) -- and the cache.
        """
        length = x_chunk.shape[1]
        h = self._embed(x_chunk, start, y)
        pos = jnp.asarray(start, jnp.int32) + self.prefix_len
        rope = self._rope()
        if rope is not None:
            rope = tuple(lax.dynamic_slice_in_dim(r, pos, length, axis=0) for r in rope)
        h, cache = self.transformer(h, attn_temp, cache, pos, rope)
        a, b = self._head(h)
        return a, b, cache


class TarFlowModel(nn.Module):
    """The whole flow on images. ``__call__(x_img [B, H, W, C] in [-1, 1], y)`` ->
    ``(z [B, N, D], logdet [B])`` (log-det summed over blocks, per dimension).

    Attributes:
      image_shape: ``(H, W, C)``.
      patch_size: ``p`` (must divide ``H`` and ``W``).
      width, num_blocks, layers_per_block, head_dim, mlp_ratio: ``C, T, K`` and layout.
      num_classes: 0 for unconditional.
      nvp: affine blocks (True) or volume-preserving with a learned prior variance (False).
      dtype: Transformer matmul dtype.
      remat: rematerialisation policy of the Transformer layers (see :class:`MetaBlock`).
      attention_impl: ``'einsum'`` | ``'chunked'`` | ``'xla'`` | ``'cudnn'`` | ``'auto'`` (see
        :class:`jaxflows.nn.transformer.TransformerLayer`).
      max_log_scale: soft clamp of every block's log-scale (0 = off, as ml-tarflow).
      unroll_layers: unroll each block's layer loop (see :class:`MetaBlock`).
    """

    image_shape: tuple[int, int, int]
    patch_size: int
    width: int
    num_blocks: int
    layers_per_block: int
    head_dim: int = 64
    mlp_ratio: int = 4
    num_classes: int = 0
    nvp: bool = True
    dtype: Dtype = jnp.float32
    remat: bool | str = False
    attention_impl: str = "einsum"
    max_log_scale: float = 0.0
    unroll_layers: bool = True

    @property
    def num_tokens(self) -> int:
        """``N = (H/p)(W/p)``."""
        h, w, _ = self.image_shape
        return (h // self.patch_size) * (w // self.patch_size)

    @property
    def token_dim(self) -> int:
        """``D = p*p*C``."""
        return self.patch_size**2 * self.image_shape[2]

    def block_flip(self, t: int) -> bool:
        """Whether block ``t`` reverses the token order (odd blocks)."""
        return bool(t % 2)

    def setup(self):
        """Declares the ``T`` blocks (odd ones flipped) and, in VP mode, ``prior_logvar``."""
        h, w, _ = self.image_shape
        check_patch_size(h, w, self.patch_size)
        self.blocks = [
            MetaBlock(self.token_dim, self.width, self.num_tokens, self.layers_per_block,
                      self.head_dim, self.mlp_ratio, self.num_classes, self.nvp,
                      self.block_flip(t), self.dtype, self.remat, self.attention_impl,
                      self.max_log_scale, unroll_layers=self.unroll_layers,
                      name=f"blocks_{t}")
            for t in range(self.num_blocks)
        ]
        if not self.nvp:
            self.prior_logvar = self.param(
                "prior_logvar", _lp(nn.initializers.zeros, ("seq", "latent")),
                (self.num_tokens, self.token_dim))

    def __call__(
        self, x_img: jax.Array, y: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Forward (data -> noise), parallel over tokens."""
        x = patchify(x_img.astype(jnp.float32), self.patch_size)
        logdet = jnp.zeros(x.shape[:1], jnp.float32)
        for blk in self.blocks:
            x, ld = blk(x, y)
            logdet = logdet + ld
        return x, logdet

    def forward_tokens(
        self, x: jax.Array, y: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
        """Forward on tokens ``x: [B, N, D]`` -> ``(z, logdet [B], per-block outputs)``."""
        outs = []
        logdet = jnp.zeros(x.shape[:1], jnp.float32)
        for blk in self.blocks:
            x, ld = blk(x, y)
            logdet = logdet + ld
            outs.append(x)
        return x, logdet, outs

    def prior_var(self) -> jax.Array:
        """Prior variance ``[N, D]``: ones (NVP) or ``exp(prior_logvar)`` (VP)."""
        if self.nvp:
            return jnp.ones((self.num_tokens, self.token_dim), jnp.float32)
        return jnp.exp(self.prior_logvar)

    def prior_log_var(self) -> jax.Array:
        """``log prior_var`` ``[N, D]`` (zeros in NVP mode)."""
        return jnp.log(self.prior_var())


# ------------------------------------------------------------------------------------------
# Pixels


def to_signed_unit(image: jax.Array) -> jax.Array:
    """uint8 pixels ``[..]`` -> float32 in [-1, 1] (``x / 127.5 - 1``, ml-tarflow's Normalize).

    Dequantisation (``noise_type='uniform'`` and the bits/dim eval) uses
    :func:`jaxflows.data.transforms.uniform_dequantize`: ``(x + u) / 256 * 2 - 1``, ml-tarflow's
    convention (bin width 2/256, hence ``- D log 128`` in bits/dim).
    """
    return image.astype(jnp.float32) / 127.5 - 1.0


def logit_bijector(alpha: float) -> distrax.Bijector:
    """Elementwise ``x in [-1, 1] -> logit(alpha + (1 - 2 alpha) (x + 1) / 2)`` (RealNVP's / MAF's
    logit preprocessing, as a distrax chain): ``forward_and_log_det`` gives per-element log-dets,
    ``inverse`` maps flow space back to [-1, 1]."""
    if not 0.0 < alpha < 0.5:
        raise ConfigError(f"config.model.logit_alpha={alpha} must be in (0, 0.5), or 0 (off)")
    scale = (1.0 - 2.0 * alpha) / 2.0
    return distrax.Chain([distrax.Inverse(distrax.Sigmoid()),
                          distrax.ScalarAffine(shift=alpha + scale, scale=scale)])


def count_params(model: TarFlowModel) -> int:
    """Number of parameters of ``model`` via ``jax.eval_shape`` (nothing is allocated)."""
    h, w, c = model.image_shape
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, c)), y)
    shapes = nn.unbox(shapes)
    return int(sum(math.prod(a.shape) for a in jax.tree.leaves(shapes)))
