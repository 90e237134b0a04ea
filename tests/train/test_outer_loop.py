"""Pieces for outer loops: build once, then init, fit and evaluate many times on new data in one
process without recompiling (a BO loop's refits)."""

import jax
import numpy as np
from helpers import TOY

from jaxflows.data.registry import InMemorySource
from jaxflows.train import load_config
from jaxflows.train.loop import build, evaluate_params, fit, open_split


def test_refits_reuse_the_compiled_steps(data_dir):
    config = load_config(f"{TOY}:default", [f"--config.data.data_dir={data_dir}",
                                            "--config.mesh.data=2"])
    run = build(config)
    full = open_split(run, "train").arrays
    val = open_split(run, "validation")
    rng = np.random.default_rng(0)
    results = []
    for refit in range(3):  # each refit: a fresh state, new data of a new size
        n = 300 + 150 * refit
        idx = rng.choice(len(full["label"]), n, replace=False)
        data = InMemorySource.from_arrays({k: v[idx] for k, v in full.items()})
        state = run.init_state(seed=refit)
        state, metrics = fit(run, state, data, num_steps=8, seed=refit)
        assert np.isfinite(metrics["loss"])
        results.append(evaluate_params(run, state.params, val, seed=0)["loss"])
    assert len(set(results)) == 3
    # one compilation each, whatever the data and the seed
    for fn in (run.train_step, run.eval_step, run.init_params, run.state_from_params):
        assert fn._cache_size() == 1, fn
    # and the steps still run on the mesh they were built for
    assert run.mesh.shape["data"] == 2 and jax.device_count() == 8
