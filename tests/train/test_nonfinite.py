"""Non-finite losses: a clear one-line error by default; with ``optim.skip_nonfinite_max`` the
update is skipped (``optax.apply_if_finite``) and training carries on with finite params."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
from helpers import cli_env, run_cli, train_cmd

from jaxflows.train.optim import make_optimizer


def _optim(skip):
    return ml_collections.ConfigDict(dict(name="adam", b1=0.9, b2=0.999, eps=1e-8,
                                          weight_decay=0.0, grad_clip_norm=1.0,
                                          skip_nonfinite_max=skip))


def test_apply_if_finite_skips_nan_gradients():
    params = {"w": jnp.ones((3,))}
    tx = make_optimizer(_optim(3), 0.1)
    state = tx.init(params)
    upd, state = tx.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
    np.testing.assert_array_equal(upd["w"], 0.0)
    upd, state = tx.update({"w": jnp.array([1.0, 1.0, 0.0])}, state, params)
    assert float(jnp.abs(upd["w"]).max()) > 0
    plain = make_optimizer(_optim(0), 0.1)
    upd, _ = plain.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, plain.init(params), params)
    assert not bool(jnp.all(jnp.isfinite(upd["w"])))



def test_nan_loss_is_one_line_error_or_skipped(data_dir, tmp_path):
    env = cli_env(data_dir)
    # the loss of step index 4 is logged at step 5 (log_every_steps=5)
    bad = run_cli(train_cmd(str(tmp_path / "a"), "default", "--config.model.nan_at_step=4",
                            "--config.train.num_steps=10"), env)
    assert bad.returncode == 2, bad.stderr
    assert "error: loss is nan at step 5" in bad.stderr and "Traceback" not in bad.stderr
    ok = run_cli(train_cmd(str(tmp_path / "b"), "default", "--config.model.nan_at_step=4",
                           "--config.train.num_steps=10", "--config.optim.skip_nonfinite_max=3"),
                 env)
    assert ok.returncode == 0, ok.stderr
    assert "update skipped" in ok.stderr
    with open(os.path.join(tmp_path / "b", "metrics.jsonl")) as f:
        rows = [json.loads(ln) for ln in f if '"loss"' in ln]
    assert [r["step"] for r in rows] == [5, 10]
    assert np.isnan(float(rows[0]["loss"])) and np.isfinite(rows[1]["loss"])  # NaN is written "nan"
    with open(os.path.join(tmp_path / "b", "eval.json")) as f:
        assert np.isfinite(json.load(f)["loss"])

