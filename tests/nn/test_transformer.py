"""Causal Transformer: full pass vs KV-cache decoding, causality, temperature, dtypes, names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.nn.patches import official_to_ours, ours_to_official, patchify, unpatchify
from jaxflows.nn.transformer import Transformer, TransformerLayer

B, N, C = 2, 6, 32


@pytest.fixture(scope="module")
def setup():
    m = Transformer(width=C, num_layers=2, head_dim=16)
    x = jax.random.normal(jax.random.key(0), (B, N, C))
    v = jax.jit(m.init)(jax.random.key(1), x)
    return m, x, v


def test_cached_decoding_equals_full_pass(setup):
    m, x, v = setup
    full, cache = jax.jit(m.apply)(v, x)
    assert cache is None
    cache = m.init_cache(B, N)
    outs = []
    step = jax.jit(lambda v, xi, c, i: m.apply(v, xi, 1.0, c, i))
    for i in range(N):
        yi, cache = step(v, x[:, i:i + 1], cache, i)
        outs.append(yi)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
    # chunks (Jacobi-style), including rewriting a chunk: later positions are masked
    cache = m.init_cache(B, N)
    y1, cache = step(v, x[:, :4], cache, 0)
    _, cache = step(v, 5.0 * x[:, 4:], cache, 4)  # wrong guess, then rewritten
    y2, cache = step(v, x[:, 4:], cache, 4)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), full, atol=1e-5)


def test_causal(setup):
    m, x, v = setup
    y, _ = m.apply(v, x)
    x2 = x.at[:, 3:].set(7.0)
    y2, _ = m.apply(v, x2)
    np.testing.assert_allclose(y[:, :3], y2[:, :3], atol=1e-6)
    assert not np.allclose(y[:, 3:], y2[:, 3:])


def test_attention_temperature_per_example(setup):
    m, x, v = setup
    ya, _ = m.apply(v, x, 0.5)
    yb, _ = m.apply(v, x, 2.0)
    yab, _ = m.apply(v, x, jnp.array([0.5, 2.0]))
    np.testing.assert_allclose(yab[0], ya[0], atol=1e-6)
    np.testing.assert_allclose(yab[1], yb[1], atol=1e-6)
    assert not np.allclose(ya, yb)


def test_logical_names_and_param_dtype(setup):
    _, _, v = setup
    boxes = jax.tree.leaves(v, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
    assert all(isinstance(b, nn.LogicallyPartitioned) for b in boxes)
    for b in boxes:
        assert b.names[0] == "layers" and b.value.shape[0] == 2
        assert b.value.dtype == jnp.float32
    names = {n for b in boxes for n in b.names}
    assert {"embed", "heads", "kv", "mlp"} <= names


def test_bfloat16_matmuls_close_to_float32(setup):
    m, x, v = setup
    y32, _ = m.apply(v, x)
    m16 = Transformer(width=C, num_layers=2, head_dim=16, dtype=jnp.bfloat16)
    y16, _ = m16.apply(v, x)
    assert y16.dtype == jnp.float32
    np.testing.assert_allclose(y16, y32, atol=0.1)


def test_remat_same_values(setup):
    m, x, v = setup
    mr = Transformer(width=C, num_layers=2, head_dim=16, remat=True)
    loss = lambda mod: lambda p: jnp.sum(mod.apply(p, x)[0] ** 2)
    val, grads = jax.jit(jax.value_and_grad(loss(mr)))(v)
    np.testing.assert_allclose(val, loss(m)(v), rtol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_bad_width():
    with pytest.raises(ValueError, match="multiple of head_dim"):
        TransformerLayer(width=30, head_dim=16).init(jax.random.key(0), jnp.zeros((1, 2, 30)))


def test_patchify_roundtrip_and_official_order():
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3))
    t = patchify(x, 2)
    assert t.shape == (2, 6, 12)
    np.testing.assert_array_equal(unpatchify(t, 2, (6, 4, 3)), x)
    # our (ph, pw, c) order vs the official channel-major (c, ph, pw) unfold order
    xn = np.asarray(x)
    official = np.stack([
        np.stack([xn[:, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2, :].transpose(0, 3, 1, 2)
                  .reshape(2, -1) for j in range(2)], 1) for i in range(3)], 1).reshape(2, 6, 12)
    np.testing.assert_array_equal(official[..., official_to_ours(2, 3)], t)
    np.testing.assert_array_equal(np.asarray(t)[..., ours_to_official(2, 3)], official)


def test_patch_size_must_divide():
    with pytest.raises(ValueError, match="7x8.*patch size 2"):
        patchify(jnp.zeros((1, 7, 8, 1)), 2)


def test_dot_product_attention_impl_matches(setup):
    _, x, v = setup
    m = Transformer(width=C, num_layers=2, head_dim=16, attention_impl="xla")
    ref = Transformer(width=C, num_layers=2, head_dim=16)
    temps = jnp.array([0.7, 1.3])
    a, _ = jax.jit(m.apply)(v, x, temps)
    b, _ = jax.jit(ref.apply)(v, x, temps)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_gelu_erf_values_and_derivatives():
    from jaxflows.nn.activations import gelu_erf

    x = jnp.linspace(-6.0, 6.0, 101)
    np.testing.assert_allclose(gelu_erf(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
    ref = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu_erf))(x), ref, atol=1e-6)
    # forward mode (jax.jacfwd, used by the log-det tests) works and agrees
    np.testing.assert_allclose(jnp.diag(jax.jacfwd(gelu_erf)(x)), ref, atol=1e-6)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_rolled_and_unrolled_layers_agree(setup, remat):
    """unroll_layers only changes the program: same params, outputs, gradients and caches."""
    from jaxflows.nn.transformer import unstack_layer_params

    _, x, v = setup
    a = Transformer(width=C, num_layers=2, head_dim=16, remat=remat, unroll_layers=True)
    b = Transformer(width=C, num_layers=2, head_dim=16, remat=remat, unroll_layers=False)
    np.testing.assert_allclose(a.apply(v, x)[0], b.apply(v, x)[0], atol=1e-6)
    ga = jax.grad(lambda v: jnp.sum(a.apply(v, x)[0] ** 2))(v)
    gb = jax.grad(lambda v: jnp.sum(b.apply(v, x)[0] ** 2))(v)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6), ga, gb)
    ya, ca = a.apply(v, x[:, :5], 1.0, a.init_cache(B, N), 0)
    yb, cb = b.apply(v, x[:, :5], 1.0, b.init_cache(B, N), 0)
    np.testing.assert_allclose(ya, yb, atol=1e-6)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, atol=1e-6), ca, cb)
    # per-layer params (hoisted out of a sampling loop) give the same cached step
    vu = {"params": unstack_layer_params(v["params"])}
    assert isinstance(vu["params"]["layers"]["layer"]["qkv_kernel"], tuple)
    yu, cu = a.apply(vu, x[:, :5], 1.0, a.init_cache(B, N), 0)
    np.testing.assert_allclose(yu, ya, atol=0)


def test_cache_layout_and_bad_cache(setup):
    m, x, v = setup
    cache = m.init_cache(B, N)
    assert len(cache) == 2 and cache[0][0].shape == (B, C // 16, N, 16)
    with pytest.raises(ValueError, match="KV cache must be 2"):
        m.apply(v, x[:, :1], 1.0, cache[:1], 0)
    with pytest.raises(ValueError, match="needs the start position"):
        m.apply(v, x[:, :1], 1.0, cache)


def test_remat_keeps_the_full_pass_rolled(setup):
    """Under remat the full pass stays one rolled scan (XLA reuses a layer's buffers per
    iteration; unrolled, the paper-scale memory estimate grows ~8x); without remat the
    default unrolls it."""
    _, x, v = setup

    def scans(m):
        jaxpr = jax.make_jaxpr(lambda v: m.apply(v, x)[0])(v)
        return [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]

    rolled = scans(Transformer(width=C, num_layers=2, head_dim=16, remat="full"))
    assert len(rolled) == 1 and rolled[0].params["unroll"] == 1
    unrolled = scans(Transformer(width=C, num_layers=2, head_dim=16))
    assert all(e.params["unroll"] >= 2 for e in unrolled)


def test_token_matmul_is_the_einsum_and_keeps_its_gradients():
    """One flattened matmul over the token axes: the values and both gradients of the einsum
    it replaces, for one and for two contracted axes (the attention output projection)."""
    from jaxflows.nn.transformer import token_matmul

    x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
    w1 = jax.random.normal(jax.random.key(1), (4, 2, 6))
    w2 = jax.random.normal(jax.random.key(2), (3, 4, 7))
    cases = [(w1, 1, "blhd,dtc->blhtc"), (w2, 2, "blhd,hdc->blc")]
    for w, n_in, spec in cases:
        got = token_matmul(x, w, n_in=n_in)
        want = jnp.einsum(spec, x, w)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        g_got = jax.grad(lambda a, b, n=n_in: jnp.sum(jnp.sin(token_matmul(a, b, n_in=n))), (0, 1))
        g_want = jax.grad(lambda a, b, e=spec: jnp.sum(jnp.sin(jnp.einsum(e, a, b))), (0, 1))
        for a, b in zip(g_got(x, w), g_want(x, w)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
