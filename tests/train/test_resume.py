"""A run killed at a random moment (SIGKILL or SIGTERM) and resumed ends exactly like an
uninterrupted run: same eval.json, bitwise-equal parameters, same logged losses."""

import json
import os
import random
import signal
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import cli_env, losses, run_cli, train_cmd


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    wd = str(tmp_path_factory.mktemp("reference"))
    out = run_cli(train_cmd(wd, "long"), cli_env(data_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    return wd


def _final_params(workdir):
    ckpt_dir = os.path.join(workdir, "checkpoints")
    step = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
    with ocp.StandardCheckpointer() as c:
        tree = c.restore(os.path.join(ckpt_dir, str(step), "state"))
    return step, tree


def _kill_and_resume(workdir, data_dir, sig):
    env = cli_env(data_dir)
    proc = subprocess.Popen(train_cmd(workdir, "long"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpts = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckpts) and any(s.isdigit() for s in os.listdir(ckpts)):
            break
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 1.5))  # a random moment of the run
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert not os.path.exists(os.path.join(workdir, "eval.json"))
    out = run_cli(train_cmd(workdir, "long"), env)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_interrupted_run_equals_uninterrupted(tmp_path, data_dir, reference, sig):
    wd = str(tmp_path / "interrupted")
    _kill_and_resume(wd, data_dir, sig)
    with open(os.path.join(reference, "eval.json")) as f:
        ref_eval = json.load(f)
    with open(os.path.join(wd, "eval.json")) as f:
        got_eval = json.load(f)
    for key in ("loss", "accuracy", "step"):
        assert got_eval[key] == ref_eval[key], key
    ref_step, ref_state = _final_params(reference)
    got_step, got_state = _final_params(wd)
    assert got_step == ref_step
    for a, b in zip(jax_leaves(ref_state["params"]), jax_leaves(got_state["params"])):
        np.testing.assert_array_equal(a, b)  # bitwise
    for a, b in zip(jax_leaves(ref_state["best_params"]), jax_leaves(got_state["best_params"])):
        np.testing.assert_array_equal(a, b)
    assert losses(wd) == losses(reference)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)
