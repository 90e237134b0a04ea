"""STARFlow: log-dets against jacfwd, the causal structure of each block, a NumPy float64
transcription of the official forward (apple/ml-starflow) and of its guided sampler as ground
truth, the loss, parameter counts and bad options. Tiny models (a 2x4 grid of 2-channel latents:
N=8, D=2; or the notes' small official model on 8x8x4 latents)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jaxflows.convert.starflow import official_to_params
from jaxflows.errors import ConfigError
from jaxflows.models import starflow_sampling as ss
from jaxflows.models.starflow import StarFlowModel, count_params, init_shapes, loss_terms
from jaxflows.models.tarflow import MetaBlock

GRID = (2, 4, 2)
N, D = 8, 2


def tiny(**kw):
    """A 3-block STARFlow (deep block last, 2 layers) on 2x4x2 latents, 3 classes."""
    args = dict(input_shape=GRID, width=64, layers_per_block=(1, 1, 2), head_dim=32,
                num_classes=3)
    args.update(kw)
    return StarFlowModel(**args)


def random_params(model, seed=0, scale=0.05):
    """Random weights of the right shapes (LayerNorm scales near 1, everything else small, the
    zero-initialised proj_out and final-norm weights included)."""
    rs = np.random.default_rng(seed)

    def draw(path, a):
        key = jax.tree_util.keystr(path)
        base = 1.0 if key.endswith("norm_scale']") and "final" not in key else 0.0
        s = 0.5 if "sos_embed" in key else scale
        return jnp.asarray(base + s * rs.standard_normal(a.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, init_shapes(model))


@functools.cache
def _tiny_setup():
    m = tiny()
    p = random_params(m)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, *GRID)), jnp.float32)
    return m, p, x, jnp.array([0, 2, 3])


def _block_fn(m, p, t, cond):
    prefix = m.apply({"params": p}, cond, method="cond_prefix")
    pre = prefix if m.block_prefix_len(t) else None

    def f(v):
        z, ld = m.apply({"params": p}, v.reshape(1, N, D), None, pre,
                        method=lambda mm, *a: mm.blocks[t].forward_elementwise(*a))
        return z.reshape(-1), ld

    return f


def test_block_logdets_and_causal_structure():
    m, p, x, y = _tiny_setup()
    tokens = x[:1].reshape(1, N, D)[0]
    for t in range(m.num_blocks):
        f = _block_fn(m, p, t, y[:1])
        jac = np.asarray(jax.jit(jax.jacfwd(lambda v, f=f: f(v)[0]))(tokens.reshape(-1)))
        _, ld = jax.jit(f)(tokens.reshape(-1))
        sign, slogdet = np.linalg.slogdet(jac)
        assert sign > 0
        np.testing.assert_allclose(np.sum(ld), slogdet, rtol=1e-5, atol=1e-5)
        # in the block's order, token i depends on tokens <= i, on itself elementwise
        order = np.arange(N)[::-1] if m.block_flip(t) else np.arange(N)
        j4 = jac.reshape(N, D, N, D)[order][:, :, order].transpose(0, 2, 1, 3)  # [i, j, d, e]
        later = np.triu(np.ones((N, N), bool), 1)
        assert np.all(j4[later] == 0.0), f"block {t} looks ahead"
        assert np.abs(j4[np.tril(np.ones((N, N), bool), -1)]).max() > 1e-4  # and uses the past
        for i in range(N):
            blk = j4[i, i]
            np.testing.assert_array_equal(blk - np.diag(np.diag(blk)), 0.0)
            # SOS shift: token 0 is transformed too (scale != 1)
            np.testing.assert_allclose(np.diag(blk), np.exp(np.asarray(ld)[0][order][i]),
                                       rtol=1e-5)
        assert np.abs(np.diag(j4[0, 0]) - 1).max() > 1e-3


def test_flow_logdet_equals_slogdet_and_loss():
    m, p, x, y = _tiny_setup()

    def f(v):
        z, lds, _ = m.apply({"params": p}, v.reshape(1, *GRID), y[1:2])
        return z.reshape(-1), lds

    jac = jax.jit(jax.jacfwd(lambda v, f=f: f(v)[0]))(x[1].reshape(-1))
    sign, slogdet = np.linalg.slogdet(np.asarray(jac))
    assert sign > 0
    _, lds = jax.jit(f)(x[1].reshape(-1))
    np.testing.assert_allclose(sum(np.sum(ld) for ld in lds), slogdet, rtol=1e-5, atol=1e-5)

    z, lds, outs = jax.jit(lambda p, x, y: m.apply({"params": p}, x, y))(p, x, y)
    assert z.shape == x.shape and len(lds) == 3 and len(outs) == 4
    np.testing.assert_allclose(outs[0], x.reshape(3, N, D))
    np.testing.assert_allclose(outs[-1], z.reshape(3, N, D))
    terms = loss_terms(z, lds, outs)
    per_ex = 0.5 * np.mean(np.square(z), axis=(1, 2, 3)) - sum(
        np.mean(ld, axis=(1, 2)) for ld in lds)
    reg = sum(np.mean(np.square(o)) for o in outs[:-1])
    np.testing.assert_allclose(terms["nll"], per_ex.mean(), rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], per_ex.mean() + 1e-4 * reg, rtol=1e-6)


def test_output_shift_variant_is_tarflow_like():
    """The same core with TarFlow's options: token 0 of each block's order is the identity."""
    m = tiny(shift="output", scale="exp", positions="learned", soft_clip=0.0, final_norm=False)
    p = random_params(m)
    tokens = jnp.asarray(np.random.default_rng(2).standard_normal((N * D,)), jnp.float32)
    assert "sos_embed" not in p["blocks_0"] and "pos_embed" in p["blocks_0"]
    for t in range(m.num_blocks):
        f = _block_fn(m, p, t, jnp.array([1]))
        jac = np.asarray(jax.jit(jax.jacfwd(lambda v, f=f: f(v)[0]))(tokens)).reshape(N, D, N, D)
        first = N - 1 if m.block_flip(t) else 0
        np.testing.assert_allclose(jac[first, :, first, :], np.eye(D), atol=1e-6)
        _, ld = jax.jit(f)(tokens)
        np.testing.assert_allclose(np.sum(ld), np.linalg.slogdet(jac.reshape(N * D, -1))[1],
                                   rtol=1e-5, atol=1e-5)


def test_permutations_follow_official_rule():
    # L2R: shallow block i flips when i is even; the deep block flips when num_blocks is odd
    m6 = tiny(layers_per_block=(1,) * 6)
    assert [m6.block_flip(t) for t in range(6)] == [True, False, True, False, True, False]
    assert [tiny().block_flip(t) for t in range(3)] == [True, False, True]
    r2l = tiny(seq_order="R2L")
    assert [r2l.block_flip(t) for t in range(3)] == [False, True, False]
    assert [tiny().block_prefix_len(t) for t in range(3)] == [0, 0, 1]


# ------------------------------------------------------------------------------------------
# Ground truth: the official forward transcribed to NumPy (float64)

OFF = dict(channels=64, num_blocks=3, layers=(2, 2, 4), head_dim=32, in_channels=4, img=8,
           txt_size=1, txt_dim=11)
INV_SOFTPLUS_1 = 0.541324854612918


def official_state_dict(rng):
    """Random tensors with apple/ml-starflow's key names and shapes ([out, in] weights)."""
    c, cin, tdim = OFF["channels"], OFF["in_channels"], OFF["txt_dim"]
    r = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    sd = {}
    for t, layers in enumerate(OFF["layers"]):
        b = f"blocks.{t}."
        sd[b + "sos_embed"] = rng.standard_normal((1, 1, cin)).astype(np.float32)
        sd[b + "proj_in.weight"], sd[b + "proj_in.bias"] = r(c, cin), r(c)
        sd[b + "proj_out.weight"], sd[b + "proj_out.bias"] = r(2 * cin, c), r(2 * cin)
        sd[b + "final_norm.weight"] = r(c)
        for k in range(layers):
            a = f"{b}attn_blocks.{k}."
            sd[a + "attention.norm.weight"], sd[a + "attention.norm.bias"] = 1 + r(c), r(c)
            sd[a + "attention.qkv.weight"], sd[a + "attention.qkv.bias"] = r(3 * c, c), r(3 * c)
            sd[a + "attention.proj.weight"], sd[a + "attention.proj.bias"] = r(c, c), r(c)
            sd[a + "mlp.norm.weight"], sd[a + "mlp.norm.bias"] = 1 + r(c), r(c)
            sd[a + "mlp.main.0.weight"], sd[a + "mlp.main.0.bias"] = r(4 * c, c), r(4 * c)
            sd[a + "mlp.main.2.weight"], sd[a + "mlp.main.2.bias"] = r(c, 4 * c), r(c)
        if t == len(OFF["layers"]) - 1:
            sd[b + "proj_txt.weight"], sd[b + "proj_txt.bias"] = r(c, tdim), r(c)
    return sd


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _official_freqs(txt_len):
    """misc/pe.py: VisionRotaryEmbeddingFast(dim=head_dim//2, pt_seq_len=8, latent_len=1) on
    get_positions(8, 8, txt_len, 8, mode='3d') -> [txt_len + 64, head_dim] angles."""
    dim = OFF["head_dim"] // 2
    dim, latent_dim = dim - 8, 8
    freqs = 1.0 / (10000 ** (np.arange(0, dim, 2)[: dim // 2] / dim))
    freqs2 = 1.0 / (10000 ** (np.arange(0, latent_dim) / latent_dim))
    hw = OFF["img"]
    px, py = np.meshgrid(np.arange(hw) / hw * hw, np.arange(hw) / hw * hw, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    pos = [px, py, np.zeros_like(px)]
    if txt_len:
        pt = np.arange(txt_len) / txt_len * hw
        pos = [np.concatenate([np.zeros_like(pt), pos[0]]),
               np.concatenate([np.zeros_like(pt), pos[1]]), np.concatenate([pt, pos[2]])]
    pos = np.stack(pos, -1)
    f = np.concatenate([pos[:, :1] * freqs, pos[:, 1:2] * freqs, pos[:, 2:] * freqs2], -1)
    return np.repeat(f, 2, axis=-1)


def _rotate_half(x):
    x = x.reshape(*x.shape[:-1], -1, 2)
    return np.stack([-x[..., 1], x[..., 0]], -1).reshape(*x.shape[:-2], -1)


def _official_block_net(sd, t, xin, y):
    """MetaBlock.forward's network on the permuted, SOS-shifted input ``xin [B, L, Cin]`` (and
    ``y [B, T, txt_dim]`` in the deep block) -> proj_out output after the soft clip."""
    g = lambda k: sd[f"blocks.{t}.{k}"].astype(np.float64)  # noqa: E731
    c, hd = OFF["channels"], OFF["head_dim"]
    heads = c // hd
    h = xin @ g("proj_in.weight").T + g("proj_in.bias")
    deep = t == OFF["num_blocks"] - 1
    txt = 0
    if deep:
        h = np.concatenate([y @ g("proj_txt.weight").T + g("proj_txt.bias"), h], axis=1)
        txt = y.shape[1]
    freqs = _official_freqs(txt if deep else 0)
    bsz, length, _ = h.shape
    cos, sin = np.cos(freqs[:length]), np.sin(freqs[:length])
    mask = np.tril(np.ones((length, length), bool))
    for k in range(OFF["layers"][t]):
        a = lambda n, k=k: g(f"attn_blocks.{k}.{n}")  # noqa: E731
        qkv = _ln(h, a("attention.norm.weight"), a("attention.norm.bias")) @ \
            a("attention.qkv.weight").T + a("attention.qkv.bias")
        q, kk, v = (qkv[..., i * c:(i + 1) * c].reshape(bsz, length, heads, hd)
                    .transpose(0, 2, 1, 3) for i in range(3))
        q, kk = q * cos + _rotate_half(q) * sin, kk * cos + _rotate_half(kk) * sin
        logits = np.where(mask, q @ kk.transpose(0, 1, 3, 2) / np.sqrt(hd), -np.inf)
        att = np.exp(logits - logits.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = (att @ v).transpose(0, 2, 1, 3).reshape(bsz, length, c)
        h = h + o @ a("attention.proj.weight").T + a("attention.proj.bias")
        m = _ln(h, a("mlp.norm.weight"), a("mlp.norm.bias")) @ a("mlp.main.0.weight").T + \
            a("mlp.main.0.bias")
        m = 0.5 * m * (1 + erf(m / np.sqrt(2)))
        h = h + m @ a("mlp.main.2.weight").T + a("mlp.main.2.bias")
    h = h[:, txt:]
    h = h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-6) * (1 + g("final_norm.weight"))
    out = h @ g("proj_out.weight").T + g("proj_out.bias")
    return 4.0 * np.tanh(out / 4.0)


def _softplus(v):
    return np.logaddexp(0.0, v)


def _official_flip(t):
    """L2R permutations: perms[(t+1) % 2] for shallow blocks, perms[num_blocks % 2] deep."""
    nb = OFF["num_blocks"]
    return bool(((nb if t == nb - 1 else t + 1)) % 2)


def official_forward(sd, x_nchw, y):
    """Model.forward: ``x_nchw [B, 4, 8, 8]``, ``y [B, 1, 11]`` -> ``(z [B, 4, 8, 8], outputs
    [B, 8, 8, 4] list, logdets [B, 64, 4] list in each block's permuted order)``."""
    bsz = x_nchw.shape[0]
    x = x_nchw.astype(np.float64).transpose(0, 2, 3, 1)  # patchify, p=1: (p1 p2 c) = c
    outputs, logdets = [x], []
    for t in range(OFF["num_blocks"]):
        seq = x.reshape(bsz, -1, OFF["in_channels"])
        flip = _official_flip(t)
        seq = seq[:, ::-1] if flip else seq
        xin = np.concatenate([np.broadcast_to(sd[f"blocks.{t}.sos_embed"], (bsz, 1, 4)),
                              seq[:, :-1]], axis=1)
        out = _official_block_net(sd, t, xin, y)
        xa, xb = out[..., :4], out[..., 4:]
        sigma = _softplus(xa + INV_SOFTPLUS_1)
        z = (seq - xb) / sigma
        logdets.append(-np.log(sigma))
        z = z[:, ::-1] if flip else z
        x = z.reshape(x.shape)
        outputs.append(x)
    return x.transpose(0, 3, 1, 2), outputs, logdets


def official_loss(z, outputs, logdets):
    """get_loss plus train.py's latent-norm penalty."""
    loss_z = 0.5 * (z**2).mean(axis=(1, 2, 3))
    loss_ld = -sum(ld.mean(axis=(1, 2)) for ld in logdets)
    return (loss_z + loss_ld).mean() + 1e-4 * sum((o**2).mean() for o in outputs[:-1])


def official_reverse_cfg(sd, z_nchw, y, y_null, w):
    """Model.reverse with guidance (sequential; the KV cache replaced by recomputation, which
    gives the same numbers): deep block on [z; z] with [y; y_null], the guided token written
    into both halves, then the shallow blocks unguided."""
    bsz = z_nchw.shape[0]
    x = z_nchw.astype(np.float64).transpose(0, 2, 3, 1).reshape(bsz, -1, 4)
    for t in reversed(range(OFF["num_blocks"])):
        deep = t == OFF["num_blocks"] - 1
        flip = _official_flip(t)
        zz = x[:, ::-1] if flip else x
        if deep:
            zz = np.concatenate([zz, zz])
            yy = np.concatenate([y, y_null])
        xx = zz.copy()
        for i in range(zz.shape[1]):
            xin = np.concatenate([np.broadcast_to(sd[f"blocks.{t}.sos_embed"],
                                                  (xx.shape[0], 1, 4)), xx[:, :-1]], axis=1)
            out = _official_block_net(sd, t, xin[:, : i + 1], yy if deep else None)[:, i]
            sa, mu = _softplus(out[:, :4] + INV_SOFTPLUS_1), out[:, 4:]
            if deep:
                sc, su = sa[:bsz], sa[bsz:]
                mc, mu_u = mu[:bsz], mu[bsz:]
                s = np.minimum(sc / su, 1.0) ** 2
                sa = np.concatenate([sc / np.sqrt(1 + w - w * s)] * 2)
                mu = np.concatenate([((1 + w) * mc - w * s * mu_u) / (1 + w - w * s)] * 2)
            xx[:, i] = zz[:, i] * sa + mu
        if deep:
            xx = xx[:bsz]
        x = xx[:, ::-1] if flip else xx
    return x.reshape(bsz, 8, 8, 4).transpose(0, 3, 1, 2)


def _official_model(**kw):
    return StarFlowModel(input_shape=(8, 8, 4), width=64, layers_per_block=(2, 2, 4),
                         head_dim=32, prefix_len=1, prefix_dim=11, **kw)


@functools.cache
def _official_setup():
    rng = np.random.default_rng(0)
    sd = official_state_dict(rng)
    x = rng.standard_normal((2, 4, 8, 8))
    y = rng.standard_normal((2, 1, 11))
    return sd, x, y


def test_forward_matches_official_transcription():
    sd, x, y = _official_setup()
    model = _official_model()
    params = official_to_params(sd, model)
    ref = init_shapes(model)
    assert jax.tree.structure(ref) == jax.tree.structure(params)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape, ref, params))

    z_ref, outs_ref, lds_ref = official_forward(sd, x, y)
    z, lds, outs = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))(
        params, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(np.asarray(z).transpose(0, 3, 1, 2), z_ref, atol=1e-5, rtol=1e-5)
    for t, (ld, ld_ref) in enumerate(zip(lds, lds_ref)):
        ours = np.asarray(ld)[:, ::-1] if _official_flip(t) else np.asarray(ld)  # permuted order
        np.testing.assert_allclose(ours, ld_ref, atol=1e-5)
    for o, o_ref in zip(outs, outs_ref):
        np.testing.assert_allclose(np.asarray(o), o_ref.reshape(2, 64, 4), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(loss_terms(z, lds, outs)["loss"], official_loss(
        z_ref, outs_ref, lds_ref), rtol=1e-5)

    # a class label is the one-hot row eye(K+1)[y]: the same model with num_classes = 10
    labels = np.array([3, 10])
    z_lab, _, _ = jax.jit(lambda p, x, y: StarFlowModel(
        input_shape=(8, 8, 4), width=64, layers_per_block=(2, 2, 4), head_dim=32,
        num_classes=10).apply({"params": p}, x, y))(
        params, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), jnp.asarray(labels))
    z_lab_ref, _, _ = official_forward(sd, x, np.eye(11)[labels][:, None, :])
    np.testing.assert_allclose(np.asarray(z_lab).transpose(0, 3, 1, 2), z_lab_ref, atol=1e-5,
                               rtol=1e-5)


def test_guided_sample_matches_official_transcription():
    sd, _, y = _official_setup()
    model = _official_model()
    params = official_to_params(sd, model)
    z = np.random.default_rng(3).standard_normal((2, 4, 8, 8))
    y_null = np.zeros_like(y)
    w = 2.0
    ref = official_reverse_cfg(sd, z, y, y_null, w)
    opts = ss.SampleOptions(guidance=w)
    ours = jax.jit(lambda p, z, y, yn: ss.sample(model, p, z, y, yn, opts))(
        params, jnp.asarray(z.transpose(0, 2, 3, 1), jnp.float32), jnp.asarray(y, jnp.float32),
        jnp.asarray(y_null, jnp.float32))
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), ref, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Sizes and options


def test_official_parameter_counts():
    imagenet = StarFlowModel(input_shape=(32, 32, 4), width=2048,
                             layers_per_block=(2, 2, 2, 2, 2, 18), head_dim=64, num_classes=1000)
    assert count_params(imagenet) == 1_412_255_816
    t2i = StarFlowModel(input_shape=(32, 32, 4), width=3072, layers_per_block=(2, 2, 2, 2, 2, 24),
                        head_dim=64, prefix_len=128, prefix_dim=2048)
    assert count_params(t2i) == 3_858_281_544
    plain = StarFlowModel(input_shape=(32, 32, 4), width=2048,
                          layers_per_block=(2, 2, 2, 2, 2, 18), head_dim=64, shift="output",
                          scale="exp", soft_clip=0.0, final_norm=False, num_classes=1000)
    # the notes' "all four flags off": no sos_embed (6 x 4) nor final norms (6 x 2048)
    assert count_params(plain) == 1_412_243_504


def test_token_inputs_and_patches():
    m_tok = StarFlowModel(input_shape=(N, D), width=64, layers_per_block=(1, 1), head_dim=32,
                          token_grid=(2, 4))
    p = random_params(m_tok)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, N, D)), jnp.float32)
    z, lds, _ = m_tok.apply({"params": p}, x)
    assert z.shape == x.shape and lds[0].shape == (2, N, D)
    m_patch = StarFlowModel(input_shape=(4, 8, 1), patch_size=2, width=64, layers_per_block=(1,),
                            head_dim=32)
    assert (m_patch.num_tokens, m_patch.token_dim, m_patch.grid) == (8, 4, (2, 4))


@pytest.mark.parametrize("kw, match", [
    (dict(seq_order="zigzag"), "seq_order"),
    (dict(shift="left"), "shift"),
    (dict(scale="sigmoid"), "scale"),
    (dict(positions="alibi"), "positions"),
    (dict(soft_clip=-1.0), "soft_clip"),
    (dict(layers_per_block=()), "layers_per_block"),
    (dict(prefix_len=4, prefix_dim=8), "exclusive"),
    (dict(head_dim=16), "rotary pairs"),
    (dict(input_shape=(3, 4, 2), patch_size=2), "not divisible"),
    (dict(token_grid=(3, 3), input_shape=(N, D)), "does not hold"),
])
def test_bad_options_raise_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        init_shapes(tiny(**kw))


def test_metablock_defaults_are_tarflow():
    blk = MetaBlock(in_dim=4, width=32, num_tokens=16, num_layers=1, head_dim=16)
    shapes = jax.eval_shape(blk.init, jax.random.key(0), jnp.zeros((1, 16, 4)))
    names = set(shapes["params"])
    assert names == {"proj_in_kernel", "proj_in_bias", "pos_embed", "transformer",
                     "proj_out_kernel", "proj_out_bias"}
    with pytest.raises(ConfigError, match="both be positive"):
        MetaBlock(in_dim=4, width=32, num_tokens=16, num_layers=1, head_dim=16,
                  prefix_len=2).init(jax.random.key(0), jnp.zeros((1, 16, 4)))
