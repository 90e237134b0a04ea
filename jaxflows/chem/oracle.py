"""An oracle with a budget: Guacamol scores behind a cache, counted the way the papers count.

:class:`Oracle` wraps :func:`jaxflows.chem.guacamol.score` for one task:

* **cache** keyed by RDKit's canonical (isomeric) SMILES (:func:`~jaxflows.chem.selfies_vocab.
  canonical_smiles`): two spellings of one molecule are one molecule, scored once, on its
  canonical SMILES;
* **budget** counted in unique new molecules: a molecule already evaluated (in an earlier call,
  or earlier in the same batch, or among the initial data given to :meth:`Oracle.add_initial`)
  costs nothing. This is how LOL-BO (``nataliemaus/lolbo``, ``latent_space_objective.py``: a
  score dictionary, calls counted only for new strings), NF-BO (``mlvlab/NFBO``,
  ``BO/optimizer.py``: duplicates removed before ``num_calls`` grows) and the PMO benchmark
  (Gao et al., NeurIPS 2022, ``wenhao-gao/mol_opt`` ``main/optimizer.py``: a buffer keyed by
  canonical SMILES) count oracle calls;
* **invalid SMILES cost nothing**: a SMILES RDKit cannot parse (or the empty string) scores
  ``-1.0`` and is not charged, as in LOL-BO (an invalid string's score is NaN and is not
  counted), PMO (scored 0, never enters the buffer) and NF-BO (invalid decodings are dropped by
  the decoder's validity mask before the oracle is called);
* **history**: the charged evaluations in call order, ``(canonical SMILES, score)``;
* **PMO metrics** (:meth:`Oracle.metrics`): Top-k (mean of the k best scores) and AUC Top-k
  (area under the Top-k-versus-calls curve, normalised by the budget), exactly as
  ``top_auc`` in ``wenhao-gao/mol_opt`` ``main/optimizer.py`` computes them;
* **exhaustion**: a batch that needs more new molecules than the budget has left raises
  :class:`BudgetExhaustedError` and evaluates nothing, unless ``partial=True`` (then the first
  new molecules, in order, use up the budget and the rest get NaN); :attr:`Oracle.exhausted`
  says when nothing is left;
* **state**: :meth:`Oracle.state_dict` is plain JSON; :meth:`Oracle.from_state` restores it.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxflows.chem import guacamol
from jaxflows.chem.scoring import CORRUPT_SCORE
from jaxflows.errors import UserError

log = logging.getLogger(__name__)

STATE_FORMAT = "jaxflows.chem.oracle"
STATE_VERSION = 1


class BudgetExhaustedError(UserError):
    """A batch needs more new (never evaluated) molecules than the oracle budget has left."""


def _canonical_all(smiles: Sequence[str]) -> list[str | None]:
    from jaxflows.chem.selfies_vocab import canonical_smiles, quiet_rdkit

    with quiet_rdkit():
        return [canonical_smiles(s) if isinstance(s, str) else None for s in smiles]


def top_k_mean(scores: Sequence[float], k: int) -> float:
    """Mean of the ``k`` largest of ``scores`` (of all of them if fewer); NaN if empty."""
    if len(scores) == 0:
        return float("nan")
    best = np.sort(np.asarray(scores, np.float64))[::-1][:k]
    return float(np.mean(best))


def auc_top_k(scores: Sequence[float], k: int, budget: int, *, freq_log: int = 100,
              finish: bool = True) -> float:
    """PMO's AUC Top-k of ``scores`` (``[n]``, in call order) over a ``budget`` of calls.

    The Top-k mean is sampled every ``freq_log`` calls (and after the last one), starting from
    0 at zero calls; the trapezoid area is divided by ``budget``. With ``finish`` (a finished
    run, as PMO reports it), a run that stopped before its budget keeps its final Top-k value
    for the calls it did not make. Scores beyond ``budget`` are ignored. NaN if empty.
    """
    s = np.asarray(scores, np.float64)[:budget]
    n = len(s)
    if n == 0:
        return float("nan")
    heap: list[float] = []  # the k largest so far (a min-heap)
    total, prev, called, done = 0.0, 0.0, 0, 0
    for idx in range(freq_log, min(n, budget), freq_log):
        for x in s[done:idx]:
            if len(heap) < k:
                heapq.heappush(heap, float(x))
            elif x > heap[0]:
                heapq.heapreplace(heap, float(x))
        done = idx
        now = float(np.mean(sorted(heap, reverse=True)))
        total += freq_log * (now + prev) / 2
        prev, called = now, idx
    now = top_k_mean(s, k)
    total += (n - called) * (now + prev) / 2
    if finish and n < budget:
        total += (budget - n) * now
    return total / budget


class Oracle:
    """A cached, budgeted Guacamol objective for ``task_id`` (see the module docstring).

    ``oracle(smiles: Sequence[str]) -> np.ndarray`` float64 ``[N]``: the scores (``-1.0`` for
    invalid SMILES). ``budget``: the number of unique valid molecules it may evaluate.
    ``num_workers`` is passed to :func:`jaxflows.chem.guacamol.score`.
    """

    def __init__(self, task_id: str, budget: int, *, num_workers: int | None = None):
        guacamol.check_task(task_id)
        if isinstance(budget, bool) or int(budget) != budget or budget < 1:
            raise UserError(f"oracle budget must be a positive integer, got {budget!r}")
        self.task_id = task_id
        self.budget = int(budget)
        self.num_workers = num_workers
        self._cache: dict[str, float] = {}
        self._history: list[tuple[str, float]] = []
        self._initial: list[tuple[str, float]] = []
        self.n_queries = 0      # SMILES passed to __call__
        self.n_invalid = 0      # of which RDKit could not parse (free)
        self.n_cache_hits = 0   # of which were already evaluated (free)

    # ----------------------------------------------------------------- counters
    @property
    def calls(self) -> int:
        """Oracle calls charged so far (unique valid molecules evaluated)."""
        return len(self._history)

    @property
    def remaining(self) -> int:
        """Calls left in the budget."""
        return self.budget - len(self._history)

    @property
    def exhausted(self) -> bool:
        """True when no call is left."""
        return self.remaining <= 0

    @property
    def history(self) -> list[tuple[str, float]]:
        """The charged evaluations in call order: ``[(canonical SMILES, score), ...]``."""
        return list(self._history)

    @property
    def initial(self) -> list[tuple[str, float]]:
        """The free initial data (:meth:`add_initial`), in the order given."""
        return list(self._initial)

    def scores(self) -> np.ndarray:
        """Scores of the history, float64 ``[calls]``."""
        return np.fromiter((s for _, s in self._history), np.float64, count=len(self._history))

    def lookup(self, smiles: str) -> float | None:
        """The cached score of a SMILES (any spelling), or None if it was never evaluated."""
        (can,) = _canonical_all([smiles])
        return None if can is None else self._cache.get(can)

    def best(self) -> tuple[str, float] | None:
        """``(canonical SMILES, score)`` of the best charged evaluation (first one on ties)."""
        if not self._history:
            return None
        return max(self._history, key=lambda kv: kv[1])

    # ----------------------------------------------------------------- evaluation
    def _score(self, canonical: list[str]) -> np.ndarray:
        if not canonical:
            return np.zeros(0, np.float64)
        return guacamol.score(self.task_id, canonical, num_workers=self.num_workers)

    def __call__(self, smiles: Sequence[str], *, partial: bool = False) -> np.ndarray:
        """Scores of ``smiles`` (``[N]`` strings): float64 ``[N]``.

        New unique molecules are charged to the budget in order of first appearance; cached
        ones and invalid SMILES (``-1.0``) are free. If more new molecules are needed than
        :attr:`remaining`, raises :class:`BudgetExhaustedError` without evaluating anything,
        or, with ``partial=True``, evaluates the first :attr:`remaining` of them and returns NaN
        for the others.
        """
        if isinstance(smiles, str):
            raise TypeError("Oracle expects a sequence of SMILES strings, not one string")
        smiles = list(smiles)
        canonical = _canonical_all(smiles)
        new: dict[str, None] = {}
        for can in canonical:
            if can is not None and can not in self._cache:
                new.setdefault(can)
        todo = list(new)
        if len(todo) > self.remaining:
            if not partial:
                raise BudgetExhaustedError(
                    f"oracle budget exhausted for {self.task_id}: the batch has {len(todo)} new "
                    f"molecules but {self.remaining} of {self.budget} calls are left",
                    hint="pass partial=True to evaluate as many as the budget allows")
            todo = todo[:self.remaining]
        new_scores = self._score(todo)
        for can, s in zip(todo, new_scores.tolist()):
            self._cache[can] = s
            self._history.append((can, s))
        fresh = set(todo)
        out = np.empty(len(smiles), np.float64)
        for i, can in enumerate(canonical):
            if can is None:
                out[i] = CORRUPT_SCORE
                self.n_invalid += 1
            elif can in self._cache:
                out[i] = self._cache[can]
                if can in fresh:
                    fresh.discard(can)  # its first appearance is the charged one
                else:
                    self.n_cache_hits += 1
            else:
                out[i] = np.nan  # over budget with partial=True
        self.n_queries += len(smiles)
        if self.exhausted:
            log.info("oracle for %s used its budget of %d calls", self.task_id, self.budget)
        return out

    def add_initial(self, smiles: Sequence[str],
                    scores: Sequence[float] | None = None) -> np.ndarray:
        """Caches initial data without charging the budget (NF-BO's setting: the initial
        molecules are given, the budget counts the calls made after them); returns their
        scores (``-1.0`` for invalid SMILES, which are not kept). With ``scores`` (``[N]``),
        those values are stored instead of being computed; for a molecule listed twice, or
        already cached, the first stored score stays. The initial data are not part of
        :attr:`history` or :meth:`metrics`.
        """
        smiles = list(smiles)
        canonical = _canonical_all(smiles)
        if scores is None:
            todo = list(dict.fromkeys(
                c for c in canonical if c is not None and c not in self._cache))
            given = dict(zip(todo, self._score(todo).tolist()))
        else:
            scores = [float(x) for x in scores]
            if len(scores) != len(smiles):
                raise UserError(f"add_initial got {len(smiles)} SMILES but {len(scores)} scores")
            given = {}
            for c, x in zip(canonical, scores):
                if c is not None:
                    given.setdefault(c, x)
        out = np.empty(len(smiles), np.float64)
        for i, c in enumerate(canonical):
            if c is None:
                out[i] = CORRUPT_SCORE
                continue
            if c not in self._cache:
                self._cache[c] = given[c]
                self._initial.append((c, given[c]))
            out[i] = self._cache[c]
        return out

    # ----------------------------------------------------------------- metrics
    def metrics(self, top_k: Sequence[int] = (1, 10, 100), *, freq_log: int = 100,
                finish: bool = True) -> dict[str, float]:
        """PMO metrics of the history: ``top{k}`` (mean of the k best scores) and
        ``auc_top{k}`` (:func:`auc_top_k` over :attr:`budget`, sampled every ``freq_log``
        calls; ``finish`` as a finished run) for each k, plus ``calls``. NaN when nothing
        was evaluated. Source: PMO (Gao et al., "Sample Efficiency Matters", NeurIPS 2022),
        ``wenhao-gao/mol_opt`` ``main/optimizer.py`` (``top_auc``, ``log_intermediate``).
        """
        s = self.scores()
        out: dict[str, float] = {"calls": float(len(s))}
        for k in top_k:
            out[f"top{k}"] = top_k_mean(s, k)
        for k in top_k:
            out[f"auc_top{k}"] = auc_top_k(s, k, self.budget, freq_log=freq_log, finish=finish)
        return out

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The oracle's state as plain JSON types (lists, str, int, float)."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "task_id": self.task_id,
            "budget": self.budget,
            "history": [[s, x] for s, x in self._history],
            "initial": [[s, x] for s, x in self._initial],
            "n_queries": self.n_queries,
            "n_invalid": self.n_invalid,
            "n_cache_hits": self.n_cache_hits,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, num_workers: int | None = None) -> Oracle:
        """An oracle restored from :meth:`state_dict` (after a JSON round trip, too)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError("not an oracle state (missing format 'jaxflows.chem.oracle')")
        if state.get("version") != STATE_VERSION:
            raise UserError(f"oracle state version {state.get('version')!r} is not supported "
                            f"(expected {STATE_VERSION})")
        missing = [k for k in ("task_id", "budget", "history", "initial", "n_queries",
                               "n_invalid", "n_cache_hits") if k not in state]
        if missing:
            raise UserError(f"oracle state lacks {', '.join(missing)}")
        oracle = cls(state["task_id"], state["budget"], num_workers=num_workers)
        for key, target in (("initial", oracle._initial), ("history", oracle._history)):
            for s, x in state[key]:
                if s in oracle._cache:
                    raise UserError(f"oracle state lists {s!r} twice")
                oracle._cache[s] = float(x)
                target.append((s, float(x)))
        if len(oracle._history) > oracle.budget:
            raise UserError(f"oracle state has {len(oracle._history)} calls, over its budget "
                            f"of {oracle.budget}")
        oracle.n_queries = int(state["n_queries"])
        oracle.n_invalid = int(state["n_invalid"])
        oracle.n_cache_hits = int(state["n_cache_hits"])
        return oracle
