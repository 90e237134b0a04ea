"""``jaxflows sample``: restore a workdir's params and write a PNG grid of samples."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from jaxflows.errors import UserError


def sample_images(workdir: str, *, num: int, seed: int = 0, **kwargs) -> np.ndarray:
    """Returns ``[num, H, W, C]`` float32 samples in [0, 1] from the workdir's eval params."""
    from jaxflows.train.loop import build, restore_for_eval

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{workdir} has no config.json", hint="train into it first")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    run = build(config)
    _, state = restore_for_eval(run, workdir)
    kwargs = {k: v for k, v in kwargs.items() if v is not None and v != 0.0}
    with jax.set_mesh(run.mesh):
        images = run.task.sample(state.eval_params(), jax.random.key(seed), num, **kwargs)
    return np.asarray(jax.device_get(images))


def sample_to_png(workdir: str, *, num: int, out: str, seed: int = 0, guidance: float = 0.0,
                  class_label: int | None = None) -> str:
    """Samples and writes a grid PNG to ``out``; returns the path."""
    from jaxflows.eval.grid import save_grid

    images = sample_images(workdir, num=num, seed=seed, guidance=guidance,
                           class_label=class_label)
    save_grid(images, out)
    return out
