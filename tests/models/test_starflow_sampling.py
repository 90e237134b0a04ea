"""STARFlow sampling: exact inverses (both shifts, with and without a prefix), the KV-cache
sampler against recomputation under both guidance rules, block-wise Jacobi, and the guidance
rule itself. Tiny models: a 2x4 grid of 2-channel latents (N=8, D=2), 3 blocks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.errors import ConfigError
from jaxflows.models import starflow_sampling as ss
from jaxflows.models.starflow import StarFlowModel, init_shapes

GRID = (2, 4, 2)
N, D = 8, 2

VARIANTS = {
    "sos_labels": dict(num_classes=3),
    "sos_uncond": dict(),
    "output_labels": dict(num_classes=3, shift="output", scale="exp", positions="learned",
                          soft_clip=0.0, final_norm=False),
    "output_text": dict(prefix_len=2, prefix_dim=5, shift="output"),
}


@functools.cache
def _setup(name):
    m = StarFlowModel(input_shape=GRID, width=64, layers_per_block=(1, 1, 2), head_dim=32,
                      **VARIANTS[name])
    rs = np.random.default_rng(0)

    def draw(path, a):
        key = jax.tree_util.keystr(path)
        base = 1.0 if key.endswith("norm_scale']") and "final" not in key else 0.0
        return jnp.asarray(base + 0.05 * rs.standard_normal(a.shape), jnp.float32)

    p = jax.tree_util.tree_map_with_path(draw, init_shapes(m))
    if m.num_classes:
        cond = jnp.array([0, 2, 3])
    elif m.conditional:
        cond = jnp.asarray(rs.standard_normal((3, m.prefix_len, m.prefix_dim)), jnp.float32)
    else:
        cond = None
    return m, p, cond


@functools.cache
def _fns(name, opts=None):
    m, _, _ = _setup(name)
    opts = opts or ss.SampleOptions()
    fwd = jax.jit(lambda p, x, c: m.apply({"params": p}, x, c)[0])
    smp = jax.jit(lambda p, z, c, n: ss.sample(m, p, z, c, n, opts))
    return fwd, smp


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sample_inverts_forward(name):
    m, p, cond = _setup(name)
    fwd, smp = _fns(name)
    rs = np.random.default_rng(1)
    x = jnp.asarray(rs.standard_normal((3, *GRID)), jnp.float32)
    np.testing.assert_allclose(smp(p, fwd(p, x, cond), cond, None), x, atol=1e-5)
    z = jnp.asarray(rs.standard_normal((3, *GRID)), jnp.float32)
    np.testing.assert_allclose(fwd(p, smp(p, z, cond, None), cond), z, atol=1e-5)


def _null(m, cond):
    if m.num_classes or cond is None:
        return None
    return jnp.zeros((1, m.prefix_len, m.prefix_dim), jnp.float32)


@pytest.mark.parametrize("name, opts", [
    ("sos_labels", ss.SampleOptions(guidance=2.0)),
    ("sos_labels", ss.SampleOptions(guidance=1.5, rule="linear", annealed=True)),
    ("output_text", ss.SampleOptions(guidance=2.0)),
])
def test_kv_cache_sampler_equals_recompute(name, opts):
    m, p, cond = _setup(name)
    z = jax.random.normal(jax.random.key(2), (3, N, D))
    null = _null(m, cond)
    a = jax.jit(lambda p, z, c, n: ss.sample_tokens(m, p, z, c, n, opts))(p, z, cond, null)
    b = jax.jit(lambda p, z, c, n: ss.sample_tokens_recompute(m, p, z, c, n, opts))(
        p, z, cond, null)
    np.testing.assert_allclose(a, b, atol=1e-5)
    plain = jax.jit(lambda p, z, c: ss.sample_tokens(m, p, z, c))(p, z, cond)
    assert np.abs(np.asarray(a) - np.asarray(plain)).max() > 1e-3  # guidance does something


def test_jacobi_converges_to_sequential():
    m, p, cond = _setup("sos_labels")
    z = jax.random.normal(jax.random.key(3), (3, N, D))
    guided = ss.SampleOptions(guidance=2.0)
    seq = jax.jit(lambda p, z, c: ss.sample_tokens(m, p, z, c, opts=guided))(p, z, cond)
    exact = ss.SampleOptions(guidance=2.0, jacobi_chunk=4, jacobi_tol=0.0)
    jac = jax.jit(lambda p, z, c: ss.sample_tokens(m, p, z, c, opts=exact))(p, z, cond)
    np.testing.assert_allclose(jac, seq, atol=1e-5)
    loose = ss.SampleOptions(guidance=2.0, jacobi_chunk=4)  # official threshold 1e-3
    approx = jax.jit(lambda p, z, c: ss.sample_tokens(m, p, z, c, opts=loose))(p, z, cond)
    np.testing.assert_allclose(approx, seq, atol=5e-2)


def test_gaussian_guidance_rule():
    rs = np.random.default_rng(4)
    sc, su = np.exp(rs.standard_normal((2, 50))), np.exp(rs.standard_normal((2, 50)))
    mc, mu_u = rs.standard_normal((2, 50)), rs.standard_normal((2, 50))
    # w = 0: the conditional head
    sigma, mu = ss.gaussian_guidance(sc, mc, su, mu_u, 0.0)
    np.testing.assert_allclose(sigma, sc, rtol=1e-6)
    np.testing.assert_allclose(mu, mc, rtol=1e-6)
    for w in (0.5, 2.0, 4.0):
        sigma, mu = ss.gaussian_guidance(sc, mc, su, mu_u, w)
        assert np.all(np.asarray(sigma) <= sc * (1 + 1e-6))  # guidance never widens
        # s = 1 (sigma_c >= sigma_u, clipped; or equal): plain CFG on mu, sigma unchanged
        sigma1, mu1 = ss.gaussian_guidance(sc, mc, sc, mu_u, w)
        np.testing.assert_allclose(sigma1, sc, rtol=1e-6)
        np.testing.assert_allclose(mu1, (1 + w) * mc - w * mu_u, rtol=1e-6, atol=1e-6)
        wide_u = np.minimum(su, sc)  # sigma_u <= sigma_c -> s clips to 1
        np.testing.assert_allclose(ss.gaussian_guidance(sc, mc, wide_u, mu_u, w)[1],
                                   (1 + w) * mc - w * mu_u, rtol=1e-6, atol=1e-6)
        # it is the Gaussian prop. to p_c^(1+w) / p_u^w when that exists (s < 1)
        narrow = sc < su
        prec = np.where(narrow, (1 + w) / sc**2 - w / su**2, 1.0)
        np.testing.assert_allclose(np.asarray(sigma)[narrow], (1 / np.sqrt(prec))[narrow],
                                   rtol=1e-5)
        mean = ((1 + w) * mc / sc**2 - w * mu_u / su**2) / prec
        np.testing.assert_allclose(np.asarray(mu)[narrow], mean[narrow], rtol=1e-5, atol=1e-6)
    # the linear (TarFlow) rule on log sigma
    sigma, mu = ss.linear_guidance(np.log(sc), mc, np.log(su), mu_u, 2.0)
    np.testing.assert_allclose(np.log(sigma), 3 * np.log(sc) - 2 * np.log(su), rtol=1e-5,
                               atol=1e-5)


def test_sampler_errors():
    m, p, cond = _setup("output_text")
    z = jnp.zeros((3, N, D))
    with pytest.raises(ValueError, match="null_cond"):
        ss.sample_tokens(m, p, z, cond, opts=ss.SampleOptions(guidance=1.0))
    with pytest.raises(ConfigError, match="rule"):
        ss.sample_tokens(m, p, z, cond, opts=ss.SampleOptions(rule="cfg"))
    mu, pu, _ = _setup("sos_uncond")
    with pytest.raises(ValueError, match="unconditional"):
        ss.sample_tokens(mu, pu, z, jnp.array([0, 1, 2]))
    # an unconditional model ignores guidance (the official rule would be a no-op there)
    _, smp = _fns("sos_uncond")
    _, smp_g = _fns("sos_uncond", ss.SampleOptions(guidance=3.0))
    zg = jnp.zeros((3, *GRID))
    np.testing.assert_allclose(smp_g(pu, zg, None, None), smp(pu, zg, None, None), atol=1e-6)


@pytest.mark.parametrize("name", ["sos_labels", "output_text"])
def test_sigma_ratio_by_teacher_forcing_is_what_the_sampler_combined(name, monkeypatch):
    """deep_block_sigma_ratio on a guided sample equals sigma_c / sigma_u as the sampler's
    Gaussian rule received them, token by token (the deep block's own order mapped back)."""
    m, p, cond = _setup(name)
    seen, rule = [], ss.gaussian_guidance

    def recording(sigma_c, mu_c, sigma_u, mu_u, w):
        jax.debug.callback(lambda r: seen.append(np.asarray(r)), sigma_c / sigma_u)
        return rule(sigma_c, mu_c, sigma_u, mu_u, w)

    monkeypatch.setattr(ss, "gaussian_guidance", recording)
    null = _null(m, cond)
    z = jnp.asarray(np.random.default_rng(2).standard_normal((3, N, D)), jnp.float32)
    x = jax.jit(lambda p, z: ss.sample_tokens(m, p, z, cond, null,
                                              ss.SampleOptions(guidance=3.0)))(p, z)
    jax.effects_barrier()
    sampled = np.stack([r.reshape(3, D) for r in seen], axis=1)  # [B, steps, D], block order
    if m.block_flip(m.num_blocks - 1):
        sampled = sampled[:, ::-1]
    ratio = np.asarray(jax.jit(lambda p, x: ss.deep_block_sigma_ratio(
        m, p, m.apply({"params": p}, x, method="from_tokens"), cond, null))(p, x))
    flip = m.block_flip(m.num_blocks - 1)
    if m.shift != "sos":  # the block's first token is not transformed: ratio 1, no step
        np.testing.assert_allclose(ratio[:, -1] if flip else ratio[:, 0], 1.0, atol=1e-6)
        ratio = ratio[:, :-1] if flip else ratio[:, 1:]
    np.testing.assert_allclose(ratio, sampled, rtol=1e-4)
    assert np.ptp(ratio) > 1e-3  # the heads differ: not a trivially equal pair


def test_effective_guidance():
    r = jnp.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(ss.effective_guidance(r, 3.0),
                               [3 * 0.25 / (4 - 0.75), 3.0, 3.0], rtol=1e-6)
    # it is the weight of the rule's mu: mu_c + w_eff (mu_c - mu_u)
    sigma, mu = ss.gaussian_guidance(jnp.float32(0.5), jnp.float32(1.0), jnp.float32(1.0),
                                     jnp.float32(0.2), 3.0)
    w_eff = ss.effective_guidance(jnp.float32(0.5), 3.0)
    np.testing.assert_allclose(mu, 1.0 + w_eff * 0.8, rtol=1e-6)
