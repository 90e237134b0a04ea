"""Anchors: sequential softmax draws without replacement over re-normalised scores."""

import itertools

import jax
import numpy as np
import pytest

from jaxflows.bo._checks import BOInputError
from jaxflows.bo.anchors import sample_anchors


def _exact_pair_probs(y, temperature):
    """P(first = i, second = j) of the released sequential rule, enumerated in float64."""
    y = np.asarray(y, np.float64)

    def step(rem):
        v = y[rem]
        v = (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else v
        e = np.exp((v - v.max()) / temperature)
        return dict(zip(rem, e / e.sum()))

    out = {}
    first = step(list(range(len(y))))
    for i, j in itertools.permutations(range(len(y)), 2):
        out[(i, j)] = first[i] * step([k for k in range(len(y)) if k != i])[j]
    return out


def test_pair_frequencies_match_the_sequential_rule():
    y = np.array([0.0, 1.0, 2.0, 4.0], np.float32)
    n = 20000
    draws = jax.vmap(lambda k: sample_anchors(k, y, 2, 0.5))(
        jax.random.split(jax.random.key(0), n))
    draws = np.asarray(draws)
    assert np.all(draws[:, 0] != draws[:, 1])                 # without replacement
    want = _exact_pair_probs(y, 0.5)
    for (i, j), p in want.items():
        freq = np.mean((draws[:, 0] == i) & (draws[:, 1] == j))
        assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-3, ((i, j), freq, p)


def test_low_temperature_picks_the_best_and_all_distinct():
    y = np.random.default_rng(0).normal(size=50).astype(np.float32)
    idx = np.asarray(sample_anchors(jax.random.key(1), y, 10, 0.01))
    assert len(set(idx.tolist())) == 10
    assert idx[0] == np.argmax(y)                             # exp(100 * gap) dominates
    top = np.asarray(sample_anchors(jax.random.key(1), y, 3, 0.0))
    np.testing.assert_array_equal(top, np.argsort(-y)[:3])


def test_constant_scores_are_uniform_and_k_is_checked():
    y = np.zeros(4, np.float32)
    draws = np.asarray(jax.vmap(lambda k: sample_anchors(k, y, 1, 0.01))(
        jax.random.split(jax.random.key(2), 4000)))
    np.testing.assert_allclose(np.bincount(draws[:, 0], minlength=4) / 4000, 0.25, atol=0.04)
    with pytest.raises(BOInputError, match="k=5"):
        sample_anchors(jax.random.key(0), y, 5)
