"""Flow matching (jaxflows.models.flow_matching): the rectified-flow loss and the ODE likelihood
checked on Gaussian targets whose optimal velocity field is known in closed form.

Target ``N(mu, sigma^2 I_D)``, noise ``N(0, I)``, ``x_t = (1 - t) eps + t x``: ``x_t`` is
``N(t mu, s_t^2 I)`` with ``s_t^2 = (1 - t)^2 + t^2 sigma^2``, and the optimal field is the
conditional mean ``v*(x, t) = E[x - eps | x_t = x] = mu + a(t) (x - t mu)``,
``a(t) = (t sigma^2 - (1 - t)) / s_t^2 = s_t' / s_t``. Its loss at time ``t`` is the conditional
variance ``D sigma^2 / s_t^2``, and over ``t ~ U[0, 1]`` it is ``D sigma pi / 2``; the flow of
``v*`` maps ``N(0, I)`` exactly onto the target.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.errors import ConfigError, UserError
from jaxflows.models import flow_matching as fm
from jaxflows.train.config import base_config
from jaxflows.train.task import DataInfo, check_example_spec, load_task_class


def analytic_velocity(mu, sigma):
    mu = jnp.asarray(mu, jnp.float32)

    def v(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:-1])[..., None]
        s2 = (1.0 - t) ** 2 + t**2 * sigma**2
        a = (t * sigma**2 - (1.0 - t)) / s2
        return mu + a * (x - t * mu)

    return v


def gaussian_log_density(x, mu, sigma):
    d = x.shape[-1]
    return (-0.5 * np.sum((np.asarray(x, np.float64) - mu) ** 2, -1) / sigma**2
            - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi))


def _config(**model):
    c = base_config()
    c.model = fm.default_model_config()
    c.model.width = 16
    c.model.num_blocks = 2
    c.model.freq_dim = 8
    for k, v in model.items():
        c.model[k] = v
    return c


def _task(dim=2, field="x", **model):
    spec = {field: jax.ShapeDtypeStruct((dim,), jnp.float32),
            "log_density": jax.ShapeDtypeStruct((), jnp.float32)}
    return fm.FlowMatchingTask(_config(field=field, **model), DataInfo(spec, num_train=100))


def _random_params(task, key, scale=0.2):
    params = nn.unbox(task.init(jax.random.key(0), {task.field: jnp.zeros((2, task.dim))}))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])


# --- the loss -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dim,mu,sigma", [(1, [0.5], 0.5), (2, [1.0, -2.0], 1.5)])
def test_loss_at_the_optimal_field_has_its_closed_form(dim, mu, sigma):
    mu = np.asarray(mu, np.float32)
    n = 200_000
    x = mu + sigma * jax.random.normal(jax.random.key(1), (n, dim))
    v = analytic_velocity(mu, sigma)
    err = fm.rectified_flow_error(v, x, jax.random.key(2))
    assert err.shape == (n,)
    expected = dim * sigma * math.pi / 2
    sem = float(jnp.std(err)) / math.sqrt(n)
    assert abs(float(jnp.mean(err)) - expected) < 4 * sem + 1e-3

    # at a fixed time the loss is the conditional variance D sigma^2 / s_t^2
    t = 0.3
    eps = jax.random.normal(jax.random.key(3), (n, dim))
    xt, target = fm.interpolate(x, eps, jnp.full((n,), t))
    per = jnp.sum((v(xt, t) - target) ** 2, -1)
    s2 = (1 - t) ** 2 + t**2 * sigma**2
    assert abs(float(jnp.mean(per)) - dim * sigma**2 / s2) < 4 * float(jnp.std(per)) / math.sqrt(n)


def test_the_optimal_field_minimises_the_loss():
    """Any shift c of the conditional mean adds exactly D c^2 in expectation; with common draws
    the difference is estimated with little noise."""
    mu, sigma, dim = np.asarray([0.3, 0.7], np.float32), 0.8, 2
    x = mu + sigma * jax.random.normal(jax.random.key(4), (100_000, dim))
    v = analytic_velocity(mu, sigma)
    key = jax.random.key(5)
    base = float(jnp.mean(fm.rectified_flow_error(v, x, key)))
    for c in (0.05, 0.3):
        shifted = float(jnp.mean(fm.rectified_flow_error(lambda a, t, c=c: v(a, t) + c, x, key)))
        assert shifted > base
        np.testing.assert_allclose(shifted - base, dim * c**2, rtol=0.1, atol=2e-3)
    scaled = float(jnp.mean(fm.rectified_flow_error(lambda a, t: 1.1 * v(a, t), x, key)))
    assert scaled > base


def test_repeats_average_independent_draws():
    """With the zero field the per-example loss is E||x - eps||^2 = |x|^2 + D: many repeats
    reach it example by example, one draw does not."""
    zero = lambda x, t: jnp.zeros_like(x)  # noqa: E731
    x = jax.random.normal(jax.random.key(6), (64, 2))
    want = jnp.sum(x**2, -1) + 2.0
    one = fm.rectified_flow_error(zero, x, jax.random.key(7), repeats=1)
    many = fm.rectified_flow_error(zero, x, jax.random.key(7), repeats=4096)
    assert one.shape == many.shape == (64,)
    np.testing.assert_allclose(many, want, rtol=0.1, atol=0.1)
    assert float(jnp.max(jnp.abs(one - want))) > 1.0


def test_gaussian_mixture_velocity():
    """One component: the analytic Gaussian field; two far-apart components: each point follows
    its own component; and it beats a learned-like perturbation on the mixture's loss."""
    mu, sigma = np.asarray([[1.0, -0.5]], np.float32), 0.7
    x = jax.random.normal(jax.random.key(20), (50, 2))
    t = jax.random.uniform(jax.random.key(21), (50,))
    np.testing.assert_allclose(fm.gaussian_mixture_velocity(mu, sigma)(x, t),
                               analytic_velocity(mu[0], sigma)(x, t), rtol=1e-5, atol=1e-5)
    means = np.asarray([[-3.0, 0.0], [3.0, 0.0]], np.float32)
    v = fm.gaussian_mixture_velocity(means, 0.2)
    near = jnp.asarray([[2.9, 0.1]])
    np.testing.assert_allclose(v(near, jnp.asarray([0.99])),
                               analytic_velocity(means[1], 0.2)(near, 0.99), rtol=1e-4, atol=1e-4)
    comp = jax.random.bernoulli(jax.random.key(22), 0.5, (100_000,))
    data = jnp.where(comp[:, None], means[1], means[0]) + 0.2 * jax.random.normal(
        jax.random.key(23), (100_000, 2))
    key = jax.random.key(24)
    best = float(jnp.mean(fm.rectified_flow_error(v, data, key)))
    worse = float(jnp.mean(fm.rectified_flow_error(lambda a, s: 0.95 * v(a, s), data, key)))
    assert best < worse


# --- the ODE likelihood -------------------------------------------------------------------------

@pytest.mark.parametrize("dim,mu,sigma", [(1, [0.7], 0.4), (2, [1.0, -0.5], 1.7)])
@pytest.mark.parametrize("solver", ["tsit5", "dopri5"])
def test_ode_log_likelihood_of_the_analytic_flow_is_the_gaussian_density(dim, mu, sigma, solver):
    mu = np.asarray(mu, np.float32)
    v = analytic_velocity(mu, sigma)
    x = (mu + sigma * 1.5 * jax.random.normal(jax.random.key(8), (32, dim))).astype(jnp.float32)
    out = jax.jit(lambda p: fm.log_likelihood_ode(v, p, solver=solver, rtol=1e-6,
                                                  atol=1e-6))(x)
    assert bool(jnp.all(out["ok"]))
    np.testing.assert_allclose(out["log_prob"], gaussian_log_density(x, mu, sigma),
                               rtol=1e-4, atol=1e-4)
    # the latent is the whitened point: z = (x - mu) / sigma
    np.testing.assert_allclose(out["z"], (x - mu) / sigma, rtol=1e-4, atol=1e-4)
    # Euler converges to the same value (first order)
    euler = fm.log_likelihood_ode(v, x, solver="euler", steps=2000)
    np.testing.assert_allclose(euler["log_prob"], out["log_prob"], rtol=2e-3, atol=2e-3)


def test_ode_log_likelihood_of_a_linear_field():
    """v(x) = A x for a random (non-normal) A: x_1 = e^A x_0, log p_1(x) = log N(e^-A x) - tr A;
    Hutchinson's estimator averages to the same value."""
    from scipy.linalg import expm

    a = np.asarray([[0.3, -0.8, 0.1], [0.5, -0.2, 0.4], [0.0, 0.6, -0.5]], np.float32)
    v = lambda x, t: x @ jnp.asarray(a).T  # noqa: E731
    x = jax.random.normal(jax.random.key(9), (8, 3))
    exact = fm.log_likelihood_ode(v, x, rtol=1e-6, atol=1e-6)
    z = np.asarray(x, np.float64) @ expm(-a.astype(np.float64)).T
    want = -0.5 * np.sum(z**2, -1) - 1.5 * math.log(2 * math.pi) - np.trace(a)
    np.testing.assert_allclose(exact["log_prob"], want, rtol=1e-4, atol=1e-4)
    # Hutchinson: one probe per example and trajectory, unbiased; average 400 probe sets
    xs = jnp.repeat(x, 400, axis=0)
    hutch = fm.log_likelihood_ode(v, xs, rng=jax.random.key(10), trace="hutchinson",
                                  rtol=1e-5, atol=1e-5)["log_prob"].reshape(8, 400)
    np.testing.assert_allclose(jnp.mean(hutch, 1), want, atol=0.1)
    assert float(jnp.std(hutch)) > 0  # it is an estimator, not the exact trace


def test_hutchinson_matches_the_exact_trace():
    task = _task(dim=5, width=32)
    params = _random_params(task, jax.random.key(11), scale=0.3)
    vel = task.velocity_fn(params)
    x = jax.random.normal(jax.random.key(12), (5,))
    t = jnp.float32(0.4)
    v_exact, tr = jax.jit(lambda z: fm.divergence_exact(vel, z, t))(x)
    jac = jax.jit(jax.jacfwd(lambda z: vel(z[None], t)[0]))(x)
    np.testing.assert_allclose(tr, jnp.trace(jac), rtol=1e-5, atol=1e-5)
    probes = jax.random.rademacher(jax.random.key(13), (20000, 5), jnp.float32)
    v_h, est = jax.jit(jax.vmap(lambda p: fm.divergence_hutchinson(vel, x, t, p)))(probes)
    np.testing.assert_allclose(v_h[0], v_exact, rtol=1e-5, atol=1e-6)
    off = jac - jnp.diag(jnp.diag(jac))
    sem = float(jnp.sqrt(jnp.sum((off + off.T) ** 2) / 2 / len(probes)))  # Rademacher variance
    assert abs(float(jnp.mean(est)) - float(tr)) < 5 * sem + 1e-5


def test_sampling_shapes_and_the_analytic_flow_reaches_the_target():
    mu, sigma = np.asarray([2.0, -1.0], np.float32), 0.5
    v = analytic_velocity(mu, sigma)
    noise = jax.random.normal(jax.random.key(14), (4000, 2))
    x, steps = jax.jit(lambda n: fm.sample_ode(v, n, solver="tsit5"))(noise)
    assert x.shape == (4000, 2) and steps.shape == (4000,)
    np.testing.assert_allclose(x, mu + sigma * noise, rtol=1e-3, atol=2e-3)  # local error control
    xe, steps_e = fm.sample_ode(v, noise[:10], solver="euler", steps=7)
    assert xe.shape == (10, 2) and bool(jnp.all(steps_e == 7))


# --- the task -----------------------------------------------------------------------------------

def test_task_loads_by_module_path_and_spec():
    assert load_task_class("jaxflows.models.flow_matching") is fm.FlowMatchingTask
    task = _task(dim=3, field="feat")
    spec = check_example_spec(task.example_spec(), "flow_matching")
    assert spec == {"feat": jax.ShapeDtypeStruct((3,), jnp.float32)}
    assert task.trace == "exact"
    assert _task(dim=20).trace == "hutchinson"
    image_data = DataInfo({"image": jax.ShapeDtypeStruct((2, 2), jnp.float32)}, num_train=1)
    with pytest.raises(ConfigError, match="vector field 'x'"):
        fm.FlowMatchingTask(_config(), image_data)
    with pytest.raises(ConfigError, match="vector field 'image'"):
        fm.FlowMatchingTask(_config(field="image"), image_data)  # not a vector
    with pytest.raises(ConfigError, match="solver"):
        _task(solver="rk4")


def test_untrained_field_is_zero_and_params_are_named():
    task = _task(width=16, num_blocks=2)
    params = task.init(jax.random.key(0), {"x": jnp.zeros((4, 2))})
    assert params["input_proj"]["kernel"].names == ("latent", "hidden")
    assert params["block_0"]["fc1"]["kernel"].names == ("mlp", "hidden")
    assert params["out"]["kernel"].names == ("mlp", "latent")
    shapes = jax.tree.map(lambda a: a.shape, nn.unbox(params))
    assert shapes["block_1"]["adaLN_modulation"]["kernel"] == (16, 48)
    v = task.velocity_fn(params)(jax.random.normal(jax.random.key(1), (5, 2)), jnp.full((5,), 0.3))
    np.testing.assert_array_equal(v, 0.0)
    # a shared time broadcasts over the points
    p = _random_params(task, jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (5, 2))
    np.testing.assert_allclose(task.velocity_fn(p)(x, jnp.float32(0.3)[None]),
                               task.velocity_fn(p)(x, jnp.full((5,), 0.3)), rtol=1e-5, atol=1e-6)


def test_loss_eval_batch_mask_final_eval_and_samples(tmp_path):
    task = _task(width=16, num_blocks=1, nll_examples=6, nll_batch=4, rtol=1e-4, atol=1e-4,
                 eval_repeats=3)
    params = _random_params(task, jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (8, 2))
    rng = jax.random.key(6)
    loss, metrics = task.loss(params, {"x": x}, rng, jnp.int32(0))
    want = fm.rectified_flow_error(task.velocity_fn(params), x, rng, 1) / 2
    np.testing.assert_allclose(loss, jnp.mean(want), rtol=1e-6)
    np.testing.assert_allclose(metrics["fm_loss"], loss)
    mask = jnp.asarray([1, 1, 1, 0, 0, 0, 0, 0])
    masked, _ = task.loss(params, {"x": x, "mask": mask}, rng, jnp.int32(0))
    np.testing.assert_allclose(masked, jnp.mean(want[:3]), rtol=1e-6)
    ev = task.eval_batch(params, {"x": x}, rng)
    assert ev["loss"].shape == (8,)
    np.testing.assert_allclose(ev["loss"], fm.rectified_flow_error(
        task.velocity_fn(params), x, rng, 3) / 2, rtol=1e-6)

    batches = lambda: iter([{"x": np.asarray(x[:4]), "mask": np.ones(4)},  # noqa: E731
                            {"x": np.asarray(x[4:]), "mask": np.asarray([1, 1, 0, 0])}])
    out = task.final_eval(params, batches, jax.random.key(7))
    assert out["nll_ode_examples"] == 6 and out["nll_ode_failed"] == 0
    direct = -task.log_prob(params, x[:6])["log_prob"]
    np.testing.assert_allclose(out["per_example"]["nll_ode"], direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["nll_ode"], float(jnp.mean(direct)), rtol=1e-5)

    samples = task.sample(params, jax.random.key(8), 10)
    assert samples.shape == (10, 2) and bool(jnp.all(jnp.isfinite(samples)))
    euler = task.sample(params, jax.random.key(8), 10, solver="euler", steps=200)
    np.testing.assert_allclose(euler, samples, atol=0.05)
    zero_t = task.sample(params, jax.random.key(8), 10, temperature=0.0)
    np.testing.assert_allclose(zero_t, jnp.broadcast_to(zero_t[0], (10, 2)), atol=1e-5)
    path = task.write_samples(samples, str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 0 and path.endswith("s.png")
    with pytest.raises(UserError, match="unknown sample option"):
        task.sample(params, jax.random.key(0), 2, colour=1)
    with pytest.raises(UserError, match="2-D points"):
        task.write_samples(np.zeros((4, 3)), str(tmp_path / "t.png"))
