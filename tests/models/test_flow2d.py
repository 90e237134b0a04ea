"""The RealNVP density task on vectors (jaxflows.models.flow2d), tested without the engine."""

from __future__ import annotations

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxflows.data.toy2d import DENSITIES
from jaxflows.errors import ConfigError, UserError
from jaxflows.models import flow2d
from jaxflows.train.config import base_config
from jaxflows.train.task import DataInfo, check_example_spec, load_task_class

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**model):
    c = base_config()
    c.model = flow2d.default_model_config()
    for k, v in model.items():
        c.model[k] = v
    return c


def _info(dim=2, with_log_density=True):
    spec = {"x": jax.ShapeDtypeStruct((dim,), jnp.float32)}
    if with_log_density:
        spec["log_density"] = jax.ShapeDtypeStruct((), jnp.float32)
    return DataInfo(spec, num_train=50000, num_eval=5000)


def _task(dim=2, **model):
    return flow2d.Flow2DTask(_config(**model), _info(dim))


def _random_params(task, key, scale=0.3):
    """Params with every leaf perturbed, so couplings and actnorm are far from the identity."""
    params = nn.unbox(task.init(jax.random.key(0), {"x": jnp.zeros((2, task.dim))}))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


def test_task_loads_by_module_path_and_spec():
    assert load_task_class("jaxflows.models.flow2d") is flow2d.Flow2DTask
    task = _task()
    spec = check_example_spec(task.example_spec(), "flow2d")
    assert spec == {"x": jax.ShapeDtypeStruct((2,), jnp.float32)}  # log_density is not fed
    assert task.best_metric == "nll"
    assert flow2d.Flow2DTask.sample_options == {"temperature": 1.0}
    assert flow2d.default_model_config().name == "jaxflows.models.flow2d"


def test_init_params_carry_logical_names():
    task = _task(num_layers=2, hidden=(16, 8))
    params = task.init(jax.random.key(0), {"x": jnp.zeros((4, 2))})
    boxed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert boxed and all(isinstance(b, nn.LogicallyPartitioned) for b in boxed)
    cond = params["steps_0"]["conditioner"]
    assert cond["dense_0"]["kernel"].names == ("latent", "hidden")
    assert cond["dense_1"]["kernel"].names == ("mlp", "hidden")
    assert cond["out"]["kernel"].names == ("mlp", "latent")
    assert params["steps_1"]["actnorm_loc"].names == ("latent",)
    shapes = jax.tree.map(lambda a: a.shape, nn.unbox(params))
    assert shapes["steps_1"]["conditioner"]["out"]["kernel"] == (8, 4)


def test_untrained_flow_is_the_base_up_to_permutation():
    task = _task()
    params = task.init(jax.random.key(0), {"x": jnp.zeros((4, 2))})
    x = jax.random.normal(jax.random.key(1), (10, 2))
    expected = -0.5 * jnp.sum(x**2, -1) - jnp.log(2 * jnp.pi)
    np.testing.assert_allclose(task.log_prob(params, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,permutation", [(2, "reverse"), (3, "random"), (5, "reverse")])
def test_log_det_matches_jacobian(dim, permutation):
    task = _task(dim, num_layers=3, hidden=(16, 16), permutation=permutation)
    params = _random_params(task, jax.random.key(2))
    fwd = jax.jit(lambda z: task._apply(params, z, method=flow2d.Flow2D.forward_and_log_det))
    inv = jax.jit(lambda x: task._apply(params, x, method=flow2d.Flow2D.inverse_and_log_det))
    z = jax.random.normal(jax.random.key(3), (6, dim))
    x, ld = fwd(z)
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda v: fwd(v[None])[0][0])))(z)  # [6, D, D]
    sign, logabs = jnp.linalg.slogdet(jac)
    assert bool(jnp.all(sign != 0))
    # float32 slogdet of these random (cond. number up to ~1e4) Jacobians is good to ~1e-3
    np.testing.assert_allclose(ld, logabs, rtol=1e-3, atol=1e-3)
    z_back, ld_inv = inv(x)
    np.testing.assert_allclose(z_back, z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ld_inv, -ld, rtol=1e-4, atol=1e-4)
    # log p(x) = log N(inverse(x)) + log|det d inverse / dx|  (distrax.Transformed)
    base = -0.5 * jnp.sum(z_back**2, -1) - 0.5 * dim * jnp.log(2 * jnp.pi)
    np.testing.assert_allclose(task.log_prob(params, x), base + ld_inv, rtol=1e-4, atol=1e-4)
    # jit == no jit
    eager = task._apply(params, z, method=flow2d.Flow2D.forward_and_log_det)
    np.testing.assert_allclose(eager[0], x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eager[1], ld, rtol=1e-5, atol=1e-5)


def test_loss_eval_batch_and_mask():
    task = _task(num_layers=2, hidden=(16,))
    params = _random_params(task, jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (8, 2))
    nll = -task.log_prob(params, x)
    loss, metrics = task.loss(params, {"x": x}, jax.random.key(0), jnp.int32(0))
    np.testing.assert_allclose(loss, jnp.mean(nll), rtol=1e-6)
    np.testing.assert_allclose(metrics["nll"], loss)
    mask = jnp.asarray([1, 1, 1, 0, 0, 0, 0, 0], jnp.int32)
    masked, _ = task.loss(params, {"x": x, "mask": mask}, jax.random.key(0), jnp.int32(0))
    np.testing.assert_allclose(masked, jnp.mean(nll[:3]), rtol=1e-6)
    ev = task.eval_batch(params, {"x": x}, jax.random.key(0))
    assert set(ev) == {"nll", "loss"} and ev["nll"].shape == (8,)
    np.testing.assert_allclose(ev["nll"], nll, rtol=1e-6)


def test_bfloat16_conditioner_keeps_float32_flow():
    c = _config(num_layers=2, hidden=(16,))
    c.dtype = "bfloat16"
    task = flow2d.Flow2DTask(c, _info())
    params = task.init(jax.random.key(0), {"x": jnp.zeros((2, 2))})
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.unbox(params)))
    lp = task.log_prob(params, jnp.ones((3, 2)))
    assert lp.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(lp)))


def test_adam_lowers_the_nll_on_moons():
    task = _task(num_layers=4, hidden=(64, 64))
    x = jnp.asarray(DENSITIES["moons"].sample(np.random.default_rng(0), 5000))
    held_out = jnp.asarray(DENSITIES["moons"].sample(np.random.default_rng(1), 2000))
    params = nn.unbox(task.init(jax.random.key(0), {"x": x[:2]}))
    opt = optax.adam(2e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(
            lambda p: task.loss(p, {"x": batch}, jax.random.key(0), jnp.int32(0))[0])(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    before = float(-jnp.mean(task.log_prob(params, held_out)))
    rng = np.random.default_rng(2)
    for _ in range(300):
        params, state, _ = step(params, state, x[rng.integers(0, len(x), 128)])
    after = float(-jnp.mean(task.log_prob(params, held_out)))
    assert before == pytest.approx(2.84, abs=0.1)  # N(0, I) on unit-std data
    assert after < before - 0.6, (before, after)
    true_nll = float(-np.mean(DENSITIES["moons"].log_density(np.asarray(held_out, np.float64))))
    assert after > true_nll - 0.1  # cannot beat the true density by more than noise


def test_sample_options_and_determinism():
    task = _task(num_layers=3, hidden=(16,))
    params = _random_params(task, jax.random.key(6))
    a = task.sample(params, jax.random.key(7), 300)
    b = task.sample(params, jax.random.key(7), 300)
    assert a.shape == (300, 2) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    # temperature T: x = f(T z); the same z drawn for any T
    fwd = lambda z: task._apply(params, z, method=flow2d.Flow2D.forward_and_log_det)[0]
    z = jax.random.normal(jax.random.key(7), (300, 2), jnp.float32)
    np.testing.assert_allclose(a, fwd(z), rtol=1e-5, atol=1e-5)
    cold = task.sample(params, jax.random.key(7), 300, temperature=0.5)
    np.testing.assert_allclose(cold, fwd(0.5 * z), rtol=1e-5, atol=1e-5)
    frozen = np.asarray(task.sample(params, jax.random.key(7), 5, temperature=0.0))
    np.testing.assert_allclose(frozen, np.broadcast_to(frozen[0], frozen.shape), atol=1e-6)
    with pytest.raises(UserError, match="unknown sample option"):
        task.sample(params, jax.random.key(7), 5, guidance=2.0)
    with pytest.raises(UserError, match="temperature"):
        task.sample(params, jax.random.key(7), 5, temperature=-1.0)


def test_write_samples_png(tmp_path):
    task = _task(num_layers=2, hidden=(16,))
    params = task.init(jax.random.key(0), {"x": jnp.zeros((2, 2))})
    samples = task.sample(params, jax.random.key(1), 500)
    path = task.write_samples(samples, str(tmp_path / "sub" / "samples.png"))
    assert path == str(tmp_path / "sub" / "samples.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["samples.png"]  # no temp left
    task3 = _task(3, num_layers=2, hidden=(16,))
    params3 = task3.init(jax.random.key(0), {"x": jnp.zeros((2, 3))})
    with pytest.raises(UserError, match="2-D points"):
        task3.write_samples(task3.sample(params3, jax.random.key(1), 10), str(tmp_path / "x.png"))


def test_save_scatter_handles_nonfinite_and_bad_shapes(tmp_path):
    from jaxflows.eval.scatter import save_scatter

    pts = np.random.default_rng(0).normal(size=(50, 2))
    pts[3] = np.nan
    out = save_scatter(pts, tmp_path / "s.png", title="t", lim=4.0)
    assert os.path.getsize(out) > 0
    with pytest.raises(UserError, match=r"\[N, 2\]"):
        save_scatter(np.zeros((4, 3)), tmp_path / "bad.png")


def test_config_errors():
    with pytest.raises(ConfigError, match="'x'"):
        flow2d.Flow2DTask(_config(), DataInfo({"image": jax.ShapeDtypeStruct((8, 8, 1),
                                                                             jnp.uint8)}, 10))
    with pytest.raises(ConfigError, match="D >= 2"):
        flow2d.Flow2DTask(_config(), _info(dim=1))
    with pytest.raises(ConfigError, match="permutation"):
        _task(permutation="shuffle")
    with pytest.raises(ConfigError, match="num_layers"):
        _task(num_layers=0)
    with pytest.raises(ConfigError, match="hidden"):
        _task(hidden=())


def _experiment_config(row):
    path = os.path.join(REPO, "experiments", "configs", "flow2d_toy.py")
    spec = importlib.util.spec_from_file_location("flow2d_toy_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(row)


@pytest.mark.parametrize("row", ["gmm5", "grid", "moons", "rings", "spiral", "swissroll",
                                 "smoke"])
def test_experiment_config_rows(row):
    c = _experiment_config(row)
    assert c.model.name == "jaxflows.models.flow2d"
    assert c.data.name == f"toy2d/{'moons' if row == 'smoke' else row}"
    for size in (c.train.batch_size, c.train.eval_batch_size):
        assert size % 8 == 0  # runs on 8 (fake) devices
    assert 5000 % c.train.eval_batch_size == 0  # validation and test: 5,000 points each
    task = flow2d.Flow2DTask(c, _info())
    params = task.init(jax.random.key(0), {"x": jnp.zeros((8, 2))})
    assert jax.tree.leaves(params)
    with pytest.raises(ValueError, match="unknown row"):
        _experiment_config("nope")


def test_experiment_config_uses_only_task_keys():
    known = set(flow2d.default_model_config())
    for row in ("moons", "smoke"):
        assert set(_experiment_config(row).model) <= known
