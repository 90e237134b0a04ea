"""The TarFlow guidance-sweep script on the digits smoke row: rows, metrics, reuse of the
classifier, and a clear error for an unconditional model."""

import json
import os

import pytest

from jaxflows.data.registry import prepare
from jaxflows.errors import UserError
from jaxflows.train import load_config, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "tarflow_mnist.py")


@pytest.fixture(scope="module")
def sweep(load_repo_module):
    return load_repo_module("experiments/tarflow_guidance.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    prepare("digits", data_dir)
    workdir = str(tmp_path_factory.mktemp("run"))
    config = load_config(f"{CONFIG}:smoke", [f"--config.data.data_dir={data_dir}",
                                             "--config.train.progress_bar=false",
                                             "--config.train.num_steps=20"])
    train(config, workdir)
    return data_dir, workdir


@pytest.mark.slow
def test_sweep_rows_and_classifier_reuse(trained, sweep, tmp_path):
    data_dir, workdir = trained
    kw = dict(weights=[0.0, 2.0], num=40, batch_size=20, seed=0, temperatures=(1.0, 0.7),
              annealed=(True, False),
              classifier_path=str(tmp_path / "cls.msgpack"), classifier_steps=100,
              data_dir=data_dir)
    res = sweep.run_sweep(workdir, **kw)
    rows = res["rows"]
    assert [(r["temperature"], r["weight"], r["denoise"]) for r in rows] == [
        (t, w, d) for t in (1.0, 0.7) for w in (0.0, 2.0) for d in (False, True)]
    for r in rows:
        assert 0.0 <= r["class_accuracy"] <= 1.0 and r["fd_mnist"] >= 0.0
        per_class = r["class_accuracy_per_class"]
        assert len(per_class) == 10 and all(0.0 <= a <= 1.0 for a in per_class)
        # 40 balanced labels: 4 per class, so the overall accuracy is the per-class mean
        assert abs(sum(per_class) / 10 - r["class_accuracy"]) < 1e-6
        assert r["num_samples"] == 40 and r["draw_images_per_s"] > 0
    assert res["classifier"]["trained_now"] and res["classifier"]["test_accuracy"] > 0.5
    assert os.path.exists(os.path.join(workdir, "samples_w2_t0.7_const_denoised.png"))
    assert [r["annealed"] for r in rows] == [True] * 4 + [False] * 4
    assert {"command", "git_commit", "machine", "checkpoint_step"} <= set(res)
    json.dumps(res)  # serialisable as written
    # denoising changes the draws it is given, nothing else: same labels, same noise
    assert rows[0]["fd_mnist"] != rows[1]["fd_mnist"]
    again = sweep.run_sweep(workdir, **{**kw, "weights": [0.0], "temperatures": (1.0,),
                                        "annealed": (True,)})
    assert not again["classifier"]["trained_now"]
    assert again["classifier"]["test_accuracy"] == res["classifier"]["test_accuracy"]
    assert again["rows"][0]["fd_mnist"] == pytest.approx(rows[0]["fd_mnist"], rel=1e-5)


def test_sweep_refuses_missing_workdir(sweep, tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        sweep.run_sweep(str(tmp_path), weights=[0.0], num=4, batch_size=4, seed=0,
                                  classifier_path=None, classifier_steps=1)
