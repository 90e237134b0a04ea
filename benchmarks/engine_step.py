"""The engine's own compiled train step for a benchmark: ``build(config)`` -> state, batch and
``run.train_step`` compiled once, so benchmarks time exactly what ``jaxflows train`` runs."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def compiled_engine_step(config, info, local_batch: dict[str, np.ndarray]):
    """``(run, state, batch, compiled_step, compile_s)`` for ``config`` on data ``info``
    (a :class:`jaxflows.train.task.DataInfo`: no dataset is read) and one numpy batch."""
    from jaxflows.train.loop import build

    run = build(config, info)
    with jax.set_mesh(run.mesh):
        state = run.init_state()
        batch = run.global_batch(local_batch)
        t = time.perf_counter()
        compiled = run.train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t
    return run, state, batch, compiled, compile_s


def flops_of(compiled) -> float:
    """XLA's FLOP count of a compiled function (nan when unknown)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def model_flops(run, state, batch) -> float:
    """FLOPs of one train step counted on its jaxpr (scanned layers once per layer; see
    :mod:`jaxflows.train.flops`), unlike XLA's cost analysis of the compiled step, which counts
    a ``scan`` body once."""
    from jaxflows.train.flops import step_flops

    with jax.set_mesh(run.mesh):
        return float(step_flops(run.train_step, state, batch)["flops"])


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """This machine's matmul peak: FLOP/s of a jitted ``n x n`` float32 matmul, best of
    ``reps`` calls after a warm-up."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
