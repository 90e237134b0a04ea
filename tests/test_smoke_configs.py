"""One end-to-end smoke train per experiment config: the loss falls and eval.json is written."""

import glob
import json
import os

import pytest

from jaxflows.data.registry import prepare
from jaxflows.train import evaluate, load_config, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "*.py")))
SPECS = [f"{path}:smoke" for path in CONFIGS] + [
    os.path.join(REPO, "experiments", "configs", "vae_mnist.py:smoke_ccliniaf")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data"))
    prepare("digits", d)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=[os.path.basename(s) for s in SPECS])
def test_smoke_row_trains(spec, data_dir, tmp_path):
    # 60 steps keep the suite short; the rows themselves train longer (< 60 s each)
    config = load_config(spec, [f"--config.data.data_dir={data_dir}",
                                "--config.train.progress_bar=false",
                                "--config.train.num_steps=60"])
    assert config.data.name == "digits", "smoke rows run on the embedded data"
    result = train(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [json.loads(ln)["loss"] for ln in f if '"loss"' in ln]
    assert len(losses) >= 2
    assert losses[-1] < losses[0], f"loss did not fall: {losses[0]} -> {losses[-1]}"
    assert (tmp_path / "eval.json").exists() and result["split"] == "test"
    if "vae_mnist" in spec:  # per-image IS-NLL for paired comparisons between rows
        import numpy as np

        per = np.load(tmp_path / "eval_per_example.npz")
        assert per["nll_is"].shape == (result["num_is_examples"],)
        np.testing.assert_allclose(per["nll_is"].mean(), result["nll_is"], rtol=1e-5)
        # re-evaluate with a changed evaluation setting into another file
        small = evaluate(str(tmp_path), overrides=["--config.model.num_is_examples=10"],
                         output="eval_small.json")
        assert small["num_is_examples"] == 10
        assert (tmp_path / "eval_small.json").exists()
        assert np.load(tmp_path / "eval_small_per_example.npz")["nll_is"].shape == (10,)
