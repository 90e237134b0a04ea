"""jaxflows.align: the flow-prior alignment loss (gradients reach the latents and the encoder,
never the frozen prior), the reducers (fixed across calls and seeds as configured), and the
config helper on a prior trained by the engine."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows import align
from jaxflows.errors import ConfigError
from jaxflows.models.flow_matching import VelocityMLP


def _prior(dim=3, key=0, scale=0.3):
    model = VelocityMLP(dim=dim, width=16, num_blocks=2, freq_dim=8)
    params = model.init(jax.random.key(key), jnp.zeros((2, dim)), jnp.zeros((2,)))["params"]
    params = nn.unbox(params)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(key + 1), len(leaves))
    params = jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape)
                                       for p, k in zip(leaves, keys)])

    def apply(p, x, t):
        return model.apply({"params": p}, x, t)

    return model, params, apply


def test_gradient_reaches_the_encoder_not_the_frozen_prior():
    _, prior_params, apply = _prior()
    encoder = nn.Dense(3)
    x = jax.random.normal(jax.random.key(2), (6, 5))
    enc_params = encoder.init(jax.random.key(3), x)["params"]

    def loss(enc_p, pri_p):
        y = encoder.apply({"params": enc_p}, x)
        return jnp.mean(align.flow_prior_loss(apply, pri_p, y, jax.random.key(4), repeats=4))

    g_enc, g_prior = jax.jit(jax.grad(loss, argnums=(0, 1)))(enc_params, prior_params)
    assert all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(g_prior))
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g_enc))


def test_gradient_flows_through_the_input_and_the_target():
    """No stop-gradient on y: the gradient is that of ||v((1-t) e + t y, t) - (y - e)||^2 with y
    in both places (differs from either half alone)."""
    _, params, apply = _prior(dim=2)
    y = jax.random.normal(jax.random.key(5), (4, 2))
    key = jax.random.key(6)
    g = jax.jit(jax.grad(lambda yy: jnp.sum(align.flow_prior_loss(apply, params, yy, key, 1))))(y)
    k_t, k_e = jax.random.split(key)
    t = jax.random.uniform(k_t, (1, 4))[0]
    e = jax.random.normal(k_e, (1, 4, 2))[0]

    def manual(y_in, y_target):
        xt = (1 - t[:, None]) * e + t[:, None] * y_in
        return jnp.sum((apply(params, xt, t) - (y_target - e)) ** 2)

    g_in = jax.jit(jax.grad(manual, argnums=0))(y, y)
    g_target = jax.jit(jax.grad(manual, argnums=1))(y, y)
    np.testing.assert_allclose(g, g_in + g_target, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(g_in))) > 0 and float(jnp.max(jnp.abs(g_target))) > 0


def test_same_convention_and_draws_as_the_flow_matching_loss():
    """L_align is the prior's own training loss (noise at t = 0, data at t = 1), per example."""
    from jaxflows.models.flow_matching import rectified_flow_error

    _, params, apply = _prior(dim=2)
    y = jax.random.normal(jax.random.key(12), (6, 2))
    key = jax.random.key(13)
    ours = jax.jit(lambda yy: align.flow_prior_loss(apply, params, yy, key, repeats=3))(y)
    theirs = jax.jit(lambda yy: rectified_flow_error(lambda x, t: apply(params, x, t), yy, key,
                                                     3))(y)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_loss_values_shapes_and_reductions():
    zero = lambda p, x, t: jnp.zeros_like(x)  # noqa: E731  -- L = E||y - eps||^2 = |y|^2 + d
    y = jnp.asarray([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    per = align.flow_prior_loss(zero, {}, y, jax.random.key(7), repeats=20000)
    np.testing.assert_allclose(per, [3.0, 12.0], rtol=0.03)
    mean = align.flow_prior_loss(zero, {}, y, jax.random.key(7), repeats=20000,
                                 reduction="mean")
    np.testing.assert_allclose(mean, per / 3, rtol=1e-6)
    # per-token latents [B, T, d]: the token losses are averaged per example
    _, params, apply = _prior()
    tokens = jax.random.normal(jax.random.key(8), (2, 5, 3))
    out = jax.jit(lambda y: align.flow_prior_loss(apply, params, y, jax.random.key(9)))(tokens)
    assert out.shape == (2,)
    # common draws: the same value for the same point wherever it sits in the batch
    t, e = jnp.linspace(0.05, 0.95, 7), jax.random.normal(jax.random.key(10), (7, 3))
    vel = lambda x, tt: apply(params, x, tt)  # noqa: E731
    at = jax.jit(lambda y: align.flow_prior_loss_at(vel, y, t, e))
    a = at(tokens[0])
    b = at(tokens[0][::-1])
    np.testing.assert_allclose(a, b[::-1], rtol=1e-5)
    jvel = jax.jit(vel)
    ref = jnp.mean(jnp.stack([jnp.sum((jvel((1 - tk) * ek + tk * tokens[0], jnp.full((5,), tk))
                                       - (tokens[0] - ek)) ** 2, -1) for tk, ek in zip(t, e)]), 0)
    np.testing.assert_allclose(a, ref, rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        align.flow_prior_loss(apply, params, tokens, jax.random.key(0), reduction="max")


def test_alignment_loss_of_the_exact_standard_normal_prior():
    """For the N(0, I) target the optimal field is v(x, t) = (2t - 1) / s_t^2 x with
    s_t^2 = (1 - t)^2 + t^2, and L_align(y) = (pi / 4) (d + |y|^2) in closed form: an affine
    function of -log p(y), so it ranks points exactly; C(y) = 0, and the inequality
    log p(y) >= C(y) - L_align(y) of Prop. 1 fails where |y|^2 < 0.47 d (near the mode)."""

    def prior(p, x, t):
        t = t[..., None]
        return (2 * t - 1) / ((1 - t) ** 2 + t**2) * x

    y = jnp.asarray([[0.0, 0.0], [0.5, -0.5], [2.0, 1.0]])
    per = jax.jit(lambda yy: align.flow_prior_loss(prior, {}, yy, jax.random.key(11),
                                                   repeats=200_000))(y)
    want = math.pi / 4 * (2 + jnp.sum(y**2, -1))
    np.testing.assert_allclose(per, want, rtol=0.01)
    t = (jnp.arange(256) + 0.5) / 256
    c = align.divergence_term(lambda x, tt: prior(None, x, tt), y, t, jnp.zeros((256, 2)))
    np.testing.assert_allclose(c, 0.0, atol=1e-4)
    log_p = -0.5 * jnp.sum(y**2, -1) - math.log(2 * math.pi)
    assert bool(log_p[0] < c[0] - want[0])  # violated at the mode
    assert bool(log_p[2] >= c[2] - want[2])  # holds in the tail


def test_divergence_term_is_minus_the_mean_trace():
    lin = np.asarray([[0.5, 0.2], [-0.3, -1.5]], np.float32)
    vel = lambda x, t: x @ jnp.asarray(lin).T * (1 + t[..., None])  # noqa: E731
    t = jnp.asarray([0.25, 0.75])
    e = jnp.zeros((2, 2))
    c = align.divergence_term(vel, jnp.ones((3, 2)), t, e)
    np.testing.assert_allclose(c, -np.trace(lin) * 1.5, rtol=1e-6)


def test_fixed_projection_is_fixed_across_calls_and_seeds_as_configured():
    p1 = align.FixedProjection(896, 32, seed=42)
    p2 = align.FixedProjection(896, 32, seed=42)
    p3 = align.FixedProjection(896, 32, seed=7)
    assert p1.matrix.shape == (896, 32)
    np.testing.assert_array_equal(p1.matrix, p2.matrix)  # same seed: the same matrix
    assert not np.allclose(p1.matrix, p3.matrix)  # another seed: another matrix
    x = jax.random.normal(jax.random.key(0), (4, 10, 896))
    first = p1(x)
    assert first.shape == (4, 10, 32)
    np.testing.assert_array_equal(first, p1(x))  # the same map at every call
    np.testing.assert_allclose(first, np.asarray(x) @ p1.matrix, rtol=1e-4, atol=1e-4)
    assert abs(float(np.std(p1.matrix)) - 1 / math.sqrt(896)) < 0.05 / math.sqrt(896)
    assert abs(float(np.mean(p1.matrix))) < 0.01 / math.sqrt(896) * 10
    with pytest.raises(ValueError):
        p1.matrix[0, 0] = 1.0  # read-only
    # nothing trainable: its output's gradient w.r.t. x is the matrix itself
    g = jax.grad(lambda v: jnp.sum(p1(v)))(jnp.ones(896))
    np.testing.assert_allclose(g, p1.matrix.sum(1), rtol=1e-5, atol=1e-6)


def test_pca_and_pool_reducers():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((12, 3)))[0]
    feats = (rng.standard_normal((500, 3)) * [5.0, 2.0, 1.0]) @ basis.T + 0.01 * \
        rng.standard_normal((500, 12)) + 4.0
    pca = align.make_reducer("pca", 12, 3, features=feats)
    out = pca(jnp.asarray(feats))
    assert out.shape == (500, 3)
    np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(3), atol=1e-5)
    assert np.all(np.diff(pca.explained_variance) < 0)
    np.testing.assert_allclose(np.asarray(out).mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.asarray(out).std(0, ddof=1), [5.0, 2.0, 1.0], rtol=0.15)
    # the same fit gives the same map
    np.testing.assert_array_equal(align.make_reducer("pca", 12, 3, features=feats).components,
                                  pca.components)

    pool = align.make_reducer("pool", 896, 32)
    x = jax.random.normal(jax.random.key(1), (2, 896))
    np.testing.assert_allclose(pool(x), np.asarray(x).reshape(2, 32, 28).mean(-1), rtol=1e-5,
                               atol=1e-6)
    odd = align.AveragePool(10, 4)
    np.testing.assert_allclose(odd.matrix.sum(0), 1.0, rtol=1e-6)
    assert odd(jnp.ones((3, 10))).shape == (3, 4)
    rand = align.make_reducer("random", 10, 4, seed=3)
    np.testing.assert_array_equal(rand.matrix, align.FixedProjection(10, 4, 3).matrix)
    with pytest.raises(ValueError, match="unknown"):
        align.make_reducer("tsne", 10, 4)
    with pytest.raises(ValueError, match="features"):
        align.make_reducer("pca", 10, 4)


def test_from_config_off_and_unknown_keys():
    assert align.FlowPriorAlignment.from_config(None) is None
    assert align.FlowPriorAlignment.from_config(align.default_align_config()) is None
    cfg = align.default_align_config()
    cfg.weight = 0.1
    assert align.FlowPriorAlignment.from_config(cfg) is None  # no workdir
    with pytest.raises(ConfigError, match="unknown keys"):
        align.FlowPriorAlignment.from_config({"weight": 0.1, "prior": "x"})
    cfg.prior_workdir = "/nonexistent/prior"
    with pytest.raises(ConfigError, match="does not exist"):
        align.FlowPriorAlignment.from_config(cfg)


@pytest.mark.slow
def test_alignment_term_from_a_prior_trained_by_the_engine(tmp_path_factory):
    """Trains a tiny prior with the engine, loads it through config.model.align and adds
    lambda * L_align to an encoder's loss: the encoder gets gradients, the prior stays frozen."""
    import os

    from jaxflows.train import load_config, train

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data_dir = str(tmp_path_factory.mktemp("data"))
    prior_dir = str(tmp_path_factory.mktemp("prior"))
    config = load_config(os.path.join(repo, "experiments/configs/flow_matching_toy.py:smoke"),
                         [f"--config.data.data_dir={data_dir}", "--config.train.num_steps=20",
                          "--config.train.progress_bar=false"])
    train(config, prior_dir, final_eval=False)

    cfg = align.default_align_config()
    cfg.prior_workdir = prior_dir
    cfg.weight = 0.5
    term = align.FlowPriorAlignment.from_config(cfg)
    assert term is not None and term.dim == 2 and term.repeats == 4

    encoder = nn.Dense(2)
    x = jax.random.normal(jax.random.key(0), (8, 3))
    enc_params = encoder.init(jax.random.key(1), x)["params"]

    def loss_fn(p):
        z = encoder.apply({"params": p}, x)
        base = jnp.mean(z**2)
        return term.add_to(base, {"base": base}, z, jax.random.key(2),
                           jnp.asarray([1, 1, 1, 1, 1, 1, 0, 0]))

    (loss, metrics), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(enc_params)
    per = term.per_example(encoder.apply({"params": enc_params}, x), jax.random.key(2))
    np.testing.assert_allclose(metrics["align_loss"], jnp.mean(per[:6]), rtol=1e-5)
    np.testing.assert_allclose(loss, metrics["base"] + 0.5 * metrics["align_loss"], rtol=1e-5)
    assert all(float(jnp.max(jnp.abs(v))) > 0 for v in jax.tree.leaves(g))
    g_prior = jax.grad(lambda pp: jnp.sum(align.flow_prior_loss(
        term.prior_apply, pp, x[:, :2], jax.random.key(3))))(term.params)
    assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(g_prior))
