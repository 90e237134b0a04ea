"""Jitted train and eval steps, built from a Task and an optax optimiser.

The train step folds the step number into the state's rng, optionally accumulates gradients over
``grad_accum_steps`` micro-batches (a ``lax.scan``), applies the update, and updates the EMA.
Both steps are ``jax.jit``-ed by :mod:`jaxflows.train.loop` with explicit in/out shardings and the
state donated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxflows.train.state import TrainState
from jaxflows.train.task import Task


def keep_frozen(frozen, new, old):
    """``new`` with the leaves flagged in ``frozen`` (a bool pytree, or None) taken from
    ``old``: frozen parameters stay bitwise unchanged whatever the arithmetic did."""
    if frozen is None:
        return new
    return jax.tree.map(lambda f, n, o: o if f else n, frozen, new, old)


def make_train_step(task: Task, tx: optax.GradientTransformation, schedule, *,
                    grad_accum_steps: int = 1, ema_decay: float = 0.0, frozen=None):
    """Returns ``train_step(state, batch) -> (state, metrics)`` (not yet jitted).

    ``frozen``: a bool pytree like the params (see :func:`jaxflows.train.optim.frozen_mask`);
    frozen leaves enter the loss through ``stop_gradient`` (XLA drops their weight gradients)
    and keep their values in params and EMA.
    """
    if frozen is not None and not any(jax.tree.leaves(frozen)):
        frozen = None

    def loss_and_grad(params, batch, rng, step):
        def loss_fn(p):
            if frozen is not None:
                p = jax.tree.map(lambda f, x: jax.lax.stop_gradient(x) if f else x, frozen, p)
            return task.loss(p, batch, rng, step)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, metrics, grads

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if grad_accum_steps == 1:
            loss, metrics, grads = loss_and_grad(state.params, batch, rng, state.step)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

            def body(carry, inputs):
                i, mb = inputs
                loss, metrics, grads = loss_and_grad(
                    state.params, mb, jax.random.fold_in(rng, i), state.step)
                carry = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
                return carry, None

            zeros = jax.tree.map(
                jnp.zeros_like,
                jax.eval_shape(loss_and_grad, state.params,
                               jax.tree.map(lambda x: x[0], micro), rng, state.step))
            total, _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
            loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum_steps, total)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = keep_frozen(frozen, optax.apply_updates(state.params, updates), state.params)
        ema = state.ema_params
        if ema is not None:
            ema = keep_frozen(frozen, jax.tree.map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params), ema)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema)
        return new_state, metrics

    return train_step


def make_multi_step(train_step):
    """Returns ``multi_step(state, batches) -> (state, metrics of the last step)``.

    ``batches`` has a leading axis of ``k`` steps; the steps run in one ``lax.scan``, each
    exactly as ``train_step`` would (same rng folding from ``state.step``).
    """

    def multi_step(state: TrainState, batches):
        def body(st, batch):
            st, metrics = train_step(st, batch)
            return st, metrics

        state, metrics = jax.lax.scan(body, state, batches)
        return state, jax.tree.map(lambda m: m[-1], metrics)

    return multi_step


def make_eval_step(task: Task):
    """Returns ``eval_step(params, batch, rng) -> {name: (masked sum, count)}``."""

    def eval_step(params, batch, rng):
        per_example = task.eval_batch(params, batch, rng)
        mask = batch["mask"].astype(jnp.float32)
        out = {k: jnp.sum(jnp.where(mask > 0, v.astype(jnp.float32), 0.0))
               for k, v in per_example.items()}
        out["_count"] = jnp.sum(mask)
        return out

    return eval_step
