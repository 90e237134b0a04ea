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

from jaxflows.errors import ConfigError
from jaxflows.models import tarflow_sampling as ts
from jaxflows.nn.patches import check_patch_size, patchify
from jaxflows.nn.transformer import Transformer, torch_uniform_init

Dtype = Any


def _lp(init, names):
    return nn.with_logical_partitioning(init, names)


class MetaBlock(nn.Module):
    """One TarFlow flow block on tokens ``[B, N, D]`` (see the module docstring).

    Attributes:
      in_dim: token size ``D``.
      width: Transformer width ``C``.
      num_tokens: ``N``.
      num_layers: Transformer layers ``K``.
      head_dim, mlp_ratio: Transformer layout.
      num_classes: 0 for unconditional.
      nvp: affine (True) or volume-preserving shift-only (False).
      flip: reverse the token order inside this block.
      dtype: Transformer matmul dtype.
      remat: rematerialisation of the Transformer layers in the backward pass: a name from
        :data:`jaxflows.nn.transformer.REMAT_POLICIES` (``'none'``, ``'full'``, a
        ``jax.checkpoint_policies`` name) or a bool (``True`` = ``'full'``).
      attention_impl: see :class:`jaxflows.nn.transformer.TransformerLayer`.
      max_log_scale: > 0 soft-clamps the log-scale, ``a = c tanh(a / c)`` (0 = off, official).
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

    def setup(self):
        """Declares proj_in, pos_embed, class_embed, the Transformer and proj_out."""
        d, c, n = self.in_dim, self.width, self.num_tokens
        out = 2 * d if self.nvp else d
        self.proj_in_kernel = self.param(
            "proj_in_kernel", _lp(torch_uniform_init(d), ("latent", "embed")), (d, c))
        self.proj_in_bias = self.param(
            "proj_in_bias", _lp(torch_uniform_init(d), ("embed",)), (c,))
        self.pos_embed = self.param(
            "pos_embed", _lp(nn.initializers.normal(0.01), ("seq", "embed")), (n, c))
        if self.num_classes:
            self.class_embed = self.param(
                "class_embed", _lp(nn.initializers.normal(0.01), (None, "embed")),
                (self.num_classes, c))
        self.transformer = Transformer(
            c, self.num_layers, self.head_dim, self.mlp_ratio, self.dtype, remat=self.remat,
            attention_impl=self.attention_impl)
        self.proj_out_kernel = self.param(
            "proj_out_kernel", _lp(nn.initializers.zeros, ("embed", "latent")), (c, out))
        self.proj_out_bias = self.param(
            "proj_out_bias", _lp(torch_uniform_init(c), ("latent",)), (out,))

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

    def _head(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = h.astype(jnp.float32) @ self.proj_out_kernel + self.proj_out_bias
        if self.nvp:
            a = out[..., : self.in_dim]
            if self.max_log_scale > 0:  # bounded expansion per block: no exp overflow cascade
                a = self.max_log_scale * jnp.tanh(a / self.max_log_scale)
            return a, out[..., self.in_dim :]
        return jnp.zeros_like(out), out

    def affine_params(
        self, xp: jax.Array, y: jax.Array | None = None, attn_temp: float | jax.Array = 1.0
    ) -> tuple[jax.Array, jax.Array]:
        """Full causal pass. ``xp: [B, N, D]`` in this block's order -> ``(a, b)`` each
        ``[B, N, D]`` float32, already shifted so row ``i`` depends on tokens ``< i`` only."""
        pos = ts.permute_tokens(self.pos_embed[None], self.flip)
        h = xp.astype(jnp.float32) @ self.proj_in_kernel + self.proj_in_bias + pos + self._cond(y)
        h, _ = self.transformer(h, attn_temp)
        a, b = self._head(h)
        pad = jnp.zeros_like(a[:, :1])
        return (jnp.concatenate([pad, a[:, :-1]], axis=1),
                jnp.concatenate([pad, b[:, :-1]], axis=1))

    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Data -> noise direction. ``x: [B, N, D]`` (natural order) -> ``(z [B, N, D],
        logdet [B])`` with the log-det per dimension (``-mean(a)``)."""
        xp = ts.permute_tokens(x.astype(jnp.float32), self.flip)
        a, b = self.affine_params(xp, y)
        z = (xp - b) * jnp.exp(-a)
        return ts.permute_tokens(z, self.flip), -jnp.mean(a, axis=(1, 2))

    def step(
        self,
        x_chunk: jax.Array,
        start: jax.Array | int,
        cache: tuple[jax.Array, jax.Array],
        y: jax.Array | None = None,
        attn_temp: float | jax.Array = 1.0,
    ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array]]:
        """Cached pass over the tokens at positions ``start .. start+L-1`` (this block's order).

        ``x_chunk: [B, L, D]``; ``cache``: ``(k, v)`` each ``[K, B, N, H, Dh]``. Returns
        ``(a, b)`` each ``[B, L, D]`` -- the parameters of the tokens at ``start+1 .. start+L``
        -- and the updated cache.
        """
        length = x_chunk.shape[1]
        pos = ts.permute_tokens(self.pos_embed[None], self.flip)
        pos = jax.lax.dynamic_slice_in_dim(pos, jnp.asarray(start, jnp.int32), length, axis=1)
        h = (x_chunk.astype(jnp.float32) @ self.proj_in_kernel + self.proj_in_bias + pos
             + self._cond(y))
        h, cache = self.transformer(h, attn_temp, cache, start)
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
                      self.max_log_scale, name=f"blocks_{t}")
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
