"""The budgeted oracle: unique canonical molecules only, free cache hits and invalid SMILES,
exhaustion, state round trip, and the PMO metrics on hand-made histories."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

from jaxflows.chem import guacamol as g  # noqa: E402
from jaxflows.chem.oracle import (  # noqa: E402
    BudgetExhaustedError,
    Oracle,
    auc_top_k,
    top_k_mean,
)
from jaxflows.errors import UserError  # noqa: E402

ETHANOL = ["CCO", "OCC", "C(O)C", "[CH3][CH2][OH]"]  # four spellings of one molecule


def test_budget_counts_unique_canonical_molecules():
    o = Oracle("med1", budget=5, num_workers=1)
    out = o(ETHANOL + ["c1ccccc1", "C1=CC=CC=C1", "xyz", ""])
    assert o.calls == 2 and o.remaining == 3
    np.testing.assert_array_equal(out[:4], out[0])
    assert out[4] == out[5]
    np.testing.assert_array_equal(out[6:], -1.0)
    assert o.n_invalid == 2 and o.n_cache_hits == 4 and o.n_queries == 8
    assert [s for s, _ in o.history] == ["CCO", "c1ccccc1"]
    # scores are the task's scores of the canonical SMILES
    np.testing.assert_array_equal(o.scores(), g.score("med1", ["CCO", "c1ccccc1"], num_workers=1))


def test_cache_hits_are_free_and_return_the_cached_score():
    o = Oracle("pdop", budget=3, num_workers=1)
    first = o(["CC(=O)Oc1ccccc1C(=O)O"])
    again = o(["OC(=O)c1ccccc1OC(C)=O", "CC(=O)Oc1ccccc1C(=O)O"])
    assert o.calls == 1 and o.n_cache_hits == 2
    np.testing.assert_array_equal(again, first[0])
    assert o.lookup("O=C(O)c1ccccc1OC(C)=O") == first[0]
    assert o.lookup("CCCC") is None


def test_invalid_smiles_cost_nothing():
    o = Oracle("zale", budget=1, num_workers=1)
    out = o(["", "C1CC", "not a smiles", "c1cccc1"])
    np.testing.assert_array_equal(out, -1.0)
    assert o.calls == 0 and o.remaining == 1 and o.n_invalid == 4 and o.history == []


def test_budget_exhaustion_raises_and_evaluates_nothing():
    o = Oracle("med1", budget=2, num_workers=1)
    o(["CCO"])
    with pytest.raises(BudgetExhaustedError) as e:
        o(["CCC", "CCCC", "CCO"])
    assert "\n" not in str(e.value) and "1 of 2" in str(e.value)
    assert isinstance(e.value, UserError)
    assert o.calls == 1 and o.n_queries == 1  # nothing changed
    # duplicates and cache hits still fit
    o(["CCC", "C(C)C", "CCO"])
    assert o.exhausted and o.calls == 2
    o(["CCO", "CCC", "bad("])  # all free: fine when exhausted
    with pytest.raises(BudgetExhaustedError):
        o(["CCCC"])


def test_partial_evaluation_fills_the_budget_in_order():
    o = Oracle("med1", budget=2, num_workers=1)
    out = o(["CCO", "CCC", "CCO", "CCCC", "xyz", "CCCC"], partial=True)
    assert o.exhausted and [s for s, _ in o.history] == ["CCO", "CCC"]
    assert np.isfinite(out[:3]).all() and out[0] == out[2]
    assert np.isnan(out[3]) and np.isnan(out[5]) and out[4] == -1.0


def test_initial_data_are_free():
    o = Oracle("med1", budget=2, num_workers=1)
    init = o.add_initial(["CCO", "xyz", "CCC"])
    assert init[1] == -1.0 and o.calls == 0 and len(o.initial) == 2
    o(["OCC", "CCCC"])
    assert o.calls == 1 and o.history[0][0] == "CCCC"
    given = Oracle("med1", budget=1, num_workers=1)
    given.add_initial(["CCO", "OCC"], scores=[0.25, 0.75])
    assert given.lookup("CCO") == 0.25 and given.initial == [("CCO", 0.25)]
    with pytest.raises(UserError):
        given.add_initial(["CCO"], scores=[0.1, 0.2])


def test_state_round_trip_through_json():
    o = Oracle("adip", budget=4, num_workers=1)
    o.add_initial(["CCN"])
    o(["CCO", "OCC", "c1ccccc1", "bad("])
    state = json.loads(json.dumps(o.state_dict()))
    r = Oracle.from_state(state, num_workers=1)
    assert r.state_dict() == o.state_dict()
    assert r.history == o.history and r.remaining == 2 and r.lookup("CCN") == o.lookup("CCN")
    np.testing.assert_equal(r.metrics(), o.metrics())
    # the restored oracle goes on counting where the first stopped
    r(["CCO", "CCCl"])
    assert r.calls == 3
    with pytest.raises(UserError):
        Oracle.from_state({"format": "something else"})
    bad = dict(state, history=state["history"] * 2)
    with pytest.raises(UserError):
        Oracle.from_state(bad)


def test_bad_arguments():
    with pytest.raises(UserError) as e:
        Oracle("nope", 10)
    assert "med1" in str(e.value)
    for budget in (0, -1, 1.5, True):
        with pytest.raises(UserError):
            Oracle("med1", budget)
    with pytest.raises(TypeError):
        Oracle("med1", 3)("CCO")


# ------------------------------------------------------------------ PMO metrics


def test_top_k_by_hand():
    s = [0.1, 0.5, 0.3, 0.9, 0.2]
    assert top_k_mean(s, 1) == 0.9
    assert top_k_mean(s, 2) == pytest.approx(0.7)
    assert top_k_mean(s, 100) == pytest.approx(0.4)  # fewer than k: mean of all
    assert math.isnan(top_k_mean([], 10))


def test_auc_by_hand():
    # a constant score c over a full budget: the curve rises from 0 to c over the first
    # freq_log calls, then stays: area = c * (budget - freq_log / 2)
    c, budget, f = 0.5, 1000, 100
    assert auc_top_k([c] * budget, 1, budget, freq_log=f) == pytest.approx(c * (1 - 0.05))
    # two checkpoints by hand: budget 200, freq 100; scores 0 for 100 calls then 1
    s = [0.0] * 100 + [1.0] * 100
    # top-1: 0 at 100 calls, 1 at 200: area = 100*(0+0)/2 + 100*(1+0)/2 = 50 -> 0.25
    assert auc_top_k(s, 1, 200, freq_log=100) == pytest.approx(0.25)
    # top-10 likewise (the top 10 at 200 calls are all 1)
    assert auc_top_k(s, 10, 200, freq_log=100) == pytest.approx(0.25)
    # top-100 at 200 calls: mean of the 100 ones = 1 -> same
    assert auc_top_k(s, 100, 200, freq_log=100) == pytest.approx(0.25)
    # top-200 at 200 calls is 0.5: area = 100 * 0.5 / 2 = 25 -> 0.125
    assert auc_top_k(s, 200, 200, freq_log=100) == pytest.approx(0.125)


def test_auc_of_an_unfinished_run():
    # 150 calls of a 300 budget, score 1 throughout, freq 100:
    # [0,100]: 100*(1+0)/2 = 50; [100,150]: 50*(1+1)/2 = 50; finish: 150*1 -> 250/300
    s = [1.0] * 150
    assert auc_top_k(s, 1, 300, freq_log=100, finish=True) == pytest.approx(250 / 300)
    assert auc_top_k(s, 1, 300, freq_log=100, finish=False) == pytest.approx(100 / 300)


def _auc_reference(scores, k, budget, freq):
    """The same quantity written differently: the Top-k curve at every checkpoint, trapezoids."""
    n = min(len(scores), budget)
    xs = list(range(freq, n, freq)) + [n]
    ys = [float(np.mean(np.sort(scores[:x])[::-1][:k])) for x in xs]
    area = np.trapezoid([0.0] + ys, [0] + xs)
    return (area + (budget - n) * ys[-1]) / budget


@pytest.mark.parametrize("n,budget,freq", [(1000, 1000, 100), (437, 1000, 100), (250, 250, 7)])
def test_auc_matches_an_independent_computation(n, budget, freq):
    rng = np.random.default_rng(n)
    s = rng.random(n) ** 3
    for k in (1, 10, 100):
        assert auc_top_k(s, k, budget, freq_log=freq) == pytest.approx(
            _auc_reference(s, k, budget, freq), rel=1e-12)


def test_oracle_metrics_on_a_hand_made_history():
    o = Oracle("med1", budget=200, num_workers=1)
    scores = np.r_[np.zeros(100), np.ones(100)]
    o._history = [(f"C{'C' * i}", float(x)) for i, x in enumerate(scores)]  # hand-made
    m = o.metrics(freq_log=100)
    assert m["calls"] == 200 and m["top1"] == 1.0 and m["top10"] == 1.0 and m["top100"] == 1.0
    assert m["auc_top1"] == pytest.approx(0.25) and m["auc_top100"] == pytest.approx(0.25)
    empty = Oracle("med1", budget=10).metrics()
    assert empty["calls"] == 0 and math.isnan(empty["top1"]) and math.isnan(empty["auc_top10"])
