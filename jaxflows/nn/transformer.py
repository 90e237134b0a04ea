"""Pre-LN causal Transformer with a fixed-size KV cache (TarFlow's attention blocks).

One :class:`TransformerLayer` is ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``: fused ``qkv`` and
output ``proj`` projections, ``head_dim`` 64 by default, MLP ``C -> ratio*C -> C`` with exact
(erf) GELU, biases everywhere, no final norm, no dropout -- the layout of ``apple/ml-tarflow``.

Numerics: params are float32; LayerNorm statistics and the softmax are float32; matmuls run in
``dtype`` (``config.dtype``, e.g. bfloat16); the residual stream is kept in float32.

Two modes, both through ``__call__(x, attn_temp, cache, start)``:

* **full causal** (``cache=None``): ``x: [B, N, C]`` attends with a self-inclusive causal mask.
* **cached** (``cache=(k, v)``, each ``[B, N_max, heads, head_dim]``): ``x: [B, L, C]`` holds
  the tokens at positions ``start .. start+L-1``; their keys/values are written into the cache
  with ``lax.dynamic_update_slice`` and each query attends to cache positions ``<= its own``.
  ``L = 1`` is incremental decoding; ``L > 1`` is a chunk (block-parallel Jacobi sampling).
  Positions after the written ones are masked, so rewriting a chunk needs no roll-back.

:class:`Transformer` stacks ``num_layers`` identical layers with ``nn.scan``; its params have a
leading ``'layers'`` logical axis and its cache is ``(k, v)`` each ``[K, B, N_max, H, Dh]``.

Logical axis names (mapped to mesh axes by ``config.sharding_rules``): ``'embed'`` (model width),
``'heads'``, ``'kv'`` (head dim), ``'mlp'`` (MLP hidden), ``'layers'`` (scan axis).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Cache = tuple[jax.Array, jax.Array]
Dtype = Any


def torch_uniform_init(fan_in: int) -> nn.initializers.Initializer:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's default ``nn.Linear`` weight/bias init."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _ln_params(module: nn.Module, prefix: str, width: int) -> tuple[jax.Array, jax.Array]:
    scale = module.param(
        f"{prefix}_scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        (width,), jnp.float32)
    bias = module.param(
        f"{prefix}_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        (width,), jnp.float32)
    return scale, bias


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis, statistics in float32; returns float32 ``x.shape``."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * scale + bias


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: jax.Array | float
) -> jax.Array:
    """Masked softmax attention. ``q: [B, L, H, Dh]``, ``k, v: [B, M, H, Dh]``,
    ``mask: [L, M]`` (True = attend) or broadcastable to ``[B, H, L, M]``; ``scale``: scalar or
    ``[B, 1, 1, 1]``. Logits and softmax in float32; returns ``[B, L, H, Dh]`` in ``v.dtype``.
    """
    logits = jnp.einsum("blhd,bmhd->bhlm", q, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhlm,bmhd->blhd", weights, v)


def _temp_scale(head_dim: int, attn_temp, batch: int):
    t = jnp.asarray(attn_temp, jnp.float32)
    if t.ndim == 1:
        if t.shape[0] != batch:
            raise ValueError(f"attn_temp has {t.shape[0]} entries for a batch of {batch}")
        t = t[:, None, None, None]
    elif t.ndim != 0:
        raise ValueError(f"attn_temp must be a scalar or [B], got shape {t.shape}")
    return (head_dim**-0.5) / t


class TransformerLayer(nn.Module):
    """One pre-LN layer. ``x: [B, L, C] -> [B, L, C]`` (float32), plus the updated cache.

    Attributes:
      width: model width ``C`` (a multiple of ``head_dim``).
      head_dim: channels per head (64 in TarFlow); heads = ``C // head_dim``.
      mlp_ratio: MLP hidden width is ``mlp_ratio * C``.
      dtype: matmul dtype.
      ln_eps: LayerNorm epsilon (1e-5, PyTorch's default).
      attention_impl: full causal pass only: ``'einsum'`` (this module's masked softmax) or a
        ``jax.nn.dot_product_attention`` implementation: ``'xla'``, ``'cudnn'`` (flash attention
        on NVIDIA GPUs, bf16/fp16) or ``'auto'`` (jax picks). Cached decoding always uses
        ``'einsum'``. The softmax is float32 in every case.
    """

    width: int
    head_dim: int = 64
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-5
    attention_impl: str = "einsum"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        attn_temp: float | jax.Array = 1.0,
        cache: Cache | None = None,
        start: jax.Array | int | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """Applies the layer. See the module docstring for the two modes.

        Args:
          x: ``[B, L, C]`` tokens (any float dtype; the residual is float32).
          attn_temp: attention temperature, scalar or ``[B]``; logits are divided by it.
          cache: ``None`` (full causal) or ``(k, v)`` each ``[B, N_max, H, Dh]``.
          start: position of ``x[:, 0]`` in the cache (cached mode only), int or traced scalar.
        Returns:
          ``(y [B, L, C] float32, new_cache or None)``.
        """
        c = self.width
        if c % self.head_dim:
            raise ValueError(f"width {c} is not a multiple of head_dim {self.head_dim}")
        h = c // self.head_dim
        dh = self.head_dim
        hid = self.mlp_ratio * c
        dt = self.dtype
        b, length, _ = x.shape
        x = x.astype(jnp.float32)

        def p(name, shape, names, fan_in):
            return self.param(
                name, nn.with_logical_partitioning(torch_uniform_init(fan_in), names), shape,
                jnp.float32)

        ln1_s, ln1_b = _ln_params(self, "attn_norm", c)
        qkv_k = p("qkv_kernel", (c, 3, h, dh), ("embed", None, "heads", "kv"), c)
        qkv_b = p("qkv_bias", (3, h, dh), (None, "heads", "kv"), c)
        proj_k = p("proj_kernel", (h, dh, c), ("heads", "kv", "embed"), c)
        proj_b = p("proj_bias", (c,), ("embed",), c)
        ln2_s, ln2_b = _ln_params(self, "mlp_norm", c)
        fc1_k = p("fc1_kernel", (c, hid), ("embed", "mlp"), c)
        fc1_b = p("fc1_bias", (hid,), ("mlp",), c)
        fc2_k = p("fc2_kernel", (hid, c), ("mlp", "embed"), hid)
        fc2_b = p("fc2_bias", (c,), ("embed",), hid)

        # --- attention
        y = layer_norm(x, ln1_s, ln1_b, self.ln_eps).astype(dt)
        qkv = jnp.einsum("blc,cthd->blthd", y, qkv_k.astype(dt)) + qkv_b.astype(dt)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, H, Dh]
        scale = _temp_scale(dh, attn_temp, b)
        if cache is None and self.attention_impl != "einsum":
            if self.attention_impl not in ("xla", "cudnn", "auto"):
                raise ValueError(f"unknown attention_impl {self.attention_impl!r}")
            impl = None if self.attention_impl == "auto" else self.attention_impl
            qs = (q * (scale * dh**0.5)).astype(dt)  # temperature folded into the queries
            o = jax.nn.dot_product_attention(qs, k, v, scale=dh**-0.5, is_causal=True,
                                             implementation=impl)
            mask, new_cache = None, None
        elif cache is None:
            mask = jnp.tril(jnp.ones((length, length), bool))
            new_cache = None
        else:
            ck, cv = cache
            if start is None:
                raise ValueError("cached attention needs the start position")
            start = jnp.asarray(start, jnp.int32)
            zero = jnp.zeros((), jnp.int32)
            ck = lax.dynamic_update_slice(ck, k.astype(ck.dtype), (zero, start, zero, zero))
            cv = lax.dynamic_update_slice(cv, v.astype(cv.dtype), (zero, start, zero, zero))
            new_cache = (ck, cv)
            qpos = start + jnp.arange(length)
            mask = jnp.arange(ck.shape[1])[None, :] <= qpos[:, None]  # [L, N_max]
            k, v = ck.astype(dt), cv.astype(dt)
        if mask is not None:
            o = attention(q, k, v, mask, scale)
        o = jnp.einsum("blhd,hdc->blc", o, proj_k.astype(dt)) + proj_b.astype(dt)
        x = x + o.astype(jnp.float32)

        # --- MLP
        y = layer_norm(x, ln2_s, ln2_b, self.ln_eps).astype(dt)
        y = jnp.einsum("blc,cf->blf", y, fc1_k.astype(dt)) + fc1_b.astype(dt)
        y = nn.gelu(y, approximate=False)
        y = jnp.einsum("blf,fc->blc", y, fc2_k.astype(dt)) + fc2_b.astype(dt)
        x = x + y.astype(jnp.float32)
        return x, new_cache


class _ScanLayer(nn.Module):
    """Adapts :class:`TransformerLayer` to ``nn.scan``'s ``(carry, xs) -> (carry, ys)``."""

    width: int
    head_dim: int
    mlp_ratio: int
    dtype: Dtype
    ln_eps: float
    attention_impl: str

    @nn.compact
    def __call__(self, x, cache, attn_temp, start):
        return TransformerLayer(
            self.width, self.head_dim, self.mlp_ratio, self.dtype, self.ln_eps,
            self.attention_impl, name="layer"
        )(x, attn_temp, cache, start)


class Transformer(nn.Module):
    """``num_layers`` identical :class:`TransformerLayer` s under ``nn.scan``.

    Params of every layer are stacked along a leading axis of size ``num_layers`` with logical
    name ``'layers'``. ``remat=True`` rematerialises each layer in the backward pass;
    ``attention_impl`` as in :class:`TransformerLayer`.
    """

    width: int
    num_layers: int
    head_dim: int = 64
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-5
    remat: bool = False
    attention_impl: str = "einsum"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        attn_temp: float | jax.Array = 1.0,
        cache: Cache | None = None,
        start: jax.Array | int | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """``x: [B, L, C]`` -> ``([B, L, C] float32, cache)``; cache ``(k, v)`` each
        ``[K, B, N_max, H, Dh]`` or ``None`` for the full causal pass."""
        body = _ScanLayer
        if self.remat:
            body = nn.remat(body, prevent_cse=False)
        scanned = nn.scan(
            body,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast),
            length=self.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        if start is None:
            start = 0
        return scanned(
            self.width, self.head_dim, self.mlp_ratio, self.dtype, self.ln_eps,
            self.attention_impl, name="layers"
        )(x, cache, jnp.asarray(attn_temp, jnp.float32), jnp.asarray(start, jnp.int32))

    def init_cache(self, batch: int, max_len: int, dtype: Dtype | None = None) -> Cache:
        """Zero cache ``(k, v)``, each ``[num_layers, batch, max_len, heads, head_dim]``."""
        return init_cache(self.num_layers, batch, max_len, self.width // self.head_dim,
                          self.head_dim, dtype or self.dtype)


def init_cache(
    num_layers: int, batch: int, max_len: int, heads: int, head_dim: int, dtype: Dtype
) -> Cache:
    """Zero KV cache ``(k, v)``, each ``[num_layers, batch, max_len, heads, head_dim]``."""
    shape = (num_layers, batch, max_len, heads, head_dim)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
