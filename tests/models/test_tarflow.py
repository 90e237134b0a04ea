"""TarFlow: triangular Jacobians, log-dets, the KV-cache inverse, guidance, Jacobi, denoising,
the Task contract, configs and bad inputs. Tiny models (8x8x1 images, patch 2: N=16, D=4)."""

import functools
import importlib.util
import math
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.errors import ConfigError
from jaxflows.models import tarflow_sampling as ts
from jaxflows.models.tarflow import TarFlowModel, count_params
from jaxflows.models.tarflow_config import default_model_config, model_from_config
from jaxflows.models.tarflow_task import TASK, TarFlowTask
from jaxflows.nn.patches import patchify
from jaxflows.train.config import base_config
from jaxflows.train.task import DataInfo, load_task_class

SHAPE = (8, 8, 1)
N, D = 16, 4
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "configs"


def _model(num_classes=3, nvp=True, blocks=2):
    return TarFlowModel(image_shape=SHAPE, patch_size=2, width=32, num_blocks=blocks,
                        layers_per_block=1, head_dim=16, num_classes=num_classes, nvp=nvp)


def _random_params(model, seed=0, scale=0.02):
    """Random weights of the right shapes (LayerNorm scales near 1, everything else small, the
    zero-init proj_out included, so the maps are non-trivial); no compiled init needed."""
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *SHAPE)), y))
    rs = np.random.default_rng(seed)

    def draw(path, a):
        base = 1.0 if "norm_scale" in jax.tree_util.keystr(path) else 0.0
        s = 0.2 if "kernel" in jax.tree_util.keystr(path) else scale
        return jnp.asarray(base + s * rs.standard_normal(a.shape), jnp.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes["params"])
    for t in range(model.num_blocks):  # keep log-scales moderate
        k = params[f"blocks_{t}"]["proj_out_kernel"]
        params[f"blocks_{t}"]["proj_out_kernel"] = k * 0.1
    return params


@pytest.fixture(scope="module")
def cond():
    m = _model()
    p = _random_params(m)
    x = jax.random.uniform(jax.random.key(5), (3, *SHAPE), minval=-1, maxval=1)
    y = jnp.array([0, 2, -1])
    z, logdet = jax.jit(lambda p, x, y: m.apply({"params": p}, x, y))(p, x, y)
    return m, p, x, y, z, logdet


@functools.cache
def _jit_sampler(fn, model, opts):
    return jax.jit(lambda p, z, y: fn(model, p, z, y, opts))


def test_block_jacobian_triangular_in_token_order(cond):
    m, p, x, y, _, _ = cond
    tokens = patchify(x[:1], 2)[0]
    for t in range(2):
        def f(v, t=t):
            out = m.apply({"params": p}, v.reshape(1, N, D), y[:1],
                          method=lambda mm, a, b: mm.blocks[t](a, b))[0]
            return out.reshape(-1)

        jac = np.asarray(jax.jit(jax.jacfwd(f))(tokens.reshape(-1))).reshape(N, D, N, D)
        upper = np.triu(np.ones((N, N), bool), 1)  # j > i
        later = upper if t % 2 == 0 else upper.T  # tokens that come later in block t's order
        assert np.all(jac.transpose(0, 2, 1, 3)[later] == 0.0), f"block {t} not triangular"
        assert np.abs(jac.transpose(0, 2, 1, 3)[later.T]).max() > 1e-4  # and not trivial
        for i in range(N):  # no coupling between channels of a token
            blk = jac[i, :, i, :]
            np.testing.assert_array_equal(blk - np.diag(np.diag(blk)), 0.0)
        if t % 2 == 0:  # token 0 first in order: identity
            np.testing.assert_allclose(jac[0, :, 0, :], np.eye(D), atol=1e-6)
        else:
            np.testing.assert_allclose(jac[N - 1, :, N - 1, :], np.eye(D), atol=1e-6)


def test_logdet_equals_slogdet(cond):
    m, p, x, y, _, logdet = cond

    def f(v):
        return m.apply({"params": p}, v.reshape(1, *SHAPE), y[1:2])[0].reshape(-1)

    jac = jax.jit(jax.jacfwd(f))(x[1].reshape(-1))
    sign, ld = jnp.linalg.slogdet(jac)
    assert sign > 0
    # our log-det is per dimension: multiply by D_total = N * D = 64
    np.testing.assert_allclose(logdet[1] * N * D, ld, rtol=1e-4, atol=1e-4)


def test_inverse_of_forward_with_kv_cache(cond):
    m, p, x, y, z, _ = cond
    xr = _jit_sampler(ts.sample_tokens, m, ts.SampleOptions())(p, z, y)
    np.testing.assert_allclose(xr, patchify(x, 2), atol=1e-4)


GUIDED = ts.SampleOptions(guidance=1.5, attn_temp=0.7)  # class guidance + temperature


@pytest.mark.parametrize("opts", [ts.SampleOptions(), GUIDED])
def test_kv_cache_sampler_equals_recompute(cond, opts):
    m, p, _, y, _, _ = cond
    z = jax.random.normal(jax.random.key(9), (3, N, D))
    a = _jit_sampler(ts.sample_tokens, m, opts)(p, z, y)
    b = _jit_sampler(ts.sample_tokens_recompute, m, opts)(p, z, y)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_rolled_layer_loop_gives_the_same_flow_and_samples():
    """unroll_layers=False (a rolled nn.scan, stacked params inside the token loop) and the
    default unrolled loop (per-layer caches, hoisted weights) are the same model."""
    kw = dict(image_shape=SHAPE, patch_size=2, width=32, num_blocks=2, layers_per_block=2,
              head_dim=16, num_classes=3)
    a, b = TarFlowModel(**kw), TarFlowModel(**kw, unroll_layers=False)
    p = _random_params(a)
    x = jax.random.uniform(jax.random.key(1), (2, *SHAPE), minval=-1, maxval=1)
    y = jnp.array([1, -1])
    za, la = a.apply({"params": p}, x, y)
    zb, lb = b.apply({"params": p}, x, y)
    np.testing.assert_allclose(za, zb, atol=1e-5)
    np.testing.assert_allclose(la, lb, atol=1e-6)
    for opts in (ts.SampleOptions(), GUIDED):
        xa = _jit_sampler(ts.sample_tokens, a, opts)(p, za, y)
        xb = _jit_sampler(ts.sample_tokens, b, opts)(p, za, y)
        np.testing.assert_allclose(xa, xb, atol=1e-5)
    inverse = _jit_sampler(ts.sample_tokens, a, ts.SampleOptions())(p, za, y)
    np.testing.assert_allclose(inverse, patchify(x, 2), atol=1e-4)


def test_guidance_weight_zero_is_plain_conditional(cond):
    m, p, _, y, _, _ = cond
    z = jax.random.normal(jax.random.key(3), (3, N, D))
    plain = _jit_sampler(ts.sample_tokens, m, ts.SampleOptions())(p, z, y)
    far = _jit_sampler(ts.sample_tokens, m, GUIDED)(p, z, y)
    # the doubled-cache guided path with a vanishing weight reproduces the plain sampler
    tiny = _jit_sampler(ts.sample_tokens, m, ts.SampleOptions(guidance=1e-7))(p, z, y)
    np.testing.assert_allclose(tiny, plain, atol=1e-5)
    assert np.abs(far - plain).max() > 1e-3


def test_jacobi_converges_to_sequential(cond):
    m, p, _, y, _, _ = cond
    z = jax.random.normal(jax.random.key(4), (3, N, D))
    seq = _jit_sampler(ts.sample_tokens, m, ts.SampleOptions())(p, z, y)
    # chunk of L tokens: L iterations reach the sequential result exactly (triangular map)
    exact = ts.SampleOptions(jacobi_chunk=4, jacobi_max_iters=4, jacobi_tol=0.0)
    np.testing.assert_allclose(_jit_sampler(ts.sample_tokens, m, exact)(p, z, y), seq, atol=1e-5)
    tol = ts.SampleOptions(jacobi_chunk=8, jacobi_tol=1e-10)
    np.testing.assert_allclose(_jit_sampler(ts.sample_tokens, m, tol)(p, z, y), seq, atol=1e-4)
    # with class guidance + attention temperature (doubled cache)
    seq_g = _jit_sampler(ts.sample_tokens, m, GUIDED)(p, z, y)
    tol_g = ts.SampleOptions(guidance=1.5, attn_temp=0.7, jacobi_chunk=8, jacobi_tol=1e-10)
    np.testing.assert_allclose(_jit_sampler(ts.sample_tokens, m, tol_g)(p, z, y), seq_g,
                               atol=1e-4)


def test_tweedie_denoising_on_gaussian_toy():
    s, sigma = 0.5, 0.3  # clean x0 ~ N(0, s^2), y = x0 + sigma * eps ~ N(0, s^2 + sigma^2)
    k0, k1 = jax.random.split(jax.random.key(0))
    x0 = s * jax.random.normal(k0, (4000, 3))
    noisy = x0 + sigma * jax.random.normal(k1, x0.shape)
    log_p = lambda v: jnp.sum(-0.5 * v**2 / (s**2 + sigma**2), axis=-1)
    den = ts.tweedie_step(log_p, noisy, sigma)
    np.testing.assert_allclose(den, noisy * s**2 / (s**2 + sigma**2), rtol=1e-5)  # E[x0 | y]
    assert jnp.mean((den - x0) ** 2) < 0.8 * jnp.mean((noisy - x0) ** 2)


def test_model_log_prob_and_denoise(cond):
    m, p, x, y, z, logdet = cond
    log_prob = jax.jit(lambda p, x, y: ts.model_log_prob(m, p, x, y))
    lp = log_prob(p, x, y)
    expect = -0.5 * jnp.sum(z**2 + math.log(2 * math.pi), axis=(1, 2)) + N * D * logdet
    np.testing.assert_allclose(lp, expect, rtol=1e-5)
    den = jax.jit(lambda p, x, y: ts.denoise(m, p, x, y, 0.1))(p, x, y)
    # the step is sigma^2 * score; the score of the standard-normal-prior flow at x is finite
    # and points towards higher density: log p rises along it
    step = den - x
    assert bool(jnp.all(jnp.isfinite(step))) and float(jnp.abs(step).max()) > 0
    lp2 = log_prob(p, x + 0.1 * step, y)
    assert bool(jnp.all(lp2 > lp))


def test_vp_mode_inverse_and_prior_var():
    m = _model(num_classes=0, nvp=False)
    p = _random_params(m)
    x = jax.random.uniform(jax.random.key(1), (2, *SHAPE), minval=-1, maxval=1)
    z, logdet = jax.jit(lambda p, x: m.apply({"params": p}, x))(p, x)
    np.testing.assert_array_equal(logdet, 0.0)
    var = jnp.exp(p["prior_logvar"])
    xr = _jit_sampler(ts.sample_tokens, m, ts.SampleOptions())(p, z / jnp.sqrt(var), None)
    np.testing.assert_allclose(xr, patchify(x, 2), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Task


def _task(noise_type="gaussian", num_classes=10, nvp=True, **over):
    c = base_config()
    c.model = default_model_config(patch_size=2, channels=32, head_dim=16, num_blocks=2,
                                   layers_per_block=1, num_classes=num_classes, nvp=nvp,
                                   noise_type=noise_type, noise_std=0.1, drop_label=0.1, **over)
    return TarFlowTask(c, DataInfo.for_images(SHAPE, 10, 100))


@functools.cache
def _task_and_params(noise_type="gaussian", num_classes=10, nvp=True):
    """A task and random params of its shapes, cached per config (see ``_random_params``)."""
    task = _task(noise_type, num_classes, nvp)
    return task, _random_params(task.model, seed=3)


def _batch(b=4):
    img = jax.random.randint(jax.random.key(2), (b, *SHAPE), 0, 256).astype(jnp.uint8)
    return {"image": img, "label": jnp.arange(b, dtype=jnp.int32) % 10,
            "mask": jnp.ones((b,), jnp.float32)}


@functools.cache
def _jitted(task, name):
    if name == "loss_and_grad":
        return jax.jit(jax.value_and_grad(task.loss, has_aux=True))
    return jax.jit(getattr(task, name))


def test_task_init_is_near_identity():
    task, _ = _task_and_params("gaussian", 10, True)
    batch = _batch()
    params = jax.jit(task.init)(jax.random.key(0), batch)
    boxes = jax.tree.leaves(params, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
    assert all(isinstance(b, nn.LogicallyPartitioned) for b in boxes)
    params = nn.unbox(params)
    assert set(params) == {"blocks_0", "blocks_1"}
    np.testing.assert_array_equal(params["blocks_0"]["proj_out_kernel"], 0.0)
    assert params["blocks_0"]["class_embed"].shape == (10, 32)
    ev = _jitted(task, 'eval_batch')(params, batch, jax.random.key(2))
    # zero proj_out: the flow is a fixed affine map per token, bpd ~ N(0, 1) on [-1, 1] data
    assert 6.0 < float(jnp.mean(ev["bpd"])) < 11.0


@pytest.mark.parametrize("noise_type,nvp,classes", [("gaussian", True, 10),
                                                    ("uniform", False, 0)])
def test_task_loss_and_eval(noise_type, nvp, classes):
    task, params = _task_and_params(noise_type, classes, nvp)
    batch = _batch()
    (loss, metrics), grads = _jitted(task, "loss_and_grad")(
        params, batch, jax.random.key(1), jnp.int32(0))
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    np.testing.assert_allclose(metrics["flow_loss"], metrics["mse_z"] - metrics["logdet"],
                               rtol=1e-6)
    ev = _jitted(task, 'eval_batch')(params, batch, jax.random.key(2))
    expect = {"bpd", "loss"} | ({"bpd_cond"} if classes else set())
    assert set(ev) == expect and all(v.shape == (4,) for v in ev.values())
    assert task.best_metric == ("bpd" if noise_type == "uniform" else "loss")
    if noise_type == "uniform":  # same dequantised forward: bpd ln 2 = loss + log(128 sqrt(2 pi))
        np.testing.assert_allclose(ev["bpd"] * np.log(2),
                                   ev["loss"] + np.log(128) + 0.5 * np.log(2 * np.pi), rtol=1e-5)
    if not nvp:
        assert "prior_var_fit" in metrics
        assert np.abs(grads["prior_logvar"]).max() > 0


def test_label_dropout_uses_mean_embedding():
    task, params = _task_and_params("gaussian", 10, True)
    m = task.model
    x = jax.random.uniform(jax.random.key(0), (2, *SHAPE), minval=-1, maxval=1)
    f = jax.jit(lambda p, x, y: m.apply({"params": p}, x, y))
    z_null, _ = f(params, x, jnp.array([-1, -1]))
    p2 = jax.tree.map(lambda a: a, params)
    for t in range(2):  # a model whose class embeddings all equal the mean
        ce = p2[f"blocks_{t}"]["class_embed"]
        p2[f"blocks_{t}"]["class_embed"] = jnp.broadcast_to(ce.mean(0), ce.shape)
    z_mean, _ = f(p2, x, jnp.array([3, 7]))
    np.testing.assert_allclose(z_null, z_mean, atol=1e-5)


def test_eval_bpd_matches_official_formula():
    task, params = _task_and_params("gaussian", 10, True)
    batch = _batch()
    rng = jax.random.key(7)
    ev = _jitted(task, "eval_batch")(params, batch, rng)
    from jaxflows.data.transforms import uniform_dequantize
    x = uniform_dequantize(jax.random.split(rng)[0], batch["image"])
    # dequantisation convention: value v lands in [v/128 - 1, (v+1)/128 - 1)
    v = batch["image"].astype(jnp.float32)
    assert bool(jnp.all((x >= v / 128 - 1) & (x < (v + 1) / 128 - 1)))
    fwd = jax.jit(lambda p, x, y: task.model.apply({"params": p}, x, y))
    dim = 64
    for key, labels in [("bpd", -jnp.ones((4,), jnp.int32)), ("bpd_cond", batch["label"])]:
        z, logdet = fwd(params, x, labels)  # bpd: no label (mean class embedding), official
        log_p = jnp.sum(-0.5 * (z**2 + np.log(2 * np.pi)), axis=(1, 2)) - np.log(128) * dim
        np.testing.assert_allclose(ev[key], (-log_p / dim - logdet) / np.log(2), rtol=1e-5)


def test_sample_guidance_denoise_and_nan_retry(monkeypatch):
    task, params = _task_and_params("gaussian", 10, True)
    a = task.sample(params, jax.random.key(1), 4, guidance=1.0, class_label=3, denoise=True,
                    jacobi_chunk=4, batch_size=2)
    assert a.shape == (4, *SHAPE) and bool(jnp.all(jnp.isfinite(a)))
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # NaN detection: the first call gives NaN for sample 1, the retry is clean
    calls = []
    real = task._sample_fn

    def flaky(opts):
        fn = real(opts)

        def wrapped(p, z, y):
            x = fn(p, z, y)
            calls.append(1)
            return x.at[1].set(jnp.nan) if len(calls) == 1 else x

        return wrapped

    monkeypatch.setattr(task, "_sample_fn", flaky)
    s = task.sample(params, jax.random.key(1), 2, guidance=1.0, class_label=3, denoise=True,
                    jacobi_chunk=4)
    assert len(calls) == 2 and bool(jnp.all(jnp.isfinite(s)))


def test_bad_inputs():
    task, params = _task_and_params("gaussian", 10, True)
    with pytest.raises(ValueError, match="class id 10 out of range"):
        task.sample(params, jax.random.key(0), 2, class_label=10)
    with pytest.raises(ValueError, match="class id -3"):
        task.sample(params, jax.random.key(0), 2, class_label=[1, -3])
    uncond = _task("gaussian", 0)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample(params, jax.random.key(0), 2, guidance=1.0)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample(params, jax.random.key(0), 2, class_label=1)
    with pytest.raises(ValueError, match="jacobi_chunk 5"):
        uncond.sample(params, jax.random.key(0), 2, jacobi_chunk=5)
    c = base_config()
    c.model = default_model_config(patch_size=3)
    with pytest.raises(ValueError, match="8x8.*patch size 3"):
        TarFlowTask(c, DataInfo.for_images(SHAPE, 10, 100))
    c.model = default_model_config(patch_size=2, num_classes=5)
    with pytest.raises(ValueError, match="num_classes=5"):
        TarFlowTask(c, DataInfo.for_images(SHAPE, 10, 100))


def test_logit_preprocessing_logdet_inverse_and_bpd():
    task = _task("uniform", 0, logit_alpha=1e-3)
    params = _random_params(task.model, seed=4)
    x = jax.random.uniform(jax.random.key(3), (1, *SHAPE), minval=-1, maxval=0.999)

    def flat(v):  # pixels -> z, flattened
        return task._apply(params, v.reshape(1, *SHAPE), None)[0].reshape(-1)

    _, logdet = task._apply(params, x, None)
    _, slogdet = jnp.linalg.slogdet(jax.jacfwd(flat)(x.reshape(-1)))
    np.testing.assert_allclose(logdet[0] * 64, slogdet, rtol=1e-4)
    # the sampler maps flow space back through the sigmoid: forward(sample) returns the noise
    z = jax.random.normal(jax.random.key(4), (2, N, D))
    fn = task._sample_fn(task.resolve_sample_options())
    xs = fn(params, z, None)
    assert float(xs.min()) >= -1.0 and float(xs.max()) <= 1.0
    np.testing.assert_allclose(task._apply(params, xs, None)[0], z, atol=2e-3)
    # bits/dim still follows the official formula, with the logit's log-det inside logdet
    ev = jax.jit(task.eval_batch)(params, _batch(), jax.random.key(7))
    assert bool(jnp.all(jnp.isfinite(ev["bpd"])))
    np.testing.assert_allclose(ev["bpd"] * np.log(2),
                               ev["loss"] + np.log(128) + 0.5 * np.log(2 * np.pi), rtol=1e-5)
    with pytest.raises(ValueError, match="logit"):
        task.sample(params, jax.random.key(0), 2, denoise=True, denoise_sigma=0.1)


def test_logit_preprocessing_bad_config():
    with pytest.raises(ValueError, match="logit_alpha needs noise_type='uniform'"):
        _task("gaussian", 0, logit_alpha=1e-3)
    with pytest.raises(ValueError, match=r"logit_alpha=0.7 must be in \(0, 0.5\)"):
        _task("uniform", 0, logit_alpha=0.7)


def _load_config(name, row):
    # as the config loader does: the config file's directory is on sys.path while it loads
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(CONFIGS))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(CONFIGS))
    return mod.get_config(row)


@pytest.mark.parametrize("name,row,shape,millions", [
    ("tarflow_imagenet64", "uncond", (64, 64, 3), 460.0),
    ("tarflow_imagenet64", "cond", (64, 64, 3), 466.0),
    ("tarflow_afhq256", "cond", (256, 256, 3), 463.0),
    ("tarflow_mnist", "conditional_notebook", (28, 28, 1), 3.2),
])
def test_config_param_counts(name, row, shape, millions):
    n = count_params(model_from_config(_load_config(name, row), shape))
    assert abs(n / 1e6 - millions) / millions < 0.01, n


_MNIST_ROWS = ["likelihood", "conditional", "likelihood_notebook", "conditional_notebook", "smoke"]


@pytest.mark.parametrize("name,rows", [("tarflow_mnist", _MNIST_ROWS),
                                       ("tarflow_imagenet64", ["uncond", "bpd", "cond", "smoke"]),
                                       ("tarflow_afhq256", ["cond", "smoke"])])
def test_configs_build(name, rows):
    for row in rows:
        c = _load_config(name, row)
        assert c.model.name == "jaxflows.models.tarflow_task"
        assert c.optim.name == "adamw" and c.optim.b2 == 0.95
        assert ("layers", None) in tuple(c.sharding_rules)
    with pytest.raises(ValueError, match="unknown row"):
        _load_config(name, "nope")


def test_sample_return_both_and_temperature():
    task, params = _task_and_params("gaussian", 10, True)
    kw = dict(guidance=1.0, class_label=[1, 2, 3], batch_size=2)
    raw, den = task.sample(params, jax.random.key(3), 3, denoise=True, return_both=True, **kw)
    # the same draw as the separate calls: raw equals plain sampling, den equals denoise=True
    np.testing.assert_allclose(raw, task.sample(params, jax.random.key(3), 3, **kw), atol=1e-6)
    np.testing.assert_allclose(den, task.sample(params, jax.random.key(3), 3, denoise=True, **kw),
                               atol=1e-5)
    cold = task.sample(params, jax.random.key(3), 3, temperature=0.5, **kw)
    assert float(jnp.abs(cold - raw).max()) > 1e-3
    with pytest.raises(ValueError, match="return_both needs denoise"):
        task.sample(params, jax.random.key(3), 3, return_both=True)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        task.sample(params, jax.random.key(3), 3, temperature=0.0)


def test_final_eval_per_image_bpd():
    task, params = _task_and_params("uniform", 0, False)
    batch = _batch(4)
    batch["mask"] = jnp.array([1.0, 1.0, 1.0, 0.0])  # the last row is padding
    out = task.final_eval(params, lambda: [batch, batch], jax.random.key(0))
    bpd = out["per_example"]["bpd"]
    assert bpd.shape == (6,) and np.all(np.isfinite(bpd))
    assert out["bpd_median"] == pytest.approx(float(np.median(bpd)))
    assert out["bpd_max"] == pytest.approx(float(bpd.max()))
    assert out["num_bpd_over_8"] == int(np.sum(bpd > 8))
    assert out["bpd_sem"] == pytest.approx(float(bpd.std(ddof=1) / np.sqrt(6)))


def test_max_log_scale_bounds_expansion_and_stays_exact():
    m = TarFlowModel(image_shape=SHAPE, patch_size=2, width=32, num_blocks=2, layers_per_block=1,
                     head_dim=16, max_log_scale=0.5)
    params = _random_params(m, seed=1)
    for t in range(2):  # large raw log-scales (not shifts), so the clamp is active
        k = params[f"blocks_{t}"]["proj_out_kernel"]
        params[f"blocks_{t}"]["proj_out_kernel"] = k.at[:, :D].multiply(50.0)
    x = jax.random.uniform(jax.random.key(0), (1, *SHAPE), minval=-1, maxval=1)
    a, _ = m.apply({"params": params}, patchify(x, 2), None, method=lambda mod, v, y:
                   mod.blocks[0].affine_params(v, y))
    assert 0.3 < float(jnp.abs(a).max()) <= 0.5  # tanh saturates to the bound in float32

    def flat(v):
        return m.apply({"params": params}, v.reshape(1, *SHAPE))[0].reshape(-1)

    _, logdet = m.apply({"params": params}, x)
    _, slogdet = jnp.linalg.slogdet(jax.jacfwd(flat)(x.reshape(-1)))
    np.testing.assert_allclose(logdet[0] * 64, slogdet, rtol=1e-4)
    z, _ = m.apply({"params": params}, x)
    x_back = ts.sample_tokens(m, params, z, None, ts.SampleOptions())
    np.testing.assert_allclose(x_back, patchify(x, 2), atol=1e-3)  # saturated, sharper maps


# ---------------------------------------------------------------------------------------------
# Engine v2: task module, example spec, sample options, sample writer


def test_task_module_and_example_spec():
    assert TASK is TarFlowTask
    assert load_task_class("tarflow") is TarFlowTask
    assert load_task_class(default_model_config().name) is TarFlowTask
    cond, _ = _task_and_params("gaussian", 10, True)
    assert cond.example_spec() == {"image": jax.ShapeDtypeStruct(SHAPE, jnp.uint8),
                                   "label": jax.ShapeDtypeStruct((), jnp.int32)}
    uncond = _task("gaussian", 0)  # labelled data, unconditional model: no label needed
    assert uncond.example_spec() == {"image": jax.ShapeDtypeStruct(SHAPE, jnp.uint8)}


def test_sample_options_are_sample_keywords():
    import inspect

    params = inspect.signature(TarFlowTask.sample).parameters
    assert set(TarFlowTask.sample_options) <= set(params)
    assert "return_both" not in TarFlowTask.sample_options
    assert TarFlowTask.sample_options["class_label"] == -2


def test_sample_option_errors_name_the_option():
    task, params = _task_and_params("gaussian", 10, True)
    uncond = _task("gaussian", 0)
    key = jax.random.key(0)
    cases = [
        (task, dict(class_label=12), r"config\.sample\.class_label.*class id 12 out of range"),
        (task, dict(class_label=[0, 1, 2]), r"config\.sample\.class_label must be an int"),
        (uncond, dict(class_label=3), r"config\.sample\.class_label=3 .*unconditional"),
        (uncond, dict(guidance=1.0), r"config\.sample\.guidance=1.0 .*unconditional"),
        (task, dict(temperature=-1.0), r"config\.sample\.temperature must be > 0"),
        (task, dict(temperature=float("nan")), r"config\.sample\.temperature must be > 0"),
        (task, dict(jacobi_chunk=5), r"config\.sample\.jacobi_chunk: jacobi_chunk 5 does not"),
        (task, dict(jacobi_chunk=-3), r"config\.sample\.jacobi_chunk=-3 must be"),
        (task, dict(attn_temp=0.0), r"config\.sample\.attn_temp=0.0 must be > 0"),
        (task, dict(batch_size=-1), r"config\.sample\.batch_size=-1 must be >= 0"),
    ]
    for t, kw, match in cases:
        with pytest.raises(ConfigError, match=match) as err:
            t.sample(params, key, 2, **kw)
        assert "\n" not in str(err.value), kw
    c = base_config()
    c.model = default_model_config(patch_size=2, jacobi_chunk=5)
    with pytest.raises(ConfigError, match=r"config\.model\.jacobi_chunk=5"):
        TarFlowTask(c, DataInfo.for_images(SHAPE, 10, 100))
    c.model = default_model_config(patch_size=2)
    c.model.chanels = 64
    with pytest.raises(ConfigError, match=r"config\.model\.chanels .*config\.model\.channels"):
        TarFlowTask(c, DataInfo.for_images(SHAPE, 10, 100))


def test_sample_cli_defaults_mean_config_defaults():
    """Every ``sample_options`` default passed explicitly (as ``jaxflows sample`` does) gives
    the same draw as a call without options: NaN / -1 / 0 fall back on config.model, class -2
    draws random classes like ``class_label=None``."""
    task, params = _task_and_params("gaussian", 10, True)
    plain = task.sample(params, jax.random.key(5), 3)
    defaults = task.sample(params, jax.random.key(5), 3, **TarFlowTask.sample_options)
    np.testing.assert_array_equal(defaults, plain)


def test_write_samples_png(tmp_path):
    from PIL import Image

    task, _ = _task_and_params("gaussian", 10, True)
    images = jax.random.uniform(jax.random.key(0), (4, *SHAPE))
    path = task.write_samples(images, str(tmp_path / "grid" / "samples.png"))
    assert path == str(tmp_path / "grid" / "samples.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (2 * (8 + 2) + 2, 2 * (8 + 2) + 2)  # 2x2 grid, 2-pixel padding
