"""A small RealNVP density model on vectors (``config.model.name = 'jaxflows.models.flow2d'``).

Density estimation on examples ``{'x': float32 [D]}`` (the 2-D toy densities of
:mod:`jaxflows.data.toy2d`, ``toy2d/<name>`` datasets; any other field of the data, such as their
``log_density``, is not part of :meth:`Flow2DTask.example_spec` and never reaches the model).

The flow, in distrax's direction (``forward``: base noise -> data), is ``num_layers`` steps, each

    ActNorm  ->  affine coupling  ->  permutation

with a standard normal base, ``distrax.Transformed(base, chain)``. The coupling is RealNVP's
(Dinh et al. 2017) as a ``distrax.MaskedCoupling``: the first ``D // 2`` coordinates pass through
and condition an MLP (:class:`Conditioner`, Flax Linen, weights with logical axis names) that
outputs a shift and a log-scale ``c tanh(s / c)`` (``c = max_log_scale``) for the other
coordinates. The permutation is the reversal (``permutation='reverse'``, the usual choice in 2-D)
or a fixed random one per step (``'random'``, drawn from ``perm_seed``). ActNorm starts at the
identity (the engine initialises from a batch of zeros, so no data-dependent init) and the MLP's
output layer is zero-initialised, so the untrained flow is a permutation of the base: its NLL on
standardised data is about ``D/2 log(2 pi e)``.

Config keys (``config.model``, see :func:`default_model_config`): ``num_layers``, ``hidden``
(conditioner widths), ``max_log_scale``, ``actnorm``, ``permutation``, ``perm_seed``.
``config.dtype`` is the conditioner's matmul dtype; the flow maps and log-densities stay float32.

Sampling (``jaxflows sample``) draws ``x = f(T z)``, ``z ~ N(0, I)``, with the option
``temperature`` ``T`` (default 1); the artifact is a float32 ``[num, D]`` array, written as a 2-D
scatter PNG (:func:`jaxflows.eval.scatter.save_scatter`; D must be 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.bijectors import ActNorm, Permutation, ReversePermutation
from jaxflows.errors import ConfigError, UserError
from jaxflows.nn.gated import logical_dense
from jaxflows.train.task import DataInfo, ElementSpec, Metrics, PyTree, Task, masked_mean

PERMUTATIONS = ("reverse", "random")


def default_model_config() -> ml_collections.ConfigDict:
    """``config.model`` of this task with its defaults."""
    m = ml_collections.ConfigDict()
    m.name = "jaxflows.models.flow2d"
    m.num_layers = 8  # ActNorm -> coupling -> permutation steps
    m.hidden = (128, 128)  # conditioner MLP widths
    m.max_log_scale = 3.0  # coupling log-scales are c tanh(s / c)
    m.actnorm = True
    m.permutation = "reverse"  # reverse | random (fixed, drawn from perm_seed)
    m.perm_seed = 0
    return m


class Conditioner(nn.Module):
    """MLP ``x: [..., D] -> (shift, raw log-scale): [..., D] each`` (SiLU, zero output layer).

    Kernels carry logical axis names: ``('latent', 'hidden')`` for the first layer (the tiny
    data axis stays replicated), ``('mlp', 'hidden')`` between hidden layers and
    ``('mlp', 'latent')`` for the output layer. Outputs are float32.
    """

    dim: int
    hidden: Sequence[int] = (128, 128)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.astype(self.dtype)
        for i, width in enumerate(self.hidden):
            axes = ("latent", "hidden") if i == 0 else ("mlp", "hidden")
            h = logical_dense(int(width), axes, dtype=self.dtype, name=f"dense_{i}",
                              kernel_init=nn.initializers.lecun_normal())(h)
            h = jax.nn.silu(h)
        out = logical_dense(2 * self.dim, ("mlp", "latent"), dtype=self.dtype, name="out",
                            kernel_init=nn.initializers.zeros_init())(h)
        out = out.astype(jnp.float32)
        return out[..., :self.dim], out[..., self.dim:]


class FlowStep(nn.Module):
    """One step ``ActNorm -> MaskedCoupling -> permutation``; :meth:`bijectors` lists them in
    the order ``forward`` applies them. Only valid inside the parent's ``apply``."""

    dim: int
    hidden: Sequence[int]
    max_log_scale: float
    actnorm: bool
    perm: tuple[int, ...] | None  # None: reversal
    dtype: Any = jnp.float32

    def setup(self):
        self.conditioner = Conditioner(self.dim, tuple(self.hidden), self.dtype)
        if self.actnorm:
            init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("latent",))
            self.loc = self.param("actnorm_loc", init, (self.dim,), jnp.float32)
            self.log_scale = self.param("actnorm_log_scale", init, (self.dim,), jnp.float32)

    def bijectors(self) -> list[distrax.Bijector]:
        mask = np.arange(self.dim) < self.dim // 2  # True: passed through, conditioned on
        c = float(self.max_log_scale)
        d = self.dim

        def conditioner(x_masked):
            shift, raw = self.conditioner(x_masked)
            return shift, c * jnp.tanh(raw / c)

        def inner(params):
            shift, log_scale = params
            return distrax.ScalarAffine(shift=shift, log_scale=log_scale)

        steps: list[distrax.Bijector] = []
        if self.actnorm:
            steps.append(ActNorm(self.loc, self.log_scale))
        steps.append(distrax.MaskedCoupling(jnp.asarray(mask), conditioner, inner))
        if self.perm is None:
            steps.append(ReversePermutation(d))
        else:
            steps.append(Permutation(jnp.asarray(self.perm, jnp.int32)))
        return steps


def _chain(steps: list[distrax.Bijector]) -> distrax.Bijector:
    """``steps[0]`` applied first in ``forward`` (distrax.Chain applies its last element first)."""
    return distrax.Chain(list(reversed(steps)))


class Flow2D(nn.Module):
    """RealNVP on ``[..., D]`` with a standard normal base (see the module docstring).

    Methods (call through ``apply(..., method=...)``): ``log_prob(x) -> [...]``,
    ``forward_and_log_det(z)`` (noise -> data), ``inverse_and_log_det(x)`` (data -> noise).
    ``__call__`` is ``log_prob``.
    """

    dim: int
    num_layers: int = 8
    hidden: Sequence[int] = (128, 128)
    max_log_scale: float = 3.0
    actnorm: bool = True
    permutation: str = "reverse"
    perm_seed: int = 0
    dtype: Any = jnp.float32

    def setup(self):
        rng = np.random.default_rng(self.perm_seed)
        perms = [None if self.permutation == "reverse" else tuple(int(p) for p in
                 rng.permutation(self.dim)) for _ in range(self.num_layers)]
        self.steps = [FlowStep(self.dim, tuple(self.hidden), self.max_log_scale, self.actnorm,
                               perms[i], self.dtype) for i in range(self.num_layers)]

    def bijector(self) -> distrax.Bijector:
        """The flow as one distrax bijector (valid only inside ``apply``)."""
        return _chain([b for step in self.steps for b in step.bijectors()])

    def distribution(self) -> distrax.Distribution:
        """``distrax.Transformed(N(0, I_D), flow)`` (valid only inside ``apply``)."""
        base = distrax.MultivariateNormalDiag(jnp.zeros(self.dim, jnp.float32),
                                              jnp.ones(self.dim, jnp.float32))
        return distrax.Transformed(base, self.bijector())

    def log_prob(self, x: jax.Array) -> jax.Array:
        """``log p(x)`` for ``x: [..., D]`` -> ``[...]`` (float32)."""
        return self.distribution().log_prob(x.astype(jnp.float32))

    def forward_and_log_det(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Noise ``z: [..., D]`` -> ``(x: [..., D], log|det dx/dz|: [...])``."""
        return self.bijector().forward_and_log_det(z.astype(jnp.float32))

    def inverse_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Data ``x: [..., D]`` -> ``(z: [..., D], log|det dz/dx|: [...])``."""
        return self.bijector().inverse_and_log_det(x.astype(jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.log_prob(x)


class Flow2DTask(Task):
    """Maximum-likelihood RealNVP on ``x: float32 [D]`` (``best_metric = 'nll'``, in nats)."""

    best_metric = "nll"
    sample_options: ClassVar[dict[str, Any]] = {"temperature": 1.0}

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        spec = data_info.element_spec.get("x")
        if spec is None or len(spec.shape) != 1 or spec.shape[0] is None:
            raise ConfigError(
                f"{config.model.name} needs a vector field 'x' [D] in the data; the data has "
                f"{ {k: tuple(v.shape) for k, v in data_info.element_spec.items()} }",
                hint="use a toy2d/<name> dataset or a transform that yields 'x'")
        self.dim = int(spec.shape[0])
        if self.dim < 2:
            raise ConfigError(f"a coupling flow needs D >= 2, the data's 'x' has D={self.dim}")
        mc = config.model
        num_layers = int(mc.get("num_layers", 8))
        hidden = tuple(int(h) for h in mc.get("hidden", (128, 128)))
        max_log_scale = float(mc.get("max_log_scale", 3.0))
        permutation = str(mc.get("permutation", "reverse"))
        if num_layers < 1:
            raise ConfigError(f"config.model.num_layers must be >= 1, got {num_layers}")
        if not hidden or any(h < 1 for h in hidden):
            raise ConfigError(f"config.model.hidden must be positive widths, got {hidden}")
        if not max_log_scale > 0:
            raise ConfigError(f"config.model.max_log_scale must be > 0, got {max_log_scale}")
        if permutation not in PERMUTATIONS:
            raise ConfigError(f"config.model.permutation={permutation!r}; valid: "
                              f"{', '.join(PERMUTATIONS)}")
        self.model = Flow2D(
            dim=self.dim, num_layers=num_layers, hidden=hidden, max_log_scale=max_log_scale,
            actnorm=bool(mc.get("actnorm", True)), permutation=permutation,
            perm_seed=int(mc.get("perm_seed", 0)),
            dtype=jnp.dtype(config.get("dtype", "float32")))
        self._sample_jit = jax.jit(self._sample, static_argnums=(2,))

    # --- helpers -------------------------------------------------------------------------
    def _apply(self, params: PyTree, *args, **kwargs):
        return self.model.apply({"params": nn.unbox(params)}, *args, **kwargs)

    def log_prob(self, params: PyTree, x: jax.Array) -> jax.Array:
        """``log p(x)`` of ``x: [B, D]`` -> ``[B]`` (nats)."""
        return self._apply(params, x, method=Flow2D.log_prob)

    def _sample(self, params: PyTree, rng: jax.Array, num: int, temperature: jax.Array):
        z = temperature * jax.random.normal(rng, (num, self.dim), jnp.float32)
        x, _ = self._apply(params, z, method=Flow2D.forward_and_log_det)
        return x

    # --- Task contract -------------------------------------------------------------------
    def example_spec(self) -> ElementSpec:
        """``{'x': float32 [D]}`` only (a dataset's ``log_density`` is not fed to the model)."""
        return {"x": jax.ShapeDtypeStruct((self.dim,), jnp.float32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Params (with logical-partitioning boxes) for points shaped like ``batch['x']``."""
        return self.model.init({"params": rng}, batch["x"])["params"]

    def loss(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array,
             step: jax.Array) -> tuple[jax.Array, Metrics]:
        """Mean NLL of ``batch['x']`` (nats per example); metric ``nll`` (the same value)."""
        del rng, step
        nll = masked_mean(-self.log_prob(params, batch["x"]), batch.get("mask"))
        return nll, {"nll": nll}

    def eval_batch(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
                   ) -> Metrics:
        """Per-example ``{'nll', 'loss'}: [B]`` (the two are equal)."""
        del rng
        nll = -self.log_prob(params, batch["x"])
        return {"nll": nll, "loss": nll}

    def sample(self, params: PyTree, rng: jax.Array, num: int, **options) -> jax.Array:
        """``num`` points ``x = f(T z)``, ``z ~ N(0, I)``: float32 ``[num, D]``.

        Options: ``temperature`` ``T >= 0`` (default 1).
        """
        unknown = sorted(set(options) - set(self.sample_options))
        if unknown:
            raise UserError(f"unknown sample option(s) {unknown} for {type(self).__name__}; "
                            f"options: {sorted(self.sample_options)}")
        temperature = float(options.get("temperature", self.sample_options["temperature"]))
        if not temperature >= 0:
            raise UserError(f"sample option temperature must be >= 0, got {temperature}")
        num = int(num)
        if num < 1:
            raise UserError(f"the number of samples must be >= 1, got {num}")
        return self._sample_jit(nn.unbox(params), rng, num, jnp.float32(temperature))

    def write_samples(self, samples: Any, path: str) -> str:
        """Writes ``[N, 2]`` points as a scatter PNG at ``path``; a UserError when ``D != 2``."""
        from jaxflows.eval.scatter import save_scatter

        pts = np.asarray(samples, np.float32)
        return save_scatter(pts, path, title=f"{len(pts)} samples")


TASK = Flow2DTask
