"""The training loop: config -> sharded state -> jitted steps -> checkpoints, metrics, eval.

The pieces are public and usable alone, e.g. by an outer loop (Bayesian optimisation) that refits
a model many times in one process without recompiling:

* :func:`build` validates a config and derives the mesh, the task, the optimiser, the shardings
  and the jitted functions (a :class:`Run`); nothing compiles until first use;
* :meth:`Run.init_state` makes a fresh sharded :class:`TrainState` (with ``config.init_from``
  grafted in), :meth:`Run.abstract_state` its shapes for a restore;
* :attr:`Run.train_step` / :attr:`Run.multi_step` / :attr:`Run.eval_step` are the compiled steps;
  :meth:`Run.global_batch` turns a process-local numpy batch into the global sharded one;
* :func:`fit` runs a number of steps over any random-access source (e.g.
  ``InMemorySource.from_arrays``), :func:`evaluate_params` averages the task's eval metrics over
  one pass of a source, :class:`jaxflows.train.checkpoint.Checkpointer` saves and restores.

``train(config, workdir)`` composes them: it resumes automatically from ``workdir`` when it holds a
checkpoint and ends with the same parameters as an uninterrupted run (bitwise on CPU): the state,
the data iterator and the early-stopping bookkeeping are all restored, and every random draw
derives from ``fold_in(rng, step)``. It refuses a workdir whose saved config differs in more than
the schedule (:mod:`jaxflows.train.workdir`) and a workdir another process trains in.
``evaluate(workdir)`` writes ``WORKDIR/eval.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxflows.data import pipeline
from jaxflows.errors import ConfigError, UserError
from jaxflows.provenance import write_json_atomic
from jaxflows.train import input as engine_input
from jaxflows.train import mesh as mesh_lib
from jaxflows.train.checkpoint import Checkpointer
from jaxflows.train.metrics import MetricsWriter
from jaxflows.train.optim import frozen_mask, learning_rate_schedule, make_optimizer
from jaxflows.train.state import TrainState
from jaxflows.train.steps import make_eval_step, make_multi_step, make_train_step
from jaxflows.train.task import DataInfo, Task, build_task, check_example_spec, zeros_batch


@dataclasses.dataclass
class Run:
    """Everything derived from a config before training: mesh, task, steps, shardings."""

    config: ml_collections.ConfigDict
    mesh: Any
    task: Task
    data_info: DataInfo
    example_spec: dict[str, jax.ShapeDtypeStruct]
    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    frozen: Any  # bool pytree like the params (optim.freeze), or None
    state_shardings: Any
    batch_sharding: Any
    stacked_batch_sharding: Any
    init_params: Any  # jitted: seed -> params
    state_from_params: Any  # jitted: (params, seed) -> TrainState
    train_step: Any
    multi_step: Any
    eval_step: Any
    data_dir: str | None

    def init_state(self, seed: int | None = None, *, init_from: bool = True) -> TrainState:
        """A fresh sharded train state from ``seed`` (default ``config.seed``), with the
        ``config.init_from`` subtrees grafted into the params (``init_from=False`` skips it)."""
        seed = np.uint32(self.config.seed if seed is None else seed)
        params = self.init_params(seed)
        entries = list(self.config.get("init_from", ()) or ())
        if init_from and entries:
            params = self._graft_pretrained(params, entries)
        return self.state_from_params(params, seed)

    def _graft_pretrained(self, params, entries):
        from jaxflows.train.pretrained import graft, load_init_from

        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        host = jax.tree.map(lambda _: None, params)
        for target, values in load_init_from(entries, abstract):
            host = graft(host, target, values)
            logging.info("init_from: %s <- pretrained", target or "<all params>")

        def place(current, value, sharding):
            if value is None:
                return current
            value = np.asarray(value)
            return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

        return jax.tree.map(place, params, host, self.state_shardings.params,
                            is_leaf=lambda x: x is None)

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs of the train state with its shardings (a restore target)."""
        seed = np.uint32(self.config.seed)
        abstract = jax.eval_shape(lambda: self.state_from_params(self.init_params(seed), seed))
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, self.state_shardings)

    def global_batch(self, local: dict[str, np.ndarray], *, stacked: bool = False
                     ) -> dict[str, jax.Array]:
        """The task's fields (and ``mask``) of a process-local batch as global sharded arrays;
        a UserError names a field whose per-example shape or dtype is not the task's."""
        keys = list(self.example_spec) + (["mask"] if "mask" in local else [])
        lead = 2 if stacked else 1
        picked = {}
        for k in keys:
            if k not in local:
                raise UserError(f"the batch has no field {k!r} (it has {sorted(local)})")
            v = np.asarray(local[k])
            spec = self.example_spec.get(k)
            if spec is not None and (v.shape[lead:] != tuple(spec.shape)
                                     or v.dtype != np.dtype(spec.dtype)):
                raise UserError(
                    f"data field {k!r} is {v.dtype}{list(v.shape[lead:])} per example but the "
                    f"task expects {np.dtype(spec.dtype)}{list(spec.shape)}")
            picked[k] = v
        if stacked:
            return engine_input.to_global_stacked(picked, self.stacked_batch_sharding)
        return engine_input.to_global(picked, self.batch_sharding)


def _data_dir(config) -> str | None:
    return config.data.data_dir or None


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> tuple:
    """Checks sizes before anything compiles; returns the resolved mesh shape."""
    shape = mesh_lib.mesh_shape(config.mesh, num_devices)
    dp = shape[0] * shape[1]
    t = config.train
    if t.batch_size <= 0:
        raise ConfigError(f"config.train.batch_size must be positive, got {t.batch_size}")
    if t.num_steps <= 0 and not t.num_epochs > 0:
        raise ConfigError(f"config.train.num_epochs={t.num_epochs} trains nothing",
                          hint="give a positive num_epochs, or num_steps > 0")
    if t.eval_batch_size <= 0:
        raise ConfigError(f"config.train.eval_batch_size must be positive, got "
                          f"{t.eval_batch_size}")
    if t.log_every_steps <= 0:
        raise ConfigError(f"config.train.log_every_steps must be positive, got "
                          f"{t.log_every_steps}")
    accum = config.optim.grad_accum_steps
    if accum < 1 or t.batch_size % accum:
        raise ConfigError(f"config.train.batch_size={t.batch_size} is not divisible by "
                          f"config.optim.grad_accum_steps={accum}")
    for key, value in (("batch_size", t.batch_size // accum), ("eval_batch_size",
                                                                t.eval_batch_size)):
        what = "micro-batch " if key == "batch_size" and accum > 1 else ""
        if value % dp:
            raise ConfigError(
                f"config.train.{key}: global {what}batch {value} is not divisible by the "
                f"data-parallel size {dp} (mesh data={shape[0]} x fsdp={shape[1]})")
        if value % num_processes:
            raise ConfigError(f"config.train.{key}={value} is not divisible by "
                              f"{num_processes} processes")
    if not config.model.name:
        raise ConfigError("config.model.name is empty",
                          hint="set it to a task module, e.g. jaxflows.models.vae")
    if config.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"config.dtype={config.dtype!r}; use float32, bfloat16 or float16")
    return shape


def _transforms(config):
    from jaxflows.data.source_transforms import parse_all

    return parse_all(config.data.get("transforms", ()))


def data_info(config) -> DataInfo:
    """The data's element spec (after ``config.data.transforms``), split sizes, classes and
    metadata; raises if the dataset is not prepared and cannot prepare itself."""
    from jaxflows.data.registry import dataset_info
    from jaxflows.data.source_transforms import transformed_spec

    info = dataset_info(config.data.name, _data_dir(config))
    splits = info["splits"]
    for key in ("train_split", "eval_split", "test_split"):
        split = config.data[key]
        if split and split not in splits:
            raise ConfigError(f"config.data.{key}={split!r}: dataset {config.data.name} has "
                              f"splits {sorted(splits)}")
    try:
        spec = transformed_spec(_transforms(config), info["element_spec"], info["metadata"])
    except ConfigError as e:
        if info["prepared"]:
            raise
        from jaxflows.data.registry import require_prepared

        # e.g. pad_tokens needs the max_length that preparing a token dataset saves
        which = str(e.args[0]).split(":")[0]
        require_prepared(config.data.name, _data_dir(config),
                         why=f"{which} needs the metadata that preparing it saves")
        raise
    return DataInfo(element_spec=spec, num_train=splits[config.data.train_split],
                    num_eval=splits.get(config.data.eval_split, 0),
                    num_classes=int(info["num_classes"] or 0), metadata=info["metadata"])


def _check_task_spec(spec, info: DataInfo, where: str) -> None:
    for k, v in spec.items():
        have = info.element_spec.get(k)
        if have is None:
            raise ConfigError(f"{where} needs the data field {k!r}; dataset fields: "
                              f"{sorted(info.element_spec)}")
        if tuple(have.shape) != tuple(v.shape) or np.dtype(have.dtype) != np.dtype(v.dtype):
            raise ConfigError(f"{where} expects {k!r} as {np.dtype(v.dtype)}{list(v.shape)}, "
                              f"the data gives {np.dtype(have.dtype)}{list(have.shape)}")


def build(config: ml_collections.ConfigDict, info: DataInfo | None = None) -> Run:
    """Validates the config and derives mesh, task, optimiser, shardings and jitted steps."""
    shape = validate(config, jax.device_count(), jax.process_count())
    info = info or data_info(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    logging.info("mesh %s over %d devices", dict(zip(mesh_lib.MESH_AXES, shape)),
                 jax.device_count())
    task = build_task(config, info)
    where = f"task {config.model.name}"
    spec = check_example_spec(task.example_spec(), where)
    _check_task_spec(spec, info, where)
    t = config.train
    steps_per_epoch = max(1, info.num_train // t.batch_size)
    total = t.num_steps if t.num_steps > 0 else int(math.ceil(t.num_epochs * steps_per_epoch))
    eval_every = (max(1, int(round(t.eval_every_epochs * steps_per_epoch)))
                  if t.eval_every_epochs > 0 else 0)
    schedule = learning_rate_schedule(config.optim, steps_per_epoch, total)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    example = zeros_batch(spec, t.batch_size // config.optim.grad_accum_steps)
    ema_on = config.optim.ema_decay > 0
    keep_best = bool(t.get("keep_best_params", True))

    boxed = jax.eval_shape(lambda: task.init(jax.random.key(0), example))
    p_sh = nn.unbox(mesh_lib.param_shardings(boxed, mesh, rules))
    frozen = None
    if config.optim.get("freeze"):
        frozen = frozen_mask(nn.unbox(boxed), config.optim.freeze)
    tx = make_optimizer(config.optim, schedule, frozen)

    def init_params(seed):
        key = jax.random.key(seed)
        return nn.unbox(task.init(jax.random.fold_in(key, 0), example))

    def state_from_params(params, seed):
        key = jax.random.key(seed)
        copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.key_data(jax.random.fold_in(key, 1)),
            params=params,
            opt_state=tx.init(params),
            ema_params=copy(params) if ema_on else None,
            best_params=copy(params) if keep_best else None,
        )

    abstract_params = jax.eval_shape(init_params, np.uint32(0))
    abstract = jax.eval_shape(state_from_params, abstract_params, np.uint32(0))
    rep = mesh_lib.replicated(mesh)
    opt_sh = mesh_lib.optimizer_state_shardings(abstract.opt_state, abstract_params, p_sh, mesh)
    state_sh = TrainState(step=rep, rng=rep, params=p_sh, opt_state=opt_sh,
                          ema_params=p_sh if ema_on else None,
                          best_params=p_sh if keep_best else None)
    b_sh = mesh_lib.batch_sharding(mesh)
    stacked_sh = jax.NamedSharding(mesh, jax.P(None, mesh_lib.BATCH_AXES))
    xla_opts = task.compiler_options() or None
    step_fn = make_train_step(task, tx, schedule, grad_accum_steps=config.optim.grad_accum_steps,
                              ema_decay=config.optim.ema_decay, frozen=frozen)
    return Run(
        config=config, mesh=mesh, task=task, data_info=info, example_spec=spec,
        steps_per_epoch=steps_per_epoch, total_steps=total, eval_every_steps=eval_every,
        schedule=schedule, tx=tx, frozen=frozen, state_shardings=state_sh, batch_sharding=b_sh,
        stacked_batch_sharding=stacked_sh,
        init_params=jax.jit(init_params, out_shardings=p_sh),
        state_from_params=jax.jit(state_from_params, in_shardings=(p_sh, rep),
                                  out_shardings=state_sh),
        train_step=jax.jit(step_fn, in_shardings=(state_sh, b_sh),
                           out_shardings=(state_sh, rep), donate_argnums=0,
                           compiler_options=xla_opts),
        multi_step=jax.jit(make_multi_step(step_fn), in_shardings=(state_sh, stacked_sh),
                           out_shardings=(state_sh, rep), donate_argnums=0,
                           compiler_options=xla_opts),
        eval_step=jax.jit(make_eval_step(task), in_shardings=(p_sh, b_sh, rep),
                          out_shardings=rep, compiler_options=xla_opts),
        data_dir=_data_dir(config))


def open_split(run: Run, split: str):
    """The run's dataset split after ``config.data.transforms``, as a random-access source (in
    memory when small)."""
    from jaxflows.data.registry import load_source
    from jaxflows.data.source_transforms import apply_all

    source = load_source(run.config.data.name, split, run.data_dir)
    source = apply_all(_transforms(run.config), source,
                       train=split == run.config.data.train_split,
                       metadata=run.data_info.metadata)
    return engine_input.materialize(source)


def fit(run: Run, state: TrainState, source, *, num_steps: int, seed: int = 0
        ) -> tuple[TrainState, dict]:
    """``num_steps`` steps of ``run.train_step`` over batches of ``source`` (reshuffled each
    epoch from ``seed``); returns the new state and the last step's metrics. The compiled step
    is reused: refitting on new data of the same batch shapes compiles nothing."""
    iterator = pipeline.train_iterator(
        source, global_batch_size=run.config.train.batch_size, seed=seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    metrics: dict = {}
    with jax.set_mesh(run.mesh):
        for _ in range(num_steps):
            state, metrics = run.train_step(state, run.global_batch(next(iterator)))
    return state, jax.device_get(metrics)


def eval_batch_iter(run: Run, source):
    """Global eval batches (with ``mask``) over one pass of ``source``."""
    for local in pipeline.eval_batches(
            source, global_batch_size=run.config.train.eval_batch_size,
            process_index=jax.process_index(), process_count=jax.process_count()):
        yield run.global_batch(local)


def evaluate_params(run: Run, params, source, seed: int) -> dict[str, float]:
    """Masked means of the task's per-example eval metrics over one pass of ``source``."""
    totals: dict[str, float] = {}
    key = jax.random.key(seed)
    for i, batch in enumerate(eval_batch_iter(run, source)):
        out = jax.device_get(run.eval_step(params, batch, jax.random.fold_in(key, i)))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("_count", 0.0)
    return {k: v / max(count, 1.0) for k, v in totals.items()}


def _dispatch_size(step: int, run: Run, sync_every: int) -> int:
    """Steps to run in the next dispatch: up to ``train.steps_per_dispatch``, never past the
    next log / eval / checkpoint-check step or the end (so every event sees the same step)."""
    k = max(1, int(run.config.train.get("steps_per_dispatch", 1)))
    if k == 1:
        return 1
    events = [run.config.train.log_every_steps, sync_every]
    if run.eval_every_steps:
        events.append(run.eval_every_steps)
    nxt = min(run.total_steps, *[(step // e + 1) * e for e in events])
    return max(1, min(k, nxt - step))


class _StopFlag:
    """Set by SIGTERM: the loop saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM: saving a checkpoint and stopping")
        self.requested = True

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _agree(flag: bool) -> bool:
    """True on every process if it is true on any (a collective; trivial on one process)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def _lock_workdir(workdir: str):
    """Process 0 takes the workdir lock; every process fails alike when it is held."""
    from jaxflows.train.workdir import WorkdirLock

    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir).acquire()
        except UserError as e:
            error = e
    if _agree(error is not None):
        raise error or UserError(f"workdir {workdir} is in use by another run")
    return lock


def train(config: ml_collections.ConfigDict, workdir: str, *, final_eval: bool = True) -> dict:
    """Trains (resuming from ``workdir`` if possible); returns the final eval dict or {}.

    Before anything in ``workdir`` is written: the config is validated, a resume is checked
    against the saved ``config.json`` (:func:`jaxflows.train.workdir.check_resumable`) and the
    workdir is locked against a second run.
    """
    from jaxflows.train.workdir import check_resumable, check_workdir_path

    check_workdir_path(workdir)
    run = build(config)
    check_resumable(workdir, config.to_dict())
    created = not os.path.isdir(workdir)
    lock = _lock_workdir(workdir)
    done = False
    try:
        result = _train_locked(run, config, workdir, final_eval=final_eval)
        done = True
        return result
    finally:
        if lock is not None:
            lock.release()
            if created and not done:
                _drop_if_only_lock(workdir)


def _drop_if_only_lock(workdir: str) -> None:
    """Removes a workdir this run created when a failure left nothing in it but the lock
    file (e.g. the dataset was missing), so a failed start leaves no trace."""
    try:
        if set(os.listdir(workdir)) <= {".lock"}:
            if os.path.exists(os.path.join(workdir, ".lock")):
                os.remove(os.path.join(workdir, ".lock"))
            os.rmdir(workdir)
    except OSError:
        pass


def _train_locked(run: Run, config, workdir: str, *, final_eval: bool) -> dict:
    t = config.train
    train_src = open_split(run, config.data.train_split)  # a missing dataset fails here,
    eval_src = (open_split(run, config.data.eval_split)   # before the workdir is written
                if config.data.eval_split and run.eval_every_steps else None)
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict(), indent=2,
                          sort_keys=True)
    best_metric = t.best_metric or run.task.best_metric
    ckpt = Checkpointer(workdir, keep=t.keep_checkpoints,
                        best_metric="val_" + best_metric if t.eval_every_epochs > 0 else None)
    with jax.set_mesh(run.mesh):
        iterator = pipeline.train_iterator(
            train_src, global_batch_size=t.batch_size, seed=config.seed,
            process_index=jax.process_index(), process_count=jax.process_count())
        loop = {"best_value": None, "best_step": -1, "evals_since_best": 0, "stopped_early":
                False, "wall_time_s": 0.0, "evals": []}
        restored = ckpt.restore(run.abstract_state()) if ckpt.latest_step() is not None else None
        if restored is not None:
            step0, state, data_state, loop = restored
            iterator.set_state(data_state)
            logging.info("resumed from step %d", step0)
        else:
            state = run.init_state()
        step = int(jax.device_get(state.step))
        writer = MetricsWriter(workdir, resume_step=step, total_steps=run.total_steps,
                               progress_bar=t.progress_bar)
        stop = _StopFlag()
        stop.install()
        copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                              out_shardings=run.state_shardings.params)
        last_save = time.time()
        t_start = time.time() - loop["wall_time_s"]
        t_log, steps_since_log = time.time(), 0
        sync_every = max(1, min(t.log_every_steps, 50))
        in_flight = None

        def save(force=False, metrics=None):
            nonlocal last_save, state
            loop["wall_time_s"] = time.time() - t_start
            if state.best_params is not None and loop["best_step"] < 0:
                # no validation yet (or none configured): the best params we know of are the
                # tracked ones, never the initial params the state started with
                state = state.replace(best_params=copy_params(
                    state.ema_params if state.ema_params is not None else state.params))
            ckpt.save(step, state, data_state=iterator.get_state(), loop=loop,
                      config=config.to_dict(), metrics=metrics, force=force)
            last_save = time.time()

        try:
            while step < run.total_steps and not loop["stopped_early"]:
                k = _dispatch_size(step, run, sync_every)
                if k == 1:
                    state, metrics = run.train_step(state, run.global_batch(next(iterator)))
                else:  # k steps in one jitted scan: amortises per-step host work
                    local = [next(iterator) for _ in range(k)]
                    stacked = {key: np.stack([b[key] for b in local]) for key in local[0]
                               if key in run.example_spec}
                    state, metrics = run.multi_step(state, run.global_batch(stacked,
                                                                            stacked=True))
                # Stay at most one dispatch ahead of the device: enough to overlap input work,
                # and it bounds programs in flight (fake CPU devices can starve a collective).
                if in_flight is not None:
                    jax.block_until_ready(in_flight)
                in_flight = metrics
                step += k
                steps_since_log += k
                writer.advance(k)
                if step % t.log_every_steps == 0 or step == run.total_steps:
                    metrics = jax.device_get(metrics)
                    now = time.time()
                    rate = steps_since_log / max(now - t_log, 1e-9)
                    metrics.update(epoch=step / run.steps_per_epoch, steps_per_s=rate,
                                   examples_per_s=rate * t.batch_size)
                    writer.write(step, metrics)
                    t_log, steps_since_log = now, 0
                    if not np.isfinite(metrics["loss"]):
                        if config.optim.get("skip_nonfinite_max", 0) <= 0:
                            raise FloatingPointError(f"loss is {metrics['loss']} at step {step}")
                        logging.warning("loss is %s at step %d: update skipped "
                                        "(optim.skip_nonfinite_max)", metrics["loss"], step)
                val_metrics = None
                if eval_src is not None and (step % run.eval_every_steps == 0
                                             or step == run.total_steps):
                    tracked = state.ema_params if state.ema_params is not None else state.params
                    val = evaluate_params(run, tracked, eval_src, seed=config.seed + 1)
                    val["epoch"] = step / run.steps_per_epoch
                    writer.write(step, val, prefix="val_")
                    _plot_curves(workdir)
                    if best_metric not in val:
                        raise ConfigError(f"best metric {best_metric!r} is not among the "
                                          f"validation metrics {sorted(val)}",
                                          hint="set config.train.best_metric")
                    value = val[best_metric]
                    loop["evals"].append({"step": step, **val})
                    if loop["best_value"] is None or value < loop["best_value"]:
                        loop.update(best_value=value, best_step=step, evals_since_best=0)
                        if state.best_params is not None:
                            state = state.replace(best_params=copy_params(tracked))
                    else:
                        loop["evals_since_best"] += 1
                        if 0 < t.early_stopping_patience <= loop["evals_since_best"]:
                            loop["stopped_early"] = True
                            logging.info("early stopping at step %d (best %s=%.4f at %d)",
                                         step, best_metric, loop["best_value"],
                                         loop["best_step"])
                    val_metrics = {"val_" + best_metric: float(value)}
                if val_metrics is not None:
                    save(metrics=val_metrics)
                elif step % sync_every == 0 and _agree(
                        stop.requested or time.time() - last_save >= t.checkpoint_every_secs):
                    save()
                    if _agree(stop.requested):
                        break
            if step >= run.total_steps or loop["stopped_early"]:
                if ckpt.latest_step() != step:
                    save(force=True)
                else:
                    loop["wall_time_s"] = time.time() - t_start
        finally:
            stop.uninstall()
            ckpt.close()
            writer.close()
        if stop.requested:
            return {}
    if eval_src is None:
        _plot_curves(workdir)
    summary = {"train_wall_time_s": loop["wall_time_s"], "epochs": step / run.steps_per_epoch,
               "best_step": loop["best_step"], "stopped_early": loop["stopped_early"]}
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "train_summary.json"), summary, indent=2,
                          sort_keys=True)
    if final_eval and config.data.test_split:
        return {**summary, **evaluate(workdir, config=config, run=run)}
    return summary


def _plot_curves(workdir: str) -> None:
    """``WORKDIR/curves.png`` from metrics.jsonl (process 0; a failure only logs)."""
    from jaxflows.train.curves import write_run_curves

    write_run_curves(workdir)


def load_saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (``config.json``, upgraded to today's schema)."""
    from jaxflows.train.config import upgrade_saved_config

    path = os.path.join(workdir, "config.json")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a training workdir")
    if not os.path.exists(path):
        raise UserError(f"{workdir} has no config.json", hint="train into it first")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(upgrade_saved_config(json.load(f)))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def restore_for_eval(run: Run, workdir: str) -> tuple[int, TrainState]:
    """Restores the latest good checkpoint of ``workdir`` for evaluation."""
    ckpt = Checkpointer(workdir, keep=run.config.train.keep_checkpoints)
    with jax.set_mesh(run.mesh):
        restored = ckpt.restore(run.abstract_state())
    ckpt.close()
    if restored is None:
        raise UserError(f"no checkpoint in {workdir}/checkpoints", hint="train first")
    step, state, _, loop = restored
    if state.best_params is not None and loop.get("best_step", -1) < 0:
        # written before any validation by an engine older than this fix: its best_params may
        # still be the initial params, so evaluate the EMA or live params instead
        state = state.replace(best_params=None)
    return step, state


def evaluate(workdir: str, *, config=None, run: Run | None = None,
             split: str | None = None, overrides=(), output: str = "eval.json") -> dict:
    """Evaluates the workdir's best/EMA/latest params on the test split -> WORKDIR/``output``.

    ``overrides`` (``--config.KEY=VALUE``) change evaluation settings of the saved config, e.g.
    ``model.num_is_examples=-1``; per-example values go to ``<output stem>_per_example.npz``.
    """
    from jaxflows.train.config_loader import apply_overrides

    if config is None:
        config = load_saved_config(workdir)
    if overrides:
        config = apply_overrides(config, overrides)
        run = None
    run = run or build(config)
    split = split or config.data.test_split
    step, state = restore_for_eval(run, workdir)
    params = state.eval_params()
    t0 = time.time()
    with jax.set_mesh(run.mesh):
        source = open_split(run, split)
        result = {"split": split, "step": step}
        result.update(evaluate_params(run, params, source, seed=config.seed + 2))
        extra = run.task.final_eval(params, lambda: eval_batch_iter(run, source),
                                    jax.random.key(config.seed + 3))
        per_example = extra.pop("per_example", None)
        result.update(extra)
    if per_example and jax.process_index() == 0:  # for paired comparisons between runs
        stem = os.path.splitext(output)[0]
        tmp = os.path.join(workdir, f"{stem}_per_example.tmp.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in per_example.items()})
        os.replace(tmp, os.path.join(workdir, f"{stem}_per_example.npz"))
    result["eval_time_s"] = time.time() - t0
    result["params_used"] = ("best" if state.best_params is not None else
                             "ema" if state.ema_params is not None else "latest")
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, output), result, indent=2, sort_keys=True)
    return result
