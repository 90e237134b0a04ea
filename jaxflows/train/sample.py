"""``jaxflows sample``: restore a workdir's params, draw with the task's own sampler and options,
and let the task write its artifact (image grid PNG, SMILES text file, 2-D scatter PNG).

Options are the task's (``Task.sample_options``: name -> default), set on the command line as
``--config.sample.KEY=VALUE``; an option the task does not have fails with one line naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from jaxflows.errors import ConfigError, UserError


def resolve_options(task, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``task.sample_options``; string values are parsed to the
    type of the option's default. A ConfigError names an unknown option."""
    from jaxflows.train.config_loader import parse_value

    known = dict(task.sample_options)
    name = task.config.model.name
    out = {}
    for key, value in options.items():
        if key not in known:
            have = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"task {name} has no sample option {key!r} (its options: {have})")
        if isinstance(value, str):
            value = parse_value(f"sample.{key}", value, known[key])
        out[key] = value
    return out


def load_trained(workdir: str, *, data_dir: str | None = None):
    """``(task, params, step)``: the task of a trained workdir and its evaluation parameters
    (best, else EMA, else latest), on the host's devices. ``data_dir`` overrides where the data
    (whose metadata some tasks need, e.g. a vocabulary) is prepared."""
    from jaxflows.train.loop import build, load_saved_config, restore_for_eval

    config = load_saved_config(workdir)
    if data_dir is not None:
        config.data.data_dir = data_dir
    run = build(config)
    step, state = restore_for_eval(run, workdir)
    return run.task, jax.device_get(state.eval_params()), int(step)


def sample_from_workdir(workdir: str, *, num: int, seed: int = 0,
                        options: Mapping[str, Any] | None = None):
    """``(task, samples)``: ``num`` samples of the workdir's eval params (best, else EMA, else
    latest) with the task's ``options``."""
    from jaxflows.train.loop import build, load_saved_config, restore_for_eval

    if not isinstance(num, int) or num <= 0:
        raise UserError(f"--num must be a positive number of samples, got {num}")
    config = load_saved_config(workdir)
    run = build(config)
    opts = resolve_options(run.task, options or {})
    _, state = restore_for_eval(run, workdir)
    with jax.set_mesh(run.mesh):
        samples = run.task.sample(state.eval_params(), jax.random.key(seed), num, **opts)
    return run.task, samples


def sample_to_file(workdir: str, *, num: int, out: str, seed: int = 0,
                   options: Mapping[str, Any] | None = None) -> str:
    """Samples and has the task write its artifact to ``out``; returns the path."""
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise UserError(f"--out {out} is a directory; name a file")
    os.makedirs(folder, exist_ok=True)
    task, samples = sample_from_workdir(workdir, num=num, seed=seed, options=options)
    return task.write_samples(samples, out)
