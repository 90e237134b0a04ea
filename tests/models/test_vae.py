"""The VP-flow VAE task: objective identities, IS vs ELBO, training, likelihoods, masking."""

import functools
import importlib.util
import math
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.stats import norm

from jaxflows.models.vae import FlowVAE, bernoulli_log_prob, gaussian_log_prob
from jaxflows.train.task import DataInfo, build_task

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_config_module():
    spec = importlib.util.spec_from_file_location(
        "vae_mnist_config", ROOT / "experiments/configs/vae_mnist.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CONFIGS = _load_config_module()
DIGITS = DataInfo.for_images((8, 8, 1), num_classes=10, num_train=1400)


def make_task(flow="none", likelihood="bernoulli", **model):
    config = CONFIGS.get_config("smoke")
    config.model.flow = flow
    config.model.likelihood = likelihood
    config.model.latent_dim = 6
    config.model.hidden = (32, 32)
    config.model.num_flows = 2 if flow in ("householder", "planar", "iaf", "sylvester") else 1
    for k, v in model.items():
        config.model[k] = v
    return build_task(config, DIGITS)


def binary_images(rng, n, shape=(8, 8, 1)):
    return (jax.random.bernoulli(rng, 0.3, (n, *shape)).astype(jnp.uint8) * 255).astype(jnp.uint8)


@functools.cache
def digits_uint8():
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32) / 16.0  # [1797, 8, 8] in [0, 1]
    return np.round(x * 255.0).astype(np.uint8)[..., None]


@pytest.fixture(scope="module")
def plain():
    """A small plain VAE on 64 binarized digits, its params and flattened inputs (jitted once)."""
    task = make_task()
    imgs = (jnp.asarray(digits_uint8()[:64]) > 127).astype(jnp.uint8) * 255
    params = jax.jit(task.init)(jax.random.key(0), {"image": imgs})
    x = imgs.reshape(64, -1).astype(jnp.float32) / 255.0
    return task, params, imgs, x


def amortized_or_skip():
    try:
        import jaxflows.nn.amortized  # noqa: F401
    except ImportError as e:  # pragma: no cover - module written concurrently
        pytest.skip(f"jaxflows.nn.amortized not importable yet: {e}")


# --- likelihood pieces ------------------------------------------------------------------
def test_gaussian_log_prob_includes_minus_half_d_log_2pi():
    rng = jax.random.key(0)
    x = jax.random.uniform(rng, (3, 784))
    mean = jax.random.uniform(jax.random.key(1), (3, 784))
    logvar = jax.random.uniform(jax.random.key(2), (3, 784), minval=-4.5, maxval=0.0)
    want = jnp.sum(norm.logpdf(x, mean, jnp.exp(0.5 * logvar)), axis=-1)
    np.testing.assert_allclose(gaussian_log_prob(x, mean, logvar), want, rtol=1e-5)
    # the constant is subtracted (reference bug §9.3 added it): at x = mean, logvar = 0 the
    # density is exactly -D/2 log(2 pi) < 0
    zero = gaussian_log_prob(jnp.zeros((1, 784)), jnp.zeros((1, 784)), jnp.zeros((1, 784)))
    np.testing.assert_allclose(zero, [-0.5 * 784 * math.log(2 * math.pi)], rtol=1e-6)


def test_bernoulli_log_prob_is_stable_for_extreme_logits():
    logits = jnp.array([[-200.0, 200.0, 0.0]])
    x = jnp.array([[0.0, 1.0, 1.0]])
    np.testing.assert_allclose(bernoulli_log_prob(x, logits), [math.log(0.5)], rtol=1e-6)
    wrong = bernoulli_log_prob(1.0 - x[:, :2], logits[:, :2])
    np.testing.assert_allclose(wrong, [-400.0], rtol=1e-6)
    g = jax.grad(lambda l: bernoulli_log_prob(x, l).sum())(logits)
    assert np.all(np.isfinite(g))


def test_gaussian_likelihood_task_runs_and_bounds_logvar():
    task = make_task(likelihood="gaussian")
    imgs = jnp.asarray(digits_uint8()[:16])
    params = jax.jit(task.init)(jax.random.key(0), {"image": imgs})
    z = jax.random.normal(jax.random.key(2), (5, task.latent_dim))

    @jax.jit
    def run(params):
        m = task.eval_batch(params, {"image": imgs}, jax.random.key(1))
        return m, task._apply(params, z, method=FlowVAE.decode)[1]

    m, logvar = run(params)
    assert np.all(np.isfinite(m["neg_elbo"]))
    assert float(logvar.min()) >= -4.5 and float(logvar.max()) <= 0.0


# --- objective identities ---------------------------------------------------------------
def test_plain_vae_terms_and_shapes(plain):
    task, params, _, x = plain
    keys = jax.random.split(jax.random.key(3), 2000)
    many = jax.jit(jax.vmap(task.terms, in_axes=(None, None, 0)))(params, x, keys)
    t = jax.tree.map(lambda a: a[0], many)
    chex.assert_shape([t["recon"], t["kl"], t["neg_elbo"], t["logdet"]], (64,))
    chex.assert_shape(t["zT"], (64, task.latent_dim))
    np.testing.assert_allclose(t["neg_elbo"], t["recon"] + t["kl"], rtol=1e-6)
    np.testing.assert_array_equal(t["logdet"], 0.0)
    # the Monte Carlo KL averages to the closed form KL(N(mu, sigma^2) || N(0, I))
    mu, logvar, _ = jax.jit(lambda p, x: task._apply(p, x, method=FlowVAE.encode))(params, x)
    closed = 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)
    np.testing.assert_allclose(many["kl"].mean(0), closed, atol=0.1)


def test_householder_kl_equals_plain_vae_kl_sample_by_sample():
    amortized_or_skip()
    hf = make_task("householder", num_flows=3)
    vae = make_task("none")
    imgs = binary_images(jax.random.key(0), 9)
    p_hf = jax.jit(hf.init)(jax.random.key(1), {"image": imgs})
    p_vae = {k: v for k, v in p_hf.items() if k != "flow_net"}
    assert set(p_hf) - set(p_vae) == {"flow_net"}
    x = imgs.reshape(9, -1).astype(jnp.float32) / 255.0
    both = jax.jit(lambda key: (hf.terms(p_hf, x, key), vae.terms(p_vae, x, key)))
    for seed in range(3):
        t_hf, t_vae = both(jax.random.key(10 + seed))
        np.testing.assert_allclose(t_hf["kl"], t_vae["kl"], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(t_hf["logdet"], 0.0, atol=1e-6)
        # same z0, rotated: equal norms, different points
        np.testing.assert_allclose(
            jnp.linalg.norm(t_hf["zT"], axis=-1), jnp.linalg.norm(t_vae["zT"], axis=-1), rtol=1e-5
        )
        assert not np.allclose(t_hf["zT"], t_vae["zT"])


def test_cc_linear_iaf_runs_with_zero_logdet():
    amortized_or_skip()
    task = make_task("cc_linear_iaf", num_components=3)
    imgs = binary_images(jax.random.key(0), 5)
    x = imgs.reshape(5, -1).astype(jnp.float32) / 255.0
    params = jax.jit(task.init)(jax.random.key(1), {"image": imgs})

    @jax.jit
    def run(params):
        t = task.terms(params, x, jax.random.key(2))
        loss, metrics = task.loss(params, {"image": imgs}, jax.random.key(3), 0)
        return t, loss, metrics, task.log_weights(params, x, jax.random.key(4), 3)

    t, loss, metrics, w = run(params)
    np.testing.assert_array_equal(t["logdet"], 0.0)
    assert not np.allclose(t["zT"], 0.0)
    assert np.isfinite(loss) and set(metrics) == {"neg_elbo", "recon", "kl", "beta"}
    chex.assert_shape(w, (3, 5))
    assert np.all(np.isfinite(w))


# --- importance sampling vs the ELBO ----------------------------------------------------
def test_importance_sampled_nll_is_below_elbo_and_tightens(plain):
    task, params, _, x = plain
    w = jax.jit(task.log_weights, static_argnums=3)(params, x, jax.random.key(2), 1000)
    chex.assert_shape(w, (1000, 64))
    neg_elbo = float(-jnp.mean(w))  # the one-sample -ELBO, averaged over samples and images

    def is_nll(s):  # mean over 1000 / s independent S-sample estimates and the 64 images
        g = w.reshape(1000 // s, s, 64)
        return float(jnp.mean(-(jax.nn.logsumexp(g, axis=1) - math.log(s))))

    nll = [is_nll(s) for s in (1, 10, 100)]
    np.testing.assert_allclose(nll[0], neg_elbo, rtol=1e-5)  # S = 1 is the -ELBO
    assert nll[0] > nll[1] > nll[2], nll  # more samples tighten the bound
    # the estimator used by final_eval agrees with the formula on independent draws
    task.num_is_samples, task.is_chunk = 100, 50
    out = task.final_eval(params, lambda: [{"image": plain[2]}], jax.random.key(5))
    assert out["num_examples"] == 64 and out["num_is_samples"] == 100
    assert out["nll_is"] <= out["neg_elbo"] + 1.0
    assert abs(out["nll_is"] - nll[2]) < 1.0, (out["nll_is"], nll[2])
    assert out["nll_is_sem"] > 0.0


# --- training -----------------------------------------------------------------------------
def test_short_training_lowers_neg_elbo(plain):
    task, params, _, x_eval = plain  # evaluates on the fixture's 64 fixed binary digits
    data = jnp.asarray(digits_uint8())
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, i):
        idx = jax.random.choice(jax.random.fold_in(jax.random.key(1), i), data.shape[0], (100,))
        batch = {"image": data[idx]}  # gray digits, binarized afresh inside task.loss
        (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(
            params, batch, jax.random.fold_in(jax.random.key(2), i), i
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    def evaluate(p):
        return float(task._terms_jit(p, x_eval, jax.random.key(3))["neg_elbo"].mean())

    before = evaluate(params)
    for i in range(100):
        params, opt_state, metrics = step(params, opt_state, i)
    after = evaluate(params)
    assert np.isfinite(after) and after < before - 5.0, (before, after)
    assert 0.0 < float(metrics["beta"]) <= 1.0


def test_kl_warmup_schedule():
    task = make_task()  # smoke: warmup 5 epochs, 1400 // 64 = 21 steps per epoch
    assert task.steps_per_epoch == 21
    np.testing.assert_allclose(task.beta(0), 0.0)
    np.testing.assert_allclose(task.beta(21), 0.2)
    np.testing.assert_allclose(task.beta(21 * 2.5), 0.5, rtol=1e-6)
    np.testing.assert_allclose(task.beta(21 * 5), 1.0)
    np.testing.assert_allclose(task.beta(10_000), 1.0)


# --- masks, sampling, config --------------------------------------------------------------
def test_masks_exclude_padded_rows(plain):
    task, params, imgs, _ = plain
    task.num_is_samples, task.is_chunk = 100, 50
    mask = jnp.ones(64, jnp.float32).at[60:].set(0.0)
    padded_a = imgs.at[60:].set(0)
    padded_b = imgs.at[60:].set(255)
    out_a = task.final_eval(params, lambda: [{"image": padded_a, "mask": mask}], jax.random.key(2))
    out_b = task.final_eval(params, lambda: [{"image": padded_b, "mask": mask}], jax.random.key(2))
    assert out_a["num_examples"] == 60
    for k in ("neg_elbo", "recon", "kl", "nll_is", "nll_is_sem"):
        np.testing.assert_allclose(out_a[k], out_b[k], rtol=1e-6)
    # the training loss also honours a mask if one is given
    loss = jax.jit(task.loss)
    la, _ = loss(params, {"image": padded_a, "mask": mask}, jax.random.key(3), 0)
    lb, _ = loss(params, {"image": padded_b, "mask": mask}, jax.random.key(3), 0)
    np.testing.assert_allclose(la, lb, rtol=1e-6)


def test_sample_and_reconstruct_shapes(plain):
    task, params, imgs, _ = plain
    s = jax.jit(task.sample, static_argnums=2)(params, jax.random.key(2), 5)
    chex.assert_shape(s, (5, 8, 8, 1))
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    chex.assert_shape(jax.jit(task.reconstruct)(params, imgs, jax.random.key(3)), (64, 8, 8, 1))


def test_config_rows():
    for row in CONFIGS.ROWS:
        c = CONFIGS.get_config(row)
        assert c.model.name == "jaxflows.models.vae"
    c = CONFIGS.get_config("ccliniaf_k5")
    assert (c.model.flow, c.model.num_components, c.model.latent_dim) == ("cc_linear_iaf", 5, 40)
    assert c.train.batch_size == 100 and c.optim.learning_rate == 5e-4
    assert c.train.early_stopping_patience == 50
    assert c.data.transforms == ("binarize_eval(seed=777)",)
    assert CONFIGS.get_config("smoke").data.name == "digits"
    with pytest.raises(ValueError, match="valid rows"):
        CONFIGS.get_config("nope")


def test_bad_model_config_is_a_clear_error():
    with pytest.raises(ValueError, match="valid flows"):
        make_task("bogus")
    with pytest.raises(ValueError, match="likelihood"):
        make_task(likelihood="poisson")


def test_final_eval_compiles_without_cpu_library_fusions_unless_asked(plain):
    task, params, _, x = plain
    key = jax.random.key(0)

    def hlo(t):
        return t._is_nll_jit.lower(t.log_weights, nn.unbox(params), x, key, 100, 50) \
            .compile().as_text()

    assert "ynn_fusion" not in hlo(task)
    assert "ynn_fusion" not in task._terms_jit.lower(nn.unbox(params), x, key).compile().as_text()
    fused = make_task(cpu_library_fusions_in_eval=True)
    assert "ynn_fusion" in hlo(fused)  # this jax's CPU default: matmuls as YNNPACK fusions
    # the same estimate either way (only the kernels differ)
    np.testing.assert_allclose(
        task._is_nll_jit(task.log_weights, nn.unbox(params), x, key, 100, 50),
        fused._is_nll_jit(fused.log_weights, nn.unbox(params), x, key, 100, 50), rtol=1e-5)


@pytest.mark.parametrize("flow", ["none", "cc_linear_iaf", "iaf"])
def test_importance_sampled_log_likelihood_equals_quadrature(flow):
    """On a 2-D latent, log p(x) = log of the integral of p(x|z) N(z; 0, I) over a grid; the
    importance-sampled estimate (weights with the flow's log-det) must agree with it."""
    import flax.linen as nn

    task = make_task(flow, latent_dim=2)
    images = binary_images(jax.random.key(0), 3)
    params = nn.unbox(task.init(jax.random.key(1), {"image": images}))
    leaves, tree = jax.tree.flatten(params)    # move the zero-initialised flow heads too
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape)
                                       for p, k in zip(leaves, keys, strict=True)])
    x = images.reshape(3, -1).astype(jnp.float32) / 255.0
    grid = jnp.linspace(-8.0, 8.0, 641)
    z = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)   # [G, 2]
    log_px = task._apply(params, x, jnp.broadcast_to(z[:, None], (z.shape[0], 3, 2)),
                         method="log_likelihood")                            # [G, 3]
    log_prior = -0.5 * jnp.sum(z**2, -1) - math.log(2 * math.pi)
    exact = (jax.nn.logsumexp(log_px + log_prior[:, None], axis=0)
             + 2 * math.log(float(grid[1] - grid[0])))
    s = 50000
    w = jax.jit(task.log_weights, static_argnums=3)(params, x, jax.random.key(3), s)
    estimate = jax.nn.logsumexp(w, axis=0) - math.log(s)
    np.testing.assert_allclose(estimate, exact, atol=0.05)
    assert float(jnp.max(jnp.mean(w, 0) - exact)) < 0.0       # the ELBO stays below log p(x)
