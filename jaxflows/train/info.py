"""``jaxflows info``: parameter count, FLOPs per example and per-device memory of a config.

Nothing is allocated for the parameter count (``jax.eval_shape``). FLOPs are counted on the train
step's jaxpr (:mod:`jaxflows.train.flops`: scanned layers count once per layer); XLA's cost
analysis of the lowered step, which counts a scan body once, is kept alongside for comparison.
Memory comes from the compiled step's memory analysis on the config's mesh (when this machine has
enough devices), else from the sharded state size alone.

Memory depends on how the model computes attention and what it keeps for the backward pass, so
for a model config with ``attention`` / ``remat`` keys (the Transformer models) the result names
the kernel and the rematerialisation policy the estimate assumes: ``attention='auto'`` resolves
on the platform the step compiles for (``chunked`` on a CPU, cuDNN flash attention on a GPU in
bf16), so an estimate made on a CPU for a GPU run is one with chunked attention.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxflows.errors import UserError
from jaxflows.train.flops import step_flops
from jaxflows.train.task import DataInfo, batch_of


def _info_data(config) -> DataInfo:
    from jaxflows.train.loop import data_info

    try:
        return data_info(config)
    except UserError:  # not prepared here, or not an offline dataset (ImageNet)
        if not config.data.image_shape:
            raise
        return DataInfo.for_images(config.data.image_shape, int(config.data.num_classes),
                                   num_train=config.train.batch_size)


def _bytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_assumptions(config, platform: str) -> dict[str, str]:
    """``{'attention': ..., 'remat': ...}`` for a model config with those keys (Transformer
    models): the attention kernel ``config.model.attention`` runs on ``platform`` and the
    rematerialisation policy of the layers. Empty for models without them."""
    m = config.model
    out = {}
    if "attention" in m:
        from jaxflows.nn.transformer import resolve_attention

        impl = str(m.attention)
        kernel = resolve_attention(impl, config.get("dtype", "float32"), platform)
        out["attention"] = (kernel if kernel == impl
                            else f"{kernel} (config.model.attention={impl!r} on {platform})")
    if "remat" in m:
        from jaxflows.nn.transformer import remat_policy_name

        out["remat"] = remat_policy_name(m.remat)
    return out


def model_info(config, *, compile_step: bool = True) -> dict:
    """Returns ``{params, mesh, example, flops_per_example, matmul_flops_per_example,
    xla_flops_per_example, state_bytes_per_device, peak_bytes_per_device}``, plus ``attention``
    and ``remat`` (see :func:`memory_assumptions`) for Transformer models.

    ``flops_per_example`` / ``matmul_flops_per_example``: executed FLOPs of one train step
    (forward, backward, any rematerialisation, optimizer update) divided by the batch size,
    counted on the jaxpr (:func:`jaxflows.train.flops.step_flops`); ``xla_flops_per_example``:
    XLA's cost analysis of the same step, which counts each scan/while body once.
    ``flops_uncounted_loops`` is added when the step has ``while`` loops of unknown trip count
    (their bodies counted once)."""
    from jaxflows.train.loop import build

    run = build(config, _info_data(config))
    state = run.abstract_state()
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
    out = {"params": int(n_params), "mesh": dict(run.mesh.shape),
           "example": {k: f"{np.dtype(v.dtype).name}{list(v.shape)}"
                       for k, v in run.example_spec.items()}}
    out.update(memory_assumptions(config, run.mesh.devices.flat[0].platform))
    b = config.train.batch_size
    batch = batch_of(run.example_spec, b, sharding=run.batch_sharding)
    with jax.set_mesh(run.mesh):
        counted = step_flops(run.train_step, state, batch)
        out["flops_per_example"] = counted["flops"] / b
        out["matmul_flops_per_example"] = counted["matmul_flops"] / b
        if counted["uncounted_loops"]:
            out["flops_uncounted_loops"] = counted["uncounted_loops"]
        lowered = run.train_step.lower(state, batch)
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        out["xla_flops_per_example"] = flops / b
        # per-device share of the state, from each leaf's sharding
        per_dev = 0
        for leaf in jax.tree.leaves(state):
            shard = leaf.sharding.shard_shape(leaf.shape)
            per_dev += math.prod(shard) * np.dtype(leaf.dtype).itemsize
        out["state_bytes_per_device"] = int(per_dev)
        if compile_step:
            mem = lowered.compile().memory_analysis()
            if mem is not None:
                peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                        + mem.temp_size_in_bytes - getattr(mem, "alias_size_in_bytes", 0))
                out["peak_bytes_per_device"] = int(peak)
    return out
