"""Trust-region length: state, the two update rules, and the box around an anchor.

One state per BO run (the released NF-BO code keeps a single ``tr_length`` shared by all
anchors). Lengths: initial 0.8, min 0.5**7, max 1.6 (``TurboState`` in mlvlab/NFBO
``BO/model/utils/turbo.py`` and LOL-BO).

Rules, selected by name (:data:`RULES`):

* ``"duplicate_ratio"`` -- what the released NF-BO code runs (``BO/optimizer.py``,
  ``update_next``): ``r`` = fraction of the batch's proposals that were not new (already
  evaluated, or not decodable), i.e. ``1 - new / (N_TR * N_q)``; ``r > 0.95`` -> length * 1.2,
  ``r < 0.8`` -> length / 1.2. Here the result is clipped to [min, max] (the released code does
  not clip); no restarts.
* ``"turbo"`` -- TuRBO's success/failure counters as in LOL-BO (``lolbo/utils/bo_utils/
  turbo.py``, ``update_state``): a batch succeeds if its best value beats the incumbent by more
  than ``1e-3 * |best|``; ``success_tolerance`` (10) successes in a row -> length * 2 (at most
  max), ``failure_tolerance`` (32) failures in a row -> length / 2; below min -> restart (length
  back to the initial 0.8, counters reset, ``restarts`` + 1; the incumbent is kept). NF-BO's
  own ``update_state`` (defined, never called) differs: threshold ``1e-4 * |best|``, failures
  counted per point, strict ``>`` tolerances, uncapped expansion.

Box (TuRBO in LOL-BO / NF-BO ``generate_batch``): ``anchor +- 8 * length / 2`` in every latent
dimension (half-width ``4 * length``; the latent prior is N(0, I), so at the initial length
the box spans +-3.2 standard deviations); latent space is unbounded, so no clipping.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxflows.errors import ConfigError

BOX_WEIGHT = 8.0


@dataclasses.dataclass(frozen=True)
class TrustRegionState:
    """Trust-region length and TuRBO counters (plain Python; JSON via ``dataclasses.asdict``)."""

    length: float = 0.8
    length_init: float = 0.8
    length_min: float = 0.5**7
    length_max: float = 1.6
    success_counter: int = 0
    failure_counter: int = 0
    success_tolerance: int = 10
    failure_tolerance: int = 32
    best_value: float = -math.inf
    restarts: int = 0

    def __post_init__(self):
        if not 0 < self.length_min <= self.length_init <= self.length_max:
            raise ConfigError(f"trust region needs 0 < length_min <= length_init <= length_max, "
                              f"got {self.length_min}, {self.length_init}, {self.length_max}")


def update_duplicate_ratio(state: TrustRegionState, duplicate_ratio: float, *,
                           high: float = 0.95, low: float = 0.8,
                           factor: float = 1.2) -> TrustRegionState:
    """Released NF-BO rule; ``duplicate_ratio`` in [0, 1]."""
    if not 0.0 <= duplicate_ratio <= 1.0:
        raise ValueError(f"duplicate_ratio must be in [0, 1], got {duplicate_ratio}")
    length = state.length
    if duplicate_ratio > high:
        length *= factor
    elif duplicate_ratio < low:
        length /= factor
    return dataclasses.replace(state, length=min(max(length, state.length_min), state.length_max))


def update_turbo(state: TrustRegionState, y_next) -> TrustRegionState:
    """TuRBO rule (LOL-BO form) after a batch with scores ``y_next`` (non-empty).

    Start the state with ``best_value = max(initial scores)``; from ``-inf`` the first finite
    batch is a success.
    """
    y_next = np.asarray(y_next, np.float64).reshape(-1)
    if y_next.size == 0:
        raise ValueError("update_turbo needs at least one new score")
    best_new = float(y_next.max())
    s, f = state.success_counter, state.failure_counter
    best = state.best_value
    if best_new > (best + 1e-3 * abs(best) if math.isfinite(best) else best):
        s, f = s + 1, 0
    else:
        s, f = 0, f + 1
    length = state.length
    if s == state.success_tolerance:
        length, s = min(2.0 * length, state.length_max), 0
    elif f == state.failure_tolerance:
        length, f = length / 2.0, 0
    new = dataclasses.replace(state, length=length, success_counter=s, failure_counter=f,
                              best_value=max(state.best_value, best_new))
    if length < state.length_min:
        new = dataclasses.replace(new, length=state.length_init, success_counter=0,
                                  failure_counter=0, restarts=state.restarts + 1)
    return new


RULES = {"duplicate_ratio": update_duplicate_ratio, "turbo": update_turbo}


def update_trust_region(rule: str, state: TrustRegionState, *, duplicate_ratio=None,
                        y_next=None) -> TrustRegionState:
    """Applies the rule named ``rule`` (a key of :data:`RULES`) to ``state``."""
    if rule == "duplicate_ratio":
        if duplicate_ratio is None:
            raise ValueError("rule 'duplicate_ratio' needs duplicate_ratio=")
        return update_duplicate_ratio(state, float(duplicate_ratio))
    if rule == "turbo":
        if y_next is None:
            raise ValueError("rule 'turbo' needs y_next=")
        return update_turbo(state, y_next)
    raise ConfigError(f"unknown trust-region rule {rule!r}; valid: {', '.join(RULES)}")


def box(anchor, length: float) -> tuple[np.ndarray, np.ndarray]:
    """anchor: [..., D] -> (lower, upper) [..., D]: ``anchor -+ 8 * length / 2``."""
    anchor = np.asarray(anchor, np.float32)
    half = np.float32(BOX_WEIGHT * length / 2.0)
    return anchor - half, anchor + half
