"""experiments/nfbo_guacamol.py's aggregation: rows over seeds, the per-task summary, the NF-BO vs
baseline counts, and the README renderer of a summary list."""

import json

import numpy as np
import pytest

from jaxflows.errors import UserError
from jaxflows.eval.tables import render_table


@pytest.fixture(scope="module")
def driver(load_repo_module):
    return load_repo_module("experiments/nfbo_guacamol.py")


def _summary(best, later_compiles=0):
    return {"final_best_with_initial": best, "final_best": best, "auc_top10": best / 2,
            "seconds_per_iteration_after_first": 2.0, "seconds_per_iteration": 3.0,
            "iterations": 10, "iteration_seconds_total": 20.0, "setup_seconds": 1.0,
            "initial": {"best": 0.1},
            "compile_counts": {"later_iterations": later_compiles}}


def test_aggregate_and_summary(driver, tmp_path):
    tasks, methods, seeds = ["adip", "med2"], list(driver.METHODS), [0, 1, 2]
    best = {("adip", "random"): [0.2, 0.3, 0.4], ("adip", "lsbo"): [0.3, 0.3, 0.3],
            ("adip", "nfbo_no_tacs"): [0.5, 0.5, 0.5], ("adip", "nfbo"): [0.6, 0.6, 0.9],
            ("med2", "random"): [0.2, 0.2, 0.2], ("med2", "lsbo"): [0.4, 0.4, 0.4],
            ("med2", "nfbo_no_tacs"): [0.1, 0.1, 0.1], ("med2", "nfbo"): [0.3, 0.3, 0.3]}
    summaries = {(t, m, s): _summary(best[(t, m)][i], later_compiles=int(m == "lsbo"))
                 for t in tasks for m in methods for i, s in enumerate(seeds)}
    curves = {k: np.linspace(0.1, v["final_best_with_initial"], 20)
              for k, v in summaries.items()}
    rows, table = driver.aggregate(tasks, methods, seeds, summaries, curves)
    r = {(x["task"], x["method"]): x for x in rows}
    assert r[("adip", "nfbo")]["final_best_mean"] == pytest.approx(0.7)
    assert r[("adip", "nfbo")]["final_best_sem"] == pytest.approx(
        np.std([0.6, 0.6, 0.9], ddof=1) / np.sqrt(3))
    assert r[("adip", "lsbo")]["compiles_later_iterations_max"] == 1
    assert r[("adip", "lsbo")]["seconds_per_iteration_median"] is None  # no records given

    # the median pools every iteration of every seed; one paused iteration does not move it
    timed = {k: {**v, "iteration_seconds": {"seconds": [2.0, 3.0, 500.0 if k[2] == 0 else 4.0],
                                            "phases": {"gp_fit": [1.0, 2.0, float(k[2])]}}}
             for k, v in summaries.items()}
    rows_t, _ = driver.aggregate(tasks, methods, seeds, timed, curves)
    rt = {(x["task"], x["method"]): x for x in rows_t}
    assert rt[("adip", "nfbo")]["seconds_per_iteration_median"] == 3.0
    assert rt[("adip", "nfbo")]["phase_seconds_median"] == {"gp_fit": 1.0}
    assert table["med2"]["nfbo"]["mean"][-1] == pytest.approx(0.3)
    summary, counts = driver.summary_rows(rows)
    s = {x["task"]: x for x in summary}
    assert s["adip"]["nfbo_ge_all_baselines"] and not s["med2"]["nfbo_ge_all_baselines"]
    assert s["adip"]["tacs_on_minus_off"] == pytest.approx(0.2)
    # med2: LS-BO is the strongest baseline, 0.1 above NF-BO; equal seeds: a zero standard error
    assert s["med2"]["best_baseline"] == "lsbo"
    assert s["med2"]["nfbo_minus_best_baseline"] == pytest.approx(-0.1)
    assert s["med2"]["margin_se"] == pytest.approx(0.0)
    assert s["adip"]["best_baseline"] == "nfbo_no_tacs"  # 0.5 on every seed
    assert s["adip"]["nfbo_minus_best_baseline"] == pytest.approx(0.2)
    assert s["adip"]["margin_se"] == pytest.approx(np.std([0.6, 0.6, 0.9], ddof=1) / np.sqrt(3))
    assert s["adip"]["nfbo"].startswith("0.700 ± ") and s["adip"]["nfbo"].endswith(" (3)")
    assert counts == {"tasks": 2, "nfbo_ge_all_baselines_tasks": 1,
                      "nfbo_ge_baseline_tasks": {"random": 2, "lsbo": 1, "nfbo_no_tacs": 2},
                      "tasks_compared": {"random": 2, "lsbo": 2, "nfbo_no_tacs": 2}}

    # an interim table: med2 has no finished nfbo runs, adip's nfbo only seed 0
    partial = {k: v for k, v in summaries.items()
               if not (k[0] == "med2" and k[1] == "nfbo") and
               not (k[0] == "adip" and k[1] == "nfbo" and k[2] > 0)}
    rows, _ = driver.aggregate(tasks, methods, seeds, partial, curves)
    r = {(x["task"], x["method"]): x for x in rows}
    assert ("med2", "nfbo") not in r and r[("adip", "nfbo")]["seeds"] == [0]
    assert r[("adip", "nfbo")]["final_best_sem"] is None
    summary, counts = driver.summary_rows(rows)
    s = {x["task"]: x for x in summary}
    assert s["med2"]["nfbo"] is None and s["med2"].get("nfbo_ge_all_baselines") is None
    assert s["adip"]["nfbo"] == "0.600 (1)"
    assert s["adip"]["margin_se"] is None  # one seed: no standard error
    assert counts["tasks_compared"] == {"random": 1, "lsbo": 1, "nfbo_no_tacs": 1}

    (tmp_path / "x.json").write_text(json.dumps({"title": "T", "command": "c", "rows": rows,
                                                 "summary_rows": summary}))
    md = render_table("x", str(tmp_path), rows_key="summary_rows")
    assert "| task | initial_best | random |" in md and "| 0.600 (1) |" in md
    with pytest.raises(UserError, match="no 'missing' list"):
        render_table("x", str(tmp_path), rows_key="missing")


def test_run_lock_shares_runs_between_drivers(driver, tmp_path):
    """A run held by one driver is skipped by another (an flock on WORKDIR.lock), and is free
    again once released."""
    workdir = str(tmp_path / "small" / "adip" / "nfbo_s0")
    with driver.run_lock(workdir) as first:
        assert first
        with driver.run_lock(workdir) as second:
            assert not second
    with driver.run_lock(workdir) as again:
        assert again


def test_proposal_fractions_pool_the_runs_that_counted(driver):
    runs = [{"seed": 0, "calls": 500, "proposed": 2000, "decodes_same_as_anchor": None},
            {"seed": 1, "calls": 500, "proposed": 1000, "decodes_same_as_anchor": 600},
            {"seed": 2, "calls": 500, "proposed": 3000, "decodes_same_as_anchor": 900}]
    out = driver.proposal_fractions(runs)
    assert out["new_per_proposal"] == pytest.approx(1500 / 6000)
    assert out["same_as_anchor_fraction"] == pytest.approx(1500 / 4000)  # seeds 1 and 2 only
    assert out["same_as_anchor_seeds"] == [1, 2]
    assert driver.proposal_fractions([{"calls": 5}]) == {
        "new_per_proposal": None, "same_as_anchor_fraction": None, "same_as_anchor_seeds": []}
