"""Pre-LN causal Transformer with a fixed-size KV cache (TarFlow's attention blocks).

One :class:`TransformerLayer` is ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``: fused ``qkv`` and
output ``proj`` projections, ``head_dim`` 64 by default, MLP ``C -> ratio*C -> C`` with exact
(erf) GELU, biases everywhere, no final norm, no dropout -- the layout of ``apple/ml-tarflow``.

Numerics: params are float32; LayerNorm statistics and the softmax are float32; matmuls run in
``dtype`` (``config.dtype``, e.g. bfloat16); the residual stream is kept in float32.

Two modes, both through ``__call__(x, attn_temp, cache, start)``:

* **full causal** (``cache=None``): ``x: [B, N, C]`` attends with a self-inclusive causal mask.
* **cached** (``cache=(k, v)``, each ``[B, heads, N_max, head_dim]``, heads-major so that
  attention reads it without a transpose; a :class:`Transformer` takes one pair per layer):
  ``x: [B, L, C]`` holds the tokens at positions ``start .. start+L-1``; their keys/values are
  written into the cache with ``lax.dynamic_update_slice`` and each query attends to cache
  positions ``<= its own``.
  ``L = 1`` is incremental decoding; ``L > 1`` is a chunk (block-parallel Jacobi sampling).
  Positions after the written ones are masked, so rewriting a chunk needs no roll-back.

Optional rotary position embeddings (STARFlow): ``rope=(cos, sin)``, each ``[L, head_dim]``, the
rows of :func:`jaxflows.nn.rope.rope_table` for the ``L`` tokens of ``x``; queries and keys are
rotated before attention (cached keys are stored rotated). ``rope=None`` (TarFlow) rotates
nothing.

:class:`Transformer` stacks ``num_layers`` identical layers with ``nn.scan``; its params have a
leading ``'layers'`` logical axis and its cache is a tuple of ``K`` pairs ``(k, v)``, each
``[B, H, N_max, Dh]`` (:func:`init_cache`). With ``unroll_layers`` (the default) the scan is
fully unrolled (no loop-carried stacking of activations and residuals) unless ``remat`` is on
(then the full pass stays a rolled loop, whose per-iteration buffer reuse is what bounds the
memory), and the cached pass is a Python loop in which each layer updates its own cache buffer
in place; ``unroll_layers=False`` keeps a rolled loop (smaller programs and faster compiles
for deep stacks). The parameters are the same either way.

Logical axis names (mapped to mesh axes by ``config.sharding_rules``): ``'embed'`` (model width),
``'heads'``, ``'kv'`` (head dim), ``'mlp'`` (MLP hidden), ``'layers'`` (scan axis).

Memory at scale (``B*H*N^2`` attention probabilities and every layer's activations):

* ``attention_impl`` (:data:`ATTENTION_IMPLS`): ``'einsum'`` materialises the ``[B, H, L, M]``
  probabilities; ``'chunked'`` (:func:`chunked_attention`) processes ``attention_chunk`` queries at
  a time under ``lax.map`` with each chunk checkpointed, so neither the forward nor the backward
  pass holds more than ``[B, H, chunk, M]`` -- the same row-wise float32 softmax, so the same
  numbers; ``'xla'`` / ``'cudnn'`` call ``jax.nn.dot_product_attention``; ``'auto'`` picks per
  backend (:func:`resolve_attention`: cuDNN flash attention on GPUs in bf16/fp16, XLA's
  ``dot_product_attention`` on TPUs, ``'chunked'`` otherwise).
* ``remat`` (:data:`REMAT_POLICIES`): ``'none'`` keeps every layer's activations for the backward
  pass; ``'full'`` keeps only each scanned layer's input and recomputes the rest; the others
  name a ``jax.checkpoint_policies`` policy (e.g. ``'dots_with_no_batch_dims_saveable'`` keeps
  the weight matmuls' outputs and recomputes attention and elementwise ops).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxflows.nn.activations import gelu_erf
from jaxflows.nn.rope import apply_rope

LayerCache = tuple[jax.Array, jax.Array]  # (k, v), each [B, H, N_max, Dh]
Cache = tuple[LayerCache, ...]  # one (k, v) per layer
Rope = tuple[jax.Array, jax.Array]
Dtype = Any

#: ``attention_impl`` values (see the module docstring)
ATTENTION_IMPLS = ("einsum", "chunked", "xla", "cudnn", "auto")

#: ``remat`` values: ``'none'``, ``'full'`` (save nothing but the layer input) and the
#: argument-free ``jax.checkpoint_policies`` by name
REMAT_POLICIES = ("none", "full", "nothing_saveable", "dots_saveable",
                  "dots_with_no_batch_dims_saveable", "everything_saveable")


def remat_policy_name(remat: bool | str) -> str:
    """Canonical name of a ``remat`` setting: ``False`` -> ``'none'``, ``True`` -> ``'full'``;
    raises ``ValueError`` for an unknown name."""
    if isinstance(remat, bool):
        return "full" if remat else "none"
    name = str(remat)
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; use one of {', '.join(REMAT_POLICIES)}")
    return name


def remat_policy(remat: bool | str):
    """``(enabled, policy)`` for ``jax.checkpoint`` / ``nn.remat`` (policy ``None`` = save
    nothing but the inputs)."""
    name = remat_policy_name(remat)
    if name == "none":
        return False, None
    if name in ("full", "nothing_saveable"):
        return True, None
    return True, getattr(jax.checkpoint_policies, name)


def resolve_attention(impl: str, dtype: Dtype = jnp.float32, backend: str | None = None) -> str:
    """The kernel an ``attention_impl`` setting runs on ``backend`` (default: jax's default
    backend) with matmuls in ``dtype``: ``'auto'`` becomes ``'cudnn'`` on GPUs in bf16/fp16
    (fused flash attention), ``'xla'`` on TPUs (``jax.nn.dot_product_attention``; jax has no
    fused TPU kernel behind it) and ``'chunked'`` otherwise (CPU, or float32 on GPU); other
    values are returned unchanged. Raises ``ValueError`` for an unknown value."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"unknown attention_impl {impl!r}; use one of {', '.join(ATTENTION_IMPLS)}")
    if impl != "auto":
        return impl
    backend = (backend or jax.default_backend()).lower()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend in ("gpu", "cuda", "rocm") and half:
        return "cudnn"
    if backend == "tpu":
        return "xla"
    return "chunked"


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


def token_matmul(x: jax.Array, kernel: jax.Array, n_in: int = 1) -> jax.Array:
    """Weights applied to every token: ``x [..., *I] @ kernel [*I, *O] -> [..., *O]``, where
    ``I`` are the last ``n_in`` axes of ``x``; the leading token axes are flattened into one
    first, so this is one matmul ``[T, prod(I)] @ [prod(I), prod(O)]`` (as ``jnp.einsum``).

    Why not the einsum over ``[B, L, ...]``: its weight gradient contracts two token axes, and
    XLA:CPU then materialises a transposed copy of every saved activation (and the incoming
    gradient) before each weight-gradient matmul; with the token axes flattened the matmul reads
    them as they are. On the TarFlow benchmark configs this made the gradient faster
    (``benchmarks/README.md``). Values are those of the einsum (same contraction)."""
    lead = x.shape[: x.ndim - n_in]
    flat = x.reshape((-1, *x.shape[x.ndim - n_in:]))
    axes = tuple(range(1, n_in + 1))
    y = lax.dot_general(flat, kernel, ((axes, tuple(range(n_in))), ((), ())))
    return y.reshape((*lead, *kernel.shape[n_in:]))


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis, statistics in float32; returns float32 ``x.shape``."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * scale + bias


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: jax.Array | float,
    kv_heads_first: bool = False,
) -> jax.Array:
    """Masked softmax attention. ``q: [B, L, H, Dh]``, ``k, v: [B, M, H, Dh]`` (or
    ``[B, H, M, Dh]`` with ``kv_heads_first``, the KV cache's layout), ``mask: [L, M]`` (True =
    attend) or broadcastable to ``[B, H, L, M]``; ``scale``: scalar or ``[B, 1, 1, 1]``. Logits
    and softmax in float32; returns ``[B, L, H, Dh]`` in ``v.dtype``.
    """
    kv = "bhmd" if kv_heads_first else "bmhd"
    logits = jnp.einsum(f"blhd,{kv}->bhlm", q, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum(f"bhlm,{kv}->blhd", weights, v)


def chunked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: jax.Array | float,
    chunk: int = 128, kv_heads_first: bool = False,
) -> jax.Array:
    """:func:`attention` computed ``chunk`` queries at a time, with bounded memory.

    Same arguments and result as :func:`attention` (``mask`` must be ``[L, M]``). The queries
    (and mask rows) are split into chunks mapped over with ``lax.map``; each chunk is a
    ``jax.checkpoint``, so the backward pass recomputes its ``[B, H, chunk, M]`` probabilities
    instead of storing all ``L / chunk`` of them. Each query row sees all ``M`` keys and the
    same float32 softmax as :func:`attention`, so the results agree up to float reassociation.
    ``L`` not a multiple of ``chunk`` is padded (padded rows are dropped).
    """
    b, length, h, dh = q.shape
    if mask.ndim != 2:
        raise ValueError(f"chunked_attention needs an [L, M] mask, got shape {mask.shape}")
    if length <= chunk:
        return attention(q, k, v, mask, scale, kv_heads_first)
    n = -(-length // chunk)
    pad = n * chunk - length
    if pad:
        q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, pad), (0, 0)), constant_values=True)
    qs = jnp.moveaxis(q.reshape(b, n, chunk, h, dh), 1, 0)  # [n, B, chunk, H, Dh]
    ms = mask.reshape(n, chunk, mask.shape[-1])

    @jax.checkpoint
    def one(args):
        qi, mi = args
        return attention(qi, k, v, mi, scale, kv_heads_first)

    o = lax.map(one, (qs, ms))  # [n, B, chunk, H, Dh]
    o = jnp.moveaxis(o, 0, 1).reshape(b, n * chunk, h, dh)
    return o[:, :length]


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
      attention_impl: one of :data:`ATTENTION_IMPLS`: ``'einsum'`` (this module's masked
        softmax), ``'chunked'`` (the same, ``attention_chunk`` queries at a time, memory-bounded),
        a ``jax.nn.dot_product_attention`` implementation for the full causal pass (``'xla'``,
        ``'cudnn'``: flash attention on NVIDIA GPUs, bf16/fp16), or ``'auto'``
        (:func:`resolve_attention`). Cached decoding uses ``'chunked'`` when that is the resolved
        kernel and the chunk has more than ``attention_chunk`` tokens, else ``'einsum'``. The
        softmax is float32 in every case.
      attention_chunk: queries per chunk of ``'chunked'`` attention.
    """

    width: int
    head_dim: int = 64
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-5
    attention_impl: str = "einsum"
    attention_chunk: int = 128

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        attn_temp: float | jax.Array = 1.0,
        cache: Cache | None = None,
        start: jax.Array | int | None = None,
        rope: Rope | None = None,
    ) -> tuple[jax.Array, LayerCache | None]:
        """Applies the layer. See the module docstring for the two modes.

        Args:
          x: ``[B, L, C]`` tokens (any float dtype; the residual is float32).
          attn_temp: attention temperature, scalar or ``[B]``; logits are divided by it.
          cache: ``None`` (full causal) or ``(k, v)`` each ``[B, H, N_max, Dh]``.
          start: position of ``x[:, 0]`` in the cache (cached mode only), int or traced scalar.
          rope: ``None`` or ``(cos, sin)`` each ``[L, Dh]``: rotary angles of ``x``'s tokens.
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
        qkv = token_matmul(y, qkv_k.astype(dt)) + qkv_b.astype(dt)  # [B, L, 3, H, Dh]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, H, Dh]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        scale = _temp_scale(dh, attn_temp, b)
        impl = resolve_attention(self.attention_impl, dt)
        if cache is None and impl in ("xla", "cudnn"):
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
            kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, H, L, Dh]
            idx = (zero, zero, start, zero)
            ck = lax.dynamic_update_slice(ck, kh.astype(ck.dtype), idx)
            cv = lax.dynamic_update_slice(cv, vh.astype(cv.dtype), idx)
            new_cache = (ck, cv)
            qpos = start + jnp.arange(length)
            mask = jnp.arange(ck.shape[2])[None, :] <= qpos[:, None]  # [L, N_max]
            k, v = ck.astype(dt), cv.astype(dt)
        if mask is not None and impl == "chunked":
            o = chunked_attention(q, k, v, mask, scale, self.attention_chunk, cache is not None)
        elif mask is not None:
            o = attention(q, k, v, mask, scale, cache is not None)
        o = token_matmul(o, proj_k.astype(dt), n_in=2) + proj_b.astype(dt)
        x = x + o.astype(jnp.float32)

        # --- MLP
        y = layer_norm(x, ln2_s, ln2_b, self.ln_eps).astype(dt)
        y = token_matmul(y, fc1_k.astype(dt)) + fc1_b.astype(dt)
        y = gelu_erf(y)
        y = token_matmul(y, fc2_k.astype(dt)) + fc2_b.astype(dt)
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
    attention_chunk: int

    @nn.compact
    def __call__(self, x, cache, attn_temp, start, rope):
        return TransformerLayer(
            self.width, self.head_dim, self.mlp_ratio, self.dtype, self.ln_eps,
            self.attention_impl, self.attention_chunk, name="layer"
        )(x, attn_temp, cache, start, rope)


class Transformer(nn.Module):
    """``num_layers`` identical :class:`TransformerLayer` s under ``nn.scan``.

    Params of every layer are stacked along a leading axis of size ``num_layers`` with logical
    name ``'layers'``. ``remat`` rematerialises the scanned layer body in the backward pass: a
    name from :data:`REMAT_POLICIES` (``'none'``, ``'full'``, or a ``jax.checkpoint_policies``
    policy), or a bool (``True`` = ``'full'``). ``attention_impl`` and ``attention_chunk`` as in
    :class:`TransformerLayer`. ``unroll_layers``: unroll the layer loop (see the module
    docstring).
    """

    width: int
    num_layers: int
    head_dim: int = 64
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-5
    remat: bool | str = False
    attention_impl: str = "einsum"
    attention_chunk: int = 128
    unroll_layers: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        attn_temp: float | jax.Array = 1.0,
        cache: Cache | None = None,
        start: jax.Array | int | None = None,
        rope: Rope | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """``x: [B, L, C]`` -> ``([B, L, C] float32, cache)``; cache: ``K`` pairs ``(k, v)``,
        each ``[B, H, N_max, Dh]`` (:func:`init_cache`), or ``None`` for the full causal pass;
        ``rope``: ``None`` or
        ``(cos, sin)`` each ``[L, Dh]``, shared by every layer."""
        if cache is not None:
            _check_cache(cache, self.num_layers)
            if start is None:
                raise ValueError("cached attention needs the start position")
            if self.unroll_layers and not self.is_initializing():
                return self._cached_unrolled(x, attn_temp, cache, start, rope)
        body = _ScanLayer
        enabled, policy = remat_policy(self.remat)
        if enabled:
            body = nn.remat(body, prevent_cse=False, policy=policy)
        scanned = nn.scan(
            body,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.num_layers,
            # rematerialisation asks for memory: a rolled loop lets XLA reuse one layer's
            # buffers (unrolled, ImageNet-64 2-768-8-8 with full remat on 8 devices grew from
            # 20 GB to 156 GB per device in `jaxflows info`)
            unroll=self.num_layers if self.unroll_layers and not enabled else 1,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        stacked = None
        if cache is not None:  # the scan takes the per-layer caches as one stacked pair
            stacked = tuple(jnp.stack([c[j] for c in cache]) for j in (0, 1))
        x, stacked = scanned(
            self.width, self.head_dim, self.mlp_ratio, self.dtype, self.ln_eps,
            self.attention_impl, self.attention_chunk, name="layers"
        )(x, stacked, jnp.asarray(attn_temp, jnp.float32),
          jnp.asarray(0 if start is None else start, jnp.int32), rope)
        if cache is None:
            return x, None
        return x, tuple((stacked[0][i], stacked[1][i]) for i in range(self.num_layers))

    def _cached_unrolled(self, x, attn_temp, cache, start, rope):
        """The cached pass as a Python loop over the layers: layer ``i`` applies its params
        (slices of the stacked ones, or the per-layer arrays of :func:`unstack_layer_params`,
        which sampling loops use so that no slice is taken per token) and updates its own
        cache entry in place."""
        stacked = nn.unbox(self.variables["params"]["layers"]["layer"])
        layer = TransformerLayer(self.width, self.head_dim, self.mlp_ratio, self.dtype,
                                 self.ln_eps, self.attention_impl, self.attention_chunk,
                                 parent=None)
        temp = jnp.asarray(attn_temp, jnp.float32)
        start = jnp.asarray(start, jnp.int32)
        new_cache = []
        for i in range(self.num_layers):
            p = jax.tree.map(lambda a, i=i: a[i], stacked, is_leaf=_is_unstacked)
            x, c = layer.apply({"params": p}, x, temp, cache[i], start, rope)
            new_cache.append(c)
        return x, tuple(new_cache)

    def init_cache(self, batch: int, max_len: int, dtype: Dtype | None = None) -> Cache:
        """Zero cache: one ``(k, v)`` per layer, each ``[batch, heads, max_len, head_dim]``."""
        return init_cache(self.num_layers, batch, max_len, self.width // self.head_dim,
                          self.head_dim, dtype or self.dtype)


def init_cache(
    num_layers: int, batch: int, max_len: int, heads: int, head_dim: int, dtype: Dtype
) -> Cache:
    """Zero KV cache: a tuple of ``num_layers`` pairs ``(k, v)``, each ``[batch, heads,
    max_len, head_dim]`` (heads-major, so attention reads it without a transpose; one buffer
    per layer, so each layer's update is in place)."""
    shape = (batch, heads, max_len, head_dim)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(num_layers))


def _check_cache(cache, num_layers: int) -> None:
    pairs = isinstance(cache, (tuple, list)) and all(
        isinstance(c, (tuple, list)) and len(c) == 2 for c in cache)
    if not pairs or len(cache) != num_layers:
        got = (f"{len(cache)} entries" if isinstance(cache, (tuple, list))
               else type(cache).__name__)
        raise ValueError(f"the KV cache must be {num_layers} (k, v) pairs (init_cache), got "
                         f"{got}")


def _is_unstacked(a) -> bool:
    return isinstance(a, (tuple, list))


def unstack_layer_params(params):
    """``params`` with every stacked Transformer layer array (the ``layers/layer`` subtrees of
    :class:`Transformer`, leading axis ``K``) replaced by a tuple of its ``K`` per-layer slices.

    The result is accepted by the cached pass of an ``unroll_layers`` Transformer (the
    default): a sampling loop that takes it hoists the slicing of the weights out of its
    per-token body (XLA on CPU otherwise copies every weight matrix at every token). The full
    causal pass and ``init`` need the stacked params."""
    if hasattr(params, "items"):
        out = {}
        for k, v in params.items():
            if k == "layers" and hasattr(v, "items") and set(v.keys()) == {"layer"}:
                out[k] = {"layer": jax.tree.map(
                    lambda a: tuple(a[i] for i in range(a.shape[0])), nn.unbox(v["layer"]))}
            else:
                out[k] = unstack_layer_params(v)
        return out
    return params
