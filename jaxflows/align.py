"""Flow-prior alignment: a frozen flow-matching prior's loss as a regulariser on latents.

"Aligning Latent Spaces with Flow Priors" (Li et al. 2025, arXiv 2506.05240; official code
GitHub ``liyz15/Aligning-Latent-Spaces-with-Flow-Priors``): train a flow-matching velocity field
``v`` on target features (:mod:`jaxflows.models.flow_matching`), freeze it, and add

    L_align(y) = E_{t ~ U[0,1], eps ~ N(0, I)} || v((1 - t) eps + t y, t) - (y - eps) ||^2

(Eq. 5) to a model's loss for its latents ``y``. Only the model learns: the prior's parameters
get no gradient, but ``y`` does, through both the network input ``(1 - t) eps + t y`` and the
regression target ``y - eps`` (no stop-gradient on ``y``). The time convention is the prior's
own (noise at ``t = 0``, data at ``t = 1``). Prop. 1 of the paper reads ``L_align`` as a
surrogate of ``-log p(y)``: ``log p_1(y) >= C(y) - L_align(y)`` with
``C(y) = -E_{s, x0}[Tr dv/dz((1 - s) x0 + s y, s)]`` (:func:`divergence_term`).

Pieces:

* :func:`flow_prior_loss` (random ``t, eps``; per example ``[B]``) and
  :func:`flow_prior_loss_at` (given draws shared by all points: common random numbers, for
  low-noise maps of ``L_align``), :func:`divergence_term` (``C(y)`` with exact traces);
* reducers for target features whose dimension ``d2`` differs from the latent dimension
  ``d1``: :class:`FixedProjection` (the paper's choice: a fixed ``N(0, 1/d2)`` matrix from a
  seed), :class:`PCAProjection` and :class:`AveragePool` (the paper's ablation, Table 2a),
  made by name with :func:`make_reducer`. Project the *targets* before training the prior;
  the latents are aligned as they are;
* :class:`FlowPriorAlignment`: ``lambda * L_align`` for any task, configured by
  ``config.model.align`` (:func:`default_align_config`).

**Adding the term to a task.** In the task's ``__init__``::

    self.align = FlowPriorAlignment.from_config(config.model.get("align"))  # None when off

and in its ``loss``, after computing the latents ``z: [B, d]`` (or ``[B, T, d]``, tokens)::

    if self.align is not None:
        loss, metrics = self.align.add_to(loss, metrics, z, jax.random.fold_in(rng, 7),
                                          batch.get("mask"))

with ``config.model.align = default_align_config()`` filled in: ``prior_workdir`` (a workdir
trained with ``jaxflows.models.flow_matching`` on the targets), ``weight`` (``lambda``; the
paper uses 0.01 with ``reduction='mean'``), ``repeats`` (``(t, eps)`` draws per latent, the
official ``flow_mul = 4``), ``reduction`` and ``params``. The prior's parameters are held
outside the task's parameter tree (no optimiser state, nothing to freeze). To carry them in the
tree instead (e.g. to checkpoint them with the model), graft them with ``config.init_from``,
freeze them with ``config.optim.freeze`` and call :func:`flow_prior_loss` with that subtree.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.errors import ConfigError

PyTree = Any
#: ``prior_apply(params, x_t: [N, d], t: [N]) -> v: [N, d]``
PriorApply = Callable[[PyTree, jax.Array, jax.Array], jax.Array]
#: ``velocity(x: [..., d], t: broadcastable to [...]) -> [..., d]``
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]

REDUCTIONS = ("sum", "mean")
REDUCERS = ("random", "pca", "pool")
PARAM_TREES = ("best_params", "ema_params", "params")


def _tokens(y: jax.Array) -> tuple[jax.Array, int]:
    if y.ndim < 2:
        raise ValueError(f"latents must be [B, d] or [B, ..., d], got shape {y.shape}")
    return y.reshape(-1, y.shape[-1]), y.shape[0]


def flow_prior_loss(prior_apply: PriorApply, prior_params: PyTree, y: jax.Array,
                    rng: jax.Array, repeats: int = 4, *, reduction: str = "sum") -> jax.Array:
    """Per-example alignment loss ``L_align`` of latents ``y: [B, d]`` or ``[B, ..., d]`` ->
    ``[B]`` (float32).

    Each latent vector (each token of ``[B, T, d]``: the per-token, unconditional prior of the
    paper) gets ``repeats`` independent draws ``t ~ U[0, 1]``, ``eps ~ N(0, I_d)``; its loss is
    the mean over draws of ``||v((1 - t) eps + t y, t) - (y - eps)||^2``, summed over ``d``
    (``reduction='sum'``, Eq. 5) or averaged over ``d`` (``'mean'``, the official code's
    ``mse_loss``: ``sum / d``). Token losses are averaged per example.

    ``prior_params`` pass through ``stop_gradient``: differentiating the result w.r.t. the
    prior's parameters gives zeros, while gradients reach ``y`` (and whatever produced it).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; valid: {', '.join(REDUCTIONS)}")
    params = jax.tree.map(jax.lax.stop_gradient, prior_params)
    tokens, b = _tokens(y)
    tokens = tokens.astype(jnp.float32)
    # the draws of jaxflows.models.flow_matching.rectified_flow_error (tested to agree)
    k_t, k_e = jax.random.split(rng)
    t = jax.random.uniform(k_t, (int(repeats), tokens.shape[0]), jnp.float32)
    eps = jax.random.normal(k_e, (int(repeats), *tokens.shape), jnp.float32)
    xt = (1.0 - t[..., None]) * eps + t[..., None] * tokens[None]
    v = prior_apply(params, xt.reshape(-1, tokens.shape[-1]), t.reshape(-1)).reshape(xt.shape)
    err = jnp.mean(jnp.sum((v - (tokens[None] - eps)) ** 2, axis=-1), axis=0)
    if reduction == "mean":
        err = err / tokens.shape[-1]
    return jnp.mean(err.reshape(b, -1), axis=-1)


def flow_prior_loss_at(velocity: VelocityFn, y: jax.Array, t: jax.Array, eps: jax.Array,
                       ) -> jax.Array:
    """``L_align`` of ``y: [B, d]`` -> ``[B]`` with the *same* draws ``t: [K]``, ``eps: [K, d]``
    for every point (common random numbers: a smooth, low-noise map of the loss; squared error
    summed over ``d``, averaged over the ``K`` draws). One network call of ``B`` rows per draw
    with a shared time (the time path runs once per draw); ``velocity`` is the prior with its
    parameters bound (wrap them in ``stop_gradient`` if gradients are taken)."""
    y = y.astype(jnp.float32)

    def body(total, draw):
        tk, ek = draw
        xt = (1.0 - tk) * ek[None, :] + tk * y
        v = velocity(xt, tk[None])
        return total + jnp.sum((v - (y - ek[None, :])) ** 2, axis=-1), None

    total, _ = jax.lax.scan(body, jnp.zeros(y.shape[:1], jnp.float32),
                            (t.astype(jnp.float32), eps.astype(jnp.float32)))
    return total / t.shape[0]


def divergence_term(velocity: VelocityFn, y: jax.Array, t: jax.Array, eps: jax.Array
                    ) -> jax.Array:
    """``C(y) = -E_{s, x0}[Tr dv/dz((1 - s) x0 + s y, s)]`` of Prop. 1 for ``y: [B, d]`` ->
    ``[B]``, with exact traces (``d`` JVPs; for small ``d``) and the draws ``s = t: [K]``,
    ``x0 = eps: [K, d]`` shared by every point."""
    y = y.astype(jnp.float32)
    d = y.shape[-1]

    def body(total, draw):
        tk, ek = draw
        z = (1.0 - tk) * ek[None, :] + tk * y
        fn = lambda zz: velocity(zz, tk[None])  # noqa: E731
        tr = jnp.zeros(y.shape[:1], jnp.float32)
        for i in range(d):  # rows are independent: one JVP per coordinate gives the diagonal
            e = jnp.zeros_like(z).at[:, i].set(1.0)
            tr = tr + jax.jvp(fn, (z,), (e,))[1][:, i]
        return total + tr, None

    total, _ = jax.lax.scan(body, jnp.zeros(y.shape[:1], jnp.float32),
                            (t.astype(jnp.float32), eps.astype(jnp.float32)))
    return -total / t.shape[0]


# --- reducers for target features (d2 -> d1) ----------------------------------------------------

class FixedProjection:
    """A fixed random linear map ``x: [..., d2] -> x @ W: [..., d1]``, no bias, with
    ``W: [d2, d1]`` of i.i.d. ``N(0, 1/d2)`` entries (the paper's ``FixedProjection``).

    ``W`` is drawn once, on the host, by numpy's PCG64 generator from ``seed`` (the paper: 42):
    the same ``(d2, d1, seed)`` gives the same matrix in every call, process and machine, and
    nothing about it is trainable. (The official PyTorch matrix itself cannot be reproduced
    without torch's generator; the distribution is the same.)
    """

    def __init__(self, in_dim: int, out_dim: int, seed: int = 42):
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"dimensions must be >= 1, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.seed = int(in_dim), int(out_dim), int(seed)
        rng = np.random.default_rng(self.seed)
        self.matrix = (rng.standard_normal((self.in_dim, self.out_dim))
                       / math.sqrt(self.in_dim)).astype(np.float32)
        self.matrix.setflags(write=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x: [..., d2] -> [..., d1]`` (float32)."""
        return jnp.asarray(x, jnp.float32) @ jnp.asarray(self.matrix)


class PCAProjection:
    """Projection on the top ``d1`` principal directions of fitted features:
    ``x: [..., d2] -> (x - mean) @ V: [..., d1]`` (``V: [d2, d1]`` orthonormal columns, by
    decreasing variance; each column's sign fixed so its largest-magnitude entry is positive).
    Build with :meth:`fit`."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, explained_variance: np.ndarray):
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)
        self.explained_variance = np.asarray(explained_variance, np.float32)
        self.in_dim, self.out_dim = self.components.shape

    @classmethod
    def fit(cls, features, out_dim: int) -> PCAProjection:
        """PCA of ``features: [N, d2]`` (``out_dim <= min(N, d2)``), in float64 by SVD."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or not 1 <= out_dim <= min(f.shape):
            raise ValueError(f"PCA of features {f.shape} to {out_dim} dimensions is not possible")
        mean = f.mean(0)
        _, s, vt = np.linalg.svd(f - mean, full_matrices=False)
        comps = vt[:out_dim].T
        flip = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(out_dim)])
        comps = comps * np.where(flip == 0, 1.0, flip)
        return cls(mean, comps, s[:out_dim] ** 2 / max(len(f) - 1, 1))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x: [..., d2] -> [..., d1]`` (float32)."""
        return (jnp.asarray(x, jnp.float32) - self.mean) @ jnp.asarray(self.components)


class AveragePool:
    """Adaptive average pooling along the feature axis ``[..., d2] -> [..., d1]``: output ``i``
    is the mean of inputs ``floor(i d2 / d1) .. ceil((i + 1) d2 / d1) - 1`` (PyTorch's
    ``AdaptiveAvgPool1d`` bins; contiguous, equal blocks when ``d1`` divides ``d2``)."""

    def __init__(self, in_dim: int, out_dim: int):
        if not 1 <= out_dim <= in_dim:
            raise ValueError(f"average pooling needs 1 <= d1 <= d2, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        m = np.zeros((self.in_dim, self.out_dim), np.float32)
        for i in range(self.out_dim):
            lo = (i * self.in_dim) // self.out_dim
            hi = -((-(i + 1) * self.in_dim) // self.out_dim)
            m[lo:hi, i] = 1.0 / (hi - lo)
        self.matrix = m

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x: [..., d2] -> [..., d1]`` (float32)."""
        return jnp.asarray(x, jnp.float32) @ jnp.asarray(self.matrix)


def make_reducer(kind: str, in_dim: int, out_dim: int, *, seed: int = 42, features=None):
    """A reducer ``[..., in_dim] -> [..., out_dim]`` by name: ``'random'``
    (:class:`FixedProjection` from ``seed``), ``'pca'`` (:class:`PCAProjection` fitted to
    ``features: [N, in_dim]``) or ``'pool'`` (:class:`AveragePool`)."""
    if kind == "random":
        return FixedProjection(in_dim, out_dim, seed)
    if kind == "pca":
        if features is None:
            raise ValueError("the 'pca' reducer needs features to fit")
        if np.shape(features)[-1] != in_dim:
            raise ValueError(f"features have {np.shape(features)[-1]} dims, expected {in_dim}")
        return PCAProjection.fit(features, out_dim)
    if kind == "pool":
        return AveragePool(in_dim, out_dim)
    raise ValueError(f"reducer {kind!r} is unknown; valid: {', '.join(REDUCERS)}")


# --- lambda * L_align for any task, from its config ---------------------------------------------

def default_align_config() -> ml_collections.ConfigDict:
    """``config.model.align`` with its defaults (``weight = 0`` or no workdir: off)."""
    a = ml_collections.ConfigDict()
    a.prior_workdir = ""  # a workdir trained with jaxflows.models.flow_matching ("" = off)
    a.weight = 0.0  # lambda (the paper: 0.01 with reduction 'mean')
    a.repeats = 4  # (t, eps) draws per latent vector (the official flow_mul)
    a.reduction = "mean"  # 'mean' over the latent dim (official mse) | 'sum' (Eq. 5's norm)
    a.params = "best_params"  # best_params | ema_params | params of the prior workdir
    return a


def load_prior(workdir: str, params: str = "best_params") -> tuple[Any, PyTree, int]:
    """``(task, params, dim)`` of a prior's workdir: its ``config.json`` names the task (found by
    name, as the engine does, so this module imports no model), its newest checkpoint holds the
    parameters (``params`` names the tree, falling back to ``params`` if it was not kept). The
    task must offer ``velocity_fn(params) -> v(x: [N, d], t: [N])``, as
    ``jaxflows.models.flow_matching`` does; ``dim`` is ``d``, read from the first layer."""
    from jaxflows.train.loop import load_saved_config
    from jaxflows.train.pretrained import read_tree
    from jaxflows.train.task import DataInfo, load_task_class

    if params not in PARAM_TREES:
        raise ConfigError(f"align.params={params!r}; valid: {', '.join(PARAM_TREES)}")
    config = load_saved_config(workdir)
    cls = load_task_class(config.model.name)
    if not hasattr(cls, "velocity_fn"):
        raise ConfigError(f"align.prior_workdir={workdir} was trained with {config.model.name}, "
                          "which has no velocity field",
                          hint="train the prior with jaxflows.models.flow_matching")
    tree = read_tree(workdir)
    chosen = tree.get(params)
    if chosen is None:
        logging.warning("prior %s has no %s; using its params", workdir, params)
        chosen = tree["params"]
    dim = int(np.shape(chosen["input_proj"]["kernel"])[0])
    field = str(config.model.get("field", "x"))
    task = cls(config, DataInfo({field: jax.ShapeDtypeStruct((dim,), jnp.float32)}, 0))
    return task, jax.tree.map(jnp.asarray, chosen), dim


class FlowPriorAlignment:
    """``weight * L_align`` of a task's latents under a frozen prior (see the module
    docstring). ``prior_apply(params, x: [N, d], t: [N]) -> [N, d]`` is the prior's velocity,
    ``params`` its parameters (held here, outside any trainable tree), ``dim`` its ``d``."""

    def __init__(self, prior_apply: PriorApply, params: PyTree, dim: int, *, weight: float,
                 repeats: int = 4, reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ConfigError(f"align.reduction={reduction!r}; valid: {', '.join(REDUCTIONS)}")
        if int(repeats) < 1:
            raise ConfigError(f"align.repeats must be >= 1, got {repeats}")
        self.prior_apply, self.params, self.dim = prior_apply, params, int(dim)
        self.weight, self.repeats, self.reduction = float(weight), int(repeats), reduction

    @classmethod
    def from_config(cls, align_config) -> FlowPriorAlignment | None:
        """From ``config.model.align`` (keys of :func:`default_align_config`); None when the
        config is absent, its ``weight`` is 0 or its ``prior_workdir`` is empty."""
        if align_config is None:
            return None
        cfg = dict(align_config)
        unknown = sorted(set(cfg) - set(default_align_config()))
        if unknown:
            raise ConfigError(f"config.model.align has unknown keys {unknown}; valid: "
                              f"{sorted(default_align_config())}")
        merged = {**default_align_config().to_dict(), **cfg}
        if float(merged["weight"]) == 0.0 or not merged["prior_workdir"]:
            return None
        if float(merged["weight"]) < 0:
            raise ConfigError(f"align.weight must be >= 0, got {merged['weight']}")
        workdir = os.fspath(merged["prior_workdir"])
        if not os.path.isdir(workdir):
            raise ConfigError(f"align.prior_workdir={workdir} does not exist",
                              hint="train the prior first (jaxflows.models.flow_matching)")
        task, params, dim = load_prior(workdir, str(merged["params"]))
        return cls(lambda p, x, t: task.velocity_fn(p)(x, t), params, dim,
                   weight=float(merged["weight"]), repeats=int(merged["repeats"]),
                   reduction=str(merged["reduction"]))

    def per_example(self, y: jax.Array, rng: jax.Array) -> jax.Array:
        """``L_align`` of ``y: [B, d]`` or ``[B, ..., d]`` -> ``[B]`` (not weighted)."""
        if y.shape[-1] != self.dim:
            raise ValueError(f"latents have {y.shape[-1]} features, the prior models {self.dim}")
        return flow_prior_loss(self.prior_apply, self.params, y, rng, self.repeats,
                               reduction=self.reduction)

    def add_to(self, loss: jax.Array, metrics: dict, y: jax.Array, rng: jax.Array,
               mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """``(loss + weight * mean L_align, metrics + {'align_loss'})``; the mean is over the
        examples where ``mask`` (``[B]``, optional) is nonzero."""
        per = self.per_example(y, rng)
        if mask is None:
            value = jnp.mean(per)
        else:
            m = mask.astype(jnp.float32)
            value = jnp.sum(per * m) / jnp.maximum(jnp.sum(m), 1.0)
        return loss + self.weight * value, {**metrics, "align_loss": value}
