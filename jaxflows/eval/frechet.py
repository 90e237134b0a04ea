"""Fréchet distance between two feature sets (FID-style, on any features).

``d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})`` for the Gaussians fit to each set
(mean and unbiased covariance). The matrix square root term is computed as
``tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2})`` from two symmetric eigendecompositions, which is real
and stable (no complex ``sqrtm`` residue) for positive semi-definite covariances.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``features: [N, F]`` -> ``(mean [F], covariance [F, F])`` in float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, F], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                                cov2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)`` (``[F]``, ``[F, F]``)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"shapes differ: {mu1.shape}/{cov1.shape} vs {mu2.shape}/{cov2.shape}")
    s1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(s1 @ cov2 @ s1)
    d2 = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(cross)
    return float(max(d2, 0.0))


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between feature sets ``[N1, F]`` and ``[N2, F]``."""
    return frechet_distance_from_stats(*feature_stats(features1), *feature_stats(features2))
