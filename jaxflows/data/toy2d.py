"""The six 2-D toy densities of "Aligning Latent Spaces with Flow Priors" (arXiv 2506.05240).

Definitions follow the paper's official code (GitHub ``liyz15/Aligning-Latent-Spaces-with-Flow-
Priors``, ``continuous_tokenizer/toy_examples/flow_train_then_guide.py``: the target classes and
the parameters its ``main`` passes to them). Each density is first drawn in *raw* coordinates and
then divided by one scalar ``scale``: the standard deviation of all coordinates of the raw
distribution pooled together (both axes, around the pooled mean, no centring of the samples). The
official code estimates that number from 10M samples (``torch.std`` over the whole ``[N, 2]``
tensor); here it is the *exact* population value, from the raw distribution's closed-form first and
second moments (``Toy2D.scale``). Sample estimates agree to about 1e-3 relative.

Raw definitions (noise ``N(0, s^2)`` is independent per coordinate unless stated):

========== ==============================================================================
gmm5       5 equally weighted Gaussians, std 0.3, means ``3 (cos a_k, sin a_k)``,
           ``a_k = 2 pi k / 5``.
grid       16 equally weighted Gaussians, std 0.1, means on the 4 x 4 grid
           ``{-1.5, -0.5, 0.5, 1.5}^2`` (``grid_size=4, cell_scale=1, gaussian_scale=0.1``).
moons      with probability 1/2 each: ``2 (cos t, sin t)``, ``t ~ U(0, pi)``, or
           ``2 (cos t, sin t) + (2, -0.5)``, ``t ~ U(pi, 2 pi)``; plus noise, ``s = 0.1``
           (``radius=2, noise=0.1``; not scikit-learn's moons).
rings      radius ``r`` uniform over ``{4/3, 8/3, 4}``, angle ``t ~ U(0, 2 pi)``, *radial*
           noise only: ``(r + 0.1 e) (cos t, sin t)``, ``e ~ N(0, 1)``.
spiral     one arm: ``t ~ U(0, 3 pi)``, ``r = 0.5 + t / (2 pi)``, ``r (cos t, sin t)`` plus
           noise, ``s = 0.1`` (``turns=3, single_arm=True, growth_rate=1``; the radius clamp at
           3 never binds).
swissroll  ``t ~ U(0, 6 pi)``, ``(t cos t, t sin t) / pi`` plus noise, ``s = 0.1``
           (``turns=3, noise=0.1``).
========== ==============================================================================

Differences from the official samplers, none of which changes the distribution: the official
moons and rings put exactly ``n // 2`` (``n // 3``) points on each component, in component order;
here every point picks its component independently (i.i.d. draws of the same mixture), so any
subset of a sample is again a sample. The official ``log_likelihood`` of the mixtures evaluates
the raw density at ``x * scale`` and omits the Jacobian ``+ 2 log(scale)``; here ``log_density``
is the density of the normalised points themselves (it integrates to 1 over the normalised plane).

Log-densities (all in normalised coordinates, float64):

* ``gmm5``, ``grid``: closed form (log-sum-exp over the components).
* ``rings``: closed form. The angle is uniform and independent of the radial noise, so the
  density is radial: with ``rho = |x|``, ``p(x) = sum_k [phi_s(rho - r_k) + phi_s(rho + r_k)] /
  (3 * 2 pi rho)`` (the second term: points whose noisy signed radius ``r + s e`` is negative).
* ``moons``, ``spiral``, ``swissroll``: a noisy curve with a uniform parameter, ``p(x) =
  E_t[N(x; c(t), s^2 I)]``, a one-dimensional integral with no closed form. It is computed by
  composite Gauss-Legendre quadrature over ``t`` (panels of equal arc length, at most one noise
  std long, 8 nodes each, summed in log space), which is converged: doubling the panels changes
  ``log p`` by less than 1e-8 wherever ``log p > -50`` (about 1e-4 at ``log p = -200``; see the
  tests). By construction the quadrature density integrates to exactly 1 (a mixture of normalised
  Gaussians whose weights sum to 1). These are the true
  densities of the generating processes, not estimates, so ``exact`` is True for all six;
  ``method`` says which of the two ways computes them.

The paper scores the non-mixture toys with a Gaussian KDE instead (100,000 reference samples,
bandwidth 0.1 in normalised coordinates); :func:`kde_log_density` reproduces that estimator.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["DENSITIES", "NAMES", "Toy2D", "kde_log_density"]

_LOG_2PI = math.log(2.0 * math.pi)
_GL_NODES = 8


def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # all terms -inf -> -inf
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _as_points(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[-1] != 2:
        raise ValueError(f"expected points of shape [n, 2], got {x.shape}")
    return x


def _isotropic_kernel_log_density(x: np.ndarray, centers: np.ndarray, log_weights: np.ndarray,
                                  std: float, *, cell: float | None = None,
                                  margin: float = 50.0, chunk_elems: int = 1 << 21) -> np.ndarray:
    """``log sum_i w_i N(x; c_i, std^2 I)`` for ``x: [n, 2]``, ``centers: [m, 2]`` -> ``[n]``.

    Exact to double precision, but fast for many centers: the points are grouped into square
    tiles (side ``cell``; default at least ``4 std`` and about 256 points a tile) and, per tile,
    a center is skipped when even its largest possible term over the tile's bounding box is
    ``margin`` nats below the smallest possible value of the best term (so every skipped term
    is < e^-50 times the sum).
    """
    finite = np.all(np.isfinite(x), axis=-1)
    if not np.all(finite):  # NaN / inf points get NaN
        out = np.full(len(x), np.nan)
        out[finite] = _isotropic_kernel_log_density(
            x[finite], centers, log_weights, std, cell=cell, margin=margin,
            chunk_elems=chunk_elems)
        return out
    n = len(x)
    out = np.empty(n, np.float64)
    if n == 0:
        return out
    if cell is None:  # tiles of >= 4 std holding ~256 points each if spread evenly
        area = float(np.prod(np.ptp(x, axis=0) + 4.0 * std))
        cell = max(4.0 * std, math.sqrt(area * 256.0 / n))
    inv2v = 0.5 / std**2
    const = -_LOG_2PI - 2.0 * math.log(std)
    keys = np.floor(x / cell).astype(np.int64)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    sk = keys[order]
    new_group = np.ones(n, bool)
    new_group[1:] = np.any(sk[1:] != sk[:-1], axis=1)
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)
    for a, b in zip(starts, ends):
        idx = order[a:b]
        xs = x[idx]
        lo, hi = xs.min(0), xs.max(0)
        near = np.maximum(np.maximum(lo - centers, centers - hi), 0.0)
        far = np.maximum(np.abs(centers - lo), np.abs(centers - hi))
        upper = log_weights - inv2v * np.sum(near * near, -1)
        lower = np.max(log_weights - inv2v * np.sum(far * far, -1))
        keep = upper >= lower - margin
        c, lw = centers[keep], log_weights[keep]
        c_sq = np.sum(c * c, -1)
        chunk = max(1, chunk_elems // max(len(c), 1))
        for s in range(0, len(xs), chunk):
            xc = xs[s:s + chunk]
            # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, clipped at 0 against rounding
            d2 = np.maximum(np.sum(xc * xc, -1)[:, None] - 2.0 * (xc @ c.T) + c_sq[None, :], 0.0)
            out[idx[s:s + chunk]] = _logsumexp(lw[None, :] - inv2v * d2, -1)
    return out + const


@dataclasses.dataclass(frozen=True, eq=False)
class Toy2D:
    """One toy density: a raw sampler and raw log-density, scaled by :attr:`scale`.

    Attributes:
      name: registry name.
      exact: whether :meth:`log_density` is the true density (True for all six here).
      method: ``'closed form'`` or ``'quadrature'`` (how ``log_density`` is computed).
      description: one line (raw definition).
    """

    name: str
    description: str
    method: str
    _raw_sample: Callable[[np.random.Generator, int], np.ndarray]
    _raw_log_density: Callable[[np.ndarray], np.ndarray] | None
    #: per-coordinate raw means E[X_k] and second moments E[X_k^2], shape [2] each
    _raw_moments: Callable[[], tuple[np.ndarray, np.ndarray]]

    @property
    def exact(self) -> bool:
        """True when ``log_density`` is the exact density (it exists for all six densities)."""
        return self._raw_log_density is not None

    @functools.cached_property
    def scale(self) -> float:
        """The pooled population std of the raw coordinates (what the samples are divided by):
        ``sqrt(mean_k E[X_k^2] - (mean_k E[X_k])^2)`` over the two coordinates ``k``."""
        mean, second = self._raw_moments()
        pooled_mean = float(np.mean(mean))
        return math.sqrt(float(np.mean(second)) - pooled_mean**2)

    def sample_raw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` raw (unnormalised) points, float64 ``[n, 2]``."""
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return np.asarray(self._raw_sample(rng, int(n)), np.float64).reshape(int(n), 2)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` normalised points, float32 ``[n, 2]``; deterministic given ``rng``'s state."""
        return (self.sample_raw(rng, n) / self.scale).astype(np.float32)

    @property
    def log_density(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """``log_density(x: [n, 2]) -> float64 [n]`` in normalised coordinates (or None)."""
        if self._raw_log_density is None:
            return None
        return self._log_density

    def _log_density(self, x) -> np.ndarray:
        x = _as_points(x)
        s = self.scale
        return self._raw_log_density(x * s) + 2.0 * math.log(s)

    def raw_log_density(self, x_raw) -> np.ndarray:
        """Log-density of raw points ``[n, 2]`` -> float64 ``[n]`` (the unnormalised plane)."""
        if self._raw_log_density is None:
            raise ValueError(f"{self.name} has no exact density")
        return self._raw_log_density(_as_points(x_raw))

    def __repr__(self) -> str:
        return f"Toy2D({self.name!r}, scale={self.scale:.6g}, method={self.method!r})"


# --- mixtures of isotropic Gaussians ------------------------------------------------------------

def _mixture(name: str, description: str, means: np.ndarray, std: float) -> Toy2D:
    means = np.asarray(means, np.float64)
    k = len(means)
    log_w = np.full(k, -math.log(k))

    def sample(rng, n):
        comp = rng.integers(0, k, size=n)
        eps = rng.standard_normal((n, 2))
        return means[comp] + std * eps

    def log_density(x):
        return _isotropic_kernel_log_density(x, means, log_w, std)

    def moments():
        return np.mean(means, 0), np.mean(means**2, 0) + std**2

    return Toy2D(name, description, "closed form", sample, log_density, moments)


def _gmm5() -> Toy2D:
    a = 2.0 * np.pi * np.arange(5) / 5
    means = 3.0 * np.stack([np.cos(a), np.sin(a)], -1)
    return _mixture("gmm5", "5 Gaussians (std 0.3) evenly on a circle of radius 3", means, 0.3)


def _grid() -> Toy2D:
    ticks = np.linspace(-1.5, 1.5, 4)
    means = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    return _mixture("grid", "4 x 4 grid of Gaussians (spacing 1, std 0.1)", means, 0.1)


# --- rings: radial noise, closed form -----------------------------------------------------------

def _rings() -> Toy2D:
    radii = np.linspace(4.0 / 3.0, 4.0, 3)
    noise = 0.1

    def sample(rng, n):
        comp = rng.integers(0, len(radii), size=n)
        t = rng.uniform(0.0, 2.0 * np.pi, size=n)
        eps = rng.standard_normal(n)
        rho = radii[comp] + noise * eps
        return rho[:, None] * np.stack([np.cos(t), np.sin(t)], -1)

    def log_density(x):
        rho = np.hypot(x[:, 0], x[:, 1])
        const = -0.5 * _LOG_2PI - math.log(noise)
        terms = np.concatenate([
            -0.5 * ((rho[:, None] - radii[None, :]) / noise) ** 2,
            -0.5 * ((rho[:, None] + radii[None, :]) / noise) ** 2,
        ], -1) + const
        with np.errstate(divide="ignore"):  # the density is +inf (integrably) at rho = 0
            log_rho = np.log(rho)
        return _logsumexp(terms, -1) - math.log(len(radii)) - _LOG_2PI - log_rho

    def moments():
        second = 0.5 * (np.mean(radii**2) + noise**2)  # E[rho^2] split evenly over x and y
        return np.zeros(2), np.full(2, second)

    return Toy2D("rings", "3 concentric rings (radii 4/3, 8/3, 4), radial noise 0.1",
                 "closed form", sample, log_density, moments)


# --- noisy curves with a uniform parameter: quadrature ------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Piece:
    weight: float  # mixture weight of this piece
    lo: float  # parameter interval [lo, hi], t ~ U(lo, hi)
    hi: float
    curve: Callable[[np.ndarray], np.ndarray]  # t [m] -> points [m, 2]


def _gauss_legendre(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of composite Gauss-Legendre on panels ``[a_j, b_j]`` (flattened)."""
    x, w = np.polynomial.legendre.leggauss(_GL_NODES)
    half = 0.5 * (b - a)[:, None]
    mid = 0.5 * (b + a)[:, None]
    return (mid + half * x[None, :]).ravel(), (half * w[None, :]).ravel()


def _arc_length_panels(piece: _Piece, panel_length: float, fine: int = 200_001) -> np.ndarray:
    """Panel boundaries in ``t`` with (about) equal arc length, each at most ``panel_length``."""
    t = np.linspace(piece.lo, piece.hi, fine)
    pts = piece.curve(t)
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    num = max(1, math.ceil(s[-1] / panel_length))
    bounds = np.interp(np.linspace(0.0, s[-1], num + 1), s, t)
    bounds[0], bounds[-1] = piece.lo, piece.hi
    return bounds


def _curve_density(name: str, description: str, pieces: Sequence[_Piece], noise: float,
                   panels_per_std: float = 1.0) -> Toy2D:
    weights = np.asarray([p.weight for p in pieces], np.float64)
    if not math.isclose(float(weights.sum()), 1.0):
        raise ValueError(f"{name}: piece weights must sum to 1")

    def sample(rng, n):
        comp = rng.choice(len(pieces), size=n, p=weights) if len(pieces) > 1 else np.zeros(
            n, np.int64)
        u = rng.random(n)
        eps = rng.standard_normal((n, 2))
        out = np.empty((n, 2), np.float64)
        for i, p in enumerate(pieces):
            sel = comp == i
            out[sel] = p.curve(p.lo + (p.hi - p.lo) * u[sel])
        return out + noise * eps

    @functools.lru_cache(maxsize=4)
    def nodes(refine: int = 1):
        centers, log_w = [], []
        for p in pieces:
            bounds = _arc_length_panels(p, noise / (panels_per_std * refine))
            t, w = _gauss_legendre(bounds[:-1], bounds[1:])
            centers.append(p.curve(t))
            log_w.append(np.log(w) - math.log(p.hi - p.lo) + math.log(p.weight))
        return np.concatenate(centers), np.concatenate(log_w)

    def log_density(x, refine: int = 1):
        centers, log_w = nodes(refine)
        return _isotropic_kernel_log_density(x, centers, log_w, noise)

    def moments():
        mean, second = np.zeros(2), np.zeros(2)
        for p in pieces:  # smooth integrands: 256 panels x 8 nodes are exact to rounding
            t, w = _gauss_legendre(*np.stack([np.linspace(p.lo, p.hi, 257)[:-1],
                                              np.linspace(p.lo, p.hi, 257)[1:]]))
            c = p.curve(t)
            w = w / (p.hi - p.lo)
            mean += p.weight * (w @ c)
            second += p.weight * (w @ c**2)
        return mean, second + noise**2

    return Toy2D(name, description, "quadrature", sample, log_density, moments)


def _circle(radius: float, offset=(0.0, 0.0)) -> Callable[[np.ndarray], np.ndarray]:
    off = np.asarray(offset, np.float64)
    return lambda t: radius * np.stack([np.cos(t), np.sin(t)], -1) + off


def _moons() -> Toy2D:
    r = 2.0
    pieces = [_Piece(0.5, 0.0, math.pi, _circle(r)),
              _Piece(0.5, math.pi, 2.0 * math.pi, _circle(r, (r, -0.5)))]
    return _curve_density("moons", "two interleaved half circles of radius 2, noise 0.1",
                          pieces, 0.1)


def _spiral() -> Toy2D:
    def curve(t):
        r = np.minimum(0.5 + t / (2.0 * np.pi), 3.0)
        return r[:, None] * np.stack([np.cos(t), np.sin(t)], -1)

    return _curve_density("spiral", "one-arm spiral r = 0.5 + t / 2pi, t in [0, 3pi], noise 0.1",
                          [_Piece(1.0, 0.0, 3.0 * math.pi, curve)], 0.1)


def _swissroll() -> Toy2D:
    def curve(t):
        return (t / math.pi)[:, None] * np.stack([np.cos(t), np.sin(t)], -1)

    return _curve_density("swissroll", "swiss roll (t cos t, t sin t) / pi, t in [0, 6pi], "
                          "noise 0.1", [_Piece(1.0, 0.0, 6.0 * math.pi, curve)], 0.1)


NAMES: tuple[str, ...] = ("gmm5", "grid", "moons", "rings", "spiral", "swissroll")

#: name -> :class:`Toy2D` (``.sample(rng, n)``, ``.log_density`` (or None), ``.exact``)
DENSITIES: dict[str, Toy2D] = {
    d.name: d for d in (_gmm5(), _grid(), _moons(), _rings(), _spiral(), _swissroll())
}


def kde_log_density(x, reference, bandwidth: float = 0.1) -> np.ndarray:
    """The paper's KDE log-likelihood: ``log mean_j N(x; ref_j, h^2 I)``.

    ``x: [n, 2]``, ``reference: [m, 2]`` (the paper: 100,000 samples of the target, ``h = 0.1``,
    both in normalised coordinates) -> float64 ``[n]``. Computed in log space; the official code
    adds 1e-10 inside the log instead, which only matters far from every reference point.
    """
    ref = _as_points(reference)
    log_w = np.full(len(ref), -math.log(len(ref)))
    return _isotropic_kernel_log_density(_as_points(x), ref, log_w, float(bandwidth))
