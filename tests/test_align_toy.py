"""experiments/align_toy.py --smoke end to end: trains a tiny prior through the engine, writes the
results JSON (rows, provenance, curves) and the heat maps, and reuses its work when rerun."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script(load_repo_module):
    return load_repo_module("experiments/align_toy.py")


@pytest.mark.slow
def test_align_toy_smoke(script, tmp_path):
    out = tmp_path / "results" / "align_toy.json"
    argv = ["--smoke", "--runs_dir", str(tmp_path / "runs"), "--out", str(out),
            "--data_dir", str(tmp_path / "data")]
    results = script.main(argv)
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    for key in ("command", "git_commit", "machine", "machine_info", "wall_time_s", "protocol"):
        assert key in saved
    (row,) = saved["rows"]
    assert row["density"] == "gmm5"
    for key in ("spearman_grid", "spearman_samples", "spearman_grid_kde", "spearman_samples_kde",
                "lalign_repeatability", "bound_spearman", "bound_holds_frac", "bound_gap_mean"):
        assert -1.0 <= row[key] <= 1.0 or key == "bound_gap_mean", key
        assert np.isfinite(row[key]), key
    assert len(row["coverage"]) == 5 and abs(sum(row["coverage"]) - 1.0) < 1e-9
    assert row["coverage_target"] == 0.2
    steps = [c[0] for c in row["latent_curve"]]
    assert steps == list(range(0, 61, 20))  # every --record_every steps, start and end
    assert row["prior_curves"]["train_loss"] and row["prior_curves"]["val_loss"]
    assert os.path.exists(os.path.join(REPO, row["heatmap"]) if not os.path.isabs(row["heatmap"])
                          else row["heatmap"])
    assert (tmp_path / "runs" / "gmm5" / "align_analysis.json").exists()

    # a rerun reuses the trained prior and the cached analysis: the same numbers
    again = script.main(argv)
    assert again["rows"][0]["spearman_grid"] == row["spearman_grid"]
    assert again["rows"][0]["latent_curve"] == row["latent_curve"]
