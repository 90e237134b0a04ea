"""Candidates: inside the box, equal to the anchor off the mask, mask rates, determinism."""

import numpy as np

from jaxflows.bo.candidates import make_candidates, num_candidates, perturbation_mask


def test_candidate_count_rule():
    assert num_candidates(40 * 100, 10) == 5000               # 50000 cap, 10 anchors
    assert num_candidates(5, 1) == 2000                       # floor of 2000
    assert num_candidates(20, 4) == 1000                      # 200 * D split over anchors


def test_inside_box_and_anchor_outside_mask():
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(3, 16)).astype(np.float32)
    prob = np.stack([np.full(16, 0.1), np.linspace(0.0, 1.0, 16), np.full(16, 0.5)])
    c = make_candidates(np.random.default_rng(1), anchors, 0.3, 2000, prob)
    assert c.shape == (3, 2000, 16) and c.dtype == np.float32
    half = 8 * 0.3 / 2
    assert np.all(np.abs(c - anchors[:, None, :]) <= half + 1e-6)
    changed = c != anchors[:, None, :]
    assert np.all(changed.any(-1))                            # force_one
    rates = changed.mean(1)
    # rate ~ prob (the forced dim adds at most P(empty row) per row)
    assert np.all(np.abs(rates[1] - prob[1]) < 0.04), rates[1]
    assert changed[1, :, 0].sum() <= 2000 * (0.9**15) * 2     # prob 0 only via forcing
    np.testing.assert_allclose(rates[2], 0.5, atol=0.05)
    again = make_candidates(np.random.default_rng(1), anchors, 0.3, 2000, prob)
    np.testing.assert_array_equal(c, again)                   # seeded


def test_forced_dim_follows_prob_and_can_be_disabled():
    prob = np.zeros(6)
    prob[2] = 1e-9
    m = perturbation_mask(np.random.default_rng(0), prob, 100)
    assert np.all(m.sum(1) == 1) and np.all(m[:, 2])
    m = perturbation_mask(np.random.default_rng(0), prob, 100, force_one=False)
    assert not m.any()
    c = make_candidates(np.random.default_rng(0), np.zeros((1, 6)), 0.8, 50, prob,
                        force_one=False)
    np.testing.assert_array_equal(c, 0.0)
