"""Orbax checkpoints of a run: train state, data-iterator state, loop bookkeeping, config.

One :class:`Checkpointer` per workdir wraps ``ocp.CheckpointManager`` (the ``ocp.args`` API):
each save is an ``ocp.args.Composite`` of

* ``state``: the :class:`TrainState` (``StandardSave``; restored with the live shardings),
* ``data``: the grain iterator's state (``JsonSave`` of ``iterator.get_state()``, captured
  synchronously so an async save never races the input pipeline),
* ``loop``: early-stopping bookkeeping (best value, evals since best) as JSON,
* ``config``: the run's config as JSON.

Saves are async and atomic (Orbax writes to a temporary directory and renames it on commit), the
latest ``keep`` checkpoints are preserved plus the best one by the validation metric. A checkpoint
that fails to restore (partial or corrupt) is skipped with a warning for the previous one, and
moved to ``WORKDIR/corrupt_checkpoints`` so the resumed run can save that step again. A
checkpoint whose saved arrays do not fit the model the config builds (an override that changes a
size) is not corrupt: restoring it raises :class:`CheckpointMismatchError`, naming the array.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxflows.errors import UserError
from jaxflows.train.state import TrainState

_ITEMS = ("state", "data", "loop", "config")


class CheckpointMismatchError(UserError):
    """No checkpoint of the workdir fits the state the config builds (shapes or structure)."""


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def state_mismatch(state_dir: str, abstract_state: Any) -> str | None:
    """How the arrays saved in ``state_dir`` (one checkpoint's ``state`` item) differ from
    ``abstract_state``'s: the first missing, extra or differently shaped array, e.g.
    ``'params/encoder/kernel: saved (8, 64), this config (3, 64)'``; None when they fit or when
    the saved metadata cannot be read (then a restore attempt decides)."""
    absl = logging.getLogger("absl")  # Orbax warns that the per-item metadata file is absent
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        meta = ocp.StandardCheckpointer().metadata(state_dir)
    except Exception:  # noqa: BLE001  (unreadable metadata: leave it to the restore)
        return None
    finally:
        absl.setLevel(level)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:
        return None
    saved = {_path_names(p): tuple(getattr(leaf, "shape", ()) or ())
             for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    wanted = {_path_names(p): tuple(leaf.shape)
              for p, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)}
    for key in sorted(set(saved) | set(wanted)):
        name = "/".join(key)
        if key not in saved:
            return f"{name}: not in the checkpoint"
        if key not in wanted:
            return f"{name}: saved, but not part of this config's model"
        if saved[key] != wanted[key]:
            return f"{name}: saved {saved[key]}, this config {wanted[key]}"
    return None


class Checkpointer:
    """Saves and restores a run's checkpoints under ``WORKDIR/checkpoints``."""

    def __init__(self, workdir: str, *, keep: int = 2, best_metric: str | None = None,
                 async_saves: bool = True):
        directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.directory = directory
        policies = [ocp.checkpoint_managers.LatestN(n=max(1, keep))]
        if best_metric:
            # BestN keeps the last n after sorting; reverse=True sorts descending, so the kept
            # one is the lowest value: lower is better for every metric we track.
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric], reverse=True, n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_saves,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            create=True,
        )
        self.manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        """The newest committed checkpoint step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, *, data_state: Any, loop: dict, config: dict,
             metrics: dict | None = None, force: bool = False) -> bool:
        """Starts an async save of everything needed to resume at ``step``."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            loop=ocp.args.JsonSave(loop),
            config=ocp.args.JsonSave(config),
        )
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore(self, abstract_state: TrainState) -> tuple[int, TrainState, Any, dict] | None:
        """Restores the newest good checkpoint into ``abstract_state``'s shapes and shardings.

        Returns ``(step, state, data_state, loop)`` or None when there is none. A checkpoint
        that fails to read is skipped with a warning, falling back to the previous one.

        Raises:
          CheckpointMismatchError: the newest readable checkpoint's arrays (from its metadata)
            do not fit ``abstract_state``: the config builds another model. Nothing is moved.
        """
        bad = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            differs = state_mismatch(os.path.join(self.directory, str(step), "state"),
                                     abstract_state)
            if differs:
                raise CheckpointMismatchError(
                    f"the checkpoint at step {step} in {self.directory} does not fit the model "
                    f"this config builds ({differs})",
                    hint="the workdir's config.json is the config that trained it; an override "
                         "that changes the model's sizes or structure (e.g. "
                         "--config.model.latent_dim) cannot restore it")
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    loop=ocp.args.JsonRestore(),
                ))
            except Exception as e:  # noqa: BLE001  (any read failure means: try the previous)
                logging.warning("checkpoint at step %d is unreadable (%s: %s); trying the "
                                "previous one", step, type(e).__name__, str(e).splitlines()[0])
                bad.append(step)
                continue
            self._set_aside(bad)
            return step, restored.state, restored.data, restored.loop
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable checkpoints to ``WORKDIR/corrupt_checkpoints`` (kept for forensics,
        out of the manager's way so the resumed run's own saves of those steps can land)."""
        if not steps:
            return
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints")
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                src = os.path.join(self.directory, str(step))
                dst = os.path.join(aside, f"{step}-{int(time.time())}")
                if os.path.exists(src):
                    shutil.move(src, dst)
                    logging.warning("moved unreadable checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxflows_checkpoint_set_aside")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying each leaf's sharding: the restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
