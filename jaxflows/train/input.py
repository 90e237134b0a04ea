"""Engine-side input: process-local slices of deterministic global batches -> global arrays.

The global batch at step ``s`` is the same set of examples whatever the number of processes:
a grain ``MapDataset`` over steps maps step ``s`` to its slice of a per-epoch permutation of the
split (drawn from ``(seed, epoch)``); process ``p`` of ``n`` reads only rows ``[p*b, (p+1)*b)`` of each global batch
(``b = B / n``), so processes read disjoint data and a 1-process and a 2-process run see identical
batches. The iterator is a grain ``DatasetIterator``: ``get_state()``/``set_state()`` are
checkpointed with the train state, so a resumed run continues with the exact next batch.
"""

from __future__ import annotations

import logging

import grain
import jax
import numpy as np

_IN_MEMORY_LIMIT_BYTES = 2 << 30


class ArraySource:
    """A random-access source held in memory: ``{'image': [N,...], 'label': [N]}`` arrays."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self._n = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return self._n

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``indices`` of every array."""
        return {k: v[indices] for k, v in self.arrays.items()}


def materialize(source, fields=("image", "label")) -> ArraySource | object:
    """Reads a random-access source into memory when it is small (< 2 GiB), else returns it."""
    n = len(source)
    first = source[0]
    nbytes = sum(np.asarray(first[f]).nbytes for f in fields if f in first) * n
    if nbytes > _IN_MEMORY_LIMIT_BYTES:
        logging.info("source of %d examples (%.1f GiB) read lazily", n, nbytes / 2**30)
        return source
    getitems = getattr(source, "__getitems__", None)
    rows = []
    for start in range(0, n, 4096):
        idx = list(range(start, min(n, start + 4096)))
        rows.extend(getitems(idx) if getitems else [source[i] for i in idx])
    arrays = {}
    for f in fields:
        if f in first:
            arrays[f] = np.stack([np.asarray(r[f]) for r in rows])
    if "label" in arrays:
        arrays["label"] = arrays["label"].astype(np.int32)
    return ArraySource(arrays)


def _take(source, indices: np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(source, ArraySource):
        return source.take(indices)
    rows = [source[int(i)] for i in indices]
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def train_iterator(source, *, global_batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1):
    """Infinite iterator of this process's slice of each shuffled global batch.

    Yields ``{'image': [b, ...], 'label': int32 [b]}`` with ``b = global_batch_size //
    process_count``. Checkpoint it with ``get_state()``/``set_state()``.
    """
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by "
                         f"{process_count} processes")
    if len(source) < global_batch_size:
        raise ValueError(f"the split has {len(source)} examples, fewer than one global batch "
                         f"of {global_batch_size}")
    b = global_batch_size // process_count
    lo, hi = process_index * b, (process_index + 1) * b
    steps_per_epoch = len(source) // global_batch_size
    n = len(source)
    cache: dict[int, np.ndarray] = {}

    def global_indices(step: int) -> np.ndarray:
        # A fresh permutation per epoch from (seed, epoch); the remainder of an epoch is dropped.
        epoch, j = divmod(step, steps_per_epoch)
        perm = cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([seed, epoch]).permutation(n)
            cache.clear()
            cache[epoch] = perm
        return perm[j * global_batch_size:(j + 1) * global_batch_size]

    ds = (grain.MapDataset.range(steps_per_epoch).repeat(None)
          .map_with_index(lambda step, _: global_indices(step)[lo:hi])
          .map(lambda idx: _take(source, idx)))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def eval_batches(source, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1):
    """One ordered pass over the split: this process's slices of padded global batches.

    Each yielded dict has a float32 ``mask`` [b] (1 real, 0 padding); across processes every
    example appears exactly once with mask 1.
    """
    n = len(source)
    b = global_batch_size // process_count
    for start in range(0, n, global_batch_size):
        idx = np.arange(start + process_index * b, start + (process_index + 1) * b)
        mask = (idx < n).astype(np.float32)
        batch = _take(source, np.where(idx < n, idx, 0))
        batch["mask"] = mask
        yield batch


def to_global(local_batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Assembles process-local numpy batches into global ``jax.Array``s sharded on the batch."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
