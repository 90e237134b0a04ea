"""A corrupt latest checkpoint is skipped with a warning; the run resumes from the previous good
one and ends exactly where an uninterrupted run ends. A checkpoint of another model is named as
such, not skipped."""

import logging
import os

import numpy as np
import pytest
from helpers import TOY, losses

from jaxflows.train import load_config, train


def _garble(directory: str) -> int:
    n = 0
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            size = os.path.getsize(path)
            with open(path, "wb") as fh:
                fh.write(os.urandom(max(size // 2, 8)))
            n += 1
    return n


def test_corrupt_latest_checkpoint_falls_back(tmp_path, data_dir, caplog):
    config = load_config(f"{TOY}:default", [f"--config.data.data_dir={data_dir}",
                                            "--config.mesh.data=1"])
    wd = str(tmp_path / "run")
    first = train(config, wd)
    ckpts = os.path.join(wd, "checkpoints")
    steps = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())
    assert len(steps) >= 2, steps
    assert _garble(os.path.join(ckpts, str(steps[-1]), "state")) > 0
    before = losses(wd)
    with caplog.at_level(logging.WARNING):
        again = train(config, wd)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert os.listdir(os.path.join(wd, "corrupt_checkpoints"))  # set aside, not deleted
    # it restarted from the previous step and recomputed the rest identically
    assert losses(wd) == before
    for key in ("loss", "accuracy", "step"):
        np.testing.assert_array_equal(again[key], first[key])


def test_a_config_of_another_model_is_named_not_set_aside(tmp_path, data_dir):
    """Evaluating with an override that changes a parameter's shape fails in one line naming
    the array, before any restore; no checkpoint is moved aside as corrupt."""
    from jaxflows.train import evaluate
    from jaxflows.train.checkpoint import CheckpointMismatchError

    config = load_config(f"{TOY}:default", [f"--config.data.data_dir={data_dir}",
                                            "--config.mesh.data=1"])
    wd = str(tmp_path / "run")
    train(config, wd)
    with pytest.raises(CheckpointMismatchError, match=r"saved \(.*32.*\), this config \(.*16"):
        evaluate(wd, overrides=["--config.model.hidden=16"])
    assert not os.path.exists(os.path.join(wd, "corrupt_checkpoints"))
    assert evaluate(wd)["step"] > 0  # the workdir's own config still restores it
