"""Flow matching (rectified flow) on vectors (task ``jaxflows.models.flow_matching``).

The model is a velocity field ``v(x, t)`` on ``x: [..., D]``, ``t in [0, 1]``, trained with the
rectified-flow loss of "Aligning Latent Spaces with Flow Priors" (Li et al. 2025, arXiv
2506.05240, Eq. 3) in the convention of its official 2-D toy code (GitHub
``liyz15/Aligning-Latent-Spaces-with-Flow-Priors``,
``continuous_tokenizer/toy_examples/flow_train_then_guide.py``): noise at ``t = 0``, data at
``t = 1``,

    x_t = (1 - t) eps + t x,     eps ~ N(0, I),  t ~ U[0, 1],
    L_FM = E_{t, eps} || v(x_t, t) - (x - eps) ||^2.

(The tokenizer's ``FlowLoss`` mirrors time, data at ``t = 0``; the two are equal in
distribution.) :func:`rectified_flow_error` returns the per-example squared error summed over the
``D`` features (the paper's norm); the training loss of :class:`FlowMatchingTask` is its mean
over examples divided by ``D`` (the official code's ``mse_loss(reduction='mean')``).

**Network** (:class:`VelocityMLP`, the official ``SimpleMLPAdaLN`` design): sinusoidal time
features (``freq_dim`` of them, ``cos`` then ``sin``, max period 10,000, of ``time_scale * t``;
the official toys use ``t`` itself) -> MLP -> conditioning ``c``; ``input_proj`` of ``x`` to the
width; ``num_blocks`` residual blocks ``x + g * MLP(LN(x) (1 + s) + b)`` whose shift, scale and
gate ``(b, s, g)`` are a linear map of ``SiLU(c)`` (AdaLN); a final AdaLN LayerNorm and linear
map to ``D``. The AdaLN maps and the output layer start at zero, so the untrained field is 0.
The paper's toy: width 512, 4 blocks, ``D = 2``.

**ODE** (diffrax). Sampling integrates ``dx/dt = v`` from ``eps ~ N(0, T^2 I)`` at ``t = 0`` to
``t = 1`` with Euler (``steps`` equal steps) or an adaptive Runge-Kutta solver (``tsit5``,
``dopri5``) under a PID step-size controller. The exact log-likelihood uses the instantaneous
change of variables (Chen et al. 2018): integrating backwards from ``x`` at ``t = 1``,

    log p_1(x) = log N(x_0; 0, I) - int_0^1 Tr dv/dx (x_t, t) dt,

with the trace exact (``D`` forward-mode JVPs) when ``D <= exact_trace_max_dim`` and otherwise
Hutchinson's estimator ``e^T (dv/dx) e`` with one fixed Rademacher probe per example and
trajectory (unbiased for the integral). Each example is solved on its own (``vmap``), so its
value does not depend on the other points of the batch.

Config keys (``config.model``, see :func:`default_model_config`): ``field`` (the data field, a
float32 vector ``[D]``), ``width``, ``num_blocks``, ``freq_dim``, ``time_scale``,
``loss_repeats`` (``(t, eps)`` draws per example in training), ``eval_repeats`` (in
``eval_batch``), ``nll_examples`` (test examples scored by the ODE in ``final_eval``; 0 = none,
-1 = all), ``nll_batch``, ``solver``, ``rtol``, ``atol``, ``max_steps``, ``trace``
(``auto | exact | hutchinson``), ``exact_trace_max_dim``. ``config.dtype`` is the matmul dtype;
LayerNorm statistics, the time features and all ODE arithmetic stay float32.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.errors import ConfigError, UserError
from jaxflows.nn.gated import logical_dense
from jaxflows.train.task import DataInfo, ElementSpec, Metrics, PyTree, Task, masked_mean

SOLVERS = ("euler", "tsit5", "dopri5")
TRACES = ("auto", "exact", "hutchinson")

#: ``velocity(x: [..., D], t: broadcastable to [...]) -> [..., D]``
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def default_model_config() -> ml_collections.ConfigDict:
    """``config.model`` of this task with its defaults (the paper's 2-D toy network)."""
    m = ml_collections.ConfigDict()
    m.name = "jaxflows.models.flow_matching"
    m.field = "x"  # the data field: float32 [D]
    m.width = 512
    m.num_blocks = 4
    m.freq_dim = 256  # sinusoidal time features
    m.time_scale = 1.0  # features of time_scale * t (the official toys: 1)
    m.loss_repeats = 1  # (t, eps) draws per example in the training loss
    m.eval_repeats = 8  # ... in eval_batch (validation flow-matching loss)
    m.nll_examples = 1000  # test examples scored by the exact ODE NLL (0: none, -1: all)
    m.nll_batch = 500
    m.solver = "tsit5"  # euler | tsit5 | dopri5 (ODE NLL and default sampler)
    m.rtol = 1e-5
    m.atol = 1e-5
    m.euler_steps = 100
    m.max_steps = 4096
    m.trace = "auto"  # auto | exact | hutchinson
    m.exact_trace_max_dim = 16
    return m


# --- network ------------------------------------------------------------------------------------

def timestep_features(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal features of ``t: [...]`` -> float32 ``[..., dim]`` (``cos`` half, then ``sin``
    half, frequencies ``max_period^(-k / half)``; a zero column when ``dim`` is odd)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[..., :1])], axis=-1)
    return emb


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale) + shift


_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros_init()


class AdaLNBlock(nn.Module):
    """Residual block ``h: [..., C], c: [..., C] -> h + g * MLP(LN(h) (1 + s) + b)`` with
    ``(b, s, g)`` from ``Dense(SiLU(c))`` (zero-initialised, so the block starts as identity)."""

    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, c: jax.Array) -> jax.Array:
        mod = logical_dense(3 * self.width, ("mlp", "hidden"), dtype=self.dtype,
                            name="adaLN_modulation", kernel_init=_zeros)(jax.nn.silu(c))
        shift, scale, gate = jnp.split(mod.astype(jnp.float32), 3, axis=-1)
        y = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
                         name="in_ln")(h.astype(jnp.float32))
        y = _modulate(y, shift, scale)
        y = logical_dense(self.width, ("mlp", "hidden"), dtype=self.dtype, name="fc1",
                          kernel_init=_xavier)(y)
        y = logical_dense(self.width, ("mlp", "hidden"), dtype=self.dtype, name="fc2",
                          kernel_init=_xavier)(jax.nn.silu(y))
        return h + gate * y.astype(jnp.float32)


class VelocityMLP(nn.Module):
    """Velocity field ``v(x: [..., D], t) -> [..., D]`` (float32): an MLP with AdaLN time
    modulation (see the module docstring). ``t`` is a scalar or broadcastable to ``x.shape[:-1]``;
    a ``t`` shared by many points (shape ``[1]`` or ``[]``) computes the time path once.

    Kernels carry logical axis names (``('latent', 'hidden')`` in, ``('mlp', 'hidden')`` inside,
    ``('mlp', 'latent')`` out).
    """

    dim: int
    width: int = 512
    num_blocks: int = 4
    freq_dim: int = 256
    time_scale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, jnp.float32)
        tf = timestep_features(self.time_scale * t, self.freq_dim)
        normal = nn.initializers.normal(0.02)
        c = logical_dense(self.width, (None, "hidden"), dtype=self.dtype, name="time_fc1",
                          kernel_init=normal)(tf)
        c = logical_dense(self.width, ("mlp", "hidden"), dtype=self.dtype, name="time_fc2",
                          kernel_init=normal)(jax.nn.silu(c)).astype(jnp.float32)
        h = logical_dense(self.width, ("latent", "hidden"), dtype=self.dtype, name="input_proj",
                          kernel_init=_xavier)(x.astype(jnp.float32)).astype(jnp.float32)
        for i in range(self.num_blocks):
            h = AdaLNBlock(self.width, self.dtype, name=f"block_{i}")(h, c)
        mod = logical_dense(2 * self.width, ("mlp", "hidden"), dtype=self.dtype,
                            name="final_modulation", kernel_init=_zeros)(jax.nn.silu(c))
        shift, scale = jnp.split(mod.astype(jnp.float32), 2, axis=-1)
        h = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=jnp.float32,
                         name="final_ln")(h)
        h = _modulate(h, shift, scale)
        out = logical_dense(self.dim, ("mlp", "latent"), dtype=self.dtype, name="out",
                            kernel_init=_zeros)(h)
        return out.astype(jnp.float32)


def velocity_model(model_config: ml_collections.ConfigDict, dim: int,
                   dtype: Any = jnp.float32) -> VelocityMLP:
    """The :class:`VelocityMLP` a ``config.model`` of this task describes, for data of size
    ``dim`` (also used to rebuild a trained prior from its workdir's ``config.json``)."""
    mc = model_config
    width = int(mc.get("width", 512))
    blocks = int(mc.get("num_blocks", 4))
    freq = int(mc.get("freq_dim", 256))
    if width < 1 or blocks < 0 or freq < 2:
        raise ConfigError(f"config.model: width={width}, num_blocks={blocks}, freq_dim={freq} "
                          "must be >= 1, >= 0 and >= 2")
    return VelocityMLP(dim=int(dim), width=width, num_blocks=blocks, freq_dim=freq,
                       time_scale=float(mc.get("time_scale", 1.0)), dtype=jnp.dtype(dtype))


# --- the rectified-flow loss --------------------------------------------------------------------

def interpolate(x: jax.Array, eps: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The rectified-flow pair at time ``t``: ``x_t = (1 - t) eps + t x`` and target velocity
    ``x - eps`` (``x, eps: [..., D]``, ``t: [...]``)."""
    tt = t[..., None]
    return (1.0 - tt) * eps + tt * x, x - eps


def rectified_flow_error(velocity: VelocityFn, x: jax.Array, rng: jax.Array,
                         repeats: int = 1) -> jax.Array:
    """Per-example ``E_{t, eps} ||v(x_t, t) - (x - eps)||^2`` of ``x: [B, D]`` -> ``[B]``.

    The squared error is summed over ``D`` and averaged over ``repeats`` independent draws of
    ``t ~ U[0, 1]`` and ``eps ~ N(0, I)`` per example (one network call on ``repeats * B`` rows).
    Gradients flow to ``x`` (through both ``x_t`` and the target) and to whatever ``velocity``
    closes over.
    """
    x = x.astype(jnp.float32)
    k_t, k_e = jax.random.split(rng)
    t = jax.random.uniform(k_t, (repeats, *x.shape[:-1]), jnp.float32)
    eps = jax.random.normal(k_e, (repeats, *x.shape), jnp.float32)
    xt, target = interpolate(x[None], eps, t)
    v = velocity(xt.reshape(-1, x.shape[-1]), t.reshape(-1)).reshape(xt.shape)
    return jnp.mean(jnp.sum((v - target) ** 2, axis=-1), axis=0)


def gaussian_mixture_velocity(means, std: float, weights=None) -> VelocityFn:
    """The optimal rectified-flow field of an isotropic Gaussian-mixture target
    ``sum_k w_k N(m_k, std^2 I)`` (noise ``N(0, I)`` at ``t = 0``), in closed form:

        v*(x, t) = sum_k r_k(x, t) [m_k + a(t) (x - t m_k)],   a = (t std^2 - (1 - t)) / s_t^2,

    with ``s_t^2 = (1 - t)^2 + t^2 std^2`` and ``r_k`` the posterior of component ``k`` given
    ``x_t = x`` (``proportional to w_k N(x; t m_k, s_t^2 I)``). ``means: [K, D]``. It minimises
    the flow-matching loss of that target (a reference for a learned field)."""
    means = jnp.asarray(means, jnp.float32)
    k = means.shape[0]
    log_w = (jnp.full((k,), -math.log(k), jnp.float32) if weights is None
             else jnp.log(jnp.asarray(weights, jnp.float32)))
    var = float(std) ** 2

    def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:-1])[..., None]
        s2 = (1.0 - t) ** 2 + t**2 * var
        a = (t * var - (1.0 - t)) / s2
        diff = x[..., None, :] - t[..., None, :] * means  # [..., K, D]
        logits = log_w - 0.5 * jnp.sum(diff**2, -1) / s2
        r = jax.nn.softmax(logits, axis=-1)
        return jnp.sum(r[..., None] * (means + a[..., None, :] * diff), axis=-2)

    return velocity


# --- ODEs (diffrax) -----------------------------------------------------------------------------

def _solver(name: str):
    import diffrax

    if name == "euler":
        return diffrax.Euler()
    if name == "tsit5":
        return diffrax.Tsit5()
    if name == "dopri5":
        return diffrax.Dopri5()
    raise ConfigError(f"ODE solver {name!r} is unknown; valid: {', '.join(SOLVERS)}")


def _solve(fn, y0, t0: float, t1: float, *, solver: str, steps: int, rtol: float, atol: float,
           max_steps: int, args=None):
    """``diffrax.diffeqsolve`` of ``dy/dt = fn(t, y, args)`` from ``t0`` to ``t1``; returns
    ``(y(t1), num_steps, ok)``. Euler takes ``steps`` equal steps; the adaptive solvers use a
    PID controller (max-norm error over the state) and at most ``max_steps`` steps."""
    import diffrax
    import optimistix as optx

    term = diffrax.ODETerm(fn)
    if solver == "euler":
        controller = diffrax.ConstantStepSize()
        dt0 = (t1 - t0) / int(steps)
        max_steps = int(steps) + 1
    else:
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=optx.max_norm)
        dt0 = None
    sol = diffrax.diffeqsolve(term, _solver(solver), t0, t1, dt0, y0, args=args,
                              saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller,
                              max_steps=int(max_steps), throw=False)
    y1 = jax.tree.map(lambda a: a[-1], sol.ys)
    ok = sol.result == diffrax.RESULTS.successful
    return y1, sol.stats["num_steps"], ok


def sample_ode(velocity: VelocityFn, noise: jax.Array, *, solver: str = "tsit5",
               steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
               max_steps: int = 4096) -> tuple[jax.Array, jax.Array]:
    """Pushes ``noise: [B, D]`` at ``t = 0`` to ``t = 1`` along ``dx/dt = v(x, t)``; returns
    ``(x: [B, D], num_steps: [B])`` (NaN rows where an adaptive solve failed)."""

    def one(z):
        def fn(t, x, args):
            return velocity(x[None], t)[0]

        x, n, ok = _solve(fn, z, 0.0, 1.0, solver=solver, steps=steps, rtol=rtol, atol=atol,
                          max_steps=max_steps)
        return jnp.where(ok, x, jnp.nan), n

    return jax.vmap(one)(noise.astype(jnp.float32))


def divergence_exact(velocity: VelocityFn, x: jax.Array, t: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """``(v(x, t), Tr dv/dx)`` for one point ``x: [D]`` -> ``([D], [])`` by ``D`` JVPs."""
    def fn(z):
        v = velocity(z[None], t)[0]
        return v, v

    jac, v = jax.jacfwd(fn, has_aux=True)(x)
    return v, jnp.trace(jac)


def divergence_hutchinson(velocity: VelocityFn, x: jax.Array, t: jax.Array, probe: jax.Array
                          ) -> tuple[jax.Array, jax.Array]:
    """``(v(x, t), probe^T (dv/dx) probe)`` for one point ``x, probe: [D]`` (one JVP); an
    unbiased estimate of the trace when ``E[probe probe^T] = I``."""
    fn = lambda z: velocity(z[None], t)[0]  # noqa: E731
    v, jv = jax.jvp(fn, (x,), (probe,))
    return v, jnp.sum(probe * jv)


def log_likelihood_ode(velocity: VelocityFn, x: jax.Array, *, rng: jax.Array | None = None,
                       trace: str = "exact", solver: str = "tsit5", steps: int = 100,
                       rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 4096
                       ) -> dict[str, jax.Array]:
    """Exact ``log p_1(x)`` of the flow for ``x: [B, D]`` by the instantaneous change of
    variables, integrated backwards from ``t = 1`` to ``0`` over the state ``[x, delta]``,
    ``d delta / dt = Tr dv/dx``: ``log p_1(x) = log N(x_0; 0, I) + delta(0)``.

    ``trace``: ``'exact'`` (``D`` JVPs per evaluation) or ``'hutchinson'`` (one Rademacher
    probe per example from ``rng``, fixed along the trajectory). Returns ``{'log_prob': [B],
    'z': [B, D] (x_0), 'num_steps': [B], 'ok': [B] bool}``; ``log_prob`` is NaN where an
    adaptive solve failed (e.g. ran out of ``max_steps``).
    """
    x = x.astype(jnp.float32)
    b, d = x.shape
    if trace == "hutchinson":
        if rng is None:
            raise ValueError("Hutchinson's estimator needs an rng for its probes")
        probes = jax.random.rademacher(rng, (b, d), jnp.float32)
    elif trace == "exact":
        probes = jnp.zeros((b, d), jnp.float32)
    else:
        raise ValueError(f"trace={trace!r}: use 'exact' or 'hutchinson'")

    def one(xi, probe):
        def fn(t, state, args):
            z, _ = state
            if trace == "exact":
                v, div = divergence_exact(velocity, z, t)
            else:
                v, div = divergence_hutchinson(velocity, z, t, probe)
            return v, div

        (z0, delta), n, ok = _solve(fn, (xi, jnp.zeros((), jnp.float32)), 1.0, 0.0,
                                    solver=solver, steps=steps, rtol=rtol, atol=atol,
                                    max_steps=max_steps)
        base = -0.5 * jnp.sum(z0**2) - 0.5 * d * math.log(2.0 * math.pi)
        return jnp.where(ok, base + delta, jnp.nan), z0, n, ok

    logp, z0, n, ok = jax.vmap(one)(x, probes)
    return {"log_prob": logp, "z": z0, "num_steps": n, "ok": ok}


# --- the task -----------------------------------------------------------------------------------


class FlowMatchingTask(Task):
    """Rectified-flow velocity field on ``config.model.field: float32 [D]``.

    ``loss``: mean over examples of ``||v(x_t, t) - (x - eps)||^2 / D`` (metric ``fm_loss``,
    the same value). ``eval_batch``: per-example ``loss`` (``eval_repeats`` draws, divided by
    ``D``). ``final_eval``: exact ODE NLL (nats) of ``nll_examples`` test examples.
    """

    best_metric = "loss"
    sample_options: ClassVar[dict[str, Any]] = {
        "temperature": 1.0, "solver": "", "steps": 0, "rtol": 0.0, "atol": 0.0}

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        mc = config.model
        self.field = str(mc.get("field", "x"))
        spec = data_info.element_spec.get(self.field)
        if spec is None or len(spec.shape) != 1 or not spec.shape[0]:
            raise ConfigError(
                f"{config.model.name} needs a vector field {self.field!r} [D] in the data; the "
                f"data has { {k: tuple(v.shape) for k, v in data_info.element_spec.items()} }",
                hint="set config.model.field, or use a toy2d/<name> dataset")
        self.dim = int(spec.shape[0])
        self.model = velocity_model(mc, self.dim, config.get("dtype", "float32"))
        self.loss_repeats = int(mc.get("loss_repeats", 1))
        self.eval_repeats = int(mc.get("eval_repeats", 8))
        if self.loss_repeats < 1 or self.eval_repeats < 1:
            raise ConfigError("config.model.loss_repeats and eval_repeats must be >= 1")
        self.solver = str(mc.get("solver", "tsit5"))
        if self.solver not in SOLVERS:
            raise ConfigError(f"config.model.solver={self.solver!r}; valid: {', '.join(SOLVERS)}")
        self.trace = str(mc.get("trace", "auto"))
        if self.trace not in TRACES:
            raise ConfigError(f"config.model.trace={self.trace!r}; valid: {', '.join(TRACES)}")
        if self.trace == "auto":
            self.trace = ("exact" if self.dim <= int(mc.get("exact_trace_max_dim", 16))
                          else "hutchinson")
        self.ode = dict(rtol=float(mc.get("rtol", 1e-5)), atol=float(mc.get("atol", 1e-5)),
                        steps=int(mc.get("euler_steps", 100)),
                        max_steps=int(mc.get("max_steps", 4096)))
        self._sample_jit = jax.jit(self._sample, static_argnums=(2, 4, 5))
        self._logp_jit = jax.jit(self._log_prob, static_argnums=(3,))

    # --- helpers -------------------------------------------------------------------------
    def velocity_fn(self, params: PyTree) -> VelocityFn:
        """``v(x: [..., D], t) -> [..., D]`` with ``params`` bound."""
        variables = {"params": nn.unbox(params)}
        return lambda x, t: self.model.apply(variables, x, t)

    def _log_prob(self, params, x, rng, solver):
        return log_likelihood_ode(self.velocity_fn(params), x, rng=rng, trace=self.trace,
                                  solver=solver, **self.ode)

    def log_prob(self, params: PyTree, x: jax.Array, rng: jax.Array | None = None,
                 solver: str | None = None) -> dict[str, jax.Array]:
        """ODE log-likelihood of ``x: [B, D]`` (see :func:`log_likelihood_ode`), jitted."""
        rng = jax.random.key(0) if rng is None else rng
        return self._logp_jit(nn.unbox(params), jnp.asarray(x, jnp.float32), rng,
                              solver or self.solver)

    def _sample(self, params, rng, num, temperature, solver, ode_items):
        ode = dict(ode_items)
        noise = temperature * jax.random.normal(rng, (num, self.dim), jnp.float32)
        x, _ = sample_ode(self.velocity_fn(params), noise, solver=solver, **ode)
        return x

    # --- Task contract -------------------------------------------------------------------
    def example_spec(self) -> ElementSpec:
        """``{field: float32 [D]}`` only (other fields of the data never reach the model)."""
        return {self.field: jax.ShapeDtypeStruct((self.dim,), jnp.float32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Params (with logical-partitioning boxes) for points shaped like ``batch[field]``."""
        x = batch[self.field]
        return self.model.init({"params": rng}, x, jnp.zeros(x.shape[:-1], jnp.float32)
                               )["params"]

    def loss(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array,
             step: jax.Array) -> tuple[jax.Array, Metrics]:
        """Mean of ``||v(x_t, t) - (x - eps)||^2 / D`` (``loss_repeats`` draws per example)."""
        del step
        err = rectified_flow_error(self.velocity_fn(params), batch[self.field], rng,
                                   self.loss_repeats) / self.dim
        loss = masked_mean(err, batch.get("mask"))
        return loss, {"fm_loss": loss}

    def eval_batch(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
                   ) -> Metrics:
        """Per-example flow-matching loss ``{'loss', 'fm_loss'}: [B]`` (``eval_repeats``
        draws, divided by ``D``; the two are equal)."""
        err = rectified_flow_error(self.velocity_fn(params), batch[self.field], rng,
                                   self.eval_repeats) / self.dim
        return {"loss": err, "fm_loss": err}

    def final_eval(self, params: PyTree, batches: Callable[[], Any], rng: jax.Array
                   ) -> dict[str, Any]:
        """Exact ODE NLL (nats) of the first ``nll_examples`` test examples: ``nll_ode`` (mean),
        ``nll_ode_sem`` (standard error), ``nll_ode_examples``, ``nll_ode_steps_mean`` (solver
        steps), ``nll_ode_failed``; per-example values in ``per_example['nll_ode']``."""
        limit = int(self.config.model.get("nll_examples", 1000))
        if limit == 0:
            return {}
        xs, have = [], 0
        for batch in batches():
            x = np.asarray(jax.device_get(batch[self.field]))
            mask = np.asarray(jax.device_get(batch["mask"])) > 0
            xs.append(x[mask])
            have += int(mask.sum())
            if 0 < limit <= have:
                break
        x = np.concatenate(xs)[:limit] if limit > 0 else np.concatenate(xs)
        chunk = max(1, int(self.config.model.get("nll_batch", 500)))
        params = jax.device_get(nn.unbox(params))
        logps, steps, oks = [], [], []
        for i, s in enumerate(range(0, len(x), chunk)):
            part = x[s:s + chunk]
            pad = chunk - len(part)  # one compiled shape
            padded = np.concatenate([part, np.zeros((pad, self.dim), np.float32)]) if pad else part
            out = jax.device_get(self.log_prob(params, padded, jax.random.fold_in(rng, i)))
            logps.append(out["log_prob"][:len(part)])
            steps.append(out["num_steps"][:len(part)])
            oks.append(out["ok"][:len(part)])
        nll = -np.concatenate(logps).astype(np.float64)
        ok = np.concatenate(oks)
        if not ok.all():
            logging.warning("ODE NLL: %d of %d solves failed (max_steps=%d)", int((~ok).sum()),
                            len(ok), self.ode["max_steps"])
        good = nll[ok]
        n = len(good)
        return {
            "nll_ode": float(good.mean()) if n else float("nan"),
            "nll_ode_sem": float(good.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
            "nll_ode_examples": int(len(nll)),
            "nll_ode_failed": int((~ok).sum()),
            "nll_ode_steps_mean": float(np.mean(np.concatenate(steps))),
            "nll_ode_trace": self.trace,
            "per_example": {"nll_ode": nll.astype(np.float32)},
        }

    def sample(self, params: PyTree, rng: jax.Array, num: int, **options) -> jax.Array:
        """``num`` points: float32 ``[num, D]``, the ODE from ``T eps`` at ``t = 0`` to ``t = 1``.

        Options: ``temperature`` ``T >= 0`` (default 1), ``solver`` (default
        ``config.model.solver``), ``steps`` (Euler steps; default ``euler_steps``), ``rtol``,
        ``atol`` (adaptive solvers; default the config's).
        """
        unknown = sorted(set(options) - set(self.sample_options))
        if unknown:
            raise UserError(f"unknown sample option(s) {unknown} for {type(self).__name__}; "
                            f"options: {sorted(self.sample_options)}")
        temperature = float(options.get("temperature", 1.0))
        if not temperature >= 0:
            raise UserError(f"sample option temperature must be >= 0, got {temperature}")
        solver = str(options.get("solver") or self.solver)
        if solver not in SOLVERS:
            raise UserError(f"sample option solver={solver!r}; valid: {', '.join(SOLVERS)}")
        ode = dict(self.ode)
        for key in ("steps", "rtol", "atol"):
            if options.get(key):
                ode[key] = type(ode[key])(options[key])
        if ode["steps"] < 1:
            raise UserError(f"sample option steps must be >= 1, got {ode['steps']}")
        num = int(num)
        if num < 1:
            raise UserError(f"the number of samples must be >= 1, got {num}")
        return self._sample_jit(nn.unbox(params), rng, num, jnp.float32(temperature), solver,
                                tuple(sorted(ode.items())))

    def write_samples(self, samples: Any, path: str) -> str:
        """Writes ``[N, 2]`` points as a scatter PNG at ``path``; a UserError when ``D != 2``."""
        from jaxflows.eval.scatter import save_scatter

        pts = np.asarray(samples, np.float32)
        return save_scatter(pts, path, title=f"{len(pts)} flow-matching samples")


TASK = FlowMatchingTask
