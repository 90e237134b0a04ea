"""Chunked attention equals the einsum attention (values and gradients), in the full causal pass,
with a KV cache, and inside the Transformer; ``auto`` resolves per backend; remat names.
(Remat on/off equality of loss and gradients: ``tests/models/test_tarflow_memory.py``.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.nn.transformer import (
    REMAT_POLICIES,
    Transformer,
    attention,
    chunked_attention,
    remat_policy,
    remat_policy_name,
    resolve_attention,
)

B, L, H, DH = 2, 12, 2, 8


def _qkv(key, length=L, m=L, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(key, 3)
    q = jax.random.normal(kq, (B, length, H, DH), dtype)
    k = jax.random.normal(kk, (B, m, H, DH), dtype)
    v = jax.random.normal(kv, (B, m, H, DH), dtype)
    return q, k, v


def test_chunked_equals_einsum_causal_values_and_grads():
    q, k, v = _qkv(jax.random.key(0))
    mask = jnp.tril(jnp.ones((L, L), bool))
    scale = jnp.array([0.3, 0.5])[:, None, None, None]  # per-example temperature

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, mask, scale)))

    ref = jax.jit(jax.value_and_grad(loss(attention), argnums=(0, 1, 2)))(q, k, v)
    for chunk in (4, 5):  # divides L; pads L
        got = jax.jit(jax.value_and_grad(
            loss(lambda *a, c=chunk: chunked_attention(*a, chunk=c)), argnums=(0, 1, 2)))(q, k, v)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
        for g, r in zip(got[1], ref[1]):
            np.testing.assert_allclose(g, r, atol=1e-5)


def test_chunked_equals_einsum_with_kv_cache_mask():
    """A chunk of queries at positions start..start+L-1 against an N_max cache (Jacobi decode)."""
    n_max, start, length = 20, 6, 9
    q, k, v = _qkv(jax.random.key(1), length, n_max)
    qpos = start + jnp.arange(length)
    mask = jnp.arange(n_max)[None, :] <= qpos[:, None]
    ref = jax.jit(attention)(q, k, v, mask, 0.35)
    got = jax.jit(lambda q, k, v: chunked_attention(q, k, v, mask, 0.35, chunk=4))(q, k, v)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_chunked_memory_is_bounded():
    """The compiled backward pass never holds the whole [B, H, L, L] probability tensor."""
    length, chunk = 512, 64
    q, k, v = _qkv(jax.random.key(2), length, length)
    mask = jnp.tril(jnp.ones((length, length), bool))

    def temp_bytes(fn):
        g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask, 0.3)), argnums=(0, 1, 2)))
        return g.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    full = B * H * length * length * 4
    assert temp_bytes(attention) >= full
    assert temp_bytes(lambda *a: chunked_attention(*a, chunk=chunk)) < full / 2


def test_transformer_chunked_matches_einsum_and_cache():
    c = 32
    x = jax.random.normal(jax.random.key(3), (B, L, c))
    ref = Transformer(width=c, num_layers=2, head_dim=16)
    m = Transformer(width=c, num_layers=2, head_dim=16, attention_impl="chunked",
                    attention_chunk=4)
    v = jax.jit(ref.init)(jax.random.key(4), x)
    temps = jnp.array([0.7, 1.3])
    full, _ = jax.jit(ref.apply)(v, x, temps)
    got, _ = jax.jit(m.apply)(v, x, temps)
    np.testing.assert_allclose(got, full, atol=1e-5)
    # cached mode: the whole sequence as one chunk of 12 tokens (> attention_chunk) at start 0
    cache = m.init_cache(B, L)
    y, _ = jax.jit(lambda v, x, cache: m.apply(v, x, temps, cache, 0))(v, x, cache)
    np.testing.assert_allclose(y, full, atol=1e-5)


def test_resolve_attention():
    assert resolve_attention("auto", jnp.bfloat16, "gpu") == "cudnn"
    assert resolve_attention("auto", jnp.float32, "gpu") == "chunked"
    assert resolve_attention("auto", jnp.bfloat16, "tpu") == "xla"
    assert resolve_attention("auto", jnp.bfloat16, "cpu") == "chunked"
    assert resolve_attention("einsum", jnp.bfloat16, "gpu") == "einsum"
    with pytest.raises(ValueError, match="unknown attention_impl"):
        resolve_attention("flash")


def test_remat_policy_names():
    assert remat_policy_name(False) == "none" and remat_policy_name(True) == "full"
    assert remat_policy("none") == (False, None) and remat_policy("full") == (True, None)
    for name in REMAT_POLICIES[2:]:
        enabled, policy = remat_policy(name)
        assert enabled and (policy is None or callable(policy))
    with pytest.raises(ValueError, match="unknown remat policy"):
        remat_policy_name("sometimes")
