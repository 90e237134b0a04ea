"""StarFlowTask: the loss falls, the frozen autoencoder stays bitwise unchanged (directly and
through the engine's init_from + freeze), condition dropout, the text prefix, sampling (shapes,
guidance 0 = the unguided sampler, the score denoiser), bad inputs, and the parameter counts of
the experiment configs (eval_shape only). Tiny models: 8x8 images, a one-level random
autoencoder (4x4x2 latents: 16 tokens of 2 dims), width 32."""

import functools
import importlib.util
import inspect
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxflows.errors import ConfigError, UserError
from jaxflows.models import starflow_sampling as ss
from jaxflows.models.starflow_config import default_model_config
from jaxflows.models.starflow_task import StarFlowTask
from jaxflows.train.config import base_config
from jaxflows.train.optim import frozen_mask, make_optimizer
from jaxflows.train.task import DataInfo, load_task_class

SHAPE = (8, 8, 1)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "experiments", "configs")


def _config(**over):
    c = base_config()
    kw = dict(width=32, layers_per_block=(1, 1), head_dim=32, num_classes=10,
              autoencoder="random", ae=dict(channels=(4,), latent_channels=2),
              latent_scale=4.0, noise_std=0.3, drop_label=0.1)
    kw.update(over)
    c.model = default_model_config(**kw)
    c.optim.freeze = ("autoencoder/.*",)
    return c


def _task(config=None, shape=SHAPE, num_classes=10):
    return StarFlowTask(config or _config(), DataInfo.for_images(shape, num_classes, 100))


@functools.cache
def _class_setup():
    task = _task()
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), {}))
    # a non-trivial flow: small random proj_out kernels (zero at init)
    rs = np.random.default_rng(0)
    for blk in params["flow"].values():
        blk["proj_out_kernel"] = jnp.asarray(0.05 * rs.standard_normal(
            blk["proj_out_kernel"].shape), jnp.float32)
    return task, params


def _batch(b=16, seed=2):
    img = jax.random.randint(jax.random.key(seed), (b, *SHAPE), 0, 256).astype(jnp.uint8)
    return {"image": img, "label": jnp.arange(b, dtype=jnp.int32) % 10}


# ------------------------------------------------------------------------------------------
# training


def test_loss_falls_and_the_frozen_autoencoder_is_bitwise_unchanged():
    task = _task()
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), {}))
    assert set(params) == {"flow", "autoencoder"} and set(params["autoencoder"]) == {
        "encoder", "decoder"}
    assert task.latent_shape == (4, 4, 2) and task.model.num_tokens == 16
    frozen = frozen_mask(params, task.config.optim.freeze)
    tx = make_optimizer(task.config.optim, optax.constant_schedule(3e-3), frozen)
    batch = _batch()

    @jax.jit
    def step(p, s, i):
        (loss, m), g = jax.value_and_grad(task.loss, has_aux=True)(
            p, batch, jax.random.fold_in(jax.random.key(1), i), i)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, m, g

    p, s, losses = params, tx.init(params), []
    for i in range(8):
        p, s, loss, m, g = step(p, s, i)
        losses.append(float(loss))
        if i == 0:  # no gradient reaches the autoencoder (stop_gradient)
            assert all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(g["autoencoder"]))
            assert set(m) >= {"nll", "loss_z", "loss_logdet", "latent_norm", "cond_drop_frac"}
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    for a, b in zip(jax.tree.leaves(params["autoencoder"]), jax.tree.leaves(p["autoencoder"])):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert not np.array_equal(params["flow"]["blocks_1"]["proj_out_kernel"],
                              p["flow"]["blocks_1"]["proj_out_kernel"])

    ev = jax.jit(task.eval_batch)(p, batch, jax.random.key(3))
    assert set(ev) == {"loss", "nll", "bpd"} and all(v.shape == (16,) for v in ev.values())
    np.testing.assert_allclose(ev["bpd"], ev["nll"] / math.log(2), rtol=1e-6)
    # loss = nll (without 0.5 log 2 pi) + 1e-4 * latent norm >= nll - 0.5 log 2 pi
    assert np.all(ev["loss"] >= ev["nll"] - 0.5 * math.log(2 * math.pi) - 1e-6)


@pytest.mark.slow
def test_engine_loads_the_autoencoder_with_init_from_and_keeps_it_frozen(tmp_path):
    from jaxflows.data.registry import prepare
    from jaxflows.train import train
    from jaxflows.train.pretrained import read_tree, save_params

    data_dir = str(tmp_path / "data")
    prepare("digits", data_dir)
    ae_params = nn.unbox(_task().init(jax.random.key(7), {}))["autoencoder"]
    ae_params = jax.tree.map(lambda a: np.asarray(a) * 1.5, ae_params)  # not the fresh init
    ckpt = save_params(str(tmp_path / "ae_params"), ae_params)
    c = _config(autoencoder=ckpt)
    c.init_from = ({"path": ckpt, "source": "params", "target": "autoencoder"},)
    c.data.name, c.data.data_dir = "digits", data_dir
    c.train.batch_size, c.train.num_steps, c.train.log_every_steps = 32, 3, 1
    c.train.eval_batch_size = 200
    c.train.eval_every_epochs, c.train.progress_bar = 0.0, False
    c.optim.name, c.optim.weight_decay = "adamw", 0.1  # no decay on frozen leaves either
    wd = str(tmp_path / "run")
    train(c, wd, final_eval=False)
    got = read_tree(wd)["params"]
    for a, b in zip(jax.tree.leaves(ae_params), jax.tree.leaves(got["autoencoder"])):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert np.abs(got["flow"]["blocks_0"]["proj_out_kernel"]).max() > 0  # the flow trained


def test_labels_dropped_at_the_configured_rate():
    task = _task(_config(drop_label=0.1))
    y = jnp.arange(40_000, dtype=jnp.int32) % 10
    dropped, flags = task.drop_labels(jax.random.key(0), y)
    frac = float(jnp.mean(flags))
    assert abs(frac - 0.1) < 0.006, frac
    np.testing.assert_array_equal(np.asarray(dropped)[np.asarray(flags)], 10)  # null id K
    np.testing.assert_array_equal(np.asarray(dropped)[~np.asarray(flags)],
                                  np.asarray(y)[~np.asarray(flags)])
    cond, flags = task.condition({"image": jnp.zeros((4, *SHAPE), jnp.uint8),
                                  "label": jnp.arange(4, dtype=jnp.int32)})  # eval: no drop
    np.testing.assert_array_equal(cond, np.arange(4))
    assert not bool(jnp.any(flags))


def test_text_prefix_on_ready_made_latents():
    """autoencoder='none' with a float 'latent' field, and text features + mask."""
    c = _config(num_classes=0, text_len=3, text_dim=5, autoencoder="none", latent_scale=0.5)
    c.optim.freeze = ()
    spec = {"latent": jax.ShapeDtypeStruct((4, 4, 2), jnp.float32),
            "text": jax.ShapeDtypeStruct((3, 5), jnp.float32),
            "text_mask": jax.ShapeDtypeStruct((3,), jnp.int32)}
    task = StarFlowTask(c, DataInfo(spec, 100))
    assert task.example_spec() == spec and task.ae is None
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), {}))
    assert set(params) == {"flow"}
    assert params["flow"]["blocks_1"]["proj_txt_kernel"].shape == (5, 32)
    assert "proj_txt_kernel" not in params["flow"]["blocks_0"]  # cond_top_only
    params["flow"]["blocks_1"]["proj_out_kernel"] = 0.05 * jax.random.normal(
        jax.random.key(1), params["flow"]["blocks_1"]["proj_out_kernel"].shape)
    rs = np.random.default_rng(0)
    batch = {"latent": jnp.asarray(rs.standard_normal((4, 4, 4, 2)), jnp.float32),
             "text": jnp.asarray(rs.standard_normal((4, 3, 5)), jnp.float32),
             "text_mask": jnp.asarray([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], jnp.int32)}
    (loss, _), g = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(
        params, batch, jax.random.key(2), 0)
    assert np.isfinite(loss) and np.abs(g["flow"]["blocks_1"]["proj_txt_kernel"]).max() > 0
    ev = jax.jit(task.eval_batch)
    loss_of = lambda b: np.asarray(ev(params, b, jax.random.key(3))["loss"])  # noqa: E731
    base = loss_of(batch)
    padded = loss_of(dict(batch, text=batch["text"].at[:, 2].add(5.0)))  # rows 0, 1, 3: padding
    np.testing.assert_allclose(padded[[0, 1, 3]], base[[0, 1, 3]], rtol=1e-6)
    assert not np.allclose(padded[2], base[2])
    assert not np.allclose(loss_of(dict(batch, text=batch["text"] + 1.0)), base)
    # guided text sampling with explicit null features; latents come back unscaled (float)
    out = task.sample(params, jax.random.key(4), 2, guidance=2.0, text=batch["text"][:2],
                      text_mask=batch["text_mask"][:2], null_text=jnp.zeros((3, 5)),
                      denoise=False)
    assert out.shape == (2, 4, 4, 2) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


# ------------------------------------------------------------------------------------------
# sampling


def test_sample_shapes_guidance_zero_and_denoise():
    task, params = _class_setup()
    m, flow = task.model, params["flow"]
    key = jax.random.key(5)
    labels = jnp.array([0, 1, 10])
    plain = task.sample(params, key, 3, guidance=0.0, class_label=[0, 1, -1], denoise=False,
                        return_latents=True)
    # the same draw through the unguided sampler
    z = jax.random.normal(jax.random.fold_in(jax.random.split(key)[1], 0), (3, 16, 2))
    ref = jax.jit(lambda p, z, y: m.apply({"params": p}, ss.sample_tokens(m, p, z, y),
                                          method="from_tokens"))(flow, z, labels)
    np.testing.assert_allclose(plain, ref, atol=1e-5)
    # the guided path with a vanishing weight is the unguided sampler too
    tiny = task.sample(params, key, 3, guidance=1e-7, class_label=[0, 1, -1], denoise=False,
                       return_latents=True)
    np.testing.assert_allclose(tiny, plain, atol=1e-4)

    # denoise: one score step x - sigma^2 grad NLL(x), NLL checked by finite differences
    den = task.sample(params, key, 3, guidance=0.0, class_label=[0, 1, -1], denoise=True,
                      return_latents=True)
    sigma = task.noise_std
    g = (plain - den) / sigma**2
    nll = jax.jit(lambda x: jnp.sum(task.nll_sum(flow, x, labels)))
    v = jax.random.normal(jax.random.key(6), plain.shape)
    eps = 1e-2
    fd = (nll(plain + eps * v) - nll(plain - eps * v)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(g * v)), float(fd), rtol=2e-2)
    assert float(nll(den)) < float(nll(plain))

    images = task.sample(params, key, 3, guidance=0.0, class_label=[0, 1, -1])  # denoised
    assert images.shape == (3, *SHAPE) and images.dtype == jnp.uint8
    np.testing.assert_array_equal(images, jax.jit(task.decode)(params, den))


def test_write_samples(tmp_path):
    task, _ = _class_setup()
    imgs = np.random.default_rng(0).integers(0, 256, (5, *SHAPE)).astype(np.uint8)
    path = task.write_samples(imgs, str(tmp_path / "grid.png"))
    assert os.path.getsize(path) > 0
    with pytest.raises(UserError, match=r"\.npy"):
        task.write_samples(imgs.astype(np.float32), str(tmp_path / "lat.png"))
    task.write_samples(imgs.astype(np.float32), str(tmp_path / "lat.npy"))
    assert np.load(tmp_path / "lat.npy").shape == imgs.shape


# ------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_name_the_problem():
    with pytest.raises(ConfigError, match="latent_scale=0.0 is not set"):
        _task(_config(latent_scale=0.0))
    c = _config(autoencoder="runs/some_ae", latent_scale=0.0)
    c.init_from = ({"path": "runs/some_ae", "source": "best_params",
                    "target": "autoencoder"},)
    with pytest.raises(ConfigError, match="some_ae/latent_scale.json is missing"):
        _task(c)
    with pytest.raises(ConfigError, match="init_from loads nothing into 'autoencoder'"):
        _task(_config(autoencoder="runs/some_ae"))
    c = _config()
    c.optim.freeze = ()
    with pytest.raises(ConfigError, match="autoencoder must be frozen"):
        _task(c)
    with pytest.raises(ConfigError, match="10x10 do not fit the autoencoder"):
        _task(_config(ae=dict(channels=(4, 4))), shape=(10, 10, 1))
    with pytest.raises(ConfigError, match="num_classes=10 but the data has 3 classes"):
        _task(num_classes=3)
    with pytest.raises(ConfigError, match="config.model.widht"):
        c = _config()
        c.model.widht = 3
        _task(c)
    with pytest.raises(ConfigError, match="text_len=3 and text_dim=0"):
        _task(_config(num_classes=0, text_len=3))
    spec = {"image": jax.ShapeDtypeStruct(SHAPE, jnp.uint8),
            "text": jax.ShapeDtypeStruct((4, 5), jnp.float32),
            "text_mask": jax.ShapeDtypeStruct((4,), jnp.int32)}
    with pytest.raises(ConfigError, match=r"text features are \[4, 5\]"):
        StarFlowTask(_config(num_classes=0, text_len=3, text_dim=5), DataInfo(spec, 10))
    task, params = _class_setup()
    with pytest.raises(ConfigError, match="class id 10 out of range"):
        task.sample(params, jax.random.key(0), 2, class_label=10)
    with pytest.raises(ConfigError, match="class id -3"):
        task.sample(params, jax.random.key(0), 2, class_label=[1, -3])
    with pytest.raises(ConfigError, match="rule"):
        task.sample(params, jax.random.key(0), 2, rule="cubic")
    with pytest.raises(ConfigError, match="jacobi_chunk=5"):
        task.sample(params, jax.random.key(0), 2, jacobi_chunk=5)
    uncond = _task(_config(num_classes=0))
    with pytest.raises(ConfigError, match="unconditional"):
        uncond.sample(params, jax.random.key(0), 2, guidance=1.0)
    with pytest.raises(ConfigError, match="no classes"):
        uncond.sample(params, jax.random.key(0), 2, class_label=1)


def test_task_module_and_sample_options():
    assert load_task_class("starflow") is StarFlowTask
    assert load_task_class(default_model_config().name) is StarFlowTask
    sig = inspect.signature(StarFlowTask.sample).parameters
    assert set(StarFlowTask.sample_options) <= set(sig)
    task, _ = _class_setup()
    opts = task.resolve_sample_options(**{k: StarFlowTask.sample_options[k] for k in
                                          ("guidance", "rule", "annealed", "jacobi_chunk")})
    assert opts == ss.SampleOptions(guidance=0.0, rule="gaussian", annealed=False,
                                    jacobi_chunk=0, jacobi_max_iters=32, jacobi_tol=1e-3)


# ------------------------------------------------------------------------------------------
# experiment configs (eval_shape: nothing allocated)


def _load_config(name, row):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(CONFIGS,
                                                                              f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, CONFIGS)  # as the config loader does (tarflow_recipe)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(CONFIGS)
    return mod.get_config(row)


def _num_params(config):
    from jaxflows.train.info import _info_data
    from jaxflows.train.task import build_task

    task = build_task(config, _info_data(config))
    shapes = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0), {})))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes)), task


@pytest.mark.parametrize("name,row,count", [
    ("starflow_imagenet256", "cond", 1_412_255_816),
    ("starflow_t2i256", "t2i", 3_858_281_544),
])
def test_official_configs_have_the_official_parameter_counts(name, row, count):
    config = _load_config(name, row)
    n, task = _num_params(config)
    assert n == count
    assert task.ae is None and task.latent_shape == (32, 32, 4)


def test_mnist_rows_are_the_same_size_and_build():
    cpu = _load_config("starflow_mnist", "cpu")
    cpu.model.latent_scale = 1.0  # the autoencoder workdir may not exist here
    n_cpu, task = _num_params(cpu)
    assert task.latent_shape == (7, 7, 4) and task.model.num_tokens == 49
    assert cpu.init_from[0]["target"] == "autoencoder" and cpu.optim.freeze == (
        "autoencoder/.*",)
    from jaxflows.models.tarflow import count_params
    from jaxflows.models.tarflow_config import model_from_config

    n_pix = count_params(model_from_config(_load_config("starflow_mnist", "pixel_cpu"),
                                           (28, 28, 1)))
    assert abs(n_pix - n_cpu) / n_cpu < 0.10, (n_pix, n_cpu)
    # the uniform-depth twin of the speed comparison: the same size, five 2-layer blocks
    uniform = _load_config("starflow_mnist", "uniform_cpu")
    uniform.model.latent_scale = 1.0
    n_uni, task_uni = _num_params(uniform)
    assert task_uni.model.layers_per_block == (2, 2, 2, 2, 2)
    assert task.model.layers_per_block == (2, 2, 6)
    assert abs(n_uni - n_cpu) / n_cpu < 0.10, (n_uni, n_cpu)
    with pytest.raises(ValueError, match="unknown row"):
        _load_config("starflow_mnist", "nope")
