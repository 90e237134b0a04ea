"""experiments/run_table.py --collect_only: rows read from their workdirs, written to the results
file that --out_name names (the default results file untouched)."""

import json
import sys

import pytest


def test_collect_only_writes_the_named_results_file(load_repo_module, tmp_path, monkeypatch):
    run_table = load_repo_module("experiments/run_table.py")
    row = tmp_path / "work" / "vae"
    row.mkdir(parents=True)
    (row / "eval.json").write_text(json.dumps({"nll_is": 85.1, "nll_is_sem": 0.2,
                                               "neg_elbo": 88.0}))
    (row / "train_summary.json").write_text(json.dumps({"train_wall_time_s": 12.0}))
    (row / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1.0, "step": 500, "loss": 90.0, "examples_per_s": 1e4}) + "\n"
        + json.dumps({"epoch": 1.0, "step": 500, "val_neg_elbo": 89.0}) + "\n")
    monkeypatch.setattr(run_table, "HERE", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["run_table.py", "vae_mnist", "--rows", "vae",
                                      "--workroot", str(tmp_path / "work"), "--collect_only",
                                      "--out_name", "vae_mnist_converged"])
    assert run_table.main() == 0
    assert not (tmp_path / "results" / "vae_mnist.json").exists()
    saved = json.loads((tmp_path / "results" / "vae_mnist_converged.json").read_text())
    assert saved["title"] == "vae_mnist_converged"
    (r,) = saved["rows"]
    assert r["test_nll"] == 85.1 and r["wall_time_s"] == 12.0
    assert r["curves"]["val"] == [{"epoch": 1.0, "step": 500, "neg_elbo": 89.0}]
    monkeypatch.setattr(sys, "argv", ["run_table.py", "vae_mnist", "--rows", "vae",
                                      "--collect_only", "--out_name", "../x"])
    with pytest.raises(SystemExit):
        run_table.main()
