"""Input pipeline: deterministic, checkpointable, per-process batches from a random-access source.

Training batches (:func:`train_iterator`)
    Epoch ``e`` visits the records in the order of a fixed permutation
    (:func:`epoch_permutation`, from ``seed`` and ``e``), cut into ``N // global_batch_size``
    global batches (the ``N % global_batch_size`` last records of each epoch's order are
    dropped, a different few each epoch). Process ``p`` of ``P`` reads only rows
    ``[p*b, (p+1)*b)`` of every global batch, ``b = global_batch_size // P``. So within an
    epoch the processes read disjoint records, and concatenating the process-local batches in
    process order gives exactly the global batch that a single process would read: the data
    stream does not depend on the number of processes (``jax.make_array_from_process_local_data``
    assembles it when the batch axis of the mesh is laid out in process order).

    The iterator is a grain ``DatasetIterator`` (a ``MapDataset`` of batches ->
    ``to_iter_dataset``), reading each local batch with one batched read, a couple of batches
    ahead in threads of this process (no worker processes; the order is deterministic).
    It has ``get_state()`` / ``set_state(state)`` (a small JSON-able dict), and works with
    grain's Orbax handler. Saving and restoring it with an Orbax ``CheckpointManager``::

        import grain, orbax.checkpoint as ocp
        it = train_iterator(src, global_batch_size=128, seed=0)
        mngr = ocp.CheckpointManager(workdir + "/checkpoints")
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(train_state),
            data=grain.checkpoint.CheckpointSave(it)))
        ...
        it = train_iterator(src, global_batch_size=128, seed=0)   # same arguments
        restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_train_state),
            data=grain.checkpoint.CheckpointRestore(it)))
        it = restored["data"]        # the same object, positioned after the saved batch

    The handler writes one ``process_{i}-of-{n}.json`` per JAX process (``jax.process_index``).
    Without Orbax: ``state = it.get_state()`` then ``it.set_state(state)`` on a fresh iterator.

Evaluation batches (:func:`eval_batches`)
    One pass over the split in record order, the global batch ``k`` holding records
    ``[k*B, (k+1)*B)``, padded past the end; process ``p`` gets rows ``[p*b, (p+1)*b)`` of each
    global batch and a ``mask`` (1 real, 0 padding). Every process yields the same number of
    batches (``ceil(N / B)``), and over all processes every record appears exactly once with
    mask 1.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxflows.data.registry import narrow_dtype
from jaxflows.errors import UserError

__all__ = [
    "epoch_permutation", "eval_batches", "local_batch_size", "read_batch", "train_dataset",
    "train_iterator",
]


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """``global_batch_size // process_count``; UserError unless it divides exactly and is > 0."""
    if global_batch_size <= 0 or process_count <= 0:
        raise UserError(
            f"batch size and process count must be positive, got {global_batch_size} and "
            f"{process_count}"
        )
    if global_batch_size % process_count:
        raise UserError(
            f"global batch size {global_batch_size} is not divisible by the number of "
            f"processes {process_count}"
        )
    return global_batch_size // process_count


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index {process_index} not in [0, {process_count})")


def _to_numpy(example: dict[str, Any]) -> dict[str, Any]:
    """Normalise one example: ``image`` -> uint8, 64-bit numbers -> 32-bit; others as arrays."""
    return {k: _to_numpy_batch(k, v) for k, v in example.items()}


def _stack(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    rows = [_to_numpy(r) for r in rows]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def read_batch(source, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Read records ``indices`` of ``source`` as one batch dict of numpy arrays ``[len, ...]``.

    Uses ``source.get_batch`` (in-memory sources), else one batched ``__getitems__`` read
    (TFDS ArrayRecord sources: much faster than record by record), else ``source[i]``.
    ``image`` becomes uint8, 64-bit numbers 32-bit (``label`` int32).
    """
    if hasattr(source, "get_batch"):
        return {k: _to_numpy_batch(k, v) for k, v in source.get_batch(indices).items()}
    many = getattr(source, "__getitems__", None)
    rows = many(list(indices)) if many is not None else [source[i] for i in indices]
    return _stack(rows)


def _to_numpy_batch(key: str, value) -> np.ndarray:
    if key == "image":
        return np.asarray(value, dtype=np.uint8)
    value = np.asarray(value)
    if value.dtype.kind in "iuf":
        return value.astype(narrow_dtype(value.dtype), copy=False)
    return value


def epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    """The record order of ``epoch``: a permutation of ``range(num_records)`` (int64 [N]).

    ``numpy.random.default_rng([seed, epoch]).permutation(num_records)``.
    """
    return np.random.default_rng([seed, epoch]).permutation(num_records)


class _LocalBatchMapDataset(grain.MapDataset):
    """Infinite sequence of this process's part of consecutive global training batches.

    Element ``t`` (global step ``t = e * steps_per_epoch + s``) reads records
    ``perm_e[s*B + p*b : s*B + (p+1)*b]`` with one batched read (``perm_e`` from
    :func:`epoch_permutation`).
    """

    def __init__(self, source, *, seed: int, global_batch: int, local_batch: int,
                 process_index: int):
        super().__init__()
        self._source = source
        self._n = len(source)
        self._seed = seed
        self._gb = global_batch
        self._lb = local_batch
        self._p = process_index
        self._steps_per_epoch = self._n // global_batch
        self._lock = threading.Lock()
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._perm_cache.get(epoch)
            if perm is None:
                perm = epoch_permutation(self._n, self._seed, epoch)
                # Prefetch threads may straddle an epoch boundary: keep two epochs.
                for old in sorted(self._perm_cache)[:-1]:
                    del self._perm_cache[old]
                self._perm_cache[epoch] = perm
            return perm

    def record_indices(self, step: int) -> np.ndarray:
        """Source record indices (int64 [b]) of this process's rows of global step ``step``."""
        epoch, s = divmod(int(step), self._steps_per_epoch)
        start = s * self._gb + self._p * self._lb
        return self._perm(epoch)[start:start + self._lb]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        with self._stats.record_self_time():
            return read_batch(self._source, self.record_indices(index).tolist())

    def __str__(self) -> str:
        return (f"_LocalBatchMapDataset(n={self._n}, seed={self._seed}, "
                f"global_batch={self._gb}, local_batch={self._lb}, process_index={self._p})")


def train_dataset(
    source,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """The infinite grain ``MapDataset`` of process-local training batches (see module doc).

    Element ``k`` is the local part of global step ``k``: ``{'image': uint8 [b, H, W, C],
    'label': int32 [b]}`` (other fields of the source are batched as numpy arrays too).
    """
    b = local_batch_size(global_batch_size, process_count)
    _check_process(process_index, process_count)
    n = len(source)
    if n < global_batch_size:
        raise UserError(
            f"the split has {n} examples, fewer than the global batch size {global_batch_size}"
        )
    if not 0 <= seed < 2**32:
        raise UserError(f"seed must be in [0, 2**32), got {seed}")
    return _LocalBatchMapDataset(
        source, seed=seed, global_batch=global_batch_size, local_batch=b,
        process_index=process_index,
    )


def train_iterator(
    source,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 2,
    prefetch: int = 4,
) -> grain.DatasetIterator:
    """Infinite, checkpointable iterator of process-local numpy training batches.

    Yields ``{'image': uint8 [b, H, W, C], 'label': int32 [b]}`` with
    ``b = global_batch_size // process_count``; reshuffled every epoch from ``seed``; process
    ``process_index`` reads its own rows of each global batch (disjoint across processes).
    The result has ``get_state()``/``set_state()`` and works with
    ``grain.checkpoint.CheckpointSave/CheckpointRestore`` (see the module docstring).
    ``read_threads``/``prefetch`` (batches read ahead) only affect speed, never the order.
    """
    ds = train_dataset(
        source, global_batch_size=global_batch_size, seed=seed,
        process_index=process_index, process_count=process_count,
    )
    opts = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(opts))


def eval_batches(
    source,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over ``source`` in record order, as process-local padded batches.

    Yields ``ceil(N / global_batch_size)`` dicts, each with the source's fields batched to
    ``[b, ...]`` (``image`` uint8 [b, H, W, C], ``label`` int32 [b]) and ``mask`` float32 [b]
    (1 for a real example, 0 for padding; padding rows repeat record 0).
    ``b = global_batch_size // process_count``.
    """
    b = local_batch_size(global_batch_size, process_count)
    _check_process(process_index, process_count)
    n = len(source)
    for k in range(math.ceil(n / global_batch_size)):
        start = k * global_batch_size + process_index * b
        idx = np.arange(start, start + b)
        mask = (idx < n).astype(np.float32)
        batch = read_batch(source, np.where(idx < n, idx, 0).tolist())
        batch["mask"] = mask
        yield batch
