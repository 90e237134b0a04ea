"""Checkpoint preservation (latest N plus the best by the validation metric) and early stopping."""

import os

import jax.numpy as jnp
import pytest
from helpers import TOY

from jaxflows.train import load_config, train
from jaxflows.train.checkpoint import Checkpointer
from jaxflows.train.state import TrainState


def _state(v):
    return TrainState(step=jnp.asarray(v, jnp.int32), rng=jnp.zeros((2,), jnp.uint32),
                      params={"w": jnp.full((3,), float(v))}, opt_state=())


def test_keeps_latest_and_best(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=1, best_metric="val_loss", async_saves=False)
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 4.0)]:
        ckpt.save(step, _state(step), data_state={"next_index": step}, loop={}, config={},
                  metrics={"val_loss": val})
    ckpt.wait()
    kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert kept == [2, 4]  # the best (lowest val_loss) and the latest
    step, state, data, _ = ckpt.restore(_state(0))
    assert step == 4 and float(state.params["w"][0]) == 4.0 and data == {"next_index": 4}
    ckpt.close()



def test_early_stopping_with_patience(tmp_path, data_dir):
    # lr 0: the validation loss never improves after the first evaluation
    config = load_config(f"{TOY}:default", [
        f"--config.data.data_dir={data_dir}", "--config.mesh.data=1",
        "--config.optim.learning_rate=0.0", "--config.train.num_epochs=6",
        "--config.train.early_stopping_patience=2"])
    summary = train(config, str(tmp_path), final_eval=False)
    assert summary["stopped_early"] is True
    assert summary["epochs"] == pytest.approx(3.0)  # best at epoch 1, then 2 evals without gain
    assert summary["best_step"] == 21
