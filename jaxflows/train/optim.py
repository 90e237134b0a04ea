"""The optimiser from ``config.optim``, built from optax pieces only."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

from jaxflows.errors import ConfigError


def learning_rate_schedule(optim_config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """``constant`` or ``warmup_cosine`` (linear warmup over warmup_epochs, cosine to end)."""
    lr = float(optim_config.learning_rate)
    warmup = int(round(float(optim_config.warmup_epochs) * steps_per_epoch))
    if optim_config.schedule == "constant":
        if warmup > 0:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
            )
        return optax.constant_schedule(lr)
    if optim_config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=lr * 1e-2 if warmup else lr,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=lr * float(optim_config.end_lr_factor),
        )
    raise ConfigError(
        f"config.optim.schedule={optim_config.schedule!r} is unknown; use constant or warmup_cosine"
    )


def param_path(path) -> str:
    """``'a/b/c'`` for a key path of nested dicts (what ``optim.freeze`` regexes match)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def frozen_mask(params: Any, patterns: Sequence[str]) -> Any:
    """A pytree of bools like ``params``: True where the leaf's path fully matches one of the
    regexes ``patterns``. A ConfigError for a bad regex or one that matches nothing."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns or ())
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"config.optim.freeze: bad regex {p!r} ({e})") from None
    leaves = jax.tree_util.tree_leaves_with_path(params)
    paths = [param_path(k) for k, _ in leaves]
    for p, rx in zip(patterns, compiled):
        if not any(rx.fullmatch(path) for path in paths):
            raise ConfigError(f"config.optim.freeze: {p!r} matches no parameter",
                              hint=f"parameter paths look like {paths[0]!r}" if paths else None)
    flags = [any(rx.fullmatch(path) for rx in compiled) for path in paths]
    return jax.tree.unflatten(jax.tree.structure(params), flags)


def make_optimizer(optim_config, schedule: optax.Schedule, frozen: Any = None
                   ) -> optax.GradientTransformation:
    """Adam/AdamW with optional global-norm clipping, and optionally skipping updates whose
    gradients are not finite (``optax.apply_if_finite``; ``skip_nonfinite_max`` consecutive
    skips at most, 0 = off). ``frozen`` (a bool pytree like the params, see
    :func:`frozen_mask`) routes frozen leaves to ``optax.set_to_zero`` through
    ``optax.multi_transform``: they get no update, no optimiser state, no weight decay, and do
    not count in the clipping norm."""
    name = optim_config.name
    kwargs = dict(b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps)
    if name == "adam":
        opt = optax.adam(schedule, **kwargs)
    elif name == "adamw":
        opt = optax.adamw(schedule, weight_decay=optim_config.weight_decay, **kwargs)
    else:
        raise ConfigError(f"config.optim.name={name!r} is unknown; use adam or adamw")
    if optim_config.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), opt)
    if frozen is not None and any(jax.tree.leaves(frozen)):
        labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
        opt = optax.multi_transform({"trained": opt, "frozen": optax.set_to_zero()}, labels)
    skip = int(optim_config.get("skip_nonfinite_max", 0))
    if skip > 0:
        opt = optax.apply_if_finite(opt, max_consecutive_errors=skip)
    return opt
