"""Device mesh ``('data', 'fsdp', 'tensor')`` and logical-name -> mesh-axis sharding rules.

Modules annotate weights with logical axis names (``nn.with_logical_partitioning``); the
config's ``sharding_rules`` map each name to a mesh axis (or a tuple of axes, or None). A weight
dimension that a mesh axis does not divide is left replicated along that axis (logged), so one
config runs unchanged on 1 CPU device and on a pod slice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxflows.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """Resolves ``config.mesh`` (with at most one -1) against the device count."""
    sizes = [int(mesh_config[a]) for a in MESH_AXES]
    if sum(s == -1 for s in sizes) > 1:
        raise ConfigError(f"config.mesh has more than one -1 axis: {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"config.mesh sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if known > num_devices:
        raise ConfigError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {known} devices, "
            f"but only {num_devices} are available"
        )
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh: {num_devices} devices are not divisible by the fixed axes ({known})"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        logging.info("mesh uses %d of %d devices", math.prod(sizes), num_devices)
    return tuple(sizes)


def use_cpu_devices(n: int) -> None:
    """Splits this host's CPU into ``n`` XLA devices (jax's ``jax_num_cpu_devices``), so that a
    config with ``mesh.data = -1`` runs data parallel over them, and sharded configs can be tried
    on one machine. On a 2-core CPU, two devices ran the TarFlow train step 1.04-1.11x faster
    than one (``benchmarks/README.md``). No effect on a GPU or TPU backend. Must run before
    jax starts its backends (the first jax operation); afterwards it is accepted only if the
    CPU device count already is ``n``."""
    n = int(n)
    if n < 1:
        raise ConfigError(f"cpu_devices must be >= 1, got {n}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if have != n:
            raise ConfigError(
                f"cpu_devices={n}: jax already started with {have} CPU device(s); set it "
                "before any jax operation (or pass --cpu_devices on the command line)"
            ) from None


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the 3-axis mesh with Auto axis types (rule-driven GSPMD propagation)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    n = math.prod(shape)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                             devices=devices[:n])
    except (TypeError, ValueError):
        return Mesh(np.asarray(devices[:n]).reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shards the leading (example) axis over data x fsdp; other axes replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def _rule_axes(rules: dict, name: str | None) -> tuple[str, ...]:
    if name is None or name not in rules or rules[name] is None:
        return ()
    target = rules[name]
    return (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules
) -> PartitionSpec:
    """Maps a weight's logical axis names to a PartitionSpec, skipping non-dividing axes."""
    rules = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = []
        for axis in _rule_axes(rules, name):
            size = mesh.shape[axis]
            if axis in used or size == 1:
                continue
            if dim % (size * math.prod(mesh.shape[a] for a in axes)):
                logging.info("dim %d (%s) not divisible by mesh axis %s=%d: replicated",
                             dim, name, axis, size)
                continue
            axes.append(axis)
            used.add(axis)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def param_shardings(abstract_params, mesh: Mesh, rules):
    """Shardings for a (possibly boxed) abstract params tree from ``jax.eval_shape(init)``."""

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.value
            return NamedSharding(mesh, logical_to_spec(leaf.names, value.shape, mesh, rules))
        return replicated(mesh)

    boxed = jax.tree.map(one, abstract_params,
                         is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return boxed


def _dict_keys(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def optimizer_state_shardings(abstract_opt_state, abstract_params, param_shardings, mesh: Mesh):
    """Shardings for an optimiser state: a leaf whose path ends with a parameter's path and has
    its shape (Adam's moments, also inside ``optax.multi_transform`` or ``masked``) takes that
    parameter's sharding; every other leaf (counts, scalars) is replicated."""
    by_path = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
        by_path[_dict_keys(path)] = (tuple(leaf.shape), path)
    shard_of = {_dict_keys(p): s for p, s in
                jax.tree_util.tree_leaves_with_path(param_shardings)}
    rep = replicated(mesh)

    def one(path, leaf):
        keys = _dict_keys(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[0] == shape:
                return shard_of[keys[start:]]
        return rep

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)
