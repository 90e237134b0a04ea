"""Trust-region length rules on scripted histories, and the box."""

import math

import numpy as np
import pytest

from jaxflows.bo.trust_region import (
    TrustRegionState,
    box,
    update_duplicate_ratio,
    update_trust_region,
    update_turbo,
)
from jaxflows.errors import ConfigError


def test_defaults_follow_turbo_state():
    s = TrustRegionState()
    assert (s.length, s.length_min, s.length_max) == (0.8, 0.5**7, 1.6)
    assert (s.success_tolerance, s.failure_tolerance) == (10, 32)


def test_duplicate_ratio_rule_scripted():
    s = TrustRegionState()
    lengths = []
    for r in [0.99, 0.99, 0.5, 0.9, 0.95, 0.8, 0.96]:
        s = update_trust_region("duplicate_ratio", s, duplicate_ratio=r)
        lengths.append(s.length)
    # > 0.95 grows by 1.2, < 0.8 shrinks by 1.2, [0.8, 0.95] keeps
    want = [0.96, 1.152, 0.96, 0.96, 0.96, 0.96, 1.152]
    np.testing.assert_allclose(lengths, want, rtol=1e-12)
    for _ in range(10):
        s = update_duplicate_ratio(s, 1.0)
    assert s.length == 1.6                                    # clipped at the max
    for _ in range(40):
        s = update_duplicate_ratio(s, 0.0)
    assert s.length == 0.5**7 and s.restarts == 0             # clipped at the min, no restart
    with pytest.raises(ValueError, match="duplicate_ratio"):
        update_duplicate_ratio(s, 1.5)


def test_turbo_rule_scripted():
    s = TrustRegionState()
    for i in range(9):                                        # 9 successes: no change yet
        s = update_turbo(s, [float(i)])
    assert (s.length, s.success_counter) == (0.8, 9)
    s = update_turbo(s, [9.0])                                # 10th success: expand x2
    assert (s.length, s.success_counter, s.best_value) == (1.6, 0, 9.0)
    for _ in range(10):
        s = update_turbo(s, [s.best_value + 1.0])
    assert s.length == 1.6                                    # capped at the max
    # a gain below 1e-3 * |best| is a failure; failures reset the success streak
    s = update_turbo(s, [s.best_value * (1 + 5e-4)])
    assert (s.success_counter, s.failure_counter) == (0, 1)
    for _ in range(31):
        s = update_turbo(s, [-5.0, 0.0])
    assert (s.length, s.failure_counter) == (0.8, 0)          # 32 failures: halve
    # 0.8 / 2**k < 0.5**7 first at k = 7: six more halvings keep it, the 7th restarts
    for _ in range(6 * 32):
        s = update_turbo(s, [0.0])
    assert math.isclose(s.length, 0.8 / 2**7 * 2) and s.restarts == 0
    for _ in range(32):
        s = update_turbo(s, [0.0])
    assert (s.length, s.restarts, s.success_counter, s.failure_counter) == (0.8, 1, 0, 0)
    assert s.best_value == pytest.approx(19.0 * (1 + 5e-4))


def test_rule_selection_errors():
    with pytest.raises(ConfigError, match="unknown trust-region rule 'tr'"):
        update_trust_region("tr", TrustRegionState(), duplicate_ratio=0.5)
    with pytest.raises(ValueError, match="needs y_next"):
        update_trust_region("turbo", TrustRegionState())
    with pytest.raises(ConfigError, match="length_min"):
        TrustRegionState(length_init=2.0)


def test_box_is_anchor_plus_minus_four_lengths():
    lo, hi = box(np.array([[0.0, 1.0]]), 0.8)
    np.testing.assert_allclose(lo, [[-3.2, -2.2]], rtol=1e-6)
    np.testing.assert_allclose(hi, [[3.2, 4.2]], rtol=1e-6)
