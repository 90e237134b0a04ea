"""One end-to-end smoke train per experiment config: the loss falls and eval.json is written;
the new data families (2-D vectors, SELFIES tokens) give equal losses on 1 and 8 devices."""

import glob
import gzip
import json
import os

import numpy as np
import pytest

from jaxflows.data.registry import DATASETS, prepare
from jaxflows.train import evaluate, load_config, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "experiments", "configs", "*.py"))
                 if "def get_config" in open(p).read())  # not shared recipe modules
#: smoke rows of the new data families run in the 1-vs-8-device test below instead
FAMILIES = ("flow2d_toy.py", "token_moses.py")
#: configs of outer loops, not of the training engine (their smoke rows run in their own tests)
NOT_ENGINE = ("nfbo_guacamol.py",)  # tests/bo/test_loop.py
SPECS = [f"{path}:smoke" for path in CONFIGS
         if os.path.basename(path) not in FAMILIES + NOT_ENGINE] + [
    os.path.join(REPO, "experiments", "configs", "vae_mnist.py:smoke_ccliniaf")]


#: a MOSES-format stand-in for the smoke rows on moses_selfies (CI reads no download)
FIXTURE_SMILES = {
    "train": [f"C{'C' * i}O" for i in range(24)] + [f"c1ccccc1{'C' * i}N" for i in range(24)]
    + [f"CC(=O)N{'C' * i}c1ccc(O)cc1" for i in range(16)],
    "test": [f"N{'C' * i}C(=O)O" for i in range(16)],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data"))
    prepare("digits", d)
    raw = tmp_path_factory.mktemp("raw_moses")
    for split, smiles in FIXTURE_SMILES.items():
        with gzip.open(raw / f"{split}.csv.gz", "wt") as f:
            f.write("SMILES\n" + "\n".join(smiles) + "\n")
    prepare("moses_selfies", d, source_path=str(raw))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=[os.path.basename(s) for s in SPECS])
def test_smoke_row_trains(spec, data_dir, tmp_path):
    # 60 steps of batch 16 keep the suite short; the rows themselves train longer (< 60 s each)
    config = load_config(spec, [f"--config.data.data_dir={data_dir}",
                                "--config.train.progress_bar=false",
                                "--config.train.num_steps=60", "--config.train.batch_size=16",
                                "--config.train.checkpoint_every_secs=600"])
    assert DATASETS[config.data.name].embedded or config.data.name == "moses_selfies", \
        "smoke rows run on embedded data (or the MOSES fixture)"
    result = train(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [json.loads(ln)["loss"] for ln in f if '"loss"' in ln]
    assert len(losses) >= 2
    assert losses[-1] < losses[0], f"loss did not fall: {losses[0]} -> {losses[-1]}"
    assert (tmp_path / "eval.json").exists() and result["split"] == "test"
    if "vae_mnist" in spec:  # per-image IS-NLL for paired comparisons between rows
        per = np.load(tmp_path / "eval_per_example.npz")
        assert per["nll_is"].shape == (result["num_is_examples"],)
        np.testing.assert_allclose(per["nll_is"].mean(), result["nll_is"], rtol=1e-5)
        # re-evaluate with a changed evaluation setting into another file
        small = evaluate(str(tmp_path), overrides=["--config.model.num_is_examples=10"],
                         output="eval_small.json")
        assert small["num_is_examples"] == 10
        assert (tmp_path / "eval_small.json").exists()
        assert np.load(tmp_path / "eval_small_per_example.npz")["nll_is"].shape == (10,)


def _losses_on(spec, tmp_path, data_dir, devices, final_eval):
    config = load_config(spec, [f"--config.data.data_dir={data_dir}",
                                f"--config.mesh.data={devices}", "--config.train.num_steps=24",
                                "--config.train.log_every_steps=6",
                                "--config.train.eval_every_epochs=0",
                                "--config.train.progress_bar=false"])
    wd = tmp_path / f"d{devices}"
    result = train(config, str(wd), final_eval=final_eval)
    if final_eval:
        assert (wd / "eval.json").exists() and result["split"] == "test"
    with open(wd / "metrics.jsonl") as f:
        rows = [json.loads(ln) for ln in f]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("row", [f"{f}:smoke" for f in FAMILIES])
def test_new_data_families_same_losses_on_1_and_8_devices(row, data_dir, tmp_path):
    """The smoke rows of the vector and token families: the loss falls, eval.json is written,
    and 8 devices log the same losses as 1."""
    spec = os.path.join(REPO, "experiments", "configs", row)
    one = _losses_on(spec, tmp_path, data_dir, 1, final_eval=True)
    eight = _losses_on(spec, tmp_path, data_dir, 8, final_eval=False)
    assert [s for s, _ in one] == [6, 12, 18, 24] == [s for s, _ in eight]
    assert one[-1][1] < one[0][1], f"loss did not fall: {one}"
    np.testing.assert_allclose([v for _, v in eight], [v for _, v in one], rtol=1e-5)
