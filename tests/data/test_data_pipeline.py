"""Input pipeline: per-process sharding, epoch reshuffling, checkpoint/restore, eval padding."""

from __future__ import annotations

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxflows.data import eval_batches, load_source, train_iterator
from jaxflows.errors import UserError


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_batch_format(digits_dir):
    src = load_source("digits", "train", digits_dir)
    it = train_iterator(src, global_batch_size=64, seed=0, process_index=1, process_count=2)
    batch = next(it)
    assert set(batch) == {"image", "label"}
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (32, 8, 8, 1)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (32,)


def test_bad_sizes(array_source):
    src = array_source(10)
    with pytest.raises(UserError, match="not divisible"):
        train_iterator(src, global_batch_size=6, seed=0, process_count=4)
    with pytest.raises(UserError, match="fewer than the global batch size"):
        train_iterator(src, global_batch_size=16, seed=0)
    with pytest.raises(UserError, match="process_index"):
        train_iterator(src, global_batch_size=4, seed=0, process_index=2, process_count=2)
    with pytest.raises(UserError, match="not divisible"):
        next(eval_batches(src, global_batch_size=5, process_count=2))


@pytest.mark.parametrize("process_count", [2, 4])
def test_train_shards_are_disjoint_and_cover_an_epoch(array_source, process_count):
    n, gbs = 48, 8
    steps = n // gbs
    src = array_source(n)
    single = _take(train_iterator(src, global_batch_size=gbs, seed=5), 2 * steps)
    per_proc = [
        _take(train_iterator(src, global_batch_size=gbs, seed=5, process_index=p,
                             process_count=process_count), 2 * steps)
        for p in range(process_count)
    ]
    for epoch in range(2):
        seen = [np.concatenate([b["label"] for b in batches[epoch * steps:(epoch + 1) * steps]])
                for batches in per_proc]
        for p in range(process_count):
            for q in range(p):
                assert not set(seen[p]) & set(seen[q])
        assert sorted(np.concatenate(seen).tolist()) == list(range(n))
    # Concatenating the local batches in process order gives the single-process global batch.
    for t in range(2 * steps):
        glob = np.concatenate([per_proc[p][t]["label"] for p in range(process_count)])
        np.testing.assert_array_equal(glob, single[t]["label"])
        np.testing.assert_array_equal(glob % 256, single[t]["image"][:, 0, 0, 0])


def test_epochs_are_reshuffled_and_seeded(array_source):
    src = array_source(40)
    labels = lambda seed: np.concatenate(
        [b["label"] for b in _take(train_iterator(src, global_batch_size=8, seed=seed), 10)]
    )
    a = labels(0)
    epoch0, epoch1 = a[:40], a[40:]
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(40))
    assert (epoch0 != epoch1).any()
    np.testing.assert_array_equal(a, labels(0))
    assert (a != labels(1)).any()


def test_drop_remainder_per_epoch(array_source):
    src = array_source(21)  # 2 global batches of 8 per epoch, 5 records dropped per epoch
    batches = _take(train_iterator(src, global_batch_size=8, seed=0), 4)
    for epoch in range(2):
        labels = np.concatenate([b["label"] for b in batches[2 * epoch:2 * epoch + 2]])
        assert len(set(labels.tolist())) == 16


def _equal(xs, ys):
    for a, b in zip(xs, ys, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_get_state_set_state(digits_dir):
    src = load_source("digits", "train", digits_dir)
    make = lambda: train_iterator(src, global_batch_size=32, seed=7, process_index=1,
                                  process_count=2)
    reference = _take(make(), 60)  # crosses the epoch boundary (43 steps per epoch)
    it = make()
    _take(it, 25)
    state = it.get_state()
    _take(it, 3)  # moves on; the restored one must not care
    fresh = make()
    fresh.set_state(state)
    _equal(_take(fresh, 35), reference[25:])


def test_orbax_checkpoint_round_trip(digits_dir, tmp_path):
    """Save the iterator with grain's Orbax handler inside a Composite and restore it."""
    src = load_source("digits", "train", digits_dir)
    make = lambda: train_iterator(src, global_batch_size=64, seed=3)
    reference = _take(make(), 30)
    it = make()
    _take(it, 17)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(17, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointSave(it),
            meta=ocp.args.JsonSave({"step": 17}),
        ))
        mngr.wait_until_finished()
    _take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        fresh = make()
        restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(fresh),
            meta=ocp.args.JsonRestore(),
        ))
    assert restored["meta"] == {"step": 17}
    _equal(_take(restored["data"], 13), reference[17:])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_batches_cover_each_example_once(array_source, process_count):
    n, gbs = 50, 8
    src = array_source(n)
    per_proc = [
        list(eval_batches(src, global_batch_size=gbs, process_index=p,
                          process_count=process_count))
        for p in range(process_count)
    ]
    counts = {len(b) for b in per_proc}
    assert counts == {7}  # ceil(50 / 8), the same on every process
    real = []
    for batches in per_proc:
        for b in batches:
            assert b["mask"].dtype == np.float32 and b["mask"].shape == (gbs // process_count,)
            assert b["image"].shape == (gbs // process_count, 2, 2, 1)
            real.extend(b["label"][b["mask"] == 1].tolist())
    assert sorted(real) == list(range(n))
    # the global batches are the records in order
    glob = np.concatenate([np.concatenate([per_proc[p][k]["label"] for p in range(process_count)])
                           for k in range(7)])
    mask = np.concatenate([np.concatenate([per_proc[p][k]["mask"] for p in range(process_count)])
                           for k in range(7)])
    np.testing.assert_array_equal(glob[mask == 1], np.arange(n))
    assert mask.sum() == n and mask[n:].sum() == 0


def test_eval_batches_on_tfds_source(digits_dir):
    src = load_source("digits", "test", digits_dir)
    batches = list(eval_batches(src, global_batch_size=64, process_index=0, process_count=2))
    assert len(batches) == 4 and batches[-1]["mask"].sum() == 8  # 200 = 3*64 + 8
    np.testing.assert_array_equal(batches[1]["image"][0], src[64]["image"])
