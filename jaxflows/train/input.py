"""Engine-side input: open a split (in memory when small), global batches from process-local ones.

The batching itself (deterministic, checkpointable, the same global batches on any number of
processes) lives in :mod:`jaxflows.data.pipeline`.
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from jaxflows.data.registry import InMemorySource

IN_MEMORY_LIMIT_BYTES = 2 << 30


def materialize(source):
    """Holds a source in memory (:class:`InMemorySource`) when it is under 2 GiB, else as is."""
    if isinstance(source, InMemorySource) or hasattr(source, "get_batch"):
        return source
    first = source[0]
    nbytes = sum(np.asarray(v).nbytes for v in first.values()) * len(source)
    if nbytes > IN_MEMORY_LIMIT_BYTES:
        logging.info("source of %d examples (%.1f GiB) read lazily", len(source), nbytes / 2**30)
        return source
    return InMemorySource(source)


def to_global(local_batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Assembles process-local numpy batches into global ``jax.Array``s sharded on the batch."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def to_global_stacked(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Process-local stacked batches ``{field: [k, b, ...]}`` -> global ``[k, B, ...]`` arrays
    (axis 1 sharded), ``B = b * process_count``."""
    out = {}
    nproc = jax.process_count()
    for key, value in local.items():
        value = np.asarray(value)
        global_shape = (value.shape[0], value.shape[1] * nproc) + value.shape[2:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
