"""Candidate sets for Thompson sampling: Sobol points in each anchor's box, sparsely applied.

As in mlvlab/NFBO ``BO/model/utils/turbo.py`` (``generate_batch``, from LOL-BO/TuRBO):

* ``n_cand = min(50000, max(2000, 200 * D))`` candidates in all, split evenly over the ``T``
  anchors (:func:`num_candidates`; 5000 per anchor for 10 anchors and large D);
* one scrambled Sobol sequence in D dimensions (``scipy.stats.qmc.Sobol``, seeded from the
  given numpy Generator) gives ``T * n`` points, anchor ``t`` takes the ``t``-th block of ``n``;
  each point is mapped into the anchor's box ``anchor +- 8 * length / 2``
  (:func:`jaxflows.bo.trust_region.box`);
* each candidate starts as a copy of its anchor and takes the Sobol value only on the dims of a
  random mask: dim ``d`` is perturbed iff ``U_d <= prob_d`` with ``U_d ~ U(0, 1)`` -- the code's
  ``U / w_d <= 0.1`` when ``prob_d = 0.1 * w_d`` comes from TACS (:mod:`jaxflows.bo.tacs`),
  ``prob_d = 0.1`` without TACS (:func:`uniform_prob`).
* ``force_one`` (default True): a candidate whose mask is empty (it would equal its anchor)
  gets one dim, drawn with probability proportional to ``prob`` (uniform without TACS). LOL-BO
  does this (uniformly); the released NF-BO code does not (``force_one=False`` reproduces it).

Runs on the host in numpy (scipy's Sobol); returns float32.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import qmc

from jaxflows.bo._checks import BOInputError
from jaxflows.bo.trust_region import box


def num_candidates(dim: int, num_anchors: int, cand_max: int = 50000) -> int:
    """Candidates per anchor: ``min(cand_max, max(2000, 200 * dim)) // num_anchors``."""
    return min(cand_max, max(2000, 200 * dim)) // num_anchors


def uniform_prob(dim: int, p: float = 0.1) -> np.ndarray:
    """Per-dim perturbation probability without TACS: [dim] filled with p (0.1 in NF-BO)."""
    return np.full((dim,), p, np.float32)


def perturbation_mask(rng: np.random.Generator, prob, n: int,
                      force_one: bool = True) -> np.ndarray:
    """prob: [D] in [0, 1] -> bool mask [n, D], dim d set iff U <= prob[d]."""
    prob = np.clip(np.asarray(prob, np.float64), 0.0, 1.0)
    mask = rng.random((n, prob.shape[0])) <= prob
    if force_one:
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            p = prob / prob.sum() if prob.sum() > 0 else np.full_like(prob, 1.0 / prob.size)
            mask[empty, rng.choice(prob.size, size=empty.size, p=p)] = True
    return mask


def make_candidates(rng: np.random.Generator, anchors, length: float, n: int, prob=None,
                    force_one: bool = True) -> np.ndarray:
    """anchors: [T, D] -> candidates [T, n, D] float32.

    prob: [D] or [T, D] per-dim perturbation probabilities (None: uniform 0.1).
    """
    anchors = np.asarray(anchors, np.float32)
    if anchors.ndim != 2:
        raise BOInputError(f"anchors must have shape [T, D], got {anchors.shape}")
    t_count, dim = anchors.shape
    prob = uniform_prob(dim) if prob is None else np.asarray(prob, np.float32)
    prob = np.broadcast_to(prob, (t_count, dim)) if prob.shape == (dim,) else prob
    if prob.shape != (t_count, dim):
        raise BOInputError(f"prob must have shape [{dim}] or [{t_count}, {dim}], got {prob.shape}")
    if n < 1:
        raise BOInputError(f"need n >= 1 candidates per anchor, got {n}")
    sobol = qmc.Sobol(dim, scramble=True, seed=rng)
    lower, upper = box(anchors, length)
    out = np.empty((t_count, n, dim), np.float32)
    for t in range(t_count):
        with warnings.catch_warnings():  # n need not be a power of 2 (torch's SobolEngine
            warnings.simplefilter("ignore", UserWarning)  # draws any n without a warning)
            u = sobol.random(n)
        pert = (lower[t] + (upper[t] - lower[t]) * u).astype(np.float32)
        mask = perturbation_mask(rng, prob[t], n, force_one)
        out[t] = np.where(mask, pert, anchors[t])
    return out
