"""best_params never hands back the initial params: before the first validation (or in a run with
none) a checkpoint's best_params are the tracked params, and checkpoints written by older engines
(initial params until the first validation) are read as EMA/live params."""

import json
import os

import jax
import numpy as np
from helpers import TOY

from jaxflows.train import load_config, train
from jaxflows.train.loop import build, restore_for_eval
from jaxflows.train.pretrained import _without_stale_best, read_tree


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_run_without_validation_evaluates_trained_params(tmp_path, data_dir):
    config = load_config(f"{TOY}:default", [
        "--config.train.num_steps=12", "--config.train.eval_every_epochs=0",
        "--config.train.log_every_steps=4", f"--config.data.data_dir={data_dir}"])
    wd = str(tmp_path / "wd")
    train(config, wd, final_eval=False)
    tree = read_tree(wd)
    for best, live in zip(_leaves(tree["best_params"]), _leaves(tree["params"])):
        assert best.tobytes() == live.tobytes()
    run = build(config)
    with jax.set_mesh(run.mesh):
        init = jax.device_get(run.init_state().params)
    step, state = restore_for_eval(run, wd)
    assert step == 12
    got = _leaves(state.eval_params())
    assert any(not np.array_equal(a, b) for a, b in zip(got, _leaves(init)))
    for a, b in zip(got, _leaves(tree["params"])):
        assert a.tobytes() == b.tobytes()


def test_stale_best_params_of_older_checkpoints_are_replaced(tmp_path):
    step_dir = tmp_path / "checkpoints" / "5"
    (step_dir / "loop").mkdir(parents=True)
    tree = {"params": {"w": np.ones(2)}, "ema_params": None, "best_params": {"w": np.zeros(2)}}
    (step_dir / "loop" / "metadata").write_text(json.dumps({"best_step": -1}))
    fixed = _without_stale_best(tree, str(step_dir))
    np.testing.assert_array_equal(fixed["best_params"]["w"], np.ones(2))
    tree["ema_params"] = {"w": np.full(2, 3.0)}
    np.testing.assert_array_equal(_without_stale_best(tree, str(step_dir))["best_params"]["w"],
                                  np.full(2, 3.0))
    (step_dir / "loop" / "metadata").write_text(json.dumps({"best_step": 4}))
    np.testing.assert_array_equal(_without_stale_best(tree, str(step_dir))["best_params"]["w"],
                                  np.zeros(2))
    assert os.path.isdir(step_dir)
