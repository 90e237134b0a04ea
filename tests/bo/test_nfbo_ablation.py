"""experiments/nfbo_ablation.py: the variant command lines and the comparison with the table's
run record (same SeqFlow required)."""

import gzip
import json
import os

import pytest

from jaxflows.errors import UserError


@pytest.fixture(scope="module")
def ablation(load_repo_module):
    return load_repo_module("experiments/nfbo_ablation.py")


def _write_run(workdir, fingerprint, best, scores):
    os.makedirs(workdir)
    summary = {"finished": True, "budget": 4, "final_best_with_initial": best, "iterations": 3,
               "seconds_per_iteration_after_first": 1.5, "git_commit": "abc",
               "initial": {"best": 0.2}, "model": {"fingerprint": fingerprint}}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(workdir, "bo_history.jsonl"), "w") as f:
        for i, s in enumerate(scores):
            f.write(json.dumps({"call": i + 1, "score": s}) + "\n")


def test_variant_commands_carry_their_override(ablation):
    cmd = ablation.run_command("valt", "nfbo", 2, "no_reencode", "W")
    assert "--config.finetune.reencode=False" in cmd and "--config.seed=2" in cmd
    assert "--config.gp.refit_every_iteration=False" in ablation.run_command(
        "valt", "lsbo", 0, "gp_once", "W")


def test_compare_reads_the_table_record_and_refuses_another_seqflow(ablation, tmp_path,
                                                                    monkeypatch):
    table = tmp_path / "table"
    os.makedirs(table / "valt")
    with gzip.open(table / "valt" / "nfbo_s0.json.gz", "wt") as f:
        json.dump({"summary": {"final_best_with_initial": 0.3, "iterations": 5,
                               "model": {"fingerprint": "aaa"}}}, f)
    monkeypatch.setattr(ablation, "TABLE_RUNS", str(table))
    wd = str(tmp_path / "run")
    _write_run(wd, "aaa", 0.5, [0.1, 0.5, 0.3])
    row = ablation.compare("valt", "nfbo", 0, "no_reencode", wd, ["jaxflows", "bo"])
    assert row["final_best_variant"] == 0.5 and row["final_best_table"] == 0.3
    assert row["best_so_far_per_call"] == [0.2, 0.5, 0.5, 0.5]   # from the initial best
    other = str(tmp_path / "other")
    _write_run(other, "bbb", 0.5, [0.5])
    with pytest.raises(UserError, match="not comparable"):
        ablation.compare("valt", "nfbo", 0, "no_reencode", other, ["jaxflows", "bo"])
    with pytest.raises(UserError, match="no record"):
        ablation.compare("valt", "nfbo", 1, "no_reencode", wd, ["jaxflows", "bo"])
